"""SIP, SIPS and tel URIs, name-addr values and parameters (RFC 3261 §19, §20.10, §25)."""

import copy
import pickle

import pytest

from sipcore.errors import SipError, SipParseError
from sipcore.headers import parse_via
from sipcore.uri import (
    NameAddr,
    SipUri,
    UnsupportedScheme,
    check_host,
    format_params,
    parse_name_addr,
    parse_number,
    parse_params,
    parse_uri,
    split_hostport,
    split_quoted,
    unquote_string,
)


# -- parse_uri: valid ---------------------------------------------------------


def test_plain_sip_uri():
    u = parse_uri("sip:alice@example.test")
    assert (u.scheme, u.user, u.password, u.host, u.port) == (
        "sip",
        "alice",
        None,
        "example.test",
        None,
    )
    assert u.params == {} and u.headers == ""


def test_full_sip_uri():
    u = parse_uri(
        "sips:alice:secret@Example.TEST:5061;transport=TLS;lr;maddr=192.0.2.1?subject=x&priority=urgent"
    )
    assert u.scheme == "sips"
    assert (u.user, u.password) == ("alice", "secret")
    assert (u.host, u.port) == ("Example.TEST", 5061)
    assert u.params == {"transport": "TLS", "lr": None, "maddr": "192.0.2.1"}
    assert u.transport == "tls"
    assert u.headers == "subject=x&priority=urgent"


def test_uri_headers_without_params():
    u = parse_uri("sip:alice@example.test?subject=x")
    assert u.host == "example.test" and u.params == {} and u.headers == "subject=x"
    assert str(u) == "sip:alice@example.test?subject=x"


def test_uri_without_user():
    u = parse_uri("sip:registrar.example.test;lr")
    assert u.user is None and u.host == "registrar.example.test" and u.params == {"lr": None}
    assert u.aor() == "sip:registrar.example.test"


def test_scheme_is_case_insensitive():
    assert parse_uri("SIP:alice@example.test").scheme == "sip"
    assert parse_uri("SiPs:alice@example.test").scheme == "sips"


@pytest.mark.parametrize(
    "text, host, port, bare",
    [
        ("sip:alice@[2001:db8::10]", "[2001:db8::10]", None, "2001:db8::10"),
        ("sip:alice@[2001:DB8::10]:5070;transport=tcp", "[2001:DB8::10]", 5070, "2001:db8::10"),
        ("sip:[::ffff:192.0.2.1]:5060", "[::ffff:192.0.2.1]", 5060, "::ffff:192.0.2.1"),
        ("sip:192.0.2.1:5060", "192.0.2.1", 5060, "192.0.2.1"),
    ],
)
def test_ipv6_and_ipv4_hosts(text, host, port, bare):
    u = parse_uri(text)
    assert (u.host, u.port, u.host_bare) == (host, port, bare)


def test_escaped_user_equals_unescaped():
    escaped = parse_uri("sip:%61lice@example.test")
    plain = parse_uri("sip:alice@EXAMPLE.test")
    assert escaped.user == "%61lice"  # kept as written, for forwarding
    assert escaped.aor() == plain.aor() == "sip:alice@example.test"
    assert escaped.canonical() == plain.canonical()


def test_user_comparison_stays_case_sensitive():
    assert (
        parse_uri("sip:Alice@example.test").canonical()
        != parse_uri("sip:alice@example.test").canonical()
    )


def test_canonical_keeps_escaped_what_must_not_be_bare():
    # RFC 4475 §3.1.1.4: %00 and %00%00 are two users; a binding key holds no NUL,
    # CR or LF, and bytes that are not UTF-8 are not all one character.
    keys = [
        parse_uri(f"sip:{user}@h").canonical()
        for user in ("%00", "%00%00", "%2500", "%25", "%ff", "%FE", "a%0d%0ab", "%c3")
    ]
    assert keys == [
        "sip:%00@h",
        "sip:%00%00@h",
        "sip:%2500@h",
        "sip:%25@h",
        "sip:%FF@h",
        "sip:%FE@h",
        "sip:a%0D%0Ab@h",
        "sip:%C3@h",
    ]
    assert parse_uri("sip:%00@h").canonical() == parse_uri("sip:%00@H").canonical()
    assert parse_uri("sip:m%C3%BCller@h").canonical() == parse_uri("sip:m\u00fcller@h").canonical()


def test_canonical_keeps_significant_params_only():
    a = parse_uri("sip:alice@example.test;transport=TCP;foo=bar")
    b = parse_uri("sip:alice@example.test;transport=tcp")
    assert a.canonical() == b.canonical() == "sip:alice@example.test;transport=tcp"


def test_escaped_null_in_user():
    u = parse_uri("sip:null-%00-null@example.test")
    assert u.user == "null-%00-null"
    assert u.aor() == "sip:null-\x00-null@example.test"


def test_percent_that_is_not_an_escape_does_not_crash():
    u = parse_uri("sip:%25user%zz@example.test")
    assert u.host == "example.test"
    assert u.aor().endswith("@example.test")


def test_user_part_with_semicolon_parameters():
    # RFC 4475 §3.1.1.9 style: ";" in the user part belongs to the user.
    u = parse_uri("sip:user;par=u%40example.net@example.test;transport=udp")
    assert u.user == "user;par=u%40example.net"
    assert u.host == "example.test"
    assert u.params == {"transport": "udp"}
    assert u.aor() == "sip:user;par=u@example.net@example.test"


def test_user_part_with_question_mark_and_odd_characters():
    # RFC 4475 §3.1.1.2 style user part: "?" and ";" are user-unreserved.
    text = "sip:1_odd.URI~(to-be!sure)&isn't+it$/odd?,/;;*:&it+has=1,odd!*pass$wo~d_too.(it)@example.test"
    u = parse_uri(text)
    assert u.host == "example.test" and u.port is None and u.headers == ""
    assert u.user == "1_odd.URI~(to-be!sure)&isn't+it$/odd?,/;;*"
    assert u.password == "&it+has=1,odd!*pass$wo~d_too.(it)"
    assert str(u) == text


def test_at_sign_in_escaped_header_value():
    u = parse_uri("sip:bob@example.test?Replaces=abc%40host%3Bto-tag%3D1")
    assert (u.user, u.host) == ("bob", "example.test")
    assert u.headers == "Replaces=abc%40host%3Bto-tag%3D1"


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.test",
        "sips:alice:pw@example.test:5061;transport=tls;lr",
        "sip:alice@[2001:db8::1]:5060;maddr=[2001:db8::2]",
        "sip:example.test;lr?subject=hello%20world",
        "tel:+1-201-555-0123;phone-context=example.test",
        "tel:7042;phone-context=example.test;isub=12",
    ],
)
def test_str_round_trip(text):
    assert str(parse_uri(text)) == text
    assert parse_uri(str(parse_uri(text))) == parse_uri(text)


# -- tel URIs ---------------------------------------------------------------


def test_tel_uri_with_parameters():
    u = parse_uri("tel:+1-201-555-0123;ext=1234;phone-context=+1")
    assert u.scheme == "tel" and u.host == "" and u.port is None
    assert u.user == "+1-201-555-0123"
    assert u.params == {"ext": "1234", "phone-context": "+1"}
    assert u.aor() == "tel:+12015550123"


def test_tel_uri_visual_separators_compare_equal():
    assert parse_uri("tel:+1.201.555.0123").aor() == parse_uri("tel:+12015550123").aor()


@pytest.mark.parametrize("text", ["tel:", "tel:;phone-context=x", "tel:+1 201", "tel:+1<2>"])
def test_bad_tel_uris(text):
    with pytest.raises(SipParseError) as exc:
        parse_uri(text)
    assert exc.value.status == 400


# -- parse_uri: invalid -----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip",
        "sip:",
        ":alice@example.test",
        "sip:@example.test",
        "sip:alice@",
        "sip:alice@:5060",
        "sip:alice@example.test:",
        "sip:alice@example.test:0",
        "sip:alice@example.test:65536",
        "sip:alice@example.test:5x",
        "sip:alice@example.test:" + "9" * 5000,
        "sip:alice@example.test:\u00b2",
        "sip:alice@exa mple.test",
        "sip:alice@exa\tmple.test",
        "sip:alice@exa<mple",
        "sip:alice@[2001:db8::1",
        "sip:alice@[2001:db8::1]x",
        "sip:alice@[zz::1]",
        "sip:alice@[]",
        "sip:alice@[1.2.3.4]",
        "sip:alice@ex\u00e4mple.test",
        "<sip:alice@example.test>",
        '"sip":x',
        "sip:alice@example.test\x00",
    ],
)
def test_malformed_uris_are_400(text):
    with pytest.raises(SipParseError) as exc:
        parse_uri(text)
    assert exc.value.status == 400
    assert not isinstance(exc.value, UnsupportedScheme)
    assert "\r" not in exc.value.reason and "\n" not in exc.value.reason


@pytest.mark.parametrize(
    "text, scheme",
    [
        ("http://example.test/", "http"),
        ("nobodyKnowsThisScheme:totallyopaquecontent", "nobodyknowsthisscheme"),
        ("soap.beep://192.0.2.103:3002", "soap.beep"),
        ("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "urn"),
    ],
)
def test_unknown_scheme_is_416(text, scheme):
    with pytest.raises(UnsupportedScheme) as exc:
        parse_uri(text)
    assert exc.value.status == 416
    assert exc.value.reason == "Unsupported URI Scheme"
    assert exc.value.scheme == scheme
    assert isinstance(exc.value, SipError)
    assert str(exc.value).startswith("416 ")


# -- helpers ------------------------------------------------------------------


def test_split_hostport():
    assert split_hostport("example.test") == ("example.test", None)
    assert split_hostport("example.test:5060") == ("example.test", 5060)
    assert split_hostport("[::1]:5061") == ("[::1]", 5061)
    assert split_hostport("[::1]") == ("[::1]", None)
    for bad in ("", ":5060", "[::1]:", "[::1]5060", "host:65536", "host:-1"):
        with pytest.raises(SipParseError):
            split_hostport(bad)


def test_check_host():
    for good in (
        "example.test",
        "a-b_c.example.test",
        "192.0.2.1",
        "[2001:db8::1]",
        "[::ffff:1.2.3.4]",
    ):
        check_host(good)
    for bad in ("", "a b", "a/b", "[::1", "[]", "[g::1]", "a@b"):
        with pytest.raises(SipParseError):
            check_host(bad)


def test_parse_number():
    assert parse_number("0068", "Max-Forwards", 255) == 68
    assert parse_number("0" * 100 + "7", "X", 10) == 7
    for bad in ("", "-1", "+1", "1.0", " 1", "\u00b2", "\u0661", "1e3"):
        with pytest.raises(SipParseError) as exc:
            parse_number(bad, "X", 10)
        assert exc.value.reason == "malformed X"
    for big in ("11", "9" * 5000):
        with pytest.raises(SipParseError) as exc:
            parse_number(big, "X", 10)
        assert exc.value.reason == "X out of range"


def test_parse_params():
    assert parse_params("") == {}
    assert parse_params(";lr;Transport=UDP; q = 0.5 ;;") == {
        "lr": None,
        "transport": "UDP",
        "q": "0.5",
    }
    assert parse_params('+sip.instance="<urn:uuid:a;b>";reg-id=1') == {
        "+sip.instance": '"<urn:uuid:a;b>"',
        "reg-id": "1",
    }
    assert parse_params("branch=") == {"branch": ""}
    with pytest.raises(SipParseError):
        parse_params(";=x")
    with pytest.raises(SipParseError):
        parse_params(';a="unterminated')


def test_format_params_round_trip():
    params = {"lr": None, "transport": "tcp", "+sip.instance": '"<urn:uuid:1>"'}
    assert format_params(params) == ';lr;transport=tcp;+sip.instance="<urn:uuid:1>"'
    assert parse_params(format_params(params)) == params


def test_split_quoted():
    assert split_quoted("a,b,,c", ",") == ["a", "b", "", "c"]
    assert split_quoted('"x, y" <sip:a>, <sip:b;p=1,2>, c', ",") == [
        '"x, y" <sip:a>',
        " <sip:b;p=1,2>",
        " c",
    ]
    assert split_quoted(r'"a\",b", c', ",") == [r'"a\",b"', " c"]
    assert split_quoted(r'"a\\", c', ",") == [r'"a\\"', " c"]
    assert split_quoted("<sip:a,b", ",") == ["<sip:a,b"]
    with pytest.raises(SipParseError):
        split_quoted('"open, c', ",")


def test_unquote_string():
    assert unquote_string('"Alice"') == "Alice"
    assert unquote_string(r'"J Rosenberg \\\""') == 'J Rosenberg \\"'
    assert unquote_string(r'"\a\b"') == "ab"
    assert unquote_string("token") == "token"


# -- name-addr and addr-spec --------------------------------------------------


def test_name_addr_with_quoted_display_and_escaped_quotes():
    na = parse_name_addr(r'"J Rosenberg \\\""       <sip:jdrosen@example.test>  ;  tag = 98asjd8')
    assert na.display == r'"J Rosenberg \\\""'
    assert na.name == 'J Rosenberg \\"'
    assert na.uri.user == "jdrosen" and na.tag == "98asjd8"
    assert parse_name_addr(str(na)) == na


def test_display_with_angle_bracket_and_comma_inside_quotes():
    na = parse_name_addr('"Smith, <John>" <sip:john@example.test>;tag=1')
    assert na.name == "Smith, <John>" and na.uri.user == "john" and na.tag == "1"


def test_no_space_between_display_and_uri():
    na = parse_name_addr("caller<sip:caller@example.test>;tag=323")
    assert na.display == "caller" and na.uri.user == "caller" and na.tag == "323"


def test_unquoted_multiword_display():
    na = parse_name_addr("Alice  Smith <sip:alice@example.test>")
    assert na.display == "Alice  Smith" and na.name == "Alice  Smith"


def test_utf8_quoted_display():
    na = parse_name_addr('"J\u00fcrgen \u5f20" <sip:j@example.test>')
    assert na.name == "J\u00fcrgen \u5f20"


def test_addr_spec_params_belong_to_header():
    # RFC 4475 §3.3.12: in addr-spec form, ";unknownparam" is a header parameter.
    na = parse_name_addr("sip:+19725552222@gw1.example.test;unknownparam;tag=x")
    assert na.display is None
    assert na.uri.params == {}
    assert na.params == {"unknownparam": None, "tag": "x"}


def test_name_addr_params_inside_brackets_belong_to_uri():
    # RFC 4475 §3.3.13: inside <>, the parameter belongs to the URI.
    na = parse_name_addr("<sip:+19725552222@gw1.example.test;unknownparam>")
    assert na.uri.params == {"unknownparam": None}
    assert na.params == {}


def test_name_addr_with_uri_headers():
    na = parse_name_addr("<sip:user@example.test?Route=%3Csip:sip.example.test%3E>")
    assert na.uri.headers == "Route=%3Csip:sip.example.test%3E"


def test_contact_parameters_q_expires_instance_reg_id():
    na = parse_name_addr(
        "<sip:alice@192.0.2.4:5060;transport=tcp>;q=0.5;expires=3600;"
        '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    )
    assert na.q == 0.5
    assert na.expires == 3600
    assert na.instance == "urn:uuid:00000000-0000-1000-8000-000A95A0E128"
    assert na.params["+sip.instance"] == '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    assert na.reg_id == 1
    assert na.uri.transport == "tcp"


def test_contact_parameters_absent():
    na = parse_name_addr("<sip:alice@example.test>")
    assert (na.q, na.expires, na.instance, na.reg_id, na.tag, na.name) == (None,) * 6


@pytest.mark.parametrize(
    "q, value", [("0", 0.0), ("1", 1.0), ("1.000", 1.0), ("0.001", 0.001), ("0.", 0.0)]
)
def test_valid_q_values(q, value):
    assert parse_name_addr(f"<sip:a@example.test>;q={q}").q == value


@pytest.mark.parametrize(
    "params",
    [
        "q=2",
        "q=1.5",
        "q=0.5555",
        "q=abc",
        "q=-0.5",
        "q=",
        "q=.5",
        "expires=abc",
        "expires=-1",
        "expires=4294967296",
        "expires=" + "9" * 5000,
        "reg-id=0",
        "reg-id=x",
        "reg-id=2147483648",
    ],
)
def test_invalid_contact_parameters(params):
    na = parse_name_addr(f"<sip:a@example.test>;{params}")
    name = params.split("=")[0]
    with pytest.raises(SipParseError) as exc:
        {"q": lambda: na.q, "expires": lambda: na.expires, "reg-id": lambda: na.reg_id}[name]()
    assert exc.value.status == 400


@pytest.mark.parametrize(
    "text, words",
    [
        ('"Mr. J. User <sip:j.user@example.test>', "unterminated quoted string"),
        ("Bell, Alexander <sip:a.g.bell@example.test>;tag=43", "must be quoted"),
        ("Bell@Home <sip:bell@example.test>", "must be quoted"),
        ('"A" B <sip:a@example.test>', "bad display name"),
        ('"A" ', "bad display name"),
        ("<sip:a@example.test", "unterminated <URI>"),
        ("<sip:a@example.test> junk", "junk after <URI>"),
        ("sip:user@example.test?Route=%3Csip:sip.example.test%3E", "enclosed in <>"),
        ("", "empty address"),
        ("   ", "empty address"),
        ("<http://example.test/>", "unsupported URI scheme 'http'"),
        ("isbn:2983792873", "unsupported URI scheme 'isbn'"),
        ("< sip:a@exa mple.test >", "whitespace in URI"),
    ],
)
def test_malformed_name_addr(text, words):
    with pytest.raises(SipParseError) as exc:
        parse_name_addr(text)
    # 416 is only for the Request-URI: a bad address in a header is a 400.
    assert exc.value.status == 400
    assert words in exc.value.reason


def test_name_addr_str_round_trip():
    for text in [
        '"Alice" <sip:alice@example.test>;tag=1',
        "<sip:a@[::1]:5060;lr>",
        "<tel:+1-201-555-0123>;tag=x",
        '<sip:a@b.test>;+sip.instance="<urn:uuid:1>";reg-id=2',
    ]:
        na = parse_name_addr(text)
        assert str(na) == text
        assert parse_name_addr(str(na)) == na


def test_addr_spec_str_adds_brackets():
    na = parse_name_addr("sip:alice@example.test;tag=1")
    assert str(na) == "<sip:alice@example.test>;tag=1"
    assert isinstance(na, NameAddr) and isinstance(na.uri, SipUri)


def test_parsed_values_copy_pickle_and_replace():
    """``SipUri``, ``NameAddr`` and ``Via`` survive copies and pickles; a URI changes by a new one."""
    via = parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport")
    na = parse_name_addr('"Alice" <sip:alice@example.test:5070;transport=tcp>;tag=1')
    for value in (na, na.uri, via):
        assert copy.copy(value) == value and copy.deepcopy(value) == value
        assert pickle.loads(pickle.dumps(value)) == value
    changed = na.uri._replace(user="bob")
    assert str(changed) == "sip:bob@example.test:5070;transport=tcp" and na.uri.user == "alice"
    via.params["received"] = "192.0.2.9"
    assert str(via) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport;received=192.0.2.9"
