"""UDP and TCP on one address and port: bytes in, parsed messages out, and back.

The transport parses and validates each message, stamps the top Via of
requests (``received``/``rport``), answers what is malformed with 400 (or
drops a malformed response with a log line), and hands the rest to the
node's dispatcher. Nothing malformed may stop the receive loops.
"""

import logging
import socket as _socket

import gevent
from gevent import socket
from gevent.lock import Semaphore
from gevent.server import StreamServer

from sipcore.errors import SipError
from sipcore.message import Request, StreamFramer, error_response, parse_message
from sipcore.via import stamp_via

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
    """

    def __init__(self, address: str, port: int, on_request, on_response,
                 tcp_connect_timeout: float = 2.0):
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

    def start(self) -> None:
        """Bind both sockets and start receiving."""
        udp = socket.socket(self.family, _socket.SOCK_DGRAM)
        udp.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        for opt in (_socket.SO_RCVBUF, _socket.SO_SNDBUF):
            udp.setsockopt(_socket.SOL_SOCKET, opt, 8 << 20)
        udp.bind((self.address, self.port))
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
        if self.tcp is not None:
            self.tcp.stop(timeout=1)
        for conn in list(self.connections.values()):
            conn.sock.close()
        if self.udp is not None:
            self.udp.close()

    # -- receiving -----------------------------------------------------------
    def _udp_loop(self) -> None:
        # Read the raw non-blocking socket until it is drained and only then
        # wait for readability: one wake-up of the hub serves a whole burst
        # of datagrams instead of one exception and one switch per datagram.
        raw = self.udp._sock
        recv = raw.recvfrom
        handle = self.handle
        hub = gevent.get_hub()
        watcher = hub.loop.io(raw.fileno(), 1)
        fair_share = self.fair_share
        while True:
            n = 0
            try:
                while n < fair_share:
                    data, addr = recv(65535)
                    handle(data, "udp", addr[0], addr[1])
                    n += 1
            except BlockingIOError:
                hub.wait(watcher)
                continue
            except OSError as e:
                log.warning("udp receive failed: %s", e)
                gevent.sleep(0.01)
                continue
            # Under a steady flood the socket never drains, so the actors
            # would starve; let them run between bursts of datagrams.
            gevent.sleep(0)

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
        sock = socket.create_connection((host, port), timeout=self.connect_timeout)
        sock.settimeout(None)
        conn = Connection(sock, (host, port))
        self.connections[conn.peer] = conn
        gevent.spawn(self._read_connection, conn)
        return conn
