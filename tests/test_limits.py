"""``[limits]``: one home for the defaults, and one budget per source for a node and its front."""

import os
import socket
import time
from dataclasses import fields

from actors.config import NodeConfig
from actors.limits import Limits
from loadtest.harness import NodeProcess
from sipcore.emergency import EmergencyNumbers

BURST = 20
RATE = 5


def test_node_config_takes_the_defaults_of_limits():
    cfg = NodeConfig(id="n", domain="example.test")
    limits = Limits.from_config(cfg)
    for f in fields(Limits):
        if f.name != "emergency_numbers":
            assert getattr(limits, f.name) == f.default, f.name
    assert limits.emergency_numbers == EmergencyNumbers(frozenset({"911", "112"}))


def register(port: int, i: int) -> bytes:
    return (
        f"REGISTER sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.66.1:{port};branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
        f"From: <sip:bob@example.test>;tag=r{i}\r\nTo: <sip:bob@example.test>\r\n"
        f"Call-ID: lim{i}\r\nCSeq: {i + 1} REGISTER\r\nContact: <sip:bob@127.0.66.1:{port}>\r\n"
        "Max-Forwards: 70\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def options(port: int, i: int) -> bytes:
    return (
        f"OPTIONS sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.66.1:{port};branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
        f"From: <sip:x@example.test>;tag=o{i}\r\nTo: <sip:example.test>\r\n"
        f"Call-ID: opt{i}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def answers(sock: socket.socket, status: str, most: int, quiet: float = 1.0) -> int:
    """Count the answers of ``status`` reaching ``sock`` until ``most`` or ``quiet`` s of silence."""
    sock.settimeout(quiet)
    n = 0
    while n < most:
        try:
            if sock.recv(65535)[8:11].decode() == status:
                n += 1
        except TimeoutError:
            break
    return n


def test_the_node_and_its_front_count_a_source_once(tmp_path):
    """REGISTERs without credentials go to the front, OPTIONS to the node: one source
    gets one burst across both, not one from each."""
    node = NodeProcess(str(tmp_path), front=True, limits=f"udp_rate = {RATE}\nudp_burst = {BURST}")
    node.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.66.1", 0))  # not the address the readiness pings came from
            port = s.getsockname()[1]
            start = time.monotonic()
            for i in range(BURST + 10):
                s.sendto(register(port, i), (node.address, node.port))
            challenged = answers(s, "401", BURST)
            for i in range(BURST + 10):
                s.sendto(options(port, i), (node.address, node.port))
            served = answers(s, "200", BURST)
            spent = time.monotonic() - start
        # The front spent the burst: the node lets through what refilled since.
        assert BURST - 2 <= challenged <= BURST + RATE * spent + 1, (challenged, spent)
        assert challenged + served <= BURST + RATE * spent + 2, (challenged, served, spent)
    finally:
        node.stop()
