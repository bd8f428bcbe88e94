"""UDP and TCP on one address and port: bytes in, parsed messages out, and back.

The transport parses and validates each message, stamps the top Via of
requests (``received``/``rport``), answers what is malformed with 400 (or
drops a malformed response with a log line), and hands the rest to the
node's dispatcher. Nothing malformed may stop the receive loops. A UDP
datagram is first offered to ``quick`` (the node's ``on_datagram``), which
may take it unparsed.
"""

import logging
import os
import socket as _socket

import gevent
from gevent import socket
from gevent.lock import Semaphore
from gevent.server import StreamServer

from sipcore.errors import SipError
from sipcore.message import Request, StreamFramer, error_response, parse_message
from sipcore.via import stamp_via

from .steering import steer_challenges

log = logging.getLogger(__name__)

#: A destination: ``(transport, host, port)``, transport "udp" or "tcp".
Dest = tuple[str, str, int]


class Connection:
    """One TCP connection, with a lock so concurrent sends do not interleave."""

    def __init__(self, sock, peer: tuple[str, int]):
        self.sock = sock
        self.peer = peer
        self.lock = Semaphore()
        self.framer = StreamFramer()

    def send(self, data: bytes) -> None:
        """Write all of ``data``."""
        with self.lock:
            self.sock.sendall(data)


class Transport:
    """SIP over UDP and TCP on ``address:port``.

    ``on_request(req, dest)`` gets each valid request with the destination
    its responses go to; ``on_response(resp, source)`` each valid response.
    With ``front_path``, the UDP socket shares its port with a challenge
    front (see ``actors.front``) that the kernel hands the REGISTERs
    without credentials while it runs (``actors.steering``); the datagrams
    the front passes on arrive over a Unix stream socket at
    ``front_path``, each with its original source.
    """

    def __init__(self, address: str, port: int, on_request, on_response,
                 tcp_connect_timeout: float = 2.0, front_path: str | None = None):
        self.address = address
        self.port = port
        self.on_request = on_request
        self.on_response = on_response
        self.connect_timeout = tcp_connect_timeout
        self.family = _socket.AF_INET6 if ":" in address else _socket.AF_INET
        self.udp = None
        self.tcp = None
        self.connections: dict[tuple[str, int], Connection] = {}
        self._loop = None
        self.received = 0
        self.malformed = 0
        self.fair_share = 64
        self.front_path = front_path
        self.forwarded = None
        #: ``quick(data, ip, port)``, when set, sees each UDP datagram first
        #: and returns True when it took the datagram, which is then not parsed
        self.quick = None

    def start(self) -> None:
        """Bind both sockets and start receiving."""
        udp = udp_socket(self.family, reuseport=self.front_path is not None)
        udp.bind((self.address, self.port))
        if self.front_path is not None:
            steer_challenges(udp)
            listener = unix_socket(_socket.SOCK_STREAM, self.front_path)
            listener.listen(8)
            self.forwarded = StreamServer(listener, self._serve_front)
            self.forwarded.start()
        self.port = udp.getsockname()[1]
        self.udp = udp
        self._raw_sendto = udp._sock.sendto
        listener = socket.socket(self.family, _socket.SOCK_STREAM)
        listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        listener.bind((self.address, self.port))
        listener.listen(1024)
        self.tcp = StreamServer(listener, self._serve_connection)
        self.tcp.start()
        self._loop = gevent.spawn(self._udp_loop)
        log.info("listening on %s:%d (udp, tcp)", self.address, self.port)

    def stop(self) -> None:
        """Close the sockets and every connection."""
        if self._loop is not None:
            self._loop.kill(block=False)
        if self.forwarded is not None:
            self.forwarded.stop(timeout=1)
        if self.tcp is not None:
            self.tcp.stop(timeout=1)
        for conn in list(self.connections.values()):
            conn.sock.close()
        if self.udp is not None:
            self.udp.close()

    # -- receiving -----------------------------------------------------------
    def _udp_loop(self) -> None:
        receive = self.receive
        drain(self.udp._sock, lambda data, addr: receive(data, addr[0], addr[1]),
              self.fair_share)

    def receive(self, data: bytes, ip: str, port: int) -> None:
        """One UDP datagram from ``ip:port``: offered to ``quick``, then
        handled; never raises."""
        quick = self.quick
        if quick is not None:
            try:
                taken = quick(data, ip, port)
            except Exception:
                log.exception("quick path failed on a datagram from %s:%d", ip, port)
                taken = False
            if taken:
                self.received += 1
                return
        self.handle(data, "udp", ip, port)

    def _serve_front(self, sock, _addr) -> None:
        """Read the datagrams the challenge front passes on, as if received here."""
        handle = self.handle
        buf = bytearray()
        try:
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    break
                buf += data
                for ip, port, payload in unwrap(buf):
                    handle(payload, "udp", ip, port)
                # A busy stream never blocks, so recv() never yields: let
                # the actors run between chunks, as the UDP loop does.
                gevent.sleep(0)
        except (OSError, ValueError) as e:
            log.warning("challenge front connection: %s", e)
        finally:
            sock.close()

    def handle(self, data: bytes, transport: str, ip: str, port: int) -> None:
        """Parse, validate and dispatch one message; never raises."""
        self.received += 1
        if not data.strip(b"\r\n"):
            return
        msg = None
        try:
            msg = parse_message(data, stream=transport != "udp")
            msg.validate()
            if isinstance(msg, Request):
                dest = stamp_via(msg, transport, ip, port)
                self.on_request(msg, dest)
            else:
                self.on_response(msg, (transport, ip, port))
        except SipError as err:
            self.malformed += 1
            req = err.request if err.request is not None else (
                msg if isinstance(msg, Request) else None)
            log.info("malformed message from %s:%s:%d: %s", transport, ip, port, err.reason)
            if req is not None and req.method != "ACK":
                try:
                    self.send((transport, ip, port), error_response(req, err).encode())
                except Exception:
                    log.info("could not answer malformed request from %s:%d", ip, port)
        except Exception:
            log.exception("error handling message from %s:%s:%d", transport, ip, port)

    def _serve_connection(self, sock, addr) -> None:
        conn = Connection(sock, (addr[0], addr[1]))
        self.connections[conn.peer] = conn
        self._read_connection(conn)

    def _read_connection(self, conn: Connection) -> None:
        ip, port = conn.peer
        try:
            while True:
                data = conn.sock.recv(65536)
                if not data:
                    break
                for raw in conn.framer.feed(data):
                    if raw == StreamFramer.PING:
                        conn.send(b"\r\n")
                    else:
                        self.handle(raw, "tcp", ip, port)
        except SipError as err:
            log.info("closing tcp %s:%d: %s", ip, port, err.reason)
        except OSError as e:
            log.debug("tcp %s:%d: %s", ip, port, e)
        finally:
            if self.connections.get(conn.peer) is conn:
                del self.connections[conn.peer]
            conn.sock.close()

    # -- sending -------------------------------------------------------------
    def send(self, dest: Dest, data: bytes) -> bool:
        """Send ``data`` to ``dest``; False on a transport error."""
        transport, host, port = dest
        try:
            if transport == "udp":
                try:
                    self._raw_sendto(data, (host, port))
                except BlockingIOError:
                    self.udp.sendto(data, (host, port))
                return True
            conn = self.connections.get((host, port))
            if conn is None:
                conn = self._connect(host, port)
            conn.send(data)
            return True
        except OSError as e:
            log.info("send to %s:%s:%d failed: %s", transport, host, port, e)
            return False

    def _connect(self, host: str, port: int) -> Connection:
        # From the node's own address (the one in its Via and Record-Route), not the
        # kernel's choice: on a host with several addresses the far end sees the node.
        source = None
        if self.address not in ("0.0.0.0", "::") and (":" in self.address) == (":" in host):
            source = (self.address, 0)
        sock = socket.create_connection((host, port), timeout=self.connect_timeout,
                                        source_address=source)
        sock.settimeout(None)
        conn = Connection(sock, (host, port))
        self.connections[conn.peer] = conn
        gevent.spawn(self._read_connection, conn)
        return conn


def udp_socket(family: int, reuseport: bool = False):
    """A gevent UDP socket with large buffers (and SO_REUSEPORT when asked), not yet bound."""
    udp = socket.socket(family, _socket.SOCK_DGRAM)
    udp.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    if reuseport:
        udp.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
    for opt in (_socket.SO_RCVBUF, _socket.SO_SNDBUF):
        udp.setsockopt(_socket.SOL_SOCKET, opt, 8 << 20)
    return udp


def unix_socket(kind: int, path: str):
    """A gevent Unix socket of ``kind`` bound to ``path`` (a stale file left
    by an earlier run is removed first)."""
    sock = socket.socket(_socket.AF_UNIX, kind)
    if os.path.exists(path):
        os.unlink(path)
    sock.bind(path)
    return sock


def wrap(ip: str, port: int, data: bytes) -> bytes:
    """One datagram as the front passes it on a stream: a 4-byte length, then
    ``ip port\n`` and the payload."""
    frame = b"%s %d\n" % (ip.encode("ascii"), port) + data
    return len(frame).to_bytes(4, "big") + frame


def unwrap(buf: bytearray) -> list[tuple[str, int, bytes]]:
    """Take every complete frame of ``wrap`` off the front of ``buf``.

    Raises ``ValueError`` on a frame that ``wrap`` cannot have made.
    """
    out = []
    while len(buf) >= 4:
        size = int.from_bytes(buf[:4], "big")
        if size > 70000:
            raise ValueError("frame of %d bytes" % size)
        if len(buf) < 4 + size:
            break
        frame = bytes(buf[4:4 + size])
        del buf[:4 + size]
        head, nl, payload = frame.partition(b"\n")
        ip, _, port = head.partition(b" ")
        if not nl or not port.isdigit():
            raise ValueError("frame without a source address")
        out.append((ip.decode("ascii"), int(port), payload))
    return out


def drain(raw, on_datagram, fair_share: int = 64, after_burst=None) -> None:
    """Receive datagrams from the raw non-blocking socket ``raw`` for ever,
    calling ``on_datagram(data, addr)`` for each, and ``after_burst()`` after
    each burst of them.

    The socket is read until it is drained and only then waited on: one
    wake-up of the hub serves a whole burst of datagrams instead of one
    exception and one switch per datagram. Under a steady flood the socket
    never drains, so every ``fair_share`` datagrams the other greenlets get
    their turn.
    """
    recv = raw.recvfrom
    hub = gevent.get_hub()
    watcher = hub.loop.io(raw.fileno(), 1)
    while True:
        n = 0
        try:
            while n < fair_share:
                data, addr = recv(65535)
                on_datagram(data, addr)
                n += 1
        except BlockingIOError:
            if after_burst is not None and n:
                after_burst()
            hub.wait(watcher)
            continue
        except OSError as e:
            log.warning("udp receive failed: %s", e)
            gevent.sleep(0.01)
            continue
        if after_burst is not None:
            after_burst()
        gevent.sleep(0)
