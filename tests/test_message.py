"""Parsing, validation and serialisation of SIP messages (RFC 3261 §7, §20, §25; RFC 4475)."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipcore import message
from sipcore.errors import SipError, SipParseError
from sipcore.headers import CANONICAL
from sipcore.grammar import is_token
from sipcore.message import (
    Request,
    Response,
    StreamFramer,
    error_response,
    error_response_bytes,
    make_response,
    parse_message,
    response_bytes,
)
from sipcore.uri import parse_name_addr, parse_number
from tests.fuzz.targets import process

CRLF = "\r\n"
INSTANCE = "urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF"

REGISTER_LINES = [
    "REGISTER sip:example.test SIP/2.0",
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport",
    "Max-Forwards: 70",
    'To: "Alice" <sip:alice@example.test>',
    'From: "Alice" <sip:alice@example.test>;tag=1928301774',
    "Call-ID: a84b4c76e66710@pc33.example.test",
    "CSeq: 314159 REGISTER",
    f'Contact: <sip:alice@192.0.2.10:5060;transport=udp>;+sip.instance="<{INSTANCE}>";reg-id=1;expires=3600',
    "Expires: 3600",
    "User-Agent: Tandem-test/1.0",
    "Content-Length: 0",
]
#: the five headers every response copies, as written in REGISTER_LINES
COPIED = {
    line.split(":")[0].lower(): line.split(":", 1)[1].strip()
    for line in REGISTER_LINES[1:]
    if line.split(":")[0] in ("Via", "To", "From", "Call-ID", "CSeq")
}


def build(lines, body: bytes = b"") -> bytes:
    """Join header lines with CRLF, then the empty line and the body."""
    return CRLF.join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body


def register(*edits, start: str | None = None, body: bytes = b"") -> bytes:
    """REGISTER_LINES edited: ``(name, line)`` replaces header ``name`` (``None`` drops
    it); ``(None, line)`` adds a line before Content-Length."""
    lines = list(REGISTER_LINES)
    if start is not None:
        lines[0] = start
    for name, line in edits:
        if name is None:
            lines.insert(len(lines) - 1, line)
            continue
        i = next(i for i, old in enumerate(lines) if old.split(":")[0] == name)
        if line is None:
            del lines[i]
        else:
            lines[i] = line
    return build(lines, body)


def reject(data: bytes, status: int = 400, words: str = ""):
    """Check ``data`` is a request that gets ``status`` with ``words`` in its reason.

    Returns the error and the error response as the client would parse it.
    """
    with pytest.raises(SipError) as exc:
        parse_message(data).validate()
    err = exc.value
    assert err.status == status, err
    assert words in err.reason
    assert err.request is not None, "a malformed request must be answered"
    wire = error_response(err.request, err).encode()
    answer = parse_message(wire)
    assert isinstance(answer, Response)
    assert (answer.status, answer.reason) == (status, err.reason)
    assert wire.startswith(f"SIP/2.0 {status} {err.reason}\r\n".encode())
    return err, answer


# -- valid messages -----------------------------------------------------------


def test_register_parses_and_validates():
    req = parse_message(register())
    req.validate()
    assert isinstance(req, Request)
    assert (req.method, req.uri, req.ruri.host) == ("REGISTER", "sip:example.test", "example.test")
    assert req.cseq == (314159, "REGISTER")
    assert req.call_id == "a84b4c76e66710@pc33.example.test"
    assert req.max_forwards == 70 and req.expires == 3600
    assert req.from_.tag == "1928301774" and req.to.tag is None
    assert req.to.uri.aor() == "sip:alice@example.test"
    via = req.top_via
    assert (via.transport, via.host, via.port, via.branch) == (
        "UDP",
        "192.0.2.10",
        5060,
        "z9hG4bK776asdhds",
    )
    assert "rport" in via.params and via.rport is None
    [contact] = req.contacts
    assert contact.instance == INSTANCE and contact.reg_id == 1 and contact.expires == 3600
    assert contact.q is None and contact.uri.transport == "udp"
    assert req.body == b""


def torture_invite() -> tuple[bytes, bytes]:
    """A short tortuous INVITE after RFC 4475 §3.1.1.1: odd spacing, tabs,
    folding, mixed case and compact names, escaped quotes, empty values."""
    body = (
        b"v=0\r\no=mhandley 29 51 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\n"
        b"t=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n"
    )
    lines = [
        "INVITE sip:vivekg@chair-dnrc.example.test;unknownparam SIP/2.0",
        "TO :",
        " sip:vivekg@chair-dnrc.example.test ;   tag    = 1918181833n",
        r'from   : "J Rosenberg \\\""       <sip:jdrosen@example.test>',
        "  ;",
        "  tag = 98asjd8",
        "MaX-fOrWaRdS: 0068",
        "Call-ID:\twsinv.ndaksdj@192.0.2.1",
        f"Content-Length   : {len(body)}",
        "cseq: 0009",
        " \t INVITE",
        "Via  : SIP  /   2.0",
        " /UDP",
        "    192.0.2.2;branch=390skdjuw",
        "s :",
        "NewFangledHeader:   newfangled value",
        " continued newfangled value",
        "UnknownHeaderWithUnusualValue: ;;,,;;,;",
        "Content-Type: application/sdp",
        "Route:",
        " <sip:services.example.test;lr;unknownwith=value;unknown-no-value>",
        "v:  SIP  / 2.0  / TCP     spindle.example.test   ;",
        "  branch  =   z9hG4bK9ikj8  ,",
        " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
        " z9hG4bK30239",
        r'm:"Quoted string \"\"" <sip:jdrosen@example.test> ; newparam =',
        "      newvalue ;",
        "  secondparam ; q = 0.33",
    ]
    return build(lines, body), body


def test_torture_invite():
    data, body = torture_invite()
    req = parse_message(data)
    req.validate()
    assert req.method == "INVITE" and req.ruri.params == {"unknownparam": None}
    assert req.to.uri.user == "vivekg" and req.to.tag == "1918181833n" and req.to.display is None
    assert req.from_.display == r'"J Rosenberg \\\""' and req.from_.name == 'J Rosenberg \\"'
    assert req.from_.tag == "98asjd8"
    assert req.max_forwards == 68
    assert req.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert req.cseq == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in req.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.test", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert req.get("subject") == ""
    assert req.get("newfangledheader") == "newfangled value continued newfangled value"
    assert req.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    [route] = req.get_all("route")
    assert parse_name_addr(route).uri.params == {
        "lr": None,
        "unknownwith": "value",
        "unknown-no-value": None,
    }
    [contact] = req.contacts
    assert contact.name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert contact.q == 0.33
    assert req.body == body and req.get("content-length") == str(len(body))
    again = parse_message(req.encode())
    again.validate()
    assert again.vias == req.vias and again.contacts == req.contacts and again.body == body
    assert again.get("content-length") == str(len(body))


def test_wide_range_of_token_characters():
    # After RFC 4475 §3.1.1.2: every token character in a method and in parameters.
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    data = build(
        [
            f"{method} sip:1_odd.URI~(to-be!sure)&isn't+it$/odd?,/;;*:&it+has=1,odd!*pass$wo~d_too.(it)@example.test SIP/2.0",
            "Via: SIP/2.0/TCP host1.example.test;branch=z9hG4bK-.!%66*_+`'~",
            'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_odd@example.test>'.replace("\x00", "0"),
            "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.test>;fromParam''~+*_!.-%=\"работающий\";tag=_token~1'+`*%!-.",
            "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
            f"CSeq: 139122385 {method}",
            "Max-Forwards: 255",
            "extensionHeader-!.%*+_`'~:\t\tweird extension value",
            "Content-Length: 0",
        ]
    )
    req = parse_message(data)
    req.validate()
    assert req.method == method and req.cseq == (139122385, method)
    assert req.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert req.from_.display == "token1~` token2'+_ token3*%!.-"
    assert req.from_.tag == "_token~1'+`*%!-."
    assert req.get("extensionHeader-!.%*+_`'~") == "weird extension value"
    assert req.ruri.host == "example.test"
    assert req.max_forwards == 255


def test_escaped_uris_compare_equal():
    # After RFC 4475 §3.1.1.3.
    req = parse_message(
        build(
            [
                "INVITE sip:sips%3Auser%40example.test@example.net SIP/2.0",
                "To: sip:%75se%72@example.test",
                "From: <sip:I%20have%20spaces@example.net>;tag=938",
                "Max-Forwards: 87",
                "i: esc01.239409asdfakjkn23onasd0-3234",
                "CSeq: 234234 INVITE",
                "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
                "C: application/sdp",
                "Contact: <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
                "Content-Length: 0",
            ]
        )
    )
    req.validate()
    assert req.to.uri.aor() == parse_message(register()).to.uri.aor().replace("alice", "user")
    assert req.to.uri.canonical() == "sip:user@example.test"
    assert req.from_.uri.aor() == "sip:I have spaces@example.net"
    assert req.ruri.user == "sips%3Auser%40example.test"
    assert req.ruri.aor() == "sip:sips:user@example.test@example.net"
    [c] = req.contacts
    assert c.uri.aor() == "sip:caller@host5.example.net"
    assert c.uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}


def test_escaped_method_is_its_own_token():
    # After RFC 4475 §3.1.1.5: "%" in a method is not an escape.
    req = parse_message(
        register(("CSeq", "CSeq: 1 RE%47IST%45R"), start="RE%47IST%45R sip:example.test SIP/2.0")
    )
    req.validate()
    assert req.method == "RE%47IST%45R" and req.method != "REGISTER"


def test_display_name_without_space_before_uri():
    req = parse_message(register(("From", "From: caller<sip:caller@example.test>;tag=323")))
    req.validate()
    assert req.from_.display == "caller" and req.from_.tag == "323"


def test_long_values():
    # After RFC 4475 §3.1.1.7: long values and many Vias.
    vias = [f"Via: SIP/2.0/TCP sip{i}.example.test:5060;branch=z9hG4bK{i:05d}" for i in range(60)]
    long_name = "I have a user name of " + "extreme " * 500 + "length"
    data = build(
        [
            "INVITE sip:user@example.test SIP/2.0",
            f'To: "{long_name}" <sip:user@example.test>;tag={"a" * 3000}',
            "From: sip:amazinglylongcallername" + "long" * 300 + "@example.test;tag=12982424",
            "Call-ID: " + "longreq.one" + "really" * 1000 + "longcallid",
            "CSeq: 3882340 INVITE",
            *vias,
            "Unknown-LongName-" + "x" * 200 + ": unknown-" + "long" * 2000 + "-value",
            "Max-Forwards: 70",
            "Content-Length: 0",
        ]
    )
    req = parse_message(data)
    req.validate()
    assert len(req.vias) == 60 and req.vias[59].branch == "z9hG4bK00059"
    assert req.to.name == long_name and len(req.to.tag) == 3000
    assert parse_message(req.encode()).encode() == req.encode()


def test_extra_octets_after_content_length_are_dropped_over_udp():
    # After RFC 4475 §3.1.1.8: a second message in the same datagram is ignored.
    second = build(
        ["INVITE sip:joe@example.test SIP/2.0", "t: sip:joe@example.test", "Content-Length: 0"]
    )
    req = parse_message(register() + second)
    req.validate()
    assert req.method == "REGISTER" and req.body == b""


def test_user_part_with_parameters():
    req = parse_message(
        register(
            ("CSeq", "CSeq: 1 OPTIONS"),
            start="OPTIONS sip:user;par=u%40example.net@example.test SIP/2.0",
        )
    )
    req.validate()
    assert req.ruri.user == "user;par=u%40example.net" and req.ruri.host == "example.test"
    assert req.ruri.params == {}


def test_varied_and_unknown_transports():
    # After RFC 4475 §3.1.1.10: Vias in one header and repeated, known and unknown transports.
    req = parse_message(
        register(
            (
                "Via",
                CRLF.join(
                    [
                        "Via: SIP/2.0/UDP t1.example.test;branch=z9hG4bKkdjuw",
                        "Via: SIP/2.0/SCTP t2.example.test;branch=z9hG4bKklasjdhf",
                        "Via: SIP/2.0/TLS t3.example.test;branch=z9hG4bK2980unddj",
                        "v: SIP/2.0/UNKNOWN t4.example.test;branch=z9hG4bKasd0f3en",
                        "VIA: SIP/2.0/tcp t5.example.test;branch=z9hG4bK0a9idfnee, SIP/2.0/TLS-SCTP t6.example.test:5061;branch=z9hG4bK6, sip/2.0/wss [2001:db8::7]:443;branch=z9hG4bK7",
                    ]
                ),
            )
        )
    )
    req.validate()
    assert [(v.transport, v.host) for v in req.vias] == [
        ("UDP", "t1.example.test"),
        ("SCTP", "t2.example.test"),
        ("TLS", "t3.example.test"),
        ("UNKNOWN", "t4.example.test"),
        ("TCP", "t5.example.test"),
        ("TLS-SCTP", "t6.example.test"),
        ("WSS", "[2001:db8::7]"),
    ]
    assert req.vias[6].port == 443
    assert req.top_via.branch == "z9hG4bKkdjuw"


def test_via_received_and_rport():
    resp = parse_message(
        build(
            [
                "SIP/2.0 200 OK",
                "Via: SIP/2.0/UDP [2001:db8::10]:5060;branch=z9hG4bKa;received=2001:db8::99;rport=5070",
                "Via: SIP/2.0/UDP proxy.example.test;branch=z9hG4bKb;RPORT;Received=192.0.2.1",
                "To: <sip:alice@example.test>;tag=x",
                "From: <sip:alice@example.test>;tag=y",
                "Call-ID: c1",
                "CSeq: 2 REGISTER",
                "Content-Length: 0",
            ]
        )
    )
    resp.validate()
    first, second = resp.vias
    assert (first.host, first.port, first.received, first.rport) == (
        "[2001:db8::10]",
        5060,
        "2001:db8::99",
        5070,
    )
    assert (second.received, second.rport, "rport" in second.params) == ("192.0.2.1", None, True)
    assert (
        str(first)
        == "SIP/2.0/UDP [2001:db8::10]:5060;branch=z9hG4bKa;received=2001:db8::99;rport=5070"
    )


@pytest.mark.parametrize("rport", ["abc", "0", "65536", "\u00b2", "9" * 5000])
def test_bad_rport_value(rport):
    via = parse_message(
        register(("Via", f"Via: SIP/2.0/UDP h.example.test;branch=z9hG4bKa;rport={rport}"))
    ).top_via
    with pytest.raises(SipParseError) as exc:
        via.rport  # noqa: B018
    assert "rport" in exc.value.reason


def test_multipart_binary_body_intact():
    # After RFC 4475 §3.1.1.11: a binary body, with CRLFs and NULs inside.
    body = (
        b"--boundary42\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n\r\n--boundary42\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n"
        + bytes(range(256))
        + b"\r\n\r\n--boundary42--\r\n"
    )
    req = parse_message(
        register(
            ("Content-Length", f"Content-Length: {len(body)}"),
            (None, "Content-Type: multipart/mixed;boundary=boundary42"),
            body=body,
        )
    )
    req.validate()
    assert req.body == body
    wire = req.encode()
    assert wire.endswith(b"\r\n\r\n" + body)
    assert parse_message(wire).body == body


def test_unusual_and_empty_reason_phrases():
    # After RFC 4475 §3.1.1.12 and §3.1.1.13.
    rest = [
        "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
        "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
        "CSeq: 35 INVITE",
        "From: sip:user@example.test;tag=11141343",
        "To: sip:user@example.test;tag=2229",
        "Content-Length: 0",
    ]
    reason = "= 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e\u0441\u0442\u043e"
    resp = parse_message(build([f"SIP/2.0 200 {reason}"] + rest))
    resp.validate()
    assert (resp.status, resp.reason) == (200, reason)
    assert parse_message(resp.encode()).reason == reason
    for start in ("SIP/2.0 100 ", "SIP/2.0 100"):
        resp = parse_message(build([start] + rest))
        resp.validate()
        assert (resp.status, resp.reason) == (100, "")


def test_rfc2543_syntax_is_accepted():
    # After RFC 4475 §3.4.1: no branch cookie, no From tag, addr-spec To and From.
    req = parse_message(
        build(
            [
                "INVITE sip:UserB@example.test SIP/2.0",
                "Via: SIP/2.0/UDP 192.0.2.15",
                "From: <sip:UserA@example.test>",
                "To: sip:UserB@example.test",
                "Call-ID: 242342@192.0.2.15",
                "CSeq: 8 INVITE",
                "Max-Forwards: 7",
                "Content-Length: 0",
            ]
        )
    )
    req.validate()
    assert req.top_via.branch is None and req.top_via.port is None
    assert req.from_.tag is None


def test_compact_forms():
    req = parse_message(
        build(
            [
                "INVITE sip:bob@example.test SIP/2.0",
                "v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKc",
                "f: <sip:alice@example.test>;tag=1",
                "t: <sip:bob@example.test>",
                "i: compact@192.0.2.1",
                "CSeq: 1 INVITE",
                "m: <sip:alice@192.0.2.1>",
                "c: text/plain",
                "k: path, outbound",
                "s: hello",
                "e: gzip",
                "o: presence",
                "u: dialog",
                "r: <sip:carol@example.test>",
                "l: 5",
            ],
            b"hello",
        )
    )
    req.validate()
    names = [h[1] for h in req.headers]
    assert names == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Content-Type",
        "Supported",
        "Subject",
        "Content-Encoding",
        "Event",
        "Allow-Events",
        "Refer-To",
        "Content-Length",
    ]
    assert req.get("Supported") == "path, outbound" and req.get_all("supported") == [
        "path",
        "outbound",
    ]
    assert req.get("event") == "presence" and req.get("REFER-TO") == "<sip:carol@example.test>"
    assert req.body == b"hello"
    wire = req.encode()
    assert (
        b"\r\nCall-ID: compact@192.0.2.1\r\n" in wire
        and b"\r\nContent-Length: 5\r\n\r\nhello" in wire
    )


def test_header_names_are_case_insensitive():
    req = parse_message(
        build(
            [
                "OPTIONS sip:example.test SIP/2.0",
                "vIA: SIP/2.0/UDP h.example.test;branch=z9hG4bKx",
                "TO: <sip:a@example.test>",
                "fRoM: <sip:a@example.test>;tag=1",
                "CALL-ID: x",
                "cseq: 1 OPTIONS",
                "max-FORWARDS: 10",
                "content-length: 0",
            ]
        )
    )
    req.validate()
    assert req.get("Call-ID") == req.get("call-id") == "x"
    assert req.max_forwards == 10
    assert b"\r\nMax-Forwards: 10\r\n" in req.encode()


def test_header_names_with_space_before_the_colon():
    req = parse_message(
        build(
            [
                "OPTIONS sip:example.test SIP/2.0",
                "Via : SIP/2.0/UDP h.example.test;branch=z9hG4bKx",
                "t\t: <sip:a@example.test>",
                "FROM  : <sip:a@example.test>;tag=1",
                "Call-ID:x",
                "CSeq:  1 OPTIONS  ",
                "X-Odd \t: kept",
                "Content-Length: 0",
            ]
        )
    )
    req.validate()
    assert [h[:2] for h in req.headers] == [
        ["via", "Via"],
        ["to", "To"],
        ["from", "From"],
        ["call-id", "Call-ID"],
        ["cseq", "CSeq"],
        ["x-odd", "X-Odd"],
        ["content-length", "Content-Length"],
    ]
    assert req.get("x-odd") == "kept" and req.cseq == (1, "OPTIONS") and req.call_id == "x"


def test_line_holding_only_a_header_name_has_no_colon():
    for line in ["Via", "max-forwards", "v", "X-Unknown"]:
        reject(register((None, line)), 400, "header line without a colon")


def test_unknown_headers_preserved_byte_for_byte_and_order_kept():
    unknown = [
        'X-Custom-HEADER: Some;weird=Value, "quoted, \\"escaped\\"" <sip:x@y>;;,,',
        'P-Asserted-Identity: "Alice" <sip:alice@example.test>',
        "x-lower-case: \t inner  spaces  kept",
        "Weird.Name!%*+`'~: value",
    ]
    data = register(*[(None, line) for line in unknown])
    req = parse_message(data)
    wire = req.encode()
    for line in unknown[:2] + unknown[3:]:
        assert ("\r\n" + line + "\r\n").encode() in wire
    assert b"\r\nx-lower-case: inner  spaces  kept\r\n" in wire
    order = [line.split(":")[0] for line in REGISTER_LINES[1:-1]] + [
        u.split(":")[0] for u in unknown
    ]
    assert [h[1] for h in parse_message(wire).headers][:-1] == order
    assert wire == data.replace(b"\r\nx-lower-case: \t inner", b"\r\nx-lower-case: inner")


def test_encode_recomputes_content_length():
    req = parse_message(register(("Content-Length", "Content-Length: 4"), body=b"abcd"))
    assert req.body == b"abcd"
    req.body = b"a longer body"
    wire = req.encode()
    assert wire.count(b"Content-Length") == 1
    assert wire.endswith(b"Content-Length: 13\r\n\r\na longer body")
    assert bytes(req) == wire


def test_missing_content_length_over_udp_and_tcp():
    data = register(("Content-Length", None), body=b"rest of the datagram")
    assert parse_message(data).body == b"rest of the datagram"
    assert parse_message(data, stream=True).body == b""
    assert parse_message(data).encode().endswith(b"Content-Length: 20\r\n\r\nrest of the datagram")


def test_content_length_with_leading_zeros_and_folding():
    req = parse_message(register(("Content-Length", "Content-Length:\r\n  0003"), body=b"abcdef"))
    assert req.body == b"abc"


def test_crlfs_before_start_line_are_ignored():
    req = parse_message(b"\r\n\r\n\r\n" + register())
    req.validate()
    assert req.method == "REGISTER"


def test_invalid_utf8_is_kept_byte_for_byte():
    data = register(("To", 'To: "M\udcfcller" <sip:mueller@example.test>'))
    assert b'"M\xfcller"' in data
    req = parse_message(data)
    req.validate()
    assert req.encode() == data
    assert (
        b'To: "M\xfcller" <sip:mueller@example.test>;tag=t'
        in make_response(req, 200, to_tag="t").encode()
    )


def test_contact_list_in_one_header_and_repeated():
    req = parse_message(
        register(
            (
                "Contact",
                CRLF.join(
                    [
                        'Contact: <sip:a@192.0.2.1>;q=0.5, "Bob, Jr." <sip:b@192.0.2.2>;q=1;expires=60, sip:c@192.0.2.3;q=0.25',
                        "m: <sip:d@[2001:db8::4]:5070>",
                    ]
                ),
            )
        )
    )
    contacts = req.contacts
    assert [c.uri.user for c in contacts] == ["a", "b", "c", "d"]
    assert [c.q for c in contacts] == [0.5, 1.0, 0.25, None]
    assert contacts[1].name == "Bob, Jr." and contacts[1].expires == 60
    assert contacts[3].uri.host_bare == "2001:db8::4"


def test_wildcard_contact():
    req = parse_message(register(("Contact", "Contact:  * "), ("Expires", "Expires: 0")))
    req.validate()
    assert req.contacts == "*" and req.expires == 0
    mixed = parse_message(
        register(("Contact", "Contact: *"), (None, "Contact: <sip:a@example.test>"))
    )
    with pytest.raises(SipParseError) as exc:
        mixed.contacts  # noqa: B018
    assert "wildcard Contact" in exc.value.reason


def test_contact_errors_name_the_header():
    for line in [
        "Contact: sip:user@example.test?Route=%3Csip:sip.example.test%3E",
        "Contact: <mailto:alice@example.test>",
        "Contact: <sip:a@example.test",
    ]:
        req = parse_message(register(("Contact", line)))
        req.validate()
        with pytest.raises(SipParseError) as exc:
            req.contacts  # noqa: B018
        assert exc.value.status == 400 and exc.value.reason.startswith("bad Contact header: ")


def test_path_header():
    req = parse_message(
        register(
            (None, "Path: <sip:p1.example.test;lr>,<sip:p2.example.test;lr>"),
            (None, "Path: <sip:P3.example.test;lr;ob>"),
        )
    )
    paths = [parse_name_addr(p).uri for p in req.get_all("path")]
    assert [p.host for p in paths] == ["p1.example.test", "p2.example.test", "P3.example.test"]
    assert paths[2].params == {"lr": None, "ob": None}
    assert req.raw_values("Path") == [
        "<sip:p1.example.test;lr>,<sip:p2.example.test;lr>",
        "<sip:P3.example.test;lr;ob>",
    ]


def test_expires_header():
    for value, expected in [("0", 0), ("0600", 600), ("4294967295", 4294967295)]:
        assert parse_message(register(("Expires", f"Expires: {value}"))).expires == expected
    assert parse_message(register(("Expires", None))).expires is None
    for value in ["soon", "-1", "4294967296", "1" * 5000]:
        with pytest.raises(SipParseError) as exc:
            parse_message(register(("Expires", f"Expires: {value}"))).expires  # noqa: B018
        assert "Expires" in exc.value.reason


def test_max_forwards_is_optional():
    req = parse_message(register(("Max-Forwards", None)))
    req.validate()
    assert req.max_forwards is None


def test_response_parses():
    resp = parse_message(
        build(
            [
                "SIP/2.0 401 Unauthorized",
                "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKa;received=192.0.2.99",
                "To: <sip:alice@example.test>;tag=srv",
                "From: <sip:alice@example.test>;tag=cl",
                "Call-ID: c",
                "CSeq: 1 REGISTER",
                'WWW-Authenticate: Digest realm="example.test", nonce="abc", qop="auth"',
                "Content-Length: 0",
            ]
        )
    )
    resp.validate()
    assert (resp.status, resp.reason) == (401, "Unauthorized")
    assert resp.get("www-authenticate") == 'Digest realm="example.test", nonce="abc", qop="auth"'
    assert resp.start_line() == "SIP/2.0 401 Unauthorized"


def test_uri_setter_drops_parsed_uri():
    req = parse_message(register())
    assert req.ruri.host == "example.test"
    req.uri = "sip:bob@other.test:5070"
    assert (req.ruri.user, req.ruri.host, req.ruri.port) == ("bob", "other.test", 5070)
    assert req.encode().startswith(b"REGISTER sip:bob@other.test:5070 SIP/2.0\r\n")


def test_header_editing():
    req = parse_message(register())
    req.prepend("Via", "SIP/2.0/UDP proxy.example.test;branch=z9hG4bKp")
    assert req.top_via.host == "proxy.example.test" and len(req.vias) == 2
    assert req.pop_first_value("via") == "SIP/2.0/UDP proxy.example.test;branch=z9hG4bKp"
    assert req.top_via.host == "192.0.2.10"
    req.set("Max-Forwards", "69")
    assert req.max_forwards == 69
    req.add("Record-Route", "<sip:a.example.test;lr>, <sip:b.example.test;lr>")
    assert req.pop_first_value("record-route") == "<sip:a.example.test;lr>"
    assert req.get("record-route") == "<sip:b.example.test;lr>"
    req.remove("user-agent")
    assert req.get("User-Agent") is None


def test_get_sees_headers_changed_in_place():
    """Code outside Message edits ``headers`` directly (e.g. the top Via's value)."""
    req = parse_message(register())
    assert req.get("expires") == "3600"
    next(h for h in req.headers if h[0] == "expires")[2] = "60"
    assert req.get("expires") == "60" and req.expires == 60
    req.headers.insert(0, ["route", "Route", "<sip:r.example.test;lr>"])
    assert req.get("route") == "<sip:r.example.test;lr>"
    del req.headers[0]
    assert req.get("route") is None
    req.headers = [["call-id", "Call-ID", "other"]]
    assert req.get("call-id") == "other" and req.get("expires") is None


def test_get_returns_the_first_of_repeated_headers():
    req = parse_message(register((None, "Expires: 60"), (None, "x-a: 1"), (None, "X-A: 2")))
    assert req.get("expires") == "3600" and req.get("X-a") == "1"
    assert req.raw_values("x-a") == ["1", "2"]
    req.remove("expires")
    assert req.get("expires") is None
    req.add("expires", "10")
    req.prepend("Expires", "20")
    assert req.get("Expires") == "20" and req.raw_values("expires") == ["20", "10"]


def test_repeated_list_headers_pass_validation():
    second_via = "v: SIP/2.0/UDP p.example.test;branch=z9hG4bK2"
    req = parse_message(
        register(
            (None, "Contact: <sip:alice@192.0.2.11>"),
            ("Via", REGISTER_LINES[1] + CRLF + second_via),
        )
    )
    req.validate()
    assert len(req.contacts) == 2 and len(req.vias) == 2


# -- make_response ------------------------------------------------------------


def test_make_response_copies_the_right_headers():
    req = parse_message(
        register(
            (
                "Via",
                CRLF.join(
                    [
                        "Via: SIP/2.0/UDP proxy.example.test;branch=z9hG4bK1, SIP/2.0/TCP p2.example.test;branch=z9hG4bK2",
                        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport",
                    ]
                ),
            )
        )
    )
    req.validate()
    resp = make_response(
        req, 200, headers=[("Expires", "3600"), ("m", "<sip:alice@192.0.2.10>")], to_tag="as8d7f"
    )
    wire = resp.encode()
    back = parse_message(wire)
    back.validate()
    assert (back.status, back.reason) == (200, "OK")
    assert back.raw_values("via") == req.raw_values("via")
    assert [v.branch for v in back.vias] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK776asdhds"]
    assert (
        back.get("from") == req.get("from")
        and back.call_id == req.call_id
        and back.cseq == req.cseq
    )
    assert back.to.tag == "as8d7f" and back.to.uri == req.to.uri
    assert back.get("contact") == "<sip:alice@192.0.2.10>" and back.get("expires") == "3600"
    assert back.get("user-agent") is None and back.get("max-forwards") is None
    assert wire.endswith(b"Content-Length: 0\r\n\r\n")


def test_make_response_keeps_an_existing_to_tag():
    for to in ["To: <sip:alice@example.test>;tag=abc", "To: <sip:alice@example.test> ;\tTAG = abc"]:
        req = parse_message(register(("To", to)))
        assert make_response(req, 200, to_tag="new").get("to") == req.get("to")


def test_make_response_tag_inside_uri_is_not_a_to_tag():
    req = parse_message(register(("To", "To: <sip:alice@example.test;tag=uri-param>")))
    assert make_response(req, 200, to_tag="new").to.tag == "new"


def test_make_response_no_tag_on_100():
    req = parse_message(register())
    assert make_response(req, 100, to_tag="new").to.tag is None
    assert make_response(req, 100).reason == "Trying"


def test_make_response_tags_each_to_without_one():
    """A request with two To headers is invalid, yet its error response copies both."""
    untagged, tagged = "<sip:alice@example.test>", "<sip:alice@example.test>;tag=abc"
    for first, second in [(untagged, tagged), (tagged, untagged), (untagged, untagged)]:
        req = parse_message(register(("To", f"To: {first}"), (None, f"t: {second}")))
        assert req.to.tag == ("abc" if first == tagged else None)
        values = make_response(req, 400, to_tag="new").raw_values("to")
        assert values == [v if v == tagged else v + ";tag=new" for v in (first, second)]
        assert make_response(req, 400).raw_values("to") == [first, second]


def test_make_response_names_extra_headers_as_add_does():
    names = set(CANONICAL) | set(CANONICAL.values()) | {n.upper() for n in CANONICAL.values()}
    names |= {"X-Custom", "x-custom", "Max-forwards", "WWW-AUTHENTICATE"}
    req = parse_message(register())
    for name in sorted(names):
        resp = make_response(req, 200, headers=[(name, "v")])
        ref = Response(200)
        ref.add(name, "v")
        assert resp.headers[-1] == ref.headers[0], name


# -- invalid requests: each gets its answer -----------------------------------

INVALID_REQUESTS = [
    # (id, message, status, words in the reason)
    (
        "negative-content-length",
        register(("Content-Length", "Content-Length: -999")),
        400,
        "malformed Content-Length",
    ),
    (
        "non-numeric-content-length",
        register(("Content-Length", "Content-Length: zero")),
        400,
        "malformed Content-Length",
    ),
    (
        "unicode-digit-content-length",
        register(("Content-Length", "Content-Length: \u00b2")),
        400,
        "malformed Content-Length",
    ),
    (
        "huge-content-length",
        register(("Content-Length", "Content-Length: " + "9" * 5000)),
        400,
        "Content-Length out of range",
    ),
    (
        "body-shorter-than-content-length",
        register(("Content-Length", "Content-Length: 9999"), body=b"v=0\r\ns=-\r\n"),
        400,
        "body shorter than Content-Length",
    ),
    (
        "two-content-lengths",
        register((None, "l: 8"), body=b"12345678"),
        400,
        "more than one Content-Length",
    ),
    ("missing-to", register(("To", None)), 400, "missing To header"),
    ("missing-from", register(("From", None)), 400, "missing From header"),
    ("missing-call-id", register(("Call-ID", None)), 400, "missing Call-ID header"),
    ("missing-cseq", register(("CSeq", None)), 400, "missing CSeq header"),
    ("missing-via", register(("Via", None)), 400, "missing Via header"),
    ("empty-call-id", register(("Call-ID", "Call-ID:  ")), 400, "empty Call-ID"),
    ("cseq-not-a-number", register(("CSeq", "CSeq: abc REGISTER")), 400, "malformed CSeq"),
    (
        "cseq-unicode-digits",
        register(("CSeq", "CSeq: \u0661\u0662 REGISTER")),
        400,
        "malformed CSeq",
    ),
    ("cseq-2**31", register(("CSeq", "CSeq: 2147483648 REGISTER")), 400, "CSeq number too large"),
    (
        "cseq-overlarge",
        register(("CSeq", "CSeq: 36893488147419103232 REGISTER")),
        400,
        "CSeq number too large",
    ),
    (
        "cseq-5000-digits",
        register(("CSeq", "CSeq: " + "7" * 5000 + " REGISTER")),
        400,
        "CSeq number too large",
    ),
    ("cseq-negative", register(("CSeq", "CSeq: -1 REGISTER")), 400, "malformed CSeq"),
    ("cseq-without-method", register(("CSeq", "CSeq: 1")), 400, "malformed CSeq"),
    ("cseq-separators", register(("CSeq", "CSeq: 8;; REGISTER")), 400, "malformed CSeq"),
    (
        "cseq-method-mismatch",
        register(("CSeq", "CSeq: 314159 INVITE")),
        400,
        "CSeq method does not match the request method",
    ),
    (
        "unknown-method-mismatch",
        register(start="NEWMETHOD sip:example.test SIP/2.0"),
        400,
        "CSeq method does not match",
    ),
    (
        "max-forwards-not-a-number",
        register(("Max-Forwards", "Max-Forwards: seventy")),
        400,
        "malformed Max-Forwards",
    ),
    (
        "max-forwards-256",
        register(("Max-Forwards", "Max-Forwards: 256")),
        400,
        "Max-Forwards out of range",
    ),
    (
        "max-forwards-negative",
        register(("Max-Forwards", "Max-Forwards: -1")),
        400,
        "malformed Max-Forwards",
    ),
    ("two-to", register((None, "To: sip:other@example.net")), 400, "more than one To header"),
    (
        "two-from",
        register((None, "f: sip:caller@example.net;tag=2")),
        400,
        "more than one From header",
    ),
    ("two-call-id", register((None, "i: other@192.0.2.2")), 400, "more than one Call-ID header"),
    ("two-cseq", register((None, "CSeq: 59 REGISTER")), 400, "more than one CSeq header"),
    (
        "two-max-forwards",
        register((None, "Max-Forwards: 5")),
        400,
        "more than one Max-Forwards header",
    ),
    ("sip-3.0", register(start="REGISTER sip:example.test SIP/3.0"), 505, "Version Not Supported"),
    ("sip-7.0-lower-case", register(start="REGISTER sip:example.test sip/7.0"), 505, "Version"),
    (
        "unknown-scheme-request-uri",
        register(start="REGISTER nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0"),
        416,
        "Unsupported URI Scheme",
    ),
    (
        "atypical-scheme-request-uri",
        register(start="REGISTER soap.beep://192.0.2.103:3002 SIP/2.0"),
        416,
        "Unsupported URI Scheme",
    ),
    (
        "angle-brackets-around-request-uri",
        register(start="REGISTER <sip:example.test> SIP/2.0"),
        400,
        "bad Request-URI",
    ),
    (
        "headers-in-request-uri",
        register(start="REGISTER sip:example.test?Route=%3Csip:example.test%3E SIP/2.0"),
        400,
        "headers in the Request-URI",
    ),
    (
        "bad-port-in-request-uri",
        register(start="REGISTER sip:example.test:99999 SIP/2.0"),
        400,
        "bad Request-URI: bad port",
    ),
    (
        "whitespace-in-request-uri",
        register(start="REGISTER sip:example.test; lr SIP/2.0"),
        400,
        "whitespace in Request-URI",
    ),
    (
        "two-spaces-in-request-line",
        register(start="REGISTER  sip:example.test  SIP/2.0"),
        400,
        "extra whitespace in request line",
    ),
    (
        "trailing-space-in-request-line",
        register(start="REGISTER sip:example.test SIP/2.0 "),
        400,
        "extra whitespace in request line",
    ),
    (
        "tabs-in-request-line",
        register(start="REGISTER\tsip:example.test\tSIP/2.0"),
        400,
        "extra whitespace in request line",
    ),
    (
        "unterminated-quote-in-to",
        register(("To", 'To: "Mr. J. User <sip:j.user@example.test>')),
        400,
        "bad To header: unterminated quoted string",
    ),
    (
        "unquoted-display-with-comma",
        register(("From", "From: Bell, Alexander <sip:bell@example.test>;tag=43")),
        400,
        "bad From header: display name with separators must be quoted",
    ),
    (
        "unknown-scheme-in-from",
        register(("From", "From: <http://example.test/>;tag=1")),
        400,
        "bad From header: unsupported URI scheme 'http'",
    ),
    (
        "unterminated-angle-in-to",
        register(("To", "To: <sip:alice@example.test")),
        400,
        "bad To header: unterminated <URI>",
    ),
    ("via-garbage", register(("Via", "Via: garbage")), 400, "malformed Via"),
    (
        "via-bad-port",
        register(("Via", "Via: SIP/2.0/UDP 192.0.2.10:99999;branch=z9hG4bKx")),
        400,
        "malformed Via: bad port",
    ),
    (
        "via-bad-ipv6",
        register(("Via", "Via: SIP/2.0/UDP [2001:db8::1;branch=z9hG4bKx")),
        400,
        "malformed Via",
    ),
    (
        "via-bad-version",
        register(("Via", "Via: SIP/3.0/UDP 192.0.2.10;branch=z9hG4bKx")),
        400,
        "malformed Via",
    ),
    (
        "header-line-without-colon",
        register(start=REGISTER_LINES[0] + "\r\nNoColonHere"),
        400,
        "header line without a colon",
    ),
    ("bad-header-name", register((None, "Bad Name: x")), 400, "bad header name 'Bad Name'"),
    (
        "folded-line-before-any-header",
        register(start=REGISTER_LINES[0] + "\r\n folded"),
        400,
        "folded line without a header",
    ),
    (
        "nul-in-header",
        register(("User-Agent", "User-Agent: Tan\x00dem")),
        400,
        "control character in a header line",
    ),
    (
        "nul-after-quoted-backslash",
        register(("To", 'To: "a\\\\\x00" <sip:alice@example.test>')),
        400,
        "control character in a header line",
    ),
    (
        "nul-quoted-outside-quotes",
        register(("To", "To: \\\x00 <sip:alice@example.test>")),
        400,
        "control character in a header line",
    ),
    (
        "nul-quoted-in-a-kept-header",
        register(("User-Agent", 'User-Agent: "\\\x00"')),
        400,
        "control character in a header line",
    ),
    (
        "nul-quoted-in-an-instance",
        register(
            ("Contact", 'Contact: <sip:alice@192.0.2.10>;+sip.instance="<urn:\\\x00>";reg-id=1')
        ),
        400,
        "control character in a header line",
    ),
    (
        "bare-lf-header-injection",
        register(("User-Agent", "User-Agent: x\nVia: SIP/2.0/UDP evil.test;branch=z9hG4bKevil")),
        400,
        "control character in a header line",
    ),
    ("bare-cr-in-header", register(("User-Agent", "User-Agent: a\rb")), 400, "control character"),
    (
        "nul-in-request-line",
        register(start="REGISTER sip:exa\x00mple.test SIP/2.0"),
        400,
        "control character in the start line",
    ),
    ("no-empty-line-after-headers", register()[:-4], 400, "no empty line after the header section"),
]


@pytest.mark.parametrize(
    "data, status, words",
    [case[1:] for case in INVALID_REQUESTS],
    ids=[case[0] for case in INVALID_REQUESTS],
)
def test_invalid_request_gets_its_response(data, status, words):
    err, answer = reject(data, status, words)
    for key, value in COPIED.items():
        # Via, From, To, Call-ID and CSeq are copied as written, even when malformed.
        assert answer.raw_values(key) == err.request.raw_values(key), key
        line = next(line for line in REGISTER_LINES if line.lower().startswith(key + ":"))
        if f"\r\n{line}\r\n".encode() in data:
            assert value in answer.raw_values(key), key
    assert b"evil" not in answer.encode() and b"\x00" not in answer.encode()
    assert answer.get("user-agent") is None and answer.get("contact") is None


def test_every_answer_carries_via_call_id_and_cseq_unless_missing():
    lacking = set()
    for name, data, status, words in INVALID_REQUESTS:
        answer = reject(data, status, words)[1]
        if not (answer.get("via") and answer.get("call-id") and answer.get("cseq")):
            lacking.add(name)
    assert lacking == {"missing-via", "missing-call-id", "missing-cseq", "empty-call-id"}


def test_lone_start_line():
    for data in [
        b"REGISTER sip:example.test SIP/2.0\r\n",
        b"REGISTER sip:example.test SIP/2.0\r\n\r\n",
    ]:
        _err, answer = reject(data, 400, "missing Via header")
        assert answer.headers == [["content-length", "Content-Length", "0"]]
    with pytest.raises(SipParseError) as exc:
        parse_message(b"REGISTER sip:example.test SIP/2.0")
    assert exc.value.reason == "no empty line after the header section"


def test_bare_cr_or_lf_anywhere_is_found():
    reject(
        register(start="REGISTER sip:exa\rmple.test SIP/2.0"),
        400,
        "control character in the start line",
    )
    reject(
        register(start="REGISTER sip:exa\nmple.test SIP/2.0"),
        400,
        "control character in the start line",
    )
    reject(register()[:-4] + b"\r\r\n\r\n", 400, "control character in a header line")
    reject(register(("Expires", "Expires: 3600\n")), 400, "control character in a header line")
    reject(register(("Expires", "\rExpires: 3600")), 400, "control character in a header line")


def test_error_response_with_to_tag():
    err, _ = reject(register(("CSeq", "CSeq: 1 INVITE")), 400, "CSeq method")
    answer = parse_message(error_response(err.request, err, to_tag="err1").encode())
    assert answer.to.tag == "err1"


def test_error_with_extra_headers():
    req = parse_message(register())
    err = SipError(423, "Interval Too Brief", [("Min-Expires", "60")])
    answer = parse_message(error_response(req, err).encode())
    assert (answer.status, answer.reason, answer.get("min-expires")) == (
        423,
        "Interval Too Brief",
        "60",
    )


@pytest.mark.parametrize(
    "data",
    [
        b"REGISTER sip:example.test\r\n\r\n",
        b"REGISTER\r\n\r\n",
        b"REG@STER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
        b"REGISTER sip:example.test HTTP/1.1\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n",
        b"REGISTER sip:example.test; lr\r\n\r\n",
    ],
)
def test_unanswerable_requests(data):
    with pytest.raises(SipError) as exc:
        parse_message(data).validate()
    assert exc.value.status == 400 and exc.value.request is None


# -- invalid responses: dropped -----------------------------------------------

RESPONSE_REST = [
    "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKa",
    "To: <sip:a@example.test>;tag=1",
    "From: <sip:a@example.test>;tag=2",
    "Call-ID: c",
    "CSeq: 1 INVITE",
]


@pytest.mark.parametrize(
    "start, rest, body",
    [
        ("SIP/2.0 4294967301 better not break the receiver", RESPONSE_REST, b""),
        ("SIP/2.0 99 Too Low", RESPONSE_REST, b""),
        ("SIP/2.0 700 Too High", RESPONSE_REST, b""),
        ("SIP/2.0 2OO OK", RESPONSE_REST, b""),
        ("SIP/2.0 \u00b2\u00b2\u00b2 OK", RESPONSE_REST, b""),
        ("SIP/2.0  200 OK", RESPONSE_REST, b""),
        ("SIP/3.0 200 OK", RESPONSE_REST, b""),
        ("SIP/2.0", RESPONSE_REST, b""),
        ("SIP/2.0 200 OK", RESPONSE_REST[1:], b""),
        ("SIP/2.0 200 OK", RESPONSE_REST[:-1] + ["CSeq: 36893488147419103232 INVITE"], b""),
        ("SIP/2.0 200 OK", RESPONSE_REST + ["Content-Length: 10"], b"short"),
        ("SIP/2.0 200 OK", RESPONSE_REST + ["Content-Length: 1", "Content-Length: 1"], b"x"),
        ("SIP/2.0 200 OK", RESPONSE_REST + ["No colon"], b""),
        ("SIP/2.0 200 OK", ["Via: SIP/2.0/UDP [::1"] + RESPONSE_REST[1:], b""),
    ],
)
def test_malformed_response_is_dropped(start, rest, body):
    with pytest.raises(SipError) as exc:
        parse_message(build([start] + rest, body)).validate()
    assert exc.value.request is None


def test_quoted_pair_nul_in_a_display_name():
    # RFC 4475 §3.1.1.2: a quoted string may hold "\\" and a NUL; a NUL elsewhere is refused.
    req = parse_message(register(("To", 'To: "a\\\x00b" <sip:alice@example.test>')))
    req.validate()
    assert req.to.name == "a\x00b"
    assert parse_message(req.encode()).to.name == "a\x00b"


# -- garbage never crashes ------------------------------------------------------

GARBAGE = [
    b"",
    b"\r\n",
    b"\r\n" * 50,
    b"\n\n\n\n",
    b"\r\r\r\r",
    b"\x00" * 100,
    b" " * 40,
    b"\t\r\n\r\n",
    b"\xff\xfe\xfd\xfc\r\n\r\n",
    b"\xc3\x28\xa0\xa1\r\n\xe2\x82\r\n\r\n",
    b"SIP/2.0\r\n\r\n",
    b"SIP/2.0 \r\n\r\n",
    b"SIP/\r\n\r\n",
    b": \r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\n:\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\n \r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nVia:\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nContact: <\r\n\r\n",
    b'INVITE sip:a@b SIP/2.0\r\nTo: "\r\n\r\n',
    b'INVITE sip:a@b SIP/2.0\r\nTo: "\\\r\n\r\n',
    b"INVITE sip:a@b SIP/2.0\r\nCSeq: \r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nl: \xff\r\n\r\n",
    b"INVITE : SIP/2.0\r\n\r\n",
    b"INVITE sip: SIP/2.0\r\n\r\n",
    b"INVITE sip:@ SIP/2.0\r\n\r\n",
    b"INVITE sip:[ SIP/2.0\r\n\r\n",
    b"INVITE tel: SIP/2.0\r\n\r\n",
    b"\x00INVITE sip:a@b SIP/2.0\r\n\r\n",
    "INVITE sip:\u00e4@\u00e4 SIP/2.0\r\n\r\n".encode(),
]


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_never_crashes(data):
    assert isinstance(process(data), SipError)


def test_random_binary_never_crashes():
    rng = random.Random(4475)
    for _ in range(2000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        if rng.random() < 0.5:
            data += b"\r\n\r\n" + data
        process(data)


# -- property-style fuzzing ---------------------------------------------------

INTERESTING = [
    b"\r\n",
    b"\r\n ",
    b"\r\n\r\n",
    b"\x00",
    b"\r",
    b"\n",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b"%",
    b"@",
    b"[",
    b"]",
    b"?",
    b"=",
    b"/",
    b"*",
    b"\xff",
    b"\xc3",
    "\u2028".encode(),
    "\u00b2".encode(),
    "\u0661".encode(),
    b"9" * 30,
    b"-",
    b"SIP/2.0",
    b"0",
    b"sip:",
    b"tel:",
    b";tag=",
    b";branch=z9hG4bK",
    b"Content-Length: 99",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.choice(INTERESTING)
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 12)]
        elif op == 3:
            del buf[pos:]
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 60)]
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 5)))
    return bytes(buf)


def fuzz_seeds() -> list[bytes]:
    invite, _ = torture_invite()
    response = build(
        ["SIP/2.0 200 OK"]
        + RESPONSE_REST
        + [
            'Contact: "A" <sip:a@[2001:db8::1]:5060;transport=tcp>;q=0.5;expires=60, <tel:+1-201-555-0123>',
            "Via: SIP/2.0/TCP p.example.test;received=192.0.2.1;rport=5060",
            "Content-Length: 3",
        ],
        b"abc",
    )
    return [
        register(),
        invite,
        response,
        register(
            ("Contact", "Contact: *"),
            ("Expires", "Expires: 0"),
            (None, "Path: <sip:p.example.test;lr>"),
        ),
        register(("Content-Length", "Content-Length: 10"), body=b"0123456789"),
    ]


@pytest.mark.parametrize("seed", range(5))
def test_fuzzed_messages_only_raise_sip_errors(seed):
    rng = random.Random(seed)
    base = fuzz_seeds()[seed]
    outcomes = {"ok": 0, "answered": 0, "dropped": 0}
    for _ in range(1500):
        result = process(mutate(rng, base))
        if isinstance(result, SipError):
            outcomes["answered" if result.request is not None else "dropped"] += 1
        else:
            outcomes["ok"] += 1
    assert outcomes["ok"] and outcomes["dropped"], outcomes
    assert outcomes["answered"] or base.startswith(b"SIP/2.0 "), outcomes


# -- response_bytes: make_response(...).encode() without the Response ----------


def parsed_request(data: bytes) -> tuple[Request | None, SipError | None]:
    """A fresh parse of ``data``: the request (or the request its error carries) and the error."""
    try:
        msg = parse_message(data)
        msg.validate()
    except SipError as err:
        return err.request, err
    return (msg, None) if isinstance(msg, Request) else (None, None)


def response_corpus() -> list[bytes]:
    """Requests valid, malformed and odd, each to be answered."""
    invite, _ = torture_invite()
    many = [(None, f'X-Header-{i}: value {i};p="q, r"') for i in range(60)]
    return [
        register(),
        invite,
        register(*many),
        register(
            (
                "Via",
                CRLF.join(
                    [
                        "Via: SIP/2.0/UDP proxy.example.test;branch=z9hG4bK1, SIP/2.0/TCP p2.example.test;branch=z9hG4bK2",
                        "v: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.10",
                        "VIA : SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK3",
                    ]
                ),
            )
        ),
        register(("To", "To: <sip:alice@example.test>;tag=abc")),
        register(("To", "t: <sip:alice@example.test> ;\tTAG = abc")),
        register(("To", "To: <sip:alice@example.test;tag=uri-param>")),
        register(("To", 'To: "Mr. J. User <sip:j.user@example.test>')),
        register(("To", "To: garbage;tag=x")),
        register(
            ("To", "To: <sip:alice@example.test>"), (None, "t: <sip:alice@example.test>;tag=abc")
        ),
        register(("To", "To: <sip:alice@example.test>;tag=abc"), (None, "TO: <http://x>")),
        register(("To", "To: <http://x>"), (None, "to: <sip:alice@example.test>")),
        register(
            ("From", 'From: "\u00c5lice \u2603" <sip:alice@example.test>;tag=\u00e9'),
            ("To", "To: <sip:\u00e5@example.test>"),
        ),
        register(
            ("Call-ID", "Call-ID: \udcff\udcfe@example.test"), ("To", "To: <sip:a@b>;x=\udce9")
        ),
        register(("CSeq", "cseq: 7 REGISTER"), ("Call-ID", "i: compact@example.test")),
        register(("Content-Length", "Content-Length: 5"), body=b"hello"),
        register(("Via", None), ("CSeq", None)),
        b"REGISTER sip:example.test SIP/2.0\r\n\r\n",
        b"OPTIONS sip:\xff@example.test SIP/2.0\r\nTo: <sip:\xfe@example.test>\r\nVia: SIP/2.0/UDP h\r\n\r\n",
        *(case[1] for case in INVALID_REQUESTS),
        *(data for data in GARBAGE if parsed_request(data)[0] is not None),
    ]


#: (status, reason, to_tag) combinations answered with
RESPONSE_KINDS = [
    (100, None, "t1"),
    (180, None, None),
    (200, "OK", "as8d7f"),
    (401, "Unauthorized", "x"),
    (400, "", "x"),
    (299, None, ""),
    (101, "D\u00e9j\u00e0", "t\u00e9"),
    (699, "Six", "z"),
]
#: extra header lists, with names in every spelling make_response accepts
RESPONSE_HEADERS = [
    (),
    [
        ("Contact", "<sip:user1@127.0.0.1:5555;transport=UDP>;expires=3600"),
        ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
    ],
    [("WWW-Authenticate", 'Digest realm="example.test", nonce="' + "n" * 48 + '", qop="auth"')] * 2,
    [
        ("m", "<sip:a@b>"),
        ("l", "99"),
        ("CONTENT-LENGTH", "5"),
        ("Content-Length", "0"),
        ("x-custom", "v"),
        ("Max-forwards", "70"),
        ("i", "other"),
        ("t", "<sip:t@example.test>"),
        ("WWW-AUTHENTICATE", ""),
        ("X-\u00dcnicode", "v\udcff\u2603"),
        ("v", "SIP/2.0/UDP h"),
        ("Min-Expires", 60),
    ],
]


def _make_response_reference(req, status, reason=None, headers=(), body=b"", to_tag=None):
    """``make_response`` as it was, on a scanned copy of the fields."""
    out = [[h[0], h[1], h[2]] for h in req.headers if h[0] in message._COPIED]
    if to_tag:
        first = True
        for h in out:
            if h[0] == "to":
                if status > 100 and not message._has_tag(req, h[2], first):
                    h[2] = f"{h[2]};tag={to_tag}"
                first = False
    for name, value in headers:
        known = message._NAMES.get(name) or (message._key(name), message._display(name))
        out.append([known[0], known[1], value])
    return Response(status, reason, out, body)


def assert_same_response(data: bytes, status, reason, headers, body, to_tag) -> None:
    """response_bytes, make_response(...).encode() and the previous make_response agree,
    and leave the request alike."""
    fast, err = parsed_request(data)
    slow, _ = parsed_request(data)
    old, _ = parsed_request(data)
    wire = response_bytes(fast, status, reason, headers, body, to_tag)
    assert wire == make_response(slow, status, reason, headers, body, to_tag).encode()
    assert wire == _make_response_reference(old, status, reason, headers, body, to_tag).encode()
    assert list(fast._cache) == list(slow._cache) == list(old._cache)
    if err is not None:
        assert error_response_bytes(fast, err, to_tag) == error_response(slow, err, to_tag).encode()


@pytest.mark.parametrize("data", response_corpus())
def test_response_bytes_equals_make_response_encoded(data):
    for status, reason, to_tag in RESPONSE_KINDS:
        for headers in RESPONSE_HEADERS:
            for body in (b"", b"v=0\r\n\xff"):
                assert_same_response(data, status, reason, headers, body, to_tag)


def test_response_bytes_defaults():
    req = parse_message(register())
    assert response_bytes(req, 200) == make_response(req, 200).encode()
    assert response_bytes(req, 487).startswith(b"SIP/2.0 487 Request Terminated\r\nVia: ")


def test_error_response_bytes_equals_error_response_encoded():
    for data in [register()] + [case[1] for case in INVALID_REQUESTS]:
        req, _ = parsed_request(data)
        for err in [
            SipError(423, "Interval Too Brief", [("Min-Expires", "60")]),
            SipError(500, "Database Unavailable", [("Retry-After", "5"), ("l", "7")]),
            SipParseError("bad \udcff thing"),
        ]:
            for to_tag in (None, "e1"):
                assert (
                    error_response_bytes(req, err, to_tag)
                    == error_response(req, err, to_tag).encode()
                )


_HEADER_NAMES = st.sampled_from(
    [
        "Via",
        "v",
        "VIA",
        "To",
        "t",
        "TO",
        "From",
        "f",
        "Call-ID",
        "i",
        "CSeq",
        "cseq",
        "Contact",
        "m",
        "Content-Length",
        "l",
        "Max-Forwards",
        "X-Odd",
        "x-odd",
        "Expires",
        "Bad Name",
        "",
    ]
)
_HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            "<sip:a@example.test>",
            "<sip:a@example.test>;tag=1",
            "sip:a@b ; TAG = 2",
            "<sip:a@example.test;tag=u>",
            '"unterminated <sip:a@b>',
            "<http://x>",
            "",
            "SIP/2.0/UDP h;branch=z9hG4bK1;rport",
            "SIP/2.0/UDP a, SIP/2.0/TCP b",
            "1 REGISTER",
            "c@h",
            "0",
            "5",
            " folded",
        ]
    ).map(str.encode),
    st.binary(max_size=16).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=16
    ).map(str.encode),
)
_SEPARATORS = st.sampled_from([b": ", b":", b" : ", b"\t:\t"])
_START_LINES = st.sampled_from(
    [
        b"REGISTER sip:example.test SIP/2.0",
        b"INVITE sip:a@b SIP/2.0",
        b"OPTIONS  sip:x  SIP/2.0",
        b"REGISTER sip:x SIP/3.0",
    ]
)
_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12
)


@settings(max_examples=400, deadline=None)
@given(
    _START_LINES,
    st.lists(st.tuples(_HEADER_NAMES.map(str.encode), _SEPARATORS, _HEADER_VALUES), max_size=12),
    st.binary(max_size=8),
    st.one_of(st.integers(100, 699), st.sampled_from([100, 101, 200, 401])),
    st.one_of(st.none(), _TEXT),
    st.lists(st.tuples(st.one_of(_HEADER_NAMES, _TEXT.filter(bool)), _TEXT), max_size=4),
    st.binary(max_size=8),
    st.one_of(st.none(), st.just(""), st.text("abc123", min_size=1, max_size=8)),
)
def test_generated_requests_get_the_same_response_bytes(
    start, lines, tail, status, reason, headers, body, to_tag
):
    data = (
        b"\r\n".join([start] + [name + sep + value for name, sep, value in lines])
        + b"\r\n\r\n"
        + tail
    )
    assert parsed_request(data)[0] is not None
    assert_same_response(data, status, reason, headers, body, to_tag)


# -- StreamFramer ---------------------------------------------------------------


def framed_messages() -> list[bytes]:
    invite, _ = torture_invite()
    return [register(), invite, register(("Content-Length", "Content-Length: 5"), body=b"hello")]


def test_framer_one_message():
    f = StreamFramer()
    assert f.feed(register()) == [register()]
    assert f.buf == b""


def test_framer_split_at_every_byte():
    for data in framed_messages():
        for i in range(len(data) + 1):
            f = StreamFramer()
            assert f.feed(data[:i]) + f.feed(data[i:]) == [data], i
            assert f.buf == b""


def test_framer_one_byte_at_a_time():
    stream = b"".join(framed_messages())
    f = StreamFramer()
    out = []
    for i in range(len(stream)):
        out += f.feed(stream[i : i + 1])
    assert out == framed_messages()


def test_framer_several_messages_in_one_chunk():
    msgs = framed_messages()
    f = StreamFramer()
    assert f.feed(b"".join(msgs) + msgs[0][:10]) == msgs
    assert f.feed(msgs[0][10:]) == [msgs[0]]
    for data in msgs:
        parse_message(data, stream=True).validate()


def test_framer_keepalives():
    f = StreamFramer()
    msg = register()
    assert f.feed(b"\r\n\r\n") == [StreamFramer.PING]
    assert f.feed(b"\r\n") == []
    assert f.feed(b"\r\n" + msg + b"\r\n\r\n") == [StreamFramer.PING, msg, StreamFramer.PING]
    assert f.feed(b"\r\n" + msg) == [msg]  # a lone CRLF before a message is skipped
    assert f.feed(b"\r") == [] and f.feed(b"\n\r") == [] and f.feed(b"\n") == [StreamFramer.PING]


def test_framer_missing_content_length_means_no_body():
    first = register(("Content-Length", None))
    f = StreamFramer()
    assert f.feed(first + register()) == [first, register()]


def test_framer_folded_and_compact_content_length():
    folded = register(("Content-Length", "Content-Length:\r\n 3"), body=b"abc")
    compact = register(("Content-Length", "l: 2"), body=b"xy")
    tricky = register(("User-Agent", "User-Agent: a\r\n l: 99"), body=b"")
    f = StreamFramer()
    assert f.feed(folded + compact + tricky) == [folded, compact, tricky]
    assert parse_message(folded, stream=True).body == b"abc"


def test_framer_oversized_header_section():
    f = StreamFramer(max_header=1000)
    with pytest.raises(SipParseError) as exc:
        f.feed(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"a" * 2000)
    assert "too large" in exc.value.reason
    f = StreamFramer(max_header=1000)
    with pytest.raises(SipParseError):
        f.feed(register(("User-Agent", "User-Agent: " + "a" * 2000)))
    f = StreamFramer(max_header=1000)
    with pytest.raises(SipParseError):
        for _i in range(1100):
            f.feed(b"a")


def test_framer_oversized_body():
    f = StreamFramer(max_body=100)
    with pytest.raises(SipParseError) as exc:
        f.feed(register(("Content-Length", "Content-Length: 101")))
    assert "body too large" in exc.value.reason


@pytest.mark.parametrize("value", ["-1", "abc", "\u00b2", "9" * 5000, "1 2", ""])
def test_framer_bad_content_length(value):
    with pytest.raises(SipParseError):
        StreamFramer().feed(register(("Content-Length", f"Content-Length: {value}")))


def test_framer_two_content_lengths():
    with pytest.raises(SipParseError) as exc:
        StreamFramer().feed(register((None, "l: 0")))
    assert "more than one Content-Length" in exc.value.reason


def test_framer_fuzzed_streams_only_raise_sip_errors():
    rng = random.Random(3261)
    stream = b"\r\n\r\n".join(framed_messages())
    for _ in range(300):
        data = mutate(rng, stream)
        f = StreamFramer(max_header=4096, max_body=4096)
        try:
            pos = 0
            while pos < len(data):
                step = rng.randint(1, 200)
                for msg in f.feed(data[pos : pos + step]):
                    if msg != StreamFramer.PING:
                        process(msg)
                pos += step
        except SipParseError:
            pass


# -- shortcuts: each gives what the general path gives ---------------------------
#
# ``_plain_fields`` reads header lines of the usual form, ``_parse_headers``
# any line; ``_start_line`` reads the usual request line, ``_start_line_general``
# any; a parsed message's ``Headers`` are found through their index, a plain
# list of fields by scanning it; ``_set_body``, ``make_response`` and
# ``response_bytes`` are checked against their previous versions, kept here.


def _lines(data: bytes) -> list[str]:
    return data.split(b"\r\n\r\n")[0].decode("utf-8", "surrogateescape").split("\r\n")


_NAMES_AS_WRITTEN = st.sampled_from(
    [
        "Via",
        "v",
        "VIA",
        "via",
        "To",
        "t",
        "From",
        "f",
        "Call-ID",
        "call-id",
        "Call-Id",
        "i",
        "CSeq",
        "Contact",
        "m",
        "Content-Length",
        "l",
        "Max-Forwards",
        "Expires",
        "X-Odd",
        "x-odd",
        "P-Asserted-Identity",
        "Bad Name",
        "",
        " Via",
        "\tTo",
        "Via ",
        "X:Y",
        "\u00e9t\u00e9",
        "!%*_+`'~.-",
        "Route",
    ]
)
_SEPARATORS_AS_WRITTEN = st.sampled_from([": ", ":", " : ", ":  ", ":\t", "", " "])
_VALUES_AS_WRITTEN = st.sampled_from(
    [
        "",
        " ",
        "x",
        "x ",
        " x",
        "\tx\t",
        "<sip:a@b>;tag=1",
        "a: b",
        "a:b",
        "SIP/2.0/UDP h;branch=z9hG4bK1",
        "a, b",
        "\u00a0x\u00a0",
        "x\x0b",
        "\x1cx",
        "\u00e9",
        "0",
        "70",
        "1 REGISTER",
    ]
)
_HEADER_LINES = st.lists(
    st.tuples(_NAMES_AS_WRITTEN, _SEPARATORS_AS_WRITTEN, _VALUES_AS_WRITTEN).map("".join),
    max_size=10,
)
#: lines all of the form the shortcut reads
_PLAIN_LINES = st.lists(
    st.tuples(_NAMES_AS_WRITTEN.filter(lambda n: n and is_token(n)), _VALUES_AS_WRITTEN).map(
        ": ".join
    ),
    max_size=10,
)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_HEADER_LINES, _PLAIN_LINES), st.booleans())
def test_plain_fields_read_what_parse_headers_reads(lines, odd_line_last):
    lines = ["REGISTER sip:example.test SIP/2.0"] + lines
    if odd_line_last:
        lines.append("Odd line")
    headers = message._plain_fields(lines)
    if headers is None:
        plain = all(is_token(line.partition(": ")[0]) and ": " in line for line in lines[1:])
        assert not plain
        return
    general, problem = message._parse_headers(lines, False)
    assert problem is None and headers == general
    assert type(headers) is message.Headers
    if headers.first is not None:  # indexed as it was read: as reindex would
        first, repeated = headers.first, headers.repeated
        assert first == headers.reindex() and repeated == headers.repeated == set()


def test_plain_fields_read_the_usual_messages():
    for data in [
        register(),
        register((None, "X-Odd: 1"), ("To", "To: <sip:a@b>")),
        torture_invite()[0],
    ]:
        lines = _lines(data)
        if any(line[:1] in (" ", "\t") for line in lines):
            assert message._plain_fields(lines) is None
            continue
        assert message._plain_fields(lines) is not None


def test_plain_fields_leave_odd_lines_to_parse_headers():
    for odd in [
        "Via : x",
        "Via:x",
        " folded",
        "no colon",
        ": x",
        "X-A b: 1",
        "\u00e9: 1",
        "Via:: x",
    ]:
        assert message._plain_fields(["REGISTER sip:a SIP/2.0", "To: <sip:a@b>", odd]) is None, odd


_START_LINES_AS_WRITTEN = st.one_of(
    st.tuples(
        st.sampled_from(
            sorted(message.METHODS) + ["FOO", "register", "SIP/2.0", "", "INV ITE", "\u00c9"]
        ),
        st.sampled_from([" ", "  ", "\t"]),
        st.sampled_from(["sip:a@b", "", "sip:a b", "x"]),
        st.sampled_from([" ", "  "]),
        st.sampled_from(["SIP/2.0", "SIP/3.0", "sip/2.0", "HTTP/1.1", "SIP/2.0 ", ""]),
    ).map("".join),
    st.sampled_from(
        ["SIP/2.0 200 OK", "SIP/2.0 180 Ringing extra", "SIP/2.1 200 OK", "SIP/2.0 2000 X"]
    ),
    st.text(max_size=12),
)


def _start_outcome(parse, line):
    try:
        msg = parse(line, [])
    except SipError as err:
        req = err.request
        return ("error", err.status, err.reason, None if req is None else (req.method, req.uri))
    if isinstance(msg, Request):
        return ("request", msg.method, msg.uri)
    return ("response", msg.status, msg.reason)


@settings(max_examples=1500, deadline=None)
@given(_START_LINES_AS_WRITTEN)
def test_start_line_shortcut_reads_what_the_general_path_reads(line):
    assert _start_outcome(message._start_line, line) == _start_outcome(
        message._start_line_general, line
    )


# The ways code outside Message changes a parsed message's fields in place.
_EDITS = [
    lambda h: h.insert(0, ["route", "Route", "<sip:r.example.test;lr>"]),
    lambda h: h.append(["expires", "Expires", "60"]),
    lambda h: h.extend([["contact", "Contact", "<sip:b@h>"], ["path", "Path", "<sip:p;lr>"]]),
    lambda h: h.pop(),
    lambda h: h.pop(0),
    lambda h: h.remove(h[1]),
    lambda h: h.__delitem__(2),
    lambda h: h.__delitem__(slice(1, 3)),
    lambda h: h.__setitem__(0, ["call-id", "Call-ID", "replaced"]),
    lambda h: h.__setitem__(slice(0, 1), [["to", "To", "<sip:x@y>"], ["to", "To", "<sip:z@y>"]]),
    lambda h: h.__iadd__([["require", "Require", "path"]]),
    lambda h: h.__imul__(2),
    lambda h: h.sort(key=lambda f: f[0]),
    lambda h: h.reverse(),
    lambda h: h.clear(),
    lambda h: h[0].__setitem__(2, "changed in place"),
]
_ASKED = [
    "via",
    "To",
    "from",
    "call-id",
    "CSeq",
    "contact",
    "expires",
    "Route",
    "path",
    "require",
    "content-length",
    "x-odd",
]


def _views(req: Request) -> list:
    return [(req.get(n), req.get_all(n), req.raw_values(n)) for n in _ASKED]


@settings(max_examples=800, deadline=None)
@given(st.lists(st.integers(0, len(_EDITS) - 1), max_size=6), st.booleans())
def test_index_follows_direct_changes_of_the_fields(edits, ask_between):
    req = parse_message(register((None, "Contact: <sip:c@h>"), (None, "X-Odd: 1")))
    scanned = Request(req.method, req.uri, list(req.headers))
    assert type(req.headers) is message.Headers and type(scanned.headers) is list
    for i in edits:
        for r in (req, scanned):
            if r.headers:
                _EDITS[i](r.headers)
        if ask_between:
            assert _views(req) == _views(scanned)
    assert req.headers == scanned.headers
    assert _views(req) == _views(scanned)


def test_message_methods_keep_the_index_right():
    req = parse_message(register())
    scanned = Request(req.method, req.uri, [h[:] for h in req.headers])
    for r in (req, scanned):
        r.add("Route", "<sip:a;lr>, <sip:b;lr>")
        r.prepend("Via", "SIP/2.0/UDP p.example.test;branch=z9hG4bK2")
        assert r.pop_first_value("route") == "<sip:a;lr>"
        r.set("Expires", "10")
        r.remove("user-agent")
        r.pop_first_value("via")
    assert req.headers == scanned.headers and _views(req) == _views(scanned)
    assert type(req.headers) is message.Headers


def _set_body_reference(msg, body: bytes, stream: bool) -> None:
    """``_set_body`` as it was: one pass over the fields."""
    clen = None
    for h in msg.headers:
        if h[0] == "content-length":
            if clen is not None:
                raise SipParseError("more than one Content-Length header")
            v = h[2]
            clen = 0 if v == "0" else parse_number(v, "Content-Length", 2**32 - 1)
    if clen is None:
        msg.body = b"" if stream else body
    else:
        if len(body) < clen:
            raise SipParseError("body shorter than Content-Length")
        msg.body = body[:clen]


def _body_outcome(set_body, fields, body, stream):
    msg = Request("OPTIONS", "sip:a", fields)
    try:
        set_body(msg, body, stream)
    except SipError as err:
        return ("error", err.reason)
    return ("ok", msg.body)


@settings(max_examples=800, deadline=None)
@given(
    st.lists(st.sampled_from(["0", "3", "007", "x", "", "99999999999", "5"]), max_size=3),
    st.integers(0, 4),
    st.binary(max_size=6),
    st.booleans(),
)
def test_set_body_as_before(lengths, at, body, stream):
    fields = [["via", "Via", "SIP/2.0/UDP h"], ["to", "To", "<sip:a@b>"]]
    for i, value in enumerate(lengths):
        fields.insert(min(at + i, len(fields)), ["content-length", "Content-Length", value])
    assert _body_outcome(
        message._set_body, message.Headers(f[:] for f in fields), body, stream
    ) == _body_outcome(_set_body_reference, [f[:] for f in fields], body, stream)


def test_first_content_length_error_comes_before_the_repetition():
    reject(
        build(REGISTER_LINES[:-1] + ["Content-Length: x", "l: 0"]), 400, "malformed Content-Length"
    )
    reject(
        build(REGISTER_LINES[:-1] + ["Content-Length: 0", "l: x"]),
        400,
        "more than one Content-Length",
    )


@settings(max_examples=800, deadline=None)
@given(
    st.lists(
        st.sampled_from(["via", "from", "to", "call-id", "cseq", "max-forwards", "contact", "x"]),
        max_size=9,
    )
)
def test_validate_reads_indexed_and_plain_fields_alike(keys):
    values = {
        "via": "SIP/2.0/UDP h;branch=z9hG4bK1",
        "from": "<sip:a@b>;tag=1",
        "to": "<sip:a@b>",
        "call-id": "c1",
        "cseq": "1 OPTIONS",
        "max-forwards": "70",
        "contact": "<sip:a@h>",
        "x": "1",
    }
    fields = [[k, CANONICAL.get(k, k), values[k]] for k in keys]
    outcomes = []
    for headers in (message.Headers(f[:] for f in fields), [f[:] for f in fields]):
        try:
            Request("OPTIONS", "sip:a@b", headers).validate()
            outcomes.append("ok")
        except SipError as err:
            outcomes.append(err.reason)
    assert outcomes[0] == outcomes[1]
    missing = [k for k in ("via", "from", "to", "call-id", "cseq") if k not in keys]
    repeated = [k for k in ("from", "to", "call-id", "cseq", "max-forwards") if keys.count(k) > 1]
    if missing:
        assert outcomes[0] == f"missing {CANONICAL[missing[0]]} header"
    elif repeated:
        assert outcomes[0] == f"more than one {CANONICAL[repeated[0]]} header"
