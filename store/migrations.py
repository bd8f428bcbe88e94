"""The schema migrations of the node's and the master's databases (run by ``store.schema``).

Each list holds the step to version 2, then 3, and so on; version 1 is the
schema of the releases before versions. A step never edits an earlier one:
once released, a migration is history.
"""

import peewee
from playhouse.migrate import SchemaMigrator, migrate

from store.schema import Migration


def _add_column(
    migrator: SchemaMigrator, db: peewee.Database, table: str, name: str, field: peewee.Field
) -> None:
    """Add column ``name`` to ``table`` unless it is there; a table not there yet is left to
    the final ``create_tables``, which makes it whole (a database older than the table)."""
    if table not in db.get_tables():
        return
    if name not in {c.name for c in db.get_columns(table)}:
        migrate(migrator.add_column(table, name, field))


def _node_2_binding_expiry_index(migrator: SchemaMigrator, db: peewee.Database) -> None:
    """Index the bindings' expiry: the periodic purge of expired rows was a full scan."""
    migrate(migrator.add_index("bindings", ("expires_at",), False))


NODE_MIGRATIONS: tuple[Migration, ...] = (_node_2_binding_expiry_index,)
"""The node database's steps (``store.models``)."""


def _master_2_audit_log(migrator: SchemaMigrator, db: peewee.Database) -> None:
    """The audit log's table (``store.audit``)."""
    from store.audit import AuditEntry

    db.create_tables([AuditEntry])


def _master_3_alarms(migrator: SchemaMigrator, db: peewee.Database) -> None:
    """The alarms' table (``store.alarms``)."""
    from store.alarms import Alarm

    db.create_tables([Alarm])


def _master_4_join(migrator: SchemaMigrator, db: peewee.Database) -> None:
    """Nodes' snapshot endpoints (the peer list a push carries) and the join tokens' table."""
    from store.master import ClusterNode, JoinToken

    _add_column(
        migrator, db, ClusterNode._meta.table_name, "snapshot", peewee.TextField(default="")
    )
    db.create_tables([JoinToken])


def _master_5_emergency_calls(migrator: SchemaMigrator, db: peewee.Database) -> None:
    """The marks of emergency call records (``store.master.EmergencyCall``)."""
    from store.master import EmergencyCall

    db.create_tables([EmergencyCall])


def _master_6_tls_port(migrator: SchemaMigrator, db: peewee.Database) -> None:
    """The SIP over TLS port each node reports (its ``_sips._tcp`` SRV record)."""
    from store.master import ClusterNode

    _add_column(
        migrator, db, ClusterNode._meta.table_name, "tls_port", peewee.IntegerField(default=0)
    )


def _master_7_version_content(migrator: SchemaMigrator, db: peewee.Database) -> None:
    """The kept content of configuration versions (``store.versions``)."""
    from store.versions import VersionContent

    db.create_tables([VersionContent])


def _master_8_cdr_lost(migrator: SchemaMigrator, db: peewee.Database) -> None:
    """When a survivor ended a call whose node died (``store.master.CallRecord.lost_at``)."""
    from store.master import CallRecord

    _add_column(migrator, db, CallRecord._meta.table_name, "lost_at", peewee.DoubleField(null=True))


MASTER_MIGRATIONS: tuple[Migration, ...] = (
    _master_2_audit_log,
    _master_3_alarms,
    _master_4_join,
    _master_5_emergency_calls,
    _master_6_tls_port,
    _master_7_version_content,
    _master_8_cdr_lost,
)
"""The master database's steps (``store.master``)."""
