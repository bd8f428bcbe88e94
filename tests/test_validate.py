"""A change is checked before it becomes a version: each bad kind is refused with a clear
message, and no version is made (nothing would be pushed)."""

import base64

import pytest

from store import dialplan as dp
from store import master as ms
from store import versions
from store.db import StoreError, open_database
from store.validate import resolves
from web import create_app


@pytest.fixture
def master(store_url):
    db = open_database(store_url)
    with db.bind_ctx(ms.master_models()):
        db.drop_tables(ms.master_models(), safe=True)
    db.close()
    ms.init_master_store(store_url)
    ms.setup("example.test")
    ms.save_user("alice", "alice-pw")
    yield
    ms.close_master_store()


def refused(change, match: str) -> None:
    """``change()`` raises a StoreError matching ``match``; no version, content unchanged."""
    before, kept = ms.current_version(), versions.content(ms.current_version())
    users = ms.list_users()
    with pytest.raises(StoreError, match=match):
        change()
    assert ms.current_version() == before and ms.list_users() == users
    assert versions.content(before) == kept


def test_a_rule_that_cannot_compile_is_refused(master):
    refused(lambda: dp.save_rule({"pattern": "[", "gateway": "nowhere"}), "rule")


def test_a_stored_plan_that_cannot_compile_makes_no_version(master):
    def change():
        with ms.master_db.atomic():
            ms.set_setting("dialplan", {"gateways": [{"name": "g"}], "rules": [], "users": {}})
            ms.new_version("plan edited by hand")

    refused(change, "the dial plan does not compile: .*host is required")


def test_a_gateway_that_does_not_resolve_is_refused(master):
    refused(
        lambda: dp.save_gateway({"name": "carrier", "host": "no-such-gw.invalid"}),
        "gateway carrier: host no-such-gw.invalid does not resolve",
    )
    assert dp.save_gateway({"name": "carrier", "host": "localhost"}) == ms.current_version()
    assert dp.save_gateway({"name": "other", "host": "192.0.2.7"}) == ms.current_version()
    assert not resolves("no-such-gw.invalid") and resolves("[2001:db8::1]")


def test_a_user_without_a_password_is_refused(master):
    refused(lambda: ms.save_user("bob", ""), "password")
    refused(
        lambda: ms.save_users([("bob", "bob-pw"), ("carol", "")], "import"),
        "user carol has no password",
    )

    def no_ha1():
        with ms.master_db.atomic():
            ms.SipUser.create(username="dave", ha1_md5="", ha1_sha256="")
            ms.new_version("user dave saved")

    refused(no_ha1, "user dave has no password")
    assert ms.list_users("dave") == []


def test_a_domain_that_is_not_a_host_name_is_refused(master):
    def change():
        with ms.master_db.atomic():
            ms.set_setting("domain", "bad domain!")
            ms.new_version("domain changed")

    refused(change, "domain refused: invalid domain 'bad domain!'")
    assert ms.domain() == "example.test"


def test_the_api_answers_the_reason_and_makes_no_version(master):
    ms.add_admin("admin", "admin-pw")
    client = create_app({"SECRET_KEY": "k"}).test_client()
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:admin-pw").decode()}
    before = ms.current_version()
    r = client.post(
        "/api/dialplan/gateways", json={"name": "gw", "host": "nowhere.invalid"}, headers=auth
    )
    assert r.status_code == 400 and "does not resolve" in r.json["error"]
    r = client.post("/api/users", json={"username": "bob", "password": ""}, headers=auth)
    assert r.status_code == 400 and "password" in r.json["error"]
    assert ms.current_version() == before


def test_only_the_newest_versions_keep_their_content(master):
    first = ms.current_version()
    for i in range(versions.KEEP + 2):
        ms.save_user(f"u{i}", "pw")
    newest = ms.current_version()
    assert versions.content(first) is None and versions.content(newest - versions.KEEP) is None
    assert versions.content(newest - versions.KEEP + 1) is not None
    assert versions.VersionContent.select().count() == versions.KEEP
    assert not any(
        v["restorable"]
        for v in versions.list_versions(100)
        if v["version"] <= newest - versions.KEEP
    )


def test_restore_makes_an_earlier_version_current_again(master):
    v1 = ms.current_version()
    dp.save_gateway({"name": "carrier", "host": "127.0.0.1"})
    ms.save_user("bob", "bob-pw")
    ms.delete_user("alice")
    restored = versions.restore(v1)
    assert restored == ms.current_version() > v1
    assert [u["username"] for u in ms.list_users()] == ["alice"]
    assert dp.pushed_dialplan() is None
    assert versions.content(restored)["users"] == versions.content(v1)["users"]
    assert versions.restore(9999) is None


def test_rollback_command_restores_an_earlier_version(tmp_path):
    from tests.test_dashboard_browser import run_master

    config = str(tmp_path / "master.toml")
    with open(config, "w") as f:
        f.write(
            f'[master]\nlisten = "127.0.0.1:1"\ndata_dir = "{tmp_path}/data"\n'
            'domain = "example.test"\n'
        )
    assert run_master("init", config=config).returncode == 0
    url = f"sqlite:///{tmp_path}/data/master.db"
    ms.init_master_store(url)
    try:
        old = ms.save_user("alice", "pw")
        ms.save_user("bob", "pw")
    finally:
        ms.close_master_store()
    out = run_master("rollback", str(old), config=config)
    assert out.returncode == 0 and f"version {old} restored as configuration" in out.stdout
    bad = run_master("rollback", "999", config=config)
    assert bad.returncode == 2 and "no version 999" in bad.stderr
    assert run_master("rollback", "x", config=config).returncode == 2
    ms.init_master_store(url)
    try:
        assert [u["username"] for u in ms.list_users()] == ["alice"]
        assert ms.current_version() == old + 2
    finally:
        ms.close_master_store()


def test_kept_content_stays_under_its_byte_budget(master, monkeypatch):
    size = versions.VersionContent.get(
        versions.VersionContent.version == ms.current_version()
    ).content
    monkeypatch.setattr(versions, "MAX_KEPT_BYTES", len(size) * 3 + 1)
    for i in range(5):
        ms.save_user(f"u{i}", "pw")
    kept = [v["version"] for v in versions.list_versions() if v["restorable"]]
    newest = ms.current_version()
    assert kept and kept[0] == newest and len(kept) < 4
