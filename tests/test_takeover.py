"""Floating address takeover: who holds which address (``sipcore.takeover``), the settings,
and three nodes on hosts with a PJSUA2 phone behind a NAT router (iptables MASQUERADE):
the phone registered on node1 is called through node2 once node1's host dies, no address
is taken without a quorum, and node1 gets its address back when it returns."""

import time

import pytest

from actors.config import ConfigError, Peer, parse_config, registrar_rules, server_uris
from loadtest.bench_failover import NatLab, call
from sipcore.location import Binding
from sipcore.takeover import has_quorum, to_hold, udp_sources
from tests.conftest import _in_ci
from tests.netns import NamespacesUnavailable
from tests.phones import pjsua

NODES = ["n1", "n2", "n3"]


def test_lowest_live_node_takes_the_dead_ones_with_a_quorum():
    assert to_hold("n2", NODES, {"n1": "dead", "n3": "alive"}) == {"n1"}
    assert to_hold("n3", NODES, {"n1": "dead", "n2": "alive"}) == set()
    # A suspected peer is alive: no takeover on a missed heartbeat.
    assert to_hold("n2", NODES, {"n1": "suspected", "n3": "alive"}) == set()
    # Two of three dead: no quorum, nothing taken (it may be this node that is cut off).
    assert to_hold("n2", NODES, {"n1": "dead", "n3": "dead"}) == set()
    assert not has_quorum("n2", NODES, {"n1": "dead", "n3": "unknown"})
    # Two nodes never take over: a survivor cannot tell a death from a cut.
    assert to_hold("n1", ["n1", "n2"], {"n2": "dead"}) == set()
    five = ["n1", "n2", "n3", "n4", "n5"]
    assert to_hold("n3", five, {"n1": "dead", "n2": "dead", "n4": "alive", "n5": "alive"}) == {
        "n1",
        "n2",
    }


def test_udp_sources_of_a_dead_origin():
    now = 1000.0

    def b(key, received, origin="n1", expires=now + 60, deleted=False):
        return Binding(
            "sip:a@x",
            key,
            "sip:a@192.168.1.2",
            expires,
            "c",
            1,
            received=received,
            origin=origin,
            deleted=deleted,
        )

    got = udp_sources(
        [
            b("1", "udp:203.0.113.1:4000"),
            b("2", "tcp:203.0.113.1:4001"),
            b("3", "udp:203.0.113.2:1", origin="n2"),
            b("4", "udp:203.0.113.3:1", expires=now),
            b("5", "udp:203.0.113.4:1", deleted=True),
            b("6", "garbage"),
        ],
        "n1",
        now,
    )
    assert got == {("203.0.113.1", 4000)}


BASE = {"node": {"id": "n1"}, "sip": {"domain": "example.test", "address": "10.0.0.1"}}


def test_settings_and_the_taken_addresses_as_digest_uris():
    peers = [
        {
            "id": "n2",
            "bus": "tcp://10.0.1.2:7001",
            "snapshot": "tcp://10.0.1.2:7002",
            "sip": "10.0.0.2:5070",
        }
    ]
    cfg = parse_config({**BASE, "cluster": {"takeover": True}, "peers": peers})
    assert "sip:10.0.0.2:5070" in server_uris(cfg) and "sip:10.0.0.2" in server_uris(cfg)
    assert "sip:10.0.0.2" not in server_uris(parse_config({**BASE, "peers": peers}))
    # A REGISTER to the taken address is for this node's domain too, and only then.
    assert "10.0.0.2" in registrar_rules(cfg).domains
    assert "10.0.0.2" not in registrar_rules(parse_config({**BASE, "peers": peers})).domains
    bad = [
        {"takeover": "yes"},
        {"takeover_lifetime": 1},
        {"takeover_interface": "eth0; rm"},
        {"takeover_interface": "x" * 16},
    ]
    for setting in bad:
        with pytest.raises(ConfigError):
            parse_config({**BASE, "cluster": setting})
    with pytest.raises(ConfigError, match="every peer's sip"):
        parse_config({**BASE, "cluster": {"takeover": True}, "peers": [{**peers[0], "sip": ""}]})
    with pytest.raises(ConfigError, match="IPv4"):
        parse_config(
            {**BASE, "sip": {**BASE["sip"], "address": "0.0.0.0"}, "cluster": {"takeover": True}}
        )
    assert Peer("n2", "b", "s").sip == ""


TAKEOVER_BOUND = 12.0
"""Seconds from a node's death to its phone called through a survivor, at most (README):
dead_after (3 s) + a heartbeat, plus room for a loaded machine."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    try:
        lab = NatLab(str(tmp_path_factory.mktemp("takeover")))
    except NamespacesUnavailable as exc:
        if _in_ci():
            pytest.fail(f"network namespaces are required when CI is set: {exc}", pytrace=False)
        pytest.skip(f"the kernel refuses network namespaces here: {exc}")
    try:
        yield lab
    finally:
        lab.close()


def wait(cond, timeout: float, step: float = 0.1):
    """Poll ``cond`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not (value := cond()) and time.monotonic() < deadline:
        time.sleep(step)
    return value


def test_phone_behind_nat_on_node1_is_called_through_node2_after_node1_dies(lab):
    node1, node2 = lab.nodes[:2]
    user, password = lab.users[0]
    bridge = lab.bridge
    assert f"{node1.address}/32" in lab.addresses("node1")
    phone = pjsua(
        "nat-phone",
        user,
        password,
        node1.domain,
        f"{node1.address}:5060",
        "udp",
        5060,
        4000,
        bind="192.168.77.2",
        prefix=tuple(lab.phone_prefix),
    )
    try:
        phone.wait_for("REGISTERED 200", timeout=20)
        # The binding replicated to node2 (which alone could not reach the phone: the
        # NAT's mapping is open to node1's address only).
        assert lab.cluster.wait_converged(10)[0]
        died = lab.kill(1)
        taken = wait(lambda: f"{node1.address}/32" in lab.addresses("node2"), TAKEOVER_BOUND)
        assert taken, node2.log_tail()
        assert f"{node1.address}/32" not in lab.addresses("node3")
        status = ""
        while time.monotonic() - died < TAKEOVER_BOUND and not status.startswith("SIP/2.0 200"):
            status = call(node2.address, bridge, user, node2.domain, timeout=2)
        reached = time.monotonic() - died
        assert status.startswith("SIP/2.0 200"), (status, node2.log_tail())
        phone.wait_for("INCOMING", timeout=5)
        assert reached < TAKEOVER_BOUND
        print(
            f"\nphone behind NAT on node1 called through node2 {reached:.1f} s after node1's death"
        )
        phone.send("hangup")

        # Node3 dies too: node2 alone has no quorum and gives node1's address back.
        lab.kill(3)
        assert wait(lambda: f"{node1.address}/32" not in lab.addresses("node2"), 15), (
            node2.log_tail()
        )

        # Both come back: node1 holds its own address again, node2 none but its own.
        lab.revive(1, 3)
        time.sleep(1.0)  # a few takeover ticks: nothing may be taken by then
        assert f"{node1.address}/32" in lab.addresses("node1")
        assert f"{node1.address}/32" not in lab.addresses("node2")
        assert lab.cluster.control(node2, "status")["taken_over"] == {}
    finally:
        phone.stop()
