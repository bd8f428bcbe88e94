"""Staged rollout and nodes that are syncing, stopped or removed.

A node still syncing answers SIP 503 to everything, so its self-check cannot
pass: it is never the first node of a rollout, and it takes a version already
checked elsewhere at once (its users are there when it starts serving), then
checks itself once synced. A node whose push never ends (it stopped in the
middle of one) holds back no other node's versions, and a push to a node
removed meanwhile is dropped. Fake nodes answer the master's real pusher.
"""

from contextlib import contextmanager

import gevent
import pytest
from gevent.event import Event

from actors.bus import CONTROL_DOMAIN, Bus, BusError, generate_keypair
from actors.config_sync import MASTER
from actors.control import ControlServer
from actors.staged import StagedConfig
from loadtest.harness import free_port
from store import master as ms
from web import push
from web.push import Pusher


class FakeSync:
    """The part of ``ConfigSync`` that ``StagedConfig`` uses, in memory."""

    def __init__(self):
        self.running, self.restored = 0, []

    def version(self, _request=None) -> dict:
        return {"version": self.running}

    def snapshot(self) -> dict:
        return {"version": self.running}

    def apply(self, request: dict) -> dict:
        if request["version"] <= self.running:
            return {"version": self.running, "applied": False}
        self.running = request["version"]
        return {"version": self.running, "applied": True}

    def restore(self, snapshot: dict) -> None:
        self.restored.append(snapshot["version"])
        self.running = snapshot["version"]


def staged_node(reason=None):
    """A ``StagedConfig`` of a node that is syncing, whose self-check says ``reason``."""
    state = {"synced": False, "checks": 0}

    def check():
        state["checks"] += 1
        return reason

    staged = StagedConfig(FakeSync(), check, lambda: state["synced"], sync_wait=10.0)
    return staged, state


def test_a_syncing_node_refuses_to_be_the_first_node_of_a_rollout():
    staged, state = staged_node()
    with pytest.raises(BusError, match="syncing: it cannot check itself"):
        staged.stage({"from": MASTER, "version": 1, "first": True})
    assert staged.sync.running == 0 and state["checks"] == 0 and staged.later is None


def test_a_syncing_node_takes_a_checked_version_at_once_and_checks_it_once_synced():
    staged, state = staged_node()
    answer = staged.stage({"from": MASTER, "version": 1})
    assert answer["healthy"] and answer["checked"] is False and staged.sync.running == 1
    assert state["checks"] == 0, "no self-check while the node answers 503"
    state["synced"] = True
    staged.later.join(timeout=5)
    assert staged.later.ready() and state["checks"] == 1
    assert staged.sync.running == 1 and staged.stats["rolled_back"] == 0


def test_a_version_taken_while_syncing_that_fails_the_check_once_synced_is_rolled_back():
    staged, state = staged_node("OPTIONS to itself got no answer")
    assert staged.stage({"from": MASTER, "version": 3})["checked"] is False
    state["synced"] = True
    staged.later.join(timeout=5)
    assert staged.later.ready() and staged.sync.restored == [0] and staged.sync.running == 0
    assert staged.stats["rolled_back"] == 1


def test_the_later_check_leaves_a_newer_version_alone():
    staged, state = staged_node("REGISTER to itself answered 503, expected 401")
    staged.stage({"from": MASTER, "version": 1})
    first = staged.later
    staged.stage({"from": MASTER, "version": 2})  # still syncing: the first check is dropped
    assert first.ready() and staged.later is not first
    staged.later.kill()
    staged.previous, staged.staged_version = None, 0  # as if the master undid version 2
    state["synced"] = True
    first_check = gevent.spawn(staged._check_once_synced, 1)
    first_check.join(timeout=5)
    assert first_check.ready() and state["checks"] == 0 and staged.sync.restored == []


class FakeNode:
    """A node's control endpoint answering the pusher: its version, whether it is synced,
    and staged pushes (each request kept); ``hang`` makes staged pushes never answer."""

    def __init__(self, node_id: str, master_public: str, synced: bool = True):
        self.id, self.synced, self.running, self.boot = node_id, synced, 0, 1
        self.staged: list[dict] = []
        self.hang = False
        self.release = Event()
        self.public, secret = generate_keypair()
        self.bus = Bus(self.public, secret, node_id)
        self.bus.allow(CONTROL_DOMAIN, {master_public: "master"})
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.server = self._server()

    def _server(self) -> ControlServer:
        return ControlServer(
            self.bus,
            self.endpoint,
            {
                "config_version": lambda _r: {
                    "version": self.running,
                    "synced": self.synced,
                    "boot": self.boot,
                },
                "config_staged": self._stage,
                "config_rollback": self._rollback,
            },
        )

    def restart(self) -> None:
        """Stop the endpoint (a request it holds is never answered) and start it again,
        as a new boot that does not hang."""
        self.server.stop()
        self.release.set()
        self.hang, self.boot = False, self.boot + 1
        self.server = self._server()
        self.server.start()

    def _stage(self, request: dict) -> dict:
        self.staged.append(request)
        if self.hang:
            self.release.wait()
            raise BusError("stopped")
        self.running = request["version"]
        return {"version": self.running, "applied": True, "healthy": True}

    @staticmethod
    def _rollback(_request: dict) -> dict:
        raise BusError("not a staged version this node runs")

    def close(self) -> None:
        self.release.set()
        self.server.stop()
        self.bus.close()


@contextmanager
def master_with(tmp_path, monkeypatch, *specs: tuple[str, bool]):
    """The master's store and pusher and one ``FakeNode`` per ``(id, synced)``."""
    monkeypatch.setattr(push, "ROUND_WAIT", 1.0)
    master_public, master_secret = generate_keypair()
    nodes = {node_id: FakeNode(node_id, master_public, synced) for node_id, synced in specs}
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    pusher = Pusher(master_public, master_secret)
    try:
        ms.setup("example.test")
        for n in nodes.values():
            n.server.start()
            ms.save_node(n.id, "", n.endpoint, n.public)
        yield pusher, nodes
    finally:
        pusher.stop()
        for n in nodes.values():
            n.close()
        ms.close_master_store()


def test_the_first_node_of_a_rollout_is_the_lowest_synced_one(tmp_path, monkeypatch):
    with master_with(tmp_path, monkeypatch, ("node1", False), ("node2", True), ("node3", True)) as (
        pusher,
        nodes,
    ):
        version = ms.new_version("test")
        outcome = pusher.push_round()
        assert outcome == {n: f"version {version}" for n in nodes}, outcome
        assert nodes["node2"].staged[0]["first"] is True, "node1 syncs: node2 goes first"
        assert "first" not in nodes["node1"].staged[0] and "first" not in nodes["node3"].staged[0]


def test_with_no_synced_node_behind_the_rollout_waits(tmp_path, monkeypatch):
    with master_with(tmp_path, monkeypatch, ("node1", False), ("node2", False)) as (pusher, nodes):
        version = ms.new_version("test")
        outcome = pusher.push_round()
        assert all("no node synced" in str(o) for o in outcome.values()), outcome
        assert not nodes["node1"].staged and not nodes["node2"].staged
        nodes["node2"].synced = True
        assert pusher.push_round() == {n: f"version {version}" for n in nodes}
        assert nodes["node2"].staged[0]["first"] is True


def test_a_push_that_never_ends_holds_back_no_other_node(tmp_path, monkeypatch):
    with master_with(tmp_path, monkeypatch, ("node1", True), ("node2", True), ("node3", True)) as (
        pusher,
        nodes,
    ):
        nodes["node3"].hang = True  # stopped in the middle of its push: never answers
        first = ms.new_version("test")
        outcome = pusher.push_round()
        assert outcome["node3"] == f"push of {first} in progress", outcome
        assert outcome["node1"] == outcome["node2"] == f"version {first}"
        second = ms.new_version("a node removed")
        outcome = pusher.push_round()
        assert outcome == {
            "node1": f"version {second}",
            "node2": f"version {second}",
            "node3": f"push of {first} in progress",
        }, outcome
        _, job, _ = pusher.pushing["node3"]
        third = ms.remove_node("node3")
        assert third is not None
        assert pusher.push_round() == {"node1": f"version {third}", "node2": f"version {third}"}
        job.join(timeout=5)
        assert job.ready() and "node3" not in pusher.pushing, "the removed node's push dropped"
        assert len(nodes["node3"].staged) == 1


def test_a_push_to_a_node_that_restarted_in_its_middle_is_made_again(tmp_path, monkeypatch):
    with master_with(tmp_path, monkeypatch, ("node1", True), ("node2", True)) as (pusher, nodes):
        nodes["node1"].hang = True  # the first node of the rollout stops in its push
        version = ms.new_version("test")
        outcome = pusher.push_round()
        assert outcome["node1"] == f"push of {version} in progress", outcome
        assert pusher.push_round()["node1"] == f"push of {version} in progress"
        nodes["node1"].restart()
        # The push to its former boot is dropped at once, not after PUSH_TIMEOUT.
        assert pusher.push_round() == {n: f"version {version}" for n in nodes}
        assert len(nodes["node1"].staged) == 2 and nodes["node1"].staged[1]["first"] is True
