"""Database connections for the store: one URL in, one peewee database out.

Two backends are supported:

``sqlite:///abs/path.db`` (or ``sqlite:///:memory:``)
    The default. Opened in WAL mode with ``synchronous=normal``, foreign
    keys on and a 5 s busy timeout. ``?synchronous=full`` (or ``off``,
    ``extra``) changes the synchronous level. In WAL mode ``normal`` makes a
    commit survive a crash of the process (the WAL frames are in the
    operating system's cache when COMMIT returns) but the last commits may
    be lost if the machine itself loses power; ``full`` fsyncs the WAL on
    every commit and survives that too, at the price of one fsync per
    commit. Write transactions begin with ``BEGIN IMMEDIATE``.

``postgresql://user:pw@host:port/dbname`` (``postgres://`` too)
    Handed to libpq as is, so libpq's query parameters (``sslmode``,
    ``connect_timeout``, ...) work. Without ``connect_timeout`` a 10 s
    connect timeout is used.

This module knows nothing of the schema; :mod:`store.models` binds the
database returned here to the models and creates the tables.
"""

import logging
import os
import sqlite3
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import peewee

from .files import create_private

log = logging.getLogger(__name__)

SQLITE_SYNCHRONOUS = ("off", "normal", "full", "extra")
"""Values accepted for the ``synchronous`` query parameter of a SQLite URL."""

SQLITE_BUSY_TIMEOUT_MS = 5000
"""How long a SQLite connection waits for a lock before giving up."""

SQLITE_LOCK_TYPE = "IMMEDIATE"
"""How SQLite write transactions begin: ``BEGIN IMMEDIATE`` takes the write
lock at once, so a transaction never has to upgrade a read lock midway
(which fails at once, without the busy timeout, when another connection
writes)."""

PG_CONNECT_TIMEOUT_S = 10
"""Connect timeout for PostgreSQL unless the URL sets ``connect_timeout``."""


class StoreError(Exception):
    """Any failure of the store that callers are expected to handle.

    Raised for a bad database URL, a database that cannot be opened, a
    record that cannot be written and invalid user data. The underlying
    driver or peewee exception, if any, is chained as ``__cause__``.
    """


def redact_url(url: str) -> str:
    """Return ``url`` with its password (if any) replaced by ``***``.

    Used whenever a URL is logged or put into an error message.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = "[%s]" % host
    if parts.port is not None:
        host = "%s:%d" % (host, parts.port)
    netloc = "%s:***@%s" % (parts.username or "", host)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def open_database(url: str) -> peewee.Database:
    """Open the database named by ``url`` and return it, connected.

    The connection is made at once so that a wrong path, host or password
    fails here with a :class:`StoreError` rather than on the first query.
    The returned database is not bound to any model; see
    :func:`store.models.init_store` for that.
    """
    scheme = urlsplit(url).scheme.lower()
    db: peewee.Database
    if scheme == "sqlite":
        db = _open_sqlite(url)
    elif scheme in ("postgresql", "postgres"):
        db = _open_postgresql(url)
    else:
        raise StoreError(
            "unsupported database URL scheme %r in %s: use "
            "sqlite:///abs/path.db or postgresql://user:pw@host:port/dbname"
            % (scheme, redact_url(url))
        )
    try:
        db.connect(reuse_if_open=True)
    except peewee.DatabaseError as exc:
        raise StoreError("cannot open database %s: %s" % (redact_url(url), exc)) from exc
    if isinstance(db, peewee.SqliteDatabase) and db.database != ":memory:":
        mode = db.execute_sql("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("sqlite database %s is in journal mode %s, not wal", db.database, mode)
    log.info("opened database %s", redact_url(url))
    return db


def _open_sqlite(url: str) -> peewee.SqliteDatabase:
    """Build (without connecting) the SQLite database named by ``url``."""
    parts = urlsplit(url)
    if parts.netloc:
        raise StoreError(
            "sqlite URL %s has a host part; use sqlite:///abs/"
            "path.db (three slashes, absolute path)" % url
        )
    path = parts.path
    if path == "/:memory:":
        path = ":memory:"
    elif not path.startswith("/") or path == "/":
        raise StoreError(
            "sqlite URL %s needs an absolute file path, e.g. "
            "sqlite:///var/lib/tandem/store.db" % url
        )
    else:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise StoreError("directory %s of sqlite database %s does not exist" % (directory, url))
        create_private(path)
    synchronous = "normal"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "synchronous":
            raise StoreError(
                "unknown sqlite URL parameter %r in %s (known: synchronous)" % (name, url)
            )
        if value.lower() not in SQLITE_SYNCHRONOUS:
            raise StoreError(
                "bad synchronous=%r in %s (one of %s)" % (value, url, ", ".join(SQLITE_SYNCHRONOUS))
            )
        synchronous = value.lower()
    pragmas = [
        ("journal_mode", "wal"),
        ("synchronous", synchronous),
        ("foreign_keys", 1),
        ("busy_timeout", SQLITE_BUSY_TIMEOUT_MS),
    ]
    return peewee.SqliteDatabase(
        path, pragmas=pragmas, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, lock_type=SQLITE_LOCK_TYPE
    )


def _open_postgresql(url: str) -> peewee.PostgresqlDatabase:
    """Build (without connecting) the PostgreSQL database named by ``url``."""
    parts = urlsplit(url)
    if not parts.path.strip("/"):
        raise StoreError(
            "postgresql URL %s names no database; use "
            "postgresql://user:pw@host:port/dbname" % redact_url(url)
        )
    dsn = "postgresql" + url[len(parts.scheme) :]
    params: dict[str, Any] = {}
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "connect_timeout" not in query:
        params["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    return peewee.PostgresqlDatabase(dsn, **params)


def reset_after_failure(db: peewee.Database) -> None:
    """Close this thread's connection after a failed operation; the next call opens
    a new one.

    A failure may leave the connection unusable (a PostgreSQL restart) or
    usable but wrong for good: SQLite opens a file it cannot write (while a
    disk is read-only) read-only, and the connection stays so once the disk
    is back. A connection inside a transaction is left to the transaction's
    own rollback, and an in-memory database (closing it would lose it) is kept.
    """
    if isinstance(db, peewee.SqliteDatabase) and db.database == ":memory:":
        return
    try:
        if not db.is_closed() and not db.in_transaction():
            db.close()
    except peewee.PeeweeException:
        log.warning("could not close a database connection after a failure", exc_info=True)


def is_sqlite(db: peewee.Database) -> bool:
    """Tell whether ``db`` is a SQLite database (as opposed to PostgreSQL)."""
    return isinstance(db, peewee.SqliteDatabase)


def begin_statement(db: peewee.Database) -> str:
    """Return the statement that opens a write transaction on ``db``.

    It is the one peewee's ``db.begin()`` runs on the databases
    :func:`open_database` makes, for code that drives the DB-API connection
    itself.
    """
    return "BEGIN " + SQLITE_LOCK_TYPE if is_sqlite(db) else "BEGIN"


def max_variables(db: peewee.Database) -> int:
    """Return how many bound parameters one statement may carry on ``db``.

    SQLite reports its compiled-in limit (999 before 3.32, 32766 since);
    PostgreSQL's wire protocol allows 65535.
    """
    if not is_sqlite(db):
        return 65535
    getlimit = getattr(db.connection(), "getlimit", None)
    if getlimit is None:
        return 999
    return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
