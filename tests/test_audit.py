"""The audit log: every admin action with who, when, from where, before and after; no secret."""

import csv
import io
import json

import pytest

from store import audit
from store import master as ms
from store.db import StoreError, open_database
from tests.test_web import PASSWORD, Poked, basic, login, token
from web import create_app


@pytest.fixture
def app(tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    ms.save_node("node1", "127.0.0.11:5060", "tcp://127.0.0.11:7003", "k" * 40)
    app = create_app({"SECRET_KEY": "test-key", "LOGIN_FAILURES": 3}, Poked())
    yield app
    ms.close_master_store()


@pytest.fixture
def master(store_url):
    """The master store on an empty database of each backend."""
    db = open_database(store_url)
    with db.bind_ctx(ms.master_models()):
        db.drop_tables(ms.master_models(), safe=True)
    db.close()
    ms.init_master_store(store_url)
    ms.setup("example.test")
    yield store_url
    ms.close_master_store()


def rows(**filters):
    return audit.search(limit=1000, **filters)["entries"]


def no_secret_anywhere(*secrets):
    dump = json.dumps(rows()) + audit.to_csv(rows())
    for s in secrets:
        assert s not in dump
    for user in ms.SipUser.select():
        assert user.ha1_md5 not in dump and user.ha1_sha256 not in dump


def test_login_failed_login_and_blocked_login_are_recorded_with_the_address(app):
    c = app.test_client()
    assert login(c, "wrong-1").status_code == 401
    assert login(c).status_code == 302
    found = rows()
    assert [e["action"] for e in found] == ["login", "failed login"]
    assert all(e["actor"] == "admin" and e["address"] == "127.0.0.1" for e in found)
    assert found[1]["ok"] is False and found[0]["ok"] is True
    no_secret_anywhere("wrong-1", PASSWORD)


def test_login_flood_is_blocked_and_recorded_without_the_passwords(app):
    c = app.test_client()
    statuses = [login(c, f"guess-{i}").status_code for i in range(8)]
    assert statuses == [401, 401, 401] + [429] * 5
    assert [e["action"] for e in rows()] == ["login blocked"] + ["failed login"] * 3
    no_secret_anywhere(*[f"guess-{i}" for i in range(8)])


def test_forwarded_for_header_does_not_change_the_address(app):
    c = app.test_client()
    page = c.get("/login").get_data(as_text=True)
    c.post(
        "/login",
        data={"csrf_token": token(page), "username": "admin", "password": "x"},
        headers={"X-Forwarded-For": "203.0.113.9"},
        environ_base={"REMOTE_ADDR": "127.0.0.7"},
    )
    assert rows()[0]["address"] == "127.0.0.7"


def test_user_changes_have_before_and_after_but_never_the_password_or_ha1(app):
    c = app.test_client()
    login(c)
    page = c.get("/users").get_data(as_text=True)
    c.post("/users", data={"csrf_token": token(page), "username": "zed", "password": "zed-pw-1"})
    c.post("/users", data={"csrf_token": token(page), "username": "zed", "password": "zed-pw-2"})
    c.post("/users/zed/delete", data={"csrf_token": token(page)})
    c.post("/users/nobody/delete", data={"csrf_token": token(page)})
    saved = rows(action="user saved")
    assert [e["target"] for e in saved] == ["zed", "zed"]
    assert saved[1]["before"] == {"exists": False}
    assert saved[1]["after"] == {"exists": True, "enabled": True}
    assert saved[0]["before"] == {"exists": True, "enabled": True}
    assert saved[0]["after"] == {"exists": True, "enabled": True, "credentials changed": True}
    assert "configuration 2" in saved[0]["result"] and saved[0]["actor"] == "admin"
    deleted = rows(action="user deleted")
    assert deleted[1]["after"] == {"exists": False} and deleted[1]["before"]["exists"]
    assert deleted[0]["result"] == "No user nobody."
    no_secret_anywhere("zed-pw-1", "zed-pw-2", PASSWORD)


def test_api_changes_and_failed_basic_auth_are_recorded(app):
    c = app.test_client()
    r = c.post("/api/users", json={"username": "amy", "password": "amy-pw"}, headers=basic())
    assert r.status_code == 201
    r = c.post("/api/users", json={"username": "bad name", "password": "pw"}, headers=basic())
    assert r.status_code == 400
    assert c.delete("/api/users/amy", headers=basic("nope")).status_code == 401
    assert c.post("/api/nodes/node1/drain", json={"on": True}, headers=basic()).status_code == 400
    r = c.post("/api/dns", json={"weights": {"node1": 70}}, headers=basic())
    assert r.status_code == 200
    found = rows()
    assert [e["action"] for e in found] == [
        "dns weights",
        "drain",
        "failed login",
        "user saved",
        "user saved",
    ]
    dns, drain, failed, bad, good = found
    assert dns["before"] == {"weights": {"node1": 50}} and dns["after"] == {
        "weights": {"node1": 70}
    }
    assert drain["target"] == "node1" and not drain["ok"] and "no bus" in drain["result"]
    assert failed["actor"] == "admin" and "HTTP Basic refused" in failed["result"]
    assert not bad["ok"] and "username" in bad["result"] and good["ok"]
    assert good["after"] == {"exists": True, "enabled": True}
    no_secret_anywhere("amy-pw", "nope", PASSWORD)


def test_unauthenticated_changes_leave_no_action_row(app):
    c = app.test_client()
    c.post("/users", data={"username": "x", "password": "y"})
    c.post("/api/users", json={"username": "x", "password": "y"})
    assert rows() == [] and ms.count_users() == 0


def test_page_filters_csv_and_api(app):
    c = app.test_client()
    login(c)
    c.get("/")
    audit.record('=HYPERLINK("http://evil")', "failed login", address="127.0.0.9", ok=False)
    page = c.get("/audit?action=login").get_data(as_text=True)
    assert "<td>login</td>" in page and "HYPERLINK" not in page
    page = c.get("/audit?failed=1").get_data(as_text=True)
    assert "HYPERLINK(&#34;http://evil&#34;)" in page or "HYPERLINK(&quot;" in page
    assert c.get("/audit?since=soon").status_code == 400
    text = c.get("/audit.csv").get_data(as_text=True)
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == list(audit.FIELDS)
    assert table[1][1].startswith("'=")  # a spreadsheet does not run it
    r = c.get("/api/audit?actor=admin", headers=basic())
    assert r.status_code == 200 and r.json["total"] == 1 and r.json["retention_days"] == 365
    assert c.get("/api/audit").status_code == 401
    assert c.get("/api/audit?limit=x", headers=basic()).status_code == 400
    assert c.get("/api/audit?format=csv", headers=basic()).mimetype == "text/csv"


def test_retention_setting_prunes_old_rows_and_is_itself_audited(app):
    c = app.test_client()
    login(c)
    audit.record("admin", "old", now=1000.0)
    page = c.get("/audit").get_data(as_text=True)
    r = c.post(
        "/audit/retention", data={"csrf_token": token(page), "days": "30"}, follow_redirects=True
    )
    assert "kept 30 days" in r.get_data(as_text=True)
    assert rows(action="old") == []
    change = rows(action="audit retention")[0]
    assert change["before"] == {"days": 365} and change["after"] == {"days": 30}
    r = c.post(
        "/audit/retention", data={"csrf_token": token(page), "days": "0"}, follow_redirects=True
    )
    assert "Retention not changed" in r.get_data(as_text=True) and audit.retention_days() == 30
    assert c.post("/audit/retention", data={"days": "1"}).status_code == 400  # no CSRF token
    assert c.post("/api/audit/retention", json={"days": 7}, headers=basic()).json == {
        "retention_days": 7
    }
    assert c.post("/api/audit/retention", json={"days": "7"}, headers=basic()).status_code == 400


def test_store_on_both_backends_scrubs_bounds_and_prunes(master):
    audit.record(
        "admin",
        "x" * 500,
        "t",
        "127.0.0.1",
        before={"password": "pw", "nested": [{"ha1_md5": "abc", "ok": 1}]},
        after={"secret_key": "s", "name": "n"},
        now=5000.0,
    )
    e = rows()[0]
    assert len(e["action"]) == audit.MAX_TEXT
    assert e["before"] == {"password": "[redacted]", "nested": [{"ha1_md5": "[redacted]", "ok": 1}]}
    assert e["after"] == {"secret_key": "[redacted]", "name": "n"}
    for i in range(5):
        audit.record("admin", "act", f"n{i}", now=10_000.0 + i)
    assert audit.search(target="n3")["total"] == 1
    assert audit.search(since=10_002.0, until=10_004.0)["total"] == 2
    assert audit.search(actor="admin", limit=2)["total"] == 6
    with pytest.raises(StoreError):
        audit.set_retention_days(0)
    assert audit.prune(now=5000.0 + 365 * 86400 + 1) == 1
    assert audit.search()["total"] == 5


def test_join_tokens_joins_and_removals_are_recorded_without_the_token_or_secret(tmp_path):
    from actors.bus import generate_keypair
    from tests.test_join_api import SECRET, post, request_for

    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    app = create_app(
        {"SECRET_KEY": "k", "CLUSTER_SECRET": SECRET, "MASTER_KEY": generate_keypair()[0]}, Poked()
    )
    try:
        c = app.test_client()
        tok = c.post("/api/tokens", headers=basic()).json["token"]
        assert post(c, request_for(1, tok)).status_code == 201
        assert post(c, request_for(2, tok)).status_code in (400, 401, 403, 409)  # spent
        node = ms.list_nodes()[0]["node_id"]
        assert c.delete(f"/api/nodes/{node}", headers=basic()).status_code == 200
        made, joined, refused, removed = (
            rows(action=a)
            for a in ("join token made", "node joined", "join refused", "node removed")
        )
        assert made[0]["actor"] == "admin" and made[0]["ok"]
        assert joined[0]["actor"] == "join token" and joined[0]["target"] == node
        assert not refused[0]["ok"] and refused[0]["result"]
        assert removed[0]["before"]["exists"] and removed[0]["after"] == {"exists": False}
        assert removed[0]["before"]["sip"] == "192.0.2.11:5060"
        no_secret_anywhere(tok, SECRET)
    finally:
        ms.close_master_store()


def test_over_the_cap_failed_rows_go_before_the_admins_changes(master, monkeypatch):
    monkeypatch.setattr(audit, "MAX_ENTRIES", 5)
    for i in range(3):
        audit.record("admin", "user saved", f"u{i}", now=1000.0 + i)
    for i in range(6):
        audit.record("?", "failed login", ok=False, now=2000.0 + i)
    assert audit.prune(now=2100.0) == 4
    kept = rows()
    assert [e["target"] for e in kept if e["ok"]] == ["u2", "u1", "u0"]
    assert [e["at"] for e in kept if not e["ok"]] == [2005.0, 2004.0]


def test_dial_plan_changes_keep_only_the_parts_that_changed(app):
    c = app.test_client()
    gw = {"name": "carrier", "host": "localhost", "port": 5080, "transport": "udp"}
    r = c.post("/api/dialplan/gateways", json=gw, headers=basic())
    assert r.status_code in (200, 201), r.get_data(as_text=True)
    r = c.post(
        "/api/dialplan/rules",
        json={"rule": {"pattern": "9.", "strip": 1, "gateways": ["nowhere"]}},
        headers=basic(),
    )
    assert r.status_code == 400
    refused, added = rows(action="dial plan changed")
    assert added["ok"] and added["target"] == "dial plan"
    assert (
        added["before"] == {"gateways": []} and added["after"]["gateways"][0]["name"] == "carrier"
    )
    assert not refused["ok"] and refused["before"] is None and "nowhere" in refused["result"]


def test_a_state_too_large_is_kept_as_its_beginning_still_json(master):
    audit.record("admin", "big", after={"rules": ["x" * 100] * 100})
    after = rows()[0]["after"]
    assert after["cut at"] == audit.MAX_DETAIL // 2 and after["text"].startswith('{"rules"')
