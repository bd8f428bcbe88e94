"""The challenge front: a second process that answers REGISTERs without credentials.

Half of the requests a registrar gets are first REGISTERs without
credentials, and their answer, a 401 with a fresh nonce, needs no state:
the nonce is an HMAC under the node's secret, verified later by the node
itself. With ``[sip] challenge_front = true`` the node starts this process,
which binds the same UDP address with SO_REUSEPORT; a BPF program of the
node (``actors.steering``) makes the kernel hand this process the
REGISTERs without credentials, and the node everything else. The front
parses and validates each REGISTER it gets, checks the domain with the
registrar's rules and answers the 401 from the shared port; what it will
not answer (a datagram the program misjudged, anything it would have to
answer with an error) it passes to the node over a Unix socket, with its
source address, untouched. So the node spends its one core on what needs
the location table, and the challenges take the second core.

The front answers only while the node says it is synced and not draining (a
status datagram four times a second, and at once when a drain starts);
otherwise it passes everything on, so a syncing or draining node still
answers 503. If the front dies, the kernel hands the port's datagrams to
the node's own socket again; if the node dies, the front exits.

The front needs no peer list, so the master's pushes of one
(``actors.membership``) go to the node alone: it answers nothing from the
cluster's addresses (a Contact naming a node is the node's to refuse, after
the credentials, as the node does with a REGISTER it gets itself).
"""

import logging
import os
import signal
import socket as _socket
import subprocess
import sys
import time
from typing import Any

import gevent
from gevent import socket
from gevent.event import Event

from sipcore.digest import Authenticator
from sipcore.register import RegisterPath

from . import logs
from .config import NodeConfig, registrar_rules
from .limits import shared_buckets
from .process import STRICT, new_tag, tune_gc
from .transport import Limits, drain, udp_socket, unix_socket, wrap

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: how often the node tells the front its status, and how long the last
#: "synced" lets the front answer
STATUS_EVERY = 0.25
STATUS_VALID = 1.0


def paths(cfg: NodeConfig) -> tuple[str, str]:
    """``(node socket, front socket)``: where the front passes datagrams to (a
    stream), and where the node sends its status (datagrams)."""
    return os.path.join(cfg.data_dir, "front-in.sock"), os.path.join(cfg.data_dir, "front-ctl.sock")


class ChallengeFront:
    """The front's receive loop (one gevent process)."""

    def __init__(
        self,
        cfg: NodeConfig,
        secret: bytes,
        parent: int,
        clock=time.monotonic,
        origin: str = "AAAAAAAA",
    ):
        self.cfg = cfg
        # The node's origin tag: its nonces are the node's own.
        auth = Authenticator(
            cfg.domain,
            secret,
            lambda _user: None,
            cfg.nonce_lifetime,
            tuple(cfg.auth_algorithms),
            origin=origin,
        )
        self.path = RegisterPath(registrar_rules(cfg), auth, new_tag, strict=STRICT)
        self.clock = clock
        self.node_path, self.ctl_path = paths(cfg)
        self.synced_until = 0.0
        self.parent = parent
        # gevent sockets (untyped), bound by start
        self.udp: Any = None
        self.out: Any = None
        self.pending: list[bytes] = []
        self.retry_at = 0.0
        self.ctl: Any = None
        self.stats = {"challenged": 0, "passed": 0, "dropped": 0, "rate_limited": 0}
        # The node's own limit and buckets (a file both map), applied here to the
        # datagrams the kernel hands the front: a source has one budget for both.
        self.limits = Limits.from_config(cfg)
        self.limiter = self.limits.limiter(shared_buckets(cfg))
        self.stopped = Event()

    def start(self) -> None:
        """Bind the shared UDP port and the status socket."""
        family = _socket.AF_INET6 if ":" in self.cfg.address else _socket.AF_INET
        self.udp = udp_socket(family, reuseport=True)
        self.udp.bind((self.cfg.address, self.cfg.port))
        self.ctl = unix_socket(_socket.SOCK_DGRAM, self.ctl_path)
        log.info("challenge front on %s:%d (udp)", self.cfg.address, self.cfg.port)

    def run(self) -> None:
        """Serve until the node goes away."""
        raw_send = self.udp._sock.sendto
        handle = self.handle

        def on_datagram(data, addr):
            handle(data, addr[0], addr[1], raw_send)

        loops = [
            gevent.spawn(drain, self.udp._sock, on_datagram, 64, self.flush),
            gevent.spawn(self._status_loop),
        ]
        try:
            gevent.wait([self.stopped, *loops], count=1)
        finally:
            gevent.killall(loops)
            for s in (self.udp, self.out, self.ctl):
                if s is not None:
                    s.close()
            if os.path.exists(self.ctl_path):
                os.unlink(self.ctl_path)

    def _status_loop(self) -> None:
        while True:
            try:
                answering = self.clock() < self.synced_until
                with gevent.Timeout(STATUS_VALID, False):
                    status = self.ctl.recv(64)
                    if status == b"synced":
                        self.synced_until = self.clock() + STATUS_VALID
                    elif status == b"syncing":
                        self.synced_until = 0.0
                if answering != (self.clock() < self.synced_until):
                    log.info(
                        "answering challenges"
                        if not answering
                        else "node syncing or draining: passing every request on"
                    )
            except OSError as e:
                log.warning("status socket: %s", e)
                gevent.sleep(1.0)
            if os.getppid() != self.parent:
                log.info("node gone; challenge front exits")
                return

    def handle(self, data: bytes, ip: str, port: int, send) -> None:
        """Answer ``data`` with a challenge when it is a REGISTER without
        credentials and the node is synced; otherwise pass it on.

        The 401 is the one REGISTER path's (``RegisterPath.challenge``);
        errors are the node's to answer. A source over its rate limit is
        dropped first, as the node drops it."""
        if self.limits.over_rate(self.limiter, ip, data):
            self.stats["rate_limited"] += 1
            return
        if self.clock() < self.synced_until:
            answer = self.path.challenge(data, ip, port, time.time())
            if answer is not None:
                try:
                    send(*answer)
                    self.stats["challenged"] += 1
                except OSError as e:
                    log.info("sending a challenge to %s:%d failed: %s", ip, port, e)
                return
        self.pending.append(wrap(ip, port, data))

    def flush(self) -> None:
        """Pass the datagrams of the last burst to the node, in one write."""
        frames, self.pending = self.pending, []
        if not frames:
            return
        if self.out is None and self.clock() >= self.retry_at:
            out = socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                out.connect(self.node_path)
                self.out = out
            except OSError as e:
                out.close()
                log.info("cannot reach the node: %s", e)
                self.retry_at = self.clock() + 0.5
        if self.out is None:
            # The node is (re)starting: the phones will retransmit.
            self.stats["dropped"] += len(frames)
            return
        try:
            self.out.sendall(b"".join(frames))
            self.stats["passed"] += len(frames)
        except OSError as e:
            log.info("lost the node: %s", e)
            self.out.close()
            self.out = None
            self.stats["dropped"] += len(frames)


class FrontProcess:
    """The node's handle on its challenge front process."""

    def __init__(self, cfg: NodeConfig, secret: bytes, origin: str):
        self.cfg = cfg
        self.secret = secret
        self.origin = origin
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctl_path = paths(cfg)[1]
        self.status = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        self.status.setblocking(False)

    def start(self) -> None:
        """Start ``run.py front`` for this node's configuration; the secret, the
        node's pid and its nonces' origin tag go on its stdin."""
        if not self.cfg.source:
            raise ValueError("sip.challenge_front needs the node to run from a configuration file")
        proc = self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "run.py"), "front", "--config", self.cfg.source],
            stdin=subprocess.PIPE,
            cwd=ROOT,
        )
        assert proc.stdin is not None
        # The node's pid travels with the secret: a front whose node died
        # before it read them must see it at once.
        proc.stdin.write(
            b"%s %d %s\n" % (self.secret.hex().encode(), os.getpid(), self.origin.encode())
        )
        proc.stdin.close()

    def tell(self, synced: bool) -> None:
        """Send the node's sync status (every ``STATUS_EVERY`` seconds); a dead
        front is reported once."""
        if self.proc is not None and self.proc.poll() is not None:
            log.warning(
                "challenge front exited with %s; the node takes the whole port",
                self.proc.returncode,
            )
            self.proc = None
        if self.proc is None:
            return
        try:
            self.status.sendto(b"synced" if synced else b"syncing", self.ctl_path)
        except OSError:
            # The front has not bound its socket yet: the next status will do.
            pass

    def stop(self) -> None:
        """Stop the front and wait for it."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def serve_front(cfg: NodeConfig, secret: bytes, parent: int, origin: str) -> int:
    """The ``run.py front`` process: serve until SIGTERM or the end of the node ``parent``."""
    front = ChallengeFront(cfg, secret, parent, origin=origin)
    try:
        front.start()
    except OSError as e:
        log.error("challenge front cannot start: %s", e)
        return 1
    gevent.signal_handler(signal.SIGTERM, front.stopped.set)
    gevent.signal_handler(signal.SIGINT, front.stopped.set)
    # The node passes its SIGHUP on: logrotate has moved the shared log file.
    gevent.signal_handler(signal.SIGHUP, logs.reopen)
    tune_gc()
    front.run()
    log.info("challenge front stopped: %s", front.stats)
    return 0
