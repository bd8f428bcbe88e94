"""A cluster made with the join commands on separate hosts (network namespaces).

The master runs on its own host, set up with ``run.py master init``; three
nodes join it with ``run.py node join`` each on its own host (SIP on 5060,
bus on 7001-7003 of its own address), phones are SIPp runs on a sixth.
Then a fourth node joins while phones register, and one node is removed
while the others serve. The tests share the cluster and run in file order;
they print how long the fourth node took from its start to a converged
cluster, and how many registrations went through meanwhile.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from loadtest.bench_register import write_register_inf
from loadtest.harness import run_sipp, write_users_csv
from store import master as ms
from tests.joined import JoinedNode, Master, wait
from tests.netns import Network, network_or_skip

USERS = 400
CONVERGE = 30.0
"""Bound on convergence after a join or a removal (seconds)."""


class Lab:
    """The network, the master with its joined nodes, and the phones' host."""

    def __init__(self, net: Network, master: Master, rows: list):
        self.net, self.master, self.rows = net, master, rows
        self.phones = net["phones"]

    def node(self, name: str) -> JoinedNode:
        """A node on its own host, made by ``node join`` and started."""
        host = self.net[name]
        node = JoinedNode(self.master.work, name, host.address, tuple(host.prefix))
        out = node.join(self.master.url, self.master.token())
        assert out.returncode == 0, out.stderr
        assert f"{name} joined example.test" in out.stdout, out.stdout
        self.master.nodes[name] = node
        return node.start()

    def register(self, node, rows, port: int, rate: int = 500):
        """Register ``rows`` through ``node`` from phones:``port``; every one must succeed."""
        inf = os.path.join(self.master.work, f"inf-{time.monotonic_ns()}.csv")
        write_register_inf(inf, rows, node.domain, 3600)
        res = run_sipp(
            "register_auth.xml",
            f"{node.address}:{node.port}",
            self.master.work,
            inf=inf,
            calls=len(rows),
            rate=rate,
            local_ip=self.phones.address,
            local_port=port,
            timeout=60,
            prefix=tuple(self.phones.prefix),
        )
        assert (res.returncode, res.failed, res.successful) == (0, 0, len(rows)), res.stderr
        return res

    def converged(self, timeout: float = CONVERGE) -> dict:
        """Wait (bounded) until every node of the master is synced with one digest."""
        got = wait(self.master.converged, timeout, step=0.1)
        assert got, self.master.digests()
        return got


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    net = network_or_skip(["master", "node1", "node2", "node3", "node4", "phones"])
    master = None
    try:
        work = str(tmp_path_factory.mktemp("hosts-join"))
        host = net["master"]
        master = Master(work, host.address, tuple(host.prefix)).init()
        rows = write_users_csv(os.path.join(work, "users.csv"), USERS)
        ms.init_master_store(f"sqlite:///{master.data}/master.db")
        try:
            ms.save_users(rows, "test users")
        finally:
            ms.close_master_store()
        master.start()
        lab = Lab(net, master, rows)
        first = JoinedNode(work, "node1", net["node1"].address, tuple(net["node1"].prefix))
        out = first.join(master.url, master.first_token)
        assert out.returncode == 0, out.stderr
        master.nodes["node1"] = first.start()
        lab.node("node2")
        lab.node("node3")
        lab.converged()
        yield lab
    finally:
        if master is not None:
            master.close()
        net.close()


def test_three_joined_nodes_on_three_hosts_replicate(lab):
    n1, n2, n3 = (lab.master.nodes[k] for k in ("node1", "node2", "node3"))
    lab.register(n1, lab.rows[:100], 24001)
    lab.register(n3, lab.rows[100:200], 24002)
    got = lab.converged()
    assert {d["live"] for d in got.values()} == {200}
    assert lab.master.holds(n2, "user150") and lab.master.holds(n2, "user50")


def test_a_fourth_node_joins_while_phones_register(lab):
    n1 = lab.master.nodes["node1"]
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(lab.register, n1, lab.rows[200:350], 24003, 30)
        started = time.monotonic()
        n4 = lab.node("node4")
        running = time.monotonic() - started
        for name in ("node1", "node2", "node3"):
            assert wait(
                lambda name=name: (
                    (lab.master.status(lab.master.nodes[name]) or {})
                    .get("peers", {})
                    .get("node4", {})
                    .get("liveness")
                    == "alive"
                ),
                CONVERGE,
            ), f"{name} does not hear node4"
        linked = time.monotonic() - started
        res = load.result()
    got = lab.converged()
    took = time.monotonic() - started
    assert {d["live"] for d in got.values()} == {350} and len(got) == 4, got
    assert lab.master.holds(n4, "user349") and lab.master.holds(n4, "user0")
    print(
        f"\nnode4 joined under load: running {running:.2f} s after `node join`, heard by "
        f"every node after {linked:.2f} s, 4 digests equal after {took:.2f} s; "
        f"{res.successful} registrations through node1 meanwhile, {res.failed} failed"
    )


def test_a_removed_node_is_dropped_while_the_others_serve(lab):
    gone = lab.master.nodes.pop("node2")
    zone = lab.master.api("GET", "/api/dns")["zone"]
    assert "node2.example.test." in zone and lab.net["node2"].address in zone
    assert lab.master.lookup("node2.example.test") == [lab.net["node2"].address]
    lab.master.api("DELETE", "/api/nodes/node2")
    for node in lab.master.nodes.values():
        assert wait(
            lambda node=node: (
                "node2" not in (lab.master.status(node) or {"peers": {"node2": 1}})["peers"]
            ),
            CONVERGE,
        ), node.log_tail()
    assert wait(
        lambda: (
            (lab.master.status(gone) or {}).get("peers", {}).get("node1", {}).get("liveness")
            in ("suspected", "dead")
        ),
        CONVERGE,
    ), gone.log_tail()
    lab.register(lab.master.nodes["node3"], lab.rows[350:], 24004)
    got = lab.converged()
    assert {d["live"] for d in got.values()} == {USERS} and len(got) == 3, got
    zone = lab.master.api("GET", "/api/dns")["zone"]
    assert "node2.example.test." not in zone and lab.net["node2"].address not in zone
    assert "node4.example.test." in zone
    assert wait(lambda: lab.master.lookup("node2.example.test") == [], CONVERGE)
    assert lab.master.lookup("node4.example.test") == [lab.net["node4"].address]
    assert len(lab.master.lookup("_sip._udp.example.test", "SRV")) == 3
    gone.stop()
