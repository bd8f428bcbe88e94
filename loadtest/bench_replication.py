"""Benchmark: replication across three real nodes on loopback.

Prints three figures, each beside its target:

(a) replication lag at 1,000 REGISTER/s offered by SIPp to node1: for each
    binding, the wall time from node1's group commit (stamped just before
    node1 sends its 200s) until the location table of node2 and of node3
    holds it, as each node's replicator measures it (``lags`` control
    command; polled every millisecond); the lag "on every peer" is the
    larger of the two. Same host, so one clock. Target: p99 < 20 ms.
(b) REGISTER throughput of node1 with replication on (two peers attached
    and applying, on the same two cores) against a node with the same
    configuration but no cluster (replication off), alternating the two
    (five runs each; ``--quick`` two); every run registers users not
    registered before, SIPp offering more than a node can take with a
    bounded number of calls in flight. Each run prints its load average,
    since other processes share the machine. Target: with replication
    >= 80% of without (ratio of the medians).
(c) resync of 100,000 bindings: node1 starts with them written straight
    into its database; a node with an empty database joins (twice: one
    peer, then two peers holding them), then node2 is killed (SIGKILL) and
    restarted (three times; ``--quick`` once); each time the clock runs
    from the process launch until its digest (control endpoint) equals
    node1's. Target: < 5 s for the restarted node (median).

Run from the repository root (about two minutes; ``--quick``: about one):

    python loadtest/bench_replication.py [--quick]

Every SIPp run and every wait is bounded; the processes are stopped at the
end, even on failure. The machine's other load is printed with the figures.
"""

import argparse
import dataclasses
import os
import re
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actors.bus import BusError
from actors.keys import cluster_toml
from loadtest.bench_register import cpu_seconds, write_register_inf
from loadtest.harness import Cluster, NodeProcess, free_port, run_sipp, write_users_csv

LAG_TARGET_MS = 20.0
RATIO_TARGET = 0.80
RESYNC_TARGET_S = 5.0
SETTINGS = {"alone_wait": 1.0}
"""``[cluster]`` settings of every node; the rest are the defaults (heartbeat 0.5 s...)."""

_SNAPSHOT_LINE = re.compile(r"snapshot from (\S+): (\d+) bindings in (\d+) batches, (\d+) ms")


def out(text: str = "") -> None:
    """Write one report line to stdout at once."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def weighted_percentile(pairs: list[tuple[float, int]], fraction: float) -> float | None:
    """The ``fraction`` percentile of values each counted ``weight`` times."""
    pairs = sorted(pairs)
    total = sum(w for _, w in pairs)
    if not total:
        return None
    need = fraction * total
    seen = 0
    for value, weight in pairs:
        seen += weight
        if seen >= need:
            return value
    return pairs[-1][0]


def mark(ok: bool) -> str:
    """``meets`` or ``MISSES`` (the target)."""
    return "meets" if ok else "MISSES"


def wait_until(cond, timeout: float, step: float = 0.05):
    """Poll ``cond`` until it returns something true or ``timeout``; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def load() -> str:
    """The machine's load averages."""
    return "load average %.2f %.2f %.2f on %d cores" % (*os.getloadavg(), os.cpu_count())


def sipp_register(node: NodeProcess, work: str, rows: list, rate: int, limit: int, timeout: float):
    """SIPp registers ``rows`` through ``node`` at ``rate``/s (register_auth.xml)."""
    inf = os.path.join(work, f"inf-{time.monotonic_ns()}.csv")
    write_register_inf(inf, rows, node.domain)
    return run_sipp(
        "register_auth.xml",
        f"{node.address}:{node.port}",
        work,
        inf=inf,
        calls=len(rows),
        rate=rate,
        limit=limit,
        timeout=timeout,
    )


def make_cluster(work: str) -> Cluster:
    """Three nodes configured with ``SETTINGS``, every port from ``stable_port``."""
    cluster = Cluster(work, 3, settings=SETTINGS)
    members = [
        dataclasses.replace(
            m, **{k: f"tcp://127.0.0.1:{free_port()}" for k in ("pub", "snapshot", "control")}
        )
        for m in cluster.members.values()
    ]
    cluster.members = {m.id: m for m in members}
    cluster.nodes = [
        NodeProcess(
            work,
            m.id,
            port=free_port(),
            extra="\n" + cluster_toml(m, members, control_keys=[cluster.client_public], **SETTINGS),
        )
        for m in members
    ]
    return cluster


def start_cluster(work: str, users_csv: str | None, provision_first_only: bool = False) -> Cluster:
    """Three nodes (``make_cluster``), users imported, started and synced."""
    cluster = make_cluster(work)
    if users_csv:
        targets = cluster.nodes[:1] if provision_first_only else cluster.nodes
        for node in targets:
            res = node.run_cli("user", "import", users_csv)
            if res.returncode:
                raise RuntimeError(f"user import on {node.id} failed: {res.stderr}")
    try:
        cluster.start()
        if not cluster.wait_synced(30.0):
            raise RuntimeError("cluster not synced within 30 s")
    except BaseException:
        cluster.stop()
        raise
    return cluster


# -- (a) lag ---------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    """A lag in ms for the report (``-`` when there is none)."""
    return "-" if value is None else f"{value:.1f} ms"


def bench_lag(work: str, users: int, rate: int) -> bool:
    """Replication lag of node1's registrations on node2 and node3."""
    out(f"(a) replication lag: SIPp registers {users} users through node1 at {rate}/s offered")
    os.makedirs(work)
    rows = write_users_csv(os.path.join(work, "users.csv"), users)
    cluster = start_cluster(work, os.path.join(work, "users.csv"))
    try:
        primary, peers = cluster.nodes[0], cluster.nodes[1:]
        res = sipp_register(primary, work, rows, rate, 500, users / rate + 60)
        sipp_done = time.monotonic()
        ok, got = cluster.wait_converged(15.0)
        converged_after = time.monotonic() - sipp_done
        published = cluster.control(primary, "status")["published_bindings"]
        listings = {p.id: cluster.control(p, "lags", 5.0, origin=primary.id) for p in peers}
        statuses = {p.id: cluster.control(p, "status")["lag_ms"] for p in peers}
    finally:
        cluster.stop()
    out(
        f"    SIPp: {res.successful} registered, {res.failed} failed, "
        f"{res.retransmissions} retransmissions in {res.elapsed:.2f} s "
        f"({res.successful / res.elapsed:.0f}/s); node1 published {published} bindings"
    )
    per_update: dict[tuple, list[float]] = {}
    for peer in peers:
        listing = listings[peer.id]
        pairs = []
        for _, epoch, first, last, lag in listing["updates"]:
            pairs.append((lag, last - first + 1))
            per_update.setdefault((epoch, first, last), []).append(lag)
        out(
            f"    {peer.id}: {sum(w for _, w in pairs)} bindings measured "
            f"({listing['unmeasured']} updates not), p50 {ms(weighted_percentile(pairs, 0.5))}, "
            f"p99 {ms(weighted_percentile(pairs, 0.99))}, "
            f"max {ms(max((v for v, _ in pairs), default=None))}; its status lag_ms "
            f"(last {statuses[peer.id]['samples']} bindings): p50 {statuses[peer.id]['p50']} "
            f"p99 {statuses[peer.id]['p99']}"
        )
    every = [
        (max(lags), last - first + 1)
        for (_, first, last), lags in per_update.items()
        if len(lags) == len(peers)
    ]
    p50, p99 = weighted_percentile(every, 0.5), weighted_percentile(every, 0.99)
    met = p99 is not None and p99 < LAG_TARGET_MS
    out(
        f"    on every peer (the later of the two, {sum(w for _, w in every)} bindings): "
        f"p50 {ms(p50)}, p99 {ms(p99)}   target p99 < {LAG_TARGET_MS:.0f} ms: {mark(met)}"
    )
    out(
        f"    all three digests equal {converged_after:.2f} s after SIPp ended: {ok}"
        + ("" if ok else f" {got}")
    )
    return ok and res.failed == 0 and met


# -- (b) throughput --------------------------------------------------------------------------


def bench_throughput(work: str, users: int, rounds: int, rate: int, limit: int) -> bool:
    """REGISTER/s of node1 with two peers against a node without replication."""
    out(
        f"(b) REGISTER throughput, {users} new users per run, {rate}/s offered "
        f"(SIPp limit {limit}); {rounds} runs of each configuration, alternated"
    )
    os.makedirs(work)
    rows = write_users_csv(os.path.join(work, "users.csv"), users * rounds)
    solo = NodeProcess(os.path.join(work, "solo"), "solo", port=free_port())
    res = solo.run_cli("user", "import", os.path.join(work, "users.csv"))
    if res.returncode:
        raise RuntimeError(f"user import failed: {res.stderr}")
    cluster = start_cluster(
        os.path.join(work, "cluster"), os.path.join(work, "users.csv"), provision_first_only=True
    )
    results = {"replication on": [], "replication off": []}
    cpu = {"replication on": [], "replication off": []}
    ok = True
    try:
        solo.start()
        primary = cluster.nodes[0]
        for r in range(rounds):
            order = ["replication off", "replication on"]
            if r % 2:
                order.reverse()
            for config in order:
                node = primary if config == "replication on" else solo
                part = rows[r * users : (r + 1) * users]
                cpu0 = cpu_seconds(node.proc.pid)
                peers0 = [cpu_seconds(p.proc.pid) for p in cluster.nodes[1:]]
                res = sipp_register(node, work, part, rate, limit, 120)
                used = cpu_seconds(node.proc.pid) - cpu0
                tput = res.successful / res.elapsed
                results[config].append(tput)
                cpu[config].append(1e6 * used / max(1, res.successful))
                extra = ""
                if config == "replication on":
                    synced, _ = cluster.wait_converged(30.0)
                    ok = ok and synced
                    peer_cpu = [
                        cpu_seconds(p.proc.pid) - c0
                        for p, c0 in zip(cluster.nodes[1:], peers0, strict=False)
                    ]
                    extra = (
                        f"; peers converged: {synced}, peer CPU "
                        + ", ".join(f"{1e6 * c / max(1, res.successful):.0f}" for c in peer_cpu)
                        + " us/binding"
                    )
                ok = ok and res.failed == 0
                out(
                    f"    run {r + 1} {config:15}: {res.successful} ok, {res.failed} failed, "
                    f"{res.retransmissions} retransmissions in {res.elapsed:.2f} s = "
                    f"{tput:.0f} REGISTER/s; node CPU {cpu[config][-1]:.0f} us/registration; "
                    f"load {os.getloadavg()[0]:.2f}{extra}"
                )
    finally:
        solo.stop()
        cluster.stop()
    on = statistics.median(results["replication on"])
    off = statistics.median(results["replication off"])
    ratio = on / off
    out(
        f"    medians: replication on {on:.0f}/s, off {off:.0f}/s; ratio {ratio:.1%}   "
        f"target >= {RATIO_TARGET:.0%}: {mark(ratio >= RATIO_TARGET)}"
    )
    out(
        f"    node CPU per registration, medians: on "
        f"{statistics.median(cpu['replication on']):.0f} us, off "
        f"{statistics.median(cpu['replication off']):.0f} us"
    )
    return ok and ratio >= RATIO_TARGET


# -- (c) resync ------------------------------------------------------------------------------


def provision_bindings(node: NodeProcess, n: int) -> None:
    """Write ``n`` live bindings of origin ``node`` straight into its database."""
    from sipcore.location import Binding
    from store.bindings import write_bindings
    from store.models import close_store, init_store

    init_store(node.database)
    try:
        now = time.time()
        for start in range(0, n, 20000):
            records = []
            for i in range(start, min(n, start + 20000)):
                contact = f"sip:user{i}@127.0.0.1:5099;transport=udp"
                records.append(
                    Binding(
                        f"sip:user{i}@{node.domain}",
                        contact,
                        contact,
                        now + 3000,
                        f"cid{i}@bench",
                        2,
                        None,
                        [],
                        None,
                        None,
                        "udp:127.0.0.1:5099",
                        "bench",
                        node.id,
                        0,
                        i + 1,
                        now,
                    )
                )
            write_bindings(records)
    finally:
        close_store()


def snapshot_lines(node: NodeProcess, since: int) -> list[str]:
    """The node's log lines about received snapshots, written after byte ``since``."""
    with open(node.log_path, errors="replace") as f:
        f.seek(since)
        return [
            "%s %s bindings in %s ms" % (m[1], m[2], m[4])
            for m in _SNAPSHOT_LINE.finditer(f.read())
        ]


def state_of(cluster: Cluster, node: NodeProcess) -> str | None:
    """The node's sync state, or None if its control endpoint does not answer."""
    try:
        return cluster.control(node, "status", 2.0)["state"]
    except BusError:
        return None


def timed_start(cluster: Cluster, node: NodeProcess, target: dict, timeout: float = 60.0) -> dict:
    """Start ``node`` and time, from the process launch: until SIP answers, until it
    is synced with every snapshot complete, and until its digest equals ``target``.

    Polls the cheap ``status`` (``brief``) every 50 ms, then ``digest`` (a pass
    over the table) until it matches; the digest time is when that request left.
    """
    since = os.path.getsize(node.log_path) if os.path.exists(node.log_path) else 0
    launched = time.monotonic()
    node.start(ready_timeout=timeout)
    times = {"sip up": time.monotonic() - launched}

    def synced():
        try:
            st = cluster.control(node, "status", 2.0, brief=True)
        except BusError:
            return False
        live = [p for p in st["peers"].values() if p["liveness"] in ("alive", "suspected")]
        return st["state"] == "synced" and all(p["has_snapshot"] and not p["syncing"] for p in live)

    if not wait_until(synced, timeout):
        raise RuntimeError(f"{node.id} never synced: {node.log_tail()}")
    times["synced"] = time.monotonic() - launched
    deadline = time.monotonic() + timeout
    while True:
        sent = time.monotonic() - launched
        try:
            if cluster.control(node, "digest", 5.0)["digest"] == target["digest"]:
                break
        except BusError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.id} digest never matched: {node.log_tail()}")
        time.sleep(0.05)
    times["digest equal"] = sent
    times["snapshots"] = snapshot_lines(node, since)
    return times


def bench_resync(work: str, n: int, restarts: int) -> bool:
    """Time for a node to get ``n`` bindings back from its peers."""
    out(f"(c) resync of {n} bindings (node1 starts with them in its database)")
    cluster = make_cluster(work)
    first, second, third = cluster.nodes
    t0 = time.monotonic()
    provision_bindings(first, n)
    out(f"    wrote {n} bindings into node1's database in {time.monotonic() - t0:.1f} s")
    restart_times = []
    try:
        first.start()
        if not wait_until(lambda: state_of(cluster, first) == "synced", 30.0):
            raise RuntimeError(f"node1 alone never became synced: {first.log_tail()}")
        target = cluster.control(first, "digest", 10.0)
        if target["live"] != n:
            raise RuntimeError(f"node1 holds {target['live']} bindings, not {n}")
        for node, what in (
            (third, "empty database, 1 peer holds them"),
            (second, "empty database, 2 peers hold them"),
        ):
            t = timed_start(cluster, node, target)
            out(
                f"    node joins, {what}: SIP up {t['sip up']:.2f} s, synced "
                f"{t['synced']:.2f} s, digest equal {t['digest equal']:.2f} s after launch; "
                f"snapshots: {', '.join(t['snapshots'])}"
            )
        for i in range(restarts):
            second.kill()
            t = timed_start(cluster, second, target)
            restart_times.append(t["digest equal"])
            out(
                f"    node2 SIGKILLed and restarted ({i + 1}), its database holds them: SIP up "
                f"{t['sip up']:.2f} s, synced {t['synced']:.2f} s, digest equal "
                f"{t['digest equal']:.2f} s after launch; snapshots: {', '.join(t['snapshots'])}"
            )
        ok, _ = cluster.wait_converged(10.0)
    finally:
        cluster.stop()
    median = statistics.median(restart_times)
    out(
        f"    restarted node, launch to digest equal: median {median:.2f} s, worst "
        f"{max(restart_times):.2f} s of {restarts}   target < {RESYNC_TARGET_S:.0f} s "
        f"(median): {mark(median < RESYNC_TARGET_S)}"
    )
    return ok and median < RESYNC_TARGET_S


def main() -> int:
    """Run the three benchmarks and print the figures; exit 1 if a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer users and runs (about 1 min)")
    ap.add_argument("--lag-users", type=int, help="users registered for (a)")
    ap.add_argument("--lag-rate", type=int, default=1000, help="offered REGISTER/s for (a)")
    ap.add_argument("--tp-users", type=int, help="users per throughput run for (b)")
    ap.add_argument("--tp-rounds", type=int, help="runs of each configuration for (b)")
    ap.add_argument("--tp-rate", type=int, default=8000, help="offered REGISTER/s for (b)")
    ap.add_argument("--tp-limit", type=int, default=300, help="SIPp concurrent calls for (b)")
    ap.add_argument("--bindings", type=int, default=100000, help="bindings resynced in (c)")
    ap.add_argument(
        "--only", choices=("a", "b", "c"), action="append", help="run only these parts (repeatable)"
    )
    args = ap.parse_args()
    lag_users = args.lag_users or (3000 if args.quick else 10000)
    tp_users = args.tp_users or (5000 if args.quick else 10000)
    rounds = max(2, args.tp_rounds or (2 if args.quick else 5))
    restarts = 1 if args.quick else 3
    parts = set(args.only or "abc")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    out(f"Tandem replication benchmark, 3 nodes on 127.0.0.1, {load()}")
    started = time.monotonic()
    ok = True
    with tempfile.TemporaryDirectory(prefix="tandem-repl-") as work:
        if "a" in parts:
            ok &= bench_lag(os.path.join(work, "lag"), lag_users, args.lag_rate)
        if "b" in parts:
            ok &= bench_throughput(
                os.path.join(work, "tp"), tp_users, rounds, args.tp_rate, args.tp_limit
            )
        if "c" in parts:
            ok &= bench_resync(os.path.join(work, "resync"), args.bindings, restarts)
    out(f"done in {time.monotonic() - started:.0f} s; {load()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
