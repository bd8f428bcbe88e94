"""The master's database on SQLite and PostgreSQL: users as HA1, versions, nodes, admins."""

import os
import stat

import pytest

from store import master as ms
from store.db import StoreError, open_database
from store.users import compute_ha1s


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


def test_user_is_kept_as_ha1_and_each_change_is_a_version(master):
    assert ms.current_version() == 0
    v1 = ms.save_user("alice", "alice-secret")
    user = ms.SipUser.get(ms.SipUser.username == "alice")
    assert user.ha1_md5 == compute_ha1s("alice", "example.test", "alice-secret")["MD5"]
    assert "alice-secret" not in repr(ms.config_for(v1))
    v2 = ms.save_user("alice", "other")
    assert v2 > v1 == 1
    assert ms.count_users() == 1
    config = ms.config_for(v2)
    assert config["domain"] == "example.test" and config["version"] == v2
    assert config["users"][0]["ha1_md5"] == compute_ha1s("alice", "example.test", "other")["MD5"]
    assert ms.delete_user("alice") == v2 + 1
    assert ms.delete_user("alice") is None
    assert ms.config_for(ms.current_version())["users"] == []


def test_bad_user_is_refused_and_makes_no_version(master):
    with pytest.raises(StoreError):
        ms.save_user("bad name", "pw")
    with pytest.raises(StoreError):
        ms.save_user("bob", "")
    assert ms.current_version() == 0 and ms.count_users() == 0


def test_bulk_save_is_one_version(master):
    v = ms.save_users([(f"u{i}", f"pw{i}") for i in range(250)], "import")
    assert v == ms.current_version() == 1
    assert ms.count_users() == 250
    assert [u["username"] for u in ms.list_users("u24")] == ["u24"] + [f"u24{i}" for i in range(10)]


def test_nodes_remember_their_acknowledged_version(master):
    ms.save_node("node1", "127.0.0.11:5060", "tcp://127.0.0.11:7003", "k" * 40)
    ms.record_ack("node1", 3)
    ms.record_ack("node1", 4, "no reply")
    (node,) = ms.list_nodes()
    assert node["acked_version"] == 3 and node["last_error"] == "no reply"


def test_admin_password_is_hashed_slowly(master):
    ms.add_admin("admin", "s3cret-pw")
    row = ms.Admin.get(ms.Admin.username == "admin")
    assert "s3cret-pw" not in row.password_hash and row.password_hash.startswith("scrypt:")
    assert ms.check_admin("admin", "s3cret-pw")
    assert not ms.check_admin("admin", "wrong")
    assert not ms.check_admin("nobody", "s3cret-pw")


def test_sqlite_database_is_private(tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "master.db").st_mode) == 0o600
    finally:
        ms.close_master_store()


def test_replace_users_writes_only_what_differs_and_removes_the_rest(store):
    from store.users import load_user_ha1s, replace_users

    pushed = [
        {"username": f"u{i}", "ha1_md5": f"{i:032x}", "ha1_sha256": f"{i:064x}"} for i in range(300)
    ]
    assert replace_users("example.test", pushed) == (300, 0)
    assert replace_users("example.test", pushed) == (0, 0)
    pushed[5] = {**pushed[5], "ha1_md5": "f" * 32}
    assert replace_users("example.test", pushed[:200]) == (1, 100)
    users = load_user_ha1s("example.test")
    assert len(users) == 200 and users["u5"]["MD5"] == "f" * 32
    with pytest.raises(StoreError):
        replace_users("example.test", [{"username": "x", "ha1_md5": "zz", "ha1_sha256": ""}])
    assert len(load_user_ha1s("example.test")) == 200


def test_join_tokens_are_single_use_and_a_refused_join_spends_none(master):
    from actors.bus import generate_keypair
    from store import join_tokens as jt
    from web.join import JoinError, join

    def body(k, tok, **extra):
        host = f"192.0.2.{k}"
        return {
            "token": tok,
            "sip": f"{host}:5060",
            "bus": f"tcp://{host}:7001",
            "snapshot": f"tcp://{host}:7002",
            "control": f"tcp://{host}:7003",
            "public_key": generate_keypair()[0],
            **extra,
        }

    tok, _ = jt.make_token(600)
    assert join(body(1, tok), "ab" * 32, generate_keypair()[0])["node_id"] == "node1"
    with pytest.raises(JoinError, match="already used"):
        join(body(2, tok), "ab" * 32, generate_keypair()[0])
    tok2, _ = jt.make_token(600)
    with pytest.raises(JoinError, match="belongs to node1"):
        join(body(2, tok2, id="node1"), "ab" * 32, generate_keypair()[0])
    assert jt.open_tokens() == 1
    assert join(body(2, tok2), "ab" * 32, generate_keypair()[0])["node_id"] == "node2"
    assert jt.open_tokens() == 0 and [n["node_id"] for n in ms.list_nodes()] == ["node1", "node2"]
