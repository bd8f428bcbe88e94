"""Tests of the store package, on SQLite and on a real PostgreSQL."""

import dataclasses
import hashlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sipcore.location import Binding as LocBinding
from store import bindings, users
from store.db import StoreError, open_database, redact_url
from store.models import (
    BINDING_FIELDS,
    close_store,
    get_database,
    get_state,
    incr_state,
    init_store,
    set_state,
)

REPO = Path(__file__).resolve().parents[1]
NOW = 1_760_000_000.123456


def make_binding(i: int, **overrides) -> dict:
    """A complete binding record number ``i``, with field overrides."""
    record = {
        "aor": "sip:user%d@example.com" % (i % 100),
        "key": "<urn:uuid:00000000-0000-0000-0000-%012d>;reg-id=1" % i,
        "contact": "sip:user%d@192.0.2.%d:5060;transport=udp" % (i, i % 250),
        "expires_at": NOW + 3600.5 + i,
        "q": 0.5,
        "call_id": "call-%d@phone" % i,
        "cseq": i + 1,
        "path": ["<sip:edge.example.com;lr>", "<sip:p%d;lr>" % i],
        "instance": "<urn:uuid:00000000-0000-0000-0000-%012d>" % i,
        "reg_id": 1,
        "received": "udp:192.0.2.%d:5060" % (i % 250),
        "user_agent": "Phone/1.0",
        "origin": "node-a",
        "epoch": 3,
        "seq": i,
        "updated_at": NOW + i,
        "deleted": False,
    }
    record.update(overrides)
    return record


def write(records: list[dict]) -> None:
    """Write binding records through the store's one writer, as binding objects."""
    bindings.write_bindings([LocBinding(**record) for record in records])


def by_identity(records: list[dict]) -> dict:
    """Index records by (aor, key)."""
    return {(r["aor"], r["key"]): r for r in records}


# --- the PostgreSQL fixture --------------------------------------------------


@pytest.mark.parametrize(
    "ci, outcome, code, message",
    [
        ("1", "1 passed, 1 error", 1, "PostgreSQL is required when CI is set"),
        ("", "1 passed, 1 skipped", 0, "PostgreSQL tests skipped"),
    ],
)
def test_pg_fixture_without_binaries(tmp_path, ci, outcome, code, message):
    env = dict(os.environ, CI=ci, TANDEM_PG_BIN=str(tmp_path), PYTHONPATH=str(REPO))
    env.pop("TANDEM_PG_URL", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "tests/test_store.py::test_node_state",
        ],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outcome in done.stdout, done.stdout
    assert done.returncode == code
    assert message in done.stdout
    assert "PostgreSQL server binaries" in done.stdout


def test_postgresql_reconnects_after_restart(pg_server):
    init_store(pg_server.url)
    try:
        write([make_binding(1)])
        pg_server.restart()
        with pytest.raises(StoreError, match="nothing written"):
            write([make_binding(2)])
        write([make_binding(3)])
        assert bindings.count_bindings() == 2
    finally:
        close_store()


# --- store.db ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://u:secret@h/db", "unsupported database URL scheme"),
        ("/var/lib/store.db", "unsupported database URL scheme"),
        ("sqlite://host/x.db", "host part"),
        ("sqlite:///", "absolute file path"),
        ("sqlite:///no/such/dir/x.db", "does not exist"),
        ("sqlite:///tmp/x.db?synchronous=sometimes", "bad synchronous"),
        ("sqlite:///tmp/x.db?cache=big", "unknown sqlite URL parameter"),
        ("postgresql://u:secret@127.0.0.1:5432", "names no database"),
    ],
)
def test_open_database_bad_url(url, message):
    with pytest.raises(StoreError, match=message) as info:
        open_database(url)
    assert "secret" not in str(info.value)


def test_open_postgresql_unreachable_is_store_error():
    url = "postgresql://u:secret@127.0.0.1:1/db?connect_timeout=2"
    with pytest.raises(StoreError, match="cannot open database") as info:
        open_database(url)
    assert "secret" not in str(info.value)


def test_redact_url():
    assert redact_url("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d"
    assert redact_url("sqlite:///a.db") == "sqlite:///a.db"


@pytest.mark.parametrize(
    "query, level", [("", 1), ("?synchronous=full", 2), ("?synchronous=OFF", 0)]
)
def test_sqlite_pragmas(tmp_path, query, level):
    db = open_database("sqlite:///%s%s" % (tmp_path / "p.db", query))
    try:
        pragmas = {
            name: db.execute_sql("PRAGMA " + name).fetchone()[0]
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
        assert pragmas == {
            "journal_mode": "wal",
            "synchronous": level,
            "foreign_keys": 1,
            "busy_timeout": 5000,
        }
    finally:
        db.close()


def test_sqlite_memory():
    init_store("sqlite:///:memory:")
    try:
        write([make_binding(1)])
        assert bindings.count_bindings() == 1
    finally:
        close_store()


def test_store_not_initialised():
    close_store()
    with pytest.raises(StoreError, match="not initialised"):
        get_database()
    with pytest.raises(StoreError, match="not initialised"):
        bindings.load_bindings()
    with pytest.raises(StoreError, match="not initialised"):
        users.get_user_ha1("alice", "example.com")


def test_init_store_twice_keeps_data(store, store_url):
    write([make_binding(1)])
    close_store()
    init_store(store_url)
    assert bindings.count_bindings() == 1


# --- store.models: NodeState ------------------------------------------------


def test_node_state(store):
    assert get_state("epoch") is None
    assert get_state("epoch", 0) == 0
    set_state("epoch", 7)
    set_state("peers", {"b": [1, 2]})
    set_state("epoch", 8)
    assert get_state("epoch") == 8
    assert get_state("peers") == {"b": [1, 2]}
    assert incr_state("restarts") == 1
    assert incr_state("restarts") == 2
    assert incr_state("epoch", 10) == 18


# --- store.bindings ---------------------------------------------------------


def test_round_trip_all_fields(store):
    records = [
        make_binding(1),
        make_binding(
            2,
            q=None,
            instance=None,
            reg_id=None,
            received=None,
            user_agent=None,
            path=[],
            key="sip:user2@192.0.2.2:5060",
        ),
        make_binding(
            3, contact='sip:ü@example.com;x="é"', path=["<sip:a;lr>"], expires_at=NOW + 0.000001
        ),
    ]
    write(records)
    loaded = by_identity(bindings.load_bindings())
    assert loaded == by_identity(records)
    for record in loaded.values():
        assert set(record) == set(BINDING_FIELDS)
        assert isinstance(record["deleted"], bool)
        assert isinstance(record["path"], list)


def test_times_keep_double_precision(store):
    write([make_binding(1, expires_at=NOW, updated_at=NOW)])
    (record,) = bindings.load_bindings()
    assert record["expires_at"] == NOW
    assert record["updated_at"] == NOW


def test_upsert_same_key_twice_keeps_newer(store):
    first = make_binding(1)
    newer = make_binding(
        1,
        contact="sip:moved@198.51.100.1",
        cseq=99,
        seq=50,
        expires_at=NOW + 9999,
        path=["<sip:x;lr>"],
        user_agent=None,
        q=None,
        origin="node-b",
        epoch=4,
        received="tcp:198.51.100.1:40000",
    )
    write([first])
    write([newer])
    assert bindings.load_bindings() == [newer]
    assert bindings.count_bindings() == 1


def test_same_key_twice_in_one_batch_last_wins(store):
    older = make_binding(1, cseq=1)
    newer = make_binding(1, cseq=2, contact="sip:new@192.0.2.9")
    write([older, make_binding(2), newer])
    loaded = by_identity(bindings.load_bindings())
    assert len(loaded) == 2
    assert loaded[(newer["aor"], newer["key"])] == newer


def test_write_bindings_stores_each_binding_as_its_record(store):
    """The registrar writes ``sipcore.location.Binding`` objects; each row is
    the one its ``to_record`` would give, and the last of a key wins."""
    objs = [LocBinding.from_record(make_binding(i)) for i in range(1200)]
    objs.append(LocBinding.from_record(make_binding(7, cseq=70, path=[], deleted=True)))
    bindings.write_bindings(objs)
    expected = by_identity([dataclasses.asdict(b) for b in objs])
    assert by_identity(bindings.load_bindings()) == expected
    assert expected[(objs[-1].aor, objs[-1].key)]["cseq"] == 70
    with pytest.raises(StoreError):
        bindings.write_bindings([make_binding(1)])
    with get_database().atomic(), pytest.raises(StoreError):
        bindings.write_bindings(objs[:1])


def stored_as(objs) -> dict:
    """What load_bindings should give for binding objects, by identity."""
    return by_identity([dataclasses.asdict(b) for b in objs])


@pytest.mark.parametrize("size", [1, 2, 3, 31, 45, 256, 257, 600])
def test_write_bindings_sizes_and_null_columns(store, size):
    """Every batch size is split into statements without losing a row, and
    a nullable column that is None in all, some or none of a statement's
    rows comes back as written (SQLite writes the all-None ones as NULL
    literals)."""
    bare = dict(q=None, instance=None, reg_id=None, received=None, user_agent=None, path=[])
    batches = [
        [make_binding(i, **bare) for i in range(size)],
        [make_binding(i, **(bare if i % 3 else {}), deleted=i % 2 == 0) for i in range(size)],
        [make_binding(i, cseq=7, user_agent=None) for i in range(size)],
    ]
    for records in batches:
        objs = [LocBinding.from_record(r) for r in records]
        bindings.write_bindings(objs)
        loaded = by_identity(bindings.load_bindings())
        assert loaded == stored_as(objs)
        assert all(isinstance(r["deleted"], bool) for r in loaded.values())


def test_write_bindings_failure_mid_batch_rolls_back(store):
    """A row the database rejects in a late statement of a batch undoes the
    statements before it; the connection stays usable, outside any
    transaction, for the next write and for peewee's own transactions."""
    kept = [LocBinding.from_record(make_binding(i)) for i in range(5)]
    bindings.write_bindings(kept)
    changed = [LocBinding.from_record(make_binding(i, cseq=50)) for i in range(1200)]
    changed[1100].contact = None
    with pytest.raises(StoreError, match="nothing written"):
        bindings.write_bindings(changed)
    assert not store.in_transaction()
    assert by_identity(bindings.load_bindings()) == stored_as(kept)
    del changed[1100]
    bindings.write_bindings(changed)
    assert bindings.count_bindings() == 1199
    with store.atomic():
        set_state("after", 1)
    assert get_state("after") == 1


def test_sqlite_disk_full_mid_batch_rolls_back(tmp_path):
    """SQLite running out of pages after the first statements of a batch:
    nothing is written and the next write succeeds."""
    db = init_store("sqlite:///%s" % (tmp_path / "full.db"))
    try:
        kept = [LocBinding.from_record(make_binding(i)) for i in range(5)]
        bindings.write_bindings(kept)
        pages = db.execute_sql("PRAGMA page_count").fetchone()[0]
        # Each row fills about a page: the first statement (256 rows) fits.
        db.execute_sql("PRAGMA max_page_count = %d" % (pages + 400))
        big = [LocBinding.from_record(make_binding(i, contact="x" * 3000)) for i in range(1000)]
        with pytest.raises(StoreError, match="full"):
            bindings.write_bindings(big)
        assert not db.in_transaction()
        assert by_identity(bindings.load_bindings()) == stored_as(kept)
        db.execute_sql("PRAGMA max_page_count = 1073741823")
        bindings.write_bindings(big)
        assert bindings.count_bindings() == 1000
    finally:
        close_store()


def test_same_key_different_aor_are_distinct(store):
    one = make_binding(1, aor="sip:a@example.com", key="k")
    two = make_binding(2, aor="sip:b@example.com", key="k")
    write([one, two])
    assert bindings.count_bindings() == 2


def test_large_batch(store):
    records = [make_binding(i) for i in range(5000)]
    write(records)
    assert bindings.count_bindings() == 5000
    assert by_identity(bindings.load_bindings()) == by_identity(records)


@pytest.mark.parametrize("bad", [{"contact": None}, {"expires_at": None}, {"origin": None}])
def test_batch_is_atomic(store, bad):
    kept = make_binding(9000, aor="sip:kept@example.com")
    write([kept])
    records = [make_binding(i) for i in range(5000)]
    records.append(make_binding(5000, **bad))
    changed_kept = dict(kept, contact="sip:changed@192.0.2.1")
    with pytest.raises(StoreError, match="nothing written"):
        write(records + [changed_kept])
    assert bindings.load_bindings() == [kept]
    write(records[:10])
    assert bindings.count_bindings() == 11


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: delattr(b, "seq"), "not a binding"),
        (lambda b: setattr(b, "path", "<sip:x;lr>"), "path must be a list"),
        (lambda b: setattr(b, "path", 5), "path must be a list"),
        (lambda b: setattr(b, "path", None), "path must be a list"),
        (lambda b: setattr(b, "contact", {"not": "a string"}), "nothing written"),
    ],
)
def test_bad_binding_rejected(store, mangle, message):
    binding = LocBinding(**make_binding(2))
    mangle(binding)
    with pytest.raises(StoreError, match=message):
        bindings.write_bindings([LocBinding(**make_binding(1)), binding])
    assert bindings.count_bindings() == 0


def test_record_dict_rejected(store):
    with pytest.raises(StoreError, match="takes binding objects"):
        bindings.write_bindings([{"contact": "sip:x@y"}])


def test_write_refuses_enclosing_transaction(store):
    with store.atomic(), pytest.raises(StoreError, match="inside a transaction"):
        write([make_binding(1)])


def test_empty_batch_is_noop(store):
    bindings.write_bindings([])
    assert bindings.count_bindings(live_only=False) == 0


def test_tombstones(store):
    live = make_binding(1)
    tomb = make_binding(2, deleted=True)
    write([live, tomb])
    everything = by_identity(bindings.load_bindings())
    assert everything == by_identity([live, tomb])
    assert everything[(tomb["aor"], tomb["key"])]["deleted"] is True
    assert bindings.load_bindings(include_deleted=False) == [live]
    assert bindings.count_bindings() == 1
    assert bindings.count_bindings(live_only=False) == 2
    write([dict(live, deleted=True)])
    assert bindings.count_bindings() == 0
    assert bindings.count_bindings(live_only=False) == 2


def test_count_with_now(store):
    write(
        [
            make_binding(1, expires_at=NOW - 1),
            make_binding(2, expires_at=NOW + 1),
            make_binding(3, expires_at=NOW + 1, deleted=True),
        ]
    )
    assert bindings.count_bindings(now=NOW) == 1
    assert bindings.count_bindings(live_only=False, now=NOW) == 2
    assert bindings.count_bindings() == 2


def test_purge_expired(store):
    expired_live = make_binding(1, expires_at=NOW - 10)
    expired_tomb = make_binding(2, expires_at=NOW - 0.001, deleted=True)
    fresh_live = make_binding(3, expires_at=NOW + 10)
    fresh_tomb = make_binding(4, expires_at=NOW + 10, deleted=True)
    edge = make_binding(5, expires_at=NOW)
    write([expired_live, expired_tomb, fresh_live, fresh_tomb, edge])
    assert bindings.purge_expired(NOW) == 2
    assert by_identity(bindings.load_bindings()) == by_identity([fresh_live, fresh_tomb, edge])
    assert bindings.purge_expired(NOW) == 0
    assert bindings.purge_expired(NOW + 11) == 3
    assert bindings.count_bindings(live_only=False) == 0


CHILD = """
import json, sys
from sipcore.location import Binding
from store.models import init_store
from store.bindings import write_bindings
init_store(sys.argv[1])
with open(sys.argv[2]) as handle:
    write_bindings([Binding(**record) for record in json.load(handle)])
sys.stdout.write("written\\n")
sys.stdout.flush()
sys.stdin.read()
"""


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """Read one line of the child's stdout, waiting at most ``timeout``."""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return proc.stdout.readline().decode().strip()


def test_sqlite_batch_survives_sigkill(tmp_path):
    db_path = tmp_path / "durable.db"
    url = "sqlite:///%s" % db_path
    records = [make_binding(i) for i in range(3000)]
    data = tmp_path / "records.json"
    data.write_text(json.dumps(records))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(REPO),
        env=env,
    )
    try:
        line = read_line(proc, timeout=60)
        if line != "written":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(
                "child did not write the batch: %r\n%s" % (line, err.decode(errors="replace"))
            )
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    wal = Path(str(db_path) + "-wal")
    assert wal.exists() and wal.stat().st_size > 0, "no unclean WAL left"
    init_store(url)
    try:
        assert by_identity(bindings.load_bindings()) == by_identity(records)
    finally:
        close_store()


# --- store.users ------------------------------------------------------------


def ha1s(username, realm, password):
    """HA1s computed independently of store.users."""
    secret = ("%s:%s:%s" % (username, realm, password)).encode()
    return {"MD5": hashlib.md5(secret).hexdigest(), "SHA-256": hashlib.sha256(secret).hexdigest()}


def test_compute_ha1s_rfc2617_vector():
    result = users.compute_ha1s("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert result["MD5"] == "939e7578ed9e3c518a452acee763bce9"
    assert result == ha1s("Mufasa", "testrealm@host.com", "Circle Of Life")


def test_add_and_lookup_user(store):
    before = time.time()
    users.add_user("alice", "example.com", "s3cret")
    users.add_user("bob.smith+1", "example.com", "pässword")
    users.add_user("alice", "other.org", "different")
    assert users.get_user_ha1("alice", "example.com") == ha1s("alice", "example.com", "s3cret")
    assert users.get_user_ha1("bob.smith+1", "example.com") == ha1s(
        "bob.smith+1", "example.com", "pässword"
    )
    assert users.get_user_ha1("alice", "other.org") == ha1s("alice", "other.org", "different")
    assert users.get_user_ha1("carol", "example.com") is None
    listed = users.list_users("example.com")
    assert [u["username"] for u in listed] == ["alice", "bob.smith+1"]
    assert all(
        u["enabled"] is True
        and u["domain"] == "example.com"
        and before - 1 <= u["created_at"] <= time.time() + 1
        for u in listed
    )
    assert set(users.load_user_ha1s("example.com")) == {"alice", "bob.smith+1"}


def test_no_plain_password_stored(store):
    users.add_user("alice", "example.com", "VerySecretWord")
    rows = store.execute_sql("SELECT * FROM users").fetchall()
    assert "VerySecretWord" not in repr(rows)


def test_add_existing_user(store):
    users.add_user("alice", "example.com", "one")
    with pytest.raises(StoreError, match="already exists"):
        users.add_user("alice", "example.com", "two")
    users.add_user("alice", "example.com", "two", replace=True)
    assert users.get_user_ha1("alice", "example.com") == ha1s("alice", "example.com", "two")
    assert len(users.list_users("example.com")) == 1


def test_disable_and_delete_user(store):
    users.add_user("alice", "example.com", "pw")
    users.add_user("bob", "example.com", "pw", enabled=False)
    assert users.get_user_ha1("bob", "example.com") is None
    assert set(users.load_user_ha1s("example.com")) == {"alice"}
    assert users.set_user_enabled("bob", "example.com", True)
    assert users.get_user_ha1("bob", "example.com") is not None
    assert not users.set_user_enabled("nobody", "example.com", True)
    assert users.delete_user("alice", "example.com")
    assert not users.delete_user("alice", "example.com")
    assert users.get_user_ha1("alice", "example.com") is None
    assert users.load_user_ha1s("example.com") == {"bob": ha1s("bob", "example.com", "pw")}


def test_users_version_moves_on_every_change(store):
    seen = [users.users_version()]

    def moved():
        seen.append(users.users_version())
        return seen[-1] != seen[-2]

    users.add_user("alice", "example.com", "pw")
    assert moved()
    users.add_user("alice", "example.com", "new", replace=True)
    assert moved()
    assert users.set_user_enabled("alice", "example.com", False)
    assert moved()
    assert users.delete_user("alice", "example.com")
    assert moved()
    users.get_user_ha1("alice", "example.com")
    users.load_user_ha1s("example.com")
    assert not moved()


@pytest.mark.parametrize(
    "username", ["", "al ice", "a:b", "a@b", "tab\t", "new\nline", "bad%zz", None]
)
def test_bad_username(store, username):
    with pytest.raises(StoreError, match="invalid username"):
        users.add_user(username, "example.com", "pw")


@pytest.mark.parametrize("domain", ["", "a b", "user@example.com", "-x"])
def test_bad_domain(store, domain):
    with pytest.raises(StoreError, match="invalid domain"):
        users.add_user("alice", domain, "pw")


def test_empty_password(store):
    with pytest.raises(StoreError, match="password"):
        users.add_user("alice", "example.com", "")


def write_csv(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` as UTF-8; return the path as a string."""
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_import_csv(store, tmp_path):
    path = write_csv(
        tmp_path / "u.csv", '\ufeffusername,password\nalice,one\n\nbob,two\ncarol,"p,w ""q"""\n'
    )
    assert users.import_users_csv(path, "example.com") == 3
    assert users.get_user_ha1("alice", "example.com") == ha1s("alice", "example.com", "one")
    assert users.get_user_ha1("carol", "example.com") == ha1s("carol", "example.com", 'p,w "q"')
    assert users.list_users("other.org") == []


def test_reimport_changes_password(store, tmp_path):
    users.add_user("dave", "example.com", "keep")
    first = write_csv(tmp_path / "1.csv", "username,password\nalice,one\n")
    second = write_csv(tmp_path / "2.csv", "username,password\nalice,new\nbob,b\n")
    users.import_users_csv(first, "example.com")
    created = users.list_users("example.com")[0]["created_at"]
    assert users.import_users_csv(second, "example.com") == 2
    assert users.get_user_ha1("alice", "example.com") == ha1s("alice", "example.com", "new")
    listed = users.list_users("example.com")
    assert [u["username"] for u in listed] == ["alice", "bob", "dave"]
    assert listed[0]["created_at"] == created


@pytest.mark.parametrize(
    "text, message",
    [
        ("username,password\nalice,one\nbob\n", "line 3: expected 2 fields"),
        ("username,password\nalice,one\nbob,two,three\n", "line 3: expected 2"),
        ("username,password\nalice,one\nb@d,two\n", "line 3: invalid username"),
        ("username,password\nalice,one\nbob,\n", "line 3: password"),
        ("username,password\n\nalice,one\nalice,two\n", "line 4: user 'alice' already on line 3"),
        ("user,pass\nalice,one\n", "line 1: header must be"),
    ],
)
def test_import_csv_bad_row(store, tmp_path, text, message):
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(StoreError, match=message) as info:
        users.import_users_csv(path, "example.com")
    assert "bad.csv" in str(info.value)
    assert users.list_users("example.com") == []


def test_import_csv_unreadable(store, tmp_path):
    with pytest.raises(StoreError, match="cannot read users file"):
        users.import_users_csv(str(tmp_path / "missing.csv"), "example.com")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"username,password\nalice,\xe9t\xe9\n")
    with pytest.raises(StoreError, match="not valid UTF-8"):
        users.import_users_csv(str(latin), "example.com")


def test_add_users_in_bulk_checks_all_before_writing(store):
    users.add_user("load0", "example.com", "old")
    assert (
        users.add_users([("load0", "load0-secret"), ("load1", "load1-secret")], "example.com") == 2
    )
    assert users.get_user_ha1("load0", "example.com") == users.compute_ha1s(
        "load0", "example.com", "load0-secret"
    )
    before = users.users_version()
    with pytest.raises(StoreError, match="invalid username"):
        users.add_users([("load2", "x"), ("bad:name", "x")], "example.com")
    assert users.get_user_ha1("load2", "example.com") is None
    assert users.users_version() == before
