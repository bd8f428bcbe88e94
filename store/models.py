"""Peewee models of the store, and the binding of a database to them.

All models use :data:`db_proxy`; :func:`init_store` opens a database from a
URL, binds the proxy to it and creates any missing tables. The rest of the
code should not use these models directly: :mod:`store.bindings` and
:mod:`store.users` offer plain-dict functions on top of them.

Times are unix timestamps (``float`` seconds) stored as double precision:
a single-precision ``REAL`` (peewee's ``FloatField`` on PostgreSQL) would
round a current timestamp to about two minutes.
"""

import json
import logging
import time
from typing import Any, cast

import peewee

from store.db import StoreError, open_database, reset_after_failure
from store.migrations import NODE_MIGRATIONS
from store.schema import migrate

log = logging.getLogger(__name__)

db_proxy = peewee.DatabaseProxy()
"""The database every model uses; bound by :func:`init_store`."""


class JSONListField(peewee.TextField):
    """A list of strings, stored as compact JSON text."""

    def db_value(self, value: Any) -> str | None:
        """Encode a list (or tuple) as JSON; ``None`` stays ``None``."""
        if value is None:
            return None
        if not value:
            return "[]"
        if isinstance(value, str | bytes):
            raise TypeError(
                "%s must be a list of strings, not %s" % (self.name, type(value).__name__)
            )
        return json.dumps(list(value), separators=(",", ":"))

    def python_value(self, value: Any) -> Any:
        """Decode the JSON text back to a list."""
        if value is None:
            return None
        return json.loads(value)


class BaseModel(peewee.Model):
    """Base of every store model: binds them all to :data:`db_proxy`."""

    class Meta:
        database = db_proxy


class User(BaseModel):
    """A SIP user of one domain, with digest HA1 values, never a password."""

    username = peewee.TextField()
    domain = peewee.TextField()
    ha1_md5 = peewee.CharField(max_length=32)
    ha1_sha256 = peewee.CharField(max_length=64)
    enabled = peewee.BooleanField(default=True)
    created_at = peewee.DoubleField(default=time.time)

    class Meta:
        table_name = "users"
        indexes = ((("username", "domain"), True),)


class Binding(BaseModel):
    """One registrar binding (one Contact of one AOR), or its tombstone."""

    aor = peewee.TextField()
    key = peewee.TextField()
    contact = peewee.TextField()
    expires_at = peewee.DoubleField()
    q = peewee.DoubleField(null=True)
    call_id = peewee.TextField()
    cseq = peewee.BigIntegerField()
    path = JSONListField(default=list)
    instance = peewee.TextField(null=True)
    reg_id = peewee.IntegerField(null=True)
    received = peewee.TextField(null=True)
    user_agent = peewee.TextField(null=True)
    origin = peewee.TextField()
    epoch = peewee.BigIntegerField()
    seq = peewee.BigIntegerField()
    updated_at = peewee.DoubleField()
    deleted = peewee.BooleanField(default=False)

    class Meta:
        table_name = "bindings"
        indexes = ((("aor", "key"), True),)


Binding.add_index(peewee.ModelIndex(Binding, (Binding.expires_at,), name="bindings_expires_at"))
"""The expiry purge's index (named as the schema migration that added it names it)."""


class NodeState(BaseModel):
    """Small facts about this node (epoch counter, config version...)."""

    key = peewee.TextField(primary_key=True)
    value = peewee.TextField()

    class Meta:
        table_name = "node_state"


class CallEventRow(BaseModel):
    """One call event the node's proxy saw, waiting for the master (``store.call_events``)."""

    seq = peewee.BigIntegerField(unique=True)
    """This node's number for the event: increasing, never reused."""
    at = peewee.DoubleField()
    """Wall-clock time the proxy saw it (seconds since the epoch)."""
    kind = peewee.TextField()
    call_id = peewee.TextField()
    caller = peewee.TextField()
    callee = peewee.TextField()
    source = peewee.TextField()
    status = peewee.IntegerField(null=True)

    class Meta:
        table_name = "call_events"


MODELS = (User, Binding, NodeState, CallEventRow)
"""Every model, in table-creation order."""

BINDING_FIELDS = tuple(name for name in Binding._meta.sorted_field_names if name != "id")
"""Names of a binding record's keys: every Binding column except ``id``."""


def init_store(url: str) -> peewee.Database:
    """Open the database at ``url``, bind the models to it, create tables.

    Tables that already exist are left alone; an older schema migrates forward
    (``store.schema``). Any database bound before is closed first. Returns
    the opened database.
    """
    db = open_database(url)
    if db_proxy.obj is not None and db_proxy.obj is not db:
        close_store()
    db_proxy.initialize(db)
    migrate(db, "node", MODELS, NODE_MIGRATIONS)
    log.info("store ready (%s)", type(db).__name__)
    return db


def close_store() -> None:
    """Close the bound database (this thread's connection) and unbind it."""
    db = db_proxy.obj
    if db is None:
        return
    if not db.is_closed():
        db.close()
    db_proxy.initialize(None)


def get_database() -> peewee.Database:
    """Return the bound database, or raise :class:`StoreError` if none is."""
    db = db_proxy.obj
    if db is None:
        raise StoreError("the store is not initialised: call store.models.init_store(url) first")
    return cast(peewee.Database, db)


def get_state(key: str, default: Any = None) -> Any:
    """Return the value stored under ``key`` in NodeState, or ``default``.

    Values are stored as JSON, so ints, strings, lists and dicts come back
    as they were set.
    """
    get_database()
    row = NodeState.get_or_none(NodeState.key == key)
    if row is None:
        return default
    return json.loads(row.value)


def set_state(key: str, value: Any) -> None:
    """Store the JSON-serialisable ``value`` under ``key``, replacing any."""
    get_database()
    encoded = json.dumps(value)
    (
        NodeState.insert(key=key, value=encoded)
        .on_conflict(conflict_target=[NodeState.key], preserve=[NodeState.value])
        .as_rowcount()
        .execute()
    )


CHECKED_KEY = "write_checked_at"
"""NodeState key :func:`check_writable` writes."""


def check_writable() -> None:
    """Write and commit one small row (the time, under :data:`CHECKED_KEY`):
    the node's check that its database takes writes again after a fault.
    Raises :class:`StoreError` when it does not."""
    db = get_database()
    try:
        set_state(CHECKED_KEY, time.time())
    except peewee.PeeweeException as exc:
        reset_after_failure(db)
        raise StoreError("the database takes no write: %s" % exc) from exc


def incr_state(key: str, by: int = 1) -> int:
    """Add ``by`` to the integer under ``key`` (0 if absent); return it.

    Meant for counters such as the node's epoch, which changes on every
    restart. Read and write happen in one transaction of this node's store.
    """
    db = get_database()
    with db.atomic():
        value = int(get_state(key, 0)) + by
        set_state(key, value)
    return value
