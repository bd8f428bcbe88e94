"""Benchmark: a CSV import of N users (default 100,000) on the master, in the background.

The master's store (SQLite in a temporary folder) and its dashboard app (the
Flask test client: no HTTP, the same handlers) take ``POST
/api/users/import``; the clock runs until the job's state says ``done``
(every row checked, both HA1s of each computed, all written in one
transaction, one configuration version made). Progress is polled as the
page does, and the phases seen are printed. A second file, the same with a
bad last line, must fail naming that line and write nothing.

Run from the repository root (about half a minute):

    python loadtest/bench_user_import.py [--users 100000]
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import base64  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from store import master as ms  # noqa: E402
from web import create_app  # noqa: E402


def out(text: str) -> None:
    """One line of the report."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_import(client, auth: dict, name: str, body: bytes) -> tuple[float, dict, list]:
    """Seconds from the upload to the job's end, its final state and the states polled."""
    start = time.perf_counter()
    job = client.post(f"/api/users/import?name={name}", data=body, headers=auth).json
    seen = []
    while job["running"]:
        time.sleep(0.05)
        job = client.get(f"/api/users/import/{job['id']}", headers=auth).json
        seen.append((job["phase"], job["done"]))
    return time.perf_counter() - start, job, seen


def main() -> int:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tandem-import-") as work:
        ms.init_master_store(f"sqlite:///{work}/master.db")
        try:
            ms.setup("example.test")
            ms.add_admin("admin", "bench-pw")
            client = create_app({"SECRET_KEY": "bench"}).test_client()
            auth = {"Authorization": "Basic " + base64.b64encode(b"admin:bench-pw").decode()}
            body = (
                "username,password\n"
                + "".join(f"user{i:06d},secret-{i}\n" for i in range(args.users))
            ).encode()
            out(f"CSV of {args.users} users: {len(body) / 1e6:.1f} MB")
            bad = body + b"bad user,x\n"
            took, job, _ = run_import(client, auth, "bad.csv", bad)
            out(
                f"the same plus a bad last line: {job['phase']} in {took:.2f} s "
                f"({job['error'][:90]}); users stored: {ms.count_users()}"
            )
            took, job, seen = run_import(client, auth, "users.csv", body)
            phases = sorted(
                {p for p, _ in seen}, key=["checking", "hashing", "writing", "done", "failed"].index
            )
            out(
                f"import of {job['total']} users: {job['phase']} in {took:.2f} s "
                f"({args.users / took:.0f} users/s), configuration {job['version']}; "
                f"{len(seen)} polls saw phases {', '.join(phases)}"
            )
            took, job, _ = run_import(client, auth, "users.csv", body)
            out(f"the same file again (every password replaced): {job['phase']} in {took:.2f} s")
            out(f"users stored: {ms.count_users()}")
        finally:
            ms.close_master_store()
    return 0


if __name__ == "__main__":
    sys.exit(main())
