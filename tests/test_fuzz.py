"""Fuzzing the message parser and the digest Authorization parser (``tests/fuzz/``).

Three layers, each failing on any exception but ``SipError`` (the parser's
documented error, ``sipcore.errors``) or on a broken check of the targets:

- the crashes the fuzzers found, kept as regression inputs;
- property-based fuzzing (hypothesis): messages and Authorization values
  put together from the grammar's pieces, then mutated;
- coverage-guided fuzzing (atheris, libFuzzer): each target runs as a
  process for ``TANDEM_FUZZ_SECONDS`` (20 s by default) from seeds (the
  RFC 4475 messages, the usual Authorization shapes) with the SIP
  dictionary; a crash fails the test with the input that caused it.
"""

import base64
import glob
import os
import pathlib
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import DIGEST_SEEDS, check_credentials, check_message, seeds

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz")
#: how long each atheris target runs, in seconds
SECONDS = int(os.environ.get("TANDEM_FUZZ_SECONDS", "20"))

#: inputs that crashed a target once, by target, with what was wrong
CRASHES = {
    "digest": [
        # UnicodeEncodeError hashing a uri (and a cnonce) holding a byte that is not UTF-8.
        base64.b64decode(
            "RGlnZXN0IHVzZXJuYW1lPSJhbGljZSIscmVhbG09ImV4YW1wbGUudGVzdCIsbm9uY2U9Ik5PTkNFIix1cmk9"
            "InPacDpleGFtcGxlLnRlc3QiLHJlc3BvbnNlPSJSSUdIVCIsYWxnb3JpdGhtPU1ENSxjbm9uY2U9IjZiOGI0"
            "NTY3Iixxb3A9YXV0aCxuYz0wMDAwMDAwMQ=="
        ),
        b'Digest username="alice",realm="example.test",nonce="NONCE",uri="sip:example.test",'
        b'response="RIGHT",algorithm=MD5,cnonce="6b\xff",qop=auth,nc=00000001',
    ],
    "message": [
        # A Via's rport that is not a port: ValueError, and 99999 an OverflowError in
        # sendto that killed the proxy actor, and with it the node.
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;rport=abc\r\nFrom: <sip:a@b>;tag=1\r\n"
        b"To: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;rport=99999\r\nFrom: <sip:a@b>;tag=1\r\n"
        b"To: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    ],
}
TARGETS = {"message": check_message, "digest": check_credentials}


@pytest.mark.parametrize("target, data", [(t, d) for t, inputs in CRASHES.items() for d in inputs])
def test_crashes_found_stay_fixed(target, data):
    TARGETS[target](data)


@pytest.mark.parametrize("target", list(TARGETS))
def test_seeds_pass(target):
    for data in seeds(target):
        TARGETS[target](data)


# -- property-based ------------------------------------------------------------

_PIECES = [
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
    b";;",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b"%",
    b"%00",
    b"%ff",
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
    "\u0661".encode(),
    b"9" * 30,
    b"-",
    b"SIP/2.0",
    b"0",
    b"sip:",
    b"sips:",
    b"tel:",
    b";tag=",
    b";branch=z9hG4bK",
    b";rport",
    b";expires=",
    b";q=",
    b"Content-Length: 99",
    b"l: 0",
    b"Via: SIP/2.0/UDP h",
    b"z9hG4bK",
    b"\x80",
    b"\xed\xa0\x80",
]
_START = st.sampled_from(
    [
        b"REGISTER sip:example.test SIP/2.0",
        b"INVITE sip:bob@example.test SIP/2.0",
        b"OPTIONS sip:x SIP/2.0",
        b"ACK sip:a@b SIP/2.0",
        b"SIP/2.0 200 OK",
        b"SIP/2.0 401 Unauthorized",
        b"X Y SIP/2.1",
    ]
)
_HEADER = st.tuples(
    st.sampled_from(
        [
            b"Via",
            b"v",
            b"From",
            b"f",
            b"To",
            b"t",
            b"Call-ID",
            b"i",
            b"CSeq",
            b"Contact",
            b"m",
            b"Max-Forwards",
            b"Expires",
            b"Content-Length",
            b"l",
            b"Route",
            b"Record-Route",
            b"Require",
            b"Proxy-Require",
            b"Authorization",
            b"X-Odd",
        ]
    ),
    st.sampled_from([b": ", b":", b" : ", b":\t"]),
    st.lists(
        st.one_of(
            st.sampled_from(_PIECES),
            st.binary(max_size=6),
            st.sampled_from(
                [
                    b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport",
                    b"<sip:alice@example.test>;tag=1",
                    b"1 REGISTER",
                    b"sip:bob@[2001:db8::1]:5070;transport=tcp",
                    b"70",
                    b"3600",
                    b'"A \\" B" <sip:a@b;lr>;q=0.5;expires=60',
                    b"*",
                ]
            ),
        ),
        max_size=5,
    ),
)


@st.composite
def messages(draw) -> bytes:
    """A message of the grammar's pieces: a start line, header lines, a body."""
    lines = [draw(_START)]
    for name, colon, parts in draw(st.lists(_HEADER, max_size=12)):
        lines.append(name + colon + b"".join(parts))
    body = draw(st.one_of(st.just(b""), st.binary(max_size=40)))
    return b"\r\n".join(lines) + draw(st.sampled_from([b"\r\n\r\n", b"\r\n", b""])) + body


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(messages(), st.binary(max_size=300)))
def test_message_property(data):
    check_message(data)


_DIGEST_PARAM = st.tuples(
    st.sampled_from(
        [
            "username",
            "realm",
            "nonce",
            "uri",
            "response",
            "cnonce",
            "nc",
            "qop",
            "algorithm",
            "opaque",
            "username*",
            "USERNAME",
            "x",
            "",
        ]
    ),
    st.sampled_from(["=", " = ", "=\t", ""]),
    st.one_of(
        st.sampled_from(
            [
                '"alice"',
                '"example.test"',
                '"NONCE"',
                '"sip:example.test"',
                '"RIGHT"',
                "00000001",
                "auth",
                '"auth"',
                "MD5",
                "SHA-256",
                "MD5-sess",
                "UTF-8''al%69ce",
                "UTF-8''%ff",
                "''",
                '"',
                '"a\\"b"',
                '"\\',
                "\udcff",
                '"\udcff"',
                "é",
                "0000000g",
                "",
            ]
        ),
        st.text(max_size=6),
    ),
)


@st.composite
def credentials(draw) -> bytes:
    """An Authorization value of the grammar's pieces, or one of the seeds mutated."""
    if draw(st.booleans()):
        text = draw(st.sampled_from(DIGEST_SEEDS))
        cut = draw(st.integers(0, len(text)))
        text = (
            text[:cut]
            + draw(st.sampled_from(["", '"', ",", "\\", "=", " ", "\udcff", "\x00"]))
            + text[cut + draw(st.integers(0, 3)) :]
        )
    else:
        scheme = draw(st.sampled_from(["Digest ", "digest\t", "DIGEST  ", "Basic ", "Digest", ""]))
        params = draw(st.lists(_DIGEST_PARAM, max_size=10))
        sep = draw(st.sampled_from([",", ", ", " ,", ",,"]))
        text = scheme + sep.join(k + eq + v for k, eq, v in params)
    return text.encode("utf-8", "surrogateescape")


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(credentials(), st.binary(max_size=200)))
def test_credentials_property(data):
    check_credentials(data)


# -- coverage-guided (atheris) ----------------------------------------------------


@pytest.mark.parametrize("target", list(TARGETS))
def test_atheris(target, tmp_path):
    """Run the target's fuzzer for ``SECONDS``; fail on a crash, with its input."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    cmd = [
        sys.executable,
        os.path.join(FUZZ, "run.py"),
        target,
        str(corpus),
        f"-max_total_time={SECONDS}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-max_len=8192",
        f"-dict={os.path.join(FUZZ, 'sip.dict')}",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=SECONDS + 120, cwd=os.path.dirname(FUZZ)
    )
    found = sorted(
        glob.glob(str(tmp_path / "crash-*"))
        + glob.glob(str(tmp_path / "timeout-*"))
        + glob.glob(str(tmp_path / "oom-*"))
    )
    inputs = [pathlib.Path(f).read_bytes() for f in found]
    assert done.returncode == 0 and not found, (
        f"{target} fuzzer failed ({done.returncode}) on {inputs!r}:\n{done.stderr[-4000:]}"
    )
    runs = [
        line
        for line in done.stderr.splitlines()
        if line.startswith("stat::number_of_executed_units")
    ]
    assert runs and int(runs[0].split(":")[-1]) > 1000, done.stderr[-2000:]
