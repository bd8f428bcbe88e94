"""The one REGISTER path's challenge (``sipcore.register``), with and without the fast recognition.

``RegisterPath.challenge`` is what the challenge front asks of every
datagram; ``RegisterPath.answer`` what the registrar asks. Both write
their 401 with ``unauthorized``. The recognition of the usual REGISTER
(``fast=True``) must give the very bytes, to the same destination, that
the parser's request gets (``fast=False``), or leave the datagram to it.
"""

import re

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sipcore.digest import Authenticator
from sipcore.message import parse_message
from sipcore.register import RegisterPath
from sipcore.registrar import RegistrarRules
from sipcore.via import stamp_via

RULES = RegistrarRules("example.test", ["alias.test", "127.0.0.1"])
SOURCE = ("127.0.0.1", 5061)
NOW = 1_700_000_000.5


def path(fast: bool) -> RegisterPath:
    """The challenge front's path: an authenticator that knows no user."""
    auth = Authenticator(
        "example.test", b"k" * 32, lambda _user: None, algorithms=("MD5", "SHA-256")
    )
    return RegisterPath(RULES, auth, lambda: "TAG", fast=fast, strict=True)


def _same_nonce(answer):
    """``answer`` with its nonces written as ``N`` (each authenticator makes its own)."""
    return answer and (re.sub(rb'nonce="[^"]*"', b'nonce="N"', answer[0]), answer[1])


def general(data: bytes, ip: str, port: int):
    """The path's 401 from the parser: ``(bytes, (host, port))``, or None."""
    return _same_nonce(path(False).challenge(data, ip, port, NOW))


def quick(data: bytes, ip: str, port: int):
    """The path's 401 from the recognition, or None where it leaves the datagram to the parser."""
    p = path(True)
    if p.recognise(data, ip, port) is None:
        return None
    return _same_nonce(p.challenge(data, ip, port, NOW))


def message(start: str, headers: list[tuple[str, str]], tail: str = "") -> bytes:
    return (start + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n" + tail).encode(
        "utf-8", "surrogateescape"
    )


SIPP = [
    ("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-17-1-0;rport"),
    ("From", "<sip:user17@example.test>;tag=1234SIPpTag0017"),
    ("To", "<sip:user17@example.test>"),
    ("Call-ID", "17-1234@127.0.0.1"),
    ("CSeq", "1 REGISTER"),
    ("Contact", "<sip:user17@127.0.0.1:5061;transport=UDP>"),
    ("Max-Forwards", "70"),
    ("Expires", "3600"),
    ("User-Agent", "SIPp"),
    ("Content-Length", "0"),
]
PHONE = [
    ("Via", "SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK1e2f3a;rport"),
    ("Max-Forwards", "70"),
    (
        "Contact",
        "<sip:alice@192.168.1.20:5060;ob>;reg-id=1;"
        '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000000000001>"',
    ),
    ("To", '"Alice" <sip:alice@example.test>'),
    ("From", '"Alice" <sip:alice@example.test>;tag=a8f1c2'),
    ("Call-ID", "f81d4fae7dec11d0a76500a0c91e6bf6"),
    ("CSeq", "20 REGISTER"),
    ("Expires", "300"),
    ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"),
    ("Supported", "path, outbound"),
    ("User-Agent", "Phone 1.2"),
    ("Content-Length", "0"),
]


@pytest.mark.parametrize(
    "headers, source",
    [
        (SIPP, SOURCE),
        (PHONE, ("203.0.113.9", 40000)),  # behind a NAT: received and rport
        ([(n, v.replace(";rport", "")) for n, v in PHONE], ("203.0.113.9", 40000)),
        (
            [
                (
                    "v"
                    if n == "Via"
                    else "f"
                    if n == "From"
                    else "t"
                    if n == "To"
                    else "i"
                    if n == "Call-ID"
                    else "l"
                    if n == "Content-Length"
                    else n,
                    v,
                )
                for n, v in SIPP
            ],
            SOURCE,
        ),
    ],
)
def test_usual_registers_are_answered_quickly_and_exactly(headers, source):
    data = message("REGISTER sip:example.test SIP/2.0", headers)
    answer = quick(data, *source)
    assert answer is not None
    assert answer == general(data, *source)


@pytest.mark.parametrize(
    "change",
    [
        lambda h: h + [("Authorization", 'Digest username="a"')],
        lambda h: h + [("Require", "path")],
        lambda h: h + [("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx")],
        lambda h: [(n, "<sip:a@example.test>;tag=x" if n == "To" else v) for n, v in h],
        lambda h: [(n, v + ";received=1.2.3.4" if n == "Via" else v) for n, v in h],
        lambda h: [(n, v.replace("REGISTER", "INVITE") if n == "CSeq" else v) for n, v in h],
        lambda h: [(n, "256" if n == "Max-Forwards" else v) for n, v in h],
        lambda h: [(n, v) for n, v in h if n != "From"],
    ],
)
def test_what_it_does_not_know_is_left_to_the_general_path(change):
    data = message("REGISTER sip:example.test SIP/2.0", change(SIPP))
    assert quick(data, *SOURCE) is None


def test_a_foreign_domain_or_a_body_is_left_to_the_general_path():
    assert quick(message("REGISTER sip:other.test SIP/2.0", SIPP), *SOURCE) is None
    assert quick(message("REGISTER sip:example.test SIP/2.0", SIPP, "x"), *SOURCE) is None


def test_the_registrar_and_the_front_write_the_same_401():
    """The registrar's answer to a REGISTER without credentials is the front's
    challenge, parsed or recognised."""
    data = message("REGISTER sip:example.test SIP/2.0", PHONE)
    front = general(data, "203.0.113.9", 40000)
    for fast in (True, False):
        p = path(fast)
        usual = p.recognise(data, "203.0.113.9", 40000)
        if usual is not None:
            answer = p.answer(usual, None, NOW, 0.0)
        else:
            req = parse_message(data)
            answer = p.answer(req, stamp_via(req, "udp", "203.0.113.9", 40000), NOW, 0.0)
        assert answer.status == 401 and answer.key is None and answer.changes == []
        assert _same_nonce((answer.data, answer.dest[1:])) == front
        assert (usual is not None) == fast


def test_a_foreign_domain_is_refused_by_the_registrar_and_passed_on_by_the_front():
    data = message("REGISTER sip:other.test SIP/2.0", SIPP)
    assert general(data, *SOURCE) is None
    req = parse_message(data)
    answer = path(True).answer(req, stamp_via(req, "udp", *SOURCE), NOW, 0.0)
    assert answer.status == 404


# Pieces of REGISTERs for the property below: (forms the shortcut knows,
# odd or invalid ones). A drawn REGISTER takes every piece from the first
# list, but for at most one piece, which it takes from the second.
PIECES = {
    "start": (
        [
            "REGISTER sip:example.test SIP/2.0",
            "REGISTER sip:alias.test SIP/2.0",
            "REGISTER sip:127.0.0.1 SIP/2.0",
            "REGISTER sip:example.test:5060 SIP/2.0",
        ],
        [
            "REGISTER sip:Example.TEST SIP/2.0",
            "REGISTER sip:other.test SIP/2.0",
            "REGISTER sip:example.test:99999 SIP/2.0",
            "REGISTER  sip:example.test SIP/2.0",
            "REGISTER sip:example.test SIP/2.1",
            "REGISTER sip:u@example.test SIP/2.0",
            "REGISTER sip:example.test;transport=udp SIP/2.0",
            "OPTIONS sip:example.test SIP/2.0",
        ],
    ),
    "via_transport": (["UDP"], ["udp", "TCP", "SCTP"]),
    "via_sep": ([" "], ["  ", "\t"]),
    "via_host": (
        ["127.0.0.1", "192.0.2.7", "phone.example.test", "10.1.2.3"],
        ["PHONE.Example.test", "[::1]", "a..b", "-x", "host_1", "1.2.3.4.5"],
    ),
    "via_port": ([None, "5061", "5060", "65535"], ["65536", "0", "05060"]),
    "via_param": (
        ["branch=z9hG4bK-1", "branch=z9hG4bK-2", "rport", "lr", "ttl=5", "maddr=1.2.3.4"],
        ["rport=5", "received=1.2.3.4", "Branch=x", "x=", "=y", "rport ", 'x="q"', "rportx"],
    ),
    "via_end": ([""], [" ", ", SIP/2.0/UDP 10.0.0.1", ","]),
    "uri": (
        ["sip:alice@example.test", "sips:alice@example.test", "sip:a.b-c_d!~*'()&=+$,@phone.test"],
        [
            "sip:al%20ice@example.test",
            "sip:alice@example.test:5060",
            "sip:alice@example.test;user=phone",
            "tel:+15551234",
            "sip:alice@EXAMPLE.test",
            "sip:a@b@c",
            "sip:@example.test",
            "http://x",
            "sip:alice@[::1]",
            "sip:alice",
        ],
    ),
    "display": (
        ["", '"Alice" ', '"Alice"', '"" ', '"A!#$%&()~" '],
        ["Alice ", '"A \\"q\\"" ', '"Al\tice" ', '"é" ', "@"],
    ),
    "brackets": ([True], [False]),
    "from_params": (
        ["", ";tag=abc", ";tag=1234SIPpTag0017"],
        [";tag=", ";x=y", ";tag=a;tag=b", ";tag=a b", " ;tag=a", ";tag"],
    ),
    "to_params": ([""], [";tag=abc", ";x=y", " "]),
    "call-id": (["abc@host", "17-1234@127.0.0.1", "f81d4fae7dec"], ["", " ", "a b", 'x"y', "é"]),
    "cseq": (
        ["1 REGISTER", "2147483647 REGISTER", "20 REGISTER"],
        ["01 REGISTER", "1 INVITE", "4294967296 REGISTER", "1  REGISTER", "1 register", "REGISTER"],
    ),
    "max-forwards": (["70", "0", "255"], ["256", "070", "-1", "", "7 0", " 70 "]),
    "content-length": (["0"], ["1", "00", " 0", "-0"]),
    "count": ([1], [0, 2]),
    "name": ([0, 1], [2, 3]),
    "other": (
        [
            ("Contact", "<sip:a@1.2.3.4>"),
            ("Expires", "3600"),
            ("User-Agent", "X/1.0"),
            ("Supported", "path"),
            ("Allow", "INVITE, ACK"),
            ("m", "<sip:b@1.2.3.4>"),
            ("Subject", ""),
        ],
        [
            ("Contact", "*"),
            ("Expires", "x"),
            ("Require", "path"),
            ("Proxy-Require", "x"),
            ("Authorization", 'Digest username="a"'),
            ("authorization", "x"),
            ("X-Odd", "\t tab"),
            ("Bad Name", "x"),
            ("X-Ctl", "a\x01b"),
            ("X-Nul", "a\x00b"),
            ("X-Utf8", "é"),
        ],
    ),
    "tail": ([""], ["x", "\r\n"]),
    "framing": ([""], ["fold", "lead"]),
}
#: spellings of each header name: two usual ones, then two odd ones
NAMES = {
    "via": ["Via", "v", "VIA", "Via "],
    "from": ["From", "f", "FROM", "from "],
    "to": ["To", "t", "tO", "To "],
    "call-id": ["Call-ID", "i", "call-id", "Call-Id "],
    "cseq": ["CSeq", "CSeq", "cseq", "CSEQ "],
    "max-forwards": ["Max-Forwards"] * 4,
    "content-length": ["Content-Length", "l", "content-length", "L "],
}


def build(pick, number) -> bytes:
    """A REGISTER made of ``pick(piece)`` for each piece, with ``number(lo, hi)``
    Via parameters and extra headers."""

    def address(params):
        uri = pick("uri")
        return f"{pick('display')}<{uri}>{pick(params)}" if pick("brackets") else uri + pick(params)

    headers = []
    for key, names in NAMES.items():
        for _ in range(pick("count") if key in ("via", "from", "max-forwards") else 1):
            name = names[pick("name")]
            if key == "via":
                port = pick("via_port")
                value = (
                    f"SIP/2.0/{pick('via_transport')}{pick('via_sep')}{pick('via_host')}"
                    + (f":{port}" if port else "")
                    + "".join(";" + pick("via_param") for _ in range(number(0, 3)))
                    + pick("via_end")
                )
            elif key in ("from", "to"):
                value = address(f"{key}_params")
            else:
                value = pick(key)
            headers.append((name, value))
    headers += [pick("other") for _ in range(number(0, 3))]
    data = message(pick("start"), headers, pick("tail"))
    framing = pick("framing")
    if framing == "fold":
        data = data.replace(b"\r\n", b"\r\n ", 2).replace(b"\r\n ", b"\r\n", 1)
    elif framing == "lead":
        data = b"\r\n" + data
    return data


@st.composite
def _register(draw):
    odd = draw(st.sampled_from([None] * 12 + list(PIECES)))

    def pick(piece):
        usual, unusual = PIECES[piece]
        return draw(st.sampled_from(unusual if piece == odd and unusual else usual))

    data = build(pick, lambda lo, hi: draw(st.integers(lo, hi)))
    # Header order is free: shuffle the lines after the request line.
    lines = data.split(b"\r\n")
    end = lines.index(b"", 1) if b"" in lines[1:] else len(lines)
    return b"\r\n".join([lines[0], *draw(st.permutations(lines[1:end])), *lines[end:]])


@pytest.mark.parametrize("piece, value", [(p, v) for p, (_, odd) in PIECES.items() for v in odd])
def test_each_odd_piece_alone(piece, value):
    """Every odd piece in an otherwise usual REGISTER: answered as the general path does, or left to it."""
    data = build(lambda p: value if p == piece else PIECES[p][0][0], lambda lo, hi: 2)
    for source in (SOURCE, ("203.0.113.9", 40000)):
        answer = quick(data, *source)
        if answer is not None:
            assert answer == general(data, *source)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _register(),
    st.sampled_from(
        [SOURCE, ("127.0.0.1", 5060), ("192.0.2.7", 5060), ("203.0.113.9", 40000), ("::1", 5062)]
    ),
)
def test_the_quick_answer_is_the_general_one(data, source):
    answer = quick(data, *source)
    event("answered quickly" if answer is not None else "left to the general path")
    if answer is not None:
        assert answer == general(data, *source)


_BYTES = b'\r\n\x00\x01\x7f \t:;,<>"\\%=@.-_0aZ\xc3\xa9'


def mutated(messages: list[bytes]):
    """A strategy: one of ``messages`` with up to three bytes replaced, inserted or deleted."""

    @st.composite
    def one(draw):
        data = bytearray(draw(st.sampled_from(messages)))
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data) - 1))
            byte = draw(st.sampled_from(_BYTES))
            how = draw(st.sampled_from(["replace", "insert", "delete"]))
            if how == "replace":
                data[at] = byte
            elif how == "insert":
                data.insert(at, byte)
            else:
                del data[at]
        return bytes(data)

    return one()


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mutated([message("REGISTER sip:example.test SIP/2.0", h) for h in (SIPP, PHONE)]),
    st.sampled_from([SOURCE, ("203.0.113.9", 40000)]),
)
def test_damaged_registers_are_answered_as_the_general_path_answers(data, source):
    answer = quick(data, *source)
    event("quick" if answer is not None else "general")
    if answer is not None:
        assert answer == general(data, *source)
