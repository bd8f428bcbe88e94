"""Non-INVITE server transactions for a TU that only ever sends one final response.

A registrar answers each REGISTER with exactly one final response and no
provisional one, so of the §17.2.2 state machine only this remains: while
the request is being handled (Trying) a retransmission is absorbed; once
answered (Completed) a retransmission gets the same response again, for
Timer J = 64*T1 over an unreliable transport; over a reliable one the
transaction ends with the response. ``AnsweredRequests`` keeps exactly
that, in a dict and a queue ordered by expiry, at a fraction of the cost
of a general transaction (no object, event or timer heap per request).

Sans-IO: ``now`` is a monotonic clock in seconds, passed by the caller.
"""

from collections import deque

from .message import Request
from .transaction import Key, server_key

#: what ``receive`` says about a request
NEW, PENDING, ANSWERED = "new", "pending", "answered"


class AnsweredRequests:
    """The server transactions of one final-response-only TU.

    ``receive`` classifies a request as ``NEW`` (handle it, then call
    ``answered``), ``PENDING`` (a retransmission of one being handled:
    drop it) or ``ANSWERED`` (a retransmission of one answered: send the
    returned bytes again).
    """

    __slots__ = ("lifetime", "_table", "_expiry")

    def __init__(self, t1: float = 0.5):
        self.lifetime = 64 * t1
        self._table: dict[Key, bytes | None] = {}
        self._expiry: deque[tuple[float, Key]] = deque()

    def __len__(self) -> int:
        """Transactions alive (pending or answered)."""
        return len(self._table)

    def receive(self, req: Request, now: float) -> tuple[str, Key, bytes | None]:
        """``(verdict, key, response bytes or None)`` for ``req``.

        Raises ``SipError`` when the request's Via (or, without the magic
        cookie, its Call-ID, CSeq or From) cannot be parsed.
        """
        return self.receive_key(server_key(req), now)

    def receive_key(self, key: Key, now: float) -> tuple[str, Key, bytes | None]:
        """``receive`` for a request whose ``server_key`` is ``key``."""
        self.expire(now)
        table = self._table
        if key not in table:
            table[key] = None
            return NEW, key, None
        data = table[key]
        return (PENDING, key, None) if data is None else (ANSWERED, key, data)

    def forget(self, key: Key) -> None:
        """Drop the pending transaction of ``key``, as if never received."""
        if self._table.get(key, b"") is None:
            del self._table[key]

    def answered(self, key: Key, data: bytes, reliable: bool, now: float) -> None:
        """The final response ``data`` was sent for the request of ``key``."""
        if reliable:
            self._table.pop(key, None)
            return
        self._table[key] = data
        self._expiry.append((now + self.lifetime, key))

    def expire(self, now: float) -> None:
        """End the transactions whose Timer J fired."""
        expiry = self._expiry
        table = self._table
        while expiry and expiry[0][0] <= now:
            _, key = expiry.popleft()
            # A branch reused after its transaction ended has two entries;
            # the first ends the second early, which only shortens how long
            # its retransmissions are absorbed.
            table.pop(key, None)
