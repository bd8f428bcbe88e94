"""The cluster bus: ZeroMQ sockets with CurveZMQ, a ZAP handler, framing and errors.

Both the node's actors and the dashboard use this module and nothing else
of each other. One :class:`Bus` is one ZeroMQ context (``zmq.green``) with
one key pair and one ZAP handler greenlet: server sockets (PUB, ROUTER)
accept only the CurveZMQ client keys allowed for their ZAP domain, so a
process without an accepted key never completes a handshake, receives
nothing and cannot send anything. Clients (SUB, DEALER) authenticate the
server by its public key.

A message is a list of frames: a one-byte type (below), then a body; every
JSON body carries its protocol version ``"pv"`` (``sipcore.protocol``: a kind
a node does not know is ignored and counted, a newer version dropped and
counted). Every ZeroMQ error comes out as :class:`BusError`. Secret keys are
never logged.
"""

import json
import logging
from typing import overload

import gevent
import zmq.green as zmq
from zmq.utils import z85

from sipcore.protocol import stamp

log = logging.getLogger(__name__)

UPDATE = b"U"
"""PUB: one group commit of the sender's binding changes."""
HEARTBEAT = b"H"
"""PUB: the sender's wall clock, epoch, last sequence number and state."""
BANS = b"N"
"""PUB: bans against password guessing made or lifted by the sender (``encode_bans``)."""
DIALOGS = b"D"
"""PUB: dialog records made, taken over or ended by the sender (``sipcore.dialogs``);
sent only when every peer has the ``dialogs`` feature (``sipcore.protocol``)."""
SNAPSHOT_REQUEST = b"S"
"""DEALER to ROUTER: send me every binding and tombstone."""
SNAPSHOT_BATCH = b"B"
"""ROUTER to DEALER: one batch of a snapshot."""
SNAPSHOT_END = b"E"
"""ROUTER to DEALER: the end marker of a snapshot (count, digest, epoch, seq)."""
CONTROL_REQUEST = b"C"
"""DEALER to the control ROUTER: a JSON request ``{"cmd": ...}``."""
CONTROL_REPLY = b"R"
"""Control ROUTER to DEALER: the JSON reply."""

BUS_DOMAIN = "bus"
"""ZAP domain of the replication sockets (peers only)."""
CONTROL_DOMAIN = "control"
"""ZAP domain of the control endpoint (peers, the node itself, the dashboard)."""

MAX_MESSAGE = 64 * 1024 * 1024
"""Largest message a socket accepts (bytes); a bigger one drops the connection."""
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class BusError(Exception):
    """A bus failure: bad key, socket error, timeout or malformed message."""


def generate_keypair() -> tuple[str, str]:
    """A new CurveZMQ key pair ``(public_z85, secret_z85)``."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def check_key(key: str, what: str) -> bytes:
    """``key`` as Z85 bytes if it is a valid 40-character CurveZMQ key, else ``BusError``.

    The message names ``what`` (e.g. "secret_key") and never the key itself.
    """
    if not isinstance(key, str) or len(key) != 40:
        raise BusError(f"{what} must be a 40-character Z85 CurveZMQ key")
    try:
        z85.decode(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError, KeyError, TypeError):
        raise BusError(f"{what} is not valid Z85") from None
    return key.encode("ascii")


def pack(obj) -> bytes:
    """Serialize a JSON-ready object compactly."""
    return json.dumps(obj, separators=(",", ":")).encode()


def unpack(data: bytes) -> dict:
    """Parse a JSON object body, or raise ``BusError``."""
    try:
        obj = json.loads(data)
    except (ValueError, TypeError, RecursionError) as e:
        raise BusError(f"malformed message body: {e}") from None
    if not isinstance(obj, dict):
        raise BusError("message body is not a JSON object")
    return obj


def send(sock, frames: list[bytes], timeout: float | None = None) -> None:
    """Send one multipart message; ``BusError`` on error or after ``timeout`` seconds."""
    try:
        with gevent.Timeout(timeout, BusError(f"send blocked for {timeout} s")):
            sock.send_multipart(frames, copy=len(frames[-1]) < 65536)
    except zmq.ZMQError as e:
        raise BusError(f"send failed: {e}") from None


@overload
def recv(sock, timeout: None = None) -> list[bytes]: ...
@overload
def recv(sock, timeout: float) -> list[bytes] | None: ...
def recv(sock, timeout: float | None = None) -> list[bytes] | None:
    """Receive one multipart message; ``None`` after ``timeout`` seconds; ``BusError`` on error."""
    try:
        with gevent.Timeout(timeout, False):
            return sock.recv_multipart()
        return None
    except zmq.ZMQError as e:
        raise BusError(f"receive failed: {e}") from None


@overload
def recv_from(sock, timeout: None = None) -> tuple[list[bytes], str]: ...
@overload
def recv_from(sock, timeout: float) -> tuple[list[bytes], str] | None: ...
def recv_from(sock, timeout: float | None = None) -> tuple[list[bytes], str] | None:
    """Like ``recv`` on a server socket, with the ZAP user id (the client's name)."""
    try:
        with gevent.Timeout(timeout, False):
            frames = sock.recv_multipart(copy=False)
            user = frames[-1].get("User-Id") if frames else ""
            return [f.bytes for f in frames], user or ""
        return None
    except zmq.ZMQError as e:
        raise BusError(f"receive failed: {e}") from None


class Bus:
    """One ZeroMQ context with this process's key pair and its ZAP handler.

    ``allow(domain, {public_key: name})`` sets which client keys the server
    sockets of ``domain`` accept; ``start()`` must run before any server
    socket is bound (libzmq accepts any key when no ZAP handler is bound).
    """

    def __init__(self, public_key: str, secret_key: str, name: str = ""):
        self.public = check_key(public_key, "public_key")
        self._secret = check_key(secret_key, "secret_key")
        if zmq.curve_public(self._secret) != self.public:
            raise BusError("public_key does not belong to secret_key")
        self.name = name
        self.ctx = zmq.Context()
        self._allowed: dict[bytes, dict[bytes, str]] = {}
        self._sockets: list[zmq.Socket] = []
        self._zap: zmq.Socket | None = None
        self._zap_greenlet: gevent.Greenlet | None = None
        self._refused_keys: set[tuple[bytes, bytes]] = set()
        self.stats = {"accepted": 0, "refused": 0}

    def allow(self, domain: str, keys: dict[str, str]) -> None:
        """Accept these client keys (public Z85 -> client name) on ``domain``'s servers."""
        allowed = {check_key(k, f"public key of {n}"): n for k, n in keys.items()}
        self._allowed[domain.encode()] = allowed

    def start(self) -> None:
        """Bind the ZAP handler and start its greenlet."""
        if self._zap is not None:
            return
        try:
            zap = self._zap = self.ctx.socket(zmq.REP)
            zap.linger = 0
            zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            raise BusError(f"cannot start the ZAP handler: {e}") from None
        self._zap_greenlet = gevent.spawn(self._serve_zap, zap)

    def _serve_zap(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = sock.recv_multipart()
            except zmq.ZMQError as e:
                if e.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    return
                log.warning("ZAP handler receive failed: %s", e)
                continue
            try:
                sock.send_multipart(self._authenticate(frames))
            except zmq.ZMQError as e:
                log.warning("ZAP handler reply failed: %s", e)

    def _authenticate(self, frames: list[bytes]) -> list[bytes]:
        """One ZAP (RFC 27) request in, its reply frames out."""
        if len(frames) < 6:
            return [
                b"1.0",
                frames[1] if len(frames) > 1 else b"",
                b"500",
                b"bad ZAP request",
                b"",
                b"",
            ]
        version, request_id, domain, address, _identity, mechanism = frames[:6]
        allowed = self._allowed.get(domain, {})
        name = None
        key = b""
        if version == b"1.0" and mechanism == b"CURVE" and len(frames) == 7:
            key = z85.encode(frames[6])
            name = allowed.get(key)
        if name is None:
            self.stats["refused"] += 1
            level = logging.DEBUG if (domain, key) in self._refused_keys else logging.WARNING
            if len(self._refused_keys) < 1000:
                self._refused_keys.add((domain, key))
            log.log(
                level,
                "refused %s client key %s from %s on domain %s",
                mechanism.decode(errors="replace"),
                key.decode() or "-",
                address.decode(errors="replace"),
                domain.decode(errors="replace"),
            )
            return [b"1.0", request_id, b"400", b"unknown key", b"", b""]
        self.stats["accepted"] += 1
        return [b"1.0", request_id, b"200", b"OK", name.encode(), b""]

    def server(
        self,
        kind: int,
        endpoint: str,
        domain: str,
        hwm: int = 1000,
        heartbeat: tuple[float, float] | None = None,
    ):
        """Bind a Curve server socket (PUB or ROUTER) on ``endpoint`` for ``domain``.

        ``heartbeat=(interval, timeout)`` turns on ZMTP heartbeats (see ``_socket``).
        """
        if self._zap is None:
            raise BusError("start() the bus before binding a server socket")
        sock = self._socket(kind, hwm, heartbeat)
        try:
            sock.curve_secretkey = self._secret
            sock.curve_publickey = self.public
            sock.curve_server = True
            sock.zap_domain = domain.encode()
            if kind == zmq.ROUTER:
                sock.router_mandatory = 1
            sock.bind(endpoint)
        except zmq.ZMQError as e:
            self._discard(sock)
            raise BusError(f"cannot bind {endpoint}: {e}") from None
        return sock

    def client(
        self,
        kind: int,
        endpoint: str,
        server_key: str,
        hwm: int = 1000,
        heartbeat: tuple[float, float] | None = None,
    ):
        """Connect a Curve client socket (SUB or DEALER) to a server with ``server_key``."""
        sock = self._socket(kind, hwm, heartbeat)
        try:
            sock.curve_serverkey = check_key(server_key, f"public key of {endpoint}")
            sock.curve_publickey = self.public
            sock.curve_secretkey = self._secret
            if kind == zmq.SUB:
                sock.subscribe(b"")
            if kind == zmq.DEALER:
                sock.immediate = 1
            sock.connect(endpoint)
        except (zmq.ZMQError, BusError) as e:
            self._discard(sock)
            raise BusError(f"cannot connect to {endpoint}: {e}") from None
        return sock

    def _socket(self, kind: int, hwm: int, heartbeat: tuple[float, float] | None):
        """A socket with its options set on purpose (before any bind or connect).

        With ``heartbeat=(interval, timeout)`` a connection whose peer answers no
        ZMTP ping for ``timeout`` seconds is dropped (and reconnected); what it
        held is lost, which the sequence numbers then reveal.
        """
        try:
            sock = self.ctx.socket(kind)
        except zmq.ZMQError as e:
            raise BusError(f"cannot create a socket: {e}") from None
        sock.linger = 0
        sock.sndhwm = hwm
        sock.rcvhwm = hwm
        sock.maxmsgsize = MAX_MESSAGE
        sock.reconnect_ivl = 100
        sock.reconnect_ivl_max = 1000
        if heartbeat is not None:
            interval, timeout = heartbeat
            sock.heartbeat_ivl = max(1, int(interval * 1000))
            sock.heartbeat_timeout = max(1, int(timeout * 1000))
            sock.heartbeat_ttl = max(100, int(timeout * 1000))
        self._sockets.append(sock)
        return sock

    def close_socket(self, sock) -> None:
        """Close one socket at once (pending messages are dropped)."""
        self._discard(sock)

    def _discard(self, sock) -> None:
        if sock in self._sockets:
            self._sockets.remove(sock)
        sock.close(linger=0)

    def close(self) -> None:
        """Stop the ZAP handler, close every socket and the context."""
        if self._zap_greenlet is not None:
            self._zap_greenlet.kill(block=False)
            self._zap_greenlet = None
        for sock in list(self._sockets):
            self._discard(sock)
        if self._zap is not None:
            self._zap.close(linger=0)
            self._zap = None
        self.ctx.destroy(linger=0)


def request(bus: Bus, endpoint: str, server_key: str, message: dict, timeout: float = 2.0) -> dict:
    """Send one control request (``{"cmd": ...}``, stamped with this release's protocol
    version, ``sipcore.protocol``) and return its reply.

    Raises ``BusError`` if no reply comes within ``timeout`` seconds (an
    unknown key never gets one) or if the reply reports an error.
    """
    sock = bus.client(zmq.DEALER, endpoint, server_key, hwm=10)
    try:
        with gevent.Timeout(timeout, False):
            send(sock, [CONTROL_REQUEST, pack(stamp(message))])
            while True:
                frames = sock.recv_multipart()
                if len(frames) == 2 and frames[0] == CONTROL_REPLY:
                    reply = unpack(frames[1])
                    if not reply.get("ok"):
                        raise BusError(f"{endpoint}: {reply.get('error', 'request failed')}")
                    return reply.get("result", {})
        raise BusError(f"no reply from {endpoint} within {timeout} s")
    except zmq.ZMQError as e:
        raise BusError(f"request to {endpoint} failed: {e}") from None
    finally:
        bus.close_socket(sock)
