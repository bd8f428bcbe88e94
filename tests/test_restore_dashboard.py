"""The dashboard's restore: an uploaded archive checked whole, staged, and applied by the
master's own restart; hostile uploads refused with nothing changed; with real processes a
running master restored from its dashboard that its node still accepts."""

import http.client
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import time

import pytest
import requests

from store import audit
from store import master as ms
from tests.test_backup import rewrite, wait_for
from tests.test_web import PASSWORD, Poked, login, token
from web import backups, create_app
from web.backups import RESULT, STAGED, apply_staged, make_backup
from web.settings import MasterSettings, init_files


@pytest.fixture
def master(tmp_path):
    """A master's data folder with its database in it (the default), a few users."""
    settings = MasterSettings(data_dir=str(tmp_path / "data"), config_path="")
    init_files(settings)
    ms.init_master_store(settings.database_url)
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    ms.save_users([("amy", "amy-pw"), ("bob", "bob-pw")], "import")
    yield settings
    ms.close_master_store()


def client(settings, restarts=None):
    app = create_app(
        {
            "SECRET_KEY": "k",
            "MASTER_SETTINGS": settings,
            "RESTART": (lambda: restarts.append(1)) if restarts is not None else None,
        },
        Poked(),
    )
    return app.test_client()


def upload(c, path, password=PASSWORD, csrf=True):
    page = c.get("/backup", follow_redirects=True).get_data(as_text=True)  # or the login page
    form = {"password": password}
    if csrf:
        form["csrf_token"] = token(page)
    with open(path, "rb") as f:
        form["archive"] = (io.BytesIO(f.read()), "b.tar.gz")
    return c.post("/backup/restore", data=form, content_type="multipart/form-data")


def state(settings) -> tuple:
    return (sorted(os.listdir(settings.data_dir)), ms.count_users(), ms.current_version())


def test_a_checked_upload_is_staged_and_applied_at_the_next_start(master, tmp_path):
    path = str(tmp_path / "b.tar.gz")
    make_backup(master, path)
    ms.save_user("carl", "carl-pw")  # after the backup: gone after the restore
    handed_out = ms.current_version()
    restarts: list = []
    c = client(master, restarts)
    login(c)
    r = upload(c, path)
    assert r.status_code == 303, r.get_data(as_text=True)
    assert stat.S_IMODE(os.stat(master.path(STAGED)).st_mode) == 0o600
    assert "archive is staged" in c.get("/backup").get_data(as_text=True)
    row = audit.search(action="restore staged")["entries"][0]
    assert row["ok"] and row["actor"] == "admin" and "staged" in row["result"]
    time.sleep(0.7)  # the restart is asked once the answer is out
    assert restarts == [1]
    ms.close_master_store()

    result = apply_staged(master)
    assert result["ok"] and result["by"] == "admin", result
    assert os.path.isdir(result["kept"]) and os.path.exists(os.path.join(result["kept"], STAGED))
    ms.init_master_store(master.database_url)
    assert {u["username"] for u in ms.list_users()} == {"amy", "bob"}
    assert ms.current_version() == handed_out + 1 == result["version"]  # past the numbers used
    assert audit.search(action="restore applied")["entries"][0]["actor"] == "admin"
    assert not os.path.exists(master.path(STAGED))
    page = client(master).get("/backup")  # not logged in: the login page
    assert page.status_code == 302
    c = client(master)
    login(c)
    assert "applied" in c.get("/backup").get_data(as_text=True)
    with open(master.path(RESULT)) as f:
        assert json.load(f)["ok"]


def test_a_staged_archive_that_fails_at_the_start_leaves_the_master_as_it_was(master, tmp_path):
    with open(master.path(STAGED), "wb") as f:
        f.write(b"not an archive")
    before = state(master)
    ms.close_master_store()
    result = apply_staged(master)
    assert not result["ok"] and "not a readable backup archive" in result["error"]
    ms.init_master_store(master.database_url)
    assert ms.count_users() == before[1] and ms.current_version() == before[2]
    assert os.path.exists(master.path("restore-failed.tar.gz"))
    assert not [d for d in os.listdir(master.data_dir) if d.startswith("before-restore-")]
    assert [d for d in os.listdir(master.data_dir) if d.startswith("failed-restore-")]
    assert audit.search(action="restore failed")["entries"][0]["ok"] is False


def members(path: str, out: str, extra: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for info in src.getmembers():
            dst.addfile(info, src.extractfile(info))
        dst.addfile(extra, io.BytesIO(data))


def test_hostile_uploads_are_refused_and_change_nothing(master, tmp_path, monkeypatch):
    good = str(tmp_path / "b.tar.gz")
    make_backup(master, good)
    tampered = str(tmp_path / "tampered.tar.gz")
    rewrite(
        good,
        tampered,
        lambda name, raw: (
            raw.replace(b'"amy"', b'"eve"') if name == "db/master_users.jsonl" else raw
        ),
    )
    climbing = str(tmp_path / "climbing.tar.gz")
    members(good, climbing, tarfile.TarInfo("../../evil"))
    link = tarfile.TarInfo("files/master.secret")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    linked = str(tmp_path / "linked.tar.gz")
    members(good, linked, link)
    restarts: list = []
    before = state(master)

    c = client(master, restarts)
    r = upload(c, good)  # not logged in
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    login(c)
    assert upload(c, good, csrf=False).status_code == 400
    r = upload(c, good, password="wrong")
    assert r.status_code == 403 and "wrong password" in r.get_data(as_text=True)
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b" + os.urandom(4000))
    for path, why in (
        (str(corrupt), "not a readable backup archive"),
        (tampered, "does not match the manifest"),
        (climbing, "not one of ours"),
        (linked, "not one of ours"),
    ):
        r = upload(c, path)
        assert r.status_code == 400 and why in r.get_data(as_text=True), path
        assert "nothing changed" in r.get_data(as_text=True)
    monkeypatch.setattr(backups, "MAX_ARCHIVE", os.path.getsize(good) - 1)
    assert upload(c, good).status_code == 413
    assert state(master) == before and restarts == []
    rows = audit.search(action="restore staged", failed=True)["entries"]
    assert any("does not match the manifest" in r["result"] for r in rows)
    assert any("not one of ours" in r["result"] for r in rows)


def dashboard_restore(url: str, password: str, path: str) -> requests.Response:
    """Log in to the dashboard at ``url`` and upload the archive ``path`` to restore it."""
    s = requests.Session()
    page = s.get(f"{url}/login", timeout=10).text
    s.post(
        f"{url}/login",
        data={"csrf_token": token(page), "username": "admin", "password": password},
        timeout=10,
    )
    page = s.get(f"{url}/backup", timeout=10).text
    assert "Restore and restart" in page
    with open(path, "rb") as f:
        return s.post(
            f"{url}/backup/restore",
            timeout=30,
            allow_redirects=False,
            data={"csrf_token": token(page), "password": password},
            files={"archive": ("backup.tar.gz", f, "application/gzip")},
        )


def test_restored_from_the_dashboard_the_running_master_comes_back_accepted(tmp_path):
    """A running master with a node, restored from its dashboard, then the same archive
    restored from the dashboard of a fresh master (a new host) that the node accepts."""
    from loadtest.harness import ROOT, Cluster, free_port
    from store.files import write_private
    from tests.test_backup import api
    from tests.test_dashboard_browser import run_master
    from tests.test_master_push import registered

    def write_config(name: str, port: int, nodes: str = "") -> str:
        path = str(tmp_path / f"{name}.toml")
        write_private(
            path,
            f'[master]\nlisten = "127.0.0.1:{port}"\n'
            f'data_dir = "{tmp_path}/{name}"\ndomain = "example.test"\n'
            f"push_interval = 0.3\n[backup]\nevery = 0\n" + nodes,
        )
        return path

    def start(config: str, name: str) -> subprocess.Popen:
        with open(tmp_path / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "run.py"), "master", "--config", config],
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )

    port = free_port()
    config = write_config("m", port)
    assert run_master("init", config=config).returncode == 0
    password = (tmp_path / "m" / "admin-password").read_text().strip()
    public = (tmp_path / "m" / "master.public").read_text().strip()
    cluster = Cluster(str(tmp_path), 1, settings={"master_key": public, "alone_wait": 0.5})
    m, n = cluster.members["node1"], cluster.nodes[0]
    config = write_config(
        "m",
        port,
        f'[[nodes]]\nid = "node1"\nsip = "{n.address}:{n.port}"\n'
        f'control = "{m.control}"\npublic_key = "{m.public_key}"\n',
    )
    url = f"http://127.0.0.1:{port}"

    def acked(version):
        return lambda: api(f"{url}/api/config", password)["nodes"]["node1"] >= version

    def users():
        return sorted(u["username"] for u in api(f"{url}/api/users", password)["users"])

    procs = []
    try:
        cluster.start()
        procs.append(start(config, "m"))
        assert wait_for(lambda: api(f"{url}/api/config", password), 20), (
            tmp_path / "m.log"
        ).read_text()
        version = api(
            f"{url}/api/users", password, "POST", {"username": "amy", "password": "amy-pw"}
        )["version"]
        assert wait_for(acked(version), 10)
        path = str(tmp_path / "backup.tar.gz")
        assert run_master("backup", path, config=config).returncode == 0
        version = api(
            f"{url}/api/users", password, "POST", {"username": "bob", "password": "bob-pw"}
        )["version"]
        assert wait_for(acked(version), 10) and registered(n, "bob", "bob-pw")

        # An upload over the cap is refused from its Content-Length, before it is read.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.putrequest("POST", "/backup/restore")
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(backups.MAX_ARCHIVE + 1))
        conn.endheaders()
        conn.send(b"--x\r\n")
        assert conn.getresponse().status == 413
        conn.close()
        assert not os.path.exists(tmp_path / "m" / STAGED) and users() == ["amy", "bob"]

        r = dashboard_restore(url, password, path)
        assert r.status_code == 303, r.text
        # The same process (execv) comes back on the same port with the archive's users.
        assert wait_for(lambda: users() == ["amy"], 30), (tmp_path / "m.log").read_text()
        assert procs[0].poll() is None
        kept = [d for d in os.listdir(tmp_path / "m") if d.startswith("before-restore-")]
        assert len(kept) == 1 and os.path.exists(tmp_path / "m" / kept[0] / "master.db")
        assert (tmp_path / "m" / "master.public").read_text().strip() == public
        now = api(f"{url}/api/config", password)["version"]
        assert now > version and wait_for(acked(now), 10), (tmp_path / "m.log").read_text()
        assert registered(n, "amy", "amy-pw") and not registered(n, "bob", "bob-pw")
        rows = api(f"{url}/api/audit?action=restore+applied", password)["entries"]
        assert rows and rows[0]["actor"] == "admin"
        s = requests.Session()
        page = s.get(f"{url}/login", timeout=10).text
        s.post(
            f"{url}/login",
            data={"csrf_token": token(page), "username": "admin", "password": password},
            timeout=10,
        )
        page = s.get(f"{url}/backup", timeout=10).text
        assert re.search(r"restore-result.*applied", page, re.S), page
        procs[0].terminate()
        procs[0].wait(10)

        # A new host: a fresh master (init, no node) restores the archive from its dashboard.
        fresh_port = free_port()
        fresh = write_config("fresh", fresh_port)
        assert run_master("init", config=fresh).returncode == 0
        fresh_password = (tmp_path / "fresh" / "admin-password").read_text().strip()
        procs.append(start(fresh, "fresh"))
        url = f"http://127.0.0.1:{fresh_port}"
        assert wait_for(lambda: api(f"{url}/api/config", fresh_password), 20)
        r = dashboard_restore(url, fresh_password, path)
        assert r.status_code == 303, r.text
        assert wait_for(lambda: users() == ["amy"], 30), (tmp_path / "fresh.log").read_text()
        assert (tmp_path / "fresh" / "master.public").read_text().strip() == public
        version = api(
            f"{url}/api/users", password, "POST", {"username": "cat", "password": "cat-pw"}
        )["version"]
        assert wait_for(acked(version), 10), (tmp_path / "fresh.log").read_text()
        assert registered(n, "cat", "cat-pw") and registered(n, "amy", "amy-pw")
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        cluster.stop()
