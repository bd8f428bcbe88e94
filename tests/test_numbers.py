"""Users' extensions and DIDs (``numbers`` in the dial plan's user policies): parsed and
checked, looked up before the dial plan in the proxy core (sans-IO), and managed on the
master (never the name of a user)."""

import pytest

from sipcore.dialing import Dialing
from sipcore.dialplan import MAX_NUMBERS, DialPlanError, parse_dialplan
from store import dialplan as dp
from store import master as ms
from store.db import StoreError
from tests.test_dialing import GW_A, PLAN, authed_invite, core, forwarded  # noqa: F401
from tests.test_proxy_core import DOMAIN, PHONES, WALL, bind, out, request
from tests.test_trusted import CARRIER

ALICE_NUMBERS = ["201", "+15551230201"]
NUMBERED = {
    **PLAN,
    "users": {
        **PLAN["users"],
        "alice": {**PLAN["users"]["alice"], "caller_id": "+15551230201", "numbers": ALICE_NUMBERS},
        "bob": {"permissions": ["local"], "numbers": ["202", "+15551230202"]},
    },
    "trusted": [{"name": "carrier", "address": CARRIER[1]}],
}


@pytest.fixture
def numbered(core):  # noqa: F811 (the fixture imported above)
    core.dialing = Dialing(parse_dialplan(NUMBERED), core.dialing.is_user, DOMAIN)
    return core


def test_numbers_are_parsed_and_owned():
    plan = parse_dialplan(NUMBERED)
    assert plan.owner("201") == "alice" and plan.owner("+15551230202") == "bob"
    assert plan.owner("203") is None
    assert plan.policy("bob").presented == "+15551230202"  # the DID, not the extension
    assert plan.policy("alice").presented == "+15551230201"


@pytest.mark.parametrize(
    "users, message",
    [
        ({"a": {"numbers": ["201"]}, "b": {"numbers": ["201"]}}, "already a's"),
        ({"a": {"numbers": ["201", "201"]}}, "twice"),
        ({"a": {"numbers": ["2o1"]}}, "numbers must be"),
        ({"a": {"numbers": "201"}}, "numbers must be"),
        ({"a": {"numbers": [str(200 + k) for k in range(MAX_NUMBERS + 1)]}}, "at most"),
        ({"a": {"numbers": ["201"], "caller_id": "+15559999999"}}, "not one of the user's"),
        ({"a": {"numbers": ["201"]}, "b": {"caller_id": "201"}}, "caller_id 201 is a's number"),
    ],
)
def test_bad_numbers_are_refused(users, message):
    with pytest.raises(DialPlanError, match=message):
        parse_dialplan({"users": users})


@pytest.mark.parametrize("number", ALICE_NUMBERS)
def test_an_extension_or_did_reaches_the_users_phones(numbered, number):
    bind(numbered.location, "alice", PHONES[1])
    sent = authed_invite(numbered, f"sip:{number}@{DOMAIN}", user="bob")
    ((inv, dest),) = forwarded(sent)
    assert dest == PHONES[1] and inv.uri == f"sip:alice@{PHONES[1][1]}:{PHONES[1][2]}"


def test_a_trusted_carrier_reaches_a_did_unchallenged(numbered):
    bind(numbered.location, "alice", PHONES[1])
    numbered.receive(
        request(
            "INVITE",
            "sip:+15551230201@example.test",
            source=CARRIER,
            frm=f"sip:+15557770000@{DOMAIN}",
        ),
        CARRIER,
        0.0,
        WALL,
    )
    assert [d for _, d in forwarded(out(numbered))] == [PHONES[1]]


def test_a_did_without_a_phone_is_unavailable_not_dialled_out(numbered):
    sent = authed_invite(numbered, "sip:+15551230201@example.test", user="bob")
    assert not forwarded(sent)
    assert [m.status for m, _ in sent if hasattr(m, "status")][-1] == 480


def test_a_users_own_name_comes_before_a_number(numbered):
    numbered.dialing = Dialing(parse_dialplan(NUMBERED), lambda u: u in ("alice", "201"), DOMAIN)
    bind(numbered.location, "alice", PHONES[1])
    bind(numbered.location, "201", PHONES[2])
    ((_, dest),) = forwarded(authed_invite(numbered, "sip:201@example.test", user="bob"))
    assert dest == PHONES[2]


def test_a_gateway_call_presents_the_users_did(numbered):
    ((inv, dest),) = forwarded(authed_invite(numbered, "sip:95551234@example.test", user="bob"))
    assert dest == GW_A
    assert inv.get("p-asserted-identity") == f"<sip:+15551230202@{DOMAIN};user=phone>"


@pytest.fixture
def master(tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    yield
    ms.close_master_store()


def test_the_master_keeps_numbers_and_pushes_them(master):
    ms.save_user("alice", "alice-password-1")
    version = dp.save_user_policy("alice", {"numbers": ALICE_NUMBERS, "caller_id": "+15551230201"})
    assert ms.config_for(version)["dialplan"]["users"]["alice"]["numbers"] == ALICE_NUMBERS
    ms.save_user("202", "a-password-of-202")
    with pytest.raises(StoreError, match="202 is the name of a user"):
        dp.save_user_policy("bob", {"numbers": ["202"]})
    with pytest.raises(StoreError, match="already alice's"):
        dp.save_user_policy("bob", {"numbers": ["201"]})


def test_the_master_refuses_a_user_named_as_someones_number(master):
    dp.save_user_policy("alice", {"numbers": ALICE_NUMBERS})
    with pytest.raises(StoreError, match="extension or DID"):
        ms.save_user("201", "a-password-of-201")
    with pytest.raises(StoreError, match="extension or DID"):
        ms.save_users([("bob", "bob-password-1"), ("+15551230201", "pw-of-did-1")], "import")
    assert ms.count_users() == 0
    ms.save_user("203", "a-password-of-203")
