"""Backups of the master: one consistent archive while it writes, restored whole or not at
all on SQLite and PostgreSQL, hostile archives refused, the schedule's retention, and
with real processes a master restored onto a new data folder that the nodes accept."""

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import time

import gevent
import pytest

from store import audit
from store import backup as archive
from store import schema
from store import master as ms
from store.db import open_database
from store.migrations import MASTER_MIGRATIONS
from tests.test_web import PASSWORD, Poked, login, token
from web import create_app
from web.backups import BackupPlan, BackupScheduler, make_backup, restore_backup
from web.settings import MasterSettings, SettingsError, init_files

WRITER = """
import sys, time
from store import audit, master as ms
ms.init_master_store(sys.argv[1])
for i in range(int(sys.argv[2])):
    with ms.master_db.atomic():
        ms.new_version(f"pair {i}")
        audit.record("writer", "pair", str(i))
    print(i, flush=True)
"""


def fresh(url: str) -> None:
    db = open_database(url)
    with db.bind_ctx(ms.master_models()):
        db.drop_tables(ms.master_models(), safe=True)
    db.close()


@pytest.fixture
def data(tmp_path, store_url):
    """A master's data folder with keys and a database of each backend, some rows in it."""
    fresh(store_url)
    settings = MasterSettings(
        data_dir=str(tmp_path / "data"),
        database=store_url,
        config_path=str(tmp_path / "master.toml"),
    )
    (tmp_path / "master.toml").write_text('[master]\ndomain = "example.test"\n')
    init_files(settings)
    ms.init_master_store(store_url)
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    ms.save_users([(f"u{i}", f"pw{i}") for i in range(50)], "import")
    ms.save_node("node1", "127.0.0.11:5060", "tcp://127.0.0.11:7003", "k" * 40)
    audit.record("admin", "user saved", "u1", "127.0.0.1", after={"exists": True})
    yield settings
    ms.close_master_store()


def table(model):
    return [tuple(r) for r in model.select().order_by(model._meta.primary_key).tuples()]


def test_backup_then_restore_onto_a_fresh_database_gives_the_same_master(data, tmp_path):
    path = str(tmp_path / "b.tar.gz")
    manifest = make_backup(data, path, "9.9")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert manifest["tables"]["master_users"]["rows"] == 50 and manifest["release"] == "9.9"
    before = {m: table(m) for m in ms.master_models()}
    ms.close_master_store()
    fresh(data.database_url)
    target = MasterSettings(data_dir=str(tmp_path / "new"), database=data.database_url)
    restore_backup(target, path)
    assert {m: table(m) for m in ms.master_models()} == before
    for name in (
        "master.public",
        "master.secret",
        "session.key",
        "cluster.secret",
        "admin-password",
    ):
        with open(target.path(name)) as a, open(data.path(name)) as b:
            assert a.read() == b.read()
        assert stat.S_IMODE(os.stat(target.path(name)).st_mode) == 0o600
    with open(target.path("restored-master.toml")) as f:
        assert "domain" in f.read()
    assert ms.check_admin("admin", PASSWORD)
    audit.record("admin", "after restore")  # ids go on after the restored ones (PG sequence)
    assert ms.new_version("next") == max(v[0] for v in before[ms.ConfigVersion]) + 1
    with pytest.raises(SettingsError, match="fresh data directory"):
        restore_backup(target, path)


def test_restore_refuses_a_database_with_data_and_leaves_it_alone(data, tmp_path):
    path = str(tmp_path / "b.tar.gz")
    make_backup(data, path)
    target = MasterSettings(data_dir=str(tmp_path / "new"), database=data.database_url)
    with pytest.raises(archive.BackupError, match="already holds data"):
        restore_backup(target, path)
    assert ms.count_users() == 50 and not os.path.exists(target.path("master.secret"))


def test_the_archive_is_one_moment_while_another_process_writes(data, tmp_path):
    ms.CallRecord.insert_many(
        [
            {
                "call_id": f"c{i}",
                "caller": "a",
                "callee": "b",
                "started_at": float(i),
                "outcome": "completed",
            }
            for i in range(20_000)
        ]
    ).execute()
    ms.ConfigVersion.delete().execute()
    audit.AuditEntry.delete().execute()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, data.database_url, "100000"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert writer.stdout.readline().strip() == "0"  # it writes now
        path = str(tmp_path / "b.tar.gz")
        manifest = make_backup(data, path)
        running = writer.poll() is None
    finally:
        writer.kill()
        writer.wait(10)
    assert running  # the writer went on during the whole backup
    versions = manifest["tables"]["master_versions"]["rows"]
    pairs = manifest["tables"]["master_audit"]["rows"]
    assert versions == pairs and versions > 0


def rewrite(path: str, out: str, change) -> None:
    """Copy the archive ``path`` to ``out`` with ``change(name, bytes)`` applied to members."""
    with tarfile.open(path, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for info in src.getmembers():
            data = change(info.name, src.extractfile(info).read())
            if data is None:
                continue
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


def test_damaged_or_forged_archives_are_refused_and_restore_nothing(data, tmp_path):
    path = str(tmp_path / "b.tar.gz")
    make_backup(data, path)
    ms.close_master_store()
    fresh(data.database_url)
    target = MasterSettings(data_dir=str(tmp_path / "new"), database=data.database_url)

    def tampered(name, raw):
        return raw.replace(b'"u7"', b'"mallory"') if name == "db/master_users.jsonl" else raw

    bad = str(tmp_path / "tampered.tar.gz")
    rewrite(path, bad, tampered)
    with pytest.raises(archive.BackupError, match="does not match the manifest"):
        restore_backup(target, bad)
    assert not os.path.exists(target.data_dir)  # refused whole before anything is made
    ms.init_master_store(data.database_url)
    assert ms.count_users() == 0 and ms.Admin.select().count() == 0  # all or nothing

    def evil(name, raw):
        if name != "manifest.json":
            return raw
        manifest = json.loads(raw)
        manifest["files"]["../../evil"] = "0" * 64
        return json.dumps(manifest).encode()

    now = schema.current_version(MASTER_MIGRATIONS)

    def newer(name, raw):
        if name != "manifest.json":
            return raw
        return raw.replace(b'"schema": %d' % now, b'"schema": %d' % (now + 1))

    future = str(tmp_path / "future.tar.gz")
    rewrite(path, future, newer)
    with pytest.raises(archive.BackupError, match=f"newer than this release's {now}"):
        restore_backup(
            MasterSettings(data_dir=str(tmp_path / "n1"), database=data.database_url), future
        )
    forged = str(tmp_path / "forged.tar.gz")
    rewrite(path, forged, evil)
    restore_backup(
        MasterSettings(data_dir=str(tmp_path / "n2"), database=data.database_url), forged
    )
    assert not os.path.exists(tmp_path / "evil") and not os.path.exists(tmp_path.parent / "evil")
    ms.close_master_store()
    fresh(data.database_url)

    def huge(name, raw):
        return b" " * (archive.MAX_MANIFEST + 1) if name == "manifest.json" else raw

    big = str(tmp_path / "big.tar.gz")
    rewrite(path, big, huge)
    for wrong in (big, str(tmp_path / "master.toml")):
        with pytest.raises(archive.BackupError):
            restore_backup(
                MasterSettings(data_dir=str(tmp_path / "n3"), database=data.database_url), wrong
            )


def test_an_archive_of_one_huge_row_or_countless_members_is_refused(data, tmp_path):
    path = str(tmp_path / "b.tar.gz")
    make_backup(data, path)
    ms.close_master_store()
    fresh(data.database_url)

    def huge_row(name, raw):  # 4 MiB without a newline: compresses to almost nothing
        return b"x" * (4 * archive.MAX_ROW) if name == "db/master_users.jsonl" else raw

    bomb = str(tmp_path / "bomb.tar.gz")
    rewrite(path, bomb, huge_row)
    assert os.path.getsize(bomb) < 100_000
    target = MasterSettings(data_dir=str(tmp_path / "n"), database=data.database_url)
    with pytest.raises(archive.BackupError, match="row over"):
        restore_backup(target, bomb)
    many = str(tmp_path / "many.tar.gz")
    with tarfile.open(path, "r:gz") as src, tarfile.open(many, "w:gz") as dst:
        for k in range(archive.MAX_MEMBERS + 1):
            dst.addfile(tarfile.TarInfo(f"junk/{k}"), io.BytesIO(b""))
        for info in src.getmembers():
            dst.addfile(info, src.extractfile(info))
    with pytest.raises(archive.BackupError, match="more than"):
        restore_backup(target, many)
    ms.init_master_store(data.database_url)
    assert ms.count_users() == 0


def test_schedule_keeps_the_newest_archives_only(data, tmp_path):
    data.backup = {"every": 3600, "keep": 2}
    plan = BackupPlan.of(data)
    assert plan.dir == data.path("backups")
    scheduler = BackupScheduler(data, plan)
    assert scheduler._due_in(1000.0) == 60.0
    made = [scheduler.run_once(1_700_000_000.0 + 10 * i) for i in range(3)]
    assert sorted(os.listdir(plan.dir)) == [os.path.basename(p) for p in made[1:]]
    assert stat.S_IMODE(os.stat(plan.dir).st_mode) == 0o700
    assert 3500 < scheduler._due_in(time.time()) <= 3600
    for wrong in ({"every": 5}, {"keep": 0}, {"every": -1}, {"nope": 1}):
        data.backup = wrong
        with pytest.raises(SettingsError):
            BackupPlan.of(data)


def test_dashboard_download_is_for_admins_with_the_token_and_is_audited(data, tmp_path):
    app = create_app({"SECRET_KEY": "k", "MASTER_SETTINGS": data}, Poked())
    c = app.test_client()
    assert c.post("/backup").status_code in (302, 400)
    login(c)
    page = c.get("/backup").get_data(as_text=True)
    assert c.post("/backup").status_code == 400
    r = c.post("/backup", data={"csrf_token": token(page)})
    assert r.status_code == 200 and r.mimetype == "application/gzip"
    out = tmp_path / "download.tar.gz"
    out.write_bytes(r.data)
    assert archive.read_manifest(str(out))["tables"]["master_users"]["rows"] == 50
    assert not [n for n in os.listdir(data.data_dir) if n.startswith(".download-")]
    row = audit.search(action="backup downloaded")["entries"][0]
    assert row["actor"] == "admin" and row["ok"]


def api(url: str, password: str, method: str = "GET", body: dict | None = None) -> dict:
    import base64
    import urllib.request

    req = urllib.request.Request(
        url, method=method, data=json.dumps(body).encode() if body is not None else None
    )
    req.add_header(
        "Authorization", "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
    )
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_for(check, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(step)
    return None


def test_master_restored_onto_a_new_data_folder_is_accepted_by_the_node(tmp_path):
    from loadtest.harness import ROOT, Cluster, free_port
    from store.files import write_private
    from tests.test_dashboard_browser import run_master
    from tests.test_master_push import registered

    def config(name: str, port: int, nodes: str = "") -> str:
        path = str(tmp_path / f"{name}.toml")
        write_private(
            path,
            f'[master]\nlisten = "127.0.0.1:{port}"\n'
            f'data_dir = "{tmp_path}/{name}"\ndomain = "example.test"\n'
            f"push_interval = 0.3\n[backup]\nevery = 0\n" + nodes,
        )
        return path

    def start(path: str, log: str) -> subprocess.Popen:
        with open(tmp_path / log, "wb") as out:
            return subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "run.py"), "master", "--config", path],
                stdout=out,
                stderr=out,
                cwd=ROOT,
            )

    def acked(url: str, password: str, version: int):
        return lambda: api(f"{url}/api/config", password)["nodes"]["node1"] >= version

    port_a, port_b = free_port(), free_port()
    first = config("a", port_a)
    assert run_master("init", config=first).returncode == 0
    public = (tmp_path / "a" / "master.public").read_text().strip()
    password = (tmp_path / "a" / "admin-password").read_text().strip()
    cluster = Cluster(str(tmp_path), 1, settings={"master_key": public, "alone_wait": 0.5})
    m, n = cluster.members["node1"], cluster.nodes[0]
    nodes = (
        f'[[nodes]]\nid = "node1"\nsip = "{n.address}:{n.port}"\n'
        f'control = "{m.control}"\npublic_key = "{m.public_key}"\n'
    )
    first = config("a", port_a, nodes)
    procs = []
    try:
        cluster.start()
        procs.append(start(first, "a.log"))
        url = f"http://127.0.0.1:{port_a}"
        assert wait_for(lambda: api(f"{url}/api/config", password), 20), (
            tmp_path / "a.log"
        ).read_text()
        version = api(
            f"{url}/api/users", password, "POST", {"username": "amy", "password": "amy-pw"}
        )["version"]
        assert wait_for(acked(url, password, version), 10)
        assert registered(n, "amy", "amy-pw")
        path = str(tmp_path / "master-backup.tar.gz")
        out = run_master("backup", path, config=first)  # while master a runs
        assert out.returncode == 0, out.stderr
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        procs[0].terminate()
        procs[0].wait(10)

        second = config("b", port_b, nodes)
        out = run_master("restore", path, config=second)
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "b" / "master.public").read_text().strip() == public
        procs.append(start(second, "b.log"))
        url = f"http://127.0.0.1:{port_b}"
        assert wait_for(lambda: api(f"{url}/api/config", password), 20), (
            tmp_path / "b.log"
        ).read_text()
        assert [u["username"] for u in api(f"{url}/api/users", password)["users"]] == ["amy"]
        version = api(
            f"{url}/api/users", password, "POST", {"username": "bob", "password": "bob-pw"}
        )["version"]
        assert wait_for(acked(url, password, version), 10), (tmp_path / "b.log").read_text()
        assert registered(n, "bob", "bob-pw") and registered(n, "amy", "amy-pw")
        out = run_master("restore", path, config=second)
        assert out.returncode == 2 and "fresh data directory" in out.stderr
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        cluster.stop()


def test_a_scheduled_backup_leaves_the_masters_loop_running(data, tmp_path):
    rows = [
        {
            "call_id": f"c{i}",
            "caller": "a",
            "callee": "b",
            "started_at": float(i),
            "outcome": "completed",
        }
        for i in range(40_000)
    ]
    with ms.master_db.atomic():
        for chunk in range(0, len(rows), 100):
            ms.CallRecord.insert_many(rows[chunk : chunk + 100]).execute()
    data.backup = {"every": 3600, "keep": 1}
    scheduler = BackupScheduler(data, BackupPlan.of(data))
    gaps, running = [], [True]

    def tick():
        last = time.monotonic()
        while running[0]:
            gevent.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = gevent.spawn(tick)
    started = time.monotonic()
    path = scheduler.run_once(time.time())
    took = time.monotonic() - started
    running[0] = False
    ticker.join(2)
    assert archive.read_manifest(path)["tables"]["master_cdrs"]["rows"] == 40_000
    # A loop blocked by the backup ticks once, after it; one blocked for most of a long
    # backup shows a gap nearly as long. (Shorter stalls are the machine's: under load
    # the process itself waits for a core.)
    assert len(gaps) >= 3 and max(gaps) < max(0.5, took * 0.75), (took, max(gaps))
