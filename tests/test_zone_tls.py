"""The master's zone has ``_sips._tcp`` for the nodes that report a TLS port.

A real ``run.py master`` with ``[master] dns`` and two real nodes that
joined it, one taking TLS: the node reports its TLS port in its
``config_version`` answer, the master keeps it and its DNS (asked with
dnspython) serves a ``_sips._tcp`` SRV record for that node only and a
SIPS+D2T NAPTR. A hostile node's answer (a TLS port that is no port) is
ignored with a log line, the stored port kept.
"""

import logging
import sqlite3
from contextlib import contextmanager

import pytest

from actors.bus import CONTROL_DOMAIN, Bus, generate_keypair
from actors.control import ControlServer
from loadtest.harness import free_port
from store import master as ms
from tests.joined import JoinedNode, Master, wait
from tests.test_tls import make_cert
from web.dns import zone_text
from web.push import Pusher
from store.migrations import MASTER_MIGRATIONS, _master_6_tls_port

CONVERGE = 15.0
"""Bound on a node's report reaching the master's DNS (seconds)."""


def with_tls(node: JoinedNode, cert: str, key: str) -> int:
    """Turn TLS on in the configuration ``node join`` wrote; the TLS port."""
    port = free_port(node.address)
    with open(node.config) as f:
        text = f.read()
    with open(node.config, "w") as f:
        f.write(
            text.replace(
                "[sip]\n", f'[sip]\ntls_port = {port}\ntls_cert = "{cert}"\ntls_key = "{key}"\n', 1
            )
        )
    return port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("zonetls"))
    cert, key = make_cert(work)
    c = Master(work)
    try:
        c.init_and_start()
        node1 = c.nodes["node1"] = JoinedNode(work, "node1")
        assert node1.join(c.url, c.first_token).returncode == 0
        node1.tls_port = with_tls(node1, cert, key)
        node2 = c.nodes["node2"] = JoinedNode(work, "node2")
        joined = node2.join(c.url, c.token())
        assert joined.returncode == 0, joined.stderr
        node1.start()
        node2.start()
        yield c
    finally:
        c.close()


def test_the_masters_dns_serves_sips_for_the_node_with_tls_only(cluster):
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    want = [f"10 50 {node1.tls_port} node1.example.test."]
    assert wait(lambda: cluster.lookup("_sips._tcp.example.test", "SRV") == want, CONVERGE), (
        cluster.lookup("_sips._tcp.example.test", "SRV"),
        cluster.master.log_tail(),
    )
    assert len(cluster.lookup("_sip._tcp.example.test", "SRV")) == 2, (
        "node2 (no TLS) is still in _sip._tcp"
    )
    naptr = cluster.lookup("example.test", "NAPTR")
    assert '10 30 "s" "SIPS+D2T" "" _sips._tcp.example.test.' in naptr, naptr
    got = cluster.api("GET", "/api/dns")
    assert got["tls_ports"] == {"node1": node1.tls_port, "node2": 0}
    assert f"_sips._tcp.example.test. IN SRV 10 50 {node1.tls_port} node1" in got["zone"]
    assert f"node node1 takes TLS on port {node1.tls_port}" in cluster.master.log_tail(200)
    assert node2.alive()


def test_a_weight_set_on_the_master_reaches_the_sips_record(cluster):
    node1 = cluster.nodes["node1"]
    cluster.api("POST", "/api/dns", {"weights": {"node1": 70}})
    assert wait(
        lambda: (
            cluster.lookup("_sips._tcp.example.test", "SRV")
            == [f"10 70 {node1.tls_port} node1.example.test."]
        ),
        CONVERGE,
    )


@contextmanager
def hostile_node(tmp_path, answer):
    """The master's store and pusher, and one node answering ``config_version`` with
    ``answer()`` on a real control endpoint (CurveZMQ, the master's key allowed)."""
    master_public, master_secret = generate_keypair()
    node_public, node_secret = generate_keypair()
    bus = Bus(node_public, node_secret, "node1")
    bus.allow(CONTROL_DOMAIN, {master_public: "master"})
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = ControlServer(bus, endpoint, {"config_version": lambda _r: answer()})
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    pusher = Pusher(master_public, master_secret)
    try:
        server.start()
        ms.setup("example.test")
        ms.save_node("node1", "127.0.0.1:5060", endpoint, node_public)
        ms.new_version("test")
        yield pusher
    finally:
        pusher.stop()
        server.stop()
        bus.close()
        ms.close_master_store()


@pytest.mark.parametrize("bad", ["5061", 70000, -1, True, 5061.0, None, [5061], "9" * 10_000])
def test_a_forged_tls_port_is_logged_and_not_stored(tmp_path, caplog, bad):
    """A node whose answer carries a TLS port that is no port (text, out of range, a
    boolean, oversized) leaves the stored port as it was, with one short warning however
    often it says so."""
    answers = [{"version": 1, "tls_port": 5061}, {"version": 1, "tls_port": bad}]
    with hostile_node(tmp_path, lambda: answers[0]) as pusher:
        assert pusher.push_round() == {"node1": "version 1"}
        assert ms.zone_nodes()[0][4] == 5061
        answers.pop(0)
        with caplog.at_level(logging.WARNING, logger="web.push"):
            for _ in range(3):
                assert pusher.push_round() == {"node1": "version 1"}
        assert ms.zone_nodes()[0][4] == 5061
        warned = [r.getMessage() for r in caplog.records if "not a port" in r.getMessage()]
        assert len(warned) == 1 and len(warned[0]) < 200, warned


def test_an_answer_without_a_tls_port_means_no_tls(tmp_path):
    """A node that says nothing of TLS (a release before it) has no sips record."""
    with hostile_node(tmp_path, lambda: {"version": 1}) as pusher:
        ms.set_tls_port("node1", 5061)
        pusher.push_round()
        assert ms.zone_nodes()[0][4] == 0
        assert "_sips" not in zone_text()


def test_an_old_master_database_gets_the_tls_port_column(tmp_path):
    """The migration adds ``master_nodes.tls_port`` (0) to a database made before it."""
    path = tmp_path / "master.db"
    ms.init_master_store(f"sqlite:///{path}")
    ms.setup("example.test")
    ms.save_node("node1", "127.0.0.1:5060", "tcp://127.0.0.1:1", generate_keypair()[0])
    ms.close_master_store()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE master_nodes DROP COLUMN tls_port")
        # the version before the step (version 1 has no step; step i makes version i + 2)
        before = 1 + MASTER_MIGRATIONS.index(_master_6_tls_port)
        db.execute("UPDATE schema_versions SET version = ? WHERE name = 'master'", (before,))
    ms.init_master_store(f"sqlite:///{path}")
    try:
        assert ms.zone_nodes() == [("node1", "127.0.0.1", 5060, 50, 0)]
    finally:
        ms.close_master_store()
