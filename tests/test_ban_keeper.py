"""Bans that outlive a restart and reach a node that joins later (``actors.ban_keeper``)."""

import os
import stat
import time

from actors.ban_keeper import BanKeeper
from loadtest.harness import Cluster
from sipcore.authguard import SOURCE, USER, AuthGuard, Ban


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_bans_in_force_are_written_0600_and_read_back(tmp_path):
    clock = Clock()
    path = str(tmp_path / "bans.json")
    guard = AuthGuard()
    keeper = BanKeeper(guard, path, clock)
    assert keeper.load() == 0
    guard.add(Ban(SOURCE, "192.0.2.7", 1600.0), clock.now)
    guard.add(Ban(USER, "alice", 1100.0, "node2"), clock.now)
    guard.add(Ban(USER, "bob", 1600.0), clock.now)
    guard.lift(USER, "bob")
    assert keeper.save() is True
    assert keeper.save() is False, "nothing changed: nothing written"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    clock.now = 1200.0
    again = AuthGuard()
    assert BanKeeper(again, path, clock).load() == 1
    assert [(b.kind, b.key, b.until) for b in again.bans(clock.now)] == [
        (SOURCE, "192.0.2.7", 1600.0)
    ]


def test_a_damaged_file_is_logged_and_skipped(tmp_path, caplog):
    path = tmp_path / "bans.json"
    path.write_text('{"not": "a list"}')
    assert BanKeeper(AuthGuard(), str(path)).load() == 0
    assert "bans not restored" in caplog.text
    path.write_text('[["source", "192.0.2.1", 9e99, ""], ["nonsense"], ["user", 5, 9e99, ""]]')
    guard = AuthGuard()
    assert BanKeeper(guard, str(path)).load() == 1
    assert [b.key for b in guard.bans(time.time())] == ["192.0.2.1"]


def wait_for(fn, timeout: float):
    """Poll ``fn`` until it returns something true or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while not (value := fn()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_a_ban_survives_a_restart_and_reaches_a_node_that_joins_later(tmp_path):
    cluster = Cluster(str(tmp_path), n=2)
    one, two = cluster.nodes
    try:
        cluster.start()
        two.kill()
        assert cluster.control(one, "ban", kind="source", key="198.51.100.9", seconds=600)
        assert cluster.control(one, "ban", kind="user", key="mallory", seconds=600)
        assert cluster.control(one, "unban", kind="user", key="mallory")
        path = os.path.join(one.dir, "bans.json")

        def saved() -> str:
            try:
                with open(path) as f:
                    return f.read()
            except FileNotFoundError:
                return ""

        assert wait_for(lambda: "198.51.100.9" in saved() and "mallory" not in saved(), 5.0)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # node2 missed the ban: it gets it when it asks node1 for its snapshot.
        two.start()

        def keys(node):
            return [(b["kind"], b["key"]) for b in cluster.control(node, "bans")]

        assert wait_for(lambda: keys(two), 15.0) == [("source", "198.51.100.9")]
        # Both stop; node1 comes back alone and still holds it.
        cluster.stop()
        one.start()
        bans = cluster.control(one, "bans")
        assert [(b["kind"], b["key"]) for b in bans] == [("source", "198.51.100.9")]
        assert 500 < bans[0]["left"] <= 600
    finally:
        cluster.stop()
