"""A rolling upgrade from the previous release on separate hosts (network namespaces).

The master and three nodes each run on their own host, all of the previous
release (``tests.upgrades.previous_tree``): the master made by its ``run.py
master init``, the nodes by its ``run.py node join``. Phones are SIPp runs on
a fifth host: a callee phone registered through each node answers calls, and
bounded load (registrations and calls, round after round) goes through the
nodes in service. Each node in turn is drained through the master's API,
stopped (SIGTERM) and started with this release's code on the same data
folder (its schema migrates) and resyncs; then the master is upgraded the
same way and pushes a new user to every node. No registration or call may
fail; the test prints what the load attempted and what failed, and how long
each process took from its stop to serving again.
"""

import os
import time

import pytest

from loadtest.bench_call import Uas
from loadtest.harness import ROOT, write_users_csv
from sipcore.protocol import PROTOCOL_VERSION
from store.migrations import MASTER_MIGRATIONS, NODE_MIGRATIONS
from store.schema import current_version
from tests.joined import JoinedNode, Master, wait
from tests.netns import Network, network_or_skip
from tests.upgrades import PREVIOUS_RELEASE, Load, Phones, previous_tree, registrations, schema_of

NODES = ("node1", "node2", "node3")
USERS = 30
"""Three callees and 27 load users (each round registers all 27 and places 9 calls)."""
SERVE = 30.0
"""Bound on a process serving again after its start, and on convergence (seconds)."""
FAILED_BOUND = 0
"""Registrations or calls that may fail during the rolling upgrade: none (the load
goes only through nodes in service, and a node is drained before it stops)."""


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> str:
    """A folder holding the previous release's tree (``tests.upgrades.previous_tree``)."""
    return previous_tree(tmp_path_factory)


@pytest.fixture
def net():
    network = network_or_skip(["master", *NODES, "phones"])
    try:
        yield network
    finally:
        network.close()


def synced(master: Master, node: JoinedNode) -> bool:
    """Whether ``node`` answers the master's control requests and is synced."""
    return (master.status(node) or {}).get("state") == "synced"


def pushed(master: Master, version: int) -> bool:
    """Whether every node acknowledged the master's configuration ``version``."""
    return all(n["acked_version"] >= version for n in master.api("GET", "/api/nodes")["nodes"])


def old_cluster(net: Network, previous: str, work: str, rows: list) -> Master:
    """The previous release's master (users added through its API) and its three
    joined nodes, each on its own host, converged."""
    host = net["master"]
    master = Master(work, host.address, tuple(host.prefix), root=previous)
    try:
        master.init().start()
        for user, password in rows:
            version = master.api("POST", "/api/users", {"username": user, "password": password})[
                "version"
            ]
        for k, name in enumerate(NODES):
            host = net[name]
            node = JoinedNode(work, name, host.address, tuple(host.prefix), root=previous)
            out = node.join(master.url, master.token() if k else master.first_token)
            assert out.returncode == 0, out.stderr
            master.nodes[name] = node.start()
        assert wait(master.converged, SERVE, 0.1), master.digests()
        assert wait(lambda: pushed(master, version), SERVE, 0.1), master.api("GET", "/api/nodes")
    except BaseException:
        master.close()
        raise
    return master


def test_rolling_upgrade_on_separate_hosts_fails_no_call(previous, net, tmp_path):
    work = str(tmp_path)
    rows = write_users_csv(os.path.join(work, "users.csv"), USERS)
    phones = Phones(net["phones"].address, tuple(net["phones"].prefix), base=26000)
    master = old_cluster(net, previous, work, rows)
    nodes = list(master.nodes.values())
    uas: list[Uas] = []
    load = None
    took = {}
    try:
        for node in nodes:
            assert "pv" not in master.ask(node, "status"), "not the previous release"
        callees = [user for user, _ in rows[:3]]
        for k, node in enumerate(nodes):
            assert registrations(node, rows[k : k + 1], 25001 + k, work, phones) == (1, 0)
            uas.append(
                Uas("uas_answer.xml", 25001 + k, work, address=phones.address, prefix=phones.prefix)
            )
        load = Load(nodes, rows[3:], callees, work, phones).start()
        assert load.wait_rounds(1), load.counts
        migrated = current_version(NODE_MIGRATIONS)
        for node in nodes:
            with load.sparing(node, nodes, len(nodes)):
                master.api("POST", f"/api/nodes/{node.id}/drain", {"on": True})
                assert wait(lambda n=node: master.ask(n, "status")["drained"], 10)
                stopped = time.monotonic()
                node.stop()
                node.root = ROOT
                node.start()
                assert wait(lambda n=node: synced(master, n), SERVE, 0.1), node.log_tail()
                took[node.id] = time.monotonic() - stopped
                assert schema_of(os.path.join(node.dir, "tandem.db")) == migrated
                assert master.ask(node, "status")["pv"] == PROTOCOL_VERSION

        # The master last: the nodes serve on while it is down, then it pushes again.
        stopped = time.monotonic()
        master.master.stop()
        master.master.root = ROOT
        master.start()
        late = ("late", "late-pw")
        version = master.api("POST", "/api/users", {"username": late[0], "password": late[1]})[
            "version"
        ]
        assert wait(lambda: pushed(master, version), SERVE, 0.1), master.api("GET", "/api/nodes")
        took["master"] = time.monotonic() - stopped
        assert schema_of(os.path.join(master.data, "master.db"), "master") == current_version(
            MASTER_MIGRATIONS
        )
        assert load.wait_rounds(1), load.counts
        load.stop()
        assert registrations(nodes[1], [late], 25010, work, phones) == (1, 0)

        got = wait(master.converged, SERVE, 0.1)
        assert got and {d["live"] for d in got.values()} == {USERS + 1}, master.digests()
        for node in nodes:
            status = master.ask(node, "status")
            assert {p["pv"] for p in status["peers"].values()} == {PROTOCOL_VERSION}
            assert (status["bad_messages"], status["newer_protocol"]) == (0, 0)
        (regs, reg_failed), (placed, call_failed) = (
            load.counts["registrations"],
            load.counts["calls"],
        )
        print(
            f"\nrolling upgrade {PREVIOUS_RELEASE} -> current on 5 hosts: {load.rounds} rounds, "
            f"registrations {regs} attempted {reg_failed} failed, "
            f"calls {placed} attempted {call_failed} failed; stop to serving: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in took.items())
        )
        assert reg_failed + call_failed <= FAILED_BOUND, load.failures
        assert regs and placed
    finally:
        if load is not None:
            load.stop()
        for u in uas:
            u.stop()
        master.close()
