"""The transport's limits, fed datagrams in-process (its receive path parses and dispatches)."""

import logging
import os
import socket

import gevent

from actors.transport import Limits, Transport
from sipcore.emergency import EmergencyNumbers


def invite(user: str) -> bytes:
    return (
        f"INVITE sip:{user}@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK{os.urandom(6).hex()}\r\n"
        f"From: <sip:alice@example.test>;tag=1\r\nTo: <sip:{user}@example.test>\r\n"
        f"Call-ID: {os.urandom(6).hex()}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        "Contact: <sip:alice@192.0.2.9>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def transport(**limits) -> tuple[Transport, list]:
    got: list = []
    t = Transport(
        "127.0.0.1",
        0,
        lambda req, dest: got.append(req.ruri.user),
        lambda *a: None,
        limits=Limits(**limits),
    )
    return t, got


def test_a_flooding_source_is_cut_to_its_burst_but_emergency_invites_pass():
    t, got = transport(
        udp_rate=1.0, udp_burst=5, emergency_numbers=EmergencyNumbers(frozenset({"911"}))
    )
    for _ in range(50):
        t.receive(invite("bob"), "192.0.2.9", 5060)
    for _ in range(20):
        t.receive(invite("911"), "192.0.2.9", 5060)
    assert got.count("bob") == 5 and got.count("911") == 20
    assert t.stats["rate_limited"] == 45
    t.receive(invite("carol"), "192.0.2.10", 5060)
    assert got[-1] == "carol", "another source has its own bucket"


def test_no_limit_when_off_and_oversized_datagrams_dropped():
    t, got = transport(udp_rate=0, max_message_size=1500)
    for _ in range(1000):
        t.receive(invite("bob"), "192.0.2.9", 5060)
    assert len(got) == 1000
    big = invite("bob").replace(
        b"Content-Length: 0\r\n\r\n", b"Content-Length: 2000\r\n\r\n" + b"x" * 2000
    )
    t.receive(big, "192.0.2.9", 5060)
    assert len(got) == 1000 and t.stats["oversized"] == 1


def test_a_hostile_destination_is_dropped_with_a_rate_limited_log(caplog):
    """A port past 65535 or a host no codec takes (a label over 63 octets) is
    dropped (no exception escapes), its log lines rate-limited; the transport still sends."""
    t, _ = transport(log_rate=1.0)
    t.start()
    try:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(2.0)
        bad = [
            ("udp", "127.0.0.1", 70000),
            ("tcp", "127.0.0.1", 70000),
            ("tcp", "a" * 64 + ".test", 5060),
            ("udp", "b" * 64 + ".test", 99999),
        ]
        with caplog.at_level(logging.INFO, logger="actors.transport"):
            for _ in range(20):
                for dest in bad:
                    assert t.send(dest, b"hello") is False
        lines = [r for r in caplog.records if "bad destination" in r.getMessage()]
        assert 1 <= len(lines) <= 12, "a burst of 10, then 1 a second, of 60 bad sends"
        assert t.send(("udp", "127.0.0.1", peer.getsockname()[1]), b"still") is True
        assert peer.recv(100) == b"still"
        peer.close()
    finally:
        t.stop()


def tcp_invite(user: str) -> bytes:
    return invite(user).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")


def test_an_over_cap_tcp_connection_carries_emergency_calls_only(monkeypatch):
    """Over its source's cap, a connection that brings an INVITE to an emergency number
    is served, and then only what belongs to calls (a re-INVITE passes, a REGISTER
    after it closes it); one
    that brings anything else is closed; at most EMERGENCY_EXTRA such at once."""
    monkeypatch.setattr("actors.transport.EMERGENCY_EXTRA", 2)
    t, got = transport(
        tcp_max_per_source=1,
        tcp_header_timeout=1.0,
        emergency_numbers=EmergencyNumbers(frozenset({"911"}), "9"),
    )
    t.start()
    conns = []

    def connect():
        s = socket.create_connection(("127.0.0.1", t.port), timeout=3)
        conns.append(s)
        gevent.sleep(0.05)
        return s

    def closed(s):
        s.settimeout(3)
        try:
            return s.recv(100) == b""
        except OSError:
            return True

    try:
        connect().sendall(tcp_invite("user1"))  # within the cap: anything goes
        gevent.sleep(0.1)
        assert got == ["user1"]
        dressed = connect()
        dressed.sendall(tcp_invite("9-911"))
        assert closed(dressed) and got == ["user1"]
        sos = connect()
        sos.sendall(tcp_invite("9911"))
        gevent.sleep(0.1)
        assert got == ["user1", "9911"]
        sos.sendall(
            tcp_invite("user3").replace(
                b"To: <sip:user3@example.test>", b"To: <sip:user3@example.test>;tag=t1"
            )
        )
        gevent.sleep(0.1)  # a re-INVITE within the call
        assert got == ["user1", "9911", "user3"]
        sos.sendall(
            b"REGISTER sip:example.test SIP/2.0\r\n"
            + tcp_invite("x").split(b"\r\n", 1)[1].replace(b"INVITE", b"REGISTER")
        )
        assert closed(sos) and got == ["user1", "9911", "user3"]
        held = [connect(), connect()]  # the extra ones, silent
        refused = connect()
        assert closed(refused) and t.stats["tcp_refused"] >= 1
        assert all(closed(s) for s in held)  # silent past the header timeout
        assert t.extra == 0
    finally:
        for s in conns:
            s.close()
        t.stop()
