"""The self-check's requests parse as SIP and its verdict names what is wrong."""

from sipcore.message import Request, parse_message
from sipcore.selfcheck import ack_for, probes, verdict


def test_probes_are_valid_requests_with_fresh_names():
    found = probes("example.test", "127.0.0.1", 40000, "abc123")
    assert [p.method for p in found] == ["OPTIONS", "REGISTER", "INVITE"]
    for p in found:
        msg = parse_message(p.data)
        assert isinstance(msg, Request) and msg.method == p.method and msg.call_id == p.call_id
        assert msg.get("contact") is None  # the REGISTER is a query: it binds nothing
    invite = parse_message(found[2].data)
    assert invite.uri == "sip:tandem-selfcheck-abc123@example.test"
    assert invite.from_.uri.host == "selfcheck.invalid"  # a stranger: no challenge
    other = probes("example.test", "::1", 40000, "def456")
    assert {p.call_id for p in other}.isdisjoint(p.call_id for p in found)
    assert b"Via: SIP/2.0/UDP [::1]:40000;" in other[0].data


def test_ack_repeats_the_branch_and_takes_the_answers_to():
    invite = probes("example.test", "127.0.0.1", 40000, "abc123")[2]
    ack = parse_message(ack_for(invite, "<sip:x@example.test>;tag=t1"))
    assert ack.method == "ACK" and ack.call_id == invite.call_id
    assert ack.to.params["tag"] == "t1" and b"branch=z9hG4bKabc1232" in ack.encode()


def test_verdict_says_which_request_failed_and_how():
    options, register, invite = probes("example.test", "127.0.0.1", 1, "aa")
    assert verdict(options, 200) is None and verdict(register, 401) is None
    assert verdict(invite, 480) is None and verdict(invite, 404) is None
    assert verdict(options, None) == "OPTIONS to itself got no answer"
    assert verdict(register, 403) == "REGISTER to itself answered 403, expected 401"
    assert verdict(invite, 503) == "INVITE to itself answered 503, expected 404 or 480"
