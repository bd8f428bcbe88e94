"""Locust against a real ``run.py lab``: phones found through SRV register and call, with no
option but the lab's DNS address; then a node killed with SIGKILL during a run: the
failures show in the report, stop, and the survivor loses no registration.

Each test starts its own two-node lab on a random loopback block (the ``lab``
fixture of ``tests/test_lab.py``).
"""

import base64
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from actors.lab_master import MASTER_PORT
from loadtest.harness import ROOT, free_port
from loadtest.report import format_summary, summarise
from tests.conftest import _in_ci
from tests.test_lab import lab, lab_status, wait_for  # noqa: F401 - lab is a fixture

KINDS = {"REGISTER register", "INVITE setup", "INVITE ringing", "INVITE hold", "BYE hangup"}


def start_locust(base: str, tmp_path, users: int, seconds: int) -> subprocess.Popen:
    """A bounded headless Locust run against the lab whose DNS is on ``base``."""
    env = dict(os.environ, PYTHONPATH=ROOT, TANDEM_DNS=base, TANDEM_SIP_TIMEOUT="2")
    with open(tmp_path / "locust.log", "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                os.path.join(ROOT, "loadtest", "locustfile.py"),
                "--headless",
                "-u",
                str(users),
                "-r",
                str(users),
                "-t",
                f"{seconds}s",
                "--csv",
                str(tmp_path / "out"),
                "--only-summary",
                "--stop-timeout",
                "5",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )


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


def failed_so_far(history) -> int:
    """The run's failures so far, from the last row of Locust's per-second history."""
    with open(history, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    return int(float(rows[-1]["Total Failure Count"])) if rows else 0


def held_on(data: str, base: str, node: str) -> set[tuple[str, str]]:
    """The Locust users' bindings (address of record, contact) ``node`` holds, as the
    lab's master merges every node's (``GET /api/registrations``)."""
    with open(os.path.join(data, "master", "admin-password")) as f:
        auth = base64.b64encode(f"admin:{f.read().strip()}".encode()).decode()
    held: set[tuple[str, str]] = set()
    after = ""
    for _page in range(20):  # 500 a page; the Locust users hold a few hundred at most
        query = urllib.parse.urlencode({"user": "load", "limit": 500, "after": after})
        req = urllib.request.Request(
            f"http://{base}:{MASTER_PORT}/api/registrations?{query}",
            headers={"Authorization": f"Basic {auth}"},
        )
        with urllib.request.urlopen(req, timeout=15) as r:
            found = json.loads(r.read())
        held |= {(b["aor"], b["contact"]) for b in found["bindings"] if node in b["present_on"]}
        after = found.get("next") or ""
        if not after:
            return held
    raise AssertionError("more pages of registrations than the Locust users can hold")


def test_a_node_killed_during_a_locust_run_fails_calls_for_a_while_then_recovers(lab, tmp_path):  # noqa: F811
    _proc, data, base, _out = lab
    locust = start_locust(base, tmp_path, 20, 24)
    history = tmp_path / "out_stats_history.csv"
    try:
        assert wait_for(lambda: history.exists() and history.read_text().count("\n") >= 4, 30)
        before = held_on(data, base, "node2")
        assert len(before) >= 20, before
        pid = next(n["pid"] for n in lab_status(data)["nodes"] if n["id"] == "node1")
        os.kill(pid, signal.SIGKILL)
        # Once phones have noticed the death (their first timeouts): the survivor still
        # holds every binding it held.
        assert wait_for(lambda: failed_so_far(history) > 0, 20)
        lost = before - held_on(data, base, "node2")
        assert not lost, f"registrations lost on the survivor: {sorted(lost)[:5]}"
    finally:
        finish(locust, 60)
    summary = summarise(str(tmp_path / "out"))
    report = format_summary(summary)
    assert summary.failing_from is not None, report
    assert any(
        "timeout" in error or "no final response" in error for _kind, error, _n in summary.failures
    ), report
    # Every phone times out once (2 s) on the dead node and moves on: the last seconds are clean.
    assert summary.failing_until is not None, report
    assert summary.failing_until - summary.failing_from <= 8, report
    assert summary.failing_until < summary.length - 3, report
    rows = stats(tmp_path)
    assert int(rows[" Aggregated"]["Request Count"]) > 5 * int(
        rows[" Aggregated"]["Failure Count"]
    ), report


def test_locusts_web_ui_shows_the_runs_requests_and_charts(lab, tmp_path):  # noqa: F811
    """The web UI (``--autostart`` instead of ``--headless``): its stats answer lists every
    kind of request with no failure, and headless Chromium renders its three charts."""
    if not shutil.which("chromium"):
        if _in_ci():
            pytest.fail("chromium is required when CI is set", pytrace=False)
        pytest.skip("chromium not installed")
    _proc, _data, base, _out = lab
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT, TANDEM_DNS=base, TANDEM_SIP_TIMEOUT="2")
    with open(tmp_path / "locust.log", "wb") as log:
        locust = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                os.path.join(ROOT, "loadtest", "locustfile.py"),
                "--autostart",
                "-u",
                "10",
                "-r",
                "10",
                "-t",
                "30s",
                "--web-host",
                "127.0.0.1",
                "--web-port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"

    def stats() -> dict | None:
        try:
            with urllib.request.urlopen(url + "/stats/requests", timeout=5) as r:
                got = json.loads(r.read())
        except OSError:
            return None
        rows = {f"{s['method']} {s['name']}": s for s in got["stats"]}
        return got if all(rows.get(k, {}).get("num_requests", 0) >= 1 for k in KINDS) else None

    try:
        got = wait_for(stats, 25)
        assert got, (tmp_path / "locust.log").read_text()[-3000:]
        assert got["fail_ratio"] == 0, got["errors"]
        shown = subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                url + "/?tab=charts",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # Its charts (requests per second, response times, users) are ECharts canvases.
        assert shown.stdout.count("_echarts_instance_") == 3, shown.stdout[-2000:]
        assert shown.stdout.count("<canvas") >= 3
    finally:
        locust.terminate()
        finish(locust, 30)
