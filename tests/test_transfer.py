"""Transfers (sipcore.transfer) in the proxy core, sans-IO with a fake clock: a phone's REFER
is challenged, its target checked against the transferor's permissions (international,
a gateway, a stranger's number refused; emergency always), and the token it gets lets the
transferee (a carrier that cannot authenticate) make the call as the transferor, once, to
that target only, until it expires; a forged token is refused."""

import pytest

from sipcore.dialing import Dialing
from sipcore.dialplan import parse_dialplan
from sipcore.errors import SipError
from sipcore.transfer import LIFETIME, TOKEN_HEADER, Transfers
from sipcore.uri import parse_name_addr
from tests.test_dialing import GW_A, PLAN, core, forwarded  # noqa: F401 (fixture)
from tests.test_proxy_core import (
    ALICE,
    DOMAIN,
    PHONES,
    WALL,
    bind,
    credentials,
    out,
    our_route,
    request,
)

CARRIER = ("udp", "10.9.0.5", 5060)
STRANGER = ("udp", "10.7.0.9", 5060)
DID = "+15550001"
TRANSFER_PLAN = {
    **PLAN,
    "trusted": [{"name": "carrier", "address": CARRIER[1]}],
    "users": {
        "alice": {"permissions": ["local"], "caller_id": DID, "numbers": ["201", DID]},
        "bob": {"numbers": ["202"]},
    },
}
CARRIER_CONTACT = "sip:+15557770000@10.9.0.5:5060"


@pytest.fixture
def xcore(core):  # noqa: F811 (the fixture imported above)
    core.dialing = Dialing(parse_dialplan(TRANSFER_PLAN), core.dialing.is_user, DOMAIN)
    return core


def statuses(sent):
    return [m.status for m, _ in sent if hasattr(m, "status")]


def refer(
    px, target, *, source=ALICE, frm=f"sip:{DID}@{DOMAIN}", auth_user="alice", now=0.0, extra=()
):
    """Alice's phone (the callee of the carrier's call to her DID) sends a REFER inside the
    dialog; answer the 407 if one comes; return what the px sent last."""

    def one(cseq, more):
        return request(
            "REFER",
            CARRIER_CONTACT,
            source=source,
            frm=frm,
            to="sip:+15557770000@carrier.example",
            to_tag="callee",
            cseq=cseq,
            branch=f"z9hG4bKr{cseq}{now}",
            extra=(
                f"Route: {our_route(px)}",
                *([f"Refer-To: {target}"] if target is not None else []),
                f"Contact: <sip:alice@{source[1]}:{source[2]}>",
                *extra,
                *more,
            ),
        )

    px.receive(one(1, ()), source, now, WALL + now)
    sent = out(px)
    if auth_user is None or statuses(sent) != [407]:
        return sent
    auth = credentials(sent[0][0], auth_user, "REFER", CARRIER_CONTACT)
    px.receive(one(2, (f"Proxy-Authorization: {auth}",)), source, now + 0.1, WALL + now)
    return out(px)


def forwarded_refer(sent):
    ((msg, dest),) = [(m, d) for m, d in sent if getattr(m, "method", "") == "REFER"]
    assert dest == CARRIER
    return msg


def token_of(refer_msg) -> str:
    headers = parse_name_addr(refer_msg.get("refer-to")).uri.headers
    return dict(h.split("=", 1) for h in headers.split("&"))[TOKEN_HEADER]


def carrier_invite(
    px,
    uri,
    token,
    *,
    source=CARRIER,
    call_id="xfer-1",
    now=1.0,
    frm="sip:+15557770000@carrier.example",
):
    px.receive(
        request(
            "INVITE",
            uri,
            source=source,
            frm=frm,
            to=uri,
            call_id=call_id,
            branch=f"z9hG4bKi{call_id}{now}",
            extra=(f"{TOKEN_HEADER}: {token}", "P-Asserted-Identity: <tel:+15557770000>"),
        ),
        source,
        now,
        WALL + now,
    )
    return out(px)


def test_a_refer_from_a_phone_is_challenged_then_forwarded_with_a_token(xcore):
    first = refer(xcore, f"<sip:95551234@{DOMAIN}>", auth_user=None)
    assert statuses(first) == [407] and not forwarded(first)
    fwd = forwarded_refer(
        refer(xcore, f"<sip:95551234@{DOMAIN}>", extra=("Referred-By: <sip:ceo@example.test>",))
    )
    assert fwd.get_all("referred-by") == [f"<sip:alice@{DOMAIN}>"]  # the phone's claim replaced
    assert fwd.get("route") is None and fwd.get("proxy-authorization") is None
    assert token_of(fwd)


def test_a_carrier_makes_the_transferred_call_as_the_transferor_once(xcore):
    token = token_of(forwarded_refer(refer(xcore, f"<sip:95551234@{DOMAIN}>")))
    ((inv, dest),) = forwarded(carrier_invite(xcore, f"sip:95551234@{DOMAIN}", token))
    assert dest == GW_A and inv.uri == "sip:5551234@127.0.0.21:5080"
    assert inv.get(TOKEN_HEADER) is None  # stripped before the gateway
    assert inv.get_all("p-asserted-identity") == [f"<sip:{DID}@{DOMAIN};user=phone>"]
    assert inv.get_all("referred-by") == [f"<sip:alice@{DOMAIN}>"]
    # the same token again (a replay, even from the carrier) is refused
    again = carrier_invite(xcore, f"sip:95551234@{DOMAIN}", token, call_id="xfer-2")
    assert statuses(again)[-1] == 403 and not forwarded(again)
    assert xcore.transfers.stats["replayed"] == 1


def test_a_transfer_to_a_colleague_from_a_stranger_address(xcore):
    # blind transfer to bob's extension; the transferee is not even a trusted peer
    bind(xcore.location, "bob", PHONES[1])
    token = token_of(forwarded_refer(refer(xcore, f"<sip:202@{DOMAIN}>")))
    sent = carrier_invite(
        xcore, f"sip:202@{DOMAIN}", token, source=STRANGER, frm=f"sip:+15557770000@{DOMAIN}"
    )  # would be challenged without
    ((inv, dest),) = forwarded(sent)
    assert dest == PHONES[1] and inv.get(TOKEN_HEADER) is None
    assert inv.get("p-asserted-identity") is None  # a stranger's claim is not kept


@pytest.mark.parametrize(
    "target, reason",
    [
        (f"<sip:9011441234567@{DOMAIN}>", "Needs Permission international"),
        ("<sip:5551234@127.0.0.21:5080>", "Gateways Only Through The Dial Plan"),
        (f"<sip:5551234@{DOMAIN}>", "No Route For Number"),
        ("<tel:+441234567>", "Target Must Be A SIP URI"),
    ],
)
def test_a_transfer_the_transferor_could_not_call_is_refused(xcore, target, reason):
    sent = refer(xcore, target)
    resp = sent[-1][0]
    assert resp.status == 403 and reason in resp.reason, resp.reason
    assert not [m for m, _ in sent if getattr(m, "method", "") == "REFER"]


def test_an_emergency_target_is_never_refused(xcore):
    fwd = forwarded_refer(refer(xcore, f"<sip:911@{DOMAIN}>"))
    assert TOKEN_HEADER not in fwd.get("refer-to")


def test_a_refer_from_the_carrier_cannot_send_our_phone_to_a_number(xcore):
    # the carrier (trusted, not a transferor of ours) asks alice's phone to dial out
    sent = refer(
        xcore, f"<sip:95551234@{DOMAIN}>", source=CARRIER, frm="sip:+15557770000@carrier.example"
    )
    assert statuses(sent) == [403] and "Only A User" in sent[0][0].reason
    # to one of our users it may: no token, nothing claimed for it
    fwd = [
        m
        for m, _ in refer(
            xcore,
            f"<sip:202@{DOMAIN}>",
            source=CARRIER,
            now=1.0,
            frm="sip:+15557770000@carrier.example",
        )
        if getattr(m, "method", "") == "REFER"
    ]
    assert fwd and TOKEN_HEADER not in fwd[0].get("refer-to")


def test_credentials_of_another_user_cannot_transfer_as_alice(xcore):
    sent = refer(xcore, f"<sip:95551234@{DOMAIN}>", auth_user="bob")
    assert statuses(sent) == [403]


@pytest.mark.parametrize(
    "target, extra",
    [
        (None, ()),
        ("<sip:201@example.test>", ("Refer-To: <sip:202@example.test>",)),
        ("<junk", ()),
        ("<sip:201@example.test", ()),
    ],
)
def test_a_refer_without_exactly_one_good_refer_to_gets_400(xcore, target, extra):
    sent = refer(xcore, target, extra=extra)
    assert statuses(sent)[-1] == 400
    assert not [m for m, _ in sent if getattr(m, "method", "") == "REFER"]


def test_forged_expired_retargeted_and_oversized_tokens_are_refused(xcore):
    bind(xcore.location, "bob", PHONES[1])
    token = token_of(forwarded_refer(refer(xcore, f"<sip:95551234@{DOMAIN}>")))
    expiry, who, mac = token.split(".")
    forged = [
        f"{expiry}.{who}.{'A' * len(mac)}",
        f"{int(expiry) + 3600}.{who}.{mac}",  # expiry pushed back
        f"{expiry}.Ym9i.{mac}",  # "bob" as transferor
        "x" * 5000,
        "not-a-token",
        "",
    ]
    for k, bad in enumerate(forged):
        sent = carrier_invite(xcore, f"sip:95551234@{DOMAIN}", bad, call_id=f"f{k}")
        assert statuses(sent)[-1] == 403 and not forwarded(sent), bad
    # retargeted: the token was for 95551234
    sent = carrier_invite(xcore, f"sip:95559999@{DOMAIN}", token, call_id="r")
    assert statuses(sent)[-1] == 403 and not forwarded(sent)
    # another domain, or a request other than INVITE, carrying it
    sent = carrier_invite(xcore, "sip:95551234@other.test", token, call_id="o")
    assert statuses(sent)[-1] == 403 and not forwarded(sent)
    # expired
    sent = carrier_invite(xcore, f"sip:95551234@{DOMAIN}", token, call_id="e", now=LIFETIME + 2.0)
    assert statuses(sent)[-1] == 403 and "Expired" in sent[-1][0].reason
    assert xcore.transfers.stats["forged"] >= len(forged) + 2


def test_tokens_unit_fake_clock():
    t = Transfers(b"s" * 32, lifetime=60, max_seen=2)
    other = Transfers(b"t" * 32)
    tok = t.token("alice", "202", WALL)
    with pytest.raises(SipError, match="Bad Token"):
        other.verify(tok, "202", WALL)  # another cluster's secret
    with pytest.raises(SipError, match="Bad Token"):
        t.verify(tok, "203", WALL)
    assert t.verify(tok, "202", WALL + 60) == "alice"  # valid to the second
    with pytest.raises(SipError, match="Already Used"):
        t.verify(tok, "202", WALL + 1)
    late = t.token("alice", "202", WALL)
    with pytest.raises(SipError, match="Expired"):
        t.verify(late, "202", WALL + 61)
    # the seen-set is bounded: the oldest is forgotten first
    toks = [t.token("alice", str(n), WALL) for n in range(3)]
    for n, tok in enumerate(toks):
        t.verify(tok, str(n), WALL)
    assert len(t._seen) <= 2
    # another node of the cluster (same secret) takes it; its seen-set is its own, so a
    # token used on one node is accepted once more on another (the documented limit)
    node_a, node_b = Transfers(b"c" * 32), Transfers(b"c" * 32)
    shared = node_a.token("alice", "202", WALL)
    assert node_b.verify(shared, "202", WALL) == "alice"
    assert node_a.verify(shared, "202", WALL) == "alice"
    with pytest.raises(SipError, match="Already Used"):
        node_b.verify(shared, "202", WALL)
    # names with any characters travel in the token
    odd = t.token("a.b+c@d", "202", WALL + 5)
    assert t.verify(odd, "202", WALL + 5) == "a.b+c@d"


def test_replaces_from_a_trusted_carrier_reaches_the_user(xcore):
    # attended transfer: the transferee's INVITE with Replaces and the token
    bind(xcore.location, "bob", PHONES[1])
    target = f"<sip:202@{DOMAIN}?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2>"
    fwd = forwarded_refer(refer(xcore, target))
    uri = parse_name_addr(fwd.get("refer-to")).uri
    assert uri.headers.startswith("Replaces=abc%40h") and TOKEN_HEADER in uri.headers
    xcore.receive(
        request(
            "INVITE",
            f"sip:202@{DOMAIN}",
            source=CARRIER,
            call_id="rep",
            frm="sip:+15557770000@carrier.example",
            branch="z9hG4bKrep",
            extra=(f"{TOKEN_HEADER}: {token_of(fwd)}", "Replaces: abc@h;to-tag=1;from-tag=2"),
        ),
        CARRIER,
        1.0,
        WALL + 1,
    )
    ((inv, dest),) = forwarded(out(xcore))
    assert dest == PHONES[1] and inv.get("replaces") == "abc@h;to-tag=1;from-tag=2"


def test_a_stateless_challenge_is_not_sent_for_a_token(xcore):
    # a transferee whose From names our domain is not challenged: its token is checked
    sent = carrier_invite(
        xcore, f"sip:202@{DOMAIN}", "bogus", source=STRANGER, frm=f"sip:alice@{DOMAIN}"
    )
    assert statuses(sent) == [403]
