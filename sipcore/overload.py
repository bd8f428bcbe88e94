"""Node-wide admission control, sans-IO: past its capacity a node sheds new work.

The measure of load is the time a message waited before the node began to
read it: for a UDP datagram, from its arrival in the kernel (the socket's
receive timestamp) to the moment the receive loop takes it; for other
transports, the node's event-loop lag. It needs no knowledge of what the
node can take: a node keeping up reads each datagram within milliseconds,
whatever the rate, and a node past its capacity lets its receive queue
grow until the delay reaches seconds, the callers retransmit, and the
retransmissions crowd out the work (goodput collapses). Shedding new work
while the delay is over a bound keeps the queue short, so what is admitted
is answered before the callers retransmit.

``Admission.verdict`` looks at the raw bytes only (no full parse), and only
new work is ever shed:

- responses, requests inside a dialog (a To tag), ACK, BYE, CANCEL and
  every other method that does not start a transaction of new work, pass;
- an INVITE to an emergency number passes, always;
- a retransmission of a request admitted earlier passes (its transaction
  absorbs it); one of a request shed earlier is shed again, and the ACK of a
  shed INVITE's 503 is absorbed (nothing holds a transaction for it);
- a share of the new INVITEs, REGISTERs, SUBSCRIBEs, MESSAGEs, OPTIONS,
  PUBLISHes, REFERs and NOTIFYs is shed, a share that a controller moves
  every ``interval`` by how far the standing queue (the smallest delay of
  the interval) is over or under ``delay`` (as PIE, RFC 8033, moves its
  drop probability), so that the node admits what it can do; the new work
  of a source that authenticated recently (``trusted``) has its own share,
  whose controller aims at twice ``delay``, and is shed only past four
  times ``delay`` when it carries credentials (the second half of work
  already begun): a flood from new sources, credentials or not, cannot lock
  out the phones the node already serves, and the first of the others that
  gets through is trusted from then on.

Shed requests get 503 with a Retry-After (RFC 3261 §21.5.4), or nothing,
by setting. The tables of branches are bounded: two generations, swapped
every ``memory`` seconds or when full.
"""

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from .message import Request, make_response
from .emergency import EmergencyNumbers

#: how far the shed share moves per ``interval`` for a standing queue one ``delay`` over
#: the bound (down as far for an empty queue)
GAIN = 0.125
#: the largest share shed: a few new requests always get through, so that a phone
#: new to a node flooded past its means can still authenticate and be ``trusted``
MAX_SHARE = 0.95
#: no delay seen yet in this interval
_NONE = float("inf")

#: what ``verdict`` says
ADMIT, SHED, ABSORB = 0, 1, 2

#: methods that start new work (the others belong to a transaction or dialog under way)
NEW_WORK = frozenset(
    (b"INVITE", b"REGISTER", b"SUBSCRIBE", b"MESSAGE", b"OPTIONS", b"PUBLISH", b"REFER", b"NOTIFY")
)
#: a To header line with a tag parameter (compact form ``t`` too)
_TO_TAG = re.compile(rb"\n(?:[Tt][Oo]|[Tt])[ \t]*:[^\r\n]*;[ \t]*[Tt][Aa][Gg][ \t]*=")
#: the first Via's branch
_BRANCH = re.compile(
    rb"\n(?:[Vv][Ii][Aa]|[Vv])[ \t]*:[^\r\n]*?;[ \t]*branch[ \t]*=[ \t]*"
    rb"([^;, \t\r\n]+)",
    re.IGNORECASE,
)
#: an Authorization or Proxy-Authorization header line
_CREDENTIALS = re.compile(rb"\n(?:proxy-)?authorization[ \t]*:", re.IGNORECASE)


@dataclass(frozen=True)
class OverloadSettings:
    """The ``[limits]`` settings of admission control."""

    delay: float = 0.05
    """Seconds of standing queue the controller aims at for new work from unknown sources
    (a trusted source's: twice that; its credentials are shed only past four times; 0:
    never shed). A proxied transaction waits in the queue twice (the request, then the
    next hop's response) and must be answered within T1 (0.5 s) or be retransmitted.
    ``bench_overload`` with ``--capacity 550 --loads 1,1.5,2``, two alternated rounds:
    at 0.1 s the calls admitted still stood long enough to be retransmitted (3,350 to
    3,784 retransmissions at 2x) and 2x completed 80% of 1x; at 0.05 s none were, and
    2x completed 90% (473 and 493 calls/s against 524 and 550)."""
    interval: float = 0.05
    """Seconds between two adjustments of the share shed, each from the smallest delay
    of the interval (the standing queue)."""
    response: str = "503"
    """What a shed request gets: ``"503"`` (with Retry-After) or ``"drop"`` (nothing)."""
    retry_after: int = 5
    """Seconds of the 503's Retry-After (the node spreads them up to twice that)."""
    memory: float = 32.0
    """Seconds the branches of admitted and shed requests are remembered (64*T1)."""
    max_branches: int = 100_000
    """Branches remembered at most, per generation."""


def in_dialog(data: bytes) -> bool:
    """Whether the raw request ``data`` has a To tag (claims to be within a dialog)."""
    return _TO_TAG.search(data) is not None


class Admission:
    """Decides, from its bytes and the delay it waited, whether a request is taken.

    ``trusted(ip)`` (optional) says whether a source authenticated recently.
    """

    def __init__(
        self,
        settings: OverloadSettings,
        emergency_numbers: EmergencyNumbers | Collection[str] = (),
        trusted: Callable[[str], bool] | None = None,
    ):
        self.settings = settings
        self.emergency = EmergencyNumbers.of(emergency_numbers)
        self.trusted = trusted
        self._admitted: dict[bytes, None] = {}
        self._admitted_old: dict[bytes, None] = {}
        self._shed: dict[bytes, None] = {}
        self._shed_old: dict[bytes, None] = {}
        self._swap_at = 0.0
        self._smallest = _NONE
        self._drained = False
        self._update_at = 0.0
        self._credit = [0.0, 0.0]
        self.share = 0.0
        """The share of new work shed now (0 to 1), but a trusted source's."""
        self.trusted_share = 0.0
        """The share of a trusted source's new work without credentials shed now: the
        same controller, aiming at twice the bound."""
        self.delay = 0.0
        """The last delay measured (seconds)."""
        self.stats = {"shed": 0, "absorbed": 0, "emergency": 0}
        """Requests shed (retransmissions of shed ones included), ACKs of a shed INVITE's
        503 absorbed, INVITEs to an emergency number let through while shedding."""
        self.shed_by_method: dict[str, int] = {}
        """Requests shed by method (one of ``NEW_WORK``: the table stays small)."""

    def measure(self, delay: float, now: float) -> float:
        """Take the delay of one more message (seconds it waited); the share of new
        work without credentials to shed now.

        Every ``interval`` the share moves in proportion to how far the smallest
        delay of that interval (the standing queue: a burst, such as a collector's
        pause, drains and leaves little) is over or under ``delay`` (the integral
        part of PIE's controller, RFC 8033): it settles where the work admitted is
        what the node can do, with the queue near ``delay``. An interval in which
        the socket was found empty (``drained``) counts as no queue at all.
        """
        self.delay = delay
        if delay < self._smallest:
            self._smallest = delay
        if now >= self._update_at:
            target = self.settings.delay
            standing = self._smallest if self._smallest != _NONE and not self._drained else 0.0
            self._drained = False
            share = self.share + GAIN * (standing - target) / target
            self.share = min(MAX_SHARE, max(0.0, share))
            share = self.trusted_share + GAIN * (standing - 2 * target) / target
            self.trusted_share = min(MAX_SHARE, max(0.0, share))
            self._smallest = _NONE
            self._update_at = now + self.settings.interval
        return self.share

    def drained(self) -> None:
        """The receive loop found its socket empty: the node caught up with its input
        in this interval, so what waited was a burst or the node's process not being
        run, not a backlog of its own that shedding would shorten."""
        self._drained = True

    def verdict(self, data: bytes, ip: str, delay: float, now: float) -> int:
        """``ADMIT``, ``SHED`` (answer 503 or drop) or ``ABSORB`` (drop, no answer) for
        the message ``data`` from ``ip`` that waited ``delay`` seconds; ``now`` is a
        monotonic clock."""
        share = self.measure(delay, now) if self.settings.delay > 0 else 0.0
        if now >= self._swap_at:
            self._swap(now)
        method = data[: data.find(b" ", 0, 12)]
        if method not in NEW_WORK:
            if method == b"ACK" and (self._shed or self._shed_old):
                branch = self._branch(data)
                if branch is not None and (branch in self._shed or branch in self._shed_old):
                    self.stats["absorbed"] += 1
                    return ABSORB
            return ADMIT
        if share <= 0.0:
            self._remember(data, self._admitted)
            return ADMIT
        if in_dialog(data):
            return ADMIT
        branch = self._branch(data)
        if branch is not None:
            if branch in self._admitted or branch in self._admitted_old:
                return ADMIT
            if branch in self._shed or branch in self._shed_old:
                return self._count_shed(method)
        if method == b"INVITE" and self.emergency.invite(data):
            self.stats["emergency"] += 1
            self._remember(data, self._admitted, branch)
            return ADMIT
        # A source that authenticated recently has its own share, that aims at twice
        # the bound, and its work already begun (credentials answering a challenge)
        # is shed only past four times the bound; the rest, ``share`` of them.
        # Credentials alone prove nothing before they are checked: a flood can carry
        # them.
        kind = 0
        if self.trusted is not None and self.trusted(ip):
            if _CREDENTIALS.search(data):
                admit = delay <= 4 * self.settings.delay
                kind = -1
            else:
                share, kind = self.trusted_share, 1
        if kind >= 0:
            credit = self._credit[kind] + share
            admit = credit < 1.0
            self._credit[kind] = credit if admit else credit - 1.0
        if admit:
            self._remember(data, self._admitted, branch)
            return ADMIT
        if branch is not None:
            self._shed[branch] = None
        return self._count_shed(method)

    def _count_shed(self, method: bytes) -> int:
        self.stats["shed"] += 1
        name = method.decode("ascii")
        self.shed_by_method[name] = self.shed_by_method.get(name, 0) + 1
        return SHED

    def status(self) -> dict[str, object]:
        """What the node's ``status`` answer says of admission control: requests shed in
        all and by method, ACKs absorbed, emergency INVITEs let through while shedding,
        the shares shed now and the last delay measured."""
        return {
            "shed": self.stats["shed"],
            "shed_by_method": dict(self.shed_by_method),
            "absorbed": self.stats["absorbed"],
            "emergency": self.stats["emergency"],
            "share": round(self.share, 3),
            "trusted_share": round(self.trusted_share, 3),
            "delay_ms": round(1000 * self.delay, 1),
        }

    def _branch(self, data: bytes) -> bytes | None:
        # A bare magic cookie is every such phone's branch, no id of one request
        # (``sipcore.transaction.unique_branch``): remembered, one verdict would hold
        # for them all.
        m = _BRANCH.search(data)
        return m.group(1) if m is not None and m.group(1) != b"z9hG4bK" else None

    def _remember(self, data: bytes, table: dict[bytes, None], branch: bytes | None = None) -> None:
        if branch is None:
            branch = self._branch(data)
            if branch is None:
                return
        table[branch] = None
        if len(table) >= self.settings.max_branches:
            self._swap_at = 0.0

    def _swap(self, now: float) -> None:
        """Forget the older generation of branches (both, after a quiet ``memory``)."""
        if now >= self._swap_at + self.settings.memory:
            self._admitted, self._shed = {}, {}
        self._admitted_old, self._admitted = self._admitted, {}
        self._shed_old, self._shed = self._shed, {}
        self._swap_at = now + self.settings.memory


#: the header names a response copies (RFC 3261 §8.2.6.2), compact forms too
_COPIED = frozenset((b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"))
#: the full name of each
_FULL = {
    b"v": b"via",
    b"f": b"from",
    b"t": b"to",
    b"i": b"call-id",
    b"via": b"via",
    b"from": b"from",
    b"to": b"to",
    b"call-id": b"call-id",
    b"cseq": b"cseq",
}
#: the spelling the general path writes each with
_DISPLAY = {
    b"via": b"Via",
    b"from": b"From",
    b"to": b"To",
    b"call-id": b"Call-ID",
    b"cseq": b"CSeq",
}
#: the port of the first Via's sent-by
_VIA_PORT = re.compile(
    rb"^Via: SIP/2\.0/UDP ([^:;, \t\[\]]+)(?::([0-9]{1,5}))?"
    rb"(?=;|$)"
)
#: a valueless rport parameter
_RPORT = re.compile(rb";rport(?=;|$)")


def quick_shed(
    data: bytes, ip: str, port: int, retry_after: int, to_tag: str
) -> tuple[bytes, tuple[str, int]] | None:
    """The 503 to the shed UDP request ``data`` from ``ip:port`` and where it goes, written
    from its text; None when it is not of the plain shape this reads (the caller then
    parses it and uses ``shed_response``).

    A flood is what makes a node shed, and the general parser's path to the same
    answer (parse, validate, stamp the Via, write) cost 78 us a REGISTER with
    credentials against 9 us here, measured on the loaded test machine: the shed
    work must stay small beside the work admitted. Copied as written: every Via,
    From, To (with a tag added), Call-ID and CSeq line (a request with folded
    lines, a To already tagged or no single top Via over UDP is left to the parser).
    The top Via gets ``rport`` and ``received`` as ``sipcore.via.stamp_via`` writes them
    (RFC 3581), and the answer goes where that says. ``tests/test_overload.py`` holds
    the two to the same bytes.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    out = [b"SIP/2.0 503 Service Unavailable"]
    dest = None
    seen = set()
    for line in lines[1:]:
        if not line or line[0] in b" \t":
            return None
        colon = line.find(b":")
        name = line[:colon].strip().lower()
        if name not in _COPIED:
            continue
        # Written as the general path writes it: full name, one space, the value.
        name = _FULL[name]
        line = b"%s: %s" % (_DISPLAY[name], line[colon + 1 :].strip(b" \t"))
        if name == b"via":
            if dest is None:
                m = _VIA_PORT.match(line)
                if m is None or b"," in line or b"received=" in line:
                    return None
                rport = _RPORT.search(line)
                if rport:
                    dest = (ip, port)
                    line = b"%s;rport=%d%s" % (line[: rport.start()], port, line[rport.end() :])
                else:
                    dest = (ip, int(m.group(2) or 5060))
                if rport or m.group(1) != ip.encode():
                    line += b";received=" + ip.encode()
        elif name == b"to":
            if b"to" in seen or b";tag=" in line.replace(b" ", b"").lower():
                return None
            line += b";tag=" + to_tag.encode()
        seen.add(name)
        out.append(line)
    if dest is None or {b"from", b"to", b"call-id", b"cseq"} - seen:
        return None
    out.append(b"Retry-After: %d" % retry_after)
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n", dest


def shed_response(req: Request, retry_after: int, to_tag: str) -> bytes:
    """The 503 a shed request gets (RFC 3261 §21.5.4: Retry-After says when to come back)."""
    return make_response(
        req, 503, "Service Unavailable", [("Retry-After", str(retry_after))], to_tag=to_tag
    ).encode()
