"""Bans on the dashboard with two real nodes: listed merged over the nodes, lifted on every
node from the page or the API, the lift in the audit log; hostile lifts refused."""

import time

import pytest

from store import audit
from store import master as ms
from tests.test_web import PASSWORD, basic, login, token
from web import create_app


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from actors.bus import generate_keypair
    from loadtest.harness import Cluster
    from web.push import Pusher

    work = str(tmp_path_factory.mktemp("bans"))
    public, secret = generate_keypair()
    cluster = Cluster(work, 2, settings={"master_key": public, "heartbeat": 0.2, "alone_wait": 1.0})
    cluster.start()
    ms.init_master_store(f"sqlite:///{work}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    for m in cluster.members.values():
        ms.save_node(m.id, "", m.control, m.public_key)
    pusher = Pusher(public, secret, interval=60)
    try:
        assert cluster.wait_synced(20)
        yield cluster, create_app({"SECRET_KEY": "k"}, pusher)
    finally:
        pusher.stop()
        ms.close_master_store()
        cluster.stop()


def held(cluster, key: str) -> set:
    return {n.id for n in cluster.nodes if any(b["key"] == key for b in cluster.control(n, "bans"))}


def wait_held(cluster, key: str, nodes: set, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if held(cluster, key) == nodes:
            return True
        time.sleep(0.05)
    return False


def test_ban_is_listed_on_both_nodes_and_lifted_from_the_page(lab):
    cluster, app = lab
    cluster.control(cluster.nodes[0], "ban", kind="source", key="192.0.2.7", seconds=300)
    assert wait_held(cluster, "192.0.2.7", {"node1", "node2"})
    c = app.test_client()
    login(c)
    page = c.get("/bans").get_data(as_text=True)
    assert "<td>192.0.2.7</td>" in page and "node1, node2" in page
    r = c.post(
        "/bans/lift",
        data={"csrf_token": token(page), "kind": "source", "key": "192.0.2.7"},
        follow_redirects=True,
    )
    assert "Ban of source 192.0.2.7 lifted on node1" in r.get_data(as_text=True)
    assert wait_held(cluster, "192.0.2.7", set())
    row = audit.search(action="ban lifted")["entries"][0]
    assert row["actor"] == "admin" and row["target"] == "source 192.0.2.7" and row["ok"]
    assert "lifted on node1" in row["result"]


def test_api_lists_and_lifts_and_refuses_hostile_lifts(lab):
    cluster, app = lab
    cluster.control(cluster.nodes[1], "ban", kind="user", key="mallory", seconds=300)
    assert wait_held(cluster, "mallory", {"node1", "node2"})
    c = app.test_client()
    assert c.get("/api/bans").status_code == 401
    assert c.post("/api/bans/lift", json={"kind": "user", "key": "mallory"}).status_code == 401
    found = c.get("/api/bans", headers=basic()).json
    assert [(b["kind"], b["key"], sorted(b["nodes"])) for b in found["bans"]] == [
        ("user", "mallory", ["node1", "node2"])
    ]
    for body in (
        {"kind": "everyone", "key": "x"},
        {"kind": "user", "key": "x" * 257},
        {"kind": "user", "key": ""},
        {"kind": "user"},
        ["user", "mallory"],
    ):
        assert c.post("/api/bans/lift", json=body, headers=basic()).status_code == 400
    assert held(cluster, "mallory") == {"node1", "node2"}
    login(c)
    assert c.post("/bans/lift", data={"kind": "user", "key": "mallory"}).status_code == 400
    r = c.post("/api/bans/lift", json={"kind": "user", "key": "mallory"}, headers=basic())
    assert r.status_code == 200 and True in r.json["nodes"].values()
    assert wait_held(cluster, "mallory", set())
    assert audit.search(action="ban lifted", target="mallory")["entries"][0]["ok"]
