"""Join tokens and ``POST /api/join`` through Flask's test client: the join itself,
and hostile requests (replayed, expired, forged, oversized, flooded, unauthenticated).

The real processes (``run.py node join``, nodes learning a new peer) are in
``tests/test_join.py``.
"""

import hashlib
import json
import os
import re
import sqlite3
import stat
import time

import pytest

from actors.bus import generate_keypair
from store import join_tokens as jt
from store import master as ms
from store.db import StoreError
from tests.test_web import Poked, basic, login, token
from web import create_app
from web.dns import zone_text

SECRET = "ab" * 32


@pytest.fixture
def app(tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", "admin-pw-123")
    master_public, _ = generate_keypair()
    app = create_app(
        {
            "SECRET_KEY": "test-key",
            "CLUSTER_SECRET": SECRET,
            "MASTER_KEY": master_public,
            "MASTER_URL": "http://192.0.2.1:8080",
        },
        Poked(),
    )
    app.db_path = f"{tmp_path}/master.db"
    yield app
    ms.close_master_store()


def request_for(k: int, tok: str, **extra) -> dict:
    """A join request of a node on 192.0.2.1k."""
    host = f"192.0.2.{10 + k}"
    return {
        "token": tok,
        "sip": f"{host}:5060",
        "bus": f"tcp://{host}:7001",
        "snapshot": f"tcp://{host}:7002",
        "control": f"tcp://{host}:7003",
        "public_key": generate_keypair()[0],
        **extra,
    }


def post(client, body, **kw):
    return client.post("/api/join", data=json.dumps(body), content_type="application/json", **kw)


def test_join_records_the_node_and_answers_what_it_needs(app):
    c = app.test_client()
    tok, expires = jt.make_token(600)
    assert expires > time.time() + 590
    before = ms.current_version()
    r = post(c, request_for(1, tok))
    assert r.status_code == 201, r.json
    assert r.headers["Cache-Control"] == "no-store"
    reply = r.json
    assert reply["node_id"] == "node1" and reply["domain"] == "example.test"
    assert reply["auth_secret"] == SECRET and reply["peers"] == []
    assert reply["master_key"] == app.config["MASTER_KEY"]
    assert reply["version"] == ms.current_version() > before
    assert app.extensions["pusher"].count == 1
    tok2, _ = jt.make_token(600)
    second = request_for(2, tok2, id="edge-2")
    r = post(c, second)
    assert r.status_code == 201, r.json
    assert r.json["node_id"] == "edge-2"
    assert [p["id"] for p in r.json["peers"]] == ["node1"]
    node = {n["node_id"]: n for n in ms.list_nodes()}["edge-2"]
    assert (node["sip"], node["bus"], node["snapshot"], node["public_key"]) == (
        second["sip"],
        second["bus"],
        second["snapshot"],
        second["public_key"],
    )
    pushed = ms.config_for(ms.current_version())["peers"]
    assert sorted(p["id"] for p in pushed) == ["edge-2", "node1"]
    zone = zone_text()
    assert "192.0.2.11" in zone and "192.0.2.12" in zone


def test_only_the_tokens_digest_is_kept_and_the_database_is_private(app):
    tok, _ = jt.make_token(600)
    con = sqlite3.connect(app.db_path)
    try:
        rows = con.execute("SELECT digest FROM master_join_tokens").fetchall()
    finally:
        con.close()
    assert rows == [(hashlib.sha256(tok.encode()).hexdigest(),)]
    for name in os.listdir(os.path.dirname(app.db_path)):
        if name.startswith("master.db"):
            path = os.path.join(os.path.dirname(app.db_path), name)
            with open(path, "rb") as f:
                assert tok.encode() not in f.read()
    assert stat.S_IMODE(os.stat(app.db_path).st_mode) == 0o600


def test_replayed_token_is_refused(app):
    c = app.test_client()
    tok, _ = jt.make_token(600)
    assert post(c, request_for(1, tok)).status_code == 201
    r = post(c, request_for(2, tok))
    assert r.status_code == 403 and "already used" in r.json["error"]
    assert [n["node_id"] for n in ms.list_nodes()] == ["node1"]


def test_expired_forged_and_missing_tokens_are_refused(app):
    c = app.test_client()
    old, _ = jt.make_token(60, now=time.time() - 120)
    r = post(c, request_for(1, old))
    assert r.status_code == 403 and "expired" in r.json["error"]
    for forged in ("x" * 43, "", None, 12345, "y" * 1000):
        r = post(c, request_for(1, forged))
        assert r.status_code == 403 and "unknown" in r.json["error"], str(forged)[:50]
    assert ms.list_nodes() == []


def test_a_refused_join_leaves_the_token_unspent(app):
    c = app.test_client()
    tok, _ = jt.make_token(600)
    for bad in (
        {"public_key": "not a key"},
        {"sip": "example.test:5060"},
        {"bus": "ipc:///tmp/x"},
        {"control": "tcp://0.0.0.0:7003"},
        {"id": "Bad_Id"},
        {"id": "a" * 40},
    ):
        r = post(c, request_for(1, tok, **bad))
        assert r.status_code == 400, (bad, r.json)
    assert post(c, request_for(1, tok)).status_code == 201
    tok2, _ = jt.make_token(600)
    taken = ms.list_nodes()[0]
    for clash in ({"id": "node1"}, {"public_key": taken["public_key"]}, {"sip": taken["sip"]}):
        r = post(c, request_for(2, tok2, **clash))
        assert r.status_code == 409 and "belongs to node1" in r.json["error"], clash
    assert post(c, request_for(2, tok2)).status_code == 201


def test_oversized_and_malformed_bodies_are_refused(app):
    c = app.test_client()
    tok, _ = jt.make_token(600)
    r = post(c, request_for(1, tok, pad="x" * 5000))
    assert r.status_code == 413
    for junk in (b"{" * 3000, b"[" * 4000, b"\xff\xfe", b""):
        r = c.post("/api/join", data=junk, content_type="application/json")
        assert r.status_code == 400, junk[:10]
    r = c.post("/api/join", data="[1, 2]", content_type="application/json")
    assert r.status_code == 400
    assert post(c, request_for(1, tok)).status_code == 201


def test_a_flood_of_bad_joins_is_stopped(app):
    c = app.test_client()
    for _ in range(10):
        assert post(c, request_for(1, "forged")).status_code == 403
    tok, _ = jt.make_token(600)
    r = post(c, request_for(1, tok))
    assert r.status_code == 429 and ms.list_nodes() == []
    other = post(c, request_for(1, tok), environ_base={"REMOTE_ADDR": "192.0.2.99"})
    assert other.status_code == 201


def test_open_tokens_are_bounded_and_ttl_checked(app):
    for _ in range(jt.MAX_OPEN_TOKENS):
        jt.make_token(600)
    with pytest.raises(StoreError, match="wait unused"):
        jt.make_token(600)
    r = app.test_client().post("/api/tokens", headers=basic())
    assert r.status_code == 409
    for bad in (0, -1, jt.MAX_TTL + 1, True):
        with pytest.raises(StoreError):
            jt.make_token(bad)


def test_tokens_and_removal_need_an_admin(app):
    c = app.test_client()
    assert c.post("/api/tokens").status_code == 401
    assert c.delete("/api/nodes/node1").status_code == 401
    r = c.post("/api/tokens", headers=basic())
    assert r.status_code == 201 and r.headers["Cache-Control"] == "no-store"
    assert r.json["token"] in r.json["command"]
    assert r.json["command"].startswith(
        ".venv/bin/python run.py node join --master http://192.0.2.1:8080 --token "
    )
    assert post(c, request_for(1, r.json["token"])).status_code == 201


def test_removal_takes_the_node_out_of_the_push_and_the_zone(app):
    c = app.test_client()
    for k in (1, 2):
        assert post(c, request_for(k, jt.make_token(600)[0])).status_code == 201
    assert "192.0.2.12" in zone_text()
    r = c.delete("/api/nodes/node2", headers=basic())
    assert r.status_code == 200 and r.json["version"] == ms.current_version()
    assert "192.0.2.12" not in zone_text() and "192.0.2.11" in zone_text()
    assert [p["id"] for p in ms.config_for(ms.current_version())["peers"]] == ["node1"]
    assert c.delete("/api/nodes/node2", headers=basic()).status_code == 404


def test_no_peers_are_pushed_and_no_node_joins_while_a_node_lacks_its_bus_endpoints(app):
    c = app.test_client()
    assert post(c, request_for(1, jt.make_token(600)[0])).status_code == 201
    key = generate_keypair()[0]
    ms.save_node("static", "192.0.2.50:5060", "tcp://192.0.2.50:7003", key)
    assert "peers" not in ms.config_for(ms.current_version())
    tok, _ = jt.make_token(600)
    r = post(c, request_for(2, tok))
    assert r.status_code == 409 and "bus and snapshot" in r.json["error"]
    assert len(ms.list_nodes()) == 2
    ms.save_node(
        "static",
        "192.0.2.50:5060",
        "tcp://192.0.2.50:7003",
        key,
        "tcp://192.0.2.50:7001",
        snapshot="tcp://192.0.2.50:7002",
    )
    r = post(c, request_for(2, tok))
    assert r.status_code == 201 and [p["id"] for p in r.json["peers"]] == ["node1", "static"]


def test_dashboard_makes_a_token_and_removes_a_node(app):
    c = app.test_client()
    login(c)
    page = c.get("/").get_data(as_text=True)
    assert 'id="join-token"' in page
    r = c.post("/nodes/token", data={"csrf_token": token(page)})
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    shown = re.search(r'<code id="token">([^<]+)</code>', r.get_data(as_text=True)).group(1)
    assert c.post("/nodes/token").status_code == 400
    assert post(c, request_for(1, shown)).status_code == 201
    page = c.get("/").get_data(as_text=True)
    assert 'id="remove-node1"' in page
    assert c.post("/nodes/node1/remove").status_code == 400
    r = c.post("/nodes/node1/remove", data={"csrf_token": token(page)})
    assert r.status_code == 302 and ms.list_nodes() == []


def test_a_master_database_older_than_snapshot_endpoints_gets_the_column(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    # A schema version 1 database: every table of then, no schema_versions table.
    con.execute("CREATE TABLE master_settings (key TEXT PRIMARY KEY, value TEXT)")
    con.execute(
        "CREATE TABLE master_nodes (id INTEGER PRIMARY KEY, node_id TEXT UNIQUE, "
        "sip TEXT, bus TEXT, control TEXT, public_key TEXT, weight INTEGER, "
        "acked_version INTEGER, acked_at REAL, last_error TEXT)"
    )
    con.execute(
        "INSERT INTO master_nodes VALUES (1, 'node1', '192.0.2.1:5060', "
        "'tcp://192.0.2.1:7001', 'tcp://192.0.2.1:7003', 'k', 50, 3, 0, '')"
    )
    con.commit()
    con.close()
    ms.init_master_store(f"sqlite:///{path}")
    try:
        [node] = ms.list_nodes()
        assert node["snapshot"] == "" and node["acked_version"] == 3
    finally:
        ms.close_master_store()


def test_a_token_never_reads_as_a_command_line_option(app):
    tokens = [jt.make_token(60)[0] for _ in range(50)]
    assert all(t.startswith("tj-") and len(t) > 40 for t in tokens)
