"""The RFC 3261 §17 transaction layer, sans-IO.

One ``TransactionLayer`` holds every client and server transaction of its
owner (one greenlet; the layer is not thread-safe). The owner drives it
with parsed messages and the current time, and drains what it produces::

    layer.receive(msg, source, now, reliable)   # a parsed Request or Response
    layer.respond(server_tx, response, now)     # the TU answers a request
    layer.send_request(request, dest, now, reliable)   # the TU starts a client tx
    layer.cancel(invite_client_tx, now)         # §9.1, deferred until a 1xx
    layer.transport_error(tx_or_dest, now)
    layer.handle_timer(now)                     # when now >= layer.get_timer()

    for data, dest in layer.messages_to_send(): ...      # bytes for the transport
    while (event := layer.next_event()) is not None: ...  # events for the TU

``now`` is any monotonic clock in seconds (it should never go backwards).
A destination is an opaque, hashable value such as ``("udp", "10.0.0.1",
5060)``: the layer hands it back with the bytes to send and never looks
inside. ``reliable`` says whether it is a stream transport (TCP, TLS), in
which case retransmission timers are not armed and D, I, J and K are zero.

Differences from the letter of RFC 3261, all from RFC 6026 or §16: an
INVITE client transaction that received a 2xx stays 64*T1 in an Accepted
state, so that every 2xx (retransmissions, other forks) reaches the TU; a
2xx to INVITE that matches no transaction is reported as ``StrayResponse``
(a proxy forwards it statelessly, §16.7); other unmatched responses are
dropped. An INVITE server transaction that sent a 2xx stays 64*T1 in the
Accepted state (RFC 6026 Timer L): retransmissions of the INVITE are
absorbed, an ACK matching it goes to the TU as ``AckReceived``, a CANCEL
still finds it, and further 2xx from the TU are sent. After a CANCEL, an
INVITE client transaction waits 64*T1 for its final response and then
times out (§9.1).
"""

import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import SipError
from .headers import split_list
from .message import Request, Response, make_response
from .timers import (
    _ACCEPTED,
    _CALLING,
    _COMPLETED,
    _CONFIRMED,  # state aliases, shared
    _PROCEEDING,
    _TRYING,
    State,
    Timer,
    TimerConfig,
    TimerHandlers,
    TimerQueues,
)

__all__ = [
    "MAGIC_COOKIE",
    "unique_branch",
    "State",
    "Transaction",
    "ServerTransaction",
    "ClientTransaction",
    "TransactionEvent",
    "RequestReceived",
    "AckReceived",
    "ResponseReceived",
    "StrayResponse",
    "TransactionTimeout",
    "TransportError",
    "TransactionLayer",
    "Timer",
    "new_branch",
    "server_key",
    "build_ack",
    "build_cancel",
]

#: a transaction's matching key (§17.1.3, §17.2.3)
Key = tuple[Any, ...]

#: the RFC 3261 branch prefix (§8.1.1.7)
MAGIC_COOKIE = "z9hG4bK"

_TERMINATED = State.TERMINATED


class Transaction:
    """State shared by client and server transactions.

    Three slots belong to the TU: ``context``, its state for a server
    transaction (the proxy's response context); ``fork``, the proxy branch a
    client transaction was sent for; ``relay_to``, the server transaction that the
    further 2xx responses of a client INVITE go to once its branch has ended
    (§16.7 step 5: a proxy forwards every 2xx).
    ``status`` is the code of the last response sent (server) or received
    (client), 0 before any.
    """

    __slots__ = (
        "key",
        "method",
        "request",
        "destination",
        "reliable",
        "state",
        "status",
        "context",
        "fork",
        "relay_to",
        "_data",
        "_interval",
    )

    is_server = False

    def __init__(
        self,
        key: Key,
        method: str,
        request: Request | None,
        destination: object,
        reliable: bool,
        state: State,
    ):
        self.key = key
        self.method = method
        self.request = request
        self.destination = destination
        self.reliable = reliable
        self.state = state
        self.status = 0
        self.context: object = None
        self.fork: object = None
        self.relay_to: Transaction | None = None
        self._data: bytes | None = None
        self._interval = 0.0

    @property
    def branch(self) -> str | None:
        """The top Via branch that identifies the transaction (None for RFC 2543 keys)."""
        branch = self.key[0]
        return branch if isinstance(branch, str) else None

    def __repr__(self) -> str:
        kind = "Server" if self.is_server else "Client"
        return f"<{kind}Transaction {self.method} {self.key[0]} {self.state.value}>"


class ServerTransaction(Transaction):
    """A transaction for a request received (§17.2).

    ``destination`` is where the request came from and where responses go.
    ``request`` is released (set to None) once a final response is sent:
    the ``RequestReceived`` event keeps it for the TU.
    """

    __slots__ = ()

    is_server = True


class ClientTransaction(Transaction):
    """A transaction for a request sent (§17.1).

    ``cancel`` is the CANCEL client transaction, once one was sent for
    this INVITE. ``request`` is released once a 2xx moves an INVITE to
    Accepted (nothing is built from it any more).
    """

    __slots__ = ("cancel", "_ack", "_cancel_pending")

    def __init__(
        self,
        key: Key,
        method: str,
        request: Request | None,
        destination: object,
        reliable: bool,
        state: State,
    ):
        super().__init__(key, method, request, destination, reliable, state)
        self.cancel: ClientTransaction | None = None
        self._ack: bytes | None = None
        self._cancel_pending: Request | None = None


class TransactionEvent:
    """Base class of the events the layer gives to its TU."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class RequestReceived(TransactionEvent):
    """A new request (any method but ACK) created a server transaction."""

    transaction: ServerTransaction
    """The new transaction; answer it with ``TransactionLayer.respond``."""
    request: Request
    """The request as received."""
    source: object
    """Where it came from (the destination of the responses)."""
    invite: ServerTransaction | None = None
    """For a CANCEL, the live INVITE server transaction it cancels, if any; else None."""


@dataclass(frozen=True, slots=True)
class AckReceived(TransactionEvent):
    """An ACK that matches no transaction: the end-to-end ACK of a 2xx (§17.2.3)."""

    request: Request
    """The ACK."""
    source: object
    """Where it came from."""


@dataclass(frozen=True, slots=True)
class ResponseReceived(TransactionEvent):
    """A response of a client transaction.

    Each provisional, the first final response, and every 2xx to INVITE.
    """

    transaction: ClientTransaction
    """The client transaction it belongs to."""
    response: Response
    """The response as received."""


@dataclass(frozen=True, slots=True)
class StrayResponse(TransactionEvent):
    """A 2xx to INVITE that matches no client transaction (forward it statelessly, §16.7)."""

    response: Response
    """The response as received."""
    source: object
    """Where it came from."""


@dataclass(frozen=True, slots=True)
class TransactionTimeout(TransactionEvent):
    """A transaction gave up and is terminated (a proxy answers 408 for B and F)."""

    transaction: Transaction
    """The transaction that timed out."""
    timer: Timer
    """``Timer.B``, ``Timer.F`` (no final response), ``Timer.H`` (no ACK) or
    ``Timer.CANCEL`` (no final response 64*T1 after a CANCEL, §9.1)."""


@dataclass(frozen=True, slots=True)
class TransportError(TransactionEvent):
    """The transport failed for a transaction, which is terminated (§17.1.4, §17.2.4)."""

    transaction: Transaction
    """The transaction concerned."""
    destination: object
    """Its destination."""


def new_branch(randbytes: Callable[[int], bytes] | None = None) -> str:
    """A fresh RFC 3261 branch: the magic cookie and 80 random bits in hex.

    ``randbytes`` is a callable ``n -> bytes`` (e.g. ``random.Random(1).randbytes``
    in tests); by default ``secrets.token_bytes``.
    """
    return MAGIC_COOKIE + (randbytes or secrets.token_bytes)(10).hex()


def unique_branch(branch: str | None) -> bool:
    """Whether a top Via ``branch`` identifies its transaction on its own (§17.2.3):
    it starts with the magic cookie and has something after it. A bare
    ``z9hG4bK`` is the same for every request that sends it, so it is no unique
    id (§8.1.1.7): such a request is matched by the RFC 2543 rules."""
    return (
        branch is not None and len(branch) > len(MAGIC_COOKIE) and branch.startswith(MAGIC_COOKIE)
    )


def server_key(request: Request) -> Key:
    """The §17.2.3 matching key of a request; an ACK gets its INVITE's key.

    With a unique branch (``unique_branch``): ``(branch, sent-by host, sent-by
    port, method)``. Without (RFC 2543, or a bare magic cookie): ``(None,
    Call-ID, CSeq number, From tag, top Via, method)``. Raises ``SipError``
    when the needed headers are malformed.
    """
    via = request.top_via
    method = request.method
    if method == "ACK":
        method = "INVITE"
    branch = via.branch
    if unique_branch(branch):
        return (branch, via.host.lower(), via.port, method)
    return (None, request.call_id, request.cseq[0], request.from_.tag, str(via), method)


def build_ack(request: Request, response: Response) -> Request:
    """The ACK for a non-2xx final ``response`` to INVITE ``request`` (§17.1.1.3).

    Same Request-URI, Call-ID, From, CSeq number and Route as the INVITE,
    To from the response, and the INVITE's top Via only.
    """
    headers = _copy_for(request, "ACK")
    to = response.get("to")
    for h in headers:
        if h[0] == "to" and to is not None:
            h[2] = to
    return Request("ACK", request.uri, headers)


def build_cancel(request: Request, headers: Sequence[tuple[str, str]] = ()) -> Request:
    """The CANCEL for ``request`` (§9.1), with extra ``headers`` such as Reason.

    Same Request-URI, Call-ID, From, To, CSeq number and Route as the
    request, and its top Via only (hence its branch).
    """
    cancel = Request("CANCEL", request.uri, _copy_for(request, "CANCEL"))
    for name, value in headers:
        cancel.add(name, value)
    return cancel


def _copy_for(request: Request, method: str) -> list[list[str]]:
    out: list[list[str]] = []
    via_done = False
    num = request.cseq[0]
    for key, name, value in request.headers:
        if key == "via":
            if not via_done:
                out.append([key, name, split_list(value)[0]])
                via_done = True
        elif key == "cseq":
            out.append([key, name, f"{num} {method}"])
        elif key in _COPIED:
            out.append([key, name, value])
    return out


_COPIED = frozenset(("from", "to", "call-id", "route", "max-forwards"))


class TransactionLayer(TimerHandlers):
    """Client and server transactions over tables, driven by the caller's clock.

    ``t1``, ``t2`` and ``t4`` are the RFC 3261 base timers; ``timer_d`` is
    Timer D on unreliable transports. With ``auto_trying`` a new INVITE
    server transaction answers 100 Trying at once (§17.2.1, §16.2).
    """

    def __init__(
        self,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        *,
        timer_d: float = 32.0,
        auto_trying: bool = True,
    ):
        self.config = TimerConfig(t1, t2, t4, timer_d)
        self.auto_trying = auto_trying
        self._t1 = t1
        self._t2 = t2
        self._t4 = t4
        self._d = timer_d
        self._timeout = self.config.timeout
        self._server: dict[Key, ServerTransaction] = {}
        self._client: dict[Key, ClientTransaction] = {}
        self._by_dest: dict[object, dict[Transaction, None]] = {}
        self._timers = TimerQueues()
        self._out: list[tuple[bytes, Any]] = []
        self._events: deque[TransactionEvent] = deque()

    # -- outputs -------------------------------------------------------------
    def messages_to_send(self) -> list[tuple[bytes, object]]:
        """Take every ``(bytes, destination)`` queued for the transport, oldest first."""
        out = self._out
        self._out = []
        return out

    def next_event(self) -> TransactionEvent | None:
        """Take the oldest event for the TU, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When ``handle_timer`` should next be called, or None when no timer is armed."""
        return self._timers.next_deadline()

    def stats(self) -> dict[str, int]:
        """Live transaction counts (for statistics)."""
        return {"server": len(self._server), "client": len(self._client)}

    def unanswered(self) -> dict[str, int]:
        """Transactions still waiting for a final response: server ones not yet
        answered, client ones not yet answered by the next hop (a drain is over
        when both are 0; answered ones only wait out their timers). A pass over
        the tables, for a control request, not for the hot path."""
        waiting = (_CALLING, _TRYING, _PROCEEDING)
        return {
            "server": sum(1 for tx in self._server.values() if tx.state in waiting),
            "client": sum(1 for tx in self._client.values() if tx.state in waiting),
        }

    def find_server(self, request: Request) -> ServerTransaction | None:
        """The live server transaction ``request`` belongs to (an ACK's INVITE), or None."""
        try:
            return self._server.get(server_key(request))
        except SipError:
            return None

    def find_invite(self, cancel: Request) -> ServerTransaction | None:
        """The live INVITE server transaction a CANCEL refers to (§9.2), or None."""
        try:
            key = server_key(cancel)
        except SipError:
            return None
        return self._server.get(key[:-1] + ("INVITE",))

    def send(self, message: Request | Response | bytes, destination: object) -> None:
        """Queue a message outside any transaction (ACK for 2xx, stateless forwarding)."""
        data = message if isinstance(message, bytes) else message.encode()
        self._out.append((data, destination))

    # -- inputs ----------------------------------------------------------------
    def receive(
        self, message: Request | Response, source: object, now: float, reliable: bool = False
    ) -> None:
        """Feed one parsed message received from ``source``.

        Requests should have passed ``Request.validate()``: a request whose
        Via, CSeq or From cannot be parsed raises ``SipError`` (answer it
        statelessly with ``error_response``, or drop an ACK). Responses that
        are malformed or match nothing are dropped silently.
        """
        if isinstance(message, Request):
            self._receive_request(message, source, now, reliable)
        else:
            self._receive_response(message, source, now)

    def _receive_request(self, req: Request, source: object, now: float, reliable: bool) -> None:
        key = server_key(req)
        tx = self._server.get(key)
        method = req.method
        if method == "ACK":
            if tx is None or tx.state is _ACCEPTED:
                self._events.append(AckReceived(req, source))
            elif tx.state is _COMPLETED:
                tx.state = _CONFIRMED
                if tx.reliable:
                    self._terminate(tx)
                else:
                    self._timers.add(now, self._t4, tx, Timer.I)
            return
        if tx is not None:
            if tx._data is not None and tx.state is not _CONFIRMED:
                self._out.append((tx._data, tx.destination))
            return
        invite = method == "INVITE"
        tx = ServerTransaction(
            key, method, req, source, reliable, _PROCEEDING if invite else _TRYING
        )
        self._server[key] = tx
        if reliable:
            self._index(tx)
        inv = None
        if method == "CANCEL":
            inv = self._server.get(key[:-1] + ("INVITE",))
        self._events.append(RequestReceived(tx, req, source, inv))
        if invite and self.auto_trying:
            data = tx._data = make_response(req, 100).encode()
            tx.status = 100
            self._out.append((data, source))

    def _receive_response(self, resp: Response, source: object, now: float) -> None:
        try:
            key = (resp.top_via.branch, resp.cseq[1])
        except SipError:
            return
        tx = self._client.get(key)
        status = resp.status
        if tx is None:
            if 200 <= status < 300 and key[1] == "INVITE":
                self._events.append(StrayResponse(resp, source))
            return
        state = tx.state
        if tx.method == "INVITE":
            self._invite_response(tx, resp, status, state, now)
        elif state is _TRYING or state is _PROCEEDING:
            tx.status = status
            self._events.append(ResponseReceived(tx, resp))
            if status < 200:
                tx.state = _PROCEEDING
            elif tx.reliable:
                self._terminate(tx)
            else:
                tx.state = _COMPLETED
                self._timers.add(now, self._t4, tx, Timer.K)

    def _invite_response(
        self, tx: ClientTransaction, resp: Response, status: int, state: State, now: float
    ) -> None:
        live = state is _CALLING or state is _PROCEEDING
        if status < 200:
            if live:
                tx.state = _PROCEEDING
                tx.status = status
                self._events.append(ResponseReceived(tx, resp))
                if tx._cancel_pending is not None:
                    self._send_cancel(tx, now)
        elif status < 300:
            if live:
                tx.state = _ACCEPTED
                tx.status = status
                tx._cancel_pending = None
                tx.request = None
                tx._data = None
                self._timers.add(now, self._timeout, tx, Timer.M)
            self._events.append(ResponseReceived(tx, resp))
        elif live:
            tx.state = _COMPLETED
            tx.status = status
            tx._cancel_pending = None
            assert tx.request is not None  # kept until the transaction completes
            ack = build_ack(tx.request, resp).encode()
            self._out.append((ack, tx.destination))
            self._events.append(ResponseReceived(tx, resp))
            if tx.reliable:
                self._terminate(tx)
            else:
                tx._ack = ack
                self._timers.add(now, self._d, tx, Timer.D)
        elif state is _COMPLETED and tx._ack is not None:
            self._out.append((tx._ack, tx.destination))

    # -- TU actions --------------------------------------------------------------
    def respond(self, tx: ServerTransaction, response: Response, now: float) -> bool:
        """Send ``response`` through server transaction ``tx``.

        Returns False, sending nothing, when ``tx`` already sent its final
        response -- except a 2xx to INVITE, which is then sent statelessly
        to the transaction's destination (a forking proxy relays every 2xx,
        §16.7). The 2xx of an INVITE moves its transaction to Accepted for
        64*T1 (RFC 6026), where it absorbs retransmitted INVITEs.
        """
        state = tx.state
        status = response.status
        if state is not _TRYING and state is not _PROCEEDING:
            if tx.method == "INVITE" and 200 <= status < 300:
                self._out.append((response.encode(), tx.destination))
                return True
            return False
        data = response.encode()
        tx.status = status
        self._out.append((data, tx.destination))
        if status < 200:
            tx._data = data
            tx.state = _PROCEEDING
        elif tx.method == "INVITE":
            if status < 300:
                tx.state = _ACCEPTED
                tx._data = None
                tx.request = None
                self._timers.add(now, self._timeout, tx, Timer.L)
            else:
                tx._data = data
                tx.state = _COMPLETED
                tx.request = None
                if not tx.reliable:
                    tx._interval = self._t1
                    self._timers.add(now, self._t1, tx, Timer.G)
                self._timers.add(now, self._timeout, tx, Timer.H)
        elif tx.reliable:
            self._terminate(tx)
        else:
            tx._data = data
            tx.state = _COMPLETED
            tx.request = None
            self._timers.add(now, self._timeout, tx, Timer.J)
        return True

    def send_request(
        self, request: Request, destination: object, now: float, reliable: bool = False
    ) -> ClientTransaction:
        """Start a client transaction for ``request`` and queue it for ``destination``.

        The request must carry its top Via with a branch made by the caller
        (see ``new_branch``). Raises ``ValueError`` for an ACK, a missing
        branch or a branch and method already in use.
        """
        method = request.method
        if method == "ACK":
            raise ValueError("ACK is not sent in a client transaction")
        try:
            branch = request.top_via.branch
        except SipError as err:
            raise ValueError(f"request without a usable Via: {err}") from None
        if not branch:
            raise ValueError("request without a Via branch")
        key = (branch, method)
        if key in self._client:
            raise ValueError(f"branch {branch} already used for {method}")
        invite = method == "INVITE"
        tx = ClientTransaction(
            key, method, request, destination, reliable, _CALLING if invite else _TRYING
        )
        data = tx._data = request.encode()
        self._client[key] = tx
        self._index(tx)
        self._out.append((data, destination))
        timers = self._timers
        if not reliable:
            tx._interval = self._t1
            timers.add(now, self._t1, tx, Timer.A if invite else Timer.E)
        timers.add(now, self._timeout, tx, Timer.B if invite else Timer.F)
        return tx

    def cancel(
        self, tx: ClientTransaction, now: float, headers: Sequence[tuple[str, str]] = ()
    ) -> bool:
        """Cancel INVITE client transaction ``tx`` (§9.1).

        The CANCEL is sent at once if a provisional response arrived, else
        as soon as one does; ``tx.cancel`` then holds its client
        transaction. Returns False when it is too late (a final response
        arrived or the transaction ended), True otherwise, also when a
        CANCEL was already sent or is pending.
        """
        if tx.method != "INVITE" or tx.is_server:
            raise ValueError("only an INVITE client transaction can be cancelled")
        if tx.cancel is not None or tx._cancel_pending is not None:
            return True
        state = tx.state
        if state is not _CALLING and state is not _PROCEEDING:
            return False
        assert tx.request is not None  # kept while calling or proceeding
        tx._cancel_pending = build_cancel(tx.request, headers)
        if state is _PROCEEDING:
            self._send_cancel(tx, now)
        return True

    def _send_cancel(self, tx: ClientTransaction, now: float) -> None:
        request = tx._cancel_pending
        assert request is not None  # set by cancel()
        tx._cancel_pending = None
        tx.cancel = self.send_request(request, tx.destination, now, tx.reliable)
        self._timers.add(now, self._timeout, tx, Timer.CANCEL)

    def transport_error(self, target: Transaction | object, now: float) -> None:
        """Report that sending failed, for one transaction or for a destination.

        Each transaction concerned is terminated with a ``TransportError``
        event. A destination covers every client transaction and every
        reliable server transaction using it; pass an unreliable server
        transaction itself.
        """
        if isinstance(target, Transaction):
            txs = [target]
        else:
            txs = list(self._by_dest.get(target, ()))
        for tx in txs:
            if tx.state is not _TERMINATED:
                self._events.append(TransportError(tx, tx.destination))
                self._terminate(tx)

    def _timeout_tx(self, tx: Transaction, timer: Timer) -> None:
        self._events.append(TransactionTimeout(tx, timer))
        self._terminate(tx)

    # -- tables --------------------------------------------------------------------
    def _index(self, tx: Transaction) -> None:
        peers = self._by_dest.get(tx.destination)
        if peers is None:
            peers = self._by_dest[tx.destination] = {}
        peers[tx] = None

    def _terminate(self, tx: Transaction) -> None:
        tx.state = _TERMINATED
        if tx.is_server:
            del self._server[tx.key]
            indexed = tx.reliable
        else:
            del self._client[tx.key]
            assert isinstance(tx, ClientTransaction)
            tx._cancel_pending = None
            indexed = True
        if indexed:
            peers = self._by_dest.get(tx.destination)
            if peers is not None:
                peers.pop(tx, None)
                if not peers:
                    del self._by_dest[tx.destination]
