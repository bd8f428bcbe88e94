"""Three real nodes on loopback replicating registrations: SIPp load, SIGKILL, SIGSTOP.

The tests share one cluster and run in file order; each starts from a
converged cluster with every node running, and leaves one behind.
"""

import os
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from actors.bus import Bus, BusError, generate_keypair, request
from loadtest.bench_register import write_register_inf
from loadtest.harness import Cluster, free_port, run_sipp, write_users_csv

USERS = 5000
SETTINGS = {
    "heartbeat": 0.2,
    "suspect_after": 1.0,
    "dead_after": 10.0,
    "alone_wait": 2.0,
    "sync_timeout": 3.0,
    "hwm": 1000,
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("cluster"))
    c = Cluster(work, 3, settings=SETTINGS)
    c.rows = write_users_csv(os.path.join(work, "users.csv"), USERS)
    c.provision(os.path.join(work, "users.csv"))
    c.work = work
    c.ports = {n.id: free_port() for n in c.nodes}
    c.start()
    try:
        try:
            c.control(c.nodes[0], "ping", 5.0)
        except BusError:
            pytest.fail(
                "no control endpoint: actors/node.py must call "
                "actors.replicator.attach_replicator(node)\n" + c.nodes[0].log_tail()
            )
        assert c.wait_synced(15.0), [n.log_tail() for n in c.nodes]
        yield c
    finally:
        c.stop()


@pytest.fixture
def ready(cluster):
    """The cluster with every node running and converged."""
    for node in cluster.nodes:
        if node.proc.poll() is not None:
            node.start()
        else:
            node.signal(signal.SIGCONT)
    ok, got = cluster.wait_converged(15.0)
    assert ok, got
    return cluster


def wait(cond, timeout, step=0.05):
    """Poll ``cond`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not (value := cond()) and time.monotonic() < deadline:
        time.sleep(step)
    return value


def register(cluster, node, rows, port, expires=3600, rate=1000):
    """Register (or with ``expires=0`` unregister) ``rows`` through ``node`` from ``port``."""
    inf = os.path.join(cluster.work, f"inf-{time.monotonic_ns()}.csv")
    write_register_inf(inf, rows, node.domain, expires)
    return run_sipp(
        "register_auth.xml",
        f"{node.address}:{node.port}",
        cluster.work,
        inf=inf,
        calls=len(rows),
        rate=rate,
        local_port=port,
        timeout=90,
    )


def in_parallel(*jobs):
    """Run SIPp jobs ``(cluster, node, rows, port, ...)`` at once; return their results."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        return [f.result() for f in [pool.submit(register, *job) for job in jobs]]


def assert_all_ok(results):
    for res in results:
        assert res.failed == 0 and res.returncode == 0, res.stderr


def test_registrations_on_any_node_appear_on_all_within_one_second(ready):
    c = ready
    rows = c.rows[:3000]
    jobs = [(c, node, rows[k::3], c.ports[node.id]) for k, node in enumerate(c.nodes)]
    assert_all_ok(in_parallel(*jobs))
    done = time.monotonic()
    ok, got = c.wait_converged(1.0)
    assert ok, got
    assert time.monotonic() - done < 1.5
    assert {d["live"] for d in got.values()} == {3000}
    status = c.control(c.nodes[0], "status")
    assert status["state"] == "synced" and status["bindings"] == 3000
    assert {p["liveness"] for p in status["peers"].values()} == {"alive"}


def test_unregistrations_propagate(ready):
    c = ready
    gone = c.rows[:1000]
    jobs = []
    for k, node in enumerate(c.nodes):
        owner = c.nodes[(k + 1) % 3]
        jobs.append((c, node, gone[(k + 1) % 3 :: 3], c.ports[owner.id], 0))
    assert_all_ok(in_parallel(*jobs))
    ok, got = c.wait_converged(2.0)
    assert ok, got
    assert {(d["live"], d["tombstones"]) for d in got.values()} == {(2000, 1000)}


def test_sigkill_and_restart_holds_the_same_set_within_five_seconds(ready):
    c = ready
    a, b, third = c.nodes
    a.kill()
    more = c.rows[3000:3500]
    assert_all_ok(
        in_parallel((c, b, more[0::2], c.ports[b.id]), (c, third, more[1::2], c.ports[third.id]))
    )
    ok, _ = c.wait_converged(2.0, nodes=[b, third])
    assert ok
    started = time.monotonic()
    a.start()
    ok, got = c.wait_converged(5.0 - (time.monotonic() - started))
    assert ok, got
    assert {d["live"] for d in got.values()} == {2500}
    assert wait(lambda: c.control(b, "status")["peers"][a.id]["sync_reasons"].get("epoch"), 5.0)


def test_restarted_node_gets_back_the_bindings_it_was_primary_for(ready):
    c = ready
    node = c.nodes[2]
    node.kill()
    path = node.database.removeprefix("sqlite:///")
    con = sqlite3.connect(path)
    try:
        with con:
            lost = con.execute("DELETE FROM bindings WHERE origin = ?", (node.id,)).rowcount
    finally:
        con.close()
    assert lost > 0
    node.start()
    ok, got = c.wait_converged(5.0)
    assert ok, got


def test_sigstop_while_updates_flow_then_sigcont_converges_through_the_gap_rule(ready):
    c = ready
    a, b, third = c.nodes
    before = c.control(b, "status")
    b.signal(signal.SIGSTOP)
    try:
        rows = c.rows[:USERS]
        results = in_parallel((c, a, rows[0::2], free_port()), (c, third, rows[1::2], free_port()))
    finally:
        b.signal(signal.SIGCONT)
    assert_all_ok(results)
    ok, got = c.wait_converged(10.0)
    assert ok, got
    assert {d["live"] for d in got.values()} == {before["bindings"] + USERS}
    after = c.control(b, "status")["peers"]
    gap_syncs = sum(
        after[p]["sync_reasons"].get("gap", 0) - before["peers"][p]["sync_reasons"].get("gap", 0)
        for p in (a.id, third.id)
    )
    assert gap_syncs >= 1, after


def test_last_updates_of_a_node_that_dies_are_relayed_by_the_peer_that_got_them(ready):
    """C is stopped until B (and so A, with the same ZMTP heartbeat timeout) gives
    up on it, A registers 1,000 users that B gets and C misses, A dies for good,
    C continues: nothing from A tells C of the gap, B's heartbeats do."""
    c = ready
    a, b, third = c.nodes

    def peers_of(node):
        return c.control(node, "status")["peers"]

    relays_before = peers_of(third)[b.id]["sync_reasons"].get("relay", 0)
    third.signal(signal.SIGSTOP)
    try:
        assert wait(lambda: peers_of(b)[third.id]["liveness"] != "alive", 5.0)
        assert_all_ok([register(c, a, c.rows[:1000], c.ports[a.id])])
        last = c.control(a, "status")["seq"]
        assert wait(lambda: peers_of(b)[a.id]["seq"] == last, 5.0)
        a.kill()
    finally:
        third.signal(signal.SIGCONT)
    ok, got = c.wait_converged(8.0, nodes=[b, third])
    assert ok, got
    assert wait(lambda: (peers_of(third)[a.id]["relayed"] or [0, 0])[1] == last, 5.0), peers_of(
        third
    )
    assert peers_of(third)[b.id]["sync_reasons"].get("relay", 0) > relays_before


def test_a_client_with_an_unknown_key_gets_no_answer(ready):
    node = ready.nodes[0]
    member = ready.members[node.id]
    stranger = Bus(*generate_keypair())
    try:
        with pytest.raises(BusError, match="no reply"):
            request(stranger, member.control, member.public_key, {"cmd": "status"}, 1.0)
    finally:
        stranger.close()
