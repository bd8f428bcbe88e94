"""stamp_via gives what its previous version gave (sipcore.via, RFC 3261 §18.2.1, RFC 3581 §4).

``stamp_via`` writes the stamped top Via's text itself instead of calling
``str(via)``; the previous version is kept here as the reference. Each
case stamps two parses of one request, one with each version, and
compares the header fields, the returned destination, the parsed views
left in ``_cache`` and where ``response_destination`` sends a response.
"""

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from sipcore.errors import SipParseError
from sipcore.headers import parse_via
from sipcore.message import Request, parse_message
from sipcore.via import DEFAULT_PORTS, response_destination, stamp_via


def reference_stamp_via(req, transport, ip, port):
    """``stamp_via`` as it was: parse, change the params, write back ``str(via)``."""
    via = req.top_via
    host = via.host[1:-1] if via.host.startswith("[") else via.host
    params = via.params
    changed = False
    if "rport" in params:
        params["rport"] = str(port)
        params["received"] = ip
        changed = True
    elif host != ip or "received" in params:
        # A received the client wrote is replaced: never where the sender says.
        params["received"] = ip
        changed = True
    if changed:
        req.set_top_via(str(via), via)
    if transport != "udp":
        return (transport, ip, port)
    if "rport" in params:
        return ("udp", ip, port)
    target = params.get("received") or host
    return ("udp", target, via.port or DEFAULT_PORTS.get(via.transport, 5060))


def request(via_lines) -> bytes:
    """A REGISTER whose Via header lines are ``via_lines``."""
    lines = [
        "REGISTER sip:example.test SIP/2.0",
        *via_lines,
        "From: <sip:alice@example.test>;tag=1",
        "To: <sip:alice@example.test>",
        "Call-ID: c1@example.test",
        "CSeq: 1 REGISTER",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def check(data: bytes, transport: str, ip: str, port: int, *, validate: bool, vias: bool):
    """Stamp two parses of ``data``, one with each version; both must end the same."""
    mine, ref = parse_message(data), parse_message(data)
    assert isinstance(mine, Request)
    for req in (mine, ref):
        if validate:
            req.validate()
        if vias:
            req.vias  # noqa: B018 - the top Via then comes from the parsed list
    top = mine.top_via
    assert ref.top_via == top
    assert stamp_via(mine, transport, ip, port) == reference_stamp_via(ref, transport, ip, port)
    assert mine.headers == ref.headers
    assert list(mine._cache) == list(ref._cache)
    # The cached top Via is the object parsed before, changed in place as the reference changed its own.
    assert mine._cache["top_via"] is top
    assert list(top.params.items()) == list(ref.top_via.params.items())
    assert (top.transport, top.host, top.port) == (
        ref.top_via.transport,
        ref.top_via.host,
        ref.top_via.port,
    )
    for key in mine._cache:
        assert mine._cache[key] == ref._cache[key], key
    assert response_destination(mine) == response_destination(ref)
    assert mine.vias == ref.vias
    assert mine.encode() == ref.encode()
    return mine


VIAS = [
    # (id, Via header lines)
    ("rport", ["Via: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK-1-1;rport"]),
    ("rport-first", ["Via: SIP/2.0/UDP 127.0.0.1:5555;rport;branch=z9hG4bK-1-1"]),
    ("rport-with-value", ["Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1;rport=1234"]),
    ("no-rport", ["Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1"]),
    ("no-port", ["Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1"]),
    ("no-params", ["Via: SIP/2.0/UDP 192.0.2.10"]),
    ("host-name", ["Via: SIP/2.0/UDP pc33.example.test;branch=z9hG4bK1"]),
    ("received-present", ["Via: SIP/2.0/UDP 127.0.0.1;received=10.0.0.1;branch=z9hG4bK1"]),
    (
        "received-and-rport",
        ["Via: SIP/2.0/UDP 127.0.0.1:5555;rport;received=10.0.0.1;branch=z9hG4bK1"],
    ),
    (
        "received-and-rport-set",
        ["Via: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK1;rport=5555;received=127.0.0.1"],
    ),
    ("ipv6", ["Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1"]),
    ("ipv6-no-port", ["Via: SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1"]),
    ("ipv6-rport", ["Via: SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bK1;rport"]),
    (
        "several-in-one-line",
        [
            "Via: SIP/2.0/UDP a.example.test;branch=z9hG4bK1;rport, "
            "SIP/2.0/TCP b.example.test:5070;branch=z9hG4bK2"
        ],
    ),
    (
        "several-in-one-line-quoted-comma",
        [
            'Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1;x="p, q" ,'
            "SIP/2.0/UDP b.example.test;branch=z9hG4bK2,SIP/2.0/UDP c"
        ],
    ),
    (
        "several-lines",
        [
            "Via: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK1;rport",
            "v: SIP/2.0/TCP p.example.test;branch=z9hG4bK2;received=192.0.2.7",
            "VIA: SIP/2.0/UDP q.example.test, SIP/2.0/UDP r.example.test",
        ],
    ),
    ("tcp", ["Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bK1;rport"]),
    ("tls", ["Via: SIP/2.0/TLS client.example.test;branch=z9hG4bK1"]),
    ("odd-transport", ["Via: SIP/2.0/wss client.example.test;branch=z9hG4bK1;rport"]),
    ("upper-case-params", ["Via: SIP/2.0/udp 127.0.0.1;BRANCH=z9hG4bKX;RPORT;Received=1.2.3.4"]),
    ("quoted-values", ['Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1;x="a;b, c";rport']),
    ("spaces", ["Via: SIP / 2.0 / UDP 127.0.0.1 : 5555 ; branch = z9hG4bK1 ; rport"]),
    ("folded", ["Via  : SIP  /   2.0", " /UDP", "    192.0.2.2;branch=390skdjuw"]),
    ("flags", ["Via: SIP/2.0/UDP 127.0.0.1;lr;branch=z9hG4bK1;alias;rport"]),
    ("empty-value", ["Via: SIP/2.0/UDP 127.0.0.1;x=;branch=;rport"]),
    (
        "repeated-param",
        ["Via: SIP/2.0/UDP 127.0.0.1;rport=1;branch=z9hG4bK1;rport;received=a;received=b"],
    ),
    ("maddr-ttl", ["Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;maddr=224.2.0.1;ttl=16"]),
    ("unicode", ["Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK\u00e9;x=\udcff;rport"]),
]
SOURCES = [
    ("udp", "127.0.0.1", 5555),
    ("udp", "192.0.2.1", 6000),
    ("udp", "2001:db8::1", 5060),
    ("tcp", "192.0.2.10", 40000),
    ("tls", "127.0.0.1", 5061),
]


@pytest.mark.parametrize("lines", [case[1] for case in VIAS], ids=[case[0] for case in VIAS])
@pytest.mark.parametrize("validate, vias", [(False, False), (True, False), (True, True)])
def test_stamp_via_as_before(lines, validate, vias):
    for transport, ip, port in SOURCES:
        check(request(lines), transport, ip, port, validate=validate, vias=vias)


@pytest.mark.parametrize(
    "via",
    [
        "SIP/2.0/UDP 192.0.2.1;;branch=z9hG4bK1;;",
        "SIP/2.0/UDP 192.0.2.1;",
        "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1; ;rport",
        "SIP/2.0/UDP 192.0.2.1 ;branch=z9hG4bK1 ; ",
    ],
)
def test_an_empty_via_parameter_is_malformed(via):
    # RFC 4475 §3.1.2.1: a Via with extra semicolons gets 400, both when its
    # sent-by is cached and when it is parsed from scratch.
    for _ in range(2):
        with pytest.raises(SipParseError, match="empty parameter"):
            parse_via(via)
    with pytest.raises(SipParseError, match="empty parameter"):
        parse_message(request([f"Via: {via}"])).validate()


def test_common_case_text():
    req = check(
        request(["Via: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK-7-1;rport"]),
        "udp",
        "127.0.0.1",
        5555,
        validate=True,
        vias=False,
    )
    assert (
        req.get("via")
        == "SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK-7-1;rport=5555;received=127.0.0.1"
    )


def test_unchanged_via_keeps_its_text_and_cache():
    req = check(
        request(["Via: SIP/2.0/UDP  127.0.0.1 ;branch=z9hG4bK1", "Via: SIP/2.0/UDP b"]),
        "udp",
        "127.0.0.1",
        5060,
        validate=True,
        vias=True,
    )
    assert req.get("via") == "SIP/2.0/UDP  127.0.0.1 ;branch=z9hG4bK1"
    assert "vias" in req._cache


def test_stamping_twice():
    data = request(["Via: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK1;rport, SIP/2.0/UDP b"])
    mine, ref = parse_message(data), parse_message(data)
    for transport, ip, port in SOURCES:
        assert stamp_via(mine, transport, ip, port) == reference_stamp_via(ref, transport, ip, port)
        assert mine.headers == ref.headers and list(mine._cache) == list(ref._cache)
        assert response_destination(mine) == response_destination(ref)


# -- generated Vias -------------------------------------------------------------

_SPACE = st.sampled_from(["", " ", "  ", "\t"])
_PARAM = st.tuples(
    st.sampled_from(
        ["branch", "rport", "received", "RPORT", "Received", "lr", "maddr", "x", "ttl"]
    ),
    st.one_of(
        st.none(),
        st.sampled_from(
            ["", "1", "5060", "z9hG4bK-a", "127.0.0.1", "10.0.0.1", '"q;,r"', "\u00e9", "\udcff"]
        ),
    ),
    _SPACE,
)
_VIA = st.tuples(
    st.sampled_from(["UDP", "udp", "TCP", "TLS", "SCTP", "WS"]),
    st.sampled_from(["127.0.0.1", "192.0.2.1", "[2001:db8::1]", "[::1]", "h.example.test"]),
    st.one_of(st.none(), st.sampled_from(["5060", "5555", "6000", "05060"])),
    st.lists(_PARAM, max_size=5),
    _SPACE,
)


def _via_text(via) -> str:
    transport, host, port, params, space = via
    text = f"SIP/2.0/{transport} {host}" + ("" if port is None else f"{space}:{space}{port}")
    for name, value, pad in params:
        text += f"{pad};{pad}{name}" + ("" if value is None else f"{pad}={pad}{value}")
    return text


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.lists(_VIA, min_size=1, max_size=3), min_size=1, max_size=3),
    st.sampled_from(SOURCES),
    st.booleans(),
    st.booleans(),
)
def test_generated_vias_stamp_as_before(lines, source, validate, vias):
    via_lines = ["Via: " + ", ".join(_via_text(v) for v in line) for line in lines]
    check(request(via_lines), *source, validate=validate, vias=vias)


def test_a_received_written_by_the_client_is_replaced():
    # Before, a request from 192.0.2.1 whose Via said 192.0.2.1;received=203.0.113.5
    # had its responses sent to 203.0.113.5: a reflector at the sender's will.
    req = parse_message(
        request(["Via: SIP/2.0/UDP 192.0.2.1:5070;received=203.0.113.5;branch=z9hG4bK1"])
    )
    assert stamp_via(req, "udp", "192.0.2.1", 5070) == ("udp", "192.0.2.1", 5070)
    assert req.get("via") == "SIP/2.0/UDP 192.0.2.1:5070;received=192.0.2.1;branch=z9hG4bK1"
    assert response_destination(req) == ("udp", "192.0.2.1", 5070)


@pytest.mark.parametrize(
    "params, dest",
    [
        (";rport=5070", ("udp", "192.0.2.7", 5070)),
        (";rport", ("udp", "192.0.2.7", 5060)),
        (";received=192.0.2.9;rport=5070", ("udp", "192.0.2.9", 5070)),
        (";received=[2001:db8::9]", ("udp", "2001:db8::9", 5060)),
        (";rport=abc", None),
        (";rport=99999", None),
        (";rport=0", None),
        (";rport=\u0661", None),
        (";rport=-1", None),
        (";received=evil.example", None),
        (";received=\udcff", None),
        (";received=", None),
    ],
)
def test_response_destination_takes_only_what_a_socket_takes(params, dest):
    # A relayed response's Via comes from the wire: rport=99999 once reached sendto and
    # its OverflowError killed the proxy actor, and the node with it.
    resp = parse_message(
        (
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.7" + params + "\r\n"
            "From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: x\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode("utf-8", "surrogateescape")
    )
    assert response_destination(resp) == dest
