"""RFC 3263 server location and cluster zone text, without any I/O."""

import random
from collections import Counter
from dataclasses import dataclass

import dns.rdatatype
import dns.zone
import pytest

from sipcore.rfc3263 import (
    Locator,
    Naptr,
    Query,
    Srv,
    Target,
    is_ip_literal,
    locate,
    naptr_order,
    srv_order,
    uri_transport,
)
from sipcore.zone import cluster_zone

DRAWS = 20000


@dataclass(frozen=True)
class Rec:
    """An SRV-like record for ordering tests."""

    name: str
    priority: int
    weight: int


class FakeDns:
    """Answers from a dict and remembers every query made."""

    def __init__(self, records=None):
        self.records = records or {}
        self.queries = []

    def __call__(self, query):
        self.queries.append((query.name, query.rdtype))
        return self.records.get((query.name, query.rdtype), [])


def first_share(records, name, seed=7):
    rng = random.Random(seed)
    firsts = Counter(srv_order(records, rng)[0].name for _ in range(DRAWS))
    return firsts[name] / DRAWS


def test_srv_priority_before_weight():
    records = [Rec("c", 20, 100), Rec("a", 10, 0), Rec("b", 10, 1), Rec("d", 30, 5)]
    for seed in range(50):
        ordered = srv_order(records, random.Random(seed))
        assert [r.priority for r in ordered] == [10, 10, 20, 30]
        assert sorted(r.name for r in ordered) == ["a", "b", "c", "d"]


def test_srv_50_50_split():
    records = [Rec("n1", 10, 50), Rec("n2", 10, 50)]
    assert first_share(records, "n1") == pytest.approx(0.5, abs=0.02)


def test_srv_80_20_split():
    records = [Rec("n1", 10, 80), Rec("n2", 10, 20)]
    assert first_share(records, "n1") == pytest.approx(0.8, abs=0.02)
    assert first_share(records, "n2") == pytest.approx(0.2, abs=0.02)


def test_srv_three_way_split_and_second_place():
    records = [Rec("a", 10, 60), Rec("b", 10, 30), Rec("c", 10, 10)]
    rng = random.Random(3)
    seconds = Counter()
    firsts = Counter()
    for _ in range(DRAWS):
        ordered = srv_order(records, rng)
        firsts[ordered[0].name] += 1
        if ordered[0].name == "a":
            seconds[ordered[1].name] += 1
    assert firsts["a"] / DRAWS == pytest.approx(0.6, abs=0.02)
    assert firsts["c"] / DRAWS == pytest.approx(0.1, abs=0.02)
    assert seconds["b"] / firsts["a"] == pytest.approx(0.75, abs=0.03)


def test_srv_zero_weight_is_rarely_first():
    records = [Rec("heavy", 10, 10), Rec("zero", 10, 0)]
    assert first_share(records, "zero") == pytest.approx(1 / 11, abs=0.01)


def test_srv_all_zero_weights_keep_given_order():
    records = [Rec("x", 10, 0), Rec("y", 10, 0), Rec("z", 10, 0)]
    for seed in range(20):
        assert [r.name for r in srv_order(records, random.Random(seed))] == ["x", "y", "z"]


def test_srv_order_is_deterministic_per_seed():
    records = [Rec(str(i), 10, i + 1) for i in range(8)]
    assert srv_order(records, random.Random(42)) == srv_order(records, random.Random(42))
    assert srv_order([], random.Random(1)) == []


def test_naptr_filter_and_order():
    records = [
        Naptr(20, 10, "s", "SIP+D2T", "", "_sip._tcp.example.com."),
        Naptr(10, 20, "S", "sip+d2u", "", "_sip._udp.example.com"),
        Naptr(10, 10, "s", "SIPS+D2T", "", "_sips._tcp.example.com"),
        Naptr(5, 10, "u", "E2U+sip", "!^.*$!sip:x@y!", "."),
        Naptr(5, 10, "s", "SIP+D2S", "", "_sip._sctp.example.com"),
        Naptr(5, 10, "", "SIP+D2U", "", "_other.example.com"),
        Naptr(5, 10, "s", "SIP+D2U", "", "."),
    ]
    assert naptr_order(records) == [
        ("_sips._tcp.example.com", "tls"),
        ("_sip._udp.example.com", "udp"),
        ("_sip._tcp.example.com", "tcp"),
    ]
    assert naptr_order(records, "sips") == [("_sips._tcp.example.com", "tls")]
    assert naptr_order(records, supported=("tcp",)) == [("_sip._tcp.example.com", "tcp")]


def test_helpers():
    assert is_ip_literal("192.0.2.1") and is_ip_literal("[2001:db8::1]")
    assert not is_ip_literal("example.com")
    assert uri_transport(None, "sip") is None
    assert uri_transport("TCP", "sip") == "tcp"
    assert uri_transport("tcp", "sips") == "tls"
    assert uri_transport("udp", "sips") == ""
    assert uri_transport("sctp", "sip") == ""


@pytest.mark.parametrize(
    "host, port, transport, scheme, expected",
    [
        ("192.0.2.1", None, None, "sip", Target("192.0.2.1", 5060, "udp")),
        ("192.0.2.1", 5080, None, "sip", Target("192.0.2.1", 5080, "udp")),
        ("192.0.2.1", None, "tcp", "sip", Target("192.0.2.1", 5060, "tcp")),
        ("192.0.2.1", None, None, "sips", Target("192.0.2.1", 5061, "tls")),
        ("[2001:db8::1]", 5070, "tls", "sip", Target("2001:db8::1", 5070, "tls")),
    ],
)
def test_ip_literal_needs_no_dns(host, port, transport, scheme, expected):
    locator = Locator(host, port, transport, scheme)
    assert locator.done and locator.pending() == ()
    [target] = locator.targets
    assert (target.host, target.port, target.transport) == (
        expected.host,
        expected.port,
        expected.transport,
    )


@pytest.mark.parametrize(
    "port, transport, scheme, want",
    [
        (5080, None, "sip", "udp"),
        (5080, "tcp", "sip", "tcp"),
        (5081, None, "sips", "tls"),
        (5081, "tcp", "sips", "tls"),
    ],
)
def test_explicit_port_does_address_lookups_only(port, transport, scheme, want):
    fake = FakeDns(
        {("pbx.example.com", "A"): ["192.0.2.7"], ("pbx.example.com", "AAAA"): ["2001:db8::7"]}
    )
    locator = Locator("PBX.example.com.", port, transport, scheme)
    assert locator.step == "address"
    assert set(locator.pending()) == {
        Query("pbx.example.com", "A"),
        Query("pbx.example.com", "AAAA"),
    }
    targets = locate("pbx.example.com", port, transport, scheme, fake)
    assert targets == [
        Target("192.0.2.7", port, want, "pbx.example.com"),
        Target("2001:db8::7", port, want, "pbx.example.com"),
    ]
    assert {rdtype for _, rdtype in fake.queries} == {"A", "AAAA"}


@pytest.mark.parametrize(
    "transport, scheme, srv, want, default",
    [
        ("udp", "sip", "_sip._udp.example.com", "udp", 5060),
        ("tcp", "sip", "_sip._tcp.example.com", "tcp", 5060),
        ("tls", "sip", "_sips._tcp.example.com", "tls", 5061),
        ("tcp", "sips", "_sips._tcp.example.com", "tls", 5061),
    ],
)
def test_explicit_transport_queries_its_srv(transport, scheme, srv, want, default):
    locator = Locator("example.com", None, transport, scheme)
    assert locator.pending() == (Query(srv, "SRV"),)
    fake = FakeDns(
        {(srv, "SRV"): [Srv(10, 0, 5099, "a.example.com.")], ("a.example.com", "A"): ["192.0.2.1"]}
    )
    assert locate("example.com", None, transport, scheme, fake) == [
        Target("192.0.2.1", 5099, want, "a.example.com")
    ]
    assert ("example.com", "NAPTR") not in fake.queries
    fallback = FakeDns({("example.com", "A"): ["192.0.2.9"]})
    assert locate("example.com", None, transport, scheme, fallback) == [
        Target("192.0.2.9", default, want, "example.com")
    ]


def test_naptr_then_srv_then_addresses():
    fake = FakeDns(
        {
            ("example.com", "NAPTR"): [
                Naptr(10, 20, "s", "SIP+D2T", "", "_sip._tcp.example.com"),
                Naptr(10, 10, "s", "SIP+D2U", "", "_sip._udp.example.com"),
            ],
            ("_sip._udp.example.com", "SRV"): [
                Srv(20, 0, 5062, "b.example.com"),
                Srv(10, 0, 5060, "a.example.com"),
            ],
            ("_sip._tcp.example.com", "SRV"): [Srv(10, 0, 5060, "a.example.com")],
            ("a.example.com", "A"): ["192.0.2.1"],
            ("b.example.com", "A"): ["192.0.2.2"],
            ("b.example.com", "AAAA"): ["2001:db8::2"],
        }
    )
    locator = Locator("example.com")
    assert locator.step == "naptr"
    assert locator.pending() == (Query("example.com", "NAPTR"),)
    assert locate("example.com", None, None, "sip", fake) == [
        Target("192.0.2.1", 5060, "udp", "a.example.com"),
        Target("192.0.2.2", 5062, "udp", "b.example.com"),
        Target("2001:db8::2", 5062, "udp", "b.example.com"),
        Target("192.0.2.1", 5060, "tcp", "a.example.com"),
    ]
    assert fake.queries[0] == ("example.com", "NAPTR")
    assert set(fake.queries[1:3]) == {
        ("_sip._udp.example.com", "SRV"),
        ("_sip._tcp.example.com", "SRV"),
    }


@pytest.mark.parametrize(
    "scheme, supported, expected",
    [
        (
            "sip",
            ("udp", "tcp", "tls"),
            ["_sips._tcp.example.com", "_sip._tcp.example.com", "_sip._udp.example.com"],
        ),
        ("sip", ("udp", "tcp"), ["_sip._tcp.example.com", "_sip._udp.example.com"]),
        ("sips", ("udp", "tcp", "tls"), ["_sips._tcp.example.com"]),
    ],
)
def test_no_naptr_queries_srv_in_preference_order(scheme, supported, expected):
    locator = Locator("example.com", scheme=scheme, supported=supported)
    locator.feed(Query("example.com", "NAPTR"), [])
    assert locator.step == "srv"
    assert [q.name for q in locator.pending()] == expected


def test_no_naptr_targets_follow_srv_preference():
    fake = FakeDns(
        {
            ("_sip._udp.example.com", "SRV"): [Srv(10, 0, 5060, "u.example.com")],
            ("_sips._tcp.example.com", "SRV"): [Srv(10, 0, 5061, "s.example.com")],
            ("u.example.com", "A"): ["192.0.2.1"],
            ("s.example.com", "A"): ["192.0.2.2"],
        }
    )
    assert locate("example.com", None, None, "sip", fake) == [
        Target("192.0.2.2", 5061, "tls", "s.example.com"),
        Target("192.0.2.1", 5060, "udp", "u.example.com"),
    ]


@pytest.mark.parametrize("scheme, want, port", [("sip", "udp", 5060), ("sips", "tls", 5061)])
def test_no_naptr_no_srv_falls_back_to_address(scheme, want, port):
    fake = FakeDns({("example.com", "A"): ["192.0.2.5"]})
    assert locate("example.com", None, None, scheme, fake) == [
        Target("192.0.2.5", port, want, "example.com")
    ]


def test_naptr_transport_kept_when_its_srv_is_empty():
    fake = FakeDns(
        {
            ("example.com", "NAPTR"): [Naptr(10, 10, "s", "SIP+D2T", "", "_sip._tcp.example.com")],
            ("example.com", "A"): ["192.0.2.5"],
        }
    )
    assert locate("example.com", None, None, "sip", fake) == [
        Target("192.0.2.5", 5060, "tcp", "example.com")
    ]


def test_srv_dot_target_means_no_service():
    fake = FakeDns(
        {("_sip._udp.example.com", "SRV"): [Srv(0, 0, 0, ".")], ("example.com", "A"): ["192.0.2.5"]}
    )
    locator = Locator("example.com", None, "udp")
    locator.feed(locator.pending()[0], fake(locator.pending()[0]))
    assert locator.done and locator.targets == []
    assert "not available" in locator.reason


def test_srv_ip_target_dedup_and_family_order():
    fake = FakeDns(
        {
            ("_sip._udp.example.com", "SRV"): [
                Srv(10, 0, 5060, "192.0.2.8"),
                Srv(10, 0, 5060, "a.example.com"),
                Srv(20, 0, 5060, "b.example.com"),
            ],
            ("a.example.com", "A"): ["192.0.2.8"],
            ("a.example.com", "AAAA"): ["2001:db8::8"],
            ("b.example.com", "A"): ["192.0.2.8"],
        }
    )
    targets = locate(
        "example.com", None, "udp", "sip", fake, families=("AAAA", "A"), rng=random.Random(1)
    )
    assert [(t.host, t.port) for t in targets] == [("192.0.2.8", 5060), ("2001:db8::8", 5060)]
    assert ("192.0.2.8", "A") not in fake.queries


@pytest.mark.parametrize(
    "transport, scheme, supported",
    [
        ("sctp", "sip", ("udp", "tcp", "tls")),
        ("udp", "sips", ("udp", "tcp", "tls")),
        ("tls", "sip", ("udp", "tcp")),
        (None, "sips", ("udp", "tcp")),
    ],
)
def test_unusable_transport_gives_no_target(transport, scheme, supported):
    locator = Locator("example.com", None, transport, scheme, supported=supported)
    assert locator.done and locator.targets == [] and locator.reason


def test_locator_misuse():
    locator = Locator("example.com")
    with pytest.raises(RuntimeError):
        locator.targets  # noqa: B018 - the property raises
    with pytest.raises(ValueError):
        locator.feed(Query("example.com", "SRV"), [])
    with pytest.raises(ValueError):
        Locator("example.com", scheme="tel")


def zone_lookup(zone):
    """A FakeDns-style lookup answering from a parsed dnspython zone."""

    def lookup(query):
        rdataset = zone.get_rdataset(query.name + ".", dns.rdatatype.from_text(query.rdtype))
        if rdataset is None:
            return []
        if query.rdtype == "SRV":
            return [Srv(r.priority, r.weight, r.port, r.target.to_text()) for r in rdataset]
        if query.rdtype == "NAPTR":
            return [
                Naptr(
                    r.order,
                    r.preference,
                    r.flags.decode(),
                    r.service.decode(),
                    r.regexp.decode(),
                    r.replacement.to_text(),
                )
                for r in rdataset
            ]
        return [r.address for r in rdataset]

    return lookup


def test_cluster_zone_text_parses_and_resolves():
    text = cluster_zone(
        "Example.com.",
        [
            ("node1", "192.0.2.1", 5060, 80),
            ("node2", "2001:db8::2", 5062, 20),
            ("node3", "192.0.2.3", 5064),
        ],
    )
    zone = dns.zone.from_text(text, origin="example.com", relativize=False)
    soa = zone.get_rdataset("example.com.", "SOA")
    assert soa[0].mname.to_text() == "node1.example.com."
    assert zone.get_rdataset("example.com.", "NS")[0].target.to_text() == "node1.example.com."
    assert zone.get_rdataset("node2.example.com.", "AAAA")[0].address == "2001:db8::2"
    naptrs = sorted(
        (r.order, r.preference, r.service, r.replacement.to_text())
        for r in zone.get_rdataset("example.com.", "NAPTR")
    )
    assert naptrs == [
        (10, 10, b"SIP+D2U", "_sip._udp.example.com."),
        (10, 20, b"SIP+D2T", "_sip._tcp.example.com."),
    ]
    for owner in ("_sip._udp.example.com.", "_sip._tcp.example.com."):
        srv = {
            (r.target.to_text(), r.port): (r.priority, r.weight)
            for r in zone.get_rdataset(owner, "SRV")
        }
        assert srv == {
            ("node1.example.com.", 5060): (10, 80),
            ("node2.example.com.", 5062): (10, 20),
            ("node3.example.com.", 5064): (10, 50),
        }
    targets = locate("example.com", None, None, "sip", zone_lookup(zone), rng=random.Random(5))
    assert {(t.host, t.port, t.transport) for t in targets} == {
        (ip, port, transport)
        for ip, port in (("192.0.2.1", 5060), ("2001:db8::2", 5062), ("192.0.2.3", 5064))
        for transport in ("udp", "tcp")
    }
    assert [t.transport for t in targets] == ["udp"] * 3 + ["tcp"] * 3


def test_cluster_zone_defaults_and_options():
    text = cluster_zone(
        "example.com",
        [("a", "192.0.2.1", 5060, None), ("b", "192.0.2.2", 5060)],
        ttl=30,
        serial=2024010101,
        nameserver="ns1.example.net.",
    )
    zone = dns.zone.from_text(text, origin="example.com", relativize=False)
    assert {r.weight for r in zone.get_rdataset("_sip._udp.example.com.", "SRV")} == {50}
    soa = zone.get_rdataset("example.com.", "SOA")
    assert soa.ttl == 30 and soa[0].serial == 2024010101
    assert soa[0].minimum == 30
    empty = cluster_zone("example.com", [])
    assert "ns.example.com." in empty
    dns.zone.from_text(empty, origin="example.com")


def test_cluster_zone_with_tls_port_serves_sips_srv_and_naptr():
    """Nodes with a TLS port have ``_sips._tcp`` SRV records on that port and the zone
    a SIPS+D2T NAPTR after the others: a sips URI resolves to TLS only, a sip URI
    still to UDP first."""
    text = cluster_zone(
        "example.com",
        [("node1", "192.0.2.1", 5060, 80, 5061), ("node2", "192.0.2.2", 5060, 20, 5061)],
    )
    zone = dns.zone.from_text(text, origin="example.com", relativize=False)
    naptrs = sorted(
        (r.preference, r.service, r.replacement.to_text())
        for r in zone.get_rdataset("example.com.", "NAPTR")
    )
    assert naptrs[-1] == (30, b"SIPS+D2T", "_sips._tcp.example.com.")
    srv = {
        (r.target.to_text(), r.port, r.weight)
        for r in zone.get_rdataset("_sips._tcp.example.com.", "SRV")
    }
    assert srv == {("node1.example.com.", 5061, 80), ("node2.example.com.", 5061, 20)}
    assert {r.port for r in zone.get_rdataset("_sip._tcp.example.com.", "SRV")} == {5060}
    sips = locate("example.com", None, None, "sips", zone_lookup(zone), rng=random.Random(5))
    assert {(t.host, t.port, t.transport) for t in sips} == {
        ("192.0.2.1", 5061, "tls"),
        ("192.0.2.2", 5061, "tls"),
    }
    sip = locate("example.com", None, None, "sip", zone_lookup(zone), rng=random.Random(5))
    assert sip[0].transport == "udp"
    for bad in (70000, -1):
        with pytest.raises(ValueError, match="TLS port"):
            cluster_zone("example.com", [("a", "192.0.2.1", 5060, 50, bad)])


def test_cluster_zone_sips_only_for_the_nodes_with_tls():
    """A node without TLS (port 0 or left out) has no ``_sips._tcp`` record; a zone
    whose nodes have none has neither the SRV name nor the SIPS+D2T NAPTR."""
    text = cluster_zone(
        "example.com",
        [
            ("node1", "192.0.2.1", 5060, 70, 5071),
            ("node2", "192.0.2.2", 5062, 30, 0),
            ("node3", "192.0.2.3", 5064),
        ],
    )
    zone = dns.zone.from_text(text, origin="example.com", relativize=False)
    srv = [
        (r.priority, r.weight, r.port, r.target.to_text())
        for r in zone.get_rdataset("_sips._tcp.example.com.", "SRV")
    ]
    assert srv == [(10, 70, 5071, "node1.example.com.")]
    assert len(zone.get_rdataset("_sip._tcp.example.com.", "SRV")) == 3
    sips = locate("example.com", None, None, "sips", zone_lookup(zone), rng=random.Random(5))
    assert [(t.host, t.port, t.transport) for t in sips] == [("192.0.2.1", 5071, "tls")]
    plain = cluster_zone(
        "example.com", [("node1", "192.0.2.1", 5060, 50, 0), ("node2", "192.0.2.2", 5060)]
    )
    assert "_sips" not in plain and "SIPS+D2T" not in plain
    assert (
        locate(
            "example.com",
            None,
            None,
            "sips",
            zone_lookup(dns.zone.from_text(plain, origin="example.com", relativize=False)),
        )
        == []
    )


@pytest.mark.parametrize(
    "domain, nodes",
    [
        ("bad domain", [("a", "192.0.2.1", 5060, 50)]),
        ("example.com", [("a b", "192.0.2.1", 5060, 50)]),
        ("example.com", [("a", "not-an-ip", 5060, 50)]),
        ("example.com", [("a", "192.0.2.1", 0, 50)]),
        ("example.com", [("a", "192.0.2.1", 5060, 70000)]),
        ("example.com", [("a", "192.0.2.1")]),
        ("example.com", [("a", "192.0.2.1", 5060, 50, 5061, 1)]),
    ],
)
def test_cluster_zone_rejects_bad_input(domain, nodes):
    with pytest.raises(ValueError):
        cluster_zone(domain, nodes)
