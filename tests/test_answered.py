"""Server transactions of a final-response-only TU (the registrar), with a fake clock."""

import pytest

from sipcore.answered import ANSWERED, NEW, PENDING, AnsweredRequests
from sipcore.errors import SipError
from sipcore.message import parse_message


def register(branch="z9hG4bKaaa", sent_by="10.0.0.2:5060", cseq=1, via=None):
    via = via or f"SIP/2.0/UDP {sent_by};branch={branch}"
    return parse_message(
        (
            "REGISTER sip:example.test SIP/2.0\r\n"
            f"Via: {via}\r\n"
            "From: <sip:alice@example.test>;tag=f1\r\n"
            "To: <sip:alice@example.test>\r\n"
            "Call-ID: c1\r\n"
            f"CSeq: {cseq} REGISTER\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )


def test_retransmission_absorbed_while_pending_then_answered_until_timer_j():
    answered = AnsweredRequests(t1=0.5)
    verdict, key, data = answered.receive(register(), 0.0)
    assert (verdict, data) == (NEW, None)
    assert answered.receive(register(), 0.2)[0] == PENDING
    answered.answered(key, b"SIP/2.0 200 OK", reliable=False, now=1.0)
    assert answered.receive(register(), 2.0) == (ANSWERED, key, b"SIP/2.0 200 OK")
    assert answered.receive(register(), 1.0 + 32.0 - 0.001)[0] == ANSWERED
    assert answered.receive(register(), 1.0 + 32.0)[0] == NEW, "Timer J is 64*T1"


def test_reliable_transport_ends_the_transaction_with_its_response():
    answered = AnsweredRequests()
    _, key, _ = answered.receive(register(), 0.0)
    answered.answered(key, b"SIP/2.0 200 OK", reliable=True, now=0.0)
    assert len(answered) == 0
    assert answered.receive(register(), 0.1)[0] == NEW


def test_other_branch_or_sent_by_is_another_transaction():
    answered = AnsweredRequests()
    assert answered.receive(register(), 0.0)[0] == NEW
    assert answered.receive(register(branch="z9hG4bKbbb"), 0.0)[0] == NEW
    assert answered.receive(register(sent_by="10.0.0.3:5060"), 0.0)[0] == NEW
    assert answered.receive(register(), 0.0)[0] == PENDING


def test_expiry_without_requests_frees_memory():
    answered = AnsweredRequests(t1=0.5)
    for i in range(100):
        _, key, _ = answered.receive(register(branch=f"z9hG4bK{i}"), i * 0.1)
        answered.answered(key, b"x", reliable=False, now=i * 0.1)
    answered.expire(9.9 + 32.0)
    assert len(answered) == 0


def test_rfc2543_request_without_cookie_is_keyed_by_its_dialog_fields():
    answered = AnsweredRequests()
    old = "SIP/2.0/UDP 10.0.0.2:5060;branch=1234"
    assert answered.receive(register(via=old), 0.0)[0] == NEW
    assert answered.receive(register(via=old), 0.0)[0] == PENDING
    assert answered.receive(register(via=old, cseq=2), 0.0)[0] == NEW


def test_unparsable_via_raises_sip_error():
    with pytest.raises(SipError):
        AnsweredRequests().receive(register(via="garbage"), 0.0)
