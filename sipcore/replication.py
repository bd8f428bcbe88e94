"""Registration replication between nodes, sans-IO: wire format, sync rules, liveness.

The replicator actor owns the sockets; everything that decides lives here
and takes ``now`` (a monotonic clock) or ``wall`` (unix time) as arguments.

Wire format: bodies are compact JSON; a binding is a list in
:data:`FIELDS` order. Decoders validate and raise :class:`WireError` for
anything malformed, never another exception. An update
``{"id", "e", "t", "b": [rows]}`` holds one group commit of node ``id`` in
epoch ``e`` (consecutive sequence numbers); a heartbeat
``{"id", "t", "e", "s", "st"}`` the sender's wall clock, epoch, last
published sequence number and sync state; a snapshot request ``{"id", "r"}``
is answered by batches ``{"r", "n", "b"}`` and an end marker
``{"r", "n", "c", "d", "e", "s"}`` (batch and binding counts, digest of the
batch bodies, the server's own (epoch, seq) when it took the snapshot).

The sync rules (:class:`Replication`) follow the Clone pattern: a peer is
snapshotted when first heard, when heard again after being dead, when it
shows a new epoch and when its sequence numbers show a gap; live updates
are queued meanwhile and replayed after the snapshot when newer than it.
"""

import hashlib
import json
import math
from collections import deque
from dataclasses import dataclass
from operator import attrgetter
from typing import Iterable, Iterator

from .location import Binding

FIELDS = ("aor", "key", "contact", "expires_at", "call_id", "cseq", "q", "path",
          "instance", "reg_id", "received", "user_agent", "origin", "epoch", "seq",
          "updated_at", "deleted")
"""Order of a binding's fields on the wire (the ``Binding`` constructor's order)."""

if FIELDS != tuple(Binding.__dataclass_fields__):
    raise ImportError("sipcore.replication FIELDS must follow Binding's field order")

MAX_SKEW = 1.0
"""Clock skew (seconds) above which a peer is reported as skewed."""

SYNCING, SYNCED = "syncing", "synced"
UNKNOWN, ALIVE, SUSPECTED, DEAD = "unknown", "alive", "suspected", "dead"

_NUM, _INT, _STR, _BOOL, _LIST = "number", "integer", "string", "boolean", "list"
_KINDS = {"expires_at": _NUM, "q": _NUM, "updated_at": _NUM, "cseq": _INT, "reg_id": _INT,
          "epoch": _INT, "seq": _INT, "path": _LIST, "deleted": _BOOL}
_OPTIONAL = {"q", "instance", "reg_id", "received", "user_agent"}
_SPEC = tuple((f, _KINDS.get(f, _STR), f in _OPTIONAL) for f in FIELDS)
_TYPES = {_NUM: (int, float), _INT: (int,), _STR: (str,), _BOOL: (bool,), _LIST: (list,)}
_NFIELDS = len(FIELDS)
_row_of = attrgetter(*FIELDS)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                          check_circular=False, allow_nan=False).encode


class WireError(ValueError):
    """A replication message that is malformed or inconsistent."""


class SnapshotError(Exception):
    """A snapshot stream that is incomplete or does not match its end marker."""


def _reject_constant(name: str):
    raise WireError(f"non-finite number {name} in message")


def _loads(data: bytes) -> dict:
    """Parse a JSON object body, turning every failure into ``WireError``."""
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, TypeError, RecursionError) as e:
        if isinstance(e, WireError):
            raise
        raise WireError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise WireError("message body is not a JSON object")
    return obj


def _get(obj: dict, name: str, kind: str):
    """Field ``name`` of a decoded message, checked against ``kind``."""
    if name not in obj:
        raise WireError(f"missing field {name!r}")
    value = obj[name]
    if not isinstance(value, _TYPES[kind]) or (kind != _BOOL and isinstance(value, bool)):
        raise WireError(f"field {name!r} must be a {kind}, not {type(value).__name__}")
    return value


def row_binding(row) -> Binding:
    """Validate one wire list and build its ``Binding``."""
    if type(row) is not list or len(row) != _NFIELDS:
        raise WireError(f"a binding must be a list of {_NFIELDS} fields")
    for (name, kind, optional), value in zip(_SPEC, row):
        if value is None:
            if optional:
                continue
            raise WireError(f"binding field {name} is missing")
        t = type(value)
        if t not in _TYPES[kind]:
            raise WireError(f"binding field {name} must be a {kind}, not {t.__name__}")
    if not row[0] or not row[1] or not row[12]:
        raise WireError("binding aor, key and origin must not be empty")
    if row[5] < 0 or row[13] < 0 or row[14] < 0:
        raise WireError("binding cseq, epoch and seq must not be negative")
    finite = math.isfinite
    if not (finite(row[3]) and finite(row[15]) and (row[6] is None or finite(row[6]))):
        raise WireError("binding times and q must be finite numbers")
    if any(type(p) is not str for p in row[7]):
        raise WireError("binding path must be a list of strings")
    return Binding(*row)


def _rows(obj: dict) -> list[Binding]:
    return [row_binding(r) for r in _get(obj, "b", _LIST)]


@dataclass(frozen=True, slots=True)
class Update:
    """One group commit of a node's own binding changes."""

    origin: str
    """Id of the node that made the changes."""
    epoch: int
    """Its epoch."""
    first: int
    """Sequence number of the first change."""
    last: int
    """Sequence number of the last change (``first + len(bindings) - 1``)."""
    sent_at: float
    """Wall time at which the origin published it."""
    bindings: list[Binding]
    """The new versions, tombstones included, in sequence order."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A node's periodic sign of life."""

    node: str
    """Id of the sender."""
    wall: float
    """The sender's wall clock (unix seconds) when it sent this."""
    epoch: int
    """The sender's epoch."""
    seq: int
    """The last sequence number the sender published in that epoch."""
    state: str
    """The sender's own sync state: ``syncing`` or ``synced``."""


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    """The end marker of a snapshot stream."""

    request: int
    """The request it answers."""
    batches: int
    """How many batches came before it."""
    count: int
    """How many bindings those batches held."""
    digest: str
    """Hex digest of the batch bodies, in order (see ``SnapshotAssembler``)."""
    epoch: int
    """The server's epoch when it took the snapshot."""
    seq: int
    """The last sequence number the server had published then."""


def encode_update(origin: str, epoch: int, sent_at: float, bindings: list[Binding]) -> bytes:
    """The body of an update message for one commit of ``origin``'s own changes."""
    return _dumps({"id": origin, "e": epoch, "t": sent_at,
                   "b": [list(_row_of(b)) for b in bindings]}).encode()


def decode_update(data: bytes) -> Update:
    """Parse and check an update: one origin and epoch, consecutive sequence numbers."""
    obj = _loads(data)
    origin, epoch, sent_at = _get(obj, "id", _STR), _get(obj, "e", _INT), _get(obj, "t", _NUM)
    bindings = _rows(obj)
    if not bindings:
        raise WireError("update without bindings")
    first = bindings[0].seq
    for i, b in enumerate(bindings):
        if b.origin != origin or b.epoch != epoch:
            raise WireError(f"update from {origin}/{epoch} carries a change of "
                            f"{b.origin}/{b.epoch}")
        if b.seq != first + i:
            raise WireError(f"update sequence numbers not consecutive at {b.seq}")
    return Update(origin, epoch, first, bindings[-1].seq, sent_at, bindings)


def encode_heartbeat(node: str, wall: float, epoch: int, seq: int, state: str) -> bytes:
    """The body of a heartbeat."""
    return _dumps({"id": node, "t": wall, "e": epoch, "s": seq, "st": state}).encode()


def decode_heartbeat(data: bytes) -> Heartbeat:
    """Parse and check a heartbeat."""
    obj = _loads(data)
    hb = Heartbeat(_get(obj, "id", _STR), _get(obj, "t", _NUM), _get(obj, "e", _INT),
                   _get(obj, "s", _INT), _get(obj, "st", _STR))
    if hb.state not in (SYNCING, SYNCED) or hb.seq < 0 or not hb.node:
        raise WireError("bad heartbeat state, node or sequence number")
    return hb


def encode_snapshot_request(node: str, request: int) -> bytes:
    """The body of a snapshot request."""
    return _dumps({"id": node, "r": request}).encode()


def decode_snapshot_request(data: bytes) -> tuple[str, int]:
    """Parse and check a snapshot request: ``(asking node id, request number)``."""
    obj = _loads(data)
    return _get(obj, "id", _STR), _get(obj, "r", _INT)


def snapshot_stream(request: int, bindings: list[Binding], batch_size: int,
                    epoch: int, seq: int) -> Iterator[tuple[bool, bytes, int]]:
    """Encode a snapshot lazily: ``(is_end, body, bindings_in_body)`` per message.

    ``bindings`` is taken as given (the caller copies the table at one
    instant); ``(epoch, seq)`` is the server's own stamp at that instant.
    """
    hasher = hashlib.blake2b(digest_size=16)
    n = 0
    for start in range(0, len(bindings), batch_size):
        chunk = bindings[start:start + batch_size]
        body = _dumps({"r": request, "n": n,
                       "b": [list(_row_of(b)) for b in chunk]}).encode()
        hasher.update(len(body).to_bytes(8, "big"))
        hasher.update(body)
        n += 1
        yield False, body, len(chunk)
    end = _dumps({"r": request, "n": n, "c": len(bindings), "d": hasher.hexdigest(),
                  "e": epoch, "s": seq}).encode()
    yield True, end, 0


class SnapshotAssembler:
    """Receives one snapshot stream and checks it against its end marker.

    Batches must come in order; each is decoded as it arrives (so it can be
    applied at once: the merge rule makes a partial snapshot harmless), and
    ``finish`` raises ``SnapshotError`` unless the batch count, the binding
    count and the digest of the bodies all match.
    """

    def __init__(self, request: int):
        self.request = request
        self.batches = 0
        self.count = 0
        self._hasher = hashlib.blake2b(digest_size=16)

    def add(self, body: bytes) -> list[Binding]:
        """Decode one batch; return its bindings."""
        obj = _loads(body)
        if _get(obj, "r", _INT) != self.request:
            raise WireError("batch of another snapshot request")
        n = _get(obj, "n", _INT)
        if n != self.batches:
            raise SnapshotError(f"batch {n} arrived, expected batch {self.batches}")
        bindings = _rows(obj)
        self._hasher.update(len(body).to_bytes(8, "big"))
        self._hasher.update(body)
        self.batches += 1
        self.count += len(bindings)
        return bindings

    def finish(self, body: bytes) -> SnapshotEnd:
        """Check the end marker against what arrived; return it."""
        obj = _loads(body)
        end = SnapshotEnd(_get(obj, "r", _INT), _get(obj, "n", _INT), _get(obj, "c", _INT),
                          _get(obj, "d", _STR), _get(obj, "e", _INT), _get(obj, "s", _INT))
        if end.request != self.request:
            raise WireError("end marker of another snapshot request")
        if end.batches != self.batches or end.count != self.count:
            raise SnapshotError(f"snapshot incomplete: got {self.count} bindings in "
                                f"{self.batches} batches, server sent {end.count} in {end.batches}")
        if end.digest != self._hasher.hexdigest():
            raise SnapshotError("snapshot digest mismatch")
        return end


def binding_hash(b: Binding) -> int:
    """A 128-bit hash of every field of ``b``, the same on every node."""
    data = repr(_row_of(b)).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")


class SetDigest:
    """An order-independent digest of a set of bindings, built incrementally."""

    def __init__(self):
        self.total = self.live = self.tombstones = 0

    def add(self, bindings: Iterable[Binding], wall: float | None = None) -> "SetDigest":
        """Count ``bindings`` in (only those not expired at ``wall`` when given)."""
        for b in bindings:
            if wall is None or b.expires_at > wall:
                self.total = (self.total + binding_hash(b)) & ((1 << 128) - 1)
                self.tombstones += b.deleted
                self.live += not b.deleted
        return self

    def summary(self) -> dict:
        """``{"digest": 32 hex digits, "live": n, "tombstones": n}``."""
        return {"digest": f"{self.total:032x}", "live": self.live, "tombstones": self.tombstones}


class Liveness:
    """alive / suspected / dead from the time a peer was last heard."""

    def __init__(self, suspect_after: float, dead_after: float):
        self.suspect_after, self.dead_after = suspect_after, dead_after
        self.state = UNKNOWN
        self.last_heard: float | None = None

    def heard(self, now: float) -> str | None:
        """The peer spoke at ``now``; return the state it left, if it changed."""
        self.last_heard = now
        old, self.state = self.state, ALIVE
        return old if old != ALIVE else None

    def check(self, now: float) -> str | None:
        """Age the peer at ``now``; return the state it left, if it changed."""
        if self.last_heard is None:
            return None
        silent = now - self.last_heard
        new = ALIVE if silent < self.suspect_after else \
            SUSPECTED if silent < self.dead_after else DEAD
        old, self.state = self.state, new
        return old if new != old else None


class SkewMeter:
    """Estimates a peer's clock offset from the wall times in its heartbeats.

    A sample counts only if the sender's clock advanced like ours since its
    previous heartbeat (within ``tolerance``), so a backlog of old
    heartbeats read after a pause is not taken for skew; the largest recent
    sample is the estimate, since transit delay only makes a peer look behind.
    """

    def __init__(self, window: int = 8, limit: float = MAX_SKEW, tolerance: float = 0.25):
        self.samples: deque[float] = deque(maxlen=window)
        self.limit, self.tolerance = limit, tolerance
        self.skewed = False
        self._prev: tuple[float, float] | None = None

    def observe(self, their_wall: float, my_wall: float) -> bool:
        """Add one observation; return whether ``skewed`` changed."""
        prev, self._prev = self._prev, (their_wall, my_wall)
        if prev is None or abs(their_wall - prev[0] - (my_wall - prev[1])) > self.tolerance:
            return False
        self.samples.append(their_wall - my_wall)
        old, self.skewed = self.skewed, abs(self.skew) > self.limit
        return old != self.skewed

    @property
    def skew(self) -> float:
        """Estimated offset of the peer's clock from ours, in seconds."""
        return max(self.samples) if self.samples else 0.0


@dataclass(frozen=True, slots=True)
class RequestSnapshot:
    """Action: ask ``peer`` for a snapshot."""

    peer: str
    """Which peer."""
    request: int
    """Request number to send (and to report completion or failure with)."""
    reason: str
    """join, reconnect, epoch, gap or retry."""


@dataclass(frozen=True, slots=True)
class ApplyBindings:
    """Action: merge these replicated bindings into the location table."""

    peer: str
    """The peer they came from."""
    bindings: list[Binding]
    """The versions to merge with ``is_newer``."""
    sent_at: float
    """Wall time at which the origin published them (for lag statistics)."""


@dataclass(frozen=True, slots=True)
class Notice:
    """Action: something worth one log line."""

    text: str
    """The line (never holds a secret)."""
    warning: bool = False
    """Whether it is a warning rather than information."""


class PeerState:
    """What this node knows of one peer's stream."""

    def __init__(self, peer: str, liveness: Liveness, skew: SkewMeter):
        self.id, self.liveness, self.skew = peer, liveness, skew
        self.epoch: int | None = None  # epoch of the stream followed, set by a snapshot
        self.seq = 0  # last sequence number applied in that epoch
        self.request: int | None = None  # the snapshot request in flight
        self.retry_at: float | None = None  # when to retry a failed snapshot
        self.has_snapshot = False  # a snapshot completed since the peer was last dead
        self.queue: deque[Update] = deque()
        self.counts = dict.fromkeys(("updates", "duplicates", "gaps", "dropped", "syncs",
                                     "failed_syncs"), 0)
        self.reasons: dict[str, int] = {}  # snapshot requests by reason
        self.remote_state = ""  # the peer's own state, from its heartbeats

    def status(self) -> dict:
        """A JSON-ready view for the control endpoint."""
        return {"liveness": self.liveness.state, "epoch": self.epoch, "seq": self.seq,
                "syncing": self.request is not None, "has_snapshot": self.has_snapshot,
                "skew": round(self.skew.skew, 3), "skewed": self.skew.skewed,
                "state": self.remote_state, "queued": len(self.queue),
                "sync_reasons": dict(self.reasons), **self.counts}


class Replication:
    """The sync rules of one node towards its peers, driven by the replicator actor.

    Each input method takes the current monotonic time and returns a list of
    actions (``RequestSnapshot``, ``ApplyBindings``, ``Notice``). ``tick``
    must be called every fraction of ``suspect_after``.
    """

    def __init__(self, node_id: str, peers: Iterable[str], now: float, *,
                 suspect_after: float, dead_after: float, alone_wait: float,
                 heartbeat: float = 0.5, retry_after: float = 1.0, max_skew: float = MAX_SKEW,
                 queue_max: int = 10000):
        self.node_id = node_id
        self.peers = {p: PeerState(p, Liveness(suspect_after, dead_after),
                                   SkewMeter(limit=max_skew, tolerance=heartbeat / 2))
                      for p in peers}
        self.started, self.alone_wait = now, alone_wait
        self.retry_after, self.queue_max = retry_after, queue_max
        self.synced = False
        self._requests = 0

    @property
    def state(self) -> str:
        """``syncing`` until the first full sync, then ``synced`` for good."""
        return SYNCED if self.synced else SYNCING

    def heartbeat_received(self, peer: str, hb: Heartbeat, now: float, wall: float) -> list:
        """A heartbeat from ``peer`` (its wall clock, epoch and last published seq)."""
        p = self.peers[peer]
        out = self._heard(p, now)
        p.remote_state = hb.state
        if p.skew.observe(hb.wall, wall):
            if p.skew.skewed:
                out.append(Notice(f"clock of {peer} is {p.skew.skew:+.3f} s off ours; "
                                  "expiry times are absolute", True))
            else:
                out.append(Notice(f"clock of {peer} back within {p.skew.limit} s of ours"))
        if p.request is not None or p.retry_at is not None:
            return out
        if p.epoch is None:
            out += self._sync(p, "join", now)
        elif hb.epoch != p.epoch:
            out += self._sync(p, "epoch", now)
        elif hb.seq > p.seq:
            p.counts["gaps"] += 1
            out.append(Notice(f"gap from {peer}: heartbeat says seq {hb.seq}, "
                              f"last applied {p.seq}", True))
            out += self._sync(p, "gap", now)
        return out

    def update_received(self, peer: str, upd: Update, now: float) -> list:
        """A live update from ``peer``: apply it, skip it, or queue it and sync."""
        p = self.peers[peer]
        out = self._heard(p, now)
        if p.request is not None or p.retry_at is not None or p.epoch is None:
            self._enqueue(p, upd)
            if p.request is None and p.retry_at is None:
                out += self._sync(p, "join", now)
            return out
        if upd.epoch != p.epoch:
            self._enqueue(p, upd)
            return out + self._sync(p, "epoch", now)
        if upd.last <= p.seq:
            p.counts["duplicates"] += 1
            return out
        if upd.first > p.seq + 1:
            p.counts["gaps"] += 1
            out.append(Notice(f"gap from {peer}: got seq {upd.first}, expected {p.seq + 1}",
                              True))
            self._enqueue(p, upd)
            return out + self._sync(p, "gap", now)
        out.append(self._apply(p, upd))
        return out

    def snapshot_completed(self, peer: str, request: int, epoch: int, seq: int,
                           now: float) -> list:
        """The snapshot ``request`` from ``peer`` arrived whole and was applied."""
        p = self.peers[peer]
        if request != p.request:
            return []
        p.request = None
        p.epoch, p.seq, p.has_snapshot = epoch, seq, True
        p.counts["syncs"] += 1
        out = [Notice(f"synced with {peer} at epoch {epoch} seq {seq}")]
        queue, p.queue = p.queue, deque()
        while queue:
            upd = queue.popleft()
            if upd.epoch < epoch or (upd.epoch == epoch and upd.last <= p.seq):
                continue
            if upd.epoch != epoch or upd.first > p.seq + 1:
                queue.appendleft(upd)
                p.queue = queue
                reason = "epoch" if upd.epoch != epoch else "gap"
                p.counts["gaps"] += reason == "gap"
                out += self._sync(p, reason, now)
                break
            out.append(self._apply(p, upd))
        return out + self._check_synced(now)

    def snapshot_failed(self, peer: str, request: int, reason: str, now: float) -> list:
        """The snapshot ``request`` from ``peer`` failed; retry later if it lives."""
        p = self.peers[peer]
        if request != p.request:
            return []
        p.request = None
        p.counts["failed_syncs"] += 1
        if p.liveness.state in (ALIVE, SUSPECTED):
            p.retry_at = now + self.retry_after
        return [Notice(f"snapshot from {peer} failed: {reason}", True)]

    def tick(self, now: float) -> list:
        """Age peers, retry failed syncs, and decide whether this node is synced."""
        out = []
        for p in self.peers.values():
            old = p.liveness.check(now)
            if old is not None:
                new = p.liveness.state
                out.append(Notice(f"peer {p.id} {old} -> {new}", new != ALIVE))
                if new == DEAD:
                    p.has_snapshot = False
                    p.retry_at = None
                    p.counts["dropped"] += len(p.queue)
                    p.queue.clear()
            if p.retry_at is not None and now >= p.retry_at:
                p.retry_at = None
                out += self._sync(p, "retry", now)
        return out + self._check_synced(now)

    def retry_after_hint(self, now: float) -> int:
        """Seconds a client should wait before retrying while this node syncs."""
        return 0 if self.synced else max(1, math.ceil(self.alone_wait - (now - self.started)))

    def _heard(self, p: PeerState, now: float) -> list:
        old = p.liveness.heard(now)
        if old is None:
            return []
        out = [Notice(f"peer {p.id} {old} -> alive")]
        if old in (UNKNOWN, DEAD) and p.request is None:
            p.retry_at = None
            out += self._sync(p, "join" if old == UNKNOWN else "reconnect", now)
        return out

    def _sync(self, p: PeerState, reason: str, now: float) -> list:
        self._requests += 1
        p.request = self._requests
        p.retry_at = None
        p.reasons[reason] = p.reasons.get(reason, 0) + 1
        return [RequestSnapshot(p.id, p.request, reason)]

    def _enqueue(self, p: PeerState, upd: Update) -> None:
        if len(p.queue) >= self.queue_max:
            p.queue.popleft()
            p.counts["dropped"] += 1
        p.queue.append(upd)

    def _apply(self, p: PeerState, upd: Update) -> ApplyBindings:
        p.seq = upd.last
        p.counts["updates"] += 1
        return ApplyBindings(p.id, upd.bindings, upd.sent_at)

    def _check_synced(self, now: float) -> list:
        if self.synced:
            return []
        peers = self.peers.values()
        if any(p.liveness.state == UNKNOWN for p in peers) and now - self.started < self.alone_wait:
            return []
        if any(p.liveness.state in (ALIVE, SUSPECTED) and not p.has_snapshot for p in peers):
            return []
        self.synced = True
        alive = sorted(p.id for p in peers if p.liveness.state in (ALIVE, SUSPECTED))
        return [Notice(f"node synced ({'with ' + ', '.join(alive) if alive else 'alone'})")]
