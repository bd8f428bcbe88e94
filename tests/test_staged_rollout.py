"""Staged configuration with real node processes: three nodes, the master in the test.

A change is checked before it becomes a version; a new version goes to the
lowest-id node first, which checks itself over SIP (``actors.selfcheck``) and
rolls back by itself when unhealthy, and only then to the others; an earlier
version can be restored and reaches every node.
"""

import base64
import time

import pytest

from actors.bus import Bus, BusError, generate_keypair, request
from loadtest.harness import Cluster
from store import audit, versions
from store import dialplan as dp
from store import master as ms
from store.db import StoreError
from web import create_app
from web.push import Pusher

from .test_master_push import SETTINGS, registered, wait_acked


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("staged"))
    public, secret = generate_keypair()
    cluster = Cluster(work, 3, settings={**SETTINGS, "master_key": public})
    cluster.start()
    assert cluster.wait_synced(30)
    ms.init_master_store(f"sqlite:///{work}/master.db")
    ms.setup("example.test")
    for m in cluster.members.values():
        ms.save_node(m.id, "", m.control, m.public_key)
    pusher = Pusher(public, secret, interval=0.2)
    pusher.start()
    first = ms.save_user("first", "first-pw")
    pusher.poke()
    assert wait_acked(first, 10.0), ms.list_nodes()
    try:
        yield cluster, pusher
    finally:
        pusher.stop()
        ms.close_master_store()
        cluster.stop()


def states(cluster) -> dict:
    """Each node's version and counts of staged pushes received, applied and rolled back
    (its self-check passes, too)."""
    out = {}
    for node in cluster.nodes:
        health = cluster.control(node, "config_health", 5.0)
        assert health["healthy"], (node.id, health)
        out[node.id] = (
            health["version"],
            health["received"],
            health["staged"],
            health["rolled_back"],
        )
    return out


def next_round(pusher, timeout: float = 10.0) -> None:
    """Until the pusher finished a round begun after now; bounded."""
    start = time.time()
    pusher.poke()
    deadline = time.monotonic() + timeout
    while pusher.last_round <= start:
        assert time.monotonic() < deadline, "no push round"
        time.sleep(0.02)


def test_each_node_checks_itself_over_sip(setup):
    cluster, _ = setup
    for node in cluster.nodes:
        health = cluster.control(node, "config_health", 5.0)
        assert health["healthy"] and health["reason"] == "" and health["staged"] >= 1
    node = cluster.nodes[0]
    node.stop()  # a node that does not answer SIP is not healthy: the check can fail
    try:
        from actors.selfcheck import self_check

        assert "OPTIONS to itself got no answer" in self_check(
            node.address, node.port, "example.test", 0.5
        )
    finally:
        node.start()
    assert cluster.wait_synced(30)


def test_a_bad_change_is_refused_with_its_reason_and_no_node_changes(setup):
    cluster, pusher = setup
    before, version = states(cluster), ms.current_version()
    with pytest.raises(StoreError, match=r"host nowhere\.invalid does not resolve"):
        dp.save_gateway({"name": "carrier", "host": "nowhere.invalid"})
    with pytest.raises(StoreError, match="the dial plan does not compile"), ms.master_db.atomic():
        ms.set_setting("dialplan", {"gateways": [], "rules": [{"pattern": "["}]})
        ms.new_version("plan edited by hand")
    with pytest.raises(StoreError, match="user mallory has no password"):
        ms.save_users([("mallory", "")], "import")
    assert ms.current_version() == version
    next_round(pusher)
    assert states(cluster) == before


def test_a_change_that_breaks_the_first_node_is_rolled_back_there_and_stops(setup):
    cluster, pusher = setup
    before, good = states(cluster), ms.current_version()
    ms.add_admin("admin", "admin-pw")
    client = create_app({"SECRET_KEY": "k", "WTF_CSRF_ENABLED": False}, pusher).test_client()
    assert (
        client.post("/login", data={"username": "admin", "password": "admin-pw"}).status_code == 302
    )
    ms.setup("other.test")  # a domain the nodes do not serve
    try:
        bad = ms.new_version("domain other.test")
        next_round(pusher)
        failed = versions.rollout_failure()
        assert failed is not None and failed["version"] == bad and failed["node"] == "node1"
        assert "this node serves 'example.test'" in failed["reason"]
        next_round(pusher)  # the next round does not push it anywhere either
        after = states(cluster)
        assert after["node1"] == (good, before["node1"][1] + 1, *before["node1"][2:])
        assert {k: after[k] for k in ("node2", "node3")} == {
            k: before[k] for k in ("node2", "node3")
        }  # never received it
        nodes = {n["node_id"]: n for n in ms.list_nodes()}
        assert "rolled back" in nodes["node1"]["last_error"]
        assert all(nodes[k]["acked_version"] == good for k in nodes)
        assert audit.search(action="rollout stopped")["entries"][0]["target"] == "node1"
        page = client.get("/").get_data(as_text=True)
        assert 'id="rollout-failed"' in page and f"configuration {bad} stopped" in page
        assert f'id="restore-{good}"' in page and f'id="restore-{bad}"' not in page
    finally:
        ms.setup("example.test")
    r = client.post(f"/versions/{good}/restore")  # the earlier version: rolls out afresh
    assert r.status_code == 302
    fixed = ms.current_version()
    assert fixed > bad and wait_acked(fixed, 10.0), ms.list_nodes()
    assert versions.rollout_failure() is None
    assert 'id="rollout-failed"' not in client.get("/").get_data(as_text=True)


def test_a_version_that_fails_the_self_check_after_applying_is_rolled_back_by_the_node(setup):
    """The node applies the version, checks itself over SIP, finds itself unhealthy and
    rolls back by itself; the rollout stops there (the node is started with the test hook
    ``actors.staged.BREAK_AT_ENV`` naming the version: no real change breaks one node)."""
    from actors.staged import BREAK_AT_ENV

    cluster, pusher = setup
    first = cluster.nodes[0]
    good = ms.current_version()
    first.stop()
    first.prefix = ["env", f"{BREAK_AT_ENV}={good + 1}"]
    try:
        first.start()
    finally:
        first.prefix = []  # its next start is a plain one
    assert cluster.wait_synced(30)
    before = states(cluster)
    bad = ms.save_user("breaker", "breaker-pw")
    assert bad == good + 1
    ms.add_admin("admin", "admin-pw")
    client = create_app({"SECRET_KEY": "k", "WTF_CSRF_ENABLED": False}, pusher).test_client()
    admin = {"Authorization": "Basic " + base64.b64encode(b"admin:admin-pw").decode()}
    pusher.poke()
    deadline = time.monotonic() + 20.0  # the staged push takes the self-check's timeout
    while (failed := versions.rollout_failure()) is None:
        assert time.monotonic() < deadline, ms.list_nodes()
        time.sleep(0.05)
    assert failed["version"] == bad and failed["node"] == "node1", failed
    assert "OPTIONS to itself got no answer" in failed["reason"]
    next_round(pusher, 20.0)  # the next round does not push it anywhere either
    after = states(cluster)
    received, staged, rolled_back = before["node1"][1:]
    # node1 received it, applied it (staged) and rolled it back: it runs the old version.
    assert after["node1"] == (good, received + 1, staged + 1, rolled_back + 1), after
    assert {k: after[k] for k in ("node2", "node3")} == {
        k: before[k] for k in ("node2", "node3")
    }  # never received it
    assert not registered(first, "breaker", "breaker-pw")
    listed = client.get("/api/versions", headers=admin).json
    assert listed["rollout_failed"]["version"] == bad
    assert listed["rollout_failed"]["node"] == "node1"
    assert (
        client.post("/login", data={"username": "admin", "password": "admin-pw"}).status_code == 302
    )
    page = client.get("/").get_data(as_text=True)
    assert 'id="rollout-failed"' in page and f"configuration {bad} stopped" in page
    assert audit.search(action="rollout stopped")["entries"][0]["target"] == "node1"
    ms.delete_user("breaker")  # a fixed version goes on past the stopped one, to every node
    fixed = ms.current_version()
    pusher.poke()
    assert fixed > bad and wait_acked(fixed, 15.0), ms.list_nodes()
    assert versions.rollout_failure() is None


def test_a_restored_version_reaches_every_node(setup):
    cluster, pusher = setup
    old = ms.save_user("olduser", "old-pw")
    pusher.poke()
    assert wait_acked(old, 10.0)
    ms.delete_user("olduser")
    gone = ms.save_user("newuser", "new-pw")
    pusher.poke()
    assert wait_acked(gone, 10.0)
    assert not registered(cluster.nodes[2], "olduser", "old-pw")
    admin = {"Authorization": "Basic " + base64.b64encode(b"admin:admin-pw").decode()}
    ms.add_admin("admin", "admin-pw")
    client = create_app({"SECRET_KEY": "k"}, pusher).test_client()
    r = client.post(f"/api/versions/{old}/restore", headers=admin)
    assert r.status_code == 200, r.json
    assert wait_acked(r.json["version"], 10.0), ms.list_nodes()
    for node in cluster.nodes:
        assert cluster.control(node, "config_version")["version"] == r.json["version"]
        assert registered(node, "olduser", "old-pw"), node.log_tail()
        assert not registered(node, "newuser", "new-pw")


def test_the_master_can_undo_a_staged_version_a_node_still_runs(setup):
    cluster, pusher = setup
    node = cluster.nodes[2]
    m = cluster.members[node.id]
    running = cluster.control(node, "config_version")["version"]
    staged = {"cmd": "config_staged", **ms.config_for(running + 1)}
    staged["users"] = [
        *staged["users"],
        {"username": "staged", "ha1_md5": "0" * 32, "ha1_sha256": "0" * 64, "enabled": True},
    ]
    reply = request(pusher.bus, m.control, m.public_key, staged, 10.0)
    assert reply["healthy"] and reply["version"] == running + 1
    undone = request(
        pusher.bus, m.control, m.public_key, {"cmd": "config_rollback", "version": running + 1}, 5.0
    )
    assert undone == {"version": running, "rolled_back": True}
    assert cluster.control(node, "config_version")["version"] == running
    with pytest.raises(BusError, match="not a staged version"):
        request(
            pusher.bus,
            m.control,
            m.public_key,
            {"cmd": "config_rollback", "version": running + 1},
            5.0,
        )


def test_hostile_rollbacks_restores_and_stages_are_refused(setup):
    cluster, pusher = setup
    node = cluster.nodes[0]
    m = cluster.members[node.id]
    before = states(cluster)
    version = cluster.control(node, "config_version")["version"]
    forged = {**ms.config_for(version + 50), "users": []}
    for cmd, body in (("config_rollback", {"version": version}), ("config_staged", forged)):
        with pytest.raises(BusError, match="master's key only"):  # a control key, not the master
            cluster.control(node, cmd, 5.0, **body)
        stranger = Bus(*generate_keypair(), "stranger")
        try:
            with pytest.raises(BusError, match="no reply"):  # CurveZMQ: an unknown key
                request(stranger, m.control, m.public_key, {"cmd": cmd, **body}, 1.0)
        finally:
            stranger.close()
    assert states(cluster) == before
    ms.add_admin("admin", "admin-pw")
    client = create_app({"SECRET_KEY": "k"}, pusher).test_client()
    admin = {"Authorization": "Basic " + base64.b64encode(b"admin:admin-pw").decode()}
    current = ms.current_version()
    assert client.post("/api/versions/99999/restore", headers=admin).status_code == 404
    assert client.post("/api/versions/-1/restore", headers=admin).status_code == 404
    assert client.post("/api/versions/1e9/restore", headers=admin).status_code == 404
    assert client.get("/api/versions").status_code == 401
    listed = client.get("/api/versions", headers=admin).json
    assert listed["rollout_failed"] is None and listed["versions"][0]["version"] == current
    assert client.post(f"/api/versions/{current - 1}/restore").status_code == 401
    with client.session_transaction() as session:  # logged in, but no CSRF token sent
        session.update({"admin": "admin"})
    r = client.post(f"/versions/{current - 1}/restore")
    assert r.status_code == 400 and b"CSRF" in r.data
    assert ms.current_version() == current
