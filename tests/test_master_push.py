"""The master pushes configuration to real node processes over CurveZMQ.

Two real nodes with the master's public key as ``[cluster] master_key``; the
master's store and pusher run in the test process. Registrations are real
(sipsak with digest authentication).
"""

import os
import subprocess
import time

import pytest

from actors.bus import Bus, BusError, generate_keypair, request
from loadtest.harness import Cluster
from store import audit
from store import master as ms
from web.push import Pusher

SETTINGS = {
    "heartbeat": 0.2,
    "suspect_after": 1.0,
    "dead_after": 10.0,
    "alone_wait": 1.0,
    "sync_timeout": 3.0,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("master"))
    public, secret = generate_keypair()
    cluster = Cluster(work, 2, settings={**SETTINGS, "master_key": public})
    cluster.start()
    assert cluster.wait_synced(30)  # a node answers 503 Syncing until then
    ms.init_master_store(f"sqlite:///{work}/master.db")
    ms.setup("example.test")
    for m in cluster.members.values():
        ms.save_node(m.id, "", m.control, m.public_key)
    pusher = Pusher(public, secret, interval=0.2)
    pusher.start()
    try:
        yield cluster, pusher
    finally:
        pusher.stop()
        ms.close_master_store()
        cluster.stop()


def wait_acked(version: int, timeout: float, nodes=None) -> bool:
    """Until every node (or those named) acknowledged ``version``; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        acked = {n["node_id"]: n["acked_version"] for n in ms.list_nodes()}
        if all(acked[k] >= version for k in (nodes or acked)):
            return True
        time.sleep(0.02)
    return False


def wait_serving(cluster, node, timeout: float = 10.0) -> bool:
    """Until a (re)started node has synced and so takes REGISTERs; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cluster.control(node, "status", 1.0, brief=True)["state"] == "synced":
                return True
        except BusError:
            pass
        time.sleep(0.05)
    return False


def sipsak_register(node, user: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "sipsak",
            "-U",
            "-s",
            f"sip:{user}@{node.address}:{node.port}",
            "-u",
            user,
            "-a",
            password,
            "-i",
            "-x",
            "120",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def registered(node, user, password) -> bool:
    return "completed successful" in sipsak_register(node, user, password).stdout


def test_user_added_on_the_master_registers_on_every_node_within_a_second(setup):
    cluster, pusher = setup
    assert not registered(cluster.nodes[0], "zed", "zed-pw")
    version = ms.save_user("zed", "zed-pw")
    start = time.monotonic()
    pusher.poke()
    assert wait_acked(version, 5.0), ms.list_nodes()
    assert time.monotonic() - start < 1.0
    for node in cluster.nodes:
        assert cluster.control(node, "config_version")["version"] == version
        pushed = audit.search(action="push", target=node.id)["entries"][0]
        assert pushed["actor"] == "master" and pushed["after"] == {"version": version}
        assert registered(node, "zed", "zed-pw"), node.log_tail()
    version = ms.save_user("zed", "new-pw")
    pusher.poke()
    assert wait_acked(version, 5.0)
    for node in cluster.nodes:
        assert registered(node, "zed", "new-pw") and not registered(node, "zed", "zed-pw")


def test_push_from_another_key_is_refused(setup):
    cluster, _ = setup
    node = cluster.nodes[0]
    before = cluster.control(node, "config_version")
    forged = {
        "version": before["version"] + 100,
        "domain": "example.test",
        "users": [{"username": "mallory", "ha1_md5": "0" * 32, "ha1_sha256": "0" * 64}],
    }
    with pytest.raises(BusError, match="master's key only"):
        cluster.control(node, "config", **forged)
    stranger = Bus(*generate_keypair(), "stranger")
    try:
        m = cluster.members[node.id]
        with pytest.raises(BusError, match="no reply"):
            request(stranger, m.control, m.public_key, {"cmd": "config", **forged}, 1.0)
    finally:
        stranger.close()
    after = cluster.control(node, "config_version")
    assert after["version"] == before["version"] and after["refused"] == before["refused"] + 1
    assert not registered(node, "mallory", "anything")


def test_older_version_is_never_applied(setup):
    cluster, pusher = setup
    node = cluster.nodes[1]
    current = cluster.control(node, "config_version")["version"]
    assert current >= 1
    m = cluster.members[node.id]
    stale = {"cmd": "config", "version": current, "domain": "example.test", "users": []}
    reply = request(pusher.bus, m.control, m.public_key, stale, 5.0)
    assert reply == {"version": current, "applied": False}
    bad = {**stale, "version": current + 1, "users": [{"username": "x", "ha1_md5": "zz"}]}
    with pytest.raises(BusError, match="refused"):
        request(pusher.bus, m.control, m.public_key, bad, 5.0)
    assert cluster.control(node, "config_version")["version"] == current


def test_node_down_gets_the_newest_version_back_and_keeps_it_without_master(setup):
    cluster, pusher = setup
    down = cluster.nodes[1]
    down.stop()
    version = ms.save_user("yan", "yan-pw")
    pusher.poke()
    assert wait_acked(version, 5.0, nodes=["node1"])
    assert ms.list_nodes()[1]["acked_version"] < version
    down.start()
    assert wait_acked(version, 10.0), ms.list_nodes()
    assert wait_serving(cluster, down)
    assert registered(down, "yan", "yan-pw")
    pusher.greenlet.kill()
    down.kill()
    down.start()
    assert wait_serving(cluster, down)
    assert registered(down, "yan", "yan-pw"), (
        "a node restarted without its master serves its last configuration"
    )
    pusher.start()


def test_dashboard_shows_every_nodes_state_and_the_merged_registrations(setup):
    import base64

    from web import create_app

    cluster, pusher = setup
    version = ms.save_user("reg", "reg-pw")
    pusher.poke()
    assert wait_acked(version, 5.0)
    assert registered(cluster.nodes[0], "reg", "reg-pw")
    ms.add_admin("admin", "admin-pw")
    client = create_app({"SECRET_KEY": "k"}, pusher).test_client()
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:admin-pw").decode()}
    deadline = time.monotonic() + 5.0
    while True:
        found = client.get("/api/registrations?user=reg", headers=auth).json
        rows = [b for b in found["bindings"] if b["aor"] == "sip:reg@example.test"]
        if (rows and len(rows[0]["present_on"]) == 2) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rows and rows[0]["origin"] == "node1", found
    assert sorted(rows[0]["present_on"]) == ["node1", "node2"]
    assert found["errors"] == {} and found["by_primary"]["node1"] >= 1
    assert 1.0 <= found["balance_index"] <= 2.0  # the whole cluster's split, two nodes
    assert client.get("/api/registrations?user=reg").status_code == 401
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    for node_id in ("node1", "node2"):
        assert f'tandem_node_up{{node="{node_id}"}} 1' in text
        assert f'tandem_node_synced{{node="{node_id}"}} 1' in text
        assert f'tandem_node_config_version{{node="{node_id}"}} {version}' in text
    assert f"tandem_config_version_current {version}" in text
    assert client.get("/metrics").status_code == 401
    with pytest.raises(BusError, match="non-negative"):
        m = cluster.members["node1"]
        request(pusher.bus, m.control, m.public_key, {"cmd": "bindings", "limit": -1}, 2.0)


def test_a_node_that_lost_its_configuration_gets_it_again(setup):
    cluster, pusher = setup
    node = cluster.nodes[0]
    version = ms.save_user("lost", "lost-pw")
    pusher.poke()
    assert wait_acked(version, 5.0)
    node.stop()
    path = node.database.removeprefix("sqlite:///")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    node.start()
    assert wait_serving(cluster, node)
    deadline = time.monotonic() + 5.0
    while cluster.control(node, "config_version")["version"] < version:
        assert time.monotonic() < deadline, ms.list_nodes()
        time.sleep(0.05)
    assert registered(node, "lost", "lost-pw")


def test_user_command_on_a_node_with_a_master_points_to_the_master(setup):
    cluster, _ = setup
    out = cluster.nodes[0].run_cli("user", "add", "local", "--password", "pw")
    assert out.returncode == 2 and "configuration master" in out.stderr
