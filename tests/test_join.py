"""Nodes join and leave a running cluster: real master and node processes on loopback.

The master is set up with ``run.py master init`` (which prints the first join
token) and runs as ``run.py master``; each node is made by ``run.py node
join --master URL --token T`` and run as ``run.py node`` from the
configuration the join wrote. The tests share one cluster and run in file
order: node1 joins alone, node2 joins while node1 runs (node1 learns it
from the master's push, no restart), registrations replicate both ways, a
spent token is refused, node1 restarted keeps the peers the master gave
it, and node2 removed is cut off the bus and leaves the zone.
"""

import os
import subprocess
import sys
import time
import tomllib

import pytest

from actors.bus import generate_keypair
from actors.config import parse_config
from actors.join import JoinFailed, node_toml
from actors.keys import Member
from loadtest.harness import ROOT
from tests.joined import JoinedNode, Master, run_py, wait
from tests.test_master_push import registered

CONVERGE = 15.0
"""Bound on a membership change or a registration reaching the other node (seconds)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Master(str(tmp_path_factory.mktemp("join")))
    try:
        c.init_and_start()
        yield c
    finally:
        c.close()


def test_first_node_joins_with_the_token_init_printed(cluster):
    node1 = cluster.nodes["node1"] = JoinedNode(cluster.work, "node1")
    out = node1.join(cluster.url, cluster.first_token)
    assert out.returncode == 0, out.stderr
    assert "node1 joined example.test with 0 peers" in out.stdout
    assert f"run.py node --config {node1.config}" in out.stdout
    for path in (node1.config, os.path.join(node1.dir, "bus.secret")):
        assert os.stat(path).st_mode & 0o077 == 0, path
    with open(node1.config) as f:
        text = f.read()
    assert cluster.secret("cluster.secret") in text and cluster.secret("master.public") in text
    node1.start()
    version = cluster.api("POST", "/api/users", {"username": "alice", "password": "alice-pw"})
    cluster.api("POST", "/api/users", {"username": "bob", "password": "bob-pw"})
    assert wait(lambda: (cluster.status(node1) or {}).get("state") == "synced", CONVERGE)
    assert wait(
        lambda: cluster.ask(node1, "config_version")["version"] > version["version"], CONVERGE
    ), node1.log_tail()
    assert registered(node1, "alice", "alice-pw"), node1.log_tail()


def test_second_node_joins_and_both_replicate_without_a_restart(cluster):
    node1 = cluster.nodes["node1"]
    pid = node1.proc.pid
    node2 = cluster.nodes["node2"] = JoinedNode(cluster.work, "node2")
    joined = node2.join(cluster.url, cluster.token())
    assert joined.returncode == 0, joined.stderr
    assert "node2 joined example.test with 1 peers" in joined.stdout
    started = time.monotonic()
    node2.start()

    def linked():
        s1, s2 = cluster.status(node1), cluster.status(node2)
        return (
            s1
            and s2
            and s2["state"] == "synced"
            and s1["peers"].get("node2", {}).get("liveness") == "alive"
            and s2["peers"].get("node1", {}).get("liveness") == "alive"
        )

    assert wait(linked, CONVERGE), (node1.log_tail(), node2.log_tail())
    print(f"\nnode2 started and linked both ways in {time.monotonic() - started:.2f} s")
    assert "peers now node2 (added node2" in node1.log_tail(200)
    assert wait(lambda: cluster.holds(node2, "alice"), CONVERGE), "node1's binding on node2"
    assert registered(node2, "bob", "bob-pw"), node2.log_tail()
    assert wait(lambda: cluster.holds(node1, "bob"), CONVERGE), "node2's binding on node1"
    assert node1.proc.pid == pid and node1.alive(), "node1 was not restarted"
    looped = subprocess.run(
        [
            "sipsak",
            "-U",
            "-C",
            f"sip:bob@{node2.address}:{node2.port}",
            "-s",
            f"sip:bob@{node1.address}:{node1.port}",
            "-u",
            "bob",
            "-a",
            "bob-pw",
            "-i",
            "-x",
            "120",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    said = looped.stdout + looped.stderr
    assert "SIP/2.0 403" in said and "completed successful" not in said, (
        "node1 knows node2's SIP address: a Contact pointing at it is refused"
    )


def test_a_spent_token_is_refused(cluster):
    token = cluster.token()
    node3 = JoinedNode(cluster.work, "node3")
    assert node3.join(cluster.url, token).returncode == 0
    again = JoinedNode(cluster.work, "node3b").join(cluster.url, token)
    assert again.returncode == 1 and "already used" in again.stderr, again.stderr
    forged = JoinedNode(cluster.work, "node3c").join(cluster.url, "forged-token")
    assert forged.returncode == 1 and "unknown" in forged.stderr
    node4 = JoinedNode(cluster.work, "node4")
    stdin = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "run.py"),
            "node",
            "join",
            "--master",
            cluster.url,
            "--token",
            "-",
            "--address",
            node4.address,
            "--data",
            node4.dir,
            "--port",
            str(node4.port),
            "--bus-port",
            str(node4.bus_port),
        ],
        input=cluster.token() + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert stdin.returncode == 0 and "node4 joined" in stdin.stdout, stdin.stderr
    # `node join --start` joins, then runs the node it made.
    assert run_py("master", "node", "remove", "node4", "--config", cluster.config).returncode == 0
    node5 = JoinedNode(cluster.work, "node5")
    node5.args = [
        "node",
        "join",
        "--master",
        cluster.url,
        "--token",
        cluster.token(),
        "--address",
        node5.address,
        "--data",
        node5.dir,
        "--port",
        str(node5.port),
        "--bus-port",
        str(node5.bus_port),
        "--id",
        "node5",
        "--start",
    ]
    try:
        node5.start()
        # Started at once, maybe before node1 and node2 know its key from the master's
        # push: refused at first, it subscribes again and hears them.
        assert wait(
            lambda: (
                [
                    v["liveness"]
                    for k, v in (cluster.status(node5) or {"peers": {}})["peers"].items()
                    if k in ("node1", "node2")
                ]
                == ["alive", "alive"]
            ),
            CONVERGE,
        ), node5.log_tail()
    finally:
        node5.stop()
    assert run_py("master", "node", "remove", "node5", "--config", cluster.config).returncode == 0
    removed = run_py("master", "node", "remove", "node3", "--config", cluster.config)
    assert removed.returncode == 0, removed.stderr
    assert [n["node_id"] for n in cluster.api("GET", "/api/nodes")["nodes"]] == ["node1", "node2"]


def test_a_join_that_cannot_write_its_configuration_stops_before_the_master(cluster):
    token = cluster.token()
    node = JoinedNode(cluster.work, "node6")
    out = run_py(
        "node",
        "join",
        "--master",
        cluster.url,
        "--token",
        token,
        "--address",
        node.address,
        "--data",
        node.dir,
        "--config",
        os.path.join(cluster.work, "missing", "node.toml"),
    )
    assert out.returncode == 1 and "cannot write the configuration" in out.stderr
    again = node.join(cluster.url, token)
    assert again.returncode == 0, "the token was not spent"
    joined = again.stdout.split()[0]
    assert run_py("master", "node", "remove", joined, "--config", cluster.config).returncode == 0


def test_a_restarted_node_keeps_the_peers_the_master_gave_it(cluster):
    node1 = cluster.nodes["node1"]
    with open(node1.config) as f:
        assert "[[peers]]" not in f.read(), "node1 joined alone: its file names no peer"
    node1.stop()
    node1.start()
    assert wait(
        lambda: (cluster.status(node1) or {}).get("peers", {}).get("node2", {}).get("has_snapshot"),
        CONVERGE,
    ), node1.log_tail()
    assert cluster.holds(node1, "bob")
    assert "peers from the master's last configuration: node2" in node1.log_tail(200)


def test_a_removed_node_is_cut_off_the_bus_and_leaves_the_zone(cluster):
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    pid = node1.proc.pid
    zone = cluster.api("GET", "/api/dns")["zone"]
    assert "node2.example.test." in zone
    assert cluster.lookup("node2.example.test") == [node2.address]
    # The served zone follows the node table once a second: the node the test
    # before removed may still be served for that long.
    assert wait(lambda: len(cluster.lookup("_sip._udp.example.test", "SRV")) == 2, CONVERGE)
    refused = cluster.status(node1)["bus"]["refused"]
    out = run_py("master", "node", "remove", "node2", "--config", cluster.config)
    assert out.returncode == 0, out.stderr
    assert wait(
        lambda: "node2" not in (cluster.status(node1) or {"peers": {"node2": 1}})["peers"], CONVERGE
    ), node1.log_tail()
    # node2 still runs (its operator stops it); its bus connection to node1 is
    # dropped and its key refused, so it hears nothing from node1 any more.
    assert wait(
        lambda: (
            (cluster.status(node2) or {}).get("peers", {}).get("node1", {}).get("liveness")
            in ("suspected", "dead")
        ),
        CONVERGE,
    ), node2.log_tail()
    assert wait(lambda: cluster.status(node1)["bus"]["refused"] > refused, CONVERGE)
    assert registered(node2, "alice", "alice-pw")
    assert not wait(lambda: "node2" in _origins(cluster, node1, "alice"), 2.0), (
        "a registration on the removed node reached node1"
    )
    zone = cluster.api("GET", "/api/dns")["zone"]
    assert "node2.example.test." not in zone and "node1.example.test." in zone
    assert wait(lambda: cluster.lookup("node2.example.test") == [], CONVERGE), (
        "the master's DNS follows the removal"
    )
    assert [r.split()[2] for r in cluster.lookup("_sip._udp.example.test", "SRV")] == [
        str(node1.port)
    ]
    assert node1.proc.pid == pid and registered(node1, "bob", "bob-pw")
    listed = run_py("master", "node", "list", "--config", cluster.config)
    assert listed.returncode == 0 and listed.stdout.startswith("node1\t")
    assert "node2" not in listed.stdout


def test_a_removed_node_added_back_is_heard_again_without_a_restart(cluster):
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    pid = node2.proc.pid
    again = node2.join(cluster.url, cluster.token(), "--force", "--id", "node2")
    assert again.returncode == 0, again.stderr
    # node1 refused node2's subscription while node2 was out, and ZeroMQ does not retry
    # a refused connection: node2 subscribes anew until node1 lets its key in again.
    assert wait(
        lambda: all(
            (cluster.status(a) or {}).get("peers", {}).get(b, {}).get("liveness") == "alive"
            for a, b in ((node1, "node2"), (node2, "node1"))
        ),
        CONVERGE,
    ), (node1.log_tail(), node2.log_tail())
    # alice's registration on node2 while it was out reaches node1 now (by snapshot).
    assert wait(lambda: "node2" in _origins(cluster, node1, "alice"), CONVERGE)
    assert node2.proc.pid == pid


def _origins(cluster, node, user: str) -> set[str]:
    return {b["origin"] for b in cluster.ask(node, "bindings", user=f"sip:{user}@")["bindings"]}


def good_reply() -> dict:
    return {
        "node_id": "node7",
        "domain": "example.test",
        "master_key": generate_keypair()[0],
        "auth_secret": "ab" * 32,
        "version": 3,
        "peers": [
            {
                "id": "node1",
                "bus": "tcp://192.0.2.1:7001",
                "snapshot": "tcp://192.0.2.1:7002",
                "public_key": generate_keypair()[0],
                "sip": "192.0.2.1:5060",
            }
        ],
    }


def me() -> Member:
    return Member(
        "joining",
        "tcp://192.0.2.7:7001",
        "tcp://192.0.2.7:7002",
        "tcp://192.0.2.7:7003",
        *generate_keypair(),
        sip="192.0.2.7:5060",
    )


def test_the_written_configuration_is_the_masters_answer(tmp_path):
    reply = good_reply()
    data = str(tmp_path / 'odd "dir"')
    cfg = parse_config(tomllib.loads(node_toml(me(), reply, data, "192.0.2.7", 5060)))
    assert (cfg.id, cfg.domain, cfg.address, cfg.port) == (
        "node7",
        "example.test",
        "192.0.2.7",
        5060,
    )
    assert cfg.master_key == reply["master_key"] and cfg.auth_secret == "ab" * 32
    assert cfg.data_dir == data and cfg.database == f"sqlite:///{data}/tandem.db"
    assert [(p.id, p.bus, p.public_key) for p in cfg.peers] == [
        ("node1", "tcp://192.0.2.1:7001", reply["peers"][0]["public_key"])
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"domain": 'example.test"\n[evil]'},
        {"node_id": 'node7"\nx = 1'},
        {"node_id": None},
        {"master_key": "short"},
        {"auth_secret": "zz"},
        {"auth_secret": "ab"},
        {"peers": [{"id": "node1", "bus": 'tcp://x"', "snapshot": "tcp://h:1", "public_key": "k"}]},
        {"domain": None},
    ],
)
def test_a_malformed_or_hostile_answer_is_refused(tmp_path, bad):
    with pytest.raises(JoinFailed, match="malformed"):
        node_toml(me(), {**good_reply(), **bad}, str(tmp_path), "192.0.2.7", 5060)
