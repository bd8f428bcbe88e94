"""Three nodes on three separate hosts (network namespaces), phones on a fourth.

Each node runs in its own namespace on its own address with SIP on 5060 and
its bus on 7001-7003, configured statically like a real install (its key
pair, its peers' endpoints and public keys). Phones are SIPp runs in the
``phones`` host. The tests share one cluster and run in file order; each
starts from a converged cluster and leaves one behind. They print the
figures the issue asks for (time to converge after healing, calls failed
during a rolling restart).
"""

import os
import subprocess
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from loadtest.bench_call import Uas, write_call_inf
from loadtest.bench_register import write_register_inf
from loadtest.harness import Cluster, run_sipp, write_users_csv
from tests.netns import Network, network_or_skip, sweep

USERS = 600
SETTINGS = {
    "heartbeat": 0.2,
    "suspect_after": 1.0,
    "dead_after": 3.0,
    "alone_wait": 2.0,
    "sync_timeout": 3.0,
}
CONVERGE = 30.0
"""Bound on convergence after a heal or restart (seconds)."""


class Lab:
    """The network, the cluster on it and the phones' host."""

    def __init__(self, net: Network, cluster: Cluster, work: str, rows: list):
        self.net, self.cluster, self.work, self.rows = net, cluster, work, rows
        self.phones = net["phones"]
        self.nodes = cluster.nodes

    def register(self, node, rows, port: int, expires: int = 3600):
        """Register (``expires=0``: remove) ``rows`` through ``node`` from phones:``port``."""
        inf = os.path.join(self.work, f"inf-{time.monotonic_ns()}.csv")
        write_register_inf(inf, rows, node.domain, expires)
        res = run_sipp(
            "register_auth.xml",
            f"{node.address}:{node.port}",
            self.work,
            inf=inf,
            calls=len(rows),
            rate=500,
            local_ip=self.phones.address,
            local_port=port,
            timeout=60,
            prefix=tuple(self.phones.prefix),
        )
        assert (res.returncode, res.failed, res.successful) == (0, 0, len(rows)), res.stderr
        return res

    def bindings(self, node, user: str) -> list[tuple]:
        """``(contact, expires_at, origin, deleted)`` of ``user``'s bindings in ``node``'s store."""
        con = sqlite3.connect(
            f"file:{node.database.removeprefix('sqlite:///')}?mode=ro", uri=True, timeout=10
        )
        try:
            return sorted(
                con.execute(
                    "SELECT contact, expires_at, origin, deleted FROM bindings WHERE aor LIKE ?",
                    (f"%:{user}@%",),
                ).fetchall()
            )
        finally:
            con.close()


def wait(cond, timeout: float, step: float = 0.05):
    """Poll ``cond`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not (value := cond()) and time.monotonic() < deadline:
        time.sleep(step)
    return value


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    net = network_or_skip(["node1", "node2", "node3", "phones"])
    cluster = None
    try:
        work = str(tmp_path_factory.mktemp("hosts"))
        hosts = [(net[f"node{k}"].address, tuple(net[f"node{k}"].prefix)) for k in (1, 2, 3)]
        cluster = Cluster(work, settings=SETTINGS, hosts=hosts)
        rows = write_users_csv(os.path.join(work, "users.csv"), USERS)
        cluster.provision(os.path.join(work, "users.csv"))
        cluster.start()
        assert cluster.wait_synced(20.0), [n.log_tail() for n in cluster.nodes]
        yield Lab(net, cluster, work, rows)
    finally:
        if cluster is not None:
            cluster.stop()
        net.close()


@pytest.fixture
def ready(lab):
    """The lab with every node running, every cable in and the cluster converged."""
    for host in lab.net.hosts.values():
        host.link(True)
        host.unblock()
    for node in lab.nodes:
        if node.proc.poll() is not None:
            node.start()
    ok, got = lab.cluster.wait_converged(CONVERGE)
    assert ok, got
    return lab


def live(lab, node=None) -> int:
    """Live bindings of ``node`` (default: the first) by its control digest."""
    return lab.cluster.control(node or lab.nodes[0], "digest", 5.0)["live"]


def test_a_node_cut_off_while_phones_register_elsewhere_converges_when_plugged_back(ready):
    lab = ready
    a, b, cut = lab.nodes
    before = live(lab)
    host = lab.net[cut.id]
    host.link(False)
    try:
        assert wait(
            lambda: lab.cluster.control(a, "status")["peers"][cut.id]["liveness"] != "alive", 5.0
        ), "node1 still hears the cut-off node"
        rows = lab.rows[:200]
        with ThreadPoolExecutor(2) as pool:
            jobs = [
                pool.submit(lab.register, a, rows[0::2], 21001),
                pool.submit(lab.register, b, rows[1::2], 21002),
            ]
            [job.result() for job in jobs]
        ok, got = lab.cluster.wait_converged(10.0, nodes=[a, b])
        assert ok, got
        assert lab.cluster.digests([cut], timeout=0.5)[cut.id] is None, "the cable is still in"
    finally:
        host.link(True)
    healed = time.monotonic()
    ok, got = lab.cluster.wait_converged(CONVERGE)
    took = time.monotonic() - healed
    assert ok, got
    assert {d["live"] for d in got.values()} == {before + 200}
    print(
        f"\ncut-off node {cut.id} converged {took:.2f}s after its link came back up "
        f"({len(got)} digests equal, {before + 200} live bindings)"
    )


def test_a_split_where_both_sides_register_heals_to_the_newest_binding(ready):
    lab = ready
    a, b, c = lab.nodes
    both, removed, conflict, refreshed_then_removed = "user300", "user301", "user302", "user303"
    pw = {u: p for u, p in lab.rows}
    row = lambda u: [(u, pw[u])]  # noqa: E731
    for user in (removed, refreshed_then_removed):
        lab.register(a, row(user), 22001)
    ok, got = lab.cluster.wait_converged(10.0)
    assert ok, got

    side_a, side_b = [lab.net[a.id], lab.net[b.id]], [lab.net[c.id]]
    for host in side_a:
        host.block([h.address for h in side_b])
    for host in side_b:
        host.block([h.address for h in side_a])
    try:
        # A long split: each side takes the other for dead (dead_after), so
        # healing goes through the reconnect path, not just a heartbeat gap.
        assert wait(
            lambda: lab.cluster.control(c, "status")["peers"][a.id]["liveness"] == "dead", 10.0
        ), "node3 does not take node1 for dead"
        # Both sides take new registrations, and the same AoR with another contact each.
        lab.register(a, lab.rows[400:450] + row(both), 22002)
        lab.register(c, lab.rows[450:500] + row(both), 22003)
        # The same contact on both sides: node3's later one (expires 1800) is the newest.
        lab.register(a, row(conflict), 22004, expires=3600)
        lab.register(c, row(conflict), 22004, expires=1800)
        # A removal on one side only; and a refresh on node3 that a later removal on node1 beats.
        lab.register(b, row(removed), 22001, expires=0)
        lab.register(c, row(refreshed_then_removed), 22001)
        lab.register(a, row(refreshed_then_removed), 22001, expires=0)
        split = {n.id: live(lab, n) for n in lab.nodes}
        assert split[a.id] == split[b.id] != split[c.id], split
    finally:
        for host in side_a + side_b:
            host.unblock()
    healed = time.monotonic()
    ok, got = lab.cluster.wait_converged(CONVERGE)
    took = time.monotonic() - healed
    assert ok, got

    contact = f"sip:{both}@{lab.phones.address}:"
    for node in lab.nodes:
        got_rows = {
            u: lab.bindings(node, u) for u in (both, removed, conflict, refreshed_then_removed)
        }
        assert sorted(
            r[0].split(";")[0].removeprefix(contact) for r in got_rows[both] if not r[3]
        ) == ["22002", "22003"], got_rows[both]
        assert [r[3] for r in got_rows[removed]] == [1], got_rows[removed]
        assert [r[3] for r in got_rows[refreshed_then_removed]] == [1], got_rows[
            refreshed_then_removed
        ]
        [(_, expires_at, origin, deleted)] = got_rows[conflict]
        assert (origin, deleted) == (c.id, 0) and expires_at - time.time() < 1800 + 5, got_rows[
            conflict
        ]
    print(
        f"\nsplit node1+node2 | node3 healed: converged in {took:.2f}s, "
        f"{next(iter(got.values()))['live']} live bindings, digests equal on "
        f"{len(got)} nodes"
    )


def test_rolling_restart_under_call_load_fails_no_call_beyond_the_stopped_node(ready):
    lab = ready
    callee_port, calls = 23000, 60
    lab.register(lab.nodes[0], lab.rows[-1:], callee_port)
    ok, got = lab.cluster.wait_converged(10.0)
    assert ok, got
    uas = Uas(
        "uas_answer.xml",
        callee_port,
        lab.work,
        address=lab.phones.address,
        prefix=tuple(lab.phones.prefix),
    )
    report = []
    try:
        for k, stopped in enumerate(lab.nodes):
            through = lab.nodes[(k + 1) % len(lab.nodes)]
            inf = os.path.join(lab.work, f"calls-{k}.csv")
            write_call_inf(inf, lab.rows[:calls], through.domain, lab.rows[-1][0])
            with ThreadPoolExecutor(1) as pool:
                load = pool.submit(
                    run_sipp,
                    "uac_auth_call.xml",
                    f"{through.address}:{through.port}",
                    lab.work,
                    inf=inf,
                    calls=calls,
                    rate=20,
                    limit=20,
                    local_ip=lab.phones.address,
                    local_port=23001 + k,
                    timeout=60,
                    prefix=tuple(lab.phones.prefix),
                )
                assert stopped.stop() == 0, stopped.log_tail()
                restarted = time.monotonic()
                stopped.start()
                ok, got = lab.cluster.wait_converged(CONVERGE)
                assert ok, got
                resync = time.monotonic() - restarted
                res = load.result()
            report.append((stopped.id, through.id, res.successful, res.failed, resync))
            assert (res.successful, res.failed) == (calls, 0), res.stderr
    finally:
        uas.stop()
    print("\nrolling restart (stopped, calls through, ok, failed, restart-to-converged s):")
    for line in report:
        print(f"  {line[0]} {line[1]} {line[2]} {line[3]} {line[4]:.2f}")


def test_sweep_removes_the_namespaces_of_dead_runs_only(lab):
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"tandem-{gone.pid}-stale"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=30)
    try:
        removed = sweep()
        assert stale in removed
        listing = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=30
        ).stdout
        assert stale not in listing
        assert all(h.ns in listing for h in lab.net.hosts.values()), listing
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, timeout=30)
