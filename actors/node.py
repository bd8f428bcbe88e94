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

import gevent
from gevent.event import Event
from gevent.pool import Group

from sipcore.digest import Authenticator
from sipcore.errors import SipError
from sipcore.location import Binding, Location, Sequencer
from sipcore.message import error_response, make_response
from sipcore.proxy import OPTIONS_FIELDS
from sipcore.usual_register import scan
from store import bindings as binding_store
from store import users as user_store
from store.models import close_store, incr_state, init_store

from .config import NodeConfig, registrar_rules, sqlite_dir
from .config_sync import attach_config_sync
from .front import STATUS_EVERY, FrontProcess
from .front import paths as front_paths
from .process import tune_gc
from .proxy import ProxyActor
from .registrar import RegistrarActor
from .registrations import attach_registrations
from .replicator import attach_replicator
from .transport import Transport

log = logging.getLogger(__name__)

class UserDirectory:
    """In-memory HA1 lookup, reloaded when the store's users change.

    Every ``refresh`` seconds it reads the store's users version and
    reloads the whole table only when that moved (a password changed, a
    user was disabled or deleted). A miss reads the store at once, so a
    user added while the node runs can register immediately.
    """

    def __init__(self, domain: str, refresh: float = 10.0, clock=time.time):
        self.domain = domain
        self.refresh = refresh
        self.clock = clock
        self.users: dict[str, dict] = {}
        self.checked_at = 0.0
        self.version = None

    def reload(self) -> None:
        """Read every user of the domain."""
        version = user_store.users_version()
        self.users = user_store.load_user_ha1s(self.domain)
        self.version = version
        self.checked_at = self.clock()

    def lookup(self, username: str) -> dict | None:
        """HA1 values of ``username`` or None."""
        if self.clock() - self.checked_at > self.refresh:
            self.checked_at = self.clock()
            try:
                if user_store.users_version() != self.version:
                    self.reload()
            except Exception as e:
                # Keep authenticating from memory while the store is away.
                log.warning("cannot refresh users: %s", e)
        found = self.users.get(username)
        if found is None:
            found = user_store.get_user_ha1(username, self.domain)
            if found is not None:
                self.users[username] = found
        return found


class Node:
    """One Tandem node."""

    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.group = Group()
        self.stopped = Event()
        self.location = Location()
        self.transport = None
        self.registrar = None
        self.proxy = None
        self.replicator = None
        self.front = None
        self.users = None
        self.started_at = 0.0

    def start(self) -> None:
        """Open the store, load the bindings and start every actor."""
        cfg = self.cfg
        os.makedirs(cfg.data_dir, exist_ok=True)
        if sqlite_dir(cfg):
            os.makedirs(sqlite_dir(cfg), exist_ok=True)
        init_store(cfg.database)
        epoch = incr_state("epoch")
        now = time.time()
        # Loading allocates an object graph that only grows: a collector pass
        # over it would find nothing, so it is kept out of the way (see below).
        gc.disable()
        loaded = self.location.load(
            b for b in map(Binding.from_record, binding_store.load_bindings(include_deleted=True))
            if b.expires_at > now)
        users = self.users = UserDirectory(cfg.domain)
        users.reload()
        secret = bytes.fromhex(cfg.auth_secret) if cfg.auth_secret else secrets.token_bytes(32)
        auth = Authenticator(cfg.domain, secret, users.lookup, cfg.nonce_lifetime,
                             tuple(cfg.auth_algorithms), max_nonces=500_000)
        rules = registrar_rules(cfg)
        front_in = front_paths(cfg)[0] if cfg.challenge_front else None
        self.transport = Transport(cfg.address, cfg.port, self.on_request, self.on_response,
                                   front_path=front_in)
        self.transport.quick = self.on_datagram
        self.domains = frozenset(rules.domains)
        timers = {"t1": cfg.t1, "t2": cfg.t2, "t4": cfg.t4}
        self.registrar = RegistrarActor(cfg.id, rules, auth, self.location, self.transport,
                                        Sequencer(epoch), cfg.batch_max, timers=timers)
        attach_replicator(self)
        attach_config_sync(self)
        attach_registrations(self)
        self.transport.start()
        self.registrar.greenlet = self.group.spawn(self.registrar.run)
        self.registrar.greenlet.link_exception(self._actor_died)
        self.proxy = ProxyActor.from_config(cfg, secret, users.lookup, self.location, self.transport)
        self.proxy.greenlet = self.group.spawn(self.proxy.run)
        self.proxy.greenlet.link_exception(self._actor_died)
        if cfg.challenge_front:
            self.front = FrontProcess(cfg, secret)
            self.front.start()
            self.group.spawn(self._tell_front)
        self.started_at = now
        tune_gc()
        log.info("node %s up: epoch %d, %d bindings loaded, %d users, domain %s",
                 cfg.id, epoch, loaded, len(users.users), cfg.domain)

    def _tell_front(self) -> None:
        while True:
            self.front.tell(self.replicator.synced)
            gevent.sleep(STATUS_EVERY)

    def _actor_died(self, greenlet) -> None:
        log.error("actor died: %r; stopping the node", greenlet.exception)
        self.stop()

    def on_request(self, req, dest) -> None:
        """Route a parsed request to the actor that owns it."""
        method = req.method
        if not self.replicator.synced:
            if method != "ACK":
                retry = str(self.replicator.retry_after())
                self._answer(req, dest, 503, [("Retry-After", retry)], "Syncing")
            return
        if method == "REGISTER":
            self.registrar.submit(req, dest)
        elif method == "OPTIONS" and self.proxy.is_for_node(req):
            self._answer(req, dest, 200, OPTIONS_FIELDS)
        else:
            self.proxy.submit(req, dest)

    def on_datagram(self, data: bytes, ip: str, port: int) -> bool:
        """Give a usual REGISTER (``sipcore.usual_register``) to the registrar
        unparsed: one with credentials to its inbox, one without to be
        challenged at once. False for any other datagram, which the
        transport then parses and gives to ``on_request``."""
        if data[:9] != b"REGISTER " or not self.replicator.synced:
            return False
        usual = scan(data, ip, port, self.domains)
        if usual is None:
            return False
        if "authorization" in usual.fields:
            self.registrar.submit(usual, None)
        else:
            self.registrar.challenge(usual)
        return True

    def on_response(self, resp, source) -> None:
        """Responses belong to the proxy's client transactions."""
        self.proxy.submit(resp, source)

    def _answer(self, req, dest, status, headers, reason=None) -> None:
        try:
            resp = make_response(req, status, reason, headers, to_tag=secrets.token_hex(6))
        except SipError as err:
            resp = error_response(req, err)
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
        if self.replicator is not None:
            self.replicator.stop()
        self.group.kill(block=True, timeout=2)
        close_store()
        self.stopped.set()

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        gevent.signal_handler(signal.SIGTERM, self.stop)
        gevent.signal_handler(signal.SIGINT, self.stop)
        self.stopped.wait()
