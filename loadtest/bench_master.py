"""Benchmark: the configuration master pushes N users (default 10,000) to two real nodes.

Two nodes on loopback trust the master's key; the master's store (SQLite in
a temporary folder) gets the users in one version; the clock runs from the
push round's start until both nodes acknowledged that version (each has
then written every user into its own store and reloaded its directory).
A second round after one user changed measures an incremental change
(still the whole set: a push carries every user). Then a real REGISTER
(sipsak) of the last user is checked on each node.

Run from the repository root (about half a minute):

    python loadtest/bench_master.py [--users 10000]
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actors.bus import generate_keypair  # noqa: E402
from loadtest.harness import Cluster  # noqa: E402
from store import master as ms  # noqa: E402
from web.push import Pusher  # noqa: E402


def out(text: str) -> None:
    """One line of the report."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def timed_round(pusher: Pusher, version: int) -> tuple[float, dict]:
    """Seconds one push round took, and its outcome per node."""
    start = time.monotonic()
    outcome = pusher.push_round()
    elapsed = time.monotonic() - start
    if any(o != f"version {version}" for o in outcome.values()):
        raise SystemExit(f"push failed: {outcome}")
    return elapsed, outcome


def main() -> int:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10000, help="users pushed (default 10000)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tandem-master-") as work:
        public, secret = generate_keypair()
        cluster = Cluster(work, 2, settings={"master_key": public, "alone_wait": 1.0})
        cluster.start()
        pusher = Pusher(public, secret)
        try:
            ms.init_master_store(f"sqlite:///{work}/master.db")
            ms.setup("example.test")
            for m in cluster.members.values():
                ms.save_node(m.id, "", m.control, m.public_key)
            start = time.monotonic()
            version = ms.save_users([(f"user{i}", f"pw{i}") for i in range(args.users)], "bench")
            out(f"master: {args.users} users stored in {time.monotonic() - start:.2f} s")
            elapsed, _ = timed_round(pusher, version)
            out(f"push of {args.users} users to 2 nodes, applied and acknowledged: {elapsed:.2f} s")
            version = ms.save_user("user0", "changed")
            elapsed, _ = timed_round(pusher, version)
            out(f"push after one change ({args.users} users again): {elapsed:.2f} s")
            last = args.users - 1
            for node in cluster.nodes:
                reg = subprocess.run(
                    [
                        "sipsak",
                        "-U",
                        "-s",
                        f"sip:user{last}@{node.address}:{node.port}",
                        "-u",
                        f"user{last}",
                        "-a",
                        f"pw{last}",
                        "-i",
                        "-x",
                        "120",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                out(
                    f"{node.id}: REGISTER user{last}: "
                    f"{'200 OK' if reg.returncode == 0 else 'FAILED ' + reg.stdout[-200:]}"
                )
        finally:
            pusher.stop()
            ms.close_master_store()
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
