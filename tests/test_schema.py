"""Schema versions: node and master databases of the previous schema migrate forward on
start (both backends), a newer one is refused, a failing step leaves the version before."""

import peewee
import pytest

from store import audit, schema
from store import master as ms
from store.db import StoreError, open_database
from store.migrations import MASTER_MIGRATIONS, NODE_MIGRATIONS
from store.models import MODELS, Binding, User, close_store, init_store
from store.users import compute_ha1s


def dropped(url: str, models) -> peewee.Database:
    """An empty database at ``url`` (no tables of ``models``, no versions)."""
    db = open_database(url)
    with db.bind_ctx([*models, schema.SchemaVersion]):
        db.drop_tables([*models, schema.SchemaVersion], safe=True)
    return db


def indexes(db, table):
    return {i.name for i in db.get_indexes(table)}


def test_a_node_database_of_the_previous_schema_migrates_and_keeps_its_rows(store_url):
    db = dropped(store_url, MODELS)
    with db.bind_ctx(MODELS):  # version 1: these tables, no expiry index, no version
        db.create_tables(MODELS)
        db.execute_sql("DROP INDEX bindings_expires_at")
        User.create(username="amy", domain="example.test", ha1_md5="0" * 32, ha1_sha256="0" * 64)
        Binding.create(
            aor="sip:amy@example.test",
            key="k",
            contact="sip:amy@h",
            expires_at=9e9,
            call_id="c",
            cseq=1,
            origin="node1",
            epoch=1,
            seq=1,
            updated_at=1.0,
        )
    assert "bindings_expires_at" not in indexes(db, "bindings")
    db.close()
    db = init_store(store_url)
    try:
        assert schema.stored_version(db, "node") == schema.current_version(NODE_MIGRATIONS) == 2
        assert "bindings_expires_at" in indexes(db, "bindings")
        assert User.get().username == "amy" and Binding.get().contact == "sip:amy@h"
    finally:
        close_store()
    db = init_store(store_url)  # a second start changes nothing
    try:
        assert schema.stored_version(db, "node") == 2 and Binding.select().count() == 1
    finally:
        close_store()


def test_a_master_database_of_the_previous_schema_migrates_and_keeps_its_rows(store_url):
    db = dropped(store_url, ms.master_models())
    with db.bind_ctx(ms.MASTER_MODELS):  # version 1: no audit log, no version
        db.create_tables(ms.MASTER_MODELS)
    db.close()
    ms.master_db.initialize(open_database(store_url))
    ms.setup("example.test")
    ha1 = compute_ha1s("amy", "example.test", "amy-pw")  # as a version-1 release wrote them
    ms.SipUser.create(username="amy", ha1_md5=ha1["MD5"], ha1_sha256=ha1["SHA-256"])
    ms.ConfigVersion.create(reason="user amy saved")
    ms.add_admin("admin", "pw")
    assert not audit.AuditEntry.table_exists()
    ms.close_master_store()
    db = ms.init_master_store(store_url)
    try:
        assert schema.stored_version(db, "master") == schema.current_version(MASTER_MIGRATIONS)
        assert ms.count_users() == 1 and ms.check_admin("admin", "pw")
        assert ms.current_version() == 1
        assert ms.new_version("after the migration") == 2  # its content is kept from now on
        audit.record("admin", "after the migration")
        assert audit.search()["total"] == 1
    finally:
        ms.close_master_store()


def test_a_new_database_is_made_at_the_current_version(store_url):
    dropped(store_url, MODELS).close()
    db = init_store(store_url)
    try:
        assert schema.stored_version(db, "node") == 2
        assert "bindings_expires_at" in indexes(db, "bindings")
    finally:
        close_store()


def test_a_database_newer_than_the_release_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/node.db"
    db = init_store(url)
    with db.bind_ctx([schema.SchemaVersion]):
        schema.SchemaVersion.update(version=99).execute()
    close_store()
    with pytest.raises(StoreError, match="schema version 99, newer than this release's 2"):
        init_store(url)
    close_store()


class Thing(peewee.Model):
    name = peewee.TextField()

    class Meta:
        table_name = "things"


def test_a_failing_step_leaves_the_version_before_it(tmp_path):
    from playhouse.migrate import migrate

    db = open_database(f"sqlite:///{tmp_path}/t.db")
    with db.bind_ctx([Thing]):
        assert schema.migrate(db, "toy", [Thing], []) == 0
        Thing.create(name="a")

    def add_size(migrator, db):
        migrate(migrator.add_column("things", "size", peewee.IntegerField(default=1)))

    def broken(migrator, db):
        migrate(migrator.add_column("things", "colour", peewee.TextField(default="red")))
        db.execute_sql("SELECT * FROM no_such_table")

    with db.bind_ctx([Thing]), pytest.raises(StoreError, match="schema version 3"):
        schema.migrate(db, "toy", [Thing], [add_size, broken])
    assert schema.stored_version(db, "toy") == 2
    columns = {c.name for c in db.get_columns("things")}
    assert "size" in columns and "colour" not in columns
    assert db.execute_sql("SELECT name, size FROM things").fetchall() == [("a", 1)]
    db.close()
