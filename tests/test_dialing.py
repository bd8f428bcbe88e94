"""Calls to numbers in the proxy core (sipcore.dialing with sipcore.forking), sans-IO: the
dial plan's gateways with failover only on "try elsewhere", permissions, caller identity,
gateway health, and emergency calls that go to the emergency gateways whatever the caller's
credentials, and nowhere else."""

import pytest

from actors.bus import BusError
from actors.config import NodeConfig
from actors.config_sync import ConfigSync
from actors.gateways import apply_dialplan, is_probe_answer, load_dialplan
from sipcore.dialing import TRY_ELSEWHERE, Dialing, probe_request
from sipcore.dialplan import parse_dialplan
from sipcore.digest import Authenticator
from sipcore.forking import ProxyCore
from sipcore.location import Location
from sipcore.message import parse_message
from sipcore.proxy import ProxySettings
from tests.test_proxy_core import (
    ALICE,
    DOMAIN,
    PROXY,
    WALL,
    credentials,
    lookup,
    only,
    out,
    reply,
    request,
    run_until,
)

GW_A = ("udp", "127.0.0.21", 5080)
GW_B = ("udp", "127.0.0.22", 5080)
PSAP = ("udp", "127.0.0.23", 5080)
PSAP2 = ("udp", "127.0.0.24", 5080)
PLAN = {
    "gateways": [
        {"name": "a", "host": GW_A[1], "port": 5080},
        {"name": "b", "host": GW_B[1], "port": 5080, "prefix": "77"},
        {"name": "psap", "host": PSAP[1], "port": 5080, "emergency": True},
        {"name": "psap2", "host": PSAP2[1], "port": 5080, "emergency": True},
    ],
    "rules": [
        {
            "pattern": "9011.",
            "strip": 4,
            "prepend": "+",
            "gateways": ["a"],
            "permission": "international",
        },
        {"pattern": "9.", "strip": 1, "gateways": ["a", "b"], "permission": "local"},
        {"pattern": "+.", "gateways": ["b"]},
    ],
    "users": {
        "alice": {
            "permissions": ["local"],
            "caller_id": "+15550001",
            "emergency_callback": "+15550911",
        }
    },
    "default_callback": "+15550000",
}


@pytest.fixture
def core():
    settings = ProxySettings(DOMAIN, *PROXY, emergency=frozenset({"911", "112"}))
    auth = Authenticator(DOMAIN, b"k" * 32, lookup, algorithms=("MD5",))
    c = ProxyCore(settings, Location(), auth, trying_delay=0, t1=0.5)
    c.dialing = Dialing(parse_dialplan(PLAN), lambda u: lookup(u) is not None, DOMAIN)
    return c


def authed_invite(core, uri, user="alice", extra=(), call_id="call-1"):
    """Send an INVITE from ``user``, answer the 407, return what the core sent then."""
    core.receive(
        request(
            "INVITE",
            uri,
            frm=f"sip:{user}@{DOMAIN}",
            call_id=call_id,
            branch=f"z9hG4bK1{call_id}",
            extra=extra,
        ),
        ALICE,
        0.0,
        WALL,
    )
    challenge = only(core)
    assert challenge.status == 407
    auth = credentials(challenge, user, "INVITE", uri)
    core.receive(
        request(
            "INVITE",
            uri,
            frm=f"sip:{user}@{DOMAIN}",
            cseq=2,
            call_id=call_id,
            branch=f"z9hG4bK2{call_id}",
            extra=(f"Proxy-Authorization: {auth}", *extra),
        ),
        ALICE,
        0.1,
        WALL,
    )
    return out(core)


def forwarded(sent):
    """The INVITEs among what the core sent."""
    return [(m, d) for m, d in sent if getattr(m, "method", "") == "INVITE"]


def test_a_number_goes_to_the_rules_first_gateway_with_digits_and_identity(core):
    sent = authed_invite(
        core, "sip:95551234@example.test", extra=("P-Asserted-Identity: <sip:+19999@evil>",)
    )
    ((inv, dest),) = forwarded(sent)
    assert dest == GW_A and inv.uri == "sip:5551234@127.0.0.21:5080"
    assert inv.get_all("p-asserted-identity") == [f"<sip:+15550001@{DOMAIN};user=phone>"]


def test_failover_to_the_next_gateway_on_503_but_not_on_486(core):
    sent = authed_invite(core, "sip:95551234@example.test")
    ((inv, _),) = forwarded(sent)
    core.receive(reply(inv, 503), GW_A, 0.2, WALL)
    ((inv2, dest),) = forwarded(out(core))
    assert dest == GW_B and inv2.uri == "sip:775551234@127.0.0.22:5080"
    core.receive(reply(inv2, 486), GW_B, 0.3, WALL)
    finals = [m for m, _ in out(core) if getattr(m, "status", 0) >= 400]
    assert [m.status for m in finals] == [486]

    sent = authed_invite(core, "sip:95551235@example.test", call_id="call-2")
    ((inv, _),) = forwarded(sent)
    core.receive(reply(inv, 486), GW_A, 0.2, WALL)
    msgs = out(core)
    assert [m.status for m, _ in msgs if hasattr(m, "status")] == [486]
    assert not forwarded(msgs)
    assert {408, 500, 502, 503, 504} == TRY_ELSEWHERE


def test_failover_on_timer_b(core):
    sent = authed_invite(core, "sip:95551234@example.test")
    assert forwarded(sent)[0][1] == GW_A
    later = run_until(core, 40.0)
    assert any(d == GW_B and getattr(m, "method", "") == "INVITE" for m, d in later)


def test_down_gateways_are_skipped(core):
    core.dialing.down.add("a")
    ((_, dest),) = forwarded(authed_invite(core, "sip:95551234@example.test"))
    assert dest == GW_B
    core.dialing.down.add("b")
    sent = authed_invite(core, "sip:95551236@example.test", call_id="call-3")
    assert [m.status for m, _ in sent if hasattr(m, "status")][-1] == 503


@pytest.mark.parametrize(
    "uri, status",
    [
        ("sip:9011441234@example.test", 403),  # alice lacks international
        ("sip:5551234@example.test", 404),  # no rule
    ],
)
def test_permission_and_no_rule(core, uri, status):
    sent = authed_invite(core, uri)
    assert not forwarded(sent)
    resp = [m for m, _ in sent if hasattr(m, "status")][-1]
    assert resp.status == status
    if status == 403:
        assert "international" in resp.reason


def test_an_authenticated_call_refused_before_any_branch_has_its_events(core):
    """A user's call to a user with no phone (480) or a number the plan refuses (403, 404)
    is a call: an attempt, then a failure with the status, for its record; the 407 before
    it is none."""
    for n, (uri, status) in enumerate(
        (
            ("sip:bob@example.test", 480),
            ("sip:9011441234@example.test", 403),
            ("sip:5551234@example.test", 404),
        )
    ):
        core.take_call_events()
        authed_invite(core, uri, call_id=f"refused-{n}")
        events = core.take_call_events()
        assert [(e.kind, e.status, e.call_id) for e in events] == [
            ("attempt", None, f"refused-{n}"),
            ("failure", status, f"refused-{n}"),
        ]
        assert (events[0].caller, events[0].callee) == (
            "sip:alice@example.test",
            "sip:bob@example.test",
        )


def test_a_strangers_refused_invite_leaves_no_call_event(core):
    """An INVITE nobody authenticated and that goes nowhere (relaying denied, an unknown
    user of ours) makes no record: anyone could fill the records with them."""
    core.receive(
        request("INVITE", "sip:95551234@example.test", frm="sip:eve@other.test"), ALICE, 0.0, WALL
    )
    core.receive(
        request(
            "INVITE",
            "sip:nobody@example.test",
            frm="sip:eve@other.test",
            call_id="call-2",
            branch="z9hG4bKs2",
        ),
        ALICE,
        0.0,
        WALL,
    )
    assert [m.status for m, _ in out(core) if hasattr(m, "status")] == [403, 480]
    assert core.take_call_events() == []


def test_a_number_from_an_unauthenticated_caller_is_challenged_or_refused(core):
    core.receive(request("INVITE", "sip:95551234@example.test"), ALICE, 0.0, WALL)
    assert only(core).status == 407
    core.receive(
        request("INVITE", "sip:95551234@example.test", frm="sip:eve@other.test"), ALICE, 0.0, WALL
    )
    assert [m.status for m, _ in out(core) if hasattr(m, "status")][-1] == 403


def test_a_user_whose_name_is_a_number_is_not_dialled_out(core):
    core.dialing = Dialing(parse_dialplan(PLAN), lambda u: u == "95551234", DOMAIN)
    sent = authed_invite(core, "sip:95551234@example.test")
    assert [m.status for m, _ in sent if hasattr(m, "status")][-1] == 480


@pytest.mark.parametrize(
    "creds",
    [
        None,
        'Digest username="alice", realm="example.test", '
        'nonce="forged", uri="sip:911@example.test", '
        'response="00000000000000000000000000000000"',
    ],
)
def test_emergency_goes_to_the_emergency_gateways_without_credentials(core, creds):
    extra = (f"Proxy-Authorization: {creds}",) if creds else ()
    core.receive(
        request(
            "INVITE",
            "sip:911@example.test",
            extra=("Route: <sip:127.0.0.21:5080;lr>", "P-Asserted-Identity: <sip:+1999@x>", *extra),
        ),
        ALICE,
        0.0,
        WALL,
    )
    msgs = out(core)
    ((inv, dest),) = forwarded(msgs)
    assert dest == PSAP and inv.uri == "sip:911@127.0.0.23:5080"
    assert inv.get("route") is None
    assert inv.get_all("p-asserted-identity") == [f"<sip:+15550911@{DOMAIN};user=phone>"]
    assert [e.kind for e in core.take_call_events()] == ["attempt", "emergency"]
    core.receive(reply(inv, 404), PSAP, 0.2, WALL)
    ((_, dest2),) = forwarded(out(core))
    assert dest2 == PSAP2


def test_emergency_from_an_unknown_caller_gets_the_default_callback_and_down_gateways_last(core):
    core.dialing.down.add("psap")
    core.receive(
        request("INVITE", "sip:112@evil.example", frm="sip:visitor@other.test"), ALICE, 0.0, WALL
    )
    ((inv, dest),) = forwarded(out(core))
    assert dest == PSAP2 and inv.uri == "sip:112@127.0.0.24:5080"
    assert inv.get("p-asserted-identity") == f"<sip:+15550000@{DOMAIN};user=phone>"


@pytest.mark.parametrize(
    "uri",
    [
        "sip:9911@example.test",
        "sip:911555@example.test",
        "sip:+15551234567@example.test",
        "sip:95551234@example.test",
    ],
)
def test_the_emergency_exception_is_narrow(core, uri):
    forged = (
        'Digest username="alice", realm="example.test", nonce="forged", '
        f'uri="{uri}", response="00000000000000000000000000000000"'
    )
    core.receive(
        request(
            "INVITE",
            uri,
            extra=(f"Proxy-Authorization: {forged}", "Route: <sip:127.0.0.23:5080;lr>"),
        ),
        ALICE,
        0.0,
        WALL,
    )
    msgs = out(core)
    assert not forwarded(msgs)
    assert [m.status for m, _ in msgs if hasattr(m, "status")][-1] in (403, 407)


def test_probe_request_parses():
    gw = parse_dialplan(PLAN).gateways["b"]
    msg = parse_message(probe_request(gw, "127.0.0.1", 4000, "udp", DOMAIN, "cid", "z9hG4bKx"))
    assert msg.method == "OPTIONS" and msg.uri == "sip:127.0.0.22:5080"


@pytest.mark.parametrize(
    "uri, route",
    [
        ("sip:9011441234@127.0.0.21:5080", None),
        ("sip:9011441234@example.test", "<sip:127.0.0.21:5080;lr>"),
        ("sip:441234@other.example", "<sip:127.0.0.22:5080;lr>"),
    ],
)
def test_an_authenticated_user_cannot_reach_a_gateway_past_the_dial_plan(core, uri, route):
    sent = authed_invite(core, uri, extra=(f"Route: {route}",) if route else ())
    assert not forwarded(sent)
    assert [m.status for m, _ in sent if hasattr(m, "status")][-1] == 403


# -- the node's side: a pushed plan is checked, kept and applied -------------------------
def push(sync, version, **more):
    return sync.apply({"from": "master", "version": version, "domain": DOMAIN, "users": [], **more})


def test_a_pushed_plan_is_checked_kept_and_applied(store):
    class Node:
        cfg = NodeConfig("node1", DOMAIN, dialplan={"gateways": [PLAN["gateways"][0]]})
        dialing = Dialing(parse_dialplan(None), lambda u: False, DOMAIN)

    node = Node()
    sync = ConfigSync(DOMAIN)
    sync.on_dialplan = lambda doc: apply_dialplan(node, doc)
    assert list(load_dialplan(node.cfg).gateways) == ["a"]  # the TOML's, before a push
    bad = {**PLAN, "rules": [{"pattern": "9.", "gateways": ["nowhere"]}]}
    with pytest.raises(BusError, match="no gateway named 'nowhere'"):
        push(sync, 1, dialplan=bad)
    assert sync.version()["version"] == 0 and node.dialing.plan.rules == []
    assert push(sync, 2, dialplan=PLAN)["applied"]
    assert node.dialing.plan.match("95551234").number == "5551234"
    assert load_dialplan(node.cfg).match("95551234") is not None  # kept for a restart
    assert push(sync, 3)["applied"]  # no plan: it stays
    assert node.dialing.plan.match("95551234") is not None


def test_emergency_callback_by_the_callers_location(core):
    core.dialing.plan = parse_dialplan(
        {**PLAN, "locations": [{"network": "10.0.0.0/24", "callback": "+15551010"}]}
    )
    core.receive(
        request("INVITE", "sip:911@example.test", frm="sip:visitor@other.test"), ALICE, 0.0, WALL
    )
    ((inv, _),) = forwarded(out(core))
    assert inv.get("p-asserted-identity") == f"<sip:+15551010@{DOMAIN};user=phone>"


def test_a_forged_or_stale_push_changes_no_plan(store):
    class Node:
        cfg = NodeConfig("node1", DOMAIN)
        dialing = Dialing(parse_dialplan(None), lambda u: False, DOMAIN)

    node = Node()
    sync = ConfigSync(DOMAIN)
    sync.on_dialplan = lambda doc: apply_dialplan(node, doc)
    with pytest.raises(BusError, match="master's key only"):
        sync.apply({"from": "node2", "version": 5, "domain": DOMAIN, "users": [], "dialplan": PLAN})
    assert push(sync, 2)["applied"]
    assert not push(sync, 1, dialplan=PLAN)["applied"]  # replayed older version
    huge = {**PLAN, "rules": [PLAN["rules"][1]] * 5001}
    with pytest.raises(BusError, match="at most 5000"):
        push(sync, 3, dialplan=huge)
    assert node.dialing.plan.rules == [] and load_dialplan(node.cfg).rules == []


@pytest.mark.parametrize(
    "data, answered",
    [
        (
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\n"
            b"To: <sip:c@d>\r\nCall-ID: probe-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            True,
        ),
        (
            b"SIP/2.0 405 No\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\n"
            b"To: <sip:c@d>\r\nCall-ID: probe-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            True,
        ),
        (
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\n"
            b"To: <sip:c@d>\r\nCall-ID: forged\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            False,
        ),
        (b"OPTIONS sip:x SIP/2.0\r\nCall-ID: probe-1\r\n\r\n", False),
        (b"\x00\xff garbage", False),
    ],
)
def test_only_an_answer_to_the_probe_counts(data, answered):
    assert is_probe_answer(data, "probe-1") is answered


def test_timer_c_of_a_ringing_gateway_moves_on_to_the_next(core):
    core.timer_c = 10.0
    ((inv, _),) = forwarded(authed_invite(core, "sip:95551234@example.test"))
    core.receive(reply(inv, 180), GW_A, 0.2, WALL)
    out(core)
    cancels = [m for m, d in run_until(core, 10.3) if getattr(m, "method", "") == "CANCEL"]
    assert len(cancels) == 1
    core.receive(reply(inv, 487), GW_A, 10.4, WALL)
    ((inv2, dest),) = forwarded(out(core))
    assert dest == GW_B and inv2.uri == "sip:775551234@127.0.0.22:5080"
    assert not core._gave_up
