"""The users page and API: edit, disable and enable, search and paging, CSV export
(formula cells quoted) and the background import with its progress, through Flask's
test client; hostile input refused."""

import csv
import io
import time

import pytest

from store import master as ms
from tests.test_web import PASSWORD, Poked, basic, login, token
from web import MAX_UPLOAD, create_app


@pytest.fixture
def app(tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    app = create_app({"SECRET_KEY": "test-key"}, Poked())
    yield app
    app.extensions["user_imports"].wait(10)
    ms.close_master_store()


def state(name: str):
    row = ms.SipUser.get_or_none(ms.SipUser.username == name)
    return None if row is None else (row.enabled, row.ha1_sha256)


def test_every_user_route_needs_login_and_csrf(app):
    ms.save_user("amy", "amy-pw")
    c = app.test_client()
    for path in ("/users.csv", "/users/import/1"):
        r = c.get(path)
        assert r.status_code == 302 and "/login" in r.headers["Location"], path
    assert c.post("/users/amy/enable", data={"on": "0"}).status_code in (302, 400)
    for method, path in (
        ("get", "/api/users.csv"),
        ("patch", "/api/users/amy"),
        ("post", "/api/users/import"),
        ("get", "/api/users/import/1"),
    ):
        r = getattr(c, method)(path)
        assert r.status_code == 401 and "amy" not in r.get_data(as_text=True), path
    login(c)
    assert c.post("/users/amy/enable", data={"on": "0"}).status_code == 400  # no CSRF token
    assert state("amy")[0] is True
    assert c.post("/users/amy/delete").status_code == 400
    r = c.post("/users/import", data={"file": (io.BytesIO(b"username,password\nx,y\n"), "x.csv")})
    assert r.status_code == 400 and app.extensions["user_imports"].get(1) is None
    assert ms.count_users() == 1


def test_disable_enable_and_change_password_keep_what_they_should(app):
    ms.save_user("amy", "amy-pw")
    c = app.test_client()
    login(c)
    page = c.get("/users").get_data(as_text=True)
    pokes = app.extensions["pusher"].count
    r = c.post(
        "/users/amy/enable", data={"csrf_token": token(page), "on": "0"}, follow_redirects=True
    )
    assert "User amy disabled" in r.get_data(as_text=True) and state("amy")[0] is False
    assert app.extensions["pusher"].count == pokes + 1  # pushed to every node at once
    ha1 = state("amy")[1]
    c.post("/users", data={"csrf_token": token(page), "username": "amy", "password": "new"})
    assert state("amy")[0] is False and state("amy")[1] != ha1  # a new password, still off
    assert "new-username" in c.get("/users?edit=amy").get_data(as_text=True)
    assert 'value="amy"' in c.get("/users?edit=amy").get_data(as_text=True)
    r = c.patch("/api/users/amy", json={"enabled": True}, headers=basic())
    assert r.status_code == 200 and state("amy")[0] is True
    for bad in ({"enabled": "yes"}, {}, [], None):
        assert c.patch("/api/users/amy", json=bad, headers=basic()).status_code == 400
    assert c.patch("/api/users/nobody", json={"enabled": False}, headers=basic()).status_code == 404
    assert (
        c.post(
            "/api/users",
            json={"username": "amy", "password": "x", "enabled": "no"},
            headers=basic(),
        ).status_code
        == 400
    )
    r = c.post(
        "/users/nobody/enable", data={"csrf_token": token(page), "on": "1"}, follow_redirects=True
    )
    assert "No user nobody" in r.get_data(as_text=True)
    audit = c.get("/api/audit?action=user enabled or disabled", headers=basic()).json
    assert len(audit["entries"]) >= 2


def test_search_state_filter_and_paging(app):
    ms.save_users([(f"u{k:03d}", "pw") for k in range(150)], "many")
    ms.set_user_enabled("u007", False)
    c = app.test_client()
    login(c)
    page = c.get("/users?q=u00").get_data(as_text=True)
    assert "u009" in page and "u010" not in page
    page = c.get("/users?state=disabled").get_data(as_text=True)
    assert "u007" in page and "u008" not in page
    page = c.get("/users").get_data(as_text=True)
    assert "u099" in page and "u100" not in page and 'id="next-users"' in page
    assert "u149" in c.get("/users?offset=100").get_data(as_text=True)
    assert c.get("/users?offset=9999999999").status_code == 200  # past the end: empty
    for bad in ("offset=99999999999999999999", "offset=-1", "state=maybe", "q=" + "x" * 65):
        r = c.get(f"/users?{bad}")
        assert r.status_code == 400 and "Filter not used" in r.get_data(as_text=True), bad
        assert c.get(f"/api/users?{bad}", headers=basic()).status_code == 400, bad
    found = c.get("/api/users?state=disabled", headers=basic()).json
    assert found["found"] == 1 and found["users"][0]["username"] == "u007"


def test_export_quotes_formula_cells_and_holds_no_secret(app):
    ms.save_users(
        [("=cmd", "pw"), ("+1", "pw"), ("-2", "pw"), ("=HYPERLINK(1)", "pw"), ("bob", "pw")],
        "hostile names",
    )
    c = app.test_client()
    login(c)
    r = c.get("/users.csv")
    assert r.mimetype == "text/csv" and "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(r.get_data(as_text=True))))
    assert rows[0] == ["username", "enabled", "created_at"]
    names = [row[0] for row in rows[1:]]
    assert sorted(names) == ["'+1", "'-2", "'=HYPERLINK(1)", "'=cmd", "bob"]
    text = r.get_data(as_text=True)
    assert state("bob")[1] not in text
    api = c.get("/api/users.csv?q=bob", headers=basic()).get_data(as_text=True)
    assert api.splitlines()[1].startswith("bob,yes,")


def wait_job(c, job_id, seen=None, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(0)  # let the import greenlet take a step
        job = c.get(f"/api/users/import/{job_id}", headers=basic()).json
        if seen is not None:
            seen.append(job)
        if not job["running"]:
            return job
        assert time.monotonic() < deadline, job


def test_import_runs_in_the_background_with_visible_progress(app, monkeypatch):
    monkeypatch.setattr(ms, "IMPORT_CHUNK", 50)
    body = "username,password\n" + "".join(f"p{k:04d},pw{k}\n" for k in range(1000))
    c = app.test_client()
    r = c.post("/api/users/import?name=people.csv", data=body, headers=basic())
    assert r.status_code == 202 and r.json["running"]
    seen: list = []
    job = wait_job(c, r.json["id"], seen)
    assert job["phase"] == "done" and job["total"] == 1000 and job["version"] > 0
    assert any(s["phase"] in ("hashing", "writing") and 0 < s["done"] < 1000 for s in seen)
    assert ms.count_users() == 1000 and app.extensions["pusher"].count >= 1
    login(c)
    page = c.get(f"/users/import/{job['id']}").get_data(as_text=True)
    assert "1000 users imported in" in page and "refresh" not in page
    assert c.get("/users/import/999").status_code == 404
    assert c.get("/api/users/import/999", headers=basic()).status_code == 404


def test_a_bad_row_names_file_and_line_and_writes_nothing(app):
    ms.save_user("keep", "keep-pw")
    before = state("keep")
    c = app.test_client()
    body = (
        "username,password\nkeep,changed\n"
        + "".join(f"q{k},pw\n" for k in range(500))
        + "bad user,pw\n"
    )
    job = wait_job(
        c, c.post("/api/users/import?name=staff.csv", data=body, headers=basic()).json["id"]
    )
    assert job["phase"] == "failed" and "staff.csv line 503" in job["error"]
    assert ms.count_users() == 1 and state("keep") == before
    for bad, what in (
        (b"username,password\nx,p\nx,q\n", "already on line 2"),
        (b"name,pass\n", "header"),
        (b"username,password\nx,p,extra\n", "line 2"),
    ):
        job = wait_job(c, c.post("/api/users/import", data=bad, headers=basic()).json["id"])
        assert job["phase"] == "failed" and what in job["error"], bad
    for empty in (b"", b"username,password\n"):
        job = wait_job(c, c.post("/api/users/import", data=empty, headers=basic()).json["id"])
        assert job["phase"] == "failed" and "holds no user" in job["error"]
    r = c.post("/api/users/import", data=b"username,password\n\xff\xfe,x\n", headers=basic())
    assert r.status_code == 400 and "not UTF-8" in r.json["error"]
    assert ms.count_users() == 1


def test_oversized_or_concurrent_imports_are_refused(app):
    c = app.test_client()
    big = b"username,password\n" + b"u,p\n" * (MAX_UPLOAD // 4 + 1)
    assert c.post("/api/users/import", data=big, headers=basic()).status_code == 413
    body = "username,password\n" + "".join(f"c{k},pw\n" for k in range(3000))
    first = c.post("/api/users/import", data=body, headers=basic())
    second = c.post("/api/users/import", data=body, headers=basic())
    assert first.status_code == 202 and second.status_code == 409
    assert wait_job(c, first.json["id"])["phase"] == "done"
    assert ms.count_users() == 3000


def test_bulk_save_inserts_then_replaces_on_each_backend(store_url):
    from tests.test_backup import fresh

    fresh(store_url)
    ms.init_master_store(store_url)
    try:
        ms.setup("example.test")
        ms.save_users([("ann", "one"), ("ben", "one")], "first")
        ms.set_user_enabled("ben", False)
        before = state("ben")
        ms.save_users([("ben", "two"), ("cid", "two")], "second")
        assert ms.count_users() == 3 and state("ben")[0] is False  # state kept
        assert state("ben")[1] != before[1] and state("ann")[0] is True
        with pytest.raises(ms.StoreError, match="invalid username"):
            ms.save_users([("dan", "x"), ("bad user", "x")], "third")
        assert ms.count_users() == 3
    finally:
        ms.close_master_store()
