"""The load tests' answering agent, driven from a UDP socket playing the proxy:
a call answered with the Record-Route copied, retransmissions, CANCEL, BYE,
and hostile datagrams (garbage, oversized, forged responses) that change nothing."""

import os

import gevent
import pytest
from gevent import socket

from loadtest.answerer import MAX_QUEUED, AnsweringAgent
from sipcore.message import Response, parse_message


@pytest.fixture
def agent():
    a = AnsweringAgent(ring=0.05, t1=0.05)
    a.start()
    yield a
    a.stop()


@pytest.fixture
def proxy():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2.0)
    yield s
    s.close()


def request(
    proxy,
    method: str,
    branch: str,
    call_id: str = "c1",
    cseq: int = 1,
    to_tag: str = "",
    extra: str = "",
) -> bytes:
    host, port = proxy.getsockname()
    tag = f";tag={to_tag}" if to_tag else ""
    return (
        f"{method} sip:load150@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch={branch}\r\n"
        f"From: <sip:load1@example.test>;tag=a\r\nTo: <sip:load150@example.test>{tag}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
        f"Max-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def answer(proxy) -> Response:
    msg = parse_message(proxy.recv(65535))
    assert isinstance(msg, Response)
    return msg


def test_a_call_is_rung_answered_with_the_route_set_and_ended(agent, proxy):
    invite = request(
        proxy, "INVITE", "z9hG4bK1", extra="Record-Route: <sip:127.0.0.11:5060;lr>\r\n"
    )
    proxy.sendto(invite, agent.local)
    ringing, ok = answer(proxy), answer(proxy)
    assert (ringing.status, ok.status) == (180, 200)
    assert ok.get("Record-Route") == "<sip:127.0.0.11:5060;lr>"
    assert ok.to.tag == ringing.to.tag and ok.to.tag
    assert b"m=audio" in ok.body
    proxy.sendto(invite, agent.local)  # a retransmission gets the 200 again
    assert answer(proxy).status == 200
    proxy.sendto(request(proxy, "ACK", "z9hG4bK2", to_tag=ok.to.tag), agent.local)
    assert agent.answered == 1
    proxy.settimeout(0.4)  # ACKed: no more 200s
    with pytest.raises(socket.timeout):
        proxy.recv(65535)
    proxy.sendto(request(proxy, "BYE", "z9hG4bK3", cseq=2, to_tag=ok.to.tag), agent.local)
    assert answer(proxy).status == 200 and agent.ended == 1


def test_cancel_before_the_answer_gets_487_and_an_unknown_cancel_481(agent, proxy):
    agent.ring = 5.0
    proxy.sendto(request(proxy, "INVITE", "z9hG4bK9"), agent.local)
    assert answer(proxy).status == 180
    proxy.sendto(request(proxy, "CANCEL", "z9hG4bK9"), agent.local)
    got = sorted((r.status, r.cseq[1]) for r in (answer(proxy), answer(proxy)))
    assert got == [(200, "CANCEL"), (487, "INVITE")]
    proxy.sendto(request(proxy, "CANCEL", "z9hG4bKnone", call_id="c2"), agent.local)
    assert answer(proxy).status == 481


def test_hostile_datagrams_change_nothing(agent, proxy):
    proxy.sendto(b"\x00garbage\r\n\r\n", agent.local)
    proxy.sendto(b"INVITE sip:x SIP/2.0\r\n" + b"X: " + b"a" * 60000 + b"\r\n\r\n", agent.local)
    forged = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKf\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: f\r\nCSeq: 1 REGISTER\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    for _ in range(MAX_QUEUED + 50):  # a flood of forged responses is bounded
        proxy.sendto(forged, agent.local)
    gevent.sleep(0.3)
    assert agent._responses.qsize() <= MAX_QUEUED
    proxy.sendto(request(proxy, "INVITE", "z9hG4bK" + os.urandom(4).hex()), agent.local)
    assert answer(proxy).status == 180 and answer(proxy).status == 200
    proxy.sendto(request(proxy, "MESSAGE", "z9hG4bKm"), agent.local)
    assert answer(proxy).status == 501
