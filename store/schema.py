"""Schema versions: every database of Tandem says which schema it holds and migrates forward.

Each schema (``node``, ``master``) has a number in the ``schema_versions``
table of its database and a list of migrations, one per version after the
first; version 1 is the schema as releases before versioning made it (so
a database without the table but with any of the schema's tables is
version 1).
On start, :func:`migrate` brings a database to the current version, one
migration per transaction (DDL is transactional on SQLite and PostgreSQL,
so a migration that fails leaves the version it started from); a new
database gets every table at once and the current number. A database newer
than the release is refused: a rolled-back release must not write into a
schema it does not know.

Migrations take a ``playhouse.migrate`` migrator (``add_column``,
``add_index``, ``rename_column``... on either backend) and the database.
"""

import logging
from collections.abc import Callable, Sequence

import peewee
from playhouse.migrate import SchemaMigrator

from store.db import StoreError

log = logging.getLogger(__name__)

Migration = Callable[[SchemaMigrator, peewee.Database], None]
"""A step from one version to the next."""


class SchemaVersion(peewee.Model):
    """The version of one schema in this database."""

    name = peewee.TextField(primary_key=True)
    version = peewee.IntegerField()

    class Meta:
        table_name = "schema_versions"


def current_version(migrations: Sequence[Migration]) -> int:
    """The version a schema with these migrations is at: 1 + how many there are."""
    return 1 + len(migrations)


def stored_version(db: peewee.Database, name: str) -> int | None:
    """The version of schema ``name`` that ``db`` says it holds (None: not recorded)."""
    with db.bind_ctx([SchemaVersion]):
        if not SchemaVersion.table_exists():  # type: ignore[no-untyped-call]
            return None
        row = SchemaVersion.get_or_none(SchemaVersion.name == name)
        return None if row is None else int(row.version)


def migrate(
    db: peewee.Database,
    name: str,
    models: Sequence[type[peewee.Model]],
    migrations: Sequence[Migration],
) -> int:
    """Bring schema ``name`` of ``db`` (its tables: ``models``) to the current version,
    creating it when new; return the version it was at (0 for a new database)."""
    target = current_version(migrations)
    try:
        with db.bind_ctx([SchemaVersion]):
            db.create_tables([SchemaVersion], safe=True)
            found = stored_version(db, name)
            if found is None:
                # Any table of the schema there: a database of the releases before versions.
                tables = set(db.get_tables())
                found = 1 if any(m._meta.table_name in tables for m in models) else 0
            if found > target:
                raise StoreError(
                    f"the {name} database has schema version {found}, newer than "
                    f"this release's {target}: run the release that wrote it "
                    "(or a newer one)"
                )
            if found == 0:
                with db.atomic():
                    db.create_tables(models, safe=True)
                    _stamp(name, target)
                return 0
            migrator = SchemaMigrator.from_database(db)
            for version in range(found + 1, target + 1):
                with db.atomic():
                    migrations[version - 2](migrator, db)
                    _stamp(name, version)
                log.info("%s database migrated to schema version %d", name, version)
            if found == target:
                _stamp(name, target)
            db.create_tables(models, safe=True)
    except peewee.DatabaseError as exc:
        raise StoreError(
            f"cannot bring the {name} database to schema version {target}: {exc}"
        ) from exc
    return found


def _stamp(name: str, version: int) -> None:
    (
        SchemaVersion.insert(name=name, version=version)
        .on_conflict(conflict_target=[SchemaVersion.name], preserve=[SchemaVersion.version])
        .execute()
    )
