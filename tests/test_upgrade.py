"""Upgrades across releases: the previous tagged release against this one, real processes.

The previous release comes from git (``tests.upgrades.previous_tree``: its tag,
else its commit), run with the same interpreter; without it the tests are
skipped, and fail under ``CI``.

- A mixed cluster: a node of the previous release and one of this release
  replicate registrations both ways and route SIPp calls both ways; this
  release's configuration master pushes users to both; the old node counts no
  bad message from the new one; the master's database is one the previous release
  made, migrated forward by this release as it opens it.
- A rolling upgrade: three nodes of the previous release under bounded SIPp
  load (registrations and calls through the nodes in service), upgraded one at
  a time (drain, SIGTERM, this release started on the same data folder, whose
  schema migrates); no registration or call fails and every binding is kept.
"""

import os
import subprocess
import sys

import pytest

from actors.bus import BusError
from loadtest.bench_call import Uas, register_contact
from loadtest.harness import ROOT, Cluster, free_port, write_users_csv
from sipcore.protocol import FIRST_VERSION, PROTOCOL_VERSION
from store import master as ms
from store.files import write_private
from store.migrations import MASTER_MIGRATIONS, NODE_MIGRATIONS
from store.schema import current_version, stored_version
from tests.joined import wait
from tests.upgrades import PREVIOUS_RELEASE, Load, Phones, calls, previous_tree, schema_of
from web.push import Pusher

SETTINGS = {
    "heartbeat": 0.2,
    "suspect_after": 1.0,
    "dead_after": 5.0,
    "alone_wait": 1.0,
    "sync_timeout": 3.0,
}
FAILED_BOUND = 0
"""Registrations or calls that may fail during the rolling upgrade: none."""


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> str:
    """A folder holding the previous release's tree (``tests.upgrades.previous_tree``)."""
    return previous_tree(tmp_path_factory)


def serving(cluster, node) -> bool:
    """Whether ``node`` answers its control endpoint and is synced."""
    try:
        return cluster.control(node, "status", 1.0, brief=True)["state"] == "synced"
    except BusError:
        return False


def following(cluster) -> bool:
    """Whether every node hears every peer and holds a snapshot of it (so what follows
    travels as live updates)."""
    try:
        return all(
            p["liveness"] == "alive" and p["has_snapshot"]
            for n in cluster.nodes
            for p in cluster.control(n, "status", 1.0, brief=True)["peers"].values()
        )
    except BusError:
        return False


def old_master(previous: str, work: str) -> tuple[str, str, str]:
    """A master folder made by the previous release's ``run.py master init``: its
    database URL and key pair."""
    data = os.path.join(work, "master")
    config = os.path.join(work, "master.toml")
    write_private(
        config,
        f'[master]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'data_dir = "{data}"\ndomain = "example.test"\n',
    )
    init = subprocess.run(
        [sys.executable, os.path.join(previous, "run.py"), "master", "init", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=previous,
    )
    assert init.returncode == 0, init.stderr
    keys = []
    for name in ("master.public", "master.secret"):
        with open(os.path.join(data, name)) as f:
            keys.append(f.read().strip())
    return f"sqlite:///{data}/master.db", keys[0], keys[1]


def test_a_previous_release_node_and_a_current_one_work_together(previous, tmp_path):
    """Node1 runs the previous release, node2 this one; the master is this release's,
    on a database the previous release made (migrated forward as it opens)."""
    work = str(tmp_path)
    master_url, master_public, master_secret = old_master(previous, work)
    cluster = Cluster(work, 2, settings={**SETTINGS, "master_key": master_public})
    old, new = cluster.nodes
    old.root = previous
    uas = []
    pusher = None
    cluster.start()
    try:
        assert wait(lambda: following(cluster), 30), old.log_tail() + new.log_tail()
        ms.init_master_store(master_url)
        assert ms.domain() == "example.test", "the previous release's settings are kept"
        assert stored_version(ms.master_db.obj, "master") == current_version(MASTER_MIGRATIONS)
        rows = [(f"user{i}", f"pw{i}") for i in range(8)]
        for user, password in rows:
            version = ms.save_user(user, password)
        for m in cluster.members.values():
            ms.save_node(m.id, "", m.control, m.public_key)
        pusher = Pusher(master_public, master_secret, interval=0.2)
        pusher.start()
        pusher.poke()
        assert wait(lambda: all(n["acked_version"] >= version for n in ms.list_nodes()), 10), (
            ms.list_nodes()
        )
        for node in cluster.nodes:
            assert cluster.control(node, "config_version")["version"] == version

        # A phone registered on each node; both bindings reach both nodes.
        ports = {old.id: free_port(), new.id: free_port()}
        assert register_contact(old, "user0", "pw0", ports[old.id], work), old.log_tail()
        assert register_contact(new, "user1", "pw1", ports[new.id], work), new.log_tail()
        ok, got = cluster.wait_converged(10)
        assert ok and {d["live"] for d in got.values()} == {2}, got
        uas = [Uas("uas_answer.xml", port, work) for port in ports.values()]

        # Calls both ways: through the new node to the old node's phone, and back.
        assert calls(new, rows[2:5], "user0", work, Phones()) == (3, 0), new.log_tail()
        assert calls(old, rows[5:8], "user1", work, Phones()) == (3, 0), old.log_tail()

        old_status, new_status = (cluster.control(n, "status") for n in cluster.nodes)
        assert old_status["bad_messages"] == 0 and "pv" not in old_status
        assert old_status["peers"][new.id]["updates"] >= 1, "live updates, new to old"
        assert new_status["peers"][old.id]["updates"] >= 1, "live updates, old to new"
        assert new_status["pv"] == PROTOCOL_VERSION
        assert new_status["peers"][old.id]["pv"] == FIRST_VERSION
        assert (
            new_status["bad_messages"],
            new_status["newer_protocol"],
            new_status["unknown_kinds"],
        ) == (0, 0, 0)
        # The new node kept records of the calls it answered, and sent none to the old one.
        assert new_status["dialog_stats"]["answered"] >= 3
        assert new_status["dialog_stats"]["published"] == 0
        with open(old.log_path, errors="replace") as f:
            assert "dropped a bad" not in f.read()

        # This release's master changes a user: both releases apply it.
        version = ms.save_user("user0", "changed-pw0")
        pusher.poke()
        assert wait(lambda: all(n["acked_version"] >= version for n in ms.list_nodes()), 10)
        for node in cluster.nodes:
            assert register_contact(node, "user0", "changed-pw0", free_port(), work)
            assert not register_contact(node, "user0", "pw0", free_port(), work)
    finally:
        for u in uas:
            u.stop()
        if pusher is not None:
            pusher.stop()
            ms.close_master_store()
        cluster.stop()


def test_rolling_upgrade_from_the_previous_release_keeps_registrations_and_calls(
    previous, tmp_path
):
    work = str(tmp_path)
    cluster = Cluster(work, 3, settings=SETTINGS)
    for node in cluster.nodes:
        node.root = previous
    rows = write_users_csv(os.path.join(work, "users.csv"), 30)
    cluster.provision(os.path.join(work, "users.csv"))
    uas = []
    load = None
    cluster.start()
    try:
        assert wait(lambda: following(cluster), 30), [n.log_tail() for n in cluster.nodes]
        # One callee phone registered on each node, for the whole upgrade.
        callees = ["user0", "user1", "user2"]
        ports = [free_port() for _ in callees]
        for node, user, port in zip(cluster.nodes, callees, ports, strict=True):
            assert register_contact(node, user, f"pw{user[4:]}", port, work), node.log_tail()
        uas = [Uas("uas_answer.xml", port, work) for port in ports]
        load = Load(cluster.nodes, rows[3:], callees, work).start()
        assert load.wait_rounds(1), load.counts
        migrated = current_version(NODE_MIGRATIONS)
        for node in cluster.nodes:
            with load.sparing(node, cluster.nodes, len(cluster.nodes)):
                cluster.control(node, "drain", on=True)
                assert wait(lambda n=node: cluster.control(n, "status")["drained"], 10)
                assert node.stop() == 0, node.log_tail()
                node.root = ROOT
                node.start(30)
                assert wait(lambda n=node: serving(cluster, n), 30), node.log_tail()
                assert schema_of(os.path.join(node.dir, "tandem.db")) == migrated
                assert cluster.control(node, "status")["pv"] == PROTOCOL_VERSION
        load.stop()
        ok, got = cluster.wait_converged(10)
        live = 3 + len(rows[3:])
        assert ok and {d["live"] for d in got.values()} == {live}, got
        for node in cluster.nodes:
            status = cluster.control(node, "status")
            assert {p["pv"] for p in status["peers"].values()} == {PROTOCOL_VERSION}
            assert all(p["updates"] >= 1 for p in status["peers"].values()), status["peers"]
            assert (status["bad_messages"], status["newer_protocol"]) == (0, 0)
        # Once every node speaks this release, the calls' records go on the bus.
        assert any(cluster.control(n, "status")["dialog_stats"]["published"] for n in cluster.nodes)
        (regs, reg_failed), (placed, call_failed) = (
            load.counts["registrations"],
            load.counts["calls"],
        )
        print(
            f"rolling upgrade {PREVIOUS_RELEASE} -> current: {load.rounds} rounds, "
            f"registrations {regs} attempted {reg_failed} failed, "
            f"calls {placed} attempted {call_failed} failed"
        )
        assert reg_failed + call_failed <= FAILED_BOUND, load.failures
        assert regs and placed
    finally:
        if load is not None:
            load.stop()
        for u in uas:
            u.stop()
        cluster.stop()
