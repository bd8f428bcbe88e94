"""Tests for sipcore.digest: RFC vectors, nonces, replay table, parsing, end to end."""

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipcore import digest
from sipcore.digest import (
    BANNED,
    NONCE_LENGTH,
    Authenticator,
    AuthResult,
    Credentials,
    NonceCounts,
    NonceFactory,
    _params,
    _params_slow,
    expected_response,
    ha1,
    origin_tag,
    parse_credentials,
)
from sipcore.errors import SipParseError

RFC2617_HEADER = (
    'Digest username="Mufasa", realm="testrealm@host.com", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", '
    'qop=auth, nc=00000001, cnonce="0a4f113b", '
    'response="6629fae49393a05397450978507c4ef1", '
    'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)

RFC7616_REALM = "http-auth@example.org"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def rfc7616_header(algorithm: str, response: str) -> str:
    return (
        f'Digest username="Mufasa", realm="{RFC7616_REALM}", '
        f'uri="/dir/index.html", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", nc=00000001, cnonce="{RFC7616_CNONCE}", '
        f'qop=auth, response="{response}", opaque="{RFC7616_OPAQUE}"'
    )


# ---- known vectors -------------------------------------------------------


def test_ha1_md5_and_sha256():
    assert (
        ha1("Mufasa", "testrealm@host.com", "Circle Of Life") == "939e7578ed9e3c518a452acee763bce9"
    )
    assert (
        ha1("Mufasa", RFC7616_REALM, "Circle of Life", "SHA-256")
        == hashlib.sha256(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    )
    assert len(ha1("a", "b", "c", "SHA-256")) == 64
    with pytest.raises(ValueError):
        ha1("a", "b", "c", "SHA-512")


def test_rfc2617_example():
    creds = parse_credentials(RFC2617_HEADER)
    assert creds.algorithm == "MD5" and creds.qop == "auth"
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    h = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert expected_response(creds, "GET", h) == "6629fae49393a05397450978507c4ef1"


def test_rfc7616_md5_example():
    creds = parse_credentials(rfc7616_header("MD5", "8ca523f5e9506fed4657c9700eebdbec"))
    h = ha1("Mufasa", RFC7616_REALM, "Circle of Life", "MD5")
    assert expected_response(creds, "GET", h) == creds.response


def test_rfc7616_sha256_example():
    response = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    creds = parse_credentials(rfc7616_header("SHA-256", response))
    assert creds.algorithm == "SHA-256"
    h = ha1("Mufasa", RFC7616_REALM, "Circle of Life", "SHA-256")
    assert expected_response(creds, "GET", h) == response


def test_expected_response_variants():
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    h = ha1("bob", "r", "pw")
    base = Credentials("bob", "r", "n1", "sip:r", "x")
    assert expected_response(base, "REGISTER", h) == md5(f"{h}:n1:{md5('REGISTER:sip:r')}")
    sess = Credentials("bob", "r", "n1", "sip:r", "x", "MD5-sess", "auth", "00000001", "cn")
    ha1_sess = md5(f"{h}:n1:cn")
    assert expected_response(sess, "REGISTER", h) == md5(
        f"{ha1_sess}:n1:00000001:cn:auth:{md5('REGISTER:sip:r')}"
    )
    body = b"v=0\r\n"
    aint = Credentials("bob", "r", "n1", "sip:r", "x", "MD5", "auth-int", "00000001", "cn")
    ha2 = md5(f"INVITE:sip:r:{hashlib.md5(body).hexdigest()}")
    assert expected_response(aint, "INVITE", h, body) == md5(f"{h}:n1:00000001:cn:auth-int:{ha2}")
    assert expected_response(Credentials("bob", "r", "n", "u", "x", "SHA-512"), "GET", h) is None
    assert expected_response(Credentials("bob", "r", "n", "u", "x", "MD5-sess"), "GET", h) is None
    assert (
        expected_response(
            Credentials("bob", "r", "n", "u", "x", "MD5", "bogus", "00000001", "c"), "GET", h
        )
        is None
    )


# ---- nonces --------------------------------------------------------------


def test_nonce_round_trip():
    f = NonceFactory(b"secret", lifetime=300.0)
    n = f.make(1000.0)
    assert len(n) == NONCE_LENGTH
    assert not set(n) & set('",; \\=')
    assert f.check(n, 1000.0) == "ok"
    assert f.check(n, 1299.9) == "ok"
    assert f.check(n, 1300.5) == "stale"
    assert f.make(1000.0) != n


def test_nonce_from_the_future_is_stale_beyond_skew():
    f = NonceFactory(b"secret", lifetime=300.0, max_skew=5.0)
    n = f.make(1000.0)
    assert f.check(n, 997.0) == "ok"
    assert f.check(n, 990.0) == "stale"


def test_nonce_tampered_or_foreign_is_invalid():
    f = NonceFactory(b"secret")
    n = f.make(1000.0)
    assert NonceFactory(b"other").check(n, 1000.0) == "invalid"
    flipped = n[:-1] + ("A" if n[-1] != "A" else "B")
    assert f.check(flipped, 1000.0) == "invalid"
    later = "%012x" % (int(n[:12], 16) + 100_000) + n[12:]
    assert f.check(later, 1000.0) == "invalid"
    for bad in ("", "abc", n + "x", n[:-1], "é" * 48, "dcd98b7102dd2f0e8b11d0f600bfb0c093"):
        assert f.check(bad, 1000.0) == "invalid"


def test_nonce_format():
    """Time, salt, origin tag, then HMAC-SHA256 over the three: the layout any node checks."""
    secret = b"secret"
    f = NonceFactory(secret)

    def old_mac(prefix: str) -> str:
        mac = hmac.digest(secret, prefix.encode("ascii"), "sha256")[:18]
        return base64.urlsafe_b64encode(mac).decode("ascii")

    for i in range(200):
        n = f.make(1000.0 + i)
        assert n[:12] == "%012x" % (1_000_000 + 1000 * i)
        assert len(base64.urlsafe_b64decode(n[12:24])) == 9
        assert n[24:32] == f.origin
        assert n[32:] == old_mac(n[:32])
    # A salt whose base64 needs both URL-safe characters.
    prefix = "%012x" % 1_000_000 + base64.urlsafe_b64encode(b"\xfb\xff\xbf" * 3).decode() + f.origin
    assert "-" in prefix and "_" in prefix
    assert f.check(prefix + old_mac(prefix), 1000.0) == "ok"


def test_nonce_secret_required():
    with pytest.raises(ValueError):
        NonceFactory(b"")


# ---- nonce counts --------------------------------------------------------


def test_nc_replay_refused_increasing_accepted():
    t = NonceCounts()
    assert t.accept("n", 1, 0.0, 300.0)
    assert not t.accept("n", 1, 1.0, 300.0)
    assert t.accept("n", 2, 1.0, 300.0)
    assert t.accept("n", 5, 1.0, 300.0)
    assert not t.accept("n", 4, 1.0, 300.0)
    assert not t.accept("n", 5, 1.0, 300.0)
    assert t.accept("other", 1, 1.0, 300.0)
    assert not t.accept("zero", 0, 1.0, 300.0)
    assert not t.accept("expired", 1, 301.0, 300.0)


def test_nonce_counts_bounded_and_evicted_never_replayable():
    t = NonceCounts(max_entries=10)
    for i in range(100):
        assert t.accept(f"n{i}", 1, 0.0, 100.0 + i)
        assert len(t) <= 10
    assert len(t) == 10
    assert not t.accept("n0", 1, 0.0, 100.0)
    assert not t.accept("n0", 2, 0.0, 100.0)
    assert not t.accept("n95", 1, 0.0, 195.0)
    assert t.accept("n95", 2, 0.0, 195.0)


def test_nonce_counts_expired_entries_swept_first():
    t = NonceCounts(max_entries=10)
    for i in range(5):
        t.accept(f"old{i}", 1, 0.0, 10.0)
    t.accept("fresh", 1, 20.0, 100.0)
    assert len(t) == 1
    assert not t.accept("old0", 1, 20.0, 10.0)


# ---- parsing -------------------------------------------------------------


def test_parse_tricky_input():
    c = parse_credentials(
        '  digest   USERNAME = "Mu\\"fa\\\\sa" ,Realm="a, b=c",nonce=abc,'
        '\turi = "sip:x@y;transport=udp",  response="ABCDEF", '
        'ALGORITHM=sha-256,  qop="AUTH", NC=0000000a, cnonce="q\\"",foo=bar,'
    )
    assert c.username == 'Mu"fa\\sa'
    assert c.realm == "a, b=c"
    assert c.nonce == "abc"
    assert c.uri == "sip:x@y;transport=udp"
    assert c.response == "abcdef"
    assert c.algorithm == "SHA-256"
    assert c.qop == "auth"
    assert c.nc == "0000000a"
    assert c.cnonce == 'q"'
    assert c.opaque is None


def test_parse_quoted_commas_and_equals_without_escapes():
    c = parse_credentials(
        'Digest username="a,b", realm="x=y, z", nonce="n", uri="sip:u;lr", response="0", opaque=""'
    )
    assert (c.username, c.realm, c.uri, c.opaque) == ("a,b", "x=y, z", "sip:u;lr", "")


def test_parse_defaults_and_username_star():
    c = parse_credentials(
        "Digest username*=UTF-8''J%C3%A4s%C3%B8n, realm=r, nonce=n, uri=u, response=00"
    )
    assert c.username == "Jäsøn"
    assert c.algorithm == "MD5" and c.qop is None and c.nc is None
    assert (
        parse_credentials(
            "Digest username=a,realm=r,nonce=n,uri=u,response=0,algorithm=md5-sess"
        ).algorithm
        == "MD5-sess"
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        "Digestusername=a",
        'Digest realm="r", nonce="n", uri="u", response="0"',
        'Digest username="a", nonce="n", uri="u", response="0"',
        'Digest username="a", realm="r", uri="u", response="0"',
        'Digest username="a", realm="r", nonce="n", response="0"',
        'Digest username="a", realm="r", nonce="n", uri="u"',
        'Digest username="a, realm="r", nonce="n", uri="u", response="0',
        'Digest username="a" x, realm="r", nonce="n", uri="u", response="0"',
        'Digest username="a", username="b", realm="r", nonce="n", uri="u", response="0"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", qop=auth',
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", qop=auth, '
        'nc=1, cnonce="c"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", qop=auth, '
        'nc=0x000001, cnonce="c"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", stray',
        "Digest username*=nope, realm=r, nonce=n, uri=u, response=0",
    ],
)
def test_parse_malformed_is_400(value):
    with pytest.raises(SipParseError) as err:
        parse_credentials(value)
    assert err.value.status == 400


# ---- parameter lists: fast path against the scanner ----------------------


def params_outcome(parse, value: str):
    """What ``parse(value, 6)`` gives for a ``Digest ...`` value: its dict or its error."""
    try:
        return ("ok", parse(value, 6))
    except SipParseError as err:
        return ("error", err.reason)


def assert_params_agree(value: str):
    """``_params`` gives what ``_params_slow`` gives, whether the shape is new or known."""
    expected = params_outcome(_params_slow, value)
    assert params_outcome(_params, value) == expected
    assert params_outcome(_params, value) == expected


@pytest.fixture
def no_shapes():
    """Start and leave the test with no shape known."""
    digest._SHAPES.clear()
    yield
    digest._SHAPES.clear()


SIPP = (
    'username="user17",realm="example.test",cnonce="6b8b4567",nc=00000001,qop=auth,'
    'uri="sip:example.test",nonce="0000000f4240AbCdEf-_12345678901234567890123456789012",'
    'response="0123456789abcdef0123456789abcdef",algorithm=MD5'
)

PARAM_LISTS = [
    SIPP,
    SIPP.replace(",", ", "),
    'username="a", realm="r", uri="sip:r", nonce="n", response="0", algorithm=MD5',
    'username="a,b", realm="x=y, z", uri="sip:u;lr"',
    'username="Mu\\"fa", realm="r"',
    'username="a\\\\", realm="r"',
    'username="a\\',
    "realm=a\\,b",
    ' username = "a" , realm= r ,\tnc =1',
    'opaque="", nc=, uri=',
    "foo=bar, x-y*=1, username*=UTF-8''a%20b",
    'USERNAME="a", Realm=r, NC=00000001',
    'username="a',
    'username="a", realm="r',
    'username="a",',
    ',,username="a",, ,realm="r",,',
    'username="a" x, realm="r"',
    'username="a"realm="r"',
    'username="a"  ,realm="r"',
    "username=a b, realm=r",
    'username="a", username="b"',
    'username="a", USERNAME="b"',
    "nc=1, NC=2",
    "username",
    'username="a", stray',
    'stray, username="a"',
    'a"b=c',
    "a b=c",
    "=x",
    ' = "x"',
    "a;b=c",
    'a=x"y',
    'a="x""y"',
    'a="""',
    'a=""""',
    'a="x", b="y',
    "a==b, c=d=e",
    'a="é", ü=1, b=é',
    'a=\x0bb\x0b, c="\x0b"',
    'a=\r\n"x"\r\n,\r\nb=c',
    'a="x"\x0b, b=c',
    'a="x\ny"',
    "",
    "   ",
    ",",
    '"',
    '""',
    '="a", b',
]


@pytest.mark.parametrize("text", PARAM_LISTS)
def test_params_fast_path_agrees_with_scanner(no_shapes, text):
    assert_params_agree("Digest " + text)


def test_params_same_shape_other_values(no_shapes):
    assert _params('Digest username="a", realm="r", nc=00000001', 6) == {
        "username": "a",
        "realm": "r",
        "nc": "00000001",
    }
    second = _params('Digest username="b, c", realm="", nc=00000001', 6)
    assert second == {"username": "b, c", "realm": "", "nc": "00000001"}
    assert len(digest._SHAPES) == 1
    # Each call gets its own dict (parse_credentials adds "username" to it).
    second["nc"] = "x"
    assert _params('Digest username="a", realm="r", nc=00000001', 6)["nc"] == "00000001"


def test_params_shapes_bounded(no_shapes):
    for n in range(2 * digest._SHAPES_MAX):
        assert _params(f'Digest username="a", nc={n:08x}', 6)["nc"] == f"{n:08x}"
        assert len(digest._SHAPES) <= digest._SHAPES_MAX
    digest._SHAPES.clear()
    long = 'Digest username="a", ' + "x" * digest._SHAPE_TEXT_MAX + "=1"
    assert _params(long, 6)["username"] == "a"
    assert not digest._SHAPES


# Mostly well-formed pieces, so that plain shapes are common, with odd ones
# among them.
_PARAM_NAMES = [
    "username",
    "realm",
    "nonce",
    "uri",
    "response",
    "qop",
    "nc",
    "cnonce",
    "algorithm",
    "opaque",
    "username*",
    "Realm",
    "x-y",
    "NC",
    "a b",
    'a"',
    "",
    "é",
    ",",
    "a\\",
]
_SPACES = st.sampled_from(["", "", "", "", " ", "\t", "\r\n "])
_SEPARATORS = st.sampled_from([",", ",", ",", ", ", ", ", ", ", " ,", ",,", ", ,", "", " "])
_ODD = st.text(st.sampled_from(list('a ,"\\\t\x0b')), max_size=3)
_QUOTED = st.one_of(st.text(st.sampled_from(list("ab0 ,=;:é")), max_size=6), _ODD)
_BARE = st.one_of(st.text(st.sampled_from(list("ab0-.:=é")), max_size=6), _ODD)


def _render(names, items, which: int) -> str:
    """A ``Digest`` value of ``items``, quoted strings taken from column ``which``."""
    out = []
    for name, (before, after, quoted, values, bare, trail, sep) in zip(names, items, strict=False):
        value = f'"{values[which]}"' if quoted else bare
        out.append(f"{name}{before}={after}{value}{trail}{sep}")
    return "Digest " + "".join(out)


@settings(max_examples=300, deadline=None)
@given(
    st.permutations(_PARAM_NAMES),
    st.lists(
        st.tuples(
            _SPACES,
            _SPACES,
            st.booleans(),
            st.tuples(_QUOTED, _QUOTED),
            _BARE,
            _SPACES,
            _SEPARATORS,
        ),
        max_size=6,
    ),
)
def test_params_property(names, items):
    # The two renderings share a layout, so a plain shape the first makes
    # known is found again for the second, with other quoted contents.
    for which in (0, 1):
        assert_params_agree(_render(names, items, which))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            list('ab=,"\\ \t\r\n\x0bé') + ["username", "Realm", '"x"', '""', ", ", "=x", '="q,r"']
        ),
        max_size=16,
    ).map("".join)
)
def test_params_property_any_text(text):
    assert_params_agree("Digest " + text)


# ---- Authenticator end to end --------------------------------------------

REALM = "tandem.test"
USERS = {
    "alice": {
        "MD5": ha1("alice", REALM, "wonderland"),
        "SHA-256": ha1("alice", REALM, "wonderland", "SHA-256"),
    },
    "oldie": {"MD5": ha1("oldie", REALM, "pw")},
    "blank": {"MD5": ""},
}


def make_auth(**kw) -> Authenticator:
    return Authenticator(REALM, b"cluster-secret", USERS.get, **kw)


def answer(
    challenge: str,
    user: str,
    password: str,
    method: str = "REGISTER",
    nc: int = 1,
    cnonce: str = "0a4f113b",
    qop: bool = True,
    algorithm: str | None = None,
    uri: str = f"sip:{REALM}",
) -> str:
    """Play the client: answer one challenge value."""
    params = parse_credentials(
        challenge
        + ', username="x", uri="x", response="0"'
        + (', nc=00000001, cnonce="x"' if "qop=" in challenge else "")
    )
    alg = algorithm or params.algorithm
    creds = Credentials(
        user,
        params.realm,
        params.nonce,
        uri,
        "",
        alg,
        "auth" if qop else None,
        f"{nc:08x}" if qop else None,
        cnonce if qop else None,
    )
    base = alg.removesuffix("-sess")
    resp = expected_response(creds, method, ha1(user, params.realm, password, base))
    value = (
        f'Digest username="{user}", realm="{params.realm}", '
        f'nonce="{params.nonce}", uri="{uri}", response="{resp}", '
        f"algorithm={alg}"
    )
    if qop:
        value += f', qop=auth, nc={nc:08x}, cnonce="{cnonce}"'
    return value


def challenge_for(result: AuthResult, algorithm: str) -> str:
    return next(c for c in result.challenges if f"algorithm={algorithm}," in c)


def test_no_header_gives_challenges_sha256_first():
    r = make_auth().authenticate("REGISTER", [], 100.0)
    assert not r.ok and r.username is None and not r.stale and r.reason == "missing"
    assert len(r.challenges) == 2
    assert r.challenges[0].startswith(f'Digest realm="{REALM}", nonce="')
    assert "algorithm=SHA-256" in r.challenges[0]
    assert "algorithm=MD5" in r.challenges[1]
    assert all('qop="auth"' in c and "stale" not in c for c in r.challenges)


def test_challenge_stale_flag_and_single_algorithm():
    a = make_auth(algorithms=("MD5",))
    values = a.challenge(0.0, stale=True)
    assert len(values) == 1 and values[0].endswith(', qop="auth", stale=true')
    with pytest.raises(ValueError):
        make_auth(algorithms=("SHA-512",))


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_correct_credentials_ok(algorithm):
    a = make_auth()
    first = a.authenticate("REGISTER", [], 100.0)
    value = answer(challenge_for(first, algorithm), "alice", "wonderland")
    r = a.authenticate("REGISTER", [value], 101.0)
    assert r == AuthResult(True, "alice", [], False, "ok")


def test_sess_variant_and_rfc2069_accepted():
    a = make_auth(require_qop=False)
    ch = challenge_for(a.authenticate("REGISTER", [], 0.0), "MD5")
    assert a.authenticate(
        "REGISTER", [answer(ch, "alice", "wonderland", algorithm="MD5-sess")], 1.0
    ).ok
    assert a.authenticate("REGISTER", [answer(ch, "alice", "wonderland", qop=False)], 1.0).ok


def test_rfc2069_refused_when_qop_is_required():
    """By default credentials without qop, replayable while the nonce lives, are refused."""
    a = make_auth()
    ch = challenge_for(a.authenticate("REGISTER", [], 0.0), "MD5")
    r = a.authenticate("REGISTER", [answer(ch, "alice", "wonderland", qop=False)], 1.0)
    assert not r.ok and r.reason == "unsupported" and r.challenges


def test_wrong_password_and_unknown_user_look_the_same():
    a = make_auth()
    fresh = lambda: challenge_for(a.authenticate("REGISTER", [], 0.0), "MD5")  # noqa: E731
    wrong = a.authenticate("REGISTER", [answer(fresh(), "alice", "nope")], 1.0)
    unknown = a.authenticate("REGISTER", [answer(fresh(), "mallory", "nope")], 1.0)
    missing_alg = a.authenticate(
        "REGISTER",
        [answer(challenge_for(a.authenticate("REGISTER", [], 0.0), "SHA-256"), "oldie", "pw")],
        1.0,
    )
    for r in (wrong, unknown, missing_alg):
        assert (r.ok, r.username, r.stale, r.reason) == (False, None, False, "denied")
        assert len(r.challenges) == 2

    def strip(r):
        return [
            c.split('nonce="')[0] + c.split('nonce="')[1][NONCE_LENGTH + 1 :] for c in r.challenges
        ]

    assert strip(wrong) == strip(unknown) == strip(missing_alg)


def test_stale_nonce():
    a = make_auth(nonce_lifetime=30.0)
    ch = challenge_for(a.authenticate("REGISTER", [], 0.0), "SHA-256")
    value = answer(ch, "alice", "wonderland")
    r = a.authenticate("REGISTER", [value], 31.0)
    assert not r.ok and r.stale and r.reason == "stale"
    assert all(c.endswith("stale=true") for c in r.challenges)
    wrong = a.authenticate("REGISTER", [answer(ch, "alice", "bad")], 31.0)
    assert not wrong.stale and wrong.reason == "denied"


def test_replayed_nc_refused_then_higher_nc_ok():
    a = make_auth()
    ch = challenge_for(a.authenticate("REGISTER", [], 0.0), "MD5")
    value = answer(ch, "alice", "wonderland", nc=1)
    assert a.authenticate("REGISTER", [value], 1.0).ok
    replay = a.authenticate("REGISTER", [value], 2.0)
    assert not replay.ok and replay.reason == "replay" and len(replay.challenges) == 2
    assert a.authenticate("REGISTER", [answer(ch, "alice", "wonderland", nc=2)], 3.0).ok


@pytest.mark.parametrize("slow", [False, True])
def test_wrong_answer_uses_up_its_nonce(slow):
    """After a wrong password a nonce takes nothing more, not even the right
    password: each guess costs a fresh challenge (both ways of reading)."""
    a = make_auth()
    ch = challenge_for(a.authenticate("REGISTER", [], 0.0), "MD5")
    # A backslash escape sends a value through the character scanner.
    tweak = (lambda v: v.replace('cnonce="0a4f113b"', 'cnonce="0a4f\\113b"')) if slow else str
    r = a.authenticate("REGISTER", [tweak(answer(ch, "alice", "bad", nc=1))], 1.0)
    assert not r.ok and r.reason == "denied"
    for nc in (2, 3):
        r = a.authenticate("REGISTER", [tweak(answer(ch, "alice", "wonderland", nc=nc))], 1.0)
        assert not r.ok and r.reason == "used" and r.challenges
    fresh = challenge_for(r, "MD5")
    assert a.authenticate("REGISTER", [tweak(answer(fresh, "alice", "wonderland"))], 1.0).ok


def test_wrong_answer_after_success_uses_the_nonce_up():
    a = make_auth()
    ch = challenge_for(a.authenticate("REGISTER", [], 0.0), "MD5")
    assert a.authenticate("REGISTER", [answer(ch, "alice", "wonderland", nc=1)], 1.0).ok
    assert not a.authenticate("REGISTER", [answer(ch, "alice", "bad", nc=2)], 1.0).ok
    assert (
        a.authenticate("REGISTER", [answer(ch, "alice", "wonderland", nc=3)], 1.0).reason == "used"
    )


def test_digest_uri_must_match_the_request_uri():
    a = make_auth()
    ch = challenge_for(a.authenticate("REGISTER", [], 0.0), "MD5")
    value = answer(ch, "alice", "wonderland")
    uri = value.split('uri="', 1)[1].split('"', 1)[0]
    with pytest.raises(SipParseError, match="uri does not match"):
        a.authenticate("REGISTER", [value], 1.0, uri="sip:elsewhere.test")
    # Refused before anything is counted: the same credentials still pass.
    assert a.authenticate("REGISTER", [value], 1.0, uri=uri.upper()).ok
    # A name of the server itself stands for any Request-URI (SIPp sends its
    # target's address), nothing else does.
    server = make_auth(server_uris=frozenset({"sip:192.0.2.10:5060"}))
    for digest_uri, ok in (("sip:192.0.2.10:5060", True), ("sip:bob@tandem.test", False)):
        ch = challenge_for(server.authenticate("REGISTER", [], 0.0), "MD5")
        creds = answer(ch, "alice", "wonderland", uri=digest_uri)
        if ok:
            assert server.authenticate("REGISTER", [creds], 1.0, uri="sip:alice@tandem.test").ok
        else:
            with pytest.raises(SipParseError):
                server.authenticate("REGISTER", [creds], 1.0, uri="sip:alice@tandem.test")


def test_nonce_of_another_node_or_boot_is_stale_when_answered_rightly():
    """A captured answer does not count on a peer or after a restart; an
    honest phone gets stale=true and answers again without asking its user."""
    one = make_auth(origin=origin_tag("node1", 1))
    two = make_auth(origin=origin_tag("node2", 1))
    rebooted = make_auth(origin=origin_tag("node1", 2))
    ch = challenge_for(one.authenticate("REGISTER", [], 0.0), "MD5")
    captured = answer(ch, "alice", "wonderland")
    assert one.authenticate("REGISTER", [captured], 1.0).ok
    for other in (two, rebooted):
        r = other.authenticate("REGISTER", [captured], 1.0)
        assert not r.ok and r.stale and r.reason == "foreign"
        assert all(c.endswith("stale=true") for c in r.challenges)
        again = answer(challenge_for(r, "MD5"), "alice", "wonderland")
        assert other.authenticate("REGISTER", [again], 1.0).ok
    wrong = two.authenticate("REGISTER", [answer(ch, "alice", "bad", nc=2)], 1.0)
    assert not wrong.stale and wrong.reason == "denied"
    assert origin_tag("node1", 1) != origin_tag("node1", 2)
    assert (
        NonceFactory(b"cluster-secret", origin=origin_tag("node2", 1)).check(
            challenge_for(one.authenticate("REGISTER", [], 0.0), "MD5").split('nonce="')[1][
                :NONCE_LENGTH
            ],
            1.0,
        )
        == "foreign"
    )


def test_guard_counts_failures_and_bans_before_any_password_check():
    from sipcore.authguard import AuthGuard, GuardSettings

    guard = AuthGuard(GuardSettings(max_failures=3, window=60.0, ban_time=100.0))
    a = make_auth(guard=guard)

    def attempt(password, source="192.0.2.1", now=1.0):
        ch = challenge_for(a.authenticate("REGISTER", [], now), "MD5")
        return a.authenticate("REGISTER", [answer(ch, "alice", password)], now, source=source)

    assert attempt("wonderland").ok
    for _ in range(3):
        assert attempt("guess").reason == "denied"
    assert attempt("wonderland") is BANNED
    assert attempt("wonderland", source="192.0.2.2").ok
    assert attempt("wonderland", now=102.0).ok


def test_bad_nonce_and_other_node_nonce():
    a = make_auth()
    ch = challenge_for(a.authenticate("REGISTER", [], 0.0), "MD5")
    forged = ch.replace('nonce="', 'nonce="Z', 1)
    r = a.authenticate("REGISTER", [answer(forged, "alice", "wonderland")], 1.0)
    assert not r.ok and r.reason == "nonce" and not r.stale
    peer = Authenticator(REALM, b"cluster-secret", USERS.get)
    r = peer.authenticate("REGISTER", [answer(ch, "alice", "wonderland")], 1.0)
    assert r.ok, "same secret and origin: one node's nonce is good on its twin"


def test_picks_our_realm_among_several_values():
    a = make_auth()
    ch = challenge_for(a.authenticate("REGISTER", [], 0.0), "SHA-256")
    good = answer(ch, "alice", "wonderland")
    other = good.replace(f'realm="{REALM}"', 'realm="elsewhere"')
    basic = "Basic YWxpY2U6d29uZGVybGFuZA=="
    r = a.authenticate("REGISTER", [basic, other, good], 1.0)
    assert r.ok and r.username == "alice"
    only_other = a.authenticate("REGISTER", [other], 1.0)
    assert not only_other.ok and only_other.reason == "missing"


def test_unsupported_algorithm_or_qop_rechallenged():
    a = make_auth(algorithms=("SHA-256",))
    ch = challenge_for(a.authenticate("REGISTER", [], 0.0), "SHA-256")
    md5 = answer(ch.replace("SHA-256", "MD5"), "alice", "wonderland")
    r = a.authenticate("REGISTER", [md5], 1.0)
    assert not r.ok and r.reason == "unsupported" and len(r.challenges) == 1
    aint = answer(ch, "alice", "wonderland").replace("qop=auth", "qop=auth-int")
    assert a.authenticate("REGISTER", [aint], 1.0).reason == "unsupported"


def test_malformed_digest_raises_400():
    with pytest.raises(SipParseError) as err:
        make_auth().authenticate("REGISTER", ['Digest username="a"'], 0.0)
    assert err.value.status == 400


def test_no_secret_in_repr():
    a = make_auth()
    text = repr(a) + repr(a.nonces) + repr(a.authenticate("REGISTER", [], 0.0))
    assert "cluster-secret" not in text
    assert USERS["alice"]["MD5"] not in text


# ---- nonce keys, salts and counts: fast ways against the plain ones ------


@pytest.mark.parametrize(
    "secret", [b"k", b"\x00" * 32, bytes(range(64)), bytes(range(65)), b"long secret " * 20]
)
def test_nonce_mac_is_hmac_sha256_for_any_secret_length(secret):
    f = NonceFactory(secret)
    for i in range(3):
        n = f.make(1000.0 + i)
        mac = hmac.digest(secret, n[:32].encode(), "sha256")[:18]
        assert n[32:] == base64.urlsafe_b64encode(mac).decode()
        assert f.check(n, 1000.0) == "ok"


def test_nonce_salts_come_in_batches_all_distinct():
    f = NonceFactory(b"secret")
    nonces = [f.make(1000.0) for _ in range(3 * digest._SALT_BATCH + 1)]
    salts = {n[12:24] for n in nonces}
    assert len(salts) == len(nonces)
    for salt in salts:
        assert len(base64.urlsafe_b64decode(salt)) == 9
    assert all(f.check(n, 1000.0) == "ok" for n in nonces)


class SweepingAlways(NonceCounts):
    """``NonceCounts`` that sweeps before every new entry, as it did before
    it learnt to skip a sweep that would drop nothing."""

    def accept(self, nonce, nc, now, expires_at):
        entry = self._table.get(nonce)
        if entry is not None:
            if nc <= entry[0]:
                return False
            entry[0] = nc
            return True
        if nc < 1 or expires_at <= now or expires_at <= self._floor:
            return False
        self._sweep(now)
        self._table[nonce] = [nc, expires_at]
        self._order.append(nonce)
        return True


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6),
    st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 3), st.integers(0, 30), st.integers(0, 40)),
        max_size=60,
    ),
)
def test_nonce_counts_skip_only_idle_sweeps(size, calls):
    fast, plain = NonceCounts(size), SweepingAlways(size)
    now = 0.0
    for nonce, nc, step, life in calls:
        now += step
        args = (f"n{nonce}", nc, now, now + life - 10)
        assert fast.accept(*args) == plain.accept(*args)
        assert fast._table == plain._table
        assert list(fast._order) == list(plain._order)
        assert fast._floor == plain._floor


# ---- Authenticator fast path against the general path --------------------


def test_success_result_equals_constructed_one():
    made = digest._success("alice")
    assert made == AuthResult(True, "alice", [], False, "ok")
    assert repr(made) == repr(AuthResult(True, "alice", [], False, "ok"))
    assert made.challenges is not digest._success("alice").challenges
    with pytest.raises(AttributeError):
        made.ok = False


PASSWORDS = {"alice": "wonderland", "oldie": "pw"}


def recording_auth(**kw):
    """An authenticator with a seeded salt generator, and the user names it looked up."""
    looked_up = []

    def lookup(user):
        looked_up.append(user)
        return USERS.get(user)

    a = Authenticator(REALM, b"cluster-secret", lookup, **kw)
    a.nonces._rng.seed(7)
    return a, looked_up


def auth_outcome(call, values, now):
    """What ``call("REGISTER", values, now)`` gives: its result or its error."""
    try:
        return ("ok", call("REGISTER", values, now))
    except Exception as err:  # whatever it is, both paths must raise it
        return ("error", type(err), str(err))


def assert_paths_agree(calls, **kw):
    """``authenticate`` and ``_authenticate_slow`` give equal results, look
    up the same users and leave equal replay tables for ``calls``, a list
    of (header values, now)."""
    fast, fast_lookups = recording_auth(**kw)
    slow, slow_lookups = recording_auth(**kw)
    for values, now in calls:
        assert auth_outcome(fast.authenticate, values, now) == auth_outcome(
            slow._authenticate_slow, values, now
        )
        assert fast_lookups == slow_lookups
        assert fast.counts._table == slow.counts._table


SIPP_ORDER = ("username", "realm", "cnonce", "nc", "qop", "uri", "nonce", "response", "algorithm")
PHONE_ORDER = ("username", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "qop", "nc")


def credentials_value(
    nonce,
    user="alice",
    password="wonderland",
    realm=REALM,
    algorithm="MD5",
    qop="auth",
    nc="00000001",
    cnonce="6b8b4567",
    uri=f"sip:{REALM}",
    order=SIPP_ORDER,
    separator=",",
    quoted=(),
    response=None,
    scheme="Digest ",
    extra="",
    upper=False,
    ha1_hex=None,
):
    """A client's value: ``quoted`` names also quote algorithm, qop or nc,
    ``response`` replaces the right one (computed from ``ha1_hex`` if
    given), ``upper`` upper-cases it; a None parameter is left out."""
    if response is None:
        canonical = digest._ALGORITHMS.get((algorithm or "MD5").upper(), algorithm)
        creds = Credentials(user, realm, nonce, uri, "", canonical, qop, nc, cnonce)
        base = canonical.removesuffix("-sess")
        if ha1_hex is None:
            ha1_hex = ha1(user, realm, password, base if base in digest._HASHES else "MD5")
        response = expected_response(creds, "REGISTER", ha1_hex) or "0" * 32
    if upper:
        response = response.upper()
    values = {
        "username": user,
        "realm": realm,
        "nonce": nonce,
        "uri": uri,
        "response": response,
        "algorithm": algorithm,
        "qop": qop,
        "nc": nc,
        "cnonce": cnonce,
    }
    plain = {"algorithm", "qop", "nc"} - set(quoted)
    parts = [
        f"{k}={v}" if k in plain else f'{k}="{v}"' for k in order if (v := values[k]) is not None
    ]
    return scheme + separator.join(parts) + extra


def issued(at=100.0):
    """A nonce our secret made at ``at``, without touching the twins' salts."""
    return NonceFactory(b"cluster-secret").make(at)


@pytest.mark.parametrize(
    "order,separator",
    [(SIPP_ORDER, ","), (PHONE_ORDER, ", "), (SIPP_ORDER, ", "), (PHONE_ORDER, ",")],
)
@pytest.mark.parametrize("algorithm", [None, "MD5", "SHA-256", "sha-256"])
def test_usual_credentials_take_the_fast_path(monkeypatch, order, separator, algorithm):
    a, _ = recording_auth()
    # Going through the general path would call None.
    monkeypatch.setattr(a, "_authenticate_slow", None)
    nonce = issued()
    value = credentials_value(nonce, algorithm=algorithm, order=order, separator=separator)
    assert a.authenticate("REGISTER", [value], 101.0) == AuthResult(True, "alice", [], False, "ok")
    value = credentials_value(
        nonce, algorithm=algorithm, order=order, separator=separator, nc="00000002", cnonce="x"
    )
    assert a.authenticate("REGISTER", [value], 101.0).ok
    assert not a.authenticate("REGISTER", [value], 101.0).ok


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"upper": True},
        {"user": "mallory"},
        {"password": "nope"},
        {"user": "oldie", "algorithm": "SHA-256"},
        {"user": "blank", "ha1_hex": ""},
        {"user": 'al"ice'},
        {"user": 'al\\"ice'},
        {"user": "al\\\\ice"},
        {"realm": "elsewhere"},
        {"scheme": "Digest\t"},
        {"scheme": " digest "},
        {"scheme": "Digest,"},
        {"scheme": "Bearer "},
        {"algorithm": "MD5-sess"},
        {"algorithm": "SHA-512"},
        {"qop": "auth-int"},
        {"qop": None, "nc": None, "cnonce": None},
        {"quoted": ("qop",)},
        {"quoted": ("nc",)},
        {"quoted": ("algorithm",)},
        {"quoted": ("algorithm",), "algorithm": "SHA-256"},
        {"quoted": ("algorithm",), "algorithm": "MD5-sess"},
        {"nc": "0000000A"},
        {"nc": "00000000"},
        {"nc": "1"},
        {"nc": "0000001g"},
        {"nc": "0x000001"},
        {"cnonce": None},
        {"uri": None},
        {"response": "é" * 32},
        {"response": "0" * 32},
        {"extra": ", username*=UTF-8''alice"},
        {"extra": ', opaque="x", foo=bar'},
        {"extra": ', response="0"'},
        {"extra": ', x="'},
    ],
)
def test_fast_path_agrees_with_general_path(change):
    nonce = issued()
    value = credentials_value(nonce, **change)
    assert_paths_agree([([value], 101.0), ([value], 102.0), ([value], 500.0)])
    assert_paths_agree([([value], 500.0), ([value, value], 101.0), ([], 101.0)])


@pytest.mark.parametrize("user", ["mallory", "oldie"])
def test_no_ha1_denied_even_for_the_dummy_response(user):
    """A user without an HA1 is refused even with the response the dummy
    HA1 (otherwise a secret) gives, on both paths."""
    dummy = ha1("", REALM, "guessed")
    for a, call in ((make_auth(), "authenticate"), (make_auth(), "_authenticate_slow")):
        a._dummy = {"MD5": dummy, "SHA-256": dummy}
        value = credentials_value(issued(), user=user, algorithm="SHA-256", ha1_hex=dummy)
        assert getattr(a, call)("REGISTER", [value], 101.0).reason == "denied"


def test_plans_and_ha2s_bounded():
    a = make_auth()
    nonce = issued()
    for n in range(digest._SHAPES_MAX + 10):
        value = credentials_value(nonce, nc=f"{n + 1:08x}", uri=f"sip:{n}@{REALM}")
        assert a.authenticate("REGISTER", [value], 101.0).ok
        assert len(a._plans) <= digest._SHAPES_MAX
        assert len(a._ha2s["MD5"]) <= digest._HA2S_MAX
    a._plans.clear()
    long = credentials_value(nonce, nc="00100000", extra=", x=" + "y" * digest._SHAPE_TEXT_MAX)
    assert a.authenticate("REGISTER", [long], 101.0).ok
    assert not a._plans


# Two kinds of parameters: usual ones, which mostly take the fast path, and
# any, odd ones among them.
_USUAL = {
    "user": ["alice", "alice", "oldie", "mallory"],
    "realm": [REALM],
    "algorithm": [None, "MD5", "MD5", "SHA-256", "sha-256"],
    "qop": ["auth", "auth", "AUTH"],
    "nc": ["00000001", "00000001", "00000002", "0000000A", "0000000a"],
    "cnonce": ["6b8b4567", "", "a,b=c"],
    "uri": [f"sip:{REALM}", f"sip:{REALM}", "sip:x;a=b,c"],
    "separator": [",", ", "],
    "scheme": ["Digest ", "digest "],
    "extra": ["", "", ', opaque="xyz"', ", foo=bar"],
    "quoted": [()],
}
_ODD = {
    "user": ['al"ice', 'al\\"ice', "al\\\\ice", "a,b", "é", "", "alice "],
    "realm": ["elsewhere", REALM.upper(), ""],
    "algorithm": ["MD5-sess", "SHA-256-sess", "SHA-512", ""],
    "qop": ["auth-int", None, ""],
    "nc": ["00000000", "1", "0000001g", ""],
    "cnonce": ["é", None],
    "uri": ["é", ""],
    "separator": [" ,", ",\t", ",,", ", \r\n "],
    "scheme": ["DIGEST\t", "  Digest ", "Digest", "Digest,", 'Digest"', "Basic ", "Bearer "],
    "extra": [", username*=UTF-8''alice", ', realm="other"', ', x="', ", x", " x", ', y="\\\\"'],
    "quoted": [("algorithm",), ("qop",), ("nc",)],
}


@st.composite
def credential_values(draw):
    """A client's Authorization value, often usual, else with odd parameters."""
    nonce = draw(
        st.one_of(
            st.just(issued()),
            st.sampled_from(
                [
                    issued(),
                    issued(-1000.0),
                    issued(200.0),
                    "Z" + issued()[1:],
                    NonceFactory(b"other").make(100.0),
                    issued()[:-1],
                    "é" * 48,
                    "",
                ]
            ),
        )
    )
    odd = draw(st.booleans())
    kw = {
        name: draw(st.sampled_from(usual + _ODD[name] if odd else usual))
        for name, usual in _USUAL.items()
    }
    kw["order"] = draw(st.permutations(SIPP_ORDER))
    kw["upper"] = draw(st.sampled_from([False] * 7 + [True]))
    right = draw(st.sampled_from([True, True, True, False]))
    kw["password"] = PASSWORDS.get(kw["user"], "x") if right else "nope"
    value = credentials_value(nonce, **kw)
    if draw(st.sampled_from([False] * 7 + [True])):
        value = value.replace('response="', 'response="é', 1)
    return value


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            credential_values(),
            st.sampled_from([1, 1, 1, 0, 2, 3]),
            st.sampled_from([99.0, 101.0, 101.0, 150.0, 401.0]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_fast_path_property(cases):
    calls = []
    for value, kind, now in cases:
        values = ([], [value], [value, value], ["Basic YWxpY2U6d29uZGVybGFuZA==", value])[kind]
        calls.append((values, now))
        # Sent again: a replay, or the same failure once more.
        calls.append((values, now + 1.0))
    assert_paths_agree(calls)


def test_credentials_holding_bytes_that_are_not_utf8():
    # Found by the atheris digest target: a cnonce (or uri) holding a byte that is
    # not UTF-8 (a surrogate once the message is decoded) made authenticate raise
    # UnicodeEncodeError, a 500 and a logged traceback per request. The response
    # is checked over the bytes the client sent, which are what it hashed.
    nonce = issued()
    ha2 = hashlib.md5(f"REGISTER:sip:{REALM}".encode()).hexdigest()
    right = hashlib.md5(
        f"{USERS['alice']['MD5']}:{nonce}:00000001:".encode() + b"6b\xff" + f":auth:{ha2}".encode()
    ).hexdigest()
    for response, ok in ((right, True), ("0" * 32, False)):
        value = (
            f'Digest username="alice",realm="{REALM}",nonce="{nonce}",uri="sip:{REALM}",'
            f'response="{response}",algorithm=MD5,cnonce="6b\udcff",qop=auth,nc=00000001'
        )
        for check in ("authenticate", "_authenticate_slow"):
            result = getattr(make_auth(), check)("REGISTER", [value], 101.0, f"sip:{REALM}")
            assert result.ok is ok, (check, result)
    creds = parse_credentials(value.replace(f"sip:{REALM}", "sip:\udcfe"))
    assert (
        expected_response(creds, "REGISTER", USERS["alice"]["MD5"])
        == hashlib.md5(
            f"{USERS['alice']['MD5']}:{nonce}:00000001:6b".encode()
            + b"\xff:auth:"
            + hashlib.md5(b"REGISTER:sip:\xfe").hexdigest().encode()
        ).hexdigest()
    )
