"""UDP and TCP on one address and port, and TLS on another: bytes in, parsed
messages out, and back.

The transport parses and validates each message, stamps the top Via of
requests (``received``/``rport``), answers what is malformed with 400 (or
drops a malformed response with a log line), and hands the rest to the
node's dispatcher. Nothing malformed may stop the receive loops. A UDP
datagram is first offered to ``quick`` (the node's ``on_datagram``), which
may take it unparsed.

Limits (``Limits``, from ``[limits]``): a per-source token bucket on UDP
datagrams, checked before anything else (an INVITE to an emergency number
always passes); datagrams over the maximum message size dropped; TCP
connections capped per source address and in total (a new one evicts the
connection silent the longest); a connection over a source's cap (many
phones behind one NAT) carries emergency calls only: it must bring an
INVITE to an emergency number within the header timeout, and then only
what belongs to calls (ACK, CANCEL, BYE, responses, requests within a
dialog); anything else closes
it (at most ``EMERGENCY_EXTRA`` such connections at once, node-wide);
connections are closed after an idle time and when a message takes too
long to arrive; a message over the maximum size over TCP gets
513 where its header can be read, and its connection is closed. Lines
about bad input are rate-limited per kind.

TLS (RFC 3261 §26.2, when a ``TlsContexts`` is given) is TCP's framing and
limits over ``ssl``: an accepted connection counts against the caps from
its first byte, and its handshake must end within the header timeout.
"""

import hashlib
import logging
import os
import random
import re
import socket as _socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import socket, ssl
from gevent.lock import Semaphore
from gevent.server import StreamServer

from sipcore.errors import SipError
from sipcore.message import Request, StreamFramer, error_response, parse_message
from sipcore.overload import ABSORB, ADMIT, Admission, in_dialog, quick_shed, shed_response
from sipcore.ratelimit import LogLimiter
from sipcore.via import Dest, stamp_via

from .limits import NO_LIMITS, Limits
from .steering import steer_challenges

log = logging.getLogger(__name__)


#: Linux's SO_TIMESTAMPNS (and SCM_TIMESTAMPNS): each datagram carries the
#: wall-clock time it reached the socket (``socket`` does not name it)
SO_TIMESTAMPNS = 35
#: a shed request that waited more than this many times ``overload_delay`` is dropped, not
#: answered 503
DROP_FACTOR = 10
#: how often the event loop's lag is measured (seconds)
LAG_EVERY = 0.05

__all__ = [
    "Connection",
    "Dest",
    "Limits",
    "NO_LIMITS",
    "TlsContexts",
    "Transport",
    "drain",
    "udp_socket",
    "unix_socket",
    "unwrap",
    "wrap",
]

_CONTENT_LENGTH = re.compile(rb"(?im)^(content-length|l)[ \t]*:[^\r\n]*")


@dataclass(frozen=True)
class TlsContexts:
    """The node's TLS: ``server`` for its listener, ``client`` for the
    connections it opens."""

    server: ssl.SSLContext
    client: ssl.SSLContext

    @classmethod
    def load(cls, cert: str, key: str, ca: str = "", peer_ca: str = "") -> "TlsContexts":
        """Contexts from PEM files (TLS 1.2 at least). The node's outgoing
        connections verify the far end against ``ca`` when given; without it
        they are encrypted but the far end's certificate is not checked
        (phones rarely hold one a CA signed). With ``peer_ca`` the listener asks
        its clients for a certificate, which they may withhold but, presented,
        must verify against ``peer_ca`` (a peer trusted by certificate)."""
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_2
        server.load_cert_chain(cert, key)
        # No TLS 1.3 session tickets: they arrive after the handshake, where clients
        # such as sipsak take them for the answer and fail (and no phone resumes).
        server.num_tickets = 0
        if peer_ca:
            server.verify_mode = ssl.CERT_OPTIONAL
            server.load_verify_locations(peer_ca)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.minimum_version = ssl.TLSVersion.TLSv1_2
        client.load_cert_chain(cert, key)
        if ca:
            client.load_verify_locations(ca)
        else:
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE
        return cls(server, client)


EMERGENCY_EXTRA = 64
"""Connections over their source's cap, kept for emergency calls, at most (node-wide)."""
_CALL_TRAFFIC = (b"ACK ", b"CANCEL ", b"BYE ", b"SIP/2.0 ")
"""What an over-cap connection may carry besides INVITEs to an emergency number (and
requests within a dialog, such as a re-INVITE)."""


class Connection:
    """One TCP or TLS connection, with a lock so concurrent sends do not interleave.
    ``emergency_only``: over its source's cap, it carries emergency calls only."""

    def __init__(
        self, sock, peer: tuple[str, int], transport: str = "tcp", emergency_only: bool = False
    ):
        self.sock = sock
        self.peer = peer
        self.transport = transport
        self.emergency_only = emergency_only
        #: monotonic time it was accepted (an over-cap one's first message is due by then
        #: plus the header timeout)
        self.accepted = time.monotonic()
        #: whether it brought an INVITE to an emergency number
        self.proven = False
        self.lock = Semaphore()
        self.framer = StreamFramer()
        #: monotonic time of the last bytes received (eviction picks the oldest)
        self.active = time.monotonic()
        #: the verified client certificate of an accepted TLS connection:
        #: (SHA-256 of its DER, lower-case hex; its common name), or None
        self.certificate: tuple[str, str] | None = None

    def send(self, data: bytes) -> None:
        """Write all of ``data``."""
        with self.lock:
            self.sock.sendall(data)


MAX_SOURCES = 100_000
"""UDP peers whose datagrams leave from a further address (``Transport.route_from``)."""

MAX_CODES = 1000
"""Status codes counted in ``Transport.sent_codes`` (a response's code is three digits)."""


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

    def __init__(
        self,
        address: str,
        port: int,
        on_request,
        on_response,
        tcp_connect_timeout: float = 2.0,
        front_path: str | None = None,
        limits: Limits = NO_LIMITS,
        tls: TlsContexts | None = None,
        tls_port: int = 0,
        quick: Callable[[bytes, str, int], bool] | None = None,
        shared_buckets: str | None = None,
        trusted: Callable[[str], bool] | None = None,
    ):
        self.address = address
        self.port = port
        self.on_request = on_request
        self.on_response = on_response
        self.connect_timeout = tcp_connect_timeout
        self.family = _socket.AF_INET6 if ":" in address else _socket.AF_INET
        self.udp: Any = None
        self.tcp: StreamServer | None = None
        self.tls = tls
        self.tls_port = tls_port
        self.tls_server: StreamServer | None = None
        self.connections: dict[tuple[str, int], Connection] = {}
        self._loop: gevent.Greenlet | None = None
        self.received = 0
        self.malformed = 0
        self.fair_share = 64
        self.front_path = front_path
        self.forwarded: StreamServer | None = None
        #: ``quick(data, ip, port)``, when given, sees each UDP datagram first
        #: and returns True when it took the datagram, which is then not parsed
        self.quick = quick
        self.limits = limits
        #: the per-source limiter; its buckets are in ``shared_buckets`` when the node
        #: shares one budget per source with its challenge front
        self.limiter = limits.limiter(shared_buckets)
        self.log_limit = LogLimiter(limits.log_rate)
        #: open TCP connections per source address
        self.per_source: dict[str, int] = {}
        self.stats = {
            "rate_limited": 0,
            "oversized": 0,
            "tcp_refused": 0,
            "tcp_evicted": 0,
            "tcp_timed_out": 0,
            "tls_failed": 0,
            "tcp_emergency_only": 0,
            "tcp_framing": 0,
        }
        #: connections open over their source's cap (``EMERGENCY_EXTRA`` at most)
        self.extra = 0
        #: the node-wide admission control (``sipcore.overload``), None when off;
        #: ``trusted(ip)`` says whether a source authenticated recently
        self.admission = (
            Admission(limits.overload(), limits.emergency_numbers, trusted)
            if limits.overload_delay > 0
            else None
        )
        #: the event loop's lag (seconds) at its last measure, the load measure of
        #: the messages that carry no receive timestamp (TCP, TLS)
        self.lag = 0.0
        #: the wait of the last datagram read from the UDP socket (seconds)
        self.udp_delay = 0.0
        self._lag_loop: gevent.Greenlet | None = None
        #: responses sent, by status code (three bytes), ``MAX_CODES`` codes at most
        self.sent_codes: dict[bytes, int] = {}
        #: further addresses listened on (``add_address``): UDP socket, servers, loop of each
        self.addresses: dict[str, tuple[Any, list[StreamServer], gevent.Greenlet]] = {}
        #: UDP sources (``MAX_SOURCES`` at most) heard on, or routed to, a further
        #: address: what is sent to them leaves from that address, which their NAT expects
        self.sources: dict[tuple[str, int], Any] = {}

    def start(self) -> None:
        """Bind both sockets and start receiving."""
        udp = udp_socket(self.family, reuseport=self.front_path is not None)
        udp.bind((self.address, self.port))
        if self.front_path is not None:
            steer_challenges(udp)
            listener = unix_socket(_socket.SOCK_STREAM, self.front_path)
            listener.listen(8)
            forwarded = self.forwarded = StreamServer(listener, self._serve_front)
            forwarded.start()
        self.port = udp.getsockname()[1]
        self.udp = udp
        if self.admission is not None:
            udp.setsockopt(_socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._lag_loop = gevent.spawn(self._measure_lag)
        self._raw_sendto = udp._sock.sendto
        listener = socket.socket(self.family, _socket.SOCK_STREAM)
        listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        listener.bind((self.address, self.port))
        listener.listen(1024)
        self.tcp = StreamServer(listener, self._serve_connection)
        self.tcp.start()
        if self.tls is not None:
            listener = socket.socket(self.family, _socket.SOCK_STREAM)
            listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            listener.bind((self.address, self.tls_port))
            listener.listen(1024)
            self.tls_port = listener.getsockname()[1]
            self.tls_server = StreamServer(listener, self._serve_tls)
            self.tls_server.start()
            log.info("listening on %s:%d (tls)", self.address, self.tls_port)
        self._loop = gevent.spawn(self._udp_loop)
        log.info("listening on %s:%d (udp, tcp)", self.address, self.port)

    def stop(self) -> None:
        """Close the sockets and every connection."""
        for loop in (self._loop, self._lag_loop):
            if loop is not None:
                loop.kill(block=False)
        if self.forwarded is not None:
            self.forwarded.stop(timeout=1)
        for server in (self.tcp, self.tls_server):
            if server is not None:
                server.stop(timeout=1)
        for address in list(self.addresses):
            self.remove_address(address)
        for conn in list(self.connections.values()):
            conn.sock.close()
        if self.udp is not None:
            self.udp.close()

    def add_address(self, address: str) -> None:
        """Listen on ``address`` too, on the same ports (UDP, TCP and TLS): another
        node's floating address taken over (``actors.takeover``)."""
        if address in self.addresses or address == self.address:
            return
        udp = udp_socket(self.family)
        udp.bind((address, self.port))
        servers = []
        try:
            for port, serve in (
                (self.port, self._serve_connection),
                *(((self.tls_port, self._serve_tls),) if self.tls_server else ()),
            ):
                listener = socket.socket(self.family, _socket.SOCK_STREAM)
                listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
                listener.bind((address, port))
                listener.listen(1024)
                server = StreamServer(listener, serve)
                server.start()
                servers.append(server)
        except OSError:
            udp.close()
            for server in servers:
                server.stop(timeout=1)
            raise
        receive = self.receive

        def heard(data: bytes, addr: tuple[str, int]) -> None:
            self.route_from([addr], udp)
            receive(data, addr[0], addr[1])

        loop = gevent.spawn(drain, udp._sock, heard, self.fair_share)
        self.addresses[address] = (udp, servers, loop)
        log.info(
            "listening on %s:%d too (udp, tcp%s)",
            address,
            self.port,
            ", tls" if self.tls_server else "",
        )

    def remove_address(self, address: str) -> None:
        """Stop listening on a further ``address`` (given back to its owner)."""
        entry = self.addresses.pop(address, None)
        if entry is None:
            return
        udp, servers, loop = entry
        loop.kill(block=False)
        for server in servers:
            server.stop(timeout=1)
        for peer in [p for p, sock in self.sources.items() if sock is udp]:
            del self.sources[peer]
        udp.close()
        log.info("stopped listening on %s", address)

    def route_from(self, peers, sock_or_address) -> None:
        """Send to each UDP ``(host, port)`` of ``peers`` from a further address (its
        socket, or the address), the oldest routes dropped past ``MAX_SOURCES``."""
        sock = sock_or_address
        if isinstance(sock, str):
            entry = self.addresses.get(sock)
            if entry is None:
                return
            sock = entry[0]
        sources = self.sources
        for peer in peers:
            sources.pop(peer, None)
            sources[peer] = sock
        while len(sources) > MAX_SOURCES:
            del sources[next(iter(sources))]

    # -- receiving -----------------------------------------------------------
    def _udp_loop(self) -> None:
        receive = self.receive
        if self.admission is None:
            drain(
                self.udp._sock, lambda data, addr: receive(data, addr[0], addr[1]), self.fair_share
            )
        else:
            drain_stamped(
                self.udp._sock, receive, self.fair_share, lambda: self.lag, self.admission.drained
            )

    def _measure_lag(self) -> None:
        """Measure how late the event loop wakes a sleeper, for ever."""
        monotonic = time.monotonic
        while True:
            t0 = monotonic()
            gevent.sleep(LAG_EVERY)
            self.lag = max(0.0, monotonic() - t0 - LAG_EVERY)
            self.udp_delay = 0.0

    def load(self) -> float:
        """The delay a message without a receive timestamp is taken to have waited:
        the larger of the event loop's lag and the wait of the last UDP datagram read
        since the lag's last measure."""
        return max(self.lag, self.udp_delay)

    def admit(self, data: bytes, transport: str, ip: str, port: int, delay: float) -> bool:
        """Ask the admission control about ``data`` (which waited ``delay`` s); shed it
        (503 or nothing, by setting) or absorb it and return False, or return True."""
        admission = self.admission
        assert admission is not None
        verdict = admission.verdict(data, ip, delay, time.monotonic())
        if verdict == ADMIT:
            return True
        if verdict == ABSORB:
            return False
        self._log(
            "overload",
            "overloaded (a new request waited %.0f ms): shedding new requests",
            1000 * delay,
        )
        # Ten times past its bound, the node cannot afford the parse a 503 needs.
        if (
            self.limits.overload_response == "drop"
            or delay > DROP_FACTOR * self.limits.overload_delay
        ):
            return False
        retry = self.limits.overload_retry_after
        retry = random.randint(retry, 2 * retry)
        tag = "%012x" % random.getrandbits(48)
        try:
            quick = quick_shed(data, ip, port, retry, tag) if transport == "udp" else None
            if quick is not None:
                self.send(("udp", *quick[1]), quick[0])
                return False
            req = parse_message(data, stream=transport != "udp")
            req.validate()
            if isinstance(req, Request):
                self.send(stamp_via(req, transport, ip, port), shed_response(req, retry, tag))
        except SipError:
            # Malformed and shed: the parse that would answer it is the work saved.
            pass
        return False

    def receive(self, data: bytes, ip: str, port: int, delay: float = 0.0) -> None:
        """One UDP datagram from ``ip:port`` that waited ``delay`` seconds to be read:
        rate-limited, admitted (``sipcore.overload``), offered to ``quick``, then
        handled; never raises."""
        if self.limits.over_rate(self.limiter, ip, data):
            self.stats["rate_limited"] += 1
            self._log("rate_limited", "rate limit: dropping datagrams from %s", ip)
            return
        if len(data) > self.limits.max_message_size:
            self.stats["oversized"] += 1
            self._log("oversized", "dropped a datagram of %d bytes from %s", len(data), ip)
            return
        if self.admission is not None:
            self.udp_delay = delay
            try:
                if not self.admit(data, "udp", ip, port, delay):
                    return
            except Exception:
                log.exception("admission control failed on a datagram from %s:%d", ip, port)
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
                    if self.admission is None or self.admit(payload, "udp", ip, port, self.load()):
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
            req = (
                err.request
                if err.request is not None
                else (msg if isinstance(msg, Request) else None)
            )
            self._log(
                "malformed", "malformed message from %s:%s:%d: %s", transport, ip, port, err.reason
            )
            if req is not None and req.method != "ACK":
                try:
                    self.send((transport, ip, port), error_response(req, err).encode())
                except Exception:
                    log.info("could not answer malformed request from %s:%d", ip, port)
        except Exception:
            log.exception("error handling message from %s:%s:%d", transport, ip, port)

    def _log(self, kind: str, msg: str, *args) -> None:
        """Log a line about bad input, at most ``log_rate`` a second per ``kind``."""
        suppressed = self.log_limit.allow(kind, time.monotonic())
        if suppressed is None:
            return
        if suppressed:
            msg += " (%d more like it not logged)"
            args = (*args, suppressed)
        log.info(msg, *args)

    def _serve_tls(self, sock, addr) -> None:
        self._serve_connection(sock, addr, "tls")

    def _serve_connection(self, sock, addr, transport: str = "tcp") -> None:
        ip = addr[0]
        limits = self.limits
        held = self.per_source.get(ip, 0)
        over = held >= limits.tcp_max_per_source
        if over and (self.extra >= EMERGENCY_EXTRA or not limits.emergency_numbers):
            self.stats["tcp_refused"] += 1
            self._log("tcp_refused", "refused a tcp connection from %s: %d from it", ip, held)
            sock.close()
            return
        if len(self.connections) >= limits.tcp_max_connections:
            # Full: the connection silent the longest makes room, so idle
            # connections held open by a few addresses cannot lock clients out.
            idle = min(self.connections.values(), key=lambda c: c.active)
            self.stats["tcp_evicted"] += 1
            self._log(
                "tcp_evicted",
                "%d tcp connections: closing the idlest, from %s:%d",
                len(self.connections),
                *idle.peer,
            )
            del self.connections[idle.peer]
            idle.sock.close()
        conn = Connection(sock, (ip, addr[1]), transport, emergency_only=over)
        self.connections[conn.peer] = conn
        if over:
            self.extra += 1
            self.stats["tcp_emergency_only"] += 1
            self._log(
                "tcp_emergency_only",
                "tcp connection from %s over its cap (%d from it): for emergency calls only",
                ip,
                held,
            )
        try:
            self._read_connection(conn, handshake=transport == "tls")
        finally:
            if over:
                self.extra -= 1

    def _read_connection(self, conn: Connection, handshake: bool = False) -> None:
        ip, port = conn.peer
        limits = self.limits
        conn.framer = StreamFramer(limits.max_message_size, limits.max_message_size)
        self.per_source[ip] = self.per_source.get(ip, 0) + 1
        started = None
        try:
            if handshake and not self._accept_tls(conn):
                return
            while True:
                # Idle: nothing pending; a message under way must end by its deadline.
                timeout = limits.tcp_idle_timeout
                if started is not None:
                    timeout = min(timeout, started + limits.tcp_header_timeout - time.monotonic())
                if conn.emergency_only and not conn.proven:
                    timeout = min(
                        timeout, conn.accepted + limits.tcp_header_timeout - time.monotonic()
                    )
                conn.sock.settimeout(max(0.01, timeout))
                try:
                    data = conn.sock.recv(65536)
                except TimeoutError:
                    self.stats["tcp_timed_out"] += 1
                    self._log(
                        "tcp_timeout",
                        "closing tcp %s:%d: %s",
                        ip,
                        port,
                        "message too slow" if started is not None else "idle",
                    )
                    break
                if not data:
                    break
                conn.active = time.monotonic()
                for raw in conn.framer.feed(data):
                    if raw == StreamFramer.PING:
                        conn.send(b"\r\n")
                    elif conn.emergency_only and not self._emergency_traffic(conn, raw):
                        self._log(
                            "tcp_refused",
                            "closing tcp %s:%d over the cap of its source: not an emergency call",
                            ip,
                            port,
                        )
                        return
                    elif self.admission is None or self.admit(
                        raw, conn.transport, ip, port, self.load()
                    ):
                        self.handle(raw, conn.transport, ip, port)
                if conn.framer.buf.strip(b"\r\n"):
                    if started is None:
                        started = time.monotonic()
                else:
                    started = None
        except SipError as err:
            # The stream cannot be cut into messages past this point: the request
            # whose header section the framer holds gets its answer, then the
            # connection is closed.
            if "too large" in err.reason:
                self.stats["oversized"] += 1
                self._unframed(conn, SipError(513, "Message Too Large"))
            else:
                self.stats["tcp_framing"] += 1
                self._unframed(conn, SipError(400, f"Bad Request ({err.reason})"))
            self._log("tcp_framing", "closing tcp %s:%d: %s", ip, port, err.reason)
        except OSError as e:
            log.debug("tcp %s:%d: %s", ip, port, e)
        finally:
            if self.connections.get(conn.peer) is conn:
                del self.connections[conn.peer]
            left = self.per_source.get(ip, 1) - 1
            if left > 0:
                self.per_source[ip] = left
            else:
                self.per_source.pop(ip, None)
            conn.sock.close()

    def _emergency_traffic(self, conn: Connection, raw: bytes) -> bool:
        """Whether an over-cap connection may carry ``raw``: an INVITE to an emergency
        number, then what belongs to calls."""
        if self.limits.emergency_numbers.invite(raw):
            conn.proven = True
            return True
        return conn.proven and (raw.startswith(_CALL_TRAFFIC) or in_dialog(raw))

    def _accept_tls(self, conn: Connection) -> bool:
        """The server side of a TLS handshake on an accepted connection, ended
        within the header timeout; False (logged, counted) when it fails."""
        ip, port = conn.peer
        assert self.tls is not None
        raw = conn.sock
        raw.settimeout(self.limits.tcp_header_timeout)
        try:
            tls = self.tls.server.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            conn.sock = tls
            tls.do_handshake()
            conn.certificate = peer_certificate(tls)
            return True
        except (OSError, ValueError) as e:
            self.stats["tls_failed"] += 1
            self._log(
                "tls_failed",
                "tls handshake with %s:%d failed: %s%s",
                ip,
                port,
                "timed out" if isinstance(e, TimeoutError) else e,
                tls_failure_hint(e),
            )
            raw.close()
            return False

    def _unframed(self, conn: Connection, err: SipError) -> None:
        """Answer ``err`` (513 for an oversized request, 400 for a malformed or
        repeated Content-Length) to the request whose header section the framer
        holds, when its request line and the headers a response copies can be
        read with its Content-Length set aside (else nothing: no response could
        be matched to it)."""
        buf = bytes(conn.framer.buf[: self.limits.max_message_size])
        end = buf.find(b"\r\n\r\n")
        if end < 0 or buf[:4] == b"SIP/":
            return
        # Every Content-Length line left out (there may be several): read as none.
        lines = [line for line in buf[:end].split(b"\r\n") if not _CONTENT_LENGTH.match(line)]
        try:
            req = parse_message(b"\r\n".join(lines) + b"\r\n\r\n")
            if isinstance(req, Request) and req.method != "ACK":
                conn.send(error_response(req, err).encode())
        except (SipError, OSError):
            pass

    # -- sending -------------------------------------------------------------
    def tls_certificate(self, host: str, port: int) -> tuple[str, str] | None:
        """The verified client certificate (fingerprint, common name) of the TLS
        connection accepted from ``host:port``, or None."""
        conn = self.connections.get((host, port))
        return None if conn is None or conn.transport != "tls" else conn.certificate

    def send(self, dest: Dest, data: bytes) -> bool:
        """Send ``data`` to ``dest``; False on a transport error."""
        if data[:8] == b"SIP/2.0 ":
            sent, code = self.sent_codes, data[8:11]
            if code in sent:
                sent[code] += 1
            elif len(sent) < MAX_CODES:
                sent[code] = 1
        transport, host, port = dest
        try:
            if transport == "udp":
                sock = self.sources.get((host, port)) if self.sources else None
                if sock is not None:
                    sock.sendto(data, (host, port))
                    return True
                try:
                    self._raw_sendto(data, (host, port))
                except BlockingIOError:
                    self.udp.sendto(data, (host, port))
                return True
            conn = self.connections.get((host, port))
            if conn is None or conn.transport != transport:
                conn = self._connect(transport, host, port)
            conn.send(data)
            return True
        except OSError as e:
            log.info("send to %s:%s:%d failed: %s", transport, host, port, e)
            return False
        except (OverflowError, ValueError) as e:
            # A destination no socket takes (a port past 65535, a host no codec
            # encodes, a NUL), as a hostile Contact or Via may name: dropped, so that
            # it never escapes into the actor that sends.
            self._log(
                "bad_destination",
                "bad destination %s:%.80r:%.20r dropped: %s",
                transport,
                host,
                port,
                e,
            )
            return False

    def keepalive(self, dest: Dest, data: bytes) -> bool:
        """Send a keepalive on the flow ``dest``: a datagram, or over the connection
        to it when one is open (never a new one); False when not sent."""
        transport, host, port = dest
        try:
            if transport == "udp":
                sock = self.sources.get((host, port)) if self.sources else None
                (sock.sendto if sock is not None else self._raw_sendto)(data, (host, port))
                return True
            conn = self.connections.get((host, port))
            if conn is None or conn.transport != transport:
                return False
            conn.send(data)
            return True
        except OSError as e:
            log.info("keepalive to %s:%s:%d failed: %s", transport, host, port, e)
            return False

    def _connect(self, transport: str, host: str, port: int) -> Connection:
        # From the node's own address (the one in its Via and Record-Route), not the
        # kernel's choice: on a host with several addresses the far end sees the node.
        source = None
        if self.address not in ("0.0.0.0", "::") and (":" in self.address) == (":" in host):
            source = (self.address, 0)
        if transport == "tls" and self.tls is None:
            raise OSError(f"no TLS on this node to reach {host}:{port}")
        if not 0 < port < 65536:
            raise OverflowError(f"port must be 1-65535, not {port}")
        # A host no codec takes raises here, in ``send``, rather than in the resolver's
        # thread, whose hub prints every such error unlimited.
        host.encode("idna")
        sock = socket.create_connection(
            (host, port), timeout=self.connect_timeout, source_address=source
        )
        if transport == "tls":
            assert self.tls is not None
            # The request follows the handshake's last flight at once: Nagle would
            # hold it until the far end's delayed ACK (40 ms on Linux).
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            try:
                sock = self.tls.client.wrap_socket(sock, server_hostname=host)
            except (OSError, ValueError):
                sock.close()
                raise
        conn = Connection(sock, (host, port), transport)
        self.connections[conn.peer] = conn
        gevent.spawn(self._read_connection, conn)
        return conn


_UNTRUSTED_ALERTS = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_CERTIFICATE_EXPIRED",
)


def peer_certificate(sock) -> tuple[str, str] | None:
    """The (SHA-256 fingerprint, common name) of the certificate the far end of a TLS
    socket presented, or None. The server asks for one only with a ``peer_ca``, and
    then one that did not verify has already failed the handshake."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    subject = (sock.getpeercert() or {}).get("subject", ())
    name = next((value for rdn in subject for key, value in rdn if key == "commonName"), "")
    return hashlib.sha256(der).hexdigest(), name


def tls_failure_hint(error: Exception) -> str:
    """What a failed server-side handshake means, for its log line: a client that
    refused the node's certificate, or one that spoke something other than TLS."""
    reason = str(getattr(error, "reason", "") or "")
    if reason.endswith(_UNTRUSTED_ALERTS):
        return (
            " (the client does not trust this node's certificate: give the phone the CA "
            "that signed sip.tls_cert, e.g. the lab CA, and use the node's address or "
            "domain as the host it checks)"
        )
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNEXPECTED_RECORD"):
        return " (the client did not speak TLS: plain SIP sent to the TLS port?)"
    return ""


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
        frame = bytes(buf[4 : 4 + size])
        del buf[: 4 + size]
        head, nl, payload = frame.partition(b"\n")
        ip, _, port = head.partition(b" ")
        if not nl or not port.isdigit():
            raise ValueError("frame without a source address")
        out.append((ip.decode("ascii"), int(port), payload))
    return out


def drain_stamped(
    raw, on_datagram, fair_share: int = 64, lag=lambda: 0.0, on_empty=lambda: None
) -> None:
    """``drain`` for a socket with ``SO_TIMESTAMPNS`` on: ``on_datagram(data, ip,
    port, delay)`` gets with each datagram the seconds it waited in the socket's
    receive queue; ``on_empty()`` hears each time the socket is found empty.

    That is the time since its kernel timestamp, but at most the time since the
    loop last found the socket empty (a datagram read then was not there yet),
    or since it woke up after that, less the loop's lateness ``lag()``. The
    bound keeps out the time a datagram spent before the socket (on loopback
    the timestamp is taken on the sender's side, whose processor may be the
    one that is late), so the delay is the node's own backlog.
    """
    recvmsg = raw.recvmsg
    unpack = struct.unpack
    clock = time.time
    hub = gevent.get_hub()
    watcher = hub.loop.io(raw.fileno(), 1)
    empty_at = clock()
    while True:
        n = 0
        try:
            while n < fair_share:
                data, ancillary, _flags, addr = recvmsg(65535, 64)
                now = clock()
                delay = now - empty_at
                for level, kind, value in ancillary:
                    if level == _socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = unpack("qq", value)
                        delay = min(delay, now - sec - nsec * 1e-9)
                on_datagram(data, addr[0], addr[1], delay)
                n += 1
        except BlockingIOError:
            on_empty()
            hub.wait(watcher)
            # Woken by a datagram: it came while the loop waited, at most as long ago
            # as the loop runs late (an idle loop wakes at once).
            empty_at = clock() - lag()
            continue
        except OSError as e:
            log.warning("udp receive failed: %s", e)
            gevent.sleep(0.01)
            continue
        gevent.sleep(0)


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
