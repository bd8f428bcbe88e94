"""Registration replication between nodes, sans-IO: sync rules and liveness.

The replicator actor owns the sockets; everything that decides lives here
and takes ``now`` (a monotonic clock) or ``wall`` (unix time) as arguments.
The wire format is in :mod:`sipcore.replication_wire` (re-exported here).

The sync rules (:class:`Replication`) follow the Clone pattern: a peer is
snapshotted when first heard, when heard again after being dead, when it
shows a new epoch and when its sequence numbers show a gap; live updates
are queued meanwhile and replayed after the snapshot when newer than it.

Each node also tracks, per origin, the last (epoch, seq) it holds: from the
origin's own stream, or relayed by a snapshot of another peer (whose end
marker says what it held). Heartbeats carry that vector, so a gap in a third
origin's stream is found even when that origin died before its own
heartbeat could reveal it: a peer that keeps claiming, for longer than
``relay_grace``, a newer version of an origin that is not alive to us than
the one we hold is asked for a snapshot (reason ``relay``).
"""

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .protocol import all_support
from .replication_wire import (
    FIELDS,
    MAX_VERSIONS,
    SYNCED,
    SYNCING,
    Heartbeat,
    NewerMessage,
    SetDigest,
    SnapshotAssembler,
    SnapshotEnd,
    SnapshotError,
    Update,
    Versions,
    WireError,
    binding_hash,
    decode_heartbeat,
    decode_snapshot_request,
    decode_update,
    encode_heartbeat,
    encode_snapshot_request,
    encode_update,
    row_binding,
    snapshot_stream,
)
from .location import Binding

__all__ = [
    "FIELDS",
    "MAX_VERSIONS",
    "MAX_SKEW",
    "SYNCING",
    "SYNCED",
    "UNKNOWN",
    "ALIVE",
    "SUSPECTED",
    "DEAD",
    "Heartbeat",
    "NewerMessage",
    "SetDigest",
    "SnapshotAssembler",
    "SnapshotEnd",
    "SnapshotError",
    "Update",
    "Versions",
    "WireError",
    "binding_hash",
    "decode_heartbeat",
    "decode_snapshot_request",
    "decode_update",
    "encode_heartbeat",
    "encode_snapshot_request",
    "encode_update",
    "row_binding",
    "snapshot_stream",
    "Liveness",
    "SkewMeter",
    "RequestSnapshot",
    "ApplyBindings",
    "Notice",
    "PeerState",
    "Replication",
]

MAX_SKEW = 1.0
"""Clock skew (seconds) above which a peer is reported as skewed."""

UNKNOWN, ALIVE, SUSPECTED, DEAD = "unknown", "alive", "suspected", "dead"


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
        new = (
            ALIVE
            if silent < self.suspect_after
            else SUSPECTED
            if silent < self.dead_after
            else DEAD
        )
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
    """join, reconnect, epoch, gap, relay or retry."""


@dataclass(frozen=True, slots=True)
class ApplyBindings:
    """Action: merge these replicated bindings into the location table."""

    peer: str
    """The peer they came from."""
    bindings: list[Binding]
    """The versions to merge with ``is_newer``."""
    sent_at: float
    """Wall time at which the origin committed them (for lag statistics)."""


@dataclass(frozen=True, slots=True)
class Notice:
    """Action: something worth one log line."""

    text: str
    """The line (never holds a secret)."""
    warning: bool = False
    """Whether it is a warning rather than information."""


#: what the replication core asks its actor to do
Action = RequestSnapshot | ApplyBindings | SetDigest | Notice


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
        self.counts = dict.fromkeys(
            ("updates", "duplicates", "gaps", "dropped", "syncs", "failed_syncs"), 0
        )
        self.reasons: dict[str, int] = {}  # snapshot requests by reason
        self.remote_state = ""  # the peer's own state, from its heartbeats
        self.protocol: int | None = None  # the protocol version its heartbeats announce
        self.relayed: tuple[int, int] | None = None  # its stream, as held via other peers
        self.claims: dict[str, tuple[tuple[int, int], float]] = {}  # origin -> (version, since)

    def held(self) -> tuple[int, int] | None:
        """The last (epoch, seq) of this peer's stream held here, directly or relayed."""
        direct = (self.epoch, self.seq) if self.epoch is not None else None
        if direct is None or (self.relayed is not None and self.relayed > direct):
            return self.relayed
        return direct

    def status(self) -> dict[str, Any]:
        """A JSON-ready view for the control endpoint."""
        return {
            "liveness": self.liveness.state,
            "epoch": self.epoch,
            "seq": self.seq,
            "relayed": list(self.relayed) if self.relayed else None,
            "syncing": self.request is not None,
            "has_snapshot": self.has_snapshot,
            "skew": round(self.skew.skew, 3),
            "skewed": self.skew.skewed,
            "state": self.remote_state,
            "pv": self.protocol,
            "queued": len(self.queue),
            "sync_reasons": dict(self.reasons),
            **self.counts,
        }


class Replication:
    """The sync rules of one node towards its peers, driven by the replicator actor.

    Each input method takes the current monotonic time and returns a list of
    actions (``RequestSnapshot``, ``ApplyBindings``, ``Notice``). ``tick``
    must be called every fraction of ``suspect_after``. ``relay_grace``
    (default: two heartbeats) is how long a peer must claim a newer version
    of a third origin than ours before it is asked for a snapshot, so
    updates still in flight are not taken for a gap.
    """

    def __init__(
        self,
        node_id: str,
        peers: Iterable[str],
        now: float,
        *,
        suspect_after: float,
        dead_after: float,
        alone_wait: float,
        heartbeat: float = 0.5,
        retry_after: float = 1.0,
        max_skew: float = MAX_SKEW,
        queue_max: int = 10000,
        relay_grace: float | None = None,
    ):
        self.node_id = node_id
        self._peer_settings = (suspect_after, dead_after, max_skew, heartbeat)
        self.peers: dict[str, PeerState] = {}
        for p in peers:
            self.add_peer(p)
        self.started, self.alone_wait = now, alone_wait
        self.retry_after, self.queue_max = retry_after, queue_max
        self.relay_grace = 2 * heartbeat if relay_grace is None else relay_grace
        self.synced = False
        self._requests = 0

    @property
    def state(self) -> str:
        """``syncing`` until the first full sync, then ``synced`` for good."""
        return SYNCED if self.synced else SYNCING

    def versions(self) -> Versions:
        """The last (epoch, seq) held of each peer's stream (for heartbeats, end markers)."""
        out = {}
        for p in self.peers.values():
            held = p.held()
            if held is not None:
                out[p.id] = held
        return out

    def peers_support(self, feature: str) -> bool:
        """Whether every peer announced a protocol version with ``feature``
        (``sipcore.protocol.FEATURES``): what goes on the PUB socket reaches them all."""
        return all_support((p.protocol for p in self.peers.values()), feature)

    def add_peer(self, peer: str) -> None:
        """Follow a new peer (membership changed): unknown until heard, then synced
        from (``join``); a node already synced stays synced meanwhile."""
        suspect_after, dead_after, max_skew, heartbeat = self._peer_settings
        self.peers[peer] = PeerState(
            peer,
            Liveness(suspect_after, dead_after),
            SkewMeter(limit=max_skew, tolerance=heartbeat / 2),
        )

    def remove_peer(self, peer: str) -> None:
        """Stop following a peer; what arrives from it later is the caller's to drop."""
        self.peers.pop(peer, None)
        for p in self.peers.values():
            p.claims.pop(peer, None)

    def heartbeat_received(self, peer: str, hb: Heartbeat, now: float, wall: float) -> list[Action]:
        """A heartbeat from ``peer``: its wall clock, epoch, last published seq and
        the versions it holds of other origins (see the module doc)."""
        p = self.peers[peer]
        out = self._heard(p, now)
        p.remote_state = hb.state
        p.protocol = hb.protocol
        if p.skew.observe(hb.wall, wall):
            if p.skew.skewed:
                out.append(
                    Notice(
                        f"clock of {peer} is {p.skew.skew:+.3f} s off ours; "
                        "expiry times are absolute",
                        True,
                    )
                )
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
            out.append(
                Notice(f"gap from {peer}: heartbeat says seq {hb.seq}, last applied {p.seq}", True)
            )
            out += self._sync(p, "gap", now)
        else:
            out += self._check_claims(p, hb.versions, now)
        return out

    def _check_claims(self, p: PeerState, versions: Versions, now: float) -> list[Action]:
        """Ask ``p`` for a snapshot if it has held, for ``relay_grace``, a newer
        version of an origin that is not alive to us than the one we hold."""
        claims = p.claims
        for origin in [o for o in claims if o not in versions]:
            del claims[origin]
        for origin, version in versions.items():
            o = self.peers.get(origin)
            if o is None or o is p:
                continue
            held = o.held()
            if held is not None and version <= held:
                claims.pop(origin, None)
                continue
            claim = claims.get(origin)
            if claim is None or (held is not None and claim[0] <= held):
                claims[origin] = (version, now)
            elif now - claim[1] >= self.relay_grace and o.liveness.state != ALIVE:
                o.counts["gaps"] += 1
                have = "nothing" if held is None else "%d/%d" % held
                claims.clear()
                return [
                    Notice(
                        f"gap from {origin} ({o.liveness.state}): {p.id} holds "
                        f"{claim[0][0]}/{claim[0][1]}, we hold {have}; asking {p.id}",
                        True,
                    )
                ] + self._sync(p, "relay", now)
        return []

    def update_received(self, peer: str, upd: Update, now: float) -> list[Action]:
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
            out.append(Notice(f"gap from {peer}: got seq {upd.first}, expected {p.seq + 1}", True))
            self._enqueue(p, upd)
            return out + self._sync(p, "gap", now)
        out.append(self._apply(p, upd))
        return out

    def snapshot_completed(
        self,
        peer: str,
        request: int,
        epoch: int,
        seq: int,
        now: float,
        versions: Versions | None = None,
    ) -> list[Action]:
        """The snapshot ``request`` from ``peer`` arrived whole and was applied.

        ``(epoch, seq)`` is the peer's own stamp in its end marker and
        ``versions`` what the snapshot held of other origins.
        """
        p = self.peers[peer]
        if request != p.request:
            return []
        p.request = None
        p.epoch, p.seq, p.has_snapshot = epoch, seq, True
        p.counts["syncs"] += 1
        p.claims.clear()
        for origin, version in (versions or {}).items():
            o = self.peers.get(origin)
            if o is not None and o is not p and (o.relayed is None or version > o.relayed):
                o.relayed = version
        out: list[Action] = [Notice(f"synced with {peer} at epoch {epoch} seq {seq}")]
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

    def snapshot_failed(self, peer: str, request: int, reason: str, now: float) -> list[Action]:
        """The snapshot ``request`` from ``peer`` failed; retry later if it lives."""
        p = self.peers[peer]
        if request != p.request:
            return []
        p.request = None
        p.counts["failed_syncs"] += 1
        if p.liveness.state in (ALIVE, SUSPECTED):
            p.retry_at = now + self.retry_after
        return [Notice(f"snapshot from {peer} failed: {reason}", True)]

    def tick(self, now: float) -> list[Action]:
        """Age peers, retry failed syncs, and decide whether this node is synced."""
        out: list[Action] = []
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

    def _heard(self, p: PeerState, now: float) -> list[Action]:
        old = p.liveness.heard(now)
        if old is None:
            return []
        out: list[Action] = [Notice(f"peer {p.id} {old} -> alive")]
        if old in (UNKNOWN, DEAD) and p.request is None:
            p.retry_at = None
            out += self._sync(p, "join" if old == UNKNOWN else "reconnect", now)
        return out

    def _sync(self, p: PeerState, reason: str, now: float) -> list[Action]:
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

    def _check_synced(self, now: float) -> list[Action]:
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
