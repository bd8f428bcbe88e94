"""Locust drives SIP load against a real node: registrations with digest, none failed."""

import csv
import os
import subprocess
import sys

from loadtest.harness import ROOT, NodeProcess, write_users_csv


def test_locust_registers_against_a_node(tmp_path):
    node = NodeProcess(str(tmp_path))
    write_users_csv(str(tmp_path / "users.csv"), 100)
    assert node.run_cli("user", "import", str(tmp_path / "users.csv")).returncode == 0
    node.start()
    try:
        env = dict(os.environ, TANDEM_USERS="100", PYTHONPATH=ROOT)
        out = subprocess.run(
            [sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "loadtest", "locustfile.py"),
             "--host", f"sip://{node.address}:{node.port}", "--headless", "-u", "20", "-r", "20",
             "-t", "4s", "--csv", str(tmp_path / "loc"), "--only-summary"],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    finally:
        node.stop()
    with open(tmp_path / "loc_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    reg = rows["REGISTER"]
    assert int(reg["Request Count"]) >= 20, out.stderr[-2000:]
    assert int(reg["Failure Count"]) == 0, out.stderr[-2000:]
