"""The usual REGISTER's recognition (``sipcore.usual_register``) against the parser it shortcuts.

The one REGISTER path (``sipcore.register.RegisterPath``) answers a
REGISTER with credentials from its text when ``scan`` recognises it, and
from ``parse_message`` otherwise, or with ``fast=False``. For every
REGISTER the recognition takes and the path answers without going back to
the parser, the parser must give the same answer: status, destination,
bytes, binding changes.
"""

import re

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sipcore.digest import Authenticator, expected_response, ha1, parse_credentials
from sipcore.errors import SipError
from sipcore.location import Binding, Location, Sequencer, tombstone
from sipcore.message import Request, parse_message
from sipcore.register import RegisterPath
from sipcore.registrar import RegistrarRules
from sipcore.via import stamp_via
from tests.test_register import PHONE as CHALLENGED_PHONE
from tests.test_register import message, mutated

RULES = RegistrarRules(
    "example.test",
    ["alias.test", "127.0.0.1"],
    min_expires=60,
    max_expires=7200,
    default_expires=3600,
    max_contacts=3,
)
NOW = 1_700_000_000.5
SOURCE = ("127.0.0.1", 5061)
NAT = ("203.0.113.9", 40000)
AOR = "sip:alice@example.test"
SECRET = b"k" * 32
USERS = {"alice": {"MD5": ha1("alice", "example.test", "wonderland")}}


def authenticator() -> Authenticator:
    return Authenticator("example.test", SECRET, USERS.get, algorithms=("MD5",))


def _credentials() -> str:
    """Valid credentials of alice for ``sip:example.test``, for a nonce made at ``NOW``."""
    nonce = re.search(r'nonce="([^"]*)"', authenticator().challenge(NOW)[0]).group(1)
    value = (
        'Digest username="alice",realm="example.test",cnonce="6b8b4567",nc=00000001,'
        f'qop=auth,uri="sip:example.test",nonce="{nonce}",response="RESPONSE",algorithm=MD5'
    )
    response = expected_response(parse_credentials(value), "REGISTER", USERS["alice"]["MD5"])
    return value.replace("RESPONSE", response)


AUTH = _credentials()


def path(fast: bool, state: str) -> RegisterPath:
    """A registrar's path over a fresh authenticator and the location table of ``state``."""
    return RegisterPath(
        RULES,
        authenticator(),
        lambda: "TAG",
        location(state),
        "n1",
        Sequencer(1),
        fast=fast,
        strict=True,
    )


def _nonceless(data: bytes) -> bytes:
    """``data`` with the nonces of its challenges written as ``N`` (each is fresh)."""
    return re.sub(rb'nonce="[^"]*"', b'nonce="N"', data)


def general(data: bytes, ip: str, port: int, state: str):
    """The path's answer from the parser: ``(status, dest, bytes, changes)``,
    ``("parse", status)`` for what the parser refuses, or None for no REGISTER."""
    try:
        req = parse_message(data)
        req.validate()
        if not isinstance(req, Request) or req.method != "REGISTER":
            return None
        dest = stamp_via(req, "udp", ip, port)
    except SipError as err:
        return ("parse", err.status)
    answer = path(False, state).answer(req, dest, NOW, 0.0)
    return answer and (answer.status, answer.dest, _nonceless(answer.data), answer.changes)


def quick(data: bytes, ip: str, port: int, state: str, declined: list | None = None):
    """The path's answer from the recognition, in ``general``'s terms; None
    where the recognition leaves the datagram to the parser. ``declined``
    gets whether the recognised request went back to the general path."""
    p = path(True, state)
    usual = p.recognise(data, ip, port)
    if usual is None:
        return None
    answer = p.answer(usual, None, NOW, 0.0)
    if declined is not None:
        declined.append(p.stats["usual_declined"] > 0)
    return answer and (answer.status, answer.dest, _nonceless(answer.data), answer.changes)


SIPP = [
    ("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-17-2-0;rport"),
    ("From", "<sip:alice@example.test>;tag=1234SIPpTag0017"),
    ("To", "<sip:alice@example.test>"),
    ("Call-ID", "17-1234@127.0.0.1"),
    ("CSeq", "2 REGISTER"),
    ("Contact", "<sip:alice@127.0.0.1:5061;transport=UDP>"),
    ("Authorization", AUTH),
    ("Max-Forwards", "70"),
    ("Expires", "3600"),
    ("User-Agent", "SIPp"),
    ("Content-Length", "0"),
]
#: the phone of the quick 401's tests, with credentials
PHONE = [*CHALLENGED_PHONE[:-1], ("Authorization", AUTH), CHALLENGED_PHONE[-1]]


def binding(contact="sip:alice@10.0.0.9:5060", call_id="other-call", cseq=7, left=600.0, **kw):
    return Binding(
        aor=AOR,
        key=contact.lower(),
        contact=contact,
        expires_at=NOW + left,
        call_id=call_id,
        cseq=cseq,
        origin="n2",
        updated_at=NOW - 100,
        **kw,
    )


#: what the location table holds for alice before the REGISTER
STATES = {
    "empty": [],
    "other phone": [binding()],
    "same contact, earlier CSeq": [
        binding("sip:alice@127.0.0.1:5061;transport=UDP", "17-1234@127.0.0.1", 1)
    ],
    "same contact, same CSeq": [
        binding("sip:alice@127.0.0.1:5061;transport=UDP", "17-1234@127.0.0.1", 2)
    ],
    "same contact, other call": [
        binding("sip:alice@127.0.0.1:5061;transport=UDP", "earlier-call", 99)
    ],
    "expired": [binding(left=-5.0)],
    "tombstone": [tombstone(binding(), call_id="x", cseq=9, origin="n2", updated_at=NOW - 50)],
    "full": [binding(f"sip:alice@10.0.0.{i}:5060", q=0.5, user_agent="X") for i in range(3)],
    "instance": [binding("sip:alice@10.0.0.7:5060", instance="<urn:uuid:1>", reg_id=1)],
    "clock ahead": [
        Binding(
            aor=AOR,
            key="sip:alice@127.0.0.1:5061;transport=udp",
            contact="sip:alice@127.0.0.1:5061;transport=UDP",
            expires_at=NOW + 900,
            call_id="earlier-call",
            cseq=3,
            origin="n2",
            updated_at=NOW + 30,
        )
    ],
}


def location(state: str) -> Location:
    """The location table holding ``STATES[state]``."""
    loc = Location()
    for b in STATES[state]:
        loc.put(b)
    return loc


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize(
    "headers, source",
    [(SIPP, SOURCE), (PHONE, NAT), ([(n, v.replace(";rport", "")) for n, v in PHONE], NAT)],
)
def test_usual_registers_are_answered_quickly_and_exactly(headers, source, state):
    data = message("REGISTER sip:example.test SIP/2.0", headers)
    declined: list[bool] = []
    answer = quick(data, *source, state, declined)
    assert answer is not None
    assert answer == general(data, *source, state)
    # Only an error (a CSeq out of order, too many contacts) is written by the general path.
    assert declined == [answer[0] != 200]


@pytest.mark.parametrize(
    "supported, required",
    [("path, outbound", True), ("outbound", True), ("path", False), (None, False)],
)
def test_an_outbound_flow_gets_require_outbound_from_its_text(supported, required):
    """The phone registers an RFC 5626 flow (+sip.instance, reg-id): its 200 says
    ``Require: outbound`` when it supports outbound, from the text as from the parser."""
    headers = [(n, v) for n, v in PHONE if n != "Supported"]
    if supported is not None:
        headers.insert(-1, ("Supported", supported))
    data = message("REGISTER sip:example.test SIP/2.0", headers)
    declined: list[bool] = []
    answer = quick(data, *NAT, "empty", declined)
    assert answer is not None and answer == general(data, *NAT, "empty")
    assert declined == [False]
    assert answer[0] == 200 and (b"\r\nRequire: outbound\r\n" in answer[2]) == required


def test_a_usual_register_with_credentials_is_registered_from_its_text():
    p = path(True, "other phone")
    usual = p.recognise(message("REGISTER sip:example.test SIP/2.0", SIPP), *SOURCE)
    answer = p.answer(usual, None, NOW, 0.0)
    assert answer.status == 200 and answer.data.startswith(b"SIP/2.0 200 OK\r\n")
    assert [b.contact for b in answer.changes] == ["sip:alice@127.0.0.1:5061;transport=UDP"]
    assert [(b.epoch, b.seq) for b in answer.changes] == [(1, 1)]
    assert p.stats["usual_declined"] == p.stats["usual_fallback"] == 0
    # Nothing is put in the table: the caller commits first.
    assert len(p.location.get(AOR)) == 1
    # A retransmission while it is being committed is absorbed.
    again = p.recognise(message("REGISTER sip:example.test SIP/2.0", SIPP), *SOURCE)
    assert p.answer(again, None, NOW, 0.0) is None


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("branch, second_answered", [("z9hG4bK", True), ("z9hG4bK-17-2-0", False)])
def test_a_bare_magic_cookie_is_no_transaction_key_on_either_path(fast, branch, second_answered):
    # Two REGISTERs differing in Call-ID, with the same top Via: with a unique branch
    # the second is a retransmission (absorbed); with the bare cookie, a new request.
    p = path(fast, "empty")
    answers = []
    for call_id in ("first-call", "second-call"):
        headers = [
            (
                n,
                v.replace("z9hG4bK-17-2-0", branch)
                if n == "Via"
                else call_id
                if n == "Call-ID"
                else v,
            )
            for n, v in SIPP
        ]
        data = message("REGISTER sip:example.test SIP/2.0", headers)
        if fast:
            usual = p.recognise(data, *SOURCE)
            assert usual is not None and (usual.key is None) == second_answered
            answers.append(p.answer(usual, None, NOW, 0.0))
        else:
            req = parse_message(data)
            answers.append(p.answer(req, stamp_via(req, "udp", *SOURCE), NOW, 0.0))
    assert answers[0].status == 200
    assert (answers[1] is not None) == second_answered


def test_a_wrong_password_gets_the_general_401():
    data = message(
        "REGISTER sip:example.test SIP/2.0",
        [
            (n, v.replace('response="', 'response="0') if n == "Authorization" else v)
            for n, v in SIPP
        ],
    )
    p = path(True, "empty")
    answer = p.answer(p.recognise(data, *SOURCE), None, NOW, 0.0)
    assert answer.status == 401 and p.stats["usual_declined"] == 1
    assert b"WWW-Authenticate: Digest" in answer.data and answer.changes == []


def test_a_store_failure_on_the_fast_path_is_counted_logged_and_raised_under_strict(caplog):
    def store_away(_user):
        raise OSError("store away")

    data = message("REGISTER sip:example.test SIP/2.0", SIPP)
    for strict in (True, False):
        p = RegisterPath(
            RULES,
            Authenticator("example.test", SECRET, store_away, algorithms=("MD5",)),
            lambda: "TAG",
            location("empty"),
            "n1",
            Sequencer(1),
            strict=strict,
        )
        usual = p.recognise(data, *SOURCE)
        if strict:
            with pytest.raises(OSError):
                p.answer(usual, None, NOW, 0.0)
        else:
            # The general path meets the same failure: the request gets a 500.
            assert p.answer(usual, None, NOW, 0.0).status == 500
        assert p.stats["usual_fallback"] == 1
    assert "the general path answers it" in caplog.text


@pytest.mark.parametrize(
    "change",
    [
        lambda h: [(n, v) for n, v in h if n != "Contact"],  # a query
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
        lambda h: [(n, "30" if n == "Expires" else v) for n, v in h],  # 423
    ],
)
def test_what_it_does_not_know_is_left_to_the_general_path(change):
    data = message("REGISTER sip:example.test SIP/2.0", change(SIPP))
    declined: list[bool] = []
    answer = quick(data, *SOURCE, "other phone", declined)
    assert declined in ([], [True])
    expected = general(data, *SOURCE, "other phone")
    assert expected is not None and answer in (None, expected)


# Pieces of REGISTERs for the property below: (forms the quick path takes,
# odd or invalid ones). A drawn REGISTER takes every piece from the first
# list, but for at most two pieces, which it takes from the second.
PIECES = {
    "ruri": (
        ["sip:example.test", "sip:alias.test", "sip:127.0.0.1:5060"],
        ["sip:Example.test", "sip:other.test", "sip:alice@example.test", "sips:example.test"],
    ),
    "via": (
        [
            "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport",
            "SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKx.y;rport",
            "SIP/2.0/UDP pc.test:5070;branch=z9hG4bKa",
            "SIP/2.0/UDP 127.0.0.1:5061;rport;branch=z9hG4bK-2",
        ],
        [
            "SIP/2.0/UDP 127.0.0.1:5061;branch=1;rport",
            "SIP/2.0/UDP 10.0.0.1;rport;branch=z9hG4bK",
            "SIP/2.0/UDP 127.0.0.1:5061;rport",
            "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1;rport=9",
            "SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK1",
            "SIP/2.0/UDP PC.test;branch=z9hG4bKB",
            "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1;branch=z9hG4bK2",
            "SIP/2.0/UDP 127.0.0.1:99999;branch=z9hG4bK1;rport",
            "SIP/2.0/UDP 127.0.0.1;rport;branch=z9hG4bK1;rport",
            "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1;rport;received=1.2.3.4",
        ],
    ),
    "to": (
        [
            "<sip:alice@example.test>",
            '"Alice" <sip:alice@example.test>',
            "<sips:alice@alias.test>",
            "<sip:alice@127.0.0.1>",
        ],
        [
            "<sip:bob@example.test>",
            "<sip:alice@other.test>",
            "<sip:alice@example.test>;tag=x",
            "sip:alice@example.test",
            "<sip:@example.test>",
            "<tel:+15551234>",
            "<sip:a%20b@example.test>",
        ],
    ),
    "call-id": (["17-1234@127.0.0.1", "earlier-call", "f81d4fae"], ["", "a b"]),
    "cseq": (
        ["2 REGISTER", "1 REGISTER", "100 REGISTER"],
        ["0 REGISTER", "2 INVITE", "4294967296 REGISTER", "02 REGISTER"],
    ),
    "contact": (
        [
            "<sip:alice@127.0.0.1:5061;transport=UDP>",
            "<sip:alice@10.0.0.9:5060>",
            "<sip:alice@127.0.0.1:5061;transport=UDP>;expires=120",
            "<sip:alice@127.0.0.1:5061;transport=UDP>;expires=0",
            '<sip:alice@10.0.0.7:5060>;+sip.instance="<urn:uuid:1>";reg-id=1',
            '<sip:alice@10.0.0.8;ob>;+sip.instance="<urn:uuid:2>"',
            "<sip:alice@10.0.0.9:5060>;q=0.7",
            "<sip:ALICE@10.0.0.9:5060;Transport=udp>",
            "<sips:alice@[2001:db8::1]:5061>",
        ],
        [
            "<sip:alice@10.0.0.9:5060>;expires=10",
            "<sip:alice@10.0.0.9:5060>;expires=x",
            "<sip:alice@10.0.0.9:5060>;q=2",
            "<sip:alice@10.0.0.9:5060>;reg-id=x",
            '<sip:alice@10.0.0.9:5060>;+sip.instance="<urn:uuid:3>";reg-id=x',
            "<sip:alice@10.0.0.9:5060>;expires=99999999999",
            "<sip:alice@10.0.0.9:5060> ;q=0.1",
            '<sip:alice@10.0.0.9:5060;x="a">',
            "<http://x>",
            "<sip:alice@10.0.0.9:5060",
            '<sip:alice@10.0.0.9:5060>;+sip.instance="<urn:\\"uuid:4>"',
            "<>",
            '"Alice" <sip:alice@10.0.0.9>',
            "*",
        ],
    ),
    "expires": (
        ["3600", "60", "0", None, "99999"],
        ["30", "x", "4294967296", "-1", "3600 ", "03600"],
    ),
    "user-agent": (["SIPp", None, "Phone/1.2 (a, b)"], ["", "\tX", "a\x01b", "\x0bX\x0c", "X\x00"]),
    "other": (
        [None, ("Supported", "path, outbound"), ("Allow", "INVITE, ACK")],
        [
            ("Path", "<sip:edge.test;lr>"),
            ("Require", "outbound"),
            ("Content-Length", "0"),
            ("v", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKz"),
            ("Authorization", AUTH),
            ("X-Ctl", "\x1fa\x7f"),
            ("X-Bare", "a\rb"),
            ("X-Lf", "a\nb"),
            ("Bad Name", "x"),
        ],
    ),
}


@st.composite
def _register(draw):
    odd = set(draw(st.lists(st.sampled_from([None] * 8 + list(PIECES)), max_size=2)))

    def pick(piece):
        usual, unusual = PIECES[piece]
        return draw(st.sampled_from(unusual if piece in odd else usual))

    headers = [
        ("Via", pick("via")),
        ("From", '"Alice" <sip:alice@example.test>;tag=f1'),
        ("To", pick("to")),
        ("Call-ID", pick("call-id")),
        ("CSeq", pick("cseq")),
        ("Contact", pick("contact")),
        ("Expires", pick("expires")),
        ("User-Agent", pick("user-agent")),
        ("Authorization", AUTH),
        ("Max-Forwards", "70"),
        ("Content-Length", "0"),
        pick("other"),
    ]
    headers = [h for h in headers if h is not None and h[1] is not None]
    lines = draw(st.permutations(headers))
    return message(f"REGISTER {pick('ruri')} SIP/2.0", lines), draw(st.sampled_from(list(STATES)))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_register(), st.sampled_from([SOURCE, NAT]))
def test_quick_path_agrees_with_the_general_path(drawn, source):
    data, state = drawn
    declined: list[bool] = []
    answer = quick(data, *source, state, declined)
    event("quick" if declined == [False] else "declined" if declined else "general")
    if answer is not None:
        assert answer == general(data, *source, state)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mutated([message("REGISTER sip:example.test SIP/2.0", h) for h in (SIPP, PHONE)]),
    st.sampled_from(list(STATES)),
)
def test_damaged_registers_are_answered_as_the_general_path_answers(data, state):
    answer = quick(data, *NAT, state)
    event("quick" if answer is not None else "general")
    if answer is not None:
        assert answer == general(data, *NAT, state)
