"""Shared pytest fixtures.

Store fixtures:

``pg_url`` (session)
    URL of a PostgreSQL database for tests. ``$TANDEM_PG_URL`` if set (it
    must name a disposable database: store tests drop and recreate
    Tandem's tables in it), else a private server started once per session
    by :class:`tests.pg.PostgresServer` and stopped at the end. Without
    PostgreSQL binaries the test is skipped, or fails when ``$CI`` is set.
``pg_server``
    A :class:`tests.pg.PostgresServer` of the test's own (``.url``,
    ``.restart()``, ``.stop()``), for tests that cut connections; always
    a private server, never ``$TANDEM_PG_URL``. Same skip/fail rule.
``store_url`` (parametrized: ``sqlite``, ``postgresql``)
    URL of an empty store: a fresh SQLite file under ``tmp_path``, or the
    PostgreSQL database with Tandem's tables dropped.
``store``
    The store opened on ``store_url`` (tables created, models bound);
    closed after the test.
"""

from gevent import monkey

monkey.patch_all()

import os

# A fast path's fallback or a swallowed batch failure raises under the tests
# (actors.process.STRICT), in this process and in the nodes the tests start.
os.environ["TANDEM_STRICT"] = "1"

import peewee
import pytest

from store.db import open_database
from store.models import MODELS, close_store, init_store
from tests.pg import PostgresServer, PostgresUnavailable


def _in_ci() -> bool:
    """True when ``$CI`` is set to anything but empty, 0 or false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def start_private_server() -> PostgresServer:
    """Start a private PostgreSQL server, or skip (fail under CI) the test."""
    server = PostgresServer()
    try:
        server.start()
        missing = None
    except PostgresUnavailable as exc:
        missing = str(exc)
    if missing and _in_ci():
        pytest.fail("PostgreSQL is required when CI is set: " + missing, pytrace=False)
    if missing:
        pytest.skip("PostgreSQL tests skipped: " + missing)
    return server


@pytest.fixture(scope="session")
def pg_url():
    """URL of a PostgreSQL database for the whole test session."""
    url = os.environ.get("TANDEM_PG_URL")
    if url:
        yield url
        return
    server = start_private_server()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def pg_server() -> PostgresServer:
    """A private PostgreSQL server for one test, which may restart it."""
    server = start_private_server()
    yield server
    server.stop()


def drop_store_tables(url: str) -> None:
    """Drop Tandem's store tables from the database at ``url``."""
    db = open_database(url)
    try:
        with db.bind_ctx(MODELS):
            db.drop_tables(MODELS, safe=True)
    finally:
        db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """URL of an empty store, once per backend."""
    if request.param == "sqlite":
        return "sqlite:///%s" % (tmp_path / "store.db")
    url = request.getfixturevalue("pg_url")
    drop_store_tables(url)
    return url


@pytest.fixture
def store(store_url) -> peewee.Database:
    """The store opened on ``store_url``; closed after the test."""
    db = init_store(store_url)
    yield db
    close_store()
