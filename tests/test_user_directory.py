"""The node's in-memory user directory: reloads only when the store's users change."""

import pytest

from store.user_directory import UserDirectory
from store import users
from store.models import close_store, init_store


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def store(tmp_path):
    yield init_store("sqlite:///%s" % (tmp_path / "store.db"))
    close_store()


def test_reload_follows_the_users_version(store, monkeypatch):
    users.add_user("alice", "example.com", "pw")
    clock = Clock()
    directory = UserDirectory("example.com", refresh=10.0, clock=clock)
    directory.reload()
    loads = []
    real_load = users.load_user_ha1s
    monkeypatch.setattr(users, "load_user_ha1s", lambda d: loads.append(d) or real_load(d))
    assert directory.lookup("alice") is not None
    clock.now += 11
    assert directory.lookup("alice") is not None
    assert loads == [], "nothing changed, so no full reload"
    assert users.set_user_enabled("alice", "example.com", False)
    assert directory.lookup("alice") is not None, "within refresh the memory answers"
    clock.now += 11
    assert directory.lookup("alice") is None
    assert loads == ["example.com"]


def test_a_new_user_is_found_at_once(store):
    directory = UserDirectory("example.com", clock=Clock())
    directory.reload()
    assert directory.lookup("bob") is None
    users.add_user("bob", "example.com", "pw")
    assert directory.lookup("bob") == users.get_user_ha1("bob", "example.com")


def test_store_failure_keeps_the_users_in_memory(store, monkeypatch, caplog):
    users.add_user("alice", "example.com", "pw")
    clock = Clock()
    directory = UserDirectory("example.com", clock=clock)
    directory.reload()

    def broken():
        raise users.StoreError("database is locked")

    monkeypatch.setattr(users, "users_version", broken)
    clock.now += 11
    assert directory.lookup("alice") is not None
    assert "cannot refresh users" in caplog.text
