"""The proxy actor: calls between phones and to other domains.

One greenlet owns the inbox and the ``sipcore.forking.ProxyCore`` (with its
transaction layer and every response context). It takes what waits in the
inbox as one batch, feeds it to the core with the time, fires due timers,
and hands what the core produced to the transport. Nothing in its loop
waits on the network:

- RFC 3263 lookups run in a greenlet each (``actors.dns.Resolver``
  blocks only its caller) and come back through the inbox;
- a message for a TCP peer without a connection is sent by a greenlet
  that connects first (a dead peer costs that greenlet the connect
  timeout, not the actor); a failed send comes back as a transport error;
- UDP sends never wait, so thousands of transactions to a target that
  never answers cost memory and timers, not time.

When the inbox holds a large backlog (half of ``batch_max`` items in one
turn), the core sends ``100 Trying`` at once instead of holding it back,
so that callers waiting on a busy node stop retransmitting their INVITEs.

The loop waits on its inbox without a timeout (a gevent ``Timeout`` per
wait costs as much as handling a small message); a ticker greenlet puts a
tick in the inbox when the core's next timer is due, checking every
``tick`` seconds, so timers fire at most that late.
"""

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import gevent
from gevent.queue import Empty, Queue

from sipcore.digest import Authenticator
from sipcore.forking import ProxyCore
from sipcore.location import Location
from sipcore.message import Request, Response
from sipcore.proxy import Lookup, ProxySettings
from sipcore.rfc3263 import Target
from sipcore.via import Dest

from .call_log import CallLog
from .config import NodeConfig, cluster_addresses
from .dns import Resolver
from .limits import emergency_numbers
from .transport import Transport

if TYPE_CHECKING:
    from .call_outbox import CallOutbox
    from .dialogs import Dialogs
    from .emergency_notify import EmergencyNotifier

log = logging.getLogger(__name__)


class Received(NamedTuple):
    """An inbox message: a request or response from the transport."""

    msg: Request | Response
    source: Dest


class Resolved(NamedTuple):
    """An inbox message: the targets an RFC 3263 lookup found (empty: none)."""

    token: int
    targets: list[Target]


class SendFailed(NamedTuple):
    """An inbox message: a TCP connection to ``dest`` could not be made or written."""

    dest: Dest


class Tick(NamedTuple):
    """An inbox message: the core's next timer is due (``ProxyActor._ticker``)."""


_TICK = Tick()

InboxMessage = Received | Resolved | SendFailed | Tick


class ProxyActor:
    """The transaction-stateful forking proxy of a node.

    ``core`` is the sans-IO proxy, ``transport`` has ``send(dest, data) ->
    bool`` and a ``connections`` dict of open TCP connections keyed by
    ``(host, port)``, ``resolver`` a ``Resolver`` (or anything with its
    ``resolve`` method). ``batch_max`` bounds the inbox items handled per
    turn of the loop; ``tick`` how late a timer may fire.
    """

    def __init__(
        self,
        core: ProxyCore,
        transport: Transport,
        resolver: Resolver,
        batch_max: int = 512,
        tick: float = 0.01,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ):
        self.core = core
        self.transport = transport
        self.resolver = resolver
        self.batch_max = batch_max
        self.tick = tick
        self.monotonic = monotonic
        self.clock = clock
        self.inbox: Queue[InboxMessage] = Queue()
        self.greenlet = None
        self._connecting: dict[Dest, list[bytes]] = {}
        self._failed: list[Dest] = []
        self._deadline: float | None = None
        self._ticked = False
        self.call_log = CallLog()
        self.outbox: CallOutbox | None = None
        """A ``CallOutbox`` that keeps call events for the master, if the node gave one."""
        self.notifier: EmergencyNotifier | None = None
        """An ``EmergencyNotifier`` that tells of emergency calls, if the node gave one."""
        self.dialogs: Dialogs | None = None
        """The node's ``actors.dialogs.Dialogs``, which keeps the calls' dialog records."""

    @classmethod
    def from_config(
        cls,
        cfg: NodeConfig,
        secret: bytes,
        user_lookup: Callable[[str], dict[str, str] | None],
        location: Location,
        transport: Transport,
        auth: Authenticator | None = None,
    ) -> "ProxyActor":
        """Build the actor of a node: ``auth`` (the node's Authenticator, whose
        nonces, counts and guard the registrar shares) or one of its own (same
        secret and users), the location table (read only), a resolver on
        ``cfg.dns_servers``/``cfg.dns_port`` (the system's when none). The
        secret keys the Record-Route tokens too."""
        settings = ProxySettings(
            cfg.domain,
            cfg.address,
            transport.port,
            tuple(cfg.aliases),
            secret=secret,
            cluster=cluster_addresses(cfg, transport.port),
            emergency=emergency_numbers(cfg),
            max_branches=cfg.max_branches,
            nat_handling=cfg.nat_handling,
            tls_port=transport.tls_port if transport.tls else 0,
            node_id=cfg.id,
            rr_host=cfg.record_route,
            peer_hops=tuple((p.id, p.sip) for p in cfg.peers if p.sip),
        )
        if auth is None:
            auth = Authenticator(
                cfg.domain,
                secret,
                user_lookup,
                cfg.nonce_lifetime,
                tuple(cfg.auth_algorithms),
                max_nonces=500_000,
            )
        core = ProxyCore(settings, location, auth, t1=cfg.t1, t2=cfg.t2, t4=cfg.t4)
        if transport.tls is not None:
            core.tls_peer = transport.tls_certificate  # peers trusted by certificate
        resolver = Resolver(cfg.dns_servers or None, cfg.dns_port)
        return cls(core, transport, resolver)

    def is_for_node(self, req: Request) -> bool:
        """Whether ``req`` is addressed to the node itself rather than through it: no
        user part, no Route, our domain or address (any port). Read-only, callable
        from any greenlet."""
        ruri = req.ruri
        return (
            ruri.user is None and req.get("route") is None and self.core.settings.is_our_host(ruri)
        )

    def submit(self, msg: Request | Response, source: Dest) -> None:
        """Give the actor a request or response from the transport."""
        self.inbox.put(Received(msg, source))

    def run(self) -> None:
        """The actor's loop: inbox batches, timers, output (and its ticker)."""
        ticker = gevent.spawn(self._ticker)
        try:
            self._loop()
        finally:
            ticker.kill(block=False)

    def _loop(self) -> None:
        inbox = self.inbox
        core = self.core
        monotonic = self.monotonic
        handle = self._handle
        batch_max = self.batch_max
        trying_delay = core.trying_delay
        while True:
            item = inbox.get()
            now = monotonic()
            wall = self.clock()
            core.trying_delay = 0.0 if inbox.qsize() >= batch_max // 2 else trying_delay
            handle(item, now, wall)
            for _ in range(batch_max):
                try:
                    item = inbox.get_nowait()
                except Empty:
                    break
                handle(item, now, wall)
            deadline = core.get_timer()
            if deadline is not None and now >= deadline:
                self._guard(core.handle_timer, now)
            self._flush(now)
            self._deadline = core.get_timer()

    def _ticker(self) -> None:
        """Wake the loop with a tick when the core's next timer is due."""
        monotonic = self.monotonic
        while True:
            gevent.sleep(self.tick)
            deadline = self._deadline
            if deadline is not None and not self._ticked and monotonic() >= deadline:
                self._ticked = True
                self.inbox.put(_TICK)

    def _guard(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("proxy: %s failed", getattr(fn, "__name__", fn))

    def _handle(self, item: InboxMessage, now: float, wall: float) -> None:
        try:
            if isinstance(item, Received):
                self.core.receive(item.msg, item.source, now, wall)
            elif isinstance(item, Resolved):
                self.core.resolved(item.token, item.targets, now)
            elif isinstance(item, SendFailed):
                self.core.transport_error(item.dest, now)
            else:
                self._ticked = False
        except Exception:
            log.exception("proxy: error handling %r", item)

    def _flush(self, now: float) -> None:
        """Send what the core queued, start its lookups, report failed sends back."""
        core = self.core
        transport = self.transport
        send = transport.send
        connections = transport.connections
        for _ in range(10):
            for data, dest in core.messages_to_send():
                if dest[0] == "udp" or (
                    (dest[1], dest[2]) in connections and dest not in self._connecting
                ):
                    if not send(dest, data):
                        self._failed.append(dest)
                else:
                    self._send_later(dest, data)
            for lookup in core.lookups():
                gevent.spawn(self._resolve, lookup)
            events = core.take_call_events()
            if events:
                wall = self.clock()
                self.call_log.record(events, wall)
                if self.outbox is not None:
                    self.outbox.add(events, wall)
                if self.notifier is not None:
                    self.notifier.add(events, wall)
                if self.dialogs is not None:
                    self.dialogs.observe(events, wall)
            if not self._failed:
                return
            failed, self._failed = self._failed, []
            for dest in dict.fromkeys(failed):
                self._guard(core.transport_error, dest, now)

    def _send_later(self, dest: Dest, data: bytes) -> None:
        pending = self._connecting.get(dest)
        if pending is not None:
            pending.append(data)
            return
        self._connecting[dest] = [data]
        gevent.spawn(self._connect_and_send, dest)

    def _connect_and_send(self, dest: Dest) -> None:
        """Open a TCP connection and send what queued for it (outside the actor's loop)."""
        pending = self._connecting[dest]
        ok = True
        try:
            while pending and ok:
                ok = self.transport.send(dest, pending.pop(0))
        finally:
            del self._connecting[dest]
        if not ok:
            self.inbox.put(SendFailed(dest))

    def _resolve(self, lookup: Lookup) -> None:
        """One RFC 3263 resolution in its own greenlet; the answer goes to the inbox."""
        try:
            targets = self.resolver.resolve(
                lookup.host, lookup.port, lookup.transport, lookup.scheme
            )
        except Exception:
            log.exception("proxy: resolving %s failed", lookup.host)
            targets = []
        self.inbox.put(Resolved(lookup.token, targets))
