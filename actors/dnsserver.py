"""A small authoritative DNS server for the lab and the tests.

It serves one zone, given as BIND master-file text (the same text the
dashboard exports, see ``sipcore.zone.cluster_zone``), over UDP and TCP on
one port, with gevent servers and dnspython's message and zone classes.
Answers are authoritative: the records of the name (A, AAAA, SRV, NAPTR,
SOA, NS or any other type in the zone, CNAMEs followed inside the zone),
NODATA or NXDOMAIN with the SOA for negative caching, REFUSED for names
outside the zone. Glue for SRV and NS targets goes in the additional
section. Malformed packets are dropped with a log line. The zone can be
swapped while the server runs with :meth:`DnsServer.update_zone`.
"""

import errno
import logging
from collections import deque

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
from gevent.server import DatagramServer, StreamServer

logger = logging.getLogger(__name__)

MAX_CNAME_CHAIN = 8
"""CNAMEs followed inside the zone before the answer stops."""

TCP_IDLE_TIMEOUT = 10.0
"""Seconds a TCP client may stay silent before it is disconnected."""

_GLUE_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


class _Zone:
    """A parsed zone with the lookups the server needs."""

    def __init__(self, text: str, origin: dns.name.Name):
        try:
            self.zone = dns.zone.from_text(text, origin=origin, relativize=False)
        except (dns.exception.DNSException, ValueError, KeyError) as exc:
            raise ValueError(f"invalid zone for {origin}: {exc}") from exc
        self.text = text
        self.origin = origin
        self.existing: set[dns.name.Name] = set()
        for name in self.zone.nodes:
            while name not in self.existing and name.is_subdomain(origin):
                self.existing.add(name)
                if name == origin:
                    break
                name = name.parent()
        soa = self.zone.find_rdataset(origin, dns.rdatatype.SOA)
        self.negative_soa = dns.rrset.from_rdata_list(
            origin, min(soa.ttl, soa[0].minimum), list(soa)
        )

    def rdatasets(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list:
        """The rdatasets of ``name`` for ``rdtype`` (all of them for ANY)."""
        node = self.zone.get_node(name)
        if node is None:
            return []
        if rdtype == dns.rdatatype.ANY:
            return list(node.rdatasets)
        rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
        return [rdataset] if rdataset is not None else []


class DnsServer:
    """Authoritative DNS for one zone on ``address``:``port`` (UDP and TCP).

    ``zone_text`` is a BIND master file whose relative names are relative
    to ``origin``; it must hold an SOA and NS at the origin. ``port=0``
    picks a free port, readable from :attr:`port` after :meth:`start`.
    Raises ``ValueError`` for a zone that does not parse.
    """

    def __init__(self, zone_text: str, origin: str, address: str = "127.0.0.1", port: int = 0):
        self.origin = dns.name.from_text(origin)
        """The zone's origin as an absolute ``dns.name.Name``."""
        self.address = address
        """The address the server binds to."""
        self.port = port
        """The bound port (the requested one until :meth:`start`)."""
        self.query_count = 0
        """How many well-formed queries arrived, over UDP and TCP."""
        self.queries: deque[tuple[str, str]] = deque(maxlen=1000)
        """The most recent queries as ``(name, type)`` text, oldest first."""
        self._zone = _Zone(zone_text, self.origin)
        self._udp: DatagramServer | None = None
        self._tcp: StreamServer | None = None

    @property
    def zone_text(self) -> str:
        """The master-file text of the zone being served."""
        return self._zone.text

    def update_zone(self, zone_text: str) -> None:
        """Serve ``zone_text`` from now on; raises ``ValueError`` (and
        keeps the old zone) if it does not parse."""
        self._zone = _Zone(zone_text, self.origin)
        logger.info(
            "dns server: zone %s updated (%d names)", self.origin, len(self._zone.zone.nodes)
        )

    def start(self) -> None:
        """Bind UDP and TCP on the same port and start serving."""
        for _ in range(20):
            udp = DatagramServer((self.address, self.port), self._on_datagram, spawn=256)
            udp.start()
            tcp = StreamServer((self.address, udp.server_port), self._on_connection, spawn=64)
            try:
                tcp.start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self.port:
                    logger.warning(
                        "dns server: TCP on port %d unavailable (%s); serving UDP only",
                        udp.server_port,
                        exc,
                    )
                    tcp = None
                else:
                    udp.stop()
                    continue
            self._udp, self._tcp = udp, tcp
            self.port = udp.server_port
            logger.info("dns server: zone %s on %s port %d", self.origin, self.address, self.port)
            return
        raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")

    def stop(self) -> None:
        """Close the sockets; open TCP connections get one second."""
        for server in (self._udp, self._tcp):
            if server is not None:
                server.stop(timeout=1)
        self._udp = self._tcp = None
        logger.info("dns server: zone %s stopped", self.origin)

    def _on_datagram(self, data: bytes, peer) -> None:
        wire = self._process(data, peer, tcp=False)
        if wire is not None and self._udp is not None:
            try:
                self._udp.sendto(wire, peer)
            except OSError as exc:
                logger.warning("dns server: reply to %s failed: %s", peer, exc)

    def _on_connection(self, sock, peer) -> None:
        sock.settimeout(TCP_IDLE_TIMEOUT)
        try:
            while True:
                header = _recv_exact(sock, 2)
                if header is None:
                    return
                data = _recv_exact(sock, int.from_bytes(header, "big"))
                if data is None:
                    return
                wire = self._process(data, peer, tcp=True)
                if wire is None:
                    return
                sock.sendall(len(wire).to_bytes(2, "big") + wire)
        except OSError as exc:
            logger.debug("dns server: TCP client %s gone: %s", peer, exc)
        finally:
            sock.close()

    def _process(self, data: bytes, peer, tcp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception as exc:
            logger.warning(
                "dns server: malformed query from %s dropped: %s", peer, exc or type(exc).__name__
            )
            return None
        if query.flags & dns.flags.QR:
            logger.warning("dns server: response from %s dropped", peer)
            return None
        self.query_count += 1
        if query.question:
            question = query.question[0]
            self.queries.append(
                (question.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(question.rdtype))
            )
        try:
            response = self.answer(query)
            if tcp:
                return response.to_wire(max_size=65535)
            limit = query.payload if query.edns >= 0 else 512
            return response.to_wire(max_size=limit, prefer_truncation=True)
        except Exception:
            logger.exception("dns server: query from %s failed", peer)
            return None

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The response to ``query`` from the current zone (no I/O)."""
        zone = self._zone
        response = dns.message.make_response(query)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, rdtype = question.name, question.rdtype
        if question.rdclass not in (
            dns.rdataclass.IN,
            dns.rdataclass.ANY,
        ) or not qname.is_subdomain(zone.origin):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        for _ in range(MAX_CNAME_CHAIN):
            rdatasets = zone.rdatasets(qname, rdtype)
            if rdatasets or rdtype == dns.rdatatype.CNAME:
                break
            cname = zone.rdatasets(qname, dns.rdatatype.CNAME)
            if not cname:
                break
            _add(response.answer, qname, cname[0])
            qname = cname[0][0].target
            if not qname.is_subdomain(zone.origin):
                return response
        for rdataset in rdatasets:
            _add(response.answer, qname, rdataset)
        if not rdatasets:
            if qname not in zone.existing:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(zone.negative_soa)
            return response
        self._add_glue(response, rdatasets)
        return response

    def _add_glue(self, response, rdatasets) -> None:
        zone = self._zone
        for rdataset in rdatasets:
            if rdataset.rdtype not in (dns.rdatatype.SRV, dns.rdatatype.NS):
                continue
            for rdata in rdataset:
                target = rdata.target
                if not target.is_subdomain(zone.origin):
                    continue
                for rdtype in _GLUE_TYPES:
                    for glue in zone.rdatasets(target, rdtype):
                        _add(response.additional, target, glue)


def _add(section: list, name: dns.name.Name, rdataset) -> None:
    """Append ``rdataset`` under ``name`` to ``section`` once."""
    rrset = dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))
    if rrset not in section:
        section.append(rrset)


def _recv_exact(sock, size: int) -> bytes | None:
    """Read exactly ``size`` bytes, or ``None`` if the peer closes first."""
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
