"""Keepalives on owned flows: which flows (``sipcore.keepalive``, fake clock) and a real
node sending them (``actors.keepalive``) over UDP to a NATed phone and over TCP."""

import socket

import pytest

from loadtest.harness import NodeProcess
from sipcore.keepalive import KEEPALIVE, keepalive_flows
from sipcore.location import Binding
from tests.test_nat import _register, _udp

NOW = 1_000_000.0


def _b(
    key: str,
    contact: str,
    received: str,
    origin: str = "n1",
    expires: float = NOW + 60,
    deleted: bool = False,
) -> Binding:
    return Binding(
        "sip:a@example.test",
        key,
        contact,
        expires,
        "c",
        1,
        received=received,
        origin=origin,
        deleted=deleted,
    )


def test_only_owned_live_flows_once_each():
    natted = _b("1", "sip:a@192.168.1.5:5060", "udp:203.0.113.7:40000")
    same_flow = _b("2", "sip:a@192.168.1.6:5060", "udp:203.0.113.7:40000")
    tcp = _b("3", "sip:a@203.0.113.8:5060;transport=tcp", "tcp:203.0.113.8:51000")
    public = _b("4", "sip:a@203.0.113.9:5060", "udp:203.0.113.9:5060")
    other = _b("5", "sip:a@192.168.1.7:5060", "udp:203.0.113.10:1", origin="n2")
    expired = _b("6", "sip:a@192.168.1.8:5060", "udp:203.0.113.11:1", expires=NOW)
    gone = _b("7", "sip:a@192.168.1.9:5060", "udp:203.0.113.12:1", deleted=True)
    flows = keepalive_flows([natted, same_flow, tcp, public, other, expired, gone], {"n1"}, NOW)
    assert flows == {("udp", "203.0.113.7", 40000), ("tcp", "203.0.113.8", 51000)}
    # A node that took n2's address over keeps n2's flows alive too.
    assert ("udp", "203.0.113.10", 1) in keepalive_flows([other], {"n1", "n2"}, NOW)
    assert keepalive_flows([natted], {"n1"}, NOW, nat_handling="never") == set()


def test_flows_are_bounded():
    many = [_b(str(i), "sip:a@192.168.1.5:5060", f"udp:203.0.113.7:{1000 + i}") for i in range(50)]
    assert len(keepalive_flows(many, {"n1"}, NOW, limit=10)) == 10


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = NodeProcess(
        str(tmp_path_factory.mktemp("keepalive")),
        address="127.0.0.2",
        extra="[nat]\nkeepalive_interval = 0.3",
    )
    for user in ("alice", "bob"):
        out = n.run_cli("user", "add", user, "--password", "pw")
        assert out.returncode == 0, out.stderr
    n.start()
    yield n
    n.stop()


def _keepalives(sock: socket.socket, wanted: int) -> int:
    """Keepalives read from ``sock`` until ``wanted`` or its timeout."""
    got = 0
    try:
        while got < wanted:
            if sock.recv(65535) == KEEPALIVE:
                got += 1
    except TimeoutError:
        pass
    return got


def test_natted_udp_phone_gets_keepalives_and_a_reachable_one_none(node):
    with _udp(3) as natted, _udp() as sender, _udp(1.5) as listener:
        _register(node, natted, "alice", "sip:alice@192.168.7.7:5060", 5060)
        assert _keepalives(natted, 2) == 2
        # A phone called on its Contact (not behind NAT) needs none: none is sent there.
        _register(
            node,
            sender,
            "bob",
            f"sip:bob@127.0.0.1:{listener.getsockname()[1]}",
            listener.getsockname()[1],
        )
        sender.settimeout(1.5)
        assert _keepalives(sender, 1) == 0
        assert _keepalives(listener, 1) == 0
