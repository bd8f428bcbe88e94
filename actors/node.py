"""The node: the supervisor that builds, starts and stops the actors.

It opens the store, fills the location table from it, starts the
transport and the actors, and routes each parsed request to the actor that
owns it. Actors run in a ``gevent.pool.Group``; one that dies takes the
node down with a log line rather than leaving it half alive.
"""

import gc
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Group

from sipcore.authguard import SOURCE, USER, AuthGuard, Ban
from sipcore.digest import Authenticator, origin_tag
from sipcore.errors import SipError
from sipcore.location import Binding, Location, Sequencer
from sipcore.message import Request, Response, error_response, make_response
from sipcore.proxy import options_response
from sipcore.via import Dest
from store import bindings as binding_store
from store.models import close_store, incr_state, init_store
from store.user_directory import UserDirectory

from . import logs
from .ban_keeper import attach_ban_keeper
from .bus import BusError
from .call_outbox import attach_call_outbox
from .emergency_notify import attach_emergency_notify
from .config import (
    ConfigError,
    NodeConfig,
    guard_settings,
    load_config,
    registrar_rules,
    server_uris,
    sqlite_dir,
)
from .config_sync import attach_config_sync
from .dialogs import Dialogs, attach_dialogs
from .drain import Drain, attach_drain
from .gateways import attach_dialing
from .health import DATABASE, Health, attach_health
from .keepalive import Keepalive, attach_keepalive
from .takeover import Takeover, attach_takeover, start_takeover
from .front import STATUS_EVERY, FrontProcess
from .front import paths as front_paths
from .limits import shared_buckets
from .live_settings import use_stored_settings
from .membership import use_stored_peers
from .process import tune_gc
from .proxy import ProxyActor
from .registrar import RegistrarActor
from .registrations import attach_registrations
from .replicator import Replicator, attach_replicator
from .services import Services, attach_services
from .traffic import Traffic, attach_traffic
from .staged import attach_staged
from .transport import Limits, TlsContexts, Transport

log = logging.getLogger(__name__)


class Node:
    """One Tandem node."""

    guard: AuthGuard
    """The password-guessing guard, made by start() from the settings it loads."""

    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.group = Group()
        self.stopped = Event()
        self.location = Location()
        # The actors, built by start() (the attach_* functions set the others).
        self.transport: Transport | None = None
        self.registrar: RegistrarActor | None = None
        self.proxy: ProxyActor | None = None
        self.replicator: Replicator | None = None
        self.front: FrontProcess | None = None
        self.users: UserDirectory | None = None
        self.drain: Drain | None = None
        self.services: Services | None = None
        self.traffic = Traffic()
        self.dialogs: Dialogs | None = None
        self.keepalive: Keepalive | None = None
        self.takeover: Takeover | None = None
        self.health = Health()
        self.failure: str | None = None
        """Why the node stopped by itself (an actor died), None otherwise."""
        self.started_at = 0.0

    def start(self) -> None:
        """Open the store, load the bindings and start every actor."""
        cfg = self.cfg
        os.makedirs(cfg.data_dir, exist_ok=True)
        if db_dir := sqlite_dir(cfg):
            os.makedirs(db_dir, exist_ok=True)
        init_store(cfg.database)
        epoch = incr_state("epoch")
        use_stored_peers(cfg)
        use_stored_settings(cfg)
        now = time.time()
        # Loading allocates an object graph that only grows: a collector pass
        # over it would find nothing, so it is kept out of the way (see below).
        gc.disable()
        loaded = self.location.load(
            b
            for b in map(Binding.from_record, binding_store.load_bindings(include_deleted=True))
            if b.expires_at > now
        )
        users = self.users = UserDirectory(cfg.domain)
        users.reload()
        self.users = users
        secret = bytes.fromhex(cfg.auth_secret) if cfg.auth_secret else secrets.token_bytes(32)
        # Nonces name this node and this boot: an answer counted here is
        # never counted again on a peer or after a restart.
        origin = origin_tag(cfg.id, epoch)
        self.guard = AuthGuard(guard_settings(cfg))
        auth = Authenticator(
            cfg.domain,
            secret,
            users.lookup,
            cfg.nonce_lifetime,
            tuple(cfg.auth_algorithms),
            max_nonces=500_000,
            origin=origin,
            require_qop=cfg.require_qop,
            guard=self.guard,
            server_uris=server_uris(cfg),
        )
        rules = registrar_rules(cfg)
        front_in = front_paths(cfg)[0] if cfg.challenge_front else None
        attach_takeover(self)
        tls = (
            TlsContexts.load(cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_peer_ca)
            if cfg.tls_port
            else None
        )
        guard = self.guard
        transport = self.transport = Transport(
            cfg.address,
            cfg.port,
            self.on_request,
            self.on_response,
            front_path=front_in,
            limits=Limits.from_config(cfg),
            tls=tls,
            tls_port=cfg.tls_port,
            quick=self.on_datagram,
            # One budget per source for the node and its front (counted once).
            shared_buckets=shared_buckets(cfg) if cfg.challenge_front else None,
            trusted=lambda ip: guard.trusted(ip, time.time()),
        )
        timers = {"t1": cfg.t1, "t2": cfg.t2, "t4": cfg.t4}
        registrar = self.registrar = RegistrarActor(
            cfg.id,
            rules,
            auth,
            self.location,
            transport,
            Sequencer(epoch),
            cfg.batch_max,
            timers=timers,
            on_commit=self.publish,
            ban_drop=cfg.ban_response == "drop",
            log_rate=cfg.log_rate,
            health=self.health,
        )
        control = attach_replicator(self).control
        attach_ban_keeper(self)
        if control is not None:
            control.handle("bans", self._list_bans)
            control.handle("unban", self._unban)
            control.handle("ban", self._ban)
        attach_health(self)
        attach_config_sync(self)
        attach_registrations(self)
        transport.start()
        registrar.greenlet = self.spawn_actor(registrar.run)
        proxy = self.proxy = ProxyActor.from_config(
            cfg, secret, users.lookup, self.location, transport, auth
        )
        attach_call_outbox(self)
        attach_dialing(self)
        attach_emergency_notify(self)
        attach_staged(self)
        proxy.greenlet = self.spawn_actor(proxy.run)
        attach_drain(self)
        attach_dialogs(self)
        attach_keepalive(self)
        start_takeover(self)
        self.spawn_actor(self._share_bans)
        if cfg.challenge_front:
            front = self.front = FrontProcess(cfg, secret, origin)
            front.start()
            self.group.spawn(self._tell_front)
        attach_services(self)
        attach_traffic(self)
        self.started_at = now
        tune_gc()
        log.info(
            "node %s up: epoch %d, %d bindings loaded, %d users, domain %s",
            cfg.id,
            epoch,
            loaded,
            len(users.users),
            cfg.domain,
        )

    def spawn_actor(self, run: Callable[[], object]) -> gevent.Greenlet:
        """Run ``run`` in the node's group; its death stops the node (``actor_died``)."""
        greenlet = self.group.spawn(run)
        greenlet.link_exception(self.actor_died)
        return greenlet

    def _share_bans(self) -> None:
        """Log the bans the guard made or lifted, and give them to the peers."""
        replicator = self.replicator
        assert replicator is not None, "started after the replicator"
        while True:
            bans = self.guard.take_new()
            for b in bans:
                if b.until:
                    log.warning(
                        "banned %s %s for %.0f s after repeated failed authentications",
                        b.kind,
                        b.key,
                        b.until - time.time(),
                    )
                else:
                    log.warning("ban of %s %s lifted", b.kind, b.key)
            replicator.share_bans(bans)
            gevent.sleep(0.25)

    def publish(self, changes: list[Binding]) -> None:
        """The registrar's ``on_commit``: give committed changes to the replicator."""
        replicator = self.replicator
        assert replicator is not None, "the registrar commits once the replicator runs"
        replicator.publish(changes)

    def peer_bans(self, origin: str, bans: list[tuple[str, str, float]]) -> None:
        """The replicator's ``on_bans``: apply the bans a peer shares."""
        if self.guard.apply_peer(origin, bans, time.time()):
            shown = ", ".join(f"{k} {key}" + ("" if u else " lifted") for k, key, u in bans[:10])
            log.warning("bans from %s applied: %s", origin, shown)

    def _list_bans(self, _request: dict[str, Any]) -> list[dict[str, Any]]:
        """Bans in force against password guessing: kind, key, seconds left, origin."""
        now = time.time()
        return [
            {
                "kind": b.kind,
                "key": b.key,
                "left": round(b.until - now, 1),
                "origin": b.origin or self.cfg.id,
            }
            for b in self.guard.bans(now)
        ]

    def _unban(self, request: dict[str, Any]) -> bool:
        """Lift a ban on every node: {"kind": "source"|"user", "key": address or user}."""
        kind, key = request.get("kind"), request.get("key")
        if kind not in (SOURCE, USER) or not isinstance(key, str):
            raise BusError('unban needs "kind" (source or user) and "key"')
        return self.guard.lift(kind, key)

    def _ban(self, request: dict[str, Any]) -> bool:
        """Ban on every node: {"kind": "source"|"user", "key", "seconds"} (default ban_time)."""
        kind, key = request.get("kind"), request.get("key")
        seconds = request.get("seconds", self.cfg.ban_time)
        if (
            kind not in (SOURCE, USER)
            or not isinstance(key, str)
            or not key
            or not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or seconds <= 0
        ):
            raise BusError('ban needs "kind" (source or user), "key" and positive "seconds"')
        return self.guard.add(Ban(kind, key, time.time() + seconds), time.time(), share=True)

    def _tell_front(self) -> None:
        while True:
            self.tell_front()
            gevent.sleep(STATUS_EVERY)

    def tell_front(self) -> None:
        """Let the challenge front answer only while the node is synced, healthy and
        not draining (otherwise it passes everything on, to get the node's answer)."""
        front, replicator = self.front, self.replicator
        if front is not None and replicator is not None:
            drain = self.drain
            front.tell(
                replicator.synced and self.health.healthy and not (drain is not None and drain.on)
            )

    def actor_died(self, greenlet: gevent.Greenlet) -> None:
        """An actor's greenlet died: log why and stop the node (a half-alive node
        would keep taking requests it cannot answer), with a failure: the process
        exits 1 (``exit_code``), and its service manager starts it again
        (``Restart=on-failure``), which resyncs from its peers."""
        log.error("actor died: %r; stopping the node", greenlet.exception)
        self.failure = repr(greenlet.exception)
        self.stop()

    @property
    def exit_code(self) -> int:
        """The process's exit status once stopped: 1 after an actor died, else 0."""
        return 1 if self.failure is not None else 0

    def on_request(self, req: Request, dest: Dest) -> None:
        """Route a parsed request to the actor that owns it."""
        # The transport that calls this is started after these are built.
        proxy, replicator, registrar = self.proxy, self.replicator, self.registrar
        assert proxy is not None and replicator is not None and registrar is not None
        method = req.method
        self.traffic.request(method)
        # Syncing, the node's bindings are incomplete, but an emergency call needs none
        # (it goes to the emergency gateways): it passes, with its ACK and CANCEL, and so
        # does what our own Record-Route takes within a dialog (that call's BYE, as when
        # draining; a Route without the dialog's token proves nothing).
        settings = proxy.core.settings
        if not replicator.synced and not (
            (method in ("INVITE", "ACK", "CANCEL") and settings.is_emergency(req.ruri))
            or (
                req.to.tag is not None
                and (route := req.get("route")) is not None
                and settings.is_record_route(route, req)
            )
        ):
            if method != "ACK":
                retry = str(replicator.retry_after())
                self._answer(req, dest, 503, [("Retry-After", retry)], "Syncing")
            return
        drain = self.drain
        if drain is not None and drain.refuses(req):
            drain.refused += 1
            self._answer(req, dest, 503, [("Retry-After", str(drain.retry_after))], "Draining")
            return
        services = self.services
        if method == "REGISTER":
            if services is not None and services.down("registrar"):
                self._answer(req, dest, 503, [("Retry-After", "30")], "Registrar Stopped")
                return
            if self.health.failing(DATABASE):
                # Known to take no write (the health check retries it): the phone
                # tries the next server at once (RFC 3263 4.3).
                wait = [("Retry-After", str(self.health.retry_after))]
                self._answer(req, dest, 503, wait, "Database Unavailable")
                return
            registrar.submit(req, dest)
        elif method == "OPTIONS" and proxy.is_for_node(req):
            if not self.health.healthy:
                # Phones and proxies that watch a server with OPTIONS move away.
                wait = [("Retry-After", str(self.health.retry_after))]
                self._answer(req, dest, 503, wait, "Degraded")
                return
            try:
                resp = options_response(req, secrets.token_hex(6))
            except SipError as err:
                resp = error_response(req, err)
            proxy.transport.send(dest, resp.encode())
        elif services is not None and services.down("proxy"):
            if method != "ACK":
                self._answer(req, dest, 503, [("Retry-After", "30")], "Proxy Stopped")
        else:
            proxy.submit(req, dest)

    def on_datagram(self, data: bytes, ip: str, port: int) -> bool:
        """Offer a UDP datagram to the registrar unparsed (``RegistrarActor.take``)
        while the node is synced and not draining. False when it did not take
        it: the transport then parses it and gives it to ``on_request``."""
        replicator, registrar = self.replicator, self.registrar
        assert replicator is not None and registrar is not None, "called once started"
        if data[:9] != b"REGISTER " or not replicator.synced or self.health.failing(DATABASE):
            return False
        services = self.services
        if services is not None and services.down("registrar"):
            return False
        drain = self.drain
        if drain is not None and drain.on:
            return False
        if registrar.take(data, ip, port):
            self.traffic.request("REGISTER")
            return True
        return False

    def on_response(self, resp: Response, source: Dest) -> None:
        """Responses belong to the proxy's client transactions (dropped while it is
        stopped: its inbox must not grow), but those to the probes and BYEs of calls
        taken over from a dead node (``actors.dialogs``)."""
        dialogs = self.dialogs
        if dialogs is not None and dialogs.response(resp):
            return
        services, proxy = self.services, self.proxy
        if (services is not None and services.down("proxy")) or proxy is None:
            return
        proxy.submit(resp, source)

    def _answer(
        self,
        req: Request,
        dest: Dest,
        status: int,
        headers: list[tuple[str, str]],
        reason: str | None = None,
    ) -> None:
        try:
            resp = make_response(req, status, reason, headers, to_tag=secrets.token_hex(6))
        except SipError as err:
            resp = error_response(req, err)
        if self.transport is not None:
            self.transport.send(dest, resp.encode())

    def stop(self) -> None:
        """Stop receiving, stop the actors, close the store."""
        if self.stopped.is_set():
            return
        log.info("node %s stopping", self.cfg.id)
        if self.front is not None:
            self.front.stop()
        if self.transport is not None:
            self.transport.stop()
        if self.takeover is not None:
            self.takeover.release()
        if self.replicator is not None:
            self.replicator.stop()
        self.group.kill(block=True, timeout=2)
        close_store()
        self.stopped.set()

    def reload(self) -> None:
        """SIGHUP: reopen the log file, apply a changed ``[node] log_level`` and
        reload the user cache; the challenge front gets the SIGHUP too.

        Every other setting needs a restart. A configuration that no longer
        loads is logged and the node carries on with what it has.
        """
        reopened = logs.reopen()
        if self.front is not None and self.front.proc is not None:
            self.front.proc.send_signal(signal.SIGHUP)
        level = self.cfg.log_level
        if self.cfg.source:
            try:
                level = load_config(self.cfg.source).log_level
                logs.set_level(level)
                self.cfg.log_level = level
            except (ConfigError, ValueError) as e:
                log.error("SIGHUP: configuration not reloaded: %s", e)
        if self.users is not None:
            self.users.expire()
        log.warning(
            "SIGHUP: log file %s, log level %s, users reloaded at the next lookup",
            "reopened" if reopened else "not used (stderr)",
            level,
        )

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly; SIGHUP reloads (``reload``)."""
        gevent.signal_handler(signal.SIGTERM, self.stop)
        gevent.signal_handler(signal.SIGINT, self.stop)
        gevent.signal_handler(signal.SIGHUP, self.reload)
        self.stopped.wait()
