"""Registrar bindings in the database, as plain dicts.

A binding record is a ``dict`` whose keys are exactly
:data:`store.models.BINDING_FIELDS` (every column of
:class:`store.models.Binding` but ``id``)::

    aor         str    canonical "sip:user@domain"
    key         str    binding identity: +sip.instance plus reg-id when
                       given, else the canonical contact URI
    contact     str    the Contact URI as sent
    expires_at  float  absolute unix time
    q           float | None
    call_id     str
    cseq        int
    path        list[str]  Path header values, stored as JSON text
    instance    str | None
    reg_id      int | None
    received    str | None "transport:host:port" of the source
    user_agent  str | None
    origin      str    id of the node that is primary for the binding
    epoch       int
    seq         int
    updated_at  float
    deleted     bool   a tombstone, kept until expires_at

The registrar keeps its location table in memory; this module is how that
table reaches the disk (:func:`write_bindings`, the group commit) and comes
back at startup (:func:`load_bindings`).

:func:`write_bindings` is on the hot path. Peewee
builds its INSERT ... ON CONFLICT statement once per backend (so the SQL
dialect is peewee's), and the statement for a chunk of n rows is that
single-row statement with n value groups; building it with peewee for every
chunk costs about 70 us a row, twenty times the cost of executing it. The
texts are kept, and the transaction is run on the DB-API connection itself
(peewee's ``atomic()`` costs more than the BEGIN and COMMIT it sends), with
peewee told of it so that ``in_transaction()`` stays true.

On SQLite a good part of executing the upsert is the sqlite3 module
binding its parameters: a str, int or float is bound directly, but a ``None`` or a
``bool`` goes through its adapter lookup, about 0.5 us on Python 3.11 (ten
times an int), and a typical registrar row has four of them (``q``,
``instance``, ``reg_id``, ``deleted``). So on SQLite ``deleted`` is
bound as 0 or 1 (what SQLite stores for a bool anyway), and a nullable
column that is ``None`` in every row of a statement is written as a NULL
literal instead of a parameter. Each distinct text is a statement sqlite3
prepares (which costs about twice as much as executing it) and keeps in
its cache of 128, so chunks there have power-of-two sizes: a handful of
sizes times the few NULL patterns a deployment's phones produce.
"""

import json
import logging
import time
from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import Any

import peewee

from sipcore.location import Binding as Record

from store.db import StoreError, begin_statement, is_sqlite, max_variables, reset_after_failure
from store.models import BINDING_FIELDS, Binding, get_database

log = logging.getLogger(__name__)

MAX_ROWS_PER_STATEMENT = 500
"""Upper bound on the rows of one INSERT statement (fewer if the backend's
bound-parameter limit requires it; on SQLite the power of two below)."""

SLOW_BATCH_S = 0.5
"""A write_bindings slower than this is logged as a warning."""

_NFIELDS = len(BINDING_FIELDS)
_PATH_AT = BINDING_FIELDS.index("path")
_DELETED_AT = BINDING_FIELDS.index("deleted")
# A binding is turned into parameters in three runs around the two columns
# that need conversion ("path" to JSON and "deleted" to bool), which keeps
# the per-row work to two C-level attrgetter calls.
if not _PATH_AT < _DELETED_AT == _NFIELDS - 1:
    raise ImportError("store.bindings expects path before deleted, last")
_head_of = attrgetter(*BINDING_FIELDS[:_PATH_AT])
_middle_of = attrgetter(*BINDING_FIELDS[_PATH_AT + 1 : _DELETED_AT])
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_loads = json.loads
_NULLABLE_AT = tuple(at for at, name in enumerate(BINDING_FIELDS) if getattr(Binding, name).null)
# SQLite's value of a bool (None stays None, for NOT NULL to reject it).
_sqlite_flag = {False: 0, True: 1}.get

MAX_CACHED_STATEMENTS = 256
"""How many upsert texts (per backend) are kept for reuse; more are built
for each use."""


def _upsert_template(db: peewee.Database) -> tuple[str, str, str]:
    """Return (prefix, value group, suffix) of the upsert for ``db``'s dialect.

    The statement for n rows is ``prefix + ", ".join([group] * n) + suffix``.
    """
    columns = [getattr(Binding, name) for name in BINDING_FIELDS]
    updated = [column for column in columns if column.name not in ("aor", "key")]
    query = (
        Binding.insert_many([(0,) * _NFIELDS], fields=columns)
        .on_conflict(conflict_target=[Binding.aor, Binding.key], preserve=updated)
        .as_rowcount()
    )
    sql, params = query.sql()
    group = "(%s)" % ", ".join([db.param] * _NFIELDS)
    if len(params) != _NFIELDS or sql.count(group) != 1:
        raise StoreError("unexpected upsert SQL from peewee: %s" % sql)
    prefix, suffix = sql.split(group)
    return prefix, group, suffix


class _Writer:
    """How a batch becomes statements on one backend (see the module doc).

    ``begin`` is the statement that opens the write transaction.
    """

    def __init__(self, db: peewee.Database):
        self.begin = begin_statement(db)
        self._prefix, self._group, self._suffix = _upsert_template(db)
        self._param = db.param
        self._sqlite = is_sqlite(db)
        self._most = max(1, min(MAX_ROWS_PER_STATEMENT, max_variables(db) // _NFIELDS))
        if self._sqlite:
            # Chunks of power-of-two sizes only (see the module doc).
            self._most = 1 << (self._most.bit_length() - 1)
        self._texts: dict[tuple[int, tuple[int, ...]], str] = {}

    def statements(self, records: Sequence[Record]) -> list[tuple[str, list[Any]]]:
        """Return (sql, parameters) of the upserts of binding objects ``records``."""
        params = _params_of(records)
        if self._sqlite:
            params[_DELETED_AT::_NFIELDS] = map(_sqlite_flag, params[_DELETED_AT::_NFIELDS])
        statements = []
        end = 0
        for rows in self._chunk_rows(len(records)):
            start, end = end, end + rows * _NFIELDS
            chunk = params[start:end]
            nulls: tuple[int, ...] = ()
            if self._sqlite:
                nulls = tuple(at for at in _NULLABLE_AT if chunk[at::_NFIELDS].count(None) == rows)
                width = _NFIELDS
                # From the last column back, so that the earlier ones keep
                # their place in each row.
                for at in reversed(nulls):
                    del chunk[at::width]
                    width -= 1
            statements.append((self._text(rows, nulls), chunk))
        return statements

    def _chunk_rows(self, count: int) -> list[int]:
        """Split ``count`` rows into statements: as many full ones as needed
        and, on SQLite, the binary digits of the rest."""
        full, rest = divmod(count, self._most)
        sizes = [self._most] * full
        if not self._sqlite:
            return sizes + [rest] if rest else sizes
        while rest:
            rows = 1 << (rest.bit_length() - 1)
            sizes.append(rows)
            rest -= rows
        return sizes

    def _text(self, rows: int, nulls: tuple[int, ...]) -> str:
        """The upsert of ``rows`` rows, with a NULL literal for the columns
        at ``nulls``."""
        key = (rows, nulls)
        sql = self._texts.get(key)
        if sql is None:
            group = self._group
            if nulls:
                group = "(%s)" % ", ".join(
                    "NULL" if at in nulls else self._param for at in range(_NFIELDS)
                )
            sql = self._prefix + ", ".join([group] * rows) + self._suffix
            if len(self._texts) < MAX_CACHED_STATEMENTS:
                self._texts[key] = sql
        return sql


# One per database class: its databases share the dialect and, since the
# process has one sqlite3 library, the limits.
_writers: dict[type, _Writer] = {}


def _writer(db: peewee.Database) -> _Writer:
    """Return the :class:`_Writer` of ``db``'s backend."""
    writer = _writers.get(type(db))
    if writer is None:
        writer = _writers[type(db)] = _Writer(db)
    return writer


def _encode_path(path: list[str] | tuple[str, ...]) -> str:
    """A binding's ``path`` as its JSON text."""
    if not isinstance(path, list | tuple):
        raise StoreError(
            "binding field path must be a list of strings, not %s" % type(path).__name__
        )
    return _dumps(list(path)) if path else "[]"


def write_bindings(bindings: Sequence[Record]) -> None:
    """Write many bindings in ONE transaction; durable when this returns.

    ``bindings`` are objects with an attribute per record key
    (``sipcore.location.Binding``): the registrar's group commit. Each is
    inserted, or replaces every column of the row with the same (aor,
    key); of several with the same (aor, key) the last wins. Everything or
    nothing is written: on any error the transaction is rolled back and
    :class:`StoreError` raised. It must not be called inside another
    transaction, since its commit is what makes the batch durable.
    """
    db = get_database()
    if db.in_transaction():
        raise StoreError("write_bindings must not run inside a transaction")
    if not bindings:
        return
    try:
        latest = {(b.aor, b.key): b for b in bindings}
    except AttributeError as exc:
        raise StoreError("write_bindings takes binding objects: %s" % exc) from exc
    records = list(latest.values()) if len(latest) != len(bindings) else bindings
    _commit(db, records)


def _params_of(bindings: Iterable[Record]) -> list[Any]:
    """Flatten ``bindings`` into one list of statement parameters."""
    params: list[Any] = []
    extend = params.extend
    append = params.append
    for b in bindings:
        try:
            extend(_head_of(b))
            append(_encode_path(b.path))
            extend(_middle_of(b))
            append(bool(b.deleted))
        except AttributeError as exc:
            raise StoreError("not a binding: %s of %s" % (exc, getattr(b, "aor", "?"))) from exc
    return params


def _commit(db: peewee.Database, records: Sequence[Record]) -> None:
    """Upsert ``records`` in one transaction, in statements of as many rows as the
    backend takes."""
    started = time.perf_counter()
    try:
        writer = _writer(db)
        connection = db.connection()
    except peewee.PeeweeException as exc:
        raise _write_failed(db, records, exc) from exc
    # Built before BEGIN, so that a bad record fails without touching the
    # database and the write lock is held only while the database works.
    statements = writer.statements(records)
    try:
        _transact(db, connection.cursor(), writer.begin, statements)
    except (peewee.PeeweeException, connection.Error) as exc:
        raise _write_failed(db, records, exc) from exc
    elapsed = time.perf_counter() - started
    if elapsed > SLOW_BATCH_S:
        log.warning("wrote %d bindings in %.1f ms", len(records), elapsed * 1000)
    elif log.isEnabledFor(logging.DEBUG):
        log.debug("wrote %d bindings in %.1f ms", len(records), elapsed * 1000)


def _write_failed(db: peewee.Database, records: Sequence[Record], exc: Exception) -> StoreError:
    """Close the connection the failure may have spoiled (``reset_after_failure``);
    return the error that reports ``exc``."""
    reset_after_failure(db)
    return StoreError("write of %d bindings failed, nothing written: %s" % (len(records), exc))


def _transact(
    db: peewee.Database, cursor: Any, begin: str, statements: list[tuple[str, list[Any]]]
) -> None:
    """Run ``statements`` between ``begin`` and COMMIT on ``cursor``, a
    cursor of ``db``'s connection; roll back on any error."""
    cursor.execute(begin)
    # Peewee's record of the transaction, as atomic() would push it: while
    # it is there in_transaction() is true, and peewee neither closes the
    # connection nor starts another transaction on it.
    db.push_transaction(db.transaction())
    try:
        for sql, params in statements:
            cursor.execute(sql, params)
        cursor.execute("COMMIT")
    except BaseException:
        db.pop_transaction()
        _roll_back(db, cursor)
        raise
    db.pop_transaction()


def _roll_back(db: peewee.Database, cursor: Any) -> None:
    """Roll back the transaction open on ``cursor``'s connection.

    If ROLLBACK fails (SQLite may have rolled back by itself after an I/O
    or out-of-memory error; a broken connection cannot roll back), whether
    the connection is still inside the transaction is unknown: it is
    closed, so that the next call opens a new one. The caller reports its
    own error.
    """
    try:
        cursor.execute("ROLLBACK")
    except cursor.connection.Error:
        try:
            db.close()
        except peewee.PeeweeException:
            log.warning(
                "could not close a database connection whose rollback failed", exc_info=True
            )


def load_bindings(include_deleted: bool = True) -> list[dict[str, Any]]:
    """Return every stored binding as a record dict (see the module doc).

    With ``include_deleted`` (the default, for filling the location table
    at startup) tombstones are included; without it only live bindings.
    Expired rows not yet purged are returned either way.
    """
    db = get_database()
    columns = [getattr(Binding, name) for name in BINDING_FIELDS]
    query = Binding.select(*columns)
    if not include_deleted:
        query = query.where(Binding.deleted == False)
    try:
        rows = db.execute_sql(*query.sql()).fetchall()
    except peewee.PeeweeException as exc:
        reset_after_failure(db)
        raise StoreError("cannot load bindings: %s" % exc) from exc
    records: list[dict[str, Any]] = []
    append = records.append
    for row in rows:
        record = dict(zip(BINDING_FIELDS, row, strict=True))
        record["path"] = _loads(record["path"])
        record["deleted"] = bool(record["deleted"])
        append(record)
    return records


def purge_expired(now: float) -> int:
    """Delete every row, live or tombstone, with ``expires_at < now``.

    Returns how many rows were deleted.
    """
    db = get_database()
    try:
        with db.atomic():
            count: int = Binding.delete().where(Binding.expires_at < now).execute()
    except peewee.PeeweeException as exc:
        reset_after_failure(db)
        raise StoreError("cannot purge expired bindings: %s" % exc) from exc
    if count:
        log.info("purged %d expired bindings", count)
    return count


def count_bindings(live_only: bool = True, *, now: float | None = None) -> int:
    """Count stored bindings.

    With ``live_only`` tombstones are not counted. With ``now`` rows whose
    ``expires_at`` is before it (expired, not yet purged) are not counted
    either.
    """
    get_database()
    query = Binding.select()
    if live_only:
        query = query.where(Binding.deleted == False)
    if now is not None:
        query = query.where(Binding.expires_at >= now)
    try:
        return query.count()
    except peewee.PeeweeException as exc:
        reset_after_failure(get_database())
        raise StoreError("cannot count bindings: %s" % exc) from exc
