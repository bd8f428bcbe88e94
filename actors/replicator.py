"""The replicator actor: publishes this node's binding changes, applies its peers'.

Greenlets, each owning its socket: a publisher (PUB: one update per group
commit, heartbeats carrying the version held of each peer's stream), one
subscriber per peer (SUB), a snapshot server (ROUTER: bindings and
tombstones in bounded batches at a bounded rate, with an end marker that
also says which versions of other origins the snapshot holds), one
short-lived syncer per snapshot request (DEALER), and the main loop, which
owns the sync rules (``sipcore.replication``) and gets everything else
through its inbox; besides, a lag meter without a socket.

Messages follow ``sipcore.protocol``: a kind this release does not know is
ignored and counted (``unknown_kinds``), a body of a newer protocol version
dropped and counted (``newer_protocol``), and each peer's heartbeats tell the
sync rules what it speaks (``core.peers_support(feature)``: whether
something new may go on the PUB socket, which reaches every peer).

It never writes the location table or the store: received bindings go to
``apply(bindings)`` (the registrar's ``merge``), which keeps each one that
``is_newer`` and persists it in its next group commit. It reads the
location table (``Location.all``) to serve snapshots and digests; the copy
is taken without yielding, so it is one consistent instant.

Replication lag is measured per update, from the wall time the origin
committed it (stamped in ``publish``, just before the origin's 200s go out)
to the moment this node's location table holds it (a small greenlet polls
the table every millisecond while updates are on their way in).
"""

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import gevent
import zmq.green as zmq
from gevent.event import Event
from gevent.pool import Group
from gevent.queue import Empty, Queue

from sipcore.location import Binding, Location, is_newer
from sipcore.protocol import PROTOCOL_VERSION
from sipcore.authguard import Ban
from sipcore.replication import (
    ALIVE,
    SUSPECTED,
    Action,
    ApplyBindings,
    Heartbeat,
    NewerMessage,
    Notice,
    Replication,
    RequestSnapshot,
    SetDigest,
    SnapshotAssembler,
    SnapshotError,
    Update,
    Versions,
    WireError,
    decode_heartbeat,
    decode_snapshot_request,
    decode_update,
    encode_heartbeat,
    encode_snapshot_request,
    encode_update,
    snapshot_stream,
)
from sipcore.replication_wire import MAX_BANS, decode_bans, encode_bans

from . import bus as busmod
from .bus import BUS_DOMAIN, CONTROL_DOMAIN, Bus, BusError, recv, recv_from, send
from .config import NodeConfig, Peer
from .config_sync import MASTER
from .control import ControlServer

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

SNAPSHOT_HWM = 64
"""Snapshot messages in flight per connection (each holds up to ``snapshot_batch`` bindings)."""
APPLY_CHUNK = 1000
"""Most bindings handed to ``apply`` at once."""
YIELD_LIMIT = 0.05
"""Longest a snapshot batch waits for the hub to be idle (SIP first, but progress)."""
SETTLE_LIMIT = 0.25
"""Longest a snapshot waits for applied updates to reach the location table."""
LAND_POLL = 0.001
"""How often (seconds) the lag meter looks for updates handed to ``apply``."""
LAND_LIMIT = 5.0
"""Seconds after which an update not yet in the location table is no longer measured."""
LANDINGS = 20000
"""Updates whose lag is kept for the ``lags`` control command."""
RESUBSCRIBE_AFTER = 3.0
"""Seconds a peer may go unheard (unknown or dead) before its subscription is made anew."""


class Heard(NamedTuple):
    """An inbox message: a message read from a peer's publisher (an update, a
    heartbeat, bans, or another actor's kind), already decoded and checked."""

    kind: bytes
    peer: str
    msg: Any


class PeersChanged(NamedTuple):
    """An inbox message: the master's new membership (``set_peers``)."""

    peers: list[Peer]


class SnapshotDone(NamedTuple):
    """An inbox message: the snapshot ``request`` from ``peer`` arrived whole."""

    peer: str
    request: int
    epoch: int
    seq: int
    versions: Versions | None


class SnapshotFailed(NamedTuple):
    """An inbox message: the snapshot ``request`` from ``peer`` failed."""

    peer: str
    request: int
    reason: str


InboxMessage = Heard | PeersChanged | SnapshotDone | SnapshotFailed


def yield_to_sip(limit: float = YIELD_LIMIT) -> None:
    """Let every ready greenlet and pending I/O run first, for at most ``limit`` seconds.

    Snapshots go batch by batch through here, so a resync never starves SIP
    processing, and a busy node still moves a batch every ``limit`` seconds.
    """
    with gevent.Timeout(limit, False):
        gevent.idle()


def make_bus(cfg: NodeConfig) -> Bus:
    """The node's bus: its key pair; peers on the bus, and peers, itself,
    ``control_keys`` and the master (named ``master``) on the control endpoint.
    Raises ``BusError`` on a bad key."""
    if not cfg.secret_key or not cfg.public_key:
        raise BusError(
            "the cluster needs [cluster] secret_key and public_key (make them with `run.py keys`)"
        )
    bus = Bus(cfg.public_key, cfg.secret_key, cfg.id)
    allow_peers(bus, cfg, cfg.peers)
    return bus


def allow_peers(bus: Bus, cfg: NodeConfig, peers: list[Peer]) -> None:
    """Let ``peers`` in: on the bus, and with ``control_keys``, the master and the node
    itself on the control endpoint (every other key is refused from now on)."""
    keys = {}
    for p in peers:
        if not p.public_key:
            raise BusError(f"peer {p.id} has no public_key")
        keys[p.public_key] = p.id
    control = {k: f"client{i}" for i, k in enumerate(cfg.control_keys)}
    if cfg.master_key:
        control[cfg.master_key] = MASTER
    bus.allow(CONTROL_DOMAIN, {**control, **keys, cfg.public_key: cfg.id})
    bus.allow(BUS_DOMAIN, keys)


class Replicator:
    """Replication of one node's bindings to and from its peers.

    ``publish(changes)`` is the registrar's ``on_commit`` hook; ``apply`` is
    called with lists of received bindings; ``synced``/``state`` say whether
    the node holds a snapshot from every live peer (or waited ``alone_wait``
    alone). With no peers and no ``[cluster] pub`` it runs no sockets and is
    synced at once. ``settled()`` (default: always true) says whether every
    list given to ``apply`` so far is in the location table; a snapshot
    claims the versions it holds of other origins only once it is.
    """

    def __init__(
        self,
        cfg: NodeConfig,
        epoch: int,
        location: Location,
        apply: Callable[[list[Binding]], None],
        bus: Bus | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        settled: Callable[[], bool] | None = None,
        on_bans: Callable[[str, list[tuple[str, str, float]]], None] | None = None,
    ):
        self.cfg = cfg
        self.id = cfg.id
        self.epoch = epoch
        self.location = location
        self.apply = apply
        self.settled = settled or (lambda: True)
        self.clock = clock
        self.monotonic = monotonic
        self.clustered = bool(cfg.peers or cfg.bus_pub)
        if self.clustered and not (cfg.bus_pub and cfg.bus_snapshot):
            raise BusError("a clustered node needs [cluster] pub and snapshot endpoints")
        if bus is None and self.clustered:
            bus = make_bus(cfg)
        self.bus = bus
        self.control: ControlServer | None = None
        """The node's ``ControlServer`` when ``attach_replicator`` made one."""
        self.peers = {p.id: p for p in cfg.peers}
        self.core = Replication(
            cfg.id,
            self.peers,
            monotonic(),
            suspect_after=cfg.suspect_after,
            dead_after=cfg.dead_after,
            alone_wait=cfg.alone_wait,
            heartbeat=cfg.heartbeat,
            retry_after=min(1.0, cfg.sync_timeout),
        )
        if not self.clustered:
            self.core.synced = True
        self.published_seq = 0
        #: bans to publish (``share_bans``); ``on_bans(origin, bans)`` applies a peer's
        self._bans: list[Ban] = []
        self.on_bans = on_bans
        #: ``on_snapshot_request(peer)``, when set, hears of each snapshot a peer asks for
        self.on_snapshot_request: Callable[[str], None] | None = None
        self.receivers: dict[
            bytes, tuple[Callable[[bytes], tuple[str, Any]], Callable[[str, Any], None]]
        ] = {}
        """Other actors' bus kinds (``add_kind``): kind -> (decode, handle)."""
        self._frames: deque[tuple[bytes, bytes]] = deque(maxlen=10000)
        """Other actors' messages waiting for the publisher (``publish_frame``)."""
        self.inbox: Queue[InboxMessage] = Queue()
        self.outbox: Queue = Queue()
        self.group = Group()
        self.syncs = Group()
        self.lags: deque[float] = deque(maxlen=4096)
        """Lag (seconds) of each of the latest bindings received live."""
        self.landings: deque[tuple[str, int, int, int, float]] = deque(maxlen=LANDINGS)
        """``(origin, epoch, first seq, last seq, lag seconds)`` of the latest updates."""
        self._in_flight: deque[tuple[ApplyBindings, float]] = deque()
        self._subscribers: dict[str, tuple[gevent.Greenlet, object, float]] = {}
        """Each peer's subscriber greenlet, SUB socket and when it was made."""
        self._on_failure: Callable[[gevent.Greenlet], None] | None = None
        self._pub_endpoint = ""
        self._drop_subscribers = False
        """Set when a peer was removed: the publisher drops every connection to its PUB
        socket (the others reconnect; the removed key is refused)."""
        self._landed = Event()
        self._newer_from: set[str] = set()
        """Peers (ZAP names, so bounded) whose newer messages were logged already."""
        self.stats = {
            "published": 0,
            "published_bindings": 0,
            "applied_bindings": 0,
            "snapshots_served": 0,
            "snapshot_bindings_received": 0,
            "bad_messages": 0,
            "lag_unmeasured": 0,
            "from_removed_peers": 0,
            "newer_protocol": 0,
            "unknown_kinds": 0,
        }

    @property
    def synced(self) -> bool:
        """Whether the node may serve SIP (see the class doc)."""
        return self.core.synced

    @property
    def state(self) -> str:
        """``syncing`` or ``synced``."""
        return self.core.state

    def retry_after(self) -> int:
        """Seconds for a ``Retry-After`` header while syncing."""
        return self.core.retry_after_hint(self.monotonic())

    def start(self, on_failure: Callable[[gevent.Greenlet], None] | None = None) -> None:
        """Start the ZAP handler and every greenlet; ``on_failure(greenlet)`` if one dies."""
        if not self.clustered:
            log.info("replication off: no peers and no [cluster] pub endpoint")
            return
        bus = self.bus
        assert bus is not None  # a clustered replicator always has one
        bus.start()
        beat = (self.cfg.heartbeat, self.cfg.suspect_after)
        pub = bus.server(busmod.zmq.PUB, self.cfg.bus_pub, BUS_DOMAIN, self.cfg.hwm, beat)
        router = bus.server(busmod.zmq.ROUTER, self.cfg.bus_snapshot, BUS_DOMAIN, SNAPSHOT_HWM)
        self._pub_endpoint = pub.last_endpoint.decode()
        self._on_failure = on_failure
        loops = [
            (self._publisher, pub),
            (self._snapshot_server, router),
            (self._lag_meter,),
            (self._run,),
        ]
        for fn, *args in loops:
            g = self.group.spawn(fn, *args)
            if on_failure is not None:
                g.link_exception(on_failure)
        for p in self.peers.values():
            self._follow(p)
        log.info(
            "replicator up: epoch %d, pub %s, snapshot %s, %d peers (%s)",
            self.epoch,
            self.cfg.bus_pub,
            self.cfg.bus_snapshot,
            len(self.peers),
            ", ".join(self.peers) or "none",
        )

    def _follow(self, p: Peer) -> None:
        """Subscribe to ``p``'s PUB socket (its own greenlet and socket)."""
        bus = self.bus
        assert bus is not None
        beat = (self.cfg.heartbeat, self.cfg.suspect_after)
        sub = bus.client(busmod.zmq.SUB, p.bus, p.public_key, self.cfg.hwm, beat)
        g = self.group.spawn(self._subscriber, p.id, sub)
        if self._on_failure is not None:
            g.link_exception(self._on_failure)
        self._subscribers[p.id] = (g, sub, self.monotonic())

    def _unfollow(self, peer: str) -> None:
        """Close ``peer``'s subscription (its greenlet first, out of its recv)."""
        entry = self._subscribers.pop(peer, None)
        if entry is not None and self.bus is not None:
            entry[0].kill(block=True, timeout=1)
            self.bus.close_socket(entry[1])

    def _resubscribe(self, now: float) -> None:
        """Subscribe anew to each peer unheard for ``RESUBSCRIBE_AFTER``: ZeroMQ does not
        retry a connection the peer's ZAP handler refused, which happens to a node that
        joined while its peers did not know its key yet (the master tells them a moment
        later); other connections ZeroMQ retries by itself, and a new one costs nothing."""
        for peer, (_, _, since) in list(self._subscribers.items()):
            state = self.core.peers[peer].liveness.state if peer in self.core.peers else ALIVE
            if state not in (ALIVE, SUSPECTED) and now - since >= RESUBSCRIBE_AFTER:
                self._unfollow(peer)
                self._follow(self.peers[peer])

    def set_peers(self, peers: list[Peer]) -> None:
        """New membership from the master (``actors.membership``): applied by the main
        loop, which owns the peers: new ones are followed, removed ones dropped."""
        if self.clustered:
            self.inbox.put(PeersChanged(list(peers)))

    def _change_peers(self, peers: list[Peer]) -> None:
        wanted = {p.id: p for p in peers if p.id != self.id}
        removed = [k for k, p in self.peers.items() if wanted.get(k) != p]
        added = [p for k, p in wanted.items() if self.peers.get(k) != p]
        if not removed and not added:
            return
        bus = self.bus
        assert bus is not None
        allow_peers(bus, self.cfg, list(wanted.values()))
        for peer in removed:
            self._unfollow(peer)
            self.core.remove_peer(peer)
            del self.peers[peer]
        for p in added:
            self.peers[p.id] = p
            self.core.add_peer(p.id)
            self._follow(p)
        self.cfg.peers = list(self.peers.values())
        if removed:
            self._drop_subscribers = True
        log.warning(
            "peers now %s (added %s, removed %s)",
            ", ".join(self.peers) or "none",
            ", ".join(p.id for p in added) or "none",
            ", ".join(removed) or "none",
        )

    def _rebind(self, sock: "zmq.Socket[bytes]") -> None:
        """Drop every connection to the PUB socket by unbinding and binding it again:
        the peers reconnect within ``reconnect_ivl`` through the ZAP handler, a removed
        key is refused, and what was in flight shows as a gap (then a snapshot)."""
        endpoint = self._pub_endpoint
        try:
            sock.unbind(endpoint)
        except busmod.zmq.ZMQError as e:
            log.warning(
                "cannot drop the connections to %s (%s): a removed peer keeps "
                "receiving until it disconnects",
                endpoint,
                e,
            )
            return
        deadline = self.monotonic() + 5.0
        while True:
            try:
                sock.bind(endpoint)
                break
            except busmod.zmq.ZMQError as e:
                if self.monotonic() > deadline:
                    raise BusError(f"cannot bind {endpoint} again: {e}") from None
                gevent.sleep(0.01)
        log.info("bus connections dropped: removed peers are refused from now on")

    def stop(self) -> None:
        """Stop the control endpoint, every greenlet, and close the bus."""
        if self.control is not None:
            self.control.stop()
        self.syncs.kill(block=True, timeout=1)
        self.group.kill(block=True, timeout=1)
        if self.bus is not None:
            self.bus.close()
        log.info("replicator stopped")

    def publish(self, changes: list[Binding]) -> None:
        """The registrar's ``on_commit``: queue one committed batch for publication,
        stamped with the commit's wall time."""
        if changes and self.clustered:
            self.outbox.put((self.clock(), changes))

    def share_bans(self, bans: list[Ban]) -> None:
        """Queue bans made or lifted here (``sipcore.authguard.Ban``) for the
        peers; published with the next update or heartbeat."""
        if bans and self.clustered:
            self._bans.extend(bans)
            del self._bans[: -MAX_BANS * 10]

    def add_kind(
        self,
        kind: bytes,
        decode: Callable[[bytes], tuple[str, Any]],
        handle: Callable[[str, Any], None],
    ) -> None:
        """Receive bus messages of ``kind`` for another actor: ``decode(body)`` returns
        ``(sender, payload)`` or raises ``WireError`` (``NewerMessage`` for a newer
        version); ``handle(peer, payload)`` runs in the main loop."""
        self.receivers[kind] = (decode, handle)

    def publish_frame(self, kind: bytes, body: bytes) -> None:
        """Queue one message of another actor for the PUB socket (every peer; the caller
        checks ``core.peers_support`` first). At most 10,000 wait; older ones go first."""
        if self.clustered:
            self._frames.append((kind, body))
            self.outbox.put((0.0, []))  # wakes the publisher

    def _publisher(self, sock: "zmq.Socket[bytes]") -> None:
        heartbeat = self.cfg.heartbeat
        next_beat = self.monotonic()
        outbox = self.outbox
        while True:
            try:
                committed_at, changes = outbox.get(timeout=max(0.0, next_beat - self.monotonic()))
            except Empty:
                changes = None
            if changes:
                body = encode_update(self.id, changes[0].epoch, committed_at, changes)
                send(sock, [busmod.UPDATE, body])
                self.published_seq = changes[-1].seq
                self.stats["published"] += 1
                self.stats["published_bindings"] += len(changes)
            if self._bans:
                bans, self._bans = self._bans, []
                for i in range(0, len(bans), MAX_BANS):
                    send(sock, [busmod.BANS, encode_bans(self.id, bans[i : i + MAX_BANS])])
            frames = self._frames
            while frames:
                send(sock, list(frames.popleft()))
            if self._drop_subscribers:
                self._drop_subscribers = False
                self._rebind(sock)
            if self.monotonic() >= next_beat:
                body = encode_heartbeat(
                    self.id,
                    self.clock(),
                    self.epoch,
                    self.published_seq,
                    self.core.state,
                    self.core.versions(),
                )
                send(sock, [busmod.HEARTBEAT, body])
                next_beat = self.monotonic() + heartbeat

    def _subscriber(self, peer: str, sock: "zmq.Socket[bytes]") -> None:
        put = self.inbox.put
        while True:
            frames = recv(sock)
            try:
                if len(frames) != 2:
                    raise WireError(f"{len(frames)} frames")
                kind, body = frames
                msg: Update | Heartbeat | tuple[str, list[tuple[str, str, float]]] | object
                if kind == busmod.UPDATE:
                    msg = decode_update(body)
                    sender = msg.origin
                elif kind == busmod.HEARTBEAT:
                    msg = decode_heartbeat(body)
                    sender = msg.node
                elif kind == busmod.BANS:
                    msg = decode_bans(body)
                    sender = msg[0]
                elif kind in self.receivers:
                    sender, msg = self.receivers[kind][0](body)
                else:
                    # A kind of a newer release (sipcore.protocol): not ours to read.
                    self.stats["unknown_kinds"] += 1
                    log.debug("ignored a message of unknown kind %r from %s", kind[:8], peer)
                    continue
                if sender != peer:
                    raise WireError(f"message of {sender} on {peer}'s connection")
            except NewerMessage as e:
                self._newer(peer, "a message", e)
                continue
            except WireError as e:
                self.stats["bad_messages"] += 1
                log.warning("dropped a bad message from %s: %s", peer, e)
                continue
            put(Heard(kind, peer, msg))

    def _newer(self, peer: str, what: str, error: NewerMessage) -> None:
        """Count a message of a newer protocol version; log it once per peer (a newer
        release should not send it: see ``sipcore.protocol``)."""
        self.stats["newer_protocol"] += 1
        level = logging.DEBUG if peer in self._newer_from else logging.WARNING
        self._newer_from.add(peer)
        log.log(level, "dropped %s from %s: %s", what, peer, error)

    def _run(self) -> None:
        tick_every = min(0.1, self.cfg.heartbeat / 2)
        next_tick = self.monotonic()
        core = self.core
        while True:
            item: InboxMessage | None
            try:
                item = self.inbox.get(timeout=max(0.0, next_tick - self.monotonic()))
            except Empty:
                item = None
            now = self.monotonic()
            if isinstance(item, PeersChanged):
                self._change_peers(item.peers)
            elif item is not None and item.peer not in core.peers:
                # Queued before its sender was removed: no longer ours to apply.
                self.stats["from_removed_peers"] += 1
            elif isinstance(item, Heard):
                self._heard(item, now)
            elif isinstance(item, SnapshotDone):
                self._act(
                    core.snapshot_completed(
                        item.peer, item.request, item.epoch, item.seq, now, item.versions
                    )
                )
            elif isinstance(item, SnapshotFailed):
                self._act(core.snapshot_failed(item.peer, item.request, item.reason, now))
            if now >= next_tick:
                self._act(core.tick(now))
                self._resubscribe(now)
                next_tick = now + tick_every

    def _heard(self, heard: Heard, now: float) -> None:
        kind, peer, msg = heard
        core = self.core
        if kind == busmod.UPDATE:
            self._act(core.update_received(peer, msg, now))
        elif kind == busmod.HEARTBEAT:
            self._act(core.heartbeat_received(peer, msg, now, self.clock()))
        elif kind == busmod.BANS:
            if self.on_bans is not None:
                self.on_bans(peer, msg[1])
        elif kind in self.receivers:
            self.receivers[kind][1](peer, msg)

    def _act(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, ApplyBindings):
                self.stats["applied_bindings"] += len(a.bindings)
                self.apply(a.bindings)
                self._in_flight.append((a, self.clock()))
                self._landed.set()
            elif isinstance(a, RequestSnapshot):
                log.info("asking %s for a snapshot (%s)", a.peer, a.reason)
                self.syncs.spawn(self._sync, a.peer, a.request)
            elif isinstance(a, Notice):
                log.log(logging.WARNING if a.warning else logging.INFO, "%s", a.text)

    def _lag_meter(self) -> None:
        """Record each applied update's lag once the location table holds it."""
        pending = self._in_flight
        get = self.location.get
        while True:
            self._landed.wait()
            while pending:
                now = self.clock()
                for _ in range(len(pending)):
                    a, handed_at = pending.popleft()
                    last = a.bindings[-1]
                    held = get(last.aor).get(last.key)
                    if held is not None and not is_newer(last, held):
                        lag = max(0.0, now - a.sent_at)
                        first = a.bindings[0]
                        self.lags.extend(itertools.repeat(lag, min(len(a.bindings), 4096)))
                        self.landings.append((first.origin, first.epoch, first.seq, last.seq, lag))
                    elif now - handed_at < LAND_LIMIT:
                        pending.append((a, handed_at))
                    else:
                        self.stats["lag_unmeasured"] += 1
                if pending:
                    gevent.sleep(LAND_POLL)
            self._landed.clear()

    def _sync(self, peer: str, request: int) -> None:
        """Fetch one snapshot from ``peer``, applying batches as they come."""
        p = self.peers.get(peer)
        if p is None:
            return  # removed since it was asked for
        timeout = self.cfg.sync_timeout
        started = self.monotonic()
        bus = self.bus
        assert bus is not None  # only a clustered replicator syncs
        sock = None
        try:
            sock = bus.client(busmod.zmq.DEALER, p.snapshot, p.public_key, SNAPSHOT_HWM)
            send(
                sock,
                [busmod.SNAPSHOT_REQUEST, encode_snapshot_request(self.id, request)],
                timeout=timeout,
            )
            assembler = SnapshotAssembler(request)
            while True:
                frames = recv(sock, timeout)
                if frames is None:
                    raise BusError(f"no snapshot data for {timeout} s")
                if len(frames) != 2:
                    raise WireError(f"{len(frames)} frames in a snapshot reply")
                kind, body = frames
                if kind == busmod.SNAPSHOT_BATCH:
                    bindings = assembler.add(body)
                    for i in range(0, len(bindings), APPLY_CHUNK):
                        self.apply(bindings[i : i + APPLY_CHUNK])
                        yield_to_sip()
                elif kind == busmod.SNAPSHOT_END:
                    end = assembler.finish(body)
                    break
                else:
                    raise BusError(f"snapshot refused: {body[:200].decode(errors='replace')}")
        except (BusError, WireError, SnapshotError) as e:
            self.inbox.put(SnapshotFailed(peer, request, str(e)))
            return
        except Exception as e:
            log.exception("snapshot from %s crashed", peer)
            self.inbox.put(SnapshotFailed(peer, request, repr(e)))
            return
        finally:
            if sock is not None:
                bus.close_socket(sock)
        self.stats["snapshot_bindings_received"] += end.count
        log.info(
            "snapshot from %s: %d bindings in %d batches, %.0f ms, digest ok",
            peer,
            end.count,
            end.batches,
            (self.monotonic() - started) * 1000,
        )
        self.inbox.put(SnapshotDone(peer, request, end.epoch, end.seq, end.versions))

    def _snapshot_server(self, sock: "zmq.Socket[bytes]") -> None:
        while True:
            frames, user = recv_from(sock)
            try:
                if len(frames) != 3 or frames[1] != busmod.SNAPSHOT_REQUEST:
                    raise WireError("not a snapshot request")
                node, request = decode_snapshot_request(frames[2])
                if node != user:
                    raise WireError(f"request names {node} but the key is {user}'s")
            except NewerMessage as e:
                self._newer(user or "?", "a snapshot request", e)
                continue
            except WireError as e:
                self.stats["bad_messages"] += 1
                log.warning("dropped a bad snapshot request from %s: %s", user or "?", e)
                continue
            if self.on_snapshot_request is not None:
                self.on_snapshot_request(node)
            try:
                self._serve_snapshot(sock, frames[0], node, request)
            except BusError as e:
                log.warning("snapshot for %s aborted: %s", node, e)

    def _serve_snapshot(
        self, sock: "zmq.Socket[bytes]", ident: bytes, node: str, request: int
    ) -> None:
        started = self.monotonic()
        versions = self.core.versions()
        with gevent.Timeout(SETTLE_LIMIT, False):
            while not self.settled():
                gevent.sleep(LAND_POLL)
        if not self.settled():
            log.info(
                "updates still on their way to the table: the snapshot for %s "
                "claims no version of other origins",
                node,
            )
            versions = {}
        wall = self.clock()
        bindings = [b for b in self.location.all() if b.expires_at > wall]
        epoch, seq = self.epoch, self.published_seq
        rate = self.cfg.snapshot_rate
        sent = 0
        for is_end, body, n in snapshot_stream(
            request, bindings, max(1, self.cfg.snapshot_batch), epoch, seq, versions
        ):
            kind = busmod.SNAPSHOT_END if is_end else busmod.SNAPSHOT_BATCH
            send(sock, [ident, kind, body], timeout=self.cfg.sync_timeout)
            sent += n
            delay = started + sent / rate - self.monotonic() if rate else 0.0
            if delay > 0:
                gevent.sleep(delay)
            else:
                yield_to_sip()
        self.stats["snapshots_served"] += 1
        log.info(
            "served a snapshot of %d bindings to %s at epoch %d seq %d in %.0f ms",
            len(bindings),
            node,
            epoch,
            seq,
            (self.monotonic() - started) * 1000,
        )

    def status(self, request: dict[str, Any] | None = None) -> dict[str, Any]:
        """Node id, its protocol version (``pv``), sync state, peers with their liveness
        and announced protocol version, and counts (for ``control``).

        ``lag_ms`` gives the p50 and p99 over the latest 4096 bindings received
        live: wall time from the origin's commit to this node's location table
        holding the binding. With ``{"brief": true}`` the reply leaves out what
        costs a pass over the table or the lags (``bindings``, ``entries``,
        ``lag_ms``), for polling a large table.
        """
        out = {
            "id": self.id,
            "pv": PROTOCOL_VERSION,
            "state": self.state,
            "epoch": self.epoch,
            "seq": self.published_seq,
            "peers": {k: v.status() for k, v in self.core.peers.items()},
            "bus": dict(self.bus.stats) if self.bus else {},
            **self.stats,
        }
        if (request or {}).get("brief"):
            return out
        lags = sorted(self.lags)
        pick = (
            (lambda f: round(lags[min(len(lags) - 1, int(f * len(lags)))] * 1000, 3))
            if lags
            else (lambda f: None)
        )
        out.update(
            bindings=self.location.live_count(self.clock()),
            entries=len(self.location),
            lag_ms={"p50": pick(0.5), "p99": pick(0.99), "samples": len(lags)},
            peer_lag_ms=self.peer_lags(),
        )
        return out

    def peer_lags(self, per_peer: int = 256) -> dict[str, float]:
        """Median lag (ms) of the latest ``per_peer`` live updates from each peer: from
        the peer's commit to this node's location table holding them."""
        recent: dict[str, list[float]] = {}
        for origin, _e, _f, _l, lag in reversed(self.landings):
            kept = recent.setdefault(origin, [])
            if len(kept) < per_peer:
                kept.append(lag)
        return {origin: round(sorted(v)[len(v) // 2] * 1000, 3) for origin, v in recent.items()}

    def lag_list(self, request: dict[str, Any] | None = None) -> dict[str, Any]:
        """The latest live updates received with their lag in ms (``origin`` filters).

        Each entry is ``[origin, epoch, first seq, last seq, lag ms]``; the lag
        runs from the origin's commit to this node's location table holding it.
        """
        origin = (request or {}).get("origin")
        return {
            "id": self.id,
            "unmeasured": self.stats["lag_unmeasured"],
            "updates": [
                [o, e, f, la, round(lag * 1000, 3)]
                for o, e, f, la, lag in self.landings
                if origin in (None, o)
            ],
        }

    def digest(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        """Digest of every unexpired binding and tombstone (``SetDigest.summary``)."""
        wall = self.clock()
        bindings = self.location.all()
        d = SetDigest()
        for i in range(0, len(bindings), 5000):
            d.add(bindings[i : i + 5000], wall)
            gevent.sleep(0)
        return {"id": self.id, "state": self.state, **d.summary()}


def attach_replicator(node: "Node") -> Replicator:
    """Wire a replicator, and the control endpoint when configured, into a ``Node``.

    Gives it the registrar's ``merge`` (and its inbox, to know when merges
    have reached the table) and the node's ``peer_bans``; the node's
    ``publish`` (the registrar's ``on_commit``) hands it each commit. Starts
    the replicator (and
    ``[cluster] control`` with ``status``, ``digest`` and ``lags``), and sets
    ``node.replicator``.
    Call it after the registrar is built and before the transport starts,
    so no commit goes unpublished; ``node.replicator.stop()`` stops both.
    Raises ``BusError`` on a bad key or an endpoint that cannot be bound.
    """
    cfg = node.cfg
    registrar = node.registrar
    assert registrar is not None, "built before the replicator"
    rep = Replicator(
        cfg,
        registrar.sequencer.epoch,
        node.location,
        registrar.merge,
        settled=registrar.inbox.empty,
        on_bans=node.peer_bans,
    )
    rep.start(on_failure=node.actor_died)
    if cfg.control:
        if rep.bus is None:
            rep.bus = make_bus(cfg)
        control = ControlServer(
            rep.bus, cfg.control, {"status": rep.status, "digest": rep.digest, "lags": rep.lag_list}
        )
        control.start(on_failure=node.actor_died)
        rep.control = control
    node.replicator = rep
    return rep
