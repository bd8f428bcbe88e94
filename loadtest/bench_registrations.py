"""Benchmark: the dashboard's registrations (API and page) at N bindings (default 100,000)
over three real nodes.

Each node's store gets a third of the bindings as their primary before it
starts (``store.bindings.write_bindings``, as the registrar's group commit
writes them); at start each loads its own and takes the others from its
peers' snapshots, so every node holds all N, by replication. The master's
store knows the three nodes; its real bus asks them for each page
(``web.cluster``), through the Flask app (its test client: no HTTP, the
same handler). Figures: the time to the first page (API and HTML page), a
page further on (by cursor), and the p50/p95 of filtered queries (a user,
a primary node, both).

Run from the repository root (about a minute):

    python loadtest/bench_registrations.py [--bindings 100000] [--runs 20]
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import base64  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actors.bus import generate_keypair  # noqa: E402
from loadtest.harness import Cluster  # noqa: E402
from sipcore.location import Binding  # noqa: E402
from store import bindings as binding_store  # noqa: E402
from store import master as ms  # noqa: E402
from store.models import close_store, init_store  # noqa: E402
from web import create_app  # noqa: E402
from web.push import Pusher  # noqa: E402


def out(text: str) -> None:
    """One line of the report."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def preload(cluster: Cluster, total: int) -> None:
    """Write each node's third of ``total`` bindings into its store, as their primary."""
    now = time.time()
    for k, node in enumerate(cluster.nodes):
        init_store(node.database)
        rows = [
            Binding(
                f"sip:user{i:06d}@example.test",
                f"sip:user{i:06d}@10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:5060",
                f"sip:user{i:06d}@10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:5060",
                now + 7200,
                f"bench-{i}",
                1,
                received=f"udp:10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:5060",
                user_agent="bench/1",
                origin=node.id,
                epoch=1,
                seq=i + 1,
                updated_at=now,
            )
            for i in range(k, total, len(cluster.nodes))
        ]
        for start in range(0, len(rows), 5000):
            binding_store.write_bindings(rows[start : start + 5000])
        close_store()


def timed(client, path: str, headers: dict, runs: int) -> tuple[list[float], object]:
    """``runs`` timings of GET ``path`` (seconds) and the last answer."""
    times, answer = [], None
    for _ in range(runs):
        start = time.perf_counter()
        answer = client.get(path, headers=headers)
        times.append(time.perf_counter() - start)
        if answer.status_code != 200:
            raise SystemExit(f"{path}: {answer.status_code} {answer.get_data(as_text=True)[:300]}")
    return times, answer


def figures(name: str, times: list[float]) -> str:
    """``name: p50 ... p95 ...`` in milliseconds."""
    q = statistics.quantiles(times, n=20) if len(times) > 1 else times * 19
    return f"{name}: p50 {statistics.median(times) * 1000:.0f} ms, p95 {q[18] * 1000:.0f} ms"


def main() -> int:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bindings", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=20, help="timed queries of each kind")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tandem-regs-") as work:
        public, secret = generate_keypair()
        cluster = Cluster(
            work, 3, settings={"master_key": public, "alone_wait": 1.0, "sync_timeout": 60.0}
        )
        start = time.monotonic()
        preload(cluster, args.bindings)
        out(
            f"{args.bindings} bindings written into 3 node stores (a third each) in "
            f"{time.monotonic() - start:.1f} s"
        )
        pusher = Pusher(public, secret)
        try:
            start = time.monotonic()
            cluster.start(ready_timeout=120)
            converged, digests = cluster.wait_converged(180)
            if not converged:
                raise SystemExit(f"the nodes did not converge: {digests}")
            out(
                f"3 nodes started and converged by replication in "
                f"{time.monotonic() - start:.1f} s: "
                + ", ".join(f"{k} {v['live']} live" for k, v in digests.items())
            )
            ms.init_master_store(f"sqlite:///{work}/master.db")
            ms.setup("example.test")
            ms.add_admin("admin", "bench-pw")
            for m in cluster.members.values():
                ms.save_node(m.id, "", m.control, m.public_key)
            client = create_app({"SECRET_KEY": "bench"}, pusher).test_client()
            start = time.perf_counter()
            ms.check_admin("admin", "bench-pw")
            out(
                f"(each API call checks the admin's password hash first: "
                f"{(time.perf_counter() - start) * 1000:.0f} ms of it; the page uses a session)"
            )
            auth = {"Authorization": "Basic " + base64.b64encode(b"admin:bench-pw").decode()}
            first, answer = timed(client, "/api/registrations?limit=100", auth, 1)
            found = answer.json
            out(
                f"first API page (100 rows of {found['total']}, present on "
                f"{len(found['bindings'][0]['present_on'])} nodes, balance index "
                f"{found['balance_index']:.3f}, errors {found['errors']}): "
                f"{first[0] * 1000:.0f} ms"
            )
            times, _ = timed(client, "/api/registrations?limit=100", auth, args.runs)
            out(figures("API first page", times))
            login = client.get("/login").get_data(as_text=True)
            csrf = login.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
            client.post(
                "/login", data={"csrf_token": csrf, "username": "admin", "password": "bench-pw"}
            )
            times, _ = timed(client, "/registrations", {}, args.runs)
            out(figures("HTML page (first page, chart, totals)", times))
            cursor = f"sip:user{args.bindings * 9 // 10:06d}@example.test x"
            times, _ = timed(
                client, f"/api/registrations?limit=100&after={cursor}", auth, args.runs
            )
            out(figures("API page at 90% (cursor)", times))
            for label, query in (
                ("user filter (one user)", f"user=user{args.bindings // 2:06d}"),
                ("user filter (substring, a tenth)", "user=user04"),
                ("primary node filter", "node=node2"),
                ("user and node filters", "user=user07&node=node3"),
            ):
                times, answer = timed(client, f"/api/registrations?{query}", auth, args.runs)
                out(
                    figures(
                        f"{label} [{len(answer.json['bindings'])} rows shown of "
                        f"{answer.json['totals']['node1']}]",
                        times,
                    )
                )
        finally:
            pusher.stop()
            ms.close_master_store()
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
