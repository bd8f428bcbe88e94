"""The DNS resolver actor against the built-in DNS server, on loopback."""

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

import random
import socket
import time
from collections import Counter

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import gevent
import pytest

from actors.dns import NEGATIVE_TTL_CAP, Resolver
from actors.dnsserver import DnsServer
from sipcore.rfc3263 import Target
from sipcore.zone import cluster_zone

DOMAIN = "example.com"
NODES = [("node1", "127.0.0.11", 5060, 50), ("node2", "127.0.0.12", 5062, 50)]
TEST_DEADLINE = 10.0

NO_NAPTR_ZONE = """\
$ORIGIN example.net.
$TTL 60
@ IN SOA ns.example.net. hostmaster.example.net. 1 3600 600 86400 60
@ IN NS ns.example.net.
ns IN A 127.0.0.53
pbx IN A 127.0.0.21
pbx IN AAAA ::1
_sip._tcp IN SRV 10 10 5070 pbx.example.net.
"""


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture(autouse=True)
def deadline():
    """Fail any test that runs longer than TEST_DEADLINE seconds."""
    timer = gevent.Timeout(TEST_DEADLINE)
    timer.start()
    yield
    timer.close()


@pytest.fixture
def server():
    srv = DnsServer(cluster_zone(DOMAIN, NODES, ttl=60), DOMAIN)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def resolver(server, clock):
    return Resolver(["127.0.0.1"], port=server.port, timeout=2.0, rng=random.Random(1), clock=clock)


def ask(server, name, rdtype, tcp=False):
    query = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, "127.0.0.1", timeout=2, port=server.port)


def test_naptr_srv_a_chain(server, resolver):
    targets = resolver.resolve(DOMAIN, None, None, "sip")
    assert sorted(targets[:2], key=lambda t: t.port) == [
        Target("127.0.0.11", 5060, "udp", "node1.example.com"),
        Target("127.0.0.12", 5062, "udp", "node2.example.com"),
    ]
    assert sorted(targets[2:], key=lambda t: t.port) == [
        Target("127.0.0.11", 5060, "tcp", "node1.example.com"),
        Target("127.0.0.12", 5062, "tcp", "node2.example.com"),
    ]
    asked = list(server.queries)
    assert asked[0] == ("example.com", "NAPTR")
    assert set(asked[1:3]) == {("_sip._udp.example.com", "SRV"), ("_sip._tcp.example.com", "SRV")}
    assert {rdtype for _, rdtype in asked[3:]} == {"A", "AAAA"}
    assert server.query_count == 7


def test_srv_without_naptr(clock):
    srv = DnsServer(NO_NAPTR_ZONE, "example.net")
    srv.start()
    try:
        resolver = Resolver(["127.0.0.1"], port=srv.port, clock=clock)
        assert resolver.resolve("example.net") == [
            Target("127.0.0.21", 5070, "tcp", "pbx.example.net"),
            Target("::1", 5070, "tcp", "pbx.example.net"),
        ]
        srv_queries = [name for name, rdtype in srv.queries if rdtype == "SRV"]
        assert sorted(srv_queries) == sorted(
            ["_sips._tcp.example.net", "_sip._tcp.example.net", "_sip._udp.example.net"]
        )
    finally:
        srv.stop()


def test_explicit_transport_asks_one_srv(server, resolver):
    targets = resolver.resolve(DOMAIN, None, "tcp", "sip")
    assert {t.transport for t in targets} == {"tcp"} and len(targets) == 2
    assert ("example.com", "NAPTR") not in server.queries
    assert [q for q in server.queries if q[1] == "SRV"] == [("_sip._tcp.example.com", "SRV")]


def test_explicit_port_skips_srv(server, resolver):
    assert resolver.resolve("node2.example.com", 5090, None, "sip") == [
        Target("127.0.0.12", 5090, "udp", "node2.example.com")
    ]
    assert {rdtype for _, rdtype in server.queries} == {"A", "AAAA"}


def test_ip_literal_makes_no_query(server, resolver):
    assert resolver.resolve("127.0.0.99", None, None, "sip") == [
        Target("127.0.0.99", 5060, "udp", "127.0.0.99")
    ]
    assert resolver.resolve("[::1]", 5070, "tcp", "sip") == [Target("::1", 5070, "tcp", "::1")]
    assert resolver.resolve("127.0.0.99", None, None, "sips") == [
        Target("127.0.0.99", 5061, "tls", "127.0.0.99")
    ]
    assert server.query_count == 0


def test_cache_honours_ttl(server, resolver, clock):
    first = resolver.resolve(DOMAIN)
    count = server.query_count
    clock.advance(NEGATIVE_TTL_CAP - 1)
    assert set(resolver.resolve(DOMAIN)) == set(first)
    assert server.query_count == count
    clock.advance(2)
    assert set(resolver.resolve(DOMAIN)) == set(first)
    assert server.query_count == count + 2
    assert set(list(server.queries)[-2:]) == {
        ("node1.example.com", "AAAA"),
        ("node2.example.com", "AAAA"),
    }
    clock.advance(60 - NEGATIVE_TTL_CAP)
    assert set(resolver.resolve(DOMAIN)) == set(first)
    assert server.query_count == 2 * count + 2


def test_negative_answers_are_cached_briefly(server, resolver, clock):
    assert resolver.resolve("nope.example.com", 5060) == []
    count = server.query_count
    assert count == 2
    assert resolver.resolve("nope.example.com", 5060) == []
    assert server.query_count == count
    clock.advance(NEGATIVE_TTL_CAP + 1)
    resolver.resolve("nope.example.com", 5060)
    assert server.query_count == 2 * count


def test_nxdomain_gives_empty_list(server, resolver):
    assert resolver.resolve("nope.example.com") == []
    assert resolver.resolve("outside.example.org") == []
    assert resolver.lookup("nope.example.com", "SRV") == ()


def test_zone_update_is_served_live(server, resolver, clock):
    assert resolver.resolve("node1.example.com", 5060) == [
        Target("127.0.0.11", 5060, "udp", "node1.example.com")
    ]
    server.update_zone(cluster_zone(DOMAIN, [("node1", "127.0.0.31", 5060, 50)], ttl=60))
    clock.advance(61)
    assert resolver.resolve("node1.example.com", 5060) == [
        Target("127.0.0.31", 5060, "udp", "node1.example.com")
    ]
    assert resolver.resolve("node2.example.com", 5060) == []
    with pytest.raises(ValueError):
        server.update_zone("this is not a zone")
    assert ask(server, "node1.example.com", "A").answer[0][0].address == "127.0.0.31"


def test_srv_weights_split_first_choice(clock):
    srv = DnsServer(
        cluster_zone(
            DOMAIN, [("node1", "127.0.0.11", 5060, 80), ("node2", "127.0.0.12", 5060, 20)]
        ),
        DOMAIN,
    )
    srv.start()
    try:
        resolver = Resolver(["127.0.0.1"], port=srv.port, rng=random.Random(9), clock=clock)
        firsts = Counter(resolver.resolve(DOMAIN, None, "udp")[0].host for _ in range(2000))
        assert firsts["127.0.0.11"] / 2000 == pytest.approx(0.8, abs=0.04)
        assert srv.query_count == 5
    finally:
        srv.stop()


@pytest.mark.parametrize("listening", [True, False])
def test_dead_server_gives_empty_list_within_timeout(listening):
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    if not listening:
        sink.close()
    try:
        resolver = Resolver(["127.0.0.1"], port=port, timeout=0.5)
        started = time.monotonic()
        assert resolver.resolve(DOMAIN) == []
        assert time.monotonic() - started < 0.5 + 0.3
    finally:
        sink.close()


def test_resolution_blocks_only_its_greenlet():
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        resolver = Resolver(["127.0.0.1"], port=sink.getsockname()[1], timeout=1.0)
        job = gevent.spawn(resolver.resolve, DOMAIN)
        ticks = gevent.spawn(lambda: [gevent.sleep(0.01) for _ in range(10)])
        assert ticks.join(timeout=0.5) is None and ticks.ready()
        assert not job.ready()
        assert job.get(timeout=2) == []
    finally:
        sink.close()


def test_server_answers(server):
    reply = ask(server, "_sip._udp.example.com", "SRV")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert {r.port for r in reply.answer[0]} == {5060, 5062}
    assert {rrset.name.to_text() for rrset in reply.additional} >= {
        "node1.example.com.",
        "node2.example.com.",
    }
    for rdtype in ("SOA", "NS", "NAPTR"):
        reply = ask(server, DOMAIN, rdtype)
        assert reply.answer[0].rdtype == dns.rdatatype.from_text(rdtype)
    reply = ask(server, "node1.example.com", "A", tcp=True)
    assert reply.answer[0][0].address == "127.0.0.11"


def test_server_negative_answers(server):
    nxdomain = ask(server, "nope.example.com", "A")
    assert nxdomain.rcode() == dns.rcode.NXDOMAIN
    assert nxdomain.authority[0].rdtype == dns.rdatatype.SOA
    nodata = ask(server, "node1.example.com", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    empty_non_terminal = ask(server, "_udp.example.com", "A")
    assert empty_non_terminal.rcode() == dns.rcode.NOERROR
    refused = ask(server, "example.org", "A")
    assert refused.rcode() == dns.rcode.REFUSED


def test_server_drops_malformed_queries(server, caplog):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        for junk in (b"", b"\x00", b"\x12\x34" + b"\xff" * 40):
            sock.sendto(junk, ("127.0.0.1", server.port))
        with pytest.raises(socket.timeout):
            sock.recvfrom(4096)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(1)
        sock.sendall(b"\x00\x05hello")
        assert sock.recv(100) == b""
    response = dns.message.make_response(dns.message.make_query(DOMAIN, "A"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        sock.sendto(response.to_wire(), ("127.0.0.1", server.port))
        with pytest.raises(socket.timeout):
            sock.recvfrom(4096)
    assert server.query_count == 0
    assert caplog.text.count("malformed query") == 4
    assert "response from" in caplog.text
    assert ask(server, "node2.example.com", "A").answer[0][0].address == "127.0.0.12"
