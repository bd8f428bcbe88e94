"""A node whose database fails says so, and comes back by itself (issue 11: health is honest).

The fault is real: the running node's SQLite file and its write-ahead log
are made immutable (``chattr +i``), so every write fails with an I/O error
as on a failing disk, then mutable again. Nothing is sent to the node after
that: it must find out alone that its database takes writes again.
"""

import logging
import os
import sqlite3
import subprocess

import pytest

from actors.health import DATABASE, REGISTRAR, Health
from actors.config import NodeConfig
from actors.lab import options_ping
from actors.node import Node
from loadtest.harness import Cluster, NodeProcess, write_users_csv
from loadtest.sipclient import SipClient
from sipcore.message import parse_message
from tests.test_cluster import SETTINGS, wait


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_fault_is_logged_once_then_at_most_once_a_period_and_its_recovery_once(caplog):
    clock = FakeClock()
    health = Health(log_every=60.0, clock=clock)
    assert health.healthy and health.status() == {}
    with caplog.at_level(logging.WARNING, logger="actors.health"):
        assert health.fail(DATABASE, "disk I/O error")
        for _ in range(1000):
            clock.now += 0.01
            assert not health.fail(DATABASE, "disk I/O error")
        clock.now += 51.0
        assert health.fail(DATABASE, "disk full")
        assert not health.healthy and health.failing(DATABASE)
        assert health.status() == {DATABASE: {"reason": "disk full", "for": 61.0, "failures": 1002}}
        health.ok(REGISTRAR)
        assert not health.healthy
        health.ok(DATABASE)
        health.ok(DATABASE)
    assert health.healthy
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "1001 failures since the last line" in lines[1]
    assert lines[2] == "database recovered after 61.0 s and 1002 failures"


def test_a_failing_kind_is_checked_until_its_check_passes():
    health = Health(clock=FakeClock())
    answers = [OSError("still read-only"), None]
    calls = []

    def check():
        calls.append(1)
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    health.watch(DATABASE, check)
    health.check_failing()
    assert calls == []  # nothing fails: nothing to check
    health.fail(DATABASE, "disk I/O error")
    health.fail(REGISTRAR, "a batch raised")  # no check: its actor's next success clears it
    health.check_failing()
    assert health.status()[DATABASE]["reason"] == "still read-only"
    health.check_failing()
    assert not health.failing(DATABASE) and health.failing(REGISTRAR) and len(calls) == 2


def _db_files(node) -> list[str]:
    path = node.database.removeprefix("sqlite:///")
    return [path, path + "-wal"]


def chattr(node, flag: str) -> None:
    """``chattr flag`` on the node's database file and its write-ahead log."""
    for path in _db_files(node):
        out = subprocess.run(["chattr", flag, path], capture_output=True, text=True)
        assert out.returncode == 0, f"chattr {flag} {path}: {out.stderr}"


@pytest.fixture
def cluster(tmp_path):
    """Two nodes with users ``user0``.."""
    c = Cluster(str(tmp_path), 2, settings=SETTINGS)
    c.rows = write_users_csv(str(tmp_path / "users.csv"), 10)
    c.provision(str(tmp_path / "users.csv"))
    c.start()
    try:
        assert c.wait_synced(20.0), [n.log_tail() for n in c.nodes]
        yield c
    finally:
        for node in c.nodes:
            for path in _db_files(node):
                subprocess.run(["chattr", "-i", path], capture_output=True)
        c.stop()


def options_status(node) -> int | None:
    """The status of the node's answer to an OPTIONS for itself (None: no answer)."""
    raw = options_ping(node.address, node.port, 1.0)
    return None if raw is None else parse_message(raw).status


def phone(cluster, user: str, node) -> SipClient:
    """A UDP phone of ``user`` that registers at ``node``."""
    password = dict(cluster.rows)[user]
    return SipClient((node.address, node.port), user, password, "example.test", t1=0.25, timeout=5)


def database_fault(cluster, node) -> dict:
    """The node's database fault as its control status tells it ({} when none)."""
    return cluster.control(node, "status").get("faults", {}).get("database", {})


def stored_users(node) -> set[str]:
    """The users with a live binding in the node's database file."""
    db = sqlite3.connect(f"file:{_db_files(node)[0]}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT aor FROM bindings WHERE deleted = 0").fetchall()
    finally:
        db.close()
    return {aor.split(":", 1)[1].split("@", 1)[0] for (aor,) in rows}


def test_a_node_whose_database_fails_says_so_and_recovers_alone(cluster):
    n1, n2 = cluster.nodes
    log_start = os.path.getsize(n1.log_path)
    assert phone(cluster, "user0", n1).register().status == 200

    chattr(n1, "+i")
    bob = phone(cluster, "user1", n1)
    refused = bob.register()
    assert refused.status == 503 and refused.get("retry-after"), refused.status
    # Degraded, and saying so to phones and to the master; the peer serves.
    assert options_status(n1) == 503
    status = cluster.control(n1, "status")
    assert status["state"] == "degraded" and "database" in status["faults"], status
    assert options_status(n2) == 200
    # Every REGISTER it cannot keep is refused, none answered 200, and a burst
    # of them writes a bounded log.
    assert {bob.register().status for _ in range(50)} == {503}
    # A phone on the peer registers; its binding reaches the failing node (its
    # table), which must keep it until its database takes it.
    assert phone(cluster, "user2", n2).register().status == 200
    assert wait(lambda: cluster.control(n1, "status")["bindings"] == 2, 10.0)
    # Its checks, every second, fail while the fault lasts.
    assert wait(lambda: database_fault(cluster, n1).get("for", 0) >= 2.5, 10.0)
    assert options_status(n1) == 503

    chattr(n1, "-i")
    assert wait(lambda: options_status(n1) == 200, 15.0), n1.log_tail()
    status = cluster.control(n1, "status")
    assert status["state"] == "synced" and "faults" not in status, status
    assert phone(cluster, "user3", n1).register().status == 200
    assert wait(lambda: "user2" in stored_users(n1), 10.0), n1.log_tail()

    # What it answered 200 for (and what its peer did) is on its disk; what it
    # refused is not. SIGKILL: nothing more is written.
    n1.kill()
    assert stored_users(n1) == {"user0", "user2", "user3"}
    with open(n1.log_path, errors="replace") as f:
        f.seek(log_start)
        lines = [line for line in f if "database" in line or "group commit" in line]
    assert 2 <= len(lines) <= 10, "".join(lines)
    assert any("database recovered" in line for line in lines), "".join(lines)


def test_a_node_whose_postgresql_server_goes_away_says_so_and_recovers_alone(tmp_path, pg_server):
    import psycopg2

    node = NodeProcess(str(tmp_path), database=pg_server.url)
    rows = dict(write_users_csv(str(tmp_path / "users.csv"), 5))
    out = node.run_cli("user", "import", str(tmp_path / "users.csv"))
    assert out.returncode == 0, out.stderr
    node.start()
    try:

        def phone_of(user: str) -> SipClient:
            return SipClient(
                (node.address, node.port), user, rows[user], node.domain, t1=0.25, timeout=5
            )

        assert phone_of("user0").register().status == 200
        pg_server.pause()
        refused = phone_of("user1").register()
        assert refused.status == 503 and refused.get("retry-after"), refused.status
        assert options_status(node) == 503
        pg_server.resume()
        assert wait(lambda: options_status(node) == 200, 15.0), node.log_tail()
        assert phone_of("user2").register().status == 200
    finally:
        node.kill()
    with psycopg2.connect(pg_server.url) as db, db.cursor() as cur:
        cur.execute("SELECT aor FROM bindings WHERE NOT deleted")
        stored = {aor.split(":", 1)[1].split("@", 1)[0] for (aor,) in cur.fetchall()}
    assert stored == {"user0", "user2"}


def test_a_node_whose_actor_dies_stops_with_a_failure_for_its_service_to_restart():
    node = Node(NodeConfig(id="solo", domain="example.test"))
    assert node.exit_code == 0

    def broken() -> None:
        raise RuntimeError("a bug")

    node.spawn_actor(broken).join(timeout=5)
    assert node.stopped.wait(5) and "a bug" in (node.failure or "")
    assert node.exit_code == 1
