"""Trusted peers (sipcore.trusted) in the proxy core, sans-IO: a carrier trusted by its
source address is not challenged and reaches our users, never a gateway nor another domain;
a request that only claims the carrier's address is challenged; emergency calls still go."""

import pytest

from sipcore.dialing import Dialing
from sipcore.dialplan import DialPlanError, parse_dialplan
from sipcore.digest import Authenticator
from sipcore.forking import ProxyCore
from sipcore.location import Location
from sipcore.proxy import ProxySettings
from sipcore.trusted import parse_trusted
from sipcore.via import source_address, stamp_via
from store import dialplan as dp
from store import master as ms
from tests.test_dialing import GW_A, PLAN, PSAP, core, forwarded  # noqa: F401 (fixture)
from tests.test_web import login
from tests.test_web_dialplan import api, app  # noqa: F401 (fixture)
from tests.test_proxy_core import (
    ALICE,
    DOMAIN,
    PHONES,
    PROXY,
    WALL,
    bind,
    lookup,
    out,
    parse_message,
    request,
)

CARRIER = ("udp", "10.9.0.5", 5060)
TRUSTED_PLAN = {
    **PLAN,
    "trusted": [
        {"name": "carrier", "address": CARRIER[1]},
        {"name": "sbc", "address": "10.8.0.0/29"},
    ],
}


@pytest.fixture
def trusting(core):  # noqa: F811 (the fixture imported above)
    core.dialing = Dialing(parse_dialplan(TRUSTED_PLAN), core.dialing.is_user, DOMAIN)
    return core


def statuses(sent):
    return [m.status for m, _ in sent if hasattr(m, "status")]


def test_peers_by_address_and_network():
    peers = parse_trusted(
        [
            {"name": "c", "address": "192.0.2.7"},
            {"name": "n", "address": "198.51.100.0/28"},
            {"name": "v6", "address": "2001:db8::/64"},
        ]
    )
    assert peers.peer("192.0.2.7").name == "c"
    assert peers.peer("192.0.2.8") is None
    assert peers.peer("198.51.100.15").name == "n"
    assert peers.peer("198.51.100.16") is None
    assert peers.peer("[2001:db8::1]").name == "v6"
    assert peers.peer("not-an-address") is None
    assert parse_trusted(None).peer("192.0.2.7") is None


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "all", "address": "0.0.0.0/0"},
        {"name": "six", "address": "::/0"},
        {"name": "x", "address": "carrier.example"},
        {"name": "x", "address": 17},
        {"name": "bad name!", "address": "192.0.2.1"},
        {"name": "x", "address": "192.0.2.1", "secret": "y"},
    ],
)
def test_bad_trusted_entries_are_refused(entry):
    with pytest.raises(DialPlanError, match=r"trusted\[0\]"):
        parse_dialplan({"trusted": [entry]})


def test_too_many_peers_are_refused():
    many = [{"name": f"p{k}", "address": f"10.1.{k // 250}.{k % 250}"} for k in range(201)]
    with pytest.raises(DialPlanError, match="at most"):
        parse_dialplan({"trusted": many})


def test_a_trusted_carrier_reaches_a_user_unchallenged(trusting):
    bind(trusting.location, "bob", PHONES[0])
    trusting.receive(
        request("INVITE", source=CARRIER, frm=f"sip:+15557770000@{DOMAIN}"), CARRIER, 0.0, WALL
    )
    ((_, dest),) = forwarded(out(trusting))
    assert dest == PHONES[0]
    # a network entry is trusted too
    sbc = ("udp", "10.8.0.6", 5060)
    trusting.receive(
        request("INVITE", source=sbc, frm=f"sip:+15557770001@{DOMAIN}", call_id="c2"),
        sbc,
        0.0,
        WALL,
    )
    assert [d for _, d in forwarded(out(trusting))] == [PHONES[0]]


@pytest.mark.parametrize(
    "uri",
    [
        "sip:95551234@example.test",
        "sip:+15551234567@example.test",
        "sip:someone@other.test",
        "sip:5551234@127.0.0.21:5080",
    ],
)
def test_a_trusted_carrier_cannot_relay_to_a_gateway_or_elsewhere(trusting, uri):
    for frm in (f"sip:+15557770000@{DOMAIN}", "sip:+15557770000@carrier.example"):
        trusting.receive(request("INVITE", uri, source=CARRIER, frm=frm), CARRIER, 0.0, WALL)
        sent = out(trusting)
        assert not forwarded(sent)
        assert statuses(sent)[-1] == 403


def test_trunk_to_trunk_says_so(trusting):
    trusting.receive(
        request("INVITE", "sip:95551234@example.test", source=CARRIER), CARRIER, 0.0, WALL
    )
    resp = [m for m, _ in out(trusting) if hasattr(m, "status")][-1]
    assert (resp.status, resp.reason) == (403, "No Trunk-To-Trunk Relay")


def test_a_request_claiming_the_carriers_address_is_challenged(trusting):
    bind(trusting.location, "bob", PHONES[0])
    # Via names the carrier; the packet came from ALICE
    forged = request("INVITE", source=CARRIER, frm=f"sip:+15557770000@{DOMAIN}")
    text = forged.encode().replace(b";received=10.9.0.5", b"")
    forged = parse_message(text)
    forged.validate()
    dest = stamp_via(forged, *ALICE)
    assert source_address(forged) == ALICE[1]
    trusting.receive(forged, dest, 0.0, WALL)
    assert statuses(out(trusting)) == [407]


def test_a_forged_received_parameter_is_overwritten(trusting):
    text = (
        "INVITE sip:bob@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ALICE[1]}:{ALICE[2]};branch=z9hG4bKf;received={CARRIER[1]}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:+1555@example.test>;tag=a\r\n"
        "To: <sip:bob@example.test>\r\nCall-ID: f1\r\nCSeq: 1 INVITE\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    req = parse_message(text.encode())
    req.validate()
    dest = stamp_via(req, *ALICE)
    assert dest[1] == ALICE[1] and source_address(req) == ALICE[1]
    trusting.receive(req, dest, 0.0, WALL)
    assert statuses(out(trusting)) == [407]


def test_an_emergency_call_from_a_trusted_carrier_still_goes(trusting):
    trusting.receive(
        request(
            "INVITE", "sip:911@example.test", source=CARRIER, frm="sip:+15557770000@carrier.example"
        ),
        CARRIER,
        0.0,
        WALL,
    )
    ((_, dest),) = forwarded(out(trusting))
    assert dest == PSAP
    assert dest != GW_A


def test_trusted_peers_through_the_master_api(app):  # noqa: F811 (the fixture imported above)
    c = app.test_client()
    poked = app.extensions["pusher"]
    assert (
        api(c, "POST", "/trusted", {"name": "carrier", "address": "192.0.2.0/28"}).status_code
        == 200
    )
    version = api(c, "POST", "/trusted", {"name": "carrier", "address": "192.0.2.7"}).get_json()[
        "version"
    ]
    assert ms.config_for(version)["dialplan"]["trusted"] == [
        {"name": "carrier", "address": "192.0.2.7"}
    ]
    assert poked.count >= 2
    bad = api(c, "POST", "/trusted", {"name": "all", "address": "0.0.0.0/0"})
    assert bad.status_code == 400 and "every address" in bad.get_json()["error"]
    assert api(c, "POST", "/trusted", {"name": "x"}).status_code == 400
    assert api(c, "POST", "/trusted", {"name": "sbc", "certificate": "ab" * 32}).status_code == 200
    assert api(c, "POST", "/trusted", {"name": "sbc", "certificate": "ab"}).status_code == 400
    assert api(c, "POST", "/trusted", ["x"]).status_code == 400
    assert (
        api(c, "POST", "/trusted", {"name": "c2", "address": "192.0.2.9"}, headers={}).status_code
        == 401
    )
    assert api(c, "DELETE", "/trusted/carrier").status_code == 200
    assert api(c, "DELETE", "/trusted/carrier").status_code == 404
    assert api(c, "DELETE", "/trusted/sbc").status_code == 200
    assert dp.get_dialplan()["trusted"] == []


def test_the_dial_plan_page_shows_trusted_peers_and_numbers(app):  # noqa: F811
    dp.save_trusted({"name": "carrier", "address": "192.0.2.7"})
    dp.save_user_policy("alice", {"numbers": ["201", "+15551230201"]})
    c = app.test_client()
    login(c)
    page = c.get("/dialplan").get_data(as_text=True)
    assert "<td>carrier</td><td>192.0.2.7</td>" in page
    assert "<td>201, +15551230201</td>" in page


# -- peers trusted by TLS certificate ------------------------------------------------

FINGERPRINT = "ab" * 32
SBC_TLS = ("tls", "10.6.0.8", 40123)


def test_peers_by_certificate():
    peers = parse_trusted(
        [
            {"name": "fp", "certificate": ":".join(["AB"] * 32)},
            {"name": "cn", "subject": "sbc.carrier.example"},
            {"name": "both", "certificate": "cd" * 32, "address": "10.5.0.0/24"},
        ]
    )
    assert peers.peer("10.1.1.1", (FINGERPRINT, "x")).name == "fp"  # any address
    assert peers.peer("10.1.1.1", ("ef" * 32, "sbc.carrier.example")).name == "cn"
    assert peers.peer("10.5.0.9", ("cd" * 32, "")).name == "both"
    assert peers.peer("10.1.1.1", ("cd" * 32, "")) is None  # wrong address
    assert peers.peer("10.5.0.9", None) is None  # no certificate
    assert peers.peer("10.1.1.1", ("ef" * 32, "other")) is None


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "x", "certificate": "ab" * 31},
        {"name": "x", "certificate": "zz" * 32},
        {"name": "x", "certificate": 7},
        {"name": "x", "subject": ["a"]},
        {"name": "x", "subject": "a\nb"},
        {"name": "x", "fingerprint": "ab" * 32},
    ],
)
def test_bad_certificate_entries_are_refused(entry):
    with pytest.raises(DialPlanError, match=r"trusted\[0\]"):
        parse_dialplan({"trusted": [entry]})


@pytest.fixture
def certified():
    settings = ProxySettings(DOMAIN, *PROXY, tls_port=5061)
    px = ProxyCore(settings, Location(), Authenticator(DOMAIN, b"k" * 32, lookup), trying_delay=0)
    plan = {**PLAN, "trusted": [{"name": "sbc", "certificate": FINGERPRINT}]}
    px.dialing = Dialing(parse_dialplan(plan), lambda u: lookup(u) is not None, DOMAIN)
    seen = {}
    px.tls_peer = lambda host, port: seen.get((host, port))
    return px, seen


def test_a_tls_connection_presenting_the_certificate_is_trusted(certified):
    px, seen = certified
    bind(px.location, "bob", PHONES[0])
    seen[SBC_TLS[1:]] = (FINGERPRINT, "sbc")
    px.receive(
        request("INVITE", source=SBC_TLS, frm=f"sip:+15557770000@{DOMAIN}"), SBC_TLS, 0.0, WALL
    )
    ((_, dest),) = forwarded(out(px))
    assert dest == PHONES[0]
    # trusted, yet no trunk-to-trunk relay
    px.receive(
        request(
            "INVITE",
            "sip:95551234@example.test",
            source=SBC_TLS,
            call_id="t2",
            branch="z9hG4bKt2",
            frm="sip:+15557770000@carrier.example",
        ),
        SBC_TLS,
        0.0,
        WALL,
    )
    assert statuses(out(px))[-1] == 403


@pytest.mark.parametrize(
    "source, certificate",
    [
        (SBC_TLS, None),  # TLS without a certificate
        (SBC_TLS, ("cd" * 32, "sbc")),  # another certificate
        (("tcp", "10.6.0.8", 40123), (FINGERPRINT, "sbc")),  # not the TLS connection
    ],
)
def test_without_the_certificate_a_request_is_challenged(certified, source, certificate):
    px, seen = certified
    bind(px.location, "bob", PHONES[0])
    seen[("10.6.0.8", 40123)] = certificate
    px.receive(
        request("INVITE", source=source, frm=f"sip:+15557770000@{DOMAIN}"), source, 0.0, WALL
    )
    assert statuses(out(px)) == [407]
