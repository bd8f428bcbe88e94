"""Locust against a real ``run.py lab``: phones found through SRV register and call, with no
option but the lab's DNS address; then a node killed with SIGKILL during a run.

Each test starts its own two-node lab on a random loopback block (the ``lab``
fixture of ``tests/test_lab.py``).
"""

import csv
import os
import signal
import subprocess
import sys

from loadtest.harness import ROOT
from loadtest.report import format_summary, summarise
from tests.test_lab import lab, lab_status, wait_for  # noqa: F401 - lab is a fixture

KINDS = {"REGISTER register", "INVITE setup", "INVITE ringing", "INVITE hold", "BYE hangup"}


def start_locust(base: str, tmp_path, users: int, seconds: int) -> subprocess.Popen:
    """A bounded headless Locust run against the lab whose DNS is on ``base``."""
    env = dict(os.environ, PYTHONPATH=ROOT, TANDEM_DNS=base, TANDEM_SIP_TIMEOUT="2")
    with open(tmp_path / "locust.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "loadtest", "locustfile.py"),
             "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
             "--csv", str(tmp_path / "out"), "--only-summary", "--stop-timeout", "5"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def finish(proc: subprocess.Popen, limit: float) -> None:
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def stats(tmp_path) -> dict[str, dict[str, str]]:
    with open(tmp_path / "out_stats.csv", newline="") as f:
        return {f"{r['Type']} {r['Name']}": r for r in csv.DictReader(f)}


def test_locust_phones_register_and_call_through_the_lab(lab, tmp_path):  # noqa: F811
    _proc, _data, base, _out = lab
    finish(start_locust(base, tmp_path, 20, 8), 60)
    log = (tmp_path / "locust.log").read_text()[-3000:]
    rows = stats(tmp_path)
    for kind in KINDS:
        assert int(rows[kind]["Request Count"]) >= 1, (kind, log)
    assert int(rows[" Aggregated"]["Failure Count"]) == 0, log
    assert int(rows["REGISTER register"]["Request Count"]) >= 20
    report = format_summary(summarise(str(tmp_path / "out")))
    assert "INVITE setup" in report and "no failure in" in report, report


def test_a_node_killed_during_a_locust_run_fails_calls_for_a_while_then_recovers(lab, tmp_path):  # noqa: F811
    _proc, data, base, _out = lab
    locust = start_locust(base, tmp_path, 20, 24)
    history = tmp_path / "out_stats_history.csv"
    try:
        assert wait_for(lambda: history.exists() and history.read_text().count("\n") >= 4, 30)
        pid = next(n["pid"] for n in lab_status(data)["nodes"] if n["id"] == "node1")
        os.kill(pid, signal.SIGKILL)
    finally:
        finish(locust, 60)
    summary = summarise(str(tmp_path / "out"))
    report = format_summary(summary)
    assert summary.failing_from is not None, report
    assert any("timeout" in error or "no final response" in error
               for _kind, error, _n in summary.failures), report
    # Every phone times out once (2 s) on the dead node and moves on: the last seconds are clean.
    assert summary.failing_until is not None, report
    assert summary.failing_until - summary.failing_from <= 8, report
    assert summary.failing_until < summary.length - 3, report
    rows = stats(tmp_path)
    assert int(rows[" Aggregated"]["Request Count"]) > 5 * int(
        rows[" Aggregated"]["Failure Count"]), report
