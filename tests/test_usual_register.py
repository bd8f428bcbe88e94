"""The usual REGISTER read from its text (``sipcore.usual_register``) against the general path.

For every REGISTER with credentials that ``scan`` takes and
``UsualRegister.outcome`` answers, the general path (``parse_message``,
``validate``, ``stamp_via``, ``server_key``, ``RegistrarRules.check``,
``aor_of``, ``apply``) must find the same transaction, destination, user,
credentials, binding changes and 200 bytes; where ``outcome`` raises a
``SipError``, the general path must raise the same.
"""

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sipcore.errors import SipError
from sipcore.location import Binding, Location, tombstone
from sipcore.message import parse_message
from sipcore.registrar import RegistrarRules
from sipcore.transaction import server_key
from sipcore.usual_register import NotUsual, scan
from sipcore.via import stamp_via
from tests.test_quick_challenge import PHONE as CHALLENGED_PHONE
from tests.test_quick_challenge import message, mutated

RULES = RegistrarRules("example.test", ["alias.test", "127.0.0.1"], min_expires=60,
                       max_expires=7200, default_expires=3600, max_contacts=3)
NOW = 1_700_000_000.5
SOURCE = ("127.0.0.1", 5061)
NAT = ("203.0.113.9", 40000)
AOR = "sip:alice@example.test"
AUTH = ('Digest username="alice",realm="example.test",cnonce="6b8b4567",nc=00000001,'
        'qop=auth,uri="sip:example.test",nonce="abc",response="0123",algorithm=MD5')


def general(data: bytes, ip: str, port: int, location: Location):
    """What the registrar's general path makes of ``data``: ``("ok", ...)``,
    ``("error", status, reason)``, or None for what is no REGISTER with credentials."""
    try:
        req = parse_message(data)
        req.validate()
        if req.method != "REGISTER" or not req.raw_values("authorization"):
            return None
        dest = stamp_via(req, "udp", ip, port)
        key = server_key(req)
        RULES.check(req)
        aor, user = RULES.aor_of(req)
        outcome = RULES.apply(req, location, NOW, "n1", "%s:%s:%d" % dest, "TAG", aor)
        return ("ok", key, (dest[1], dest[2]), user, req.raw_values("authorization"),
                outcome.changes, outcome.encode())
    except SipError as err:
        return ("error", err.status, err.reason)


def quick(data: bytes, ip: str, port: int, location: Location):
    """What the registrar's quick path makes of ``data``, in ``general``'s
    terms; None where it leaves the request to the general path."""
    usual = scan(data, ip, port, RULES.domains)
    if usual is None or "authorization" not in usual.fields or usual.key is None:
        return None
    try:
        changes, out = usual.outcome(RULES, location, NOW, "n1", "TAG")
    except NotUsual:
        return None
    except SipError as err:
        return ("error", err.status, err.reason)
    return ("ok", usual.key, usual.dest, usual.user, [usual.fields["authorization"]], changes, out)


SIPP = [("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-17-2-0;rport"),
        ("From", "<sip:alice@example.test>;tag=1234SIPpTag0017"),
        ("To", "<sip:alice@example.test>"), ("Call-ID", "17-1234@127.0.0.1"),
        ("CSeq", "2 REGISTER"), ("Contact", "<sip:alice@127.0.0.1:5061;transport=UDP>"),
        ("Authorization", AUTH), ("Max-Forwards", "70"), ("Expires", "3600"),
        ("User-Agent", "SIPp"), ("Content-Length", "0")]
#: the phone of the quick 401's tests, with credentials
PHONE = [*CHALLENGED_PHONE[:-1], ("Authorization", AUTH), CHALLENGED_PHONE[-1]]


def binding(contact="sip:alice@10.0.0.9:5060", call_id="other-call", cseq=7, left=600.0, **kw):
    return Binding(aor=AOR, key=contact.lower(), contact=contact, expires_at=NOW + left,
                   call_id=call_id, cseq=cseq, origin="n2", updated_at=NOW - 100, **kw)


#: what the location table holds for alice before the REGISTER
STATES = {
    "empty": [],
    "other phone": [binding()],
    "same contact, earlier CSeq": [binding("sip:alice@127.0.0.1:5061;transport=UDP",
                                           "17-1234@127.0.0.1", 1)],
    "same contact, same CSeq": [binding("sip:alice@127.0.0.1:5061;transport=UDP",
                                        "17-1234@127.0.0.1", 2)],
    "same contact, other call": [binding("sip:alice@127.0.0.1:5061;transport=UDP",
                                         "earlier-call", 99)],
    "expired": [binding(left=-5.0)],
    "tombstone": [tombstone(binding(), call_id="x", cseq=9, origin="n2", updated_at=NOW - 50)],
    "full": [binding(f"sip:alice@10.0.0.{i}:5060", q=0.5, user_agent="X") for i in range(3)],
    "instance": [binding("sip:alice@10.0.0.7:5060", instance="<urn:uuid:1>", reg_id=1)],
    "clock ahead": [Binding(aor=AOR, key="sip:alice@127.0.0.1:5061;transport=udp",
                            contact="sip:alice@127.0.0.1:5061;transport=UDP",
                            expires_at=NOW + 900, call_id="earlier-call", cseq=3, origin="n2",
                            updated_at=NOW + 30)],
}


def location(state: str) -> Location:
    loc = Location()
    for b in STATES[state]:
        loc.put(b)
    return loc


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("headers, source", [(SIPP, SOURCE), (PHONE, NAT),
                                             ([(n, v.replace(";rport", "")) for n, v in PHONE], NAT)])
def test_usual_registers_are_answered_quickly_and_exactly(headers, source, state):
    data = message("REGISTER sip:example.test SIP/2.0", headers)
    answer = quick(data, *source, location(state))
    assert answer is not None
    assert answer == general(data, *source, location(state))


def test_outcome_changes_nothing():
    loc = location("other phone")
    before = {k: Binding(**{f: getattr(b, f) for f in Binding.__slots__})
              for k, b in loc.get(AOR).items()}
    usual = scan(message("REGISTER sip:example.test SIP/2.0", SIPP), *SOURCE, RULES.domains)
    changes, _ = usual.outcome(RULES, loc, NOW, "n1", "TAG")
    assert changes and loc.get(AOR) == before


@pytest.mark.parametrize("change", [
    lambda h: [(n, v) for n, v in h if n != "Contact"],                  # a query
    lambda h: [(n, "*" if n == "Contact" else "0" if n == "Expires" else v) for n, v in h],
    lambda h: [(n, v + ", <sip:b@1.2.3.4>" if n == "Contact" else v) for n, v in h],
    lambda h: h + [("Contact", "<sip:b@1.2.3.4>")],
    lambda h: [(n, "sip:alice@1.2.3.4" if n == "Contact" else v) for n, v in h],
    lambda h: h + [("Path", "<sip:edge.example.test;lr>")],
    lambda h: h + [("Authorization", AUTH)],
    lambda h: [(n, v.replace("z9hG4bK", "") if n == "Via" else v) for n, v in h],
    lambda h: [(n, "<sip:alice@EXAMPLE.test>" if n == "To" else v) for n, v in h],
    lambda h: [(n, "<sip:al%69ce@example.test>" if n == "To" else v) for n, v in h],
    lambda h: h + [("Require", "path")],
    lambda h: h + [("Proxy-Authorization", AUTH)],
])
def test_what_it_does_not_know_is_left_to_the_general_path(change):
    data = message("REGISTER sip:example.test SIP/2.0", change(SIPP))
    assert quick(data, *SOURCE, location("other phone")) is None
    assert general(data, *SOURCE, location("other phone")) is not None


# Pieces of REGISTERs for the property below: (forms the quick path takes,
# odd or invalid ones). A drawn REGISTER takes every piece from the first
# list, but for at most two pieces, which it takes from the second.
PIECES = {
    "ruri": (["sip:example.test", "sip:alias.test", "sip:127.0.0.1:5060"],
             ["sip:Example.test", "sip:other.test", "sip:alice@example.test", "sips:example.test"]),
    "via": (["SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport",
             "SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKx.y;rport", "SIP/2.0/UDP pc.test:5070;branch=z9hG4bKa",
             "SIP/2.0/UDP 127.0.0.1:5061;rport;branch=z9hG4bK-2", "SIP/2.0/UDP 10.0.0.1;rport;branch=z9hG4bK"],
            ["SIP/2.0/UDP 127.0.0.1:5061;branch=1;rport", "SIP/2.0/UDP 127.0.0.1:5061;rport",
             "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1;rport=9", "SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK1",
             "SIP/2.0/UDP PC.test;branch=z9hG4bKB", "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1;branch=z9hG4bK2",
             "SIP/2.0/UDP 127.0.0.1:99999;branch=z9hG4bK1;rport", "SIP/2.0/UDP 127.0.0.1;rport;branch=z9hG4bK1;rport",
             "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1;rport;received=1.2.3.4"]),
    "to": (["<sip:alice@example.test>", '"Alice" <sip:alice@example.test>',
            "<sips:alice@alias.test>", "<sip:alice@127.0.0.1>"],
           ["<sip:bob@example.test>", "<sip:alice@other.test>", "<sip:alice@example.test>;tag=x",
            "sip:alice@example.test", "<sip:@example.test>", "<tel:+15551234>", "<sip:a%20b@example.test>"]),
    "call-id": (["17-1234@127.0.0.1", "earlier-call", "f81d4fae"], ["", "a b"]),
    "cseq": (["2 REGISTER", "1 REGISTER", "100 REGISTER"],
             ["0 REGISTER", "2 INVITE", "4294967296 REGISTER", "02 REGISTER"]),
    "contact": (["<sip:alice@127.0.0.1:5061;transport=UDP>", "<sip:alice@10.0.0.9:5060>",
                 "<sip:alice@127.0.0.1:5061;transport=UDP>;expires=120",
                 "<sip:alice@127.0.0.1:5061;transport=UDP>;expires=0",
                 "<sip:alice@10.0.0.7:5060>;+sip.instance=\"<urn:uuid:1>\";reg-id=1",
                 "<sip:alice@10.0.0.8;ob>;+sip.instance=\"<urn:uuid:2>\"",
                 "<sip:alice@10.0.0.9:5060>;q=0.7", "<sip:ALICE@10.0.0.9:5060;Transport=udp>",
                 "<sips:alice@[2001:db8::1]:5061>"],
                ["<sip:alice@10.0.0.9:5060>;expires=10", "<sip:alice@10.0.0.9:5060>;expires=x",
                 "<sip:alice@10.0.0.9:5060>;q=2", "<sip:alice@10.0.0.9:5060>;reg-id=x",
                 "<sip:alice@10.0.0.9:5060>;+sip.instance=\"<urn:uuid:3>\";reg-id=x",
                 "<sip:alice@10.0.0.9:5060>;expires=99999999999", "<sip:alice@10.0.0.9:5060> ;q=0.1",
                 "<sip:alice@10.0.0.9:5060;x=\"a\">", "<http://x>", "<sip:alice@10.0.0.9:5060",
                 "<sip:alice@10.0.0.9:5060>;+sip.instance=\"<urn:\\\"uuid:4>\"", "<>",
                 '"Alice" <sip:alice@10.0.0.9>', "*"]),
    "expires": (["3600", "60", "0", None, "99999"],
                ["30", "x", "4294967296", "-1", "3600 ", "03600"]),
    "user-agent": (["SIPp", None, "Phone/1.2 (a, b)"], ["", "\tX", "a\x01b", "\x0bX\x0c", "X\x00"]),
    "other": ([None, ("Supported", "path, outbound"), ("Allow", "INVITE, ACK")],
              [("Path", "<sip:edge.test;lr>"), ("Require", "outbound"), ("Content-Length", "0"),
               ("v", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKz"), ("Authorization", AUTH),
               ("X-Ctl", "\x1fa\x7f"), ("X-Bare", "a\rb"), ("X-Lf", "a\nb"), ("Bad Name", "x")]),
}


@st.composite
def _register(draw):
    odd = set(draw(st.lists(st.sampled_from([None] * 8 + list(PIECES)), max_size=2)))

    def pick(piece):
        usual, unusual = PIECES[piece]
        return draw(st.sampled_from(unusual if piece in odd else usual))

    headers = [("Via", pick("via")), ("From", '"Alice" <sip:alice@example.test>;tag=f1'),
               ("To", pick("to")), ("Call-ID", pick("call-id")), ("CSeq", pick("cseq")),
               ("Contact", pick("contact")), ("Expires", pick("expires")),
               ("User-Agent", pick("user-agent")), ("Authorization", AUTH),
               ("Max-Forwards", "70"), ("Content-Length", "0"), pick("other")]
    headers = [h for h in headers if h is not None and h[1] is not None]
    lines = draw(st.permutations(headers))
    return message(f"REGISTER {pick('ruri')} SIP/2.0", lines), draw(st.sampled_from(list(STATES)))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_register(), st.sampled_from([SOURCE, NAT]))
def test_quick_path_agrees_with_the_general_path(drawn, source):
    data, state = drawn
    answer = quick(data, *source, location(state))
    event("quick" if answer is not None and answer[0] == "ok" else
          "quick error" if answer is not None else "general")
    if answer is not None:
        assert answer == general(data, *source, location(state))



@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated([message("REGISTER sip:example.test SIP/2.0", h) for h in (SIPP, PHONE)]),
       st.sampled_from(list(STATES)))
def test_damaged_registers_are_answered_as_the_general_path_answers(data, state):
    answer = quick(data, *NAT, location(state))
    event("quick" if answer is not None else "general")
    if answer is not None:
        assert answer == general(data, *NAT, location(state))
