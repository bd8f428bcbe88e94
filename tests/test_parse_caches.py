"""The parse caches and shortcuts give what the plain parsers give (sipcore.uri, sipcore.headers).

``parse_name_addr`` reuses whole results and the parse of the URI inside
``<>``, ``_sip_uri`` that of a URI's host part, ``parse_via`` that of a
sent-by, ``parse_cseq`` and ``parse_number`` whole results; each is
checked against the uncached parser on valid and malformed inputs, before
and after the caches hold a related value. ``parse_params``,
``split_quoted``, ``format_params`` and ``SipUri.__str__``/``canonical``
are checked against their previous versions, kept here as references.
``_parse_uri`` and ``_parse_name_addr`` read the common forms with a few
splits (and a regular expression for a host part not seen before, or a
display name); they are checked against the general parsers they fall
back to, ``_parse_uri_general`` and ``_parse_name_addr_general``.
"""

import itertools
from urllib.parse import unquote

import pytest

from sipcore import headers, uri
from sipcore.errors import SipParseError
from sipcore.headers import _parse_cseq, _parse_via, parse_cseq, parse_int, parse_via
from sipcore.uri import (
    SipUri,
    UnsupportedScheme,
    _parse_name_addr,
    _parse_name_addr_general,
    _parse_uri,
    _parse_uri_general,
    format_params,
    parse_name_addr,
    parse_number,
    parse_params,
    parse_uri,
    split_quoted,
)

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CACHES = (
    uri._URI_CACHE,
    uri._ADDR_CACHE,
    uri._HOST_PART_CACHE,
    uri._NUMBER_CACHE,
    headers._SENT_BY_CACHE,
    headers._CSEQ_CACHE,
)


@pytest.fixture(autouse=True)
def empty_caches():
    """Start and leave every test with empty caches."""
    for cache in CACHES:
        cache.clear()
    yield
    for cache in CACHES:
        cache.clear()


def outcome(parse, *args):
    """What ``parse(*args)`` gives, comparable across calls: its value or its error.

    Parameters are compared in order too, since they serialise in order.
    """
    try:
        value = parse(*args)
    except SipParseError as err:
        return ("error", type(err), err.status, err.reason, err.args)
    params = getattr(value, "params", None)
    if params is None:
        return ("ok", value)
    return ("ok", value, list(params.items()), str(value))


def try_parse(parse, text):
    """Parse ``text`` for the side effect on the caches, ignoring errors."""
    try:
        parse(text)
    except SipParseError:
        pass


# -- parse_name_addr ------------------------------------------------------------

#: ``[display] <uri>`` parts, the last ones malformed
ADDRESS_PARTS = [
    "<sip:user17@example.test>",
    '"Alice" <sip:alice@example.test>',
    '"Smith, <John>" <sip:john@example.test>',
    '"a;b>c" <sip:x@example.test>',
    '"x>" <sip:x@example.test;lr>',
    r'"J Rosenberg \\\""  <sip:jdrosen@example.test>',
    r'"x\">y" <sip:x@example.test>',
    "Alice  Smith <sip:alice@example.test>",
    "caller<sip:caller@example.test>",
    "<sip:a@[::1]:5060;transport=TCP;lr>",
    "<sip:a@[2001:DB8::10]>",
    "<sips:a:pw@Example.TEST:5061?subject=x>",
    "<tel:+1-201-555-0123;phone-context=example.test>",
    "< sip:a@example.test >",
    "<SIP:A@EXAMPLE.TEST;TRANSPORT=UDP>",
    '"open <sip:a@example.test>',
    '"A" B <sip:a@example.test>',
    "Bell, A <sip:a@example.test>",
    "<http://example.test/>",
    "<sip:a@exa mple.test>",
    "<sip:a@[::1>",
    "<>",
    '"A" >',
]

#: what may follow the address part, the last ones malformed
TAILS = [
    "",
    ";tag=1234SIPpTag0017",
    " ; TAG = X ;lr",
    ";q=0.5;expires=3600",
    ' ;+sip.instance="<urn:uuid:1;2>";reg-id=1',
    ";tag=a>b",
    "\t;tag=1 ",
    ";tag=1;tag=2",
    " junk",
    "x;tag=1",
    ";=x",
    ';a="unterminated',
    ">",
]

#: addr-spec forms (no ``<>``) and values without a complete name-addr
OTHER_ADDRESSES = [
    "sip:alice@example.test;tag=1",
    "sip:alice@example.test;transport=tcp;TAG=x",
    "  sip:a@example.test ;tag=1  ",
    "tel:+1;tag=2",
    "sip:a@b?x=y;tag=1",
    "isbn:123",
    "sip:a@b;x=>",
    "sip:a@b>;tag=1",
    "<sip:a@example.test",
    '"A"',
    '"A" ',
    "",
    "   ",
    "sip:a@[::1]:5060;tag=1",
]

NAME_ADDR_TEXTS = (
    [a + t for a, t in itertools.product(ADDRESS_PARTS, TAILS)]
    + ["  " + a + ";tag=1 " for a in ADDRESS_PARTS]
    + OTHER_ADDRESSES
)


@pytest.mark.parametrize("text", NAME_ADDR_TEXTS)
def test_name_addr_equals_uncached_parse(text):
    expected = outcome(_parse_name_addr_general, text)
    assert outcome(parse_name_addr, text) == expected  # nothing cached
    assert outcome(parse_name_addr, text) == expected  # whole text cached (when valid)
    uri._ADDR_CACHE.clear()
    assert outcome(parse_name_addr, text) == expected  # address part cached


@pytest.mark.parametrize("part", ADDRESS_PARTS)
def test_name_addr_after_another_tail_of_the_same_address(part):
    for primer, text in itertools.permutations([part + t for t in TAILS], 2):
        for cache in CACHES:
            cache.clear()
        try_parse(parse_name_addr, primer)
        expected = outcome(_parse_name_addr_general, text)
        assert outcome(parse_name_addr, text) == expected, (primer, text)


def test_from_values_differing_by_tag_share_the_uri_not_the_params():
    a = parse_name_addr("<sip:user17@example.test>;tag=1")
    b = parse_name_addr("<sip:user17@example.test>;tag=2")
    assert a.uri is b.uri and a.params is not b.params
    assert (a.tag, b.tag) == ("1", "2")
    assert parse_name_addr("<sip:user17@example.test>;tag=1") is a  # whole-text cache, as before


def test_to_after_from_shares_the_uri():
    """A REGISTER's To names the URI its From names: the URI cache gives it."""
    for display in ("", '"Alice" '):
        sender = parse_name_addr(f"{display}<sip:alice@example.test>;tag=1")
        to = parse_name_addr(f"{display}<sip:alice@example.test>")
        assert to.uri is sender.uri and to.params == {} and to.display == sender.display
        assert to == _parse_name_addr_general(f"{display}<sip:alice@example.test>")


def test_addr_spec_parameters_stay_header_parameters():
    parse_name_addr("<sip:a@example.test;lr>;tag=1")
    na = parse_name_addr("sip:a@example.test;lr;tag=2")
    assert na.uri.params == {} and na.params == {"lr": None, "tag": "2"}
    assert uri._URI_CACHE.keys() == {"sip:a@example.test;lr", "sip:a@example.test"}


# -- parse_via ------------------------------------------------------------------

#: Via texts before the first ``;``, the last ones malformed
SENT_BYS = [
    "SIP/2.0/UDP 127.0.0.1:5061",
    "SIP/2.0/UDP 127.0.0.1",
    "SIP/2.0/UDP 127.0.0.1 ",
    " sip / 2.0 / tcp  host.example.test : 5060 ",
    "SIP/2.0/TLS [2001:db8::1]:5061",
    "SIP/2.0/UDP [::1]",
    "SIP/2.0/ws-sctp h_1.example.test:00080",
    "SIP/2.0/UDP [a;b]:5060",
    "SIP/2.0/UDP [::1",
    "SIP/2.0/UDP host:0",
    "SIP/2.0/UDP host:70000",
    "SIP/2.0/UDP host:",
    "SIP/2.0/UDP host junk",
    "SIP/2.0/UDP",
    "SIP/2.1/UDP host",
    "SIP/2.0/UDP ho\u00e4st",
    "",
]

VIA_TAILS = [
    "",
    ";branch=z9hG4bK-1234-17-1;rport",
    " ;branch=x ; RPORT=5 ",
    ";received=192.0.2.1;rport=5061",
    ";",
    ";=x",
    ';a="x;y"',
    ';a="unterminated',
    ";branch=a;branch=b",
]


@pytest.mark.parametrize("text", [s + t for s, t in itertools.product(SENT_BYS, VIA_TAILS)])
def test_via_equals_uncached_parse(text):
    expected = outcome(_parse_via, text)
    assert outcome(parse_via, text) == expected
    assert outcome(parse_via, text) == expected


@pytest.mark.parametrize("sent_by", SENT_BYS)
def test_via_after_another_branch_of_the_same_sent_by(sent_by):
    for primer, text in itertools.permutations([sent_by + t for t in VIA_TAILS], 2):
        headers._SENT_BY_CACHE.clear()
        try_parse(parse_via, primer)
        assert outcome(parse_via, text) == outcome(_parse_via, text), (primer, text)


@pytest.mark.parametrize(
    "text", ["SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport", "SIP/2.0/UDP 127.0.0.1:5061"]
)
def test_changing_a_via_does_not_change_the_next_parse(text):
    first = parse_via(text)
    expected = dict(first.params)
    first.params["received"] = "192.0.2.9"  # as stamp_via does
    first.params["rport"] = "5099"
    first.host = "changed"
    again = parse_via(text)
    assert again is not first and again.params is not first.params
    assert again.params == expected and again.host == "127.0.0.1"


# -- parse_cseq, parse_int, parse_number ------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "1 REGISTER",
        " 1  REGISTER ",
        "0001 INVITE",
        "2147483647 ACK",
        "0" * 30 + "7 BYE",
        "2147483648 INVITE",
        "1",
        "1 REGISTER x",
        "-1 INVITE",
        "\u0661 INVITE",
        "1 INV/ITE",
        "",
        "9" * 50 + " INVITE",
    ],
)
def test_cseq_equals_uncached_parse(text):
    expected = outcome(_parse_cseq, text)
    for _ in range(3):
        assert outcome(parse_cseq, text) == expected


def test_cseq_errors_are_raised_every_time():
    for _ in range(3):
        with pytest.raises(SipParseError, match="malformed CSeq"):
            parse_cseq("1 REGISTER extra")
    assert not headers._CSEQ_CACHE


def _parse_number_reference(value: str, name: str, maximum: int) -> int:
    """``parse_number`` before its cache."""
    if not value.isdigit() or not value.isascii():
        raise SipParseError(f"malformed {name}")
    if len(value) > 20:
        value = value.lstrip("0") or "0"
        if len(value) > 20:
            raise SipParseError(f"{name} out of range")
    n = int(value)
    if n > maximum:
        raise SipParseError(f"{name} out of range")
    return n


@pytest.mark.parametrize(
    "text",
    [
        "70",
        "0",
        "0070",
        "255",
        "256",
        "4294967295",
        "4294967296",
        "0" * 25 + "9",
        "9" * 25,
        "",
        " 70",
        "7a",
        "\u00b2",
        "\u0661",
    ],
)
@pytest.mark.parametrize("maximum", [0, 69, 70, 255, 2**32 - 1])
def test_number_equals_uncached_parse(text, maximum):
    expected = outcome(_parse_number_reference, text, "Max-Forwards", maximum)
    for _ in range(3):
        assert outcome(parse_number, text, "Max-Forwards", maximum) == expected


def test_number_bound_and_name_are_checked_on_every_call():
    assert parse_int(" 70 ", "Max-Forwards", 255) == 70
    with pytest.raises(SipParseError) as exc:
        parse_int("70", "Expires", 69)
    assert exc.value.reason == "Expires out of range"
    assert parse_number("70", "X", 70) == 70


# -- caches stay bounded ----------------------------------------------------------


def test_caches_are_emptied_when_full(monkeypatch):
    monkeypatch.setattr(uri, "_CACHE_MAX", 8)
    for i in range(50):
        parse_name_addr(f'"User {i}" <sip:user{i}@example.test>;tag={i}')
        parse_name_addr(f"<sip:user{i}@192.0.2.{i}:5060;transport=udp>")
        parse_via(f"SIP/2.0/UDP 192.0.2.{i}:5060;branch=z9hG4bK-{i}")
        assert all(
            len(c) <= 8
            for c in (uri._URI_CACHE, uri._ADDR_CACHE, uri._HOST_PART_CACHE, headers._SENT_BY_CACHE)
        )


def test_small_caches_are_bounded_and_skip_long_texts():
    for i in range(3 * uri._SMALL_CACHE_MAX):
        parse_cseq(f"{i} INVITE")
        parse_number(str(i), "X", 2**32 - 1)
        assert len(headers._CSEQ_CACHE) <= uri._SMALL_CACHE_MAX
        assert len(uri._NUMBER_CACHE) <= uri._SMALL_CACHE_MAX
    headers._CSEQ_CACHE.clear()
    uri._NUMBER_CACHE.clear()
    parse_cseq("1" + " " * 60 + "INVITE")
    parse_number("0" * 11 + "7", "X", 10)
    assert not headers._CSEQ_CACHE and not uri._NUMBER_CACHE


# -- parse_params, format_params, SipUri.__str__ and canonical -----------------------


def _split_quoted_reference(value: str, sep: str) -> list[str]:
    """``split_quoted`` as it was: three searches from every position reached."""
    if '"' not in value and "<" not in value:
        return value.split(sep)
    parts = []
    start = i = 0
    n = len(value)
    while i < n:
        s = value.find(sep, i)
        q = value.find('"', i)
        a = value.find("<", i)
        if s < 0:
            s = n
        if q < 0:
            q = n
        if a < 0:
            a = n
        if s < q and s < a:
            parts.append(value[start:s])
            start = i = s + 1
        elif q < a:
            e = uri._quoted_end(value, q)
            if e < 0:
                raise SipParseError("unterminated quoted string")
            i = e + 1
        elif a < n:
            g = value.find(">", a)
            if g < 0:
                break
            i = g + 1
        else:
            break
    parts.append(value[start:])
    return parts


def _parse_params_reference(text: str) -> dict[str, str | None]:
    """``parse_params`` before its shortcuts."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    for piece in _split_quoted_reference(text, ";"):
        piece = piece.strip()
        if not piece:
            continue
        name, eq, val = piece.partition("=")
        name = name.strip().lower()
        if not name:
            raise SipParseError("empty parameter name")
        params[name] = val.strip() if eq else None
    return params


def _format_params_reference(params: dict[str, str | None]) -> str:
    """``format_params`` as it was."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _str_reference(u: SipUri) -> str:
    """``SipUri.__str__`` as it was."""
    if u.scheme == "tel":
        return f"tel:{u.user}{_format_params_reference(u.params)}"
    out = [u.scheme, ":"]
    if u.user is not None:
        out.append(u.user)
        if u.password is not None:
            out.append(":" + u.password)
        out.append("@")
    out.append(u.host)
    if u.port is not None:
        out.append(f":{u.port}")
    out.append(_format_params_reference(u.params))
    if u.headers:
        out.append("?" + u.headers)
    return "".join(out)


def _canonical_reference(u: SipUri) -> str:
    """``SipUri.canonical`` as it was."""
    out = [u.scheme.lower(), ":"]
    if u.user is not None:
        out.append(unquote(u.user) + "@")
    out.append(u.host.lower())
    if u.port is not None:
        out.append(f":{u.port}")
    for k in ("transport", "user", "maddr", "ttl", "method"):
        v = u.params.get(k)
        if v is not None:
            out.append(f";{k}={v.lower()}")
    return "".join(out)


PARAM_TEXTS = [
    "",
    ";",
    ";;",
    "lr",
    ";lr",
    ";branch=z9hG4bK-1;rport",
    ";tag=1234SIPpTag0017",
    "Transport=UDP",
    " ; Q = 0.5 ; ",
    ";a=\tb",
    ";a=\u00a0b\u00a0",
    ";A=B\x0b",
    ';a="x;y";b',
    ";a=<x;y>;b",
    ";x=",
    ";=x",
    "=x",
    ';a="unterminated',
    ";a=1;A=2",
    ";\u00c9T\u00c9=1",
]


@pytest.mark.parametrize("text", PARAM_TEXTS)
def test_params_equal_reference(text):
    expected = outcome(_parse_params_reference, text)
    got = outcome(parse_params, text)
    assert got == expected
    if expected[0] == "ok":
        assert list(parse_params(text).items()) == list(_parse_params_reference(text).items())
        assert format_params(parse_params(text)) == _format_params_reference(parse_params(text))


URIS = [
    "sip:alice@example.test",
    "SIP:Alice@EXAMPLE.test:5060",
    "sips:a:pw@h.test:5061;transport=TLS;lr?x=y",
    "sip:%61lice@example.test;User=Phone;maddr=192.0.2.1;ttl=5;method=INVITE;transport=TCP",
    "sip:[2001:DB8::1]:5070;lr",
    "sip:registrar.example.test",
    "sip:a@b.test?subject=x",
    "tel:+1-201-555-0123;phone-context=example.test",
    "tel:7042",
    "sip:user;par=u%40x@example.test",
]


@pytest.mark.parametrize("text", URIS)
def test_uri_str_and_canonical_equal_reference(text):
    u = parse_uri(text)
    assert str(u) == _str_reference(u)
    assert u.canonical() == _canonical_reference(u)
    changed = SipUri(u.scheme, u.user, "pw", u.host, 1, {"transport": "UDP", "x": None}, "h=1")
    assert str(changed) == _str_reference(changed)
    assert changed.canonical() == _canonical_reference(changed)


def test_format_params_of_non_text_values():
    params = {"rport": 5061, "lr": None, "ttl": 1.5}
    assert format_params(params) == _format_params_reference(params) == ";rport=5061;lr;ttl=1.5"
    assert format_params({}) == ""


# -- the shortcuts of _parse_uri and _parse_name_addr --------------------------------

#: URIs around the edges of ``_SIMPLE_SIP_URI``: valid and malformed, taken
#: by the shortcut or left to the general parser
URI_TEXTS = [
    # the common forms
    "sip:user17@example.test",
    "sip:user17@127.0.0.1:5061;transport=UDP",
    "sip:example.test",
    "sips:a@h.test:5061;transport=TLS;lr",
    "sip:a@h;maddr=192.0.2.1;ttl=5;method=INVITE",
    # scheme case, and letters IGNORECASE would take
    "SIP:A@EXAMPLE.TEST;TRANSPORT=UDP",
    "SiPs:a@h",
    "sIP:h",
    "\u017fip:h",
    "s\u0130p:h",
    "sipx:h",
    "sipss:h",
    "sip",
    "sip:",
    "sips:",
    ":h",
    "http://example.test/",
    "isbn:123",
    # users
    "sip:@h",
    "sip:user@",
    "sip:user@:5060",
    "sip:user:pw@h",
    "sip:user:@h",
    "sip::pw@h",
    "sip:a@b@c",
    "sip:%40@h",
    "sip:user%40x@h",
    "sip:%zz@h",
    "sip:user;par=u%40x@h;lr",
    "sip:a;b=c@h;x",
    "sip:a?b@h",
    "sip:a!~*'()&=+$,/-_.@h",
    "sip:\u00e9@h",
    "sip:a\u00a0b@h",
    "sip:a\nb@h",
    "sip:a b@h",
    "sip:a\tb@h",
    'sip:"a"@h',
    "sip:a<b@h",
    "sip:a>b@h",
    # hosts
    "sip:h.",
    "sip:-h_",
    "sip:a@.",
    "sip:a@h\u00e9",
    "sip:a@h/x",
    "sip:a@h,x",
    "sip:a@h%41",
    "sip:[::1]",
    "sip:a@[::1]:5060",
    "sip:a@[2001:DB8::10]:5061;lr",
    "sip:a@[::ffff:1.2.3.4]",
    "sip:a@[::1]x",
    "sip:a@[::1];lr",
    "sip:a@[::1]:",
    "sip:a@[::1",
    "sip:a@[1.2.3.4]",
    "sip:a@[]",
    "sip:a@[:]",
    "sip:a@[::g]",
    "sip:a@[fe80::1%25eth0]",
    "sip:a@[fe80::1%25]",
    "sip:a@[::1]]",
    "sip:a@h]",
    "sip:a@h[",
    "sip:a@[[::1]]",
    # ports
    "sip:user@host:",
    "sip:user@host:0",
    "sip:h:00000",
    "sip:h:1",
    "sip:h:00080",
    "sip:h:65535",
    "sip:h:65536",
    "sip:h:99999",
    "sip:h:000000",
    "sip:h:123456",
    "sip:h:005060",
    "sip:h:+5060",
    "sip:h:-1",
    "sip:h: 5060",
    "sip:h:5060:5060",
    "sip:h:5o60",
    "sip:h:\u0661",
    "sip:h:\u00b2",
    "sip:h:0;lr",
    # parameters
    "sip:h;",
    "sip:h;;",
    "sip:h;lr",
    "sip:h;LR;Transport=Udp",
    "sip:h;a=1;A=2",
    "sip:h;=x",
    "sip:h;a=",
    "sip:h;a==b",
    "sip:h;a=b=c",
    "sip:h;a=[::1]:5",
    "sip:h;a=\\x",
    "sip:h;a=\u00e9",
    "sip:h;\u00c9=1",
    'sip:h;a="x;y"',
    'sip:h;a="x',
    "sip:h;a=<x;y>",
    "sip:h;a=x>y",
    "sip:h;a@b",
    "sip:h:5060;",
    "sip:a@h:5060;transport",
    "sip:h;a=b?x=y",
    "sip:h?x=y",
    "sip:h?",
    # an "@" after the host: the general parser takes what is before it for the user
    "sip:h:5060;a@b",
    "sip:h;a:b@c",
    "sip:[::1];a@b",
    "sip:a@h;b@c",
    # whitespace
    " sip:h",
    "sip:h ",
    "\tsip:h;lr\t",
    "sip:h\n",
    "sip:h\r\n",
    "\x1csip:h\x1f",
    "sip:h\x85",
    "sip:h\u00a0",
    "sip: h",
    "sip:h ;lr",
    "sip:h; lr",
    "sip:h;lr\x0b",
    "",
    "   ",
    # tel
    "tel:+1-201-555-0123;phone-context=example.test",
    "TEL:7042",
    "tel:",
    "tel:;x",
    "tel:12a;=x",
]


def _uri_outcomes(text):
    """What ``_parse_uri`` and ``_parse_uri_general`` give for ``text``."""
    return outcome(_parse_uri, text), outcome(_parse_uri_general, text)


@pytest.mark.parametrize("text", URI_TEXTS)
def test_uri_shortcut_equals_general_parse(text):
    got, expected = _uri_outcomes(text)
    assert got == expected
    assert outcome(parse_uri, text) == expected


#: what may follow a ``<uri>``, the last ones malformed
ADDR_TAILS = TAILS + [
    ";",
    ";;",
    ";tag",
    ";a=b?c@d>e",
    ";a=<b>",
    ' ;a="b"',
    ";a=\u00e9",
    ";tag=1 ",
    ";tag=",
    ";tag=\u00e9",
    ";tag=\u0661",
    ";tag=a-b",
    ";TAG=x",
    ";tag=1;",
    ";tag=x\x0b",
]


@pytest.mark.parametrize("text", URI_TEXTS)
def test_name_addr_shortcut_equals_general_parse(text):
    for tail in ADDR_TAILS:
        value = f"<{text}>{tail}"
        for cache in CACHES:
            cache.clear()
        expected = outcome(_parse_name_addr_general, value)
        # the URI found in the cache the general parse filled, then parsed anew
        assert outcome(_parse_name_addr, value) == expected, value
        uri._URI_CACHE.clear()
        assert outcome(_parse_name_addr, value) == expected, value
        assert outcome(_parse_name_addr, value) == expected, value


def test_common_forms_take_the_shortcuts(monkeypatch):
    """The shortcuts do not give up on the forms they are for."""

    def refuse(text):
        raise AssertionError(f"general parser called for {text!r}")

    monkeypatch.setattr(uri, "_parse_uri_general", refuse)
    monkeypatch.setattr(uri, "_parse_name_addr_general", refuse)
    u = parse_uri("SIP:user17@127.0.0.1:5061;transport=UDP;lr")
    assert u == SipUri("sip", "user17", None, "127.0.0.1", 5061, {"transport": "UDP", "lr": None})
    ipv6 = SipUri("sips", None, None, "[2001:db8::1]", 65535)
    assert parse_uri("sips:[2001:db8::1]:65535;") == ipv6
    na = parse_name_addr("<sip:user17@example.test>;tag=1234SIPpTag0017")
    assert (na.uri, na.display, na.params) == (
        parse_uri("sip:user17@example.test"),
        None,
        {"tag": "1234SIPpTag0017"},
    )
    assert parse_name_addr("<sip:example.test;lr>").params == {}
    na = parse_name_addr('"Alice Smith"\t<sip:alice@example.test>;tag=9;lr')
    assert (na.display, na.params) == ('"Alice Smith"', {"tag": "9", "lr": None})
    assert parse_uri("sip:a%40b;x=y@example.test").user == "a%40b;x=y"
    assert uri._URI_CACHE.keys() == {
        "SIP:user17@127.0.0.1:5061;transport=UDP;lr",
        "sips:[2001:db8::1]:65535;",
        "sip:user17@example.test",
        "sip:example.test;lr",
        "sip:alice@example.test",
        "sip:a%40b;x=y@example.test",
    }
    assert uri._HOST_PART_CACHE.keys() == {
        "127.0.0.1:5061;transport=UDP;lr",
        "[2001:db8::1]:65535;",
        "example.test",
        "example.test;lr",
    }


def test_host_part_is_matched_once(monkeypatch):
    """Users of one domain share the parse of the host part, parameters included."""
    first = parse_uri("sip:alice@example.test:5070;transport=tcp")
    matched = []

    class Recording:
        def fullmatch(self, text, pattern=uri._SIMPLE_SIP_URI):
            matched.append(text)
            return pattern.fullmatch(text)

    monkeypatch.setattr(uri, "_SIMPLE_SIP_URI", Recording())
    second = parse_uri("SIPS:bob@example.test:5070;transport=tcp")
    third = parse_uri("sip:example.test:5070;transport=tcp")
    assert not matched
    assert (second.scheme, second.user, second.port) == ("sips", "bob", 5070)
    assert third.user is None and third.params is first.params is second.params


def test_name_addr_shortcut_shares_the_cached_uri():
    first = parse_uri("sip:a@example.test")
    assert _parse_name_addr("<sip:a@example.test>;tag=1").uri is first
    uri._URI_CACHE.clear()
    second = _parse_name_addr("<sip:a@example.test>;tag=2").uri
    assert second == first and parse_uri("sip:a@example.test") is second


@pytest.mark.parametrize("user", ["", "a b", "a@b", "\u00e9", "a:pw", "a?b", "a<b", 'a"b', "a\tb"])
def test_host_part_seen_before_with_a_user_out_of_the_common_form(user):
    parse_uri("sip:alice@example.test")
    text = f"sip:{user}@example.test"
    assert outcome(_parse_uri, text) == outcome(_parse_uri_general, text)


def test_shortcut_errors_are_those_of_the_general_parser():
    with pytest.raises(SipParseError) as exc:
        _parse_uri("sip:a@h:65536")
    assert exc.value.reason == "bad port '65536'"
    with pytest.raises(SipParseError) as exc:
        _parse_name_addr("<sip:a@h;=x>;tag=1")
    assert exc.value.reason == "empty parameter name"
    with pytest.raises(UnsupportedScheme):
        _parse_uri("sipx:h")


# -- properties ----------------------------------------------------------------------

#: pieces that make the parsers take their rarer branches
_PIECES = st.sampled_from(
    [
        '"',
        "<",
        ">",
        ";",
        "=",
        " ",
        "\t",
        "\\",
        ":",
        "@",
        ".",
        ",",
        "?",
        "[",
        "]",
        "a",
        "B",
        "1",
        "sip:",
        "tel:+1",
        "<sip:a@b.test>",
        "tag=",
        "lr",
        "[::1]",
        ":5060",
        "SIP/2.0/UDP ",
        "\u00a0",
        "\x0b",
        "\u00e9",
        "%41",
    ]
)
_TEXTS = st.lists(_PIECES, max_size=12).map("".join)
_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _prime(parse, text, other):
    """Parse ``other`` after every prefix of ``text``, to fill the caches with related values."""
    for cut in range(len(text) + 1):
        try_parse(parse, text[:cut] + other)


@_SETTINGS
@given(_TEXTS, _TEXTS)
def test_name_addr_property(text, other):
    for cache in CACHES:
        cache.clear()
    _prime(parse_name_addr, text, other)
    expected = outcome(_parse_name_addr_general, text)
    assert outcome(parse_name_addr, text) == expected
    assert outcome(parse_name_addr, text) == expected


@_SETTINGS
@given(st.sampled_from(SENT_BYS), _TEXTS, _TEXTS)
def test_via_property(sent_by, text, other):
    headers._SENT_BY_CACHE.clear()
    text = sent_by + text
    _prime(parse_via, text, other)
    assert outcome(parse_via, text) == outcome(_parse_via, text)


@_SETTINGS
@given(_TEXTS)
def test_params_property(text):
    expected = outcome(_parse_params_reference, text)
    assert outcome(parse_params, text) == expected
    if expected[0] == "ok":
        params = parse_params(text)
        assert list(params.items()) == list(_parse_params_reference(text).items())
        assert format_params(params) == _format_params_reference(params)


@_SETTINGS
@given(
    st.one_of(
        st.from_regex(r"[!#-;=-~]*", fullmatch=True),
        st.lists(st.sampled_from([";", "=", "a", "B", "tag", "1", ";;", "=="]), max_size=8).map(
            "".join
        ),
    )
)
def test_shortcut_params_property(text):
    """The parameters of a text of the name-addr shortcut's class read as the reference reads them."""
    expected = outcome(_parse_params_reference, text)
    assert outcome(parse_params, text) == expected
    if expected[0] == "ok":
        assert list(parse_params(text).items()) == list(_parse_params_reference(text).items())


@_SETTINGS
@given(
    st.lists(
        st.sampled_from(['"', "<", ">", ";", ",", "\\", "a", " ", "b=c", '""', "<>", "x;y"]),
        max_size=14,
    ).map("".join),
    st.sampled_from([";", ","]),
)
def test_split_quoted_property(text, sep):
    assert outcome(split_quoted, text, sep) == outcome(_split_quoted_reference, text, sep)


@_SETTINGS
@given(_TEXTS)
def test_uri_property(text):
    try:
        u = parse_uri(text)
    except SipParseError:
        return
    assert str(u) == _str_reference(u)
    assert u.canonical() == _canonical_reference(u)


#: pieces of URIs around the edges of ``_SIMPLE_SIP_URI``
_URI_PIECES = st.sampled_from(
    [
        "sip:",
        "SIPS:",
        "sIp:",
        "tel:",
        "\u017fip:",
        "user",
        "@",
        ":",
        "5060",
        "0",
        "65536",
        "00080",
        "[",
        "]",
        "::1",
        "[::1]",
        ";",
        "=",
        "lr",
        ":5060;",
        "transport=UDP",
        "%40",
        " ",
        "\t",
        "\n",
        "?",
        ">",
        "<",
        '"',
        ".",
        "-",
        "_",
        "\u00e9",
        "\u0661",
        "\u00a0",
        "\x1c",
        "A",
        "7",
    ]
)
#: texts of the shortcut's form, and texts near it
_URI_TEXTS = st.one_of(
    st.from_regex(uri._SIMPLE_SIP_URI, fullmatch=True),
    st.lists(_URI_PIECES, max_size=10).map("".join),
)


@_SETTINGS
@given(_URI_TEXTS)
def test_uri_shortcut_property(text):
    got, expected = _uri_outcomes(text)
    assert got == expected


def _host_part(text: str) -> str:
    """What ``_sip_uri`` takes for the host part of ``text``."""
    rest = text.partition(":")[2]
    host_part = rest.partition("@")[2]
    return host_part if "@" in rest else rest


_SCHEMES = st.sampled_from(["sip", "SIP", "sIpS", "sips", "tel", "sipx", "\u017fip", "", "sip "])
_USERS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "",
            "alice",
            "User17",
            "a;b=c",
            "%40x",
            "a b",
            "a@b",
            "\u00e9",
            "a:pw",
            "a?b",
            "a>b",
            "A!~*'()&=+$,;/%-_.",
            "\u0661",
            "7",
        ]
    ),
    st.text(max_size=4),
)


@_SETTINGS
@given(_URI_TEXTS, _SCHEMES, _USERS, _SCHEMES, _USERS)
def test_uri_with_a_host_part_seen_before_property(text, scheme1, user1, scheme2, user2):
    """A URI whose host part another URI had, of the common form or not, parses as in general."""
    host_part = _host_part(text)

    def uri_text(scheme, user):
        return f"{scheme}:{host_part}" if user is None else f"{scheme}:{user}@{host_part}"

    for cache in CACHES:
        cache.clear()
    try_parse(_parse_uri, text)
    try_parse(_parse_uri, uri_text(scheme1, user1))
    second = uri_text(scheme2, user2)
    got, expected = _uri_outcomes(second)
    assert got == expected
    uri._URI_CACHE.clear()
    assert outcome(_parse_name_addr, f"<{second}>") == outcome(
        _parse_name_addr_general, f"<{second}>"
    )


#: display names around the edges of ``_DISPLAY_NAME_ADDR``
_DISPLAYS = st.sampled_from(
    [
        '"A" ',
        '"" ',
        '"a<b>" ',
        '"a;b" ',
        r'"x\"y" ',
        '"u"\t',
        '"v"',
        '"w"  ',
        '"x" \u00a0',
        "A ",
        '"open ',
        '"\u00e9" ',
    ]
)


@_SETTINGS
@given(
    st.one_of(
        st.from_regex(uri._DISPLAY_NAME_ADDR, fullmatch=True),
        st.tuples(_URI_TEXTS, _TEXTS).map(lambda p: f"<{p[0]}>{p[1]}"),
        st.tuples(_DISPLAYS, _URI_TEXTS, _TEXTS).map(lambda p: f"{p[0]}<{p[1]}>{p[2]}"),
    ),
    st.booleans(),
)
def test_name_addr_shortcut_property(text, uri_cached):
    for cache in CACHES:
        cache.clear()
    expected = outcome(_parse_name_addr_general, text)
    if not uri_cached:
        uri._URI_CACHE.clear()
    assert outcome(_parse_name_addr, text) == expected
    assert outcome(_parse_name_addr, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.test;transport=tcp",
        "sip:bob@example.test",
        "tel:+15551234567;phone-context=example.test",
    ],
)
def test_a_shared_parse_cannot_be_written(text):
    """Parses are shared process-wide: a write must fail, not corrupt every later parse."""
    parsed = parse_uri(text)
    na = parse_name_addr(f"<{text}>;tag=1")
    for value in (parsed, na):
        with pytest.raises(AttributeError):
            value.params = {}
        for write in (
            lambda p: p.__setitem__("lr", None),
            lambda p: p.pop("tag", None),
            lambda p: p.update(x="1"),
            lambda p: p.clear(),
            lambda p: p.setdefault("x"),
        ):
            with pytest.raises(TypeError):
                write(value.params)
    with pytest.raises(AttributeError):
        parsed.host = "evil.test"
    assert parse_uri(text) is parsed and str(parsed) == text
