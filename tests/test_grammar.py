"""The one SIP grammar: its forms agree with each other and its users follow it."""

import re

import pytest

from sipcore.digest import parse_credentials
from sipcore.errors import SipParseError
from sipcore.grammar import (
    ALPHANUM,
    HEXDIG,
    MARK,
    SEPARATOR_CLASS,
    SEPARATORS,
    TOKEN,
    TOKEN_CHARS,
    TOKEN_MARKS,
    alnum_class,
    is_token,
)
from sipcore.message import parse_message

ASCII = [chr(c) for c in range(128)]
RFC3261_TOKEN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


def test_token_forms_agree_with_rfc3261():
    assert set(TOKEN_CHARS) == RFC3261_TOKEN
    assert {c for c in ASCII if re.fullmatch(TOKEN, c)} == RFC3261_TOKEN
    assert {c for c in ASCII if is_token(c)} == RFC3261_TOKEN


def test_separators_are_no_token_characters():
    assert {c for c in ASCII if re.fullmatch(SEPARATOR_CLASS, c)} == set(SEPARATORS)
    assert not set(SEPARATORS) & RFC3261_TOKEN


@pytest.mark.parametrize(
    "text, ok",
    [
        ("INVITE", True),
        ("x-Custom.1", True),
        ("", False),
        ("IN VITE", False),
        ("a|b", False),
        ("é", False),
    ],
)
def test_is_token(text, ok):
    assert is_token(text) is ok


def test_a_method_outside_the_token_grammar_is_refused():
    data = (
        b"INV|TE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
        b"From: <sip:a@example.test>;tag=1\r\nTo: <sip:bob@example.test>\r\nCall-ID: c\r\n"
        b"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    with pytest.raises(SipParseError):
        parse_message(data)


@pytest.mark.parametrize("name", ["us|ername", "user#name", "a^b"])
def test_digest_parameter_names_follow_the_sip_token(name):
    """HTTP's token allows ``#$&^|``; a SIP digest parameter name may not carry them."""
    value = f'Digest {name}="alice", realm="example.test", nonce="n", uri="sip:example.test", response="r"'
    with pytest.raises(SipParseError):
        parse_credentials(value)


def test_character_sets_agree_with_rfc3261():
    assert set(ALPHANUM) == {c for c in ASCII if c.isalnum()}
    assert set(HEXDIG) == set("0123456789abcdefABCDEF")
    assert set(MARK) == set("-_.!~*'()")
    # a class built by alnum_class holds exactly alphanum and its marks, escaped or not
    for marks in (MARK, TOKEN_MARKS, "-]^\\"):
        assert {c for c in ASCII if re.fullmatch(alnum_class(marks), c)} == set(ALPHANUM + marks)
