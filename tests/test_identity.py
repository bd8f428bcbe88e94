"""Caller identity (sipcore.identity in the proxy core, sans-IO; RFC 3325): identities a
phone or a stranger claims are removed, an authenticated caller's is asserted from the
account, a trusted carrier's is kept, ``Privacy: id`` is honoured toward phones and other
domains, and an emergency call always carries its callback number."""

import pytest

from sipcore.dialing import Dialing
from sipcore.dialplan import parse_dialplan
from sipcore.identity import wants_privacy
from sipcore.message import parse_message
from tests.test_dialing import GW_A, PSAP, authed_invite, core, forwarded  # noqa: F401
from tests.test_numbers import NUMBERED
from tests.test_proxy_core import ALICE, DOMAIN, PHONES, WALL, bind, our_route, out, request
from tests.test_trusted import CARRIER

FORGED = (
    "P-Asserted-Identity: <sip:+15559999999@example.test;user=phone>",
    "P-Preferred-Identity: <sip:ceo@example.test>",
)
BOB = f"<sip:+15551230202@{DOMAIN};user=phone>"
ALICE_ID = f"<sip:+15551230201@{DOMAIN};user=phone>"


@pytest.fixture
def numbered(core):  # noqa: F811 (the fixture imported above)
    """The core with users' numbers, caller IDs and a trusted carrier."""
    core.dialing = Dialing(parse_dialplan(NUMBERED), core.dialing.is_user, DOMAIN)
    return core


def test_a_forged_identity_from_a_phone_is_replaced_by_the_accounts(numbered):
    bind(numbered.location, "alice", PHONES[1])
    ((inv, _),) = forwarded(
        authed_invite(numbered, "sip:alice@example.test", user="bob", extra=FORGED)
    )
    assert inv.get_all("p-asserted-identity") == [BOB]
    assert inv.get("p-preferred-identity") is None


def test_a_strangers_claimed_identity_is_removed(numbered):
    bind(numbered.location, "alice", PHONES[1])
    numbered.receive(
        request("INVITE", "sip:201@example.test", frm="sip:eve@other.test", extra=FORGED),
        ALICE,
        0.0,
        WALL,
    )
    ((inv, _),) = forwarded(out(numbered))
    assert inv.get("p-asserted-identity") is None and inv.get("p-preferred-identity") is None


def test_a_trusted_carriers_identity_is_kept_unless_it_asks_for_privacy(numbered):
    bind(numbered.location, "alice", PHONES[1])
    pai = "P-Asserted-Identity: <sip:+15557770000@carrier.example;user=phone>"
    numbered.receive(
        request(
            "INVITE",
            "sip:+15551230201@example.test",
            source=CARRIER,
            frm="sip:+15557770000@carrier.example",
            extra=(pai,),
        ),
        CARRIER,
        0.0,
        WALL,
    )
    ((inv, _),) = forwarded(out(numbered))
    assert inv.get("p-asserted-identity") == "<sip:+15557770000@carrier.example;user=phone>"
    numbered.receive(
        request(
            "INVITE",
            "sip:+15551230201@example.test",
            source=CARRIER,
            frm="sip:anonymous@anonymous.invalid",
            call_id="c2",
            branch="z9hG4bKc2",
            extra=(pai, "Privacy: id"),
        ),
        CARRIER,
        0.0,
        WALL,
    )
    ((inv, _),) = forwarded(out(numbered))
    assert inv.get("p-asserted-identity") is None


def test_privacy_withholds_from_a_phone_but_a_gateway_gets_it(numbered):
    bind(numbered.location, "alice", PHONES[1])
    ((inv, _),) = forwarded(
        authed_invite(numbered, "sip:201@example.test", user="bob", extra=("Privacy: id",))
    )
    assert inv.get("p-asserted-identity") is None
    ((inv, dest),) = forwarded(
        authed_invite(
            numbered,
            "sip:95551234@example.test",
            user="bob",
            call_id="c2",
            extra=("Privacy: id", *FORGED),
        )
    )
    assert dest == GW_A
    assert inv.get_all("p-asserted-identity") == [BOB]
    assert inv.get("privacy") == "id"


def test_an_emergency_call_keeps_its_callback_number_whatever_privacy_says(numbered):
    numbered.receive(
        request("INVITE", "sip:911@example.test", extra=("Privacy: id", *FORGED)), ALICE, 0.0, WALL
    )
    ((inv, dest),) = forwarded(out(numbered))
    assert dest == PSAP
    assert inv.get_all("p-asserted-identity") == [f"<sip:+15550911@{DOMAIN};user=phone>"]


def test_an_authenticated_call_between_users_asserts_the_callers_account(numbered):
    bind(numbered.location, "bob", PHONES[0])
    ((inv, _),) = forwarded(authed_invite(numbered, "sip:202@example.test", user="alice"))
    assert inv.get_all("p-asserted-identity") == [ALICE_ID]


@pytest.mark.parametrize(
    "value, wanted",
    [
        ("id", True),
        ("ID", True),
        ("header; id", True),
        ("id;critical", True),
        ("none", False),
        ("user", False),
        ("idx", False),
    ],
)
def test_privacy_values(value, wanted):
    req = parse_message(request("INVITE", extra=(f"Privacy: {value}",)).encode())
    assert wants_privacy(req) is wanted


def test_claimed_identities_inside_a_dialog_are_removed_unless_trusted(numbered):
    for source, kept in ((ALICE, False), (CARRIER, True)):
        for method in ("BYE", "INVITE"):  # stateless and stateful in-dialog forwarding
            numbered.receive(
                request(
                    method,
                    uri="sip:bob@10.0.0.2:5062",
                    to_tag="t",
                    source=source,
                    branch=f"z9hG4bK{method}{kept}",
                    extra=(f"Route: {our_route(numbered)}", *FORGED),
                ),
                source,
                0.0,
                WALL,
            )
            ((fwd, _),) = [(m, d) for m, d in out(numbered) if getattr(m, "method", "") == method]
            assert (fwd.get("p-asserted-identity") is not None) is kept, (method, source)
            assert fwd.get("p-preferred-identity") is None
