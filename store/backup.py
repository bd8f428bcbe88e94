"""One consistent archive of the master: its database, keys and configuration.

The database is exported logically, through peewee, so one archive format
serves SQLite and PostgreSQL alike (and a SQLite master can be restored onto
PostgreSQL). Every table is read inside one read transaction — a deferred
transaction on SQLite in WAL mode, ``REPEATABLE READ`` on PostgreSQL — so
the archive is one moment of the database while the master goes on writing
(a writer never waits on the export).

The archive is a gzip'd tar, written 0600 through a temporary file renamed
into place: ``db/<table>.jsonl`` (one JSON object per row), ``files/<name>``
(keys, configuration) and ``manifest.json`` last, with the row count and the
SHA-256 of every member. An archive with a member that is not a regular
file named like ours (a link, a folder, ``../``) is refused. :func:`check`
reads a whole archive as :func:`restore` does and writes nothing (the
dashboard's restore checks an upload with it before staging it).
:func:`restore` checks the manifest before it writes anything, streams the
rows into empty tables in one transaction, and refuses a database that
already holds data. Nothing of the archive is ever extracted by its own
names: only the tables and file names the caller knows are read.
"""

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, cast

import peewee

from store.db import StoreError, is_sqlite
from store.files import PRIVATE_FILE

FORMAT = "tandem-master-backup"
FORMAT_VERSION = 1
MAX_MANIFEST = 1 << 20
"""Bytes a manifest may have."""
MAX_FILE = 1 << 20
"""Bytes a key or configuration file of the archive may have."""
CHUNK = 500
"""Rows inserted per statement on restore."""
MAX_MEMBERS = 1000
"""Members an archive may have (ours have one per table and file)."""
MAX_ROW = 1 << 20
"""Bytes one row of a table may take in the archive."""
MEMBER = re.compile(
    r"^(manifest\.json|db/[a-z0-9_]{1,64}\.jsonl"
    r"|files/[A-Za-z0-9][A-Za-z0-9._-]{0,99})$"
)
"""The names our archives' members have (no folder, no ``..``, nothing absolute)."""


class BackupError(StoreError):
    """An archive that cannot be made, read or restored (the message says why)."""


def _snapshot(db: peewee.Database) -> Any:
    """A read transaction that sees one moment of ``db`` and blocks no writer."""
    if is_sqlite(db):
        return db.transaction(lock_type="DEFERRED")
    return db.transaction(isolation_level="REPEATABLE READ")


def _rows(model: type[peewee.Model]) -> Iterator[dict[str, Any]]:
    order = model._meta.primary_key or next(iter(model._meta.sorted_fields))
    query = model.select().order_by(order).dicts().iterator()
    return cast(Iterator[dict[str, Any]], query)


def _add(tar: tarfile.TarFile, name: str, data: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, PRIVATE_FILE, int(time.time())
    tar.addfile(info, data)


def backup(
    path: str,
    db: peewee.Database,
    models: Iterable[type[peewee.Model]],
    files: dict[str, bytes],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write the archive at ``path`` (0600): every row of ``models`` (bound to ``db``) as
    one moment of ``db``, the ``files`` by name, and ``meta`` in the manifest; return
    the manifest."""
    folder = os.path.dirname(os.path.abspath(path))
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": time.time(),
        **meta,
        "tables": {},
        "files": {},
    }
    fd, tmp = tempfile.mkstemp(prefix=".backup-", dir=folder)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            with _snapshot(db):
                for model in models:
                    manifest["tables"][model._meta.table_name] = _add_table(tar, model)
            for name, data in sorted(files.items()):
                _add(tar, f"files/{name}", io.BytesIO(data), len(data))
                manifest["files"][name] = hashlib.sha256(data).hexdigest()
            text = json.dumps(manifest, indent=1, sort_keys=True).encode()
            _add(tar, "manifest.json", io.BytesIO(text), len(text))
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return manifest


def _add_table(tar: tarfile.TarFile, model: type[peewee.Model]) -> dict[str, Any]:
    digest, count = hashlib.sha256(), 0
    with tempfile.TemporaryFile() as spool:  # unnamed, so never readable by others
        for row in _rows(model):
            line = json.dumps(row, sort_keys=True, default=str).encode() + b"\n"
            digest.update(line)
            spool.write(line)
            count += 1
        size = spool.tell()
        spool.seek(0)
        _add(tar, f"db/{model._meta.table_name}.jsonl", spool, size)
    return {"rows": count, "sha256": digest.hexdigest()}


def read_manifest(path: str) -> dict[str, Any]:
    """The archive's manifest, checked to be one of ours."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            return _manifest(_Reader(tar))
    except (OSError, tarfile.TarError, EOFError) as e:
        raise BackupError(f"{path} is not a readable backup archive: {e}") from None


class _Reader:
    """An archive open for reading, with its members indexed by name (a bounded number)."""

    def __init__(self, tar: tarfile.TarFile):
        self.tar = tar
        self.members: dict[str, tarfile.TarInfo] = {}
        for k, info in enumerate(tar):
            if k >= MAX_MEMBERS:
                raise BackupError(f"the archive has more than {MAX_MEMBERS} members: not ours")
            self.members[info.name] = info
        # Only once all are indexed (a bounded number): an archive of countless members
        # is told as such.
        for name, info in self.members.items():
            if not info.isfile() or not MEMBER.match(name):
                raise BackupError(
                    f"the archive's member {name[:100]!r} is not one of ours "
                    "(a link, a folder or a name outside the archive's own): "
                    "refused"
                )


def _member(reader: _Reader, name: str, limit: int | None) -> IO[bytes]:
    info = reader.members.get(name)
    if info is None:
        raise BackupError(f"the archive has no {name}")
    if not info.isfile() or (limit is not None and info.size > limit):
        raise BackupError(f"{name} in the archive is not a file of at most {limit} bytes")
    data = reader.tar.extractfile(info)
    if data is None:
        raise BackupError(f"{name} in the archive cannot be read")
    return data


def _manifest(tar: _Reader) -> dict[str, Any]:
    try:
        manifest = json.loads(_member(tar, "manifest.json", MAX_MANIFEST).read())
    except ValueError:
        raise BackupError("the archive's manifest is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError("not a Tandem master backup (no such manifest)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"backup format {manifest.get('format_version')!r} is not "
            f"{FORMAT_VERSION}: restore it with the release that made it"
        )
    if not isinstance(manifest.get("tables"), dict) or not isinstance(manifest.get("files"), dict):
        raise BackupError("the archive's manifest lists no tables or files")
    return manifest


def _files(tar: _Reader, manifest: dict[str, Any], file_names: Iterable[str]) -> dict[str, bytes]:
    files = {}
    for name in file_names:
        if name not in manifest["files"]:
            continue
        data = _member(tar, f"files/{name}", MAX_FILE).read()
        if hashlib.sha256(data).hexdigest() != manifest["files"][name]:
            raise BackupError(f"files/{name} does not match the manifest's digest")
        files[name] = data
    return files


def check(path: str, tables: Iterable[str], file_names: Iterable[str]) -> dict[str, Any]:
    """Read the whole archive at ``path`` as :func:`restore` does, writing nothing: its
    members (our names, regular files only), the manifest, the named files and every row
    of ``tables`` against the manifest's digests; return the manifest."""
    try:
        with tarfile.open(path, "r:gz") as opened:
            tar = _Reader(opened)
            manifest = _manifest(tar)
            _files(tar, manifest, file_names)
            for name in tables:
                if name in manifest["tables"]:
                    for _ in _table_rows(tar, name, manifest["tables"][name]):
                        pass
    except (OSError, tarfile.TarError, EOFError) as e:
        raise BackupError(f"{path} is not a readable backup archive: {e}") from None
    return manifest


def restore(
    path: str, db: peewee.Database, models: Iterable[type[peewee.Model]], file_names: Iterable[str]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Load the archive's rows into the (empty) tables of ``models`` (bound to ``db``), all
    or nothing; return the manifest and the named files (checked against their digests)."""
    models = list(models)
    try:
        with tarfile.open(path, "r:gz") as opened:
            tar = _Reader(opened)
            manifest = _manifest(tar)
            files = _files(tar, manifest, file_names)
            with db.atomic():
                for model in models:
                    if model.select().limit(1).exists():
                        raise BackupError(
                            f"table {model._meta.table_name} already holds "
                            "data: restore onto a fresh database"
                        )
                for model in models:
                    _load_table(tar, db, model, manifest["tables"])
    except (OSError, tarfile.TarError, EOFError) as e:
        raise BackupError(f"{path} is not a readable backup archive: {e}") from None
    return manifest, files


def _table_rows(tar: _Reader, name: str, expected: Any) -> Iterator[dict[str, Any]]:
    """The rows of table ``name``, each a bounded JSON object; the whole member checked
    against the manifest's row count and digest once the last is read."""
    if not isinstance(expected, dict):
        raise BackupError(f"the manifest's entry of table {name} is not ours")
    digest, count = hashlib.sha256(), 0
    stream = _member(tar, f"db/{name}.jsonl", None)
    while line := stream.readline(MAX_ROW + 1):
        if len(line) > MAX_ROW:
            raise BackupError(f"db/{name}.jsonl has a row over {MAX_ROW} bytes: not ours")
        digest.update(line)
        try:
            row = json.loads(line)
        except ValueError:
            raise BackupError(f"db/{name}.jsonl has a line that is not JSON") from None
        if not isinstance(row, dict):
            raise BackupError(f"db/{name}.jsonl has a line that is not a row")
        count += 1
        yield row
    if count != expected.get("rows") or digest.hexdigest() != expected.get("sha256"):
        raise BackupError(
            f"db/{name}.jsonl does not match the manifest (rows or digest): the archive is damaged"
        )


def _load_table(
    tar: _Reader, db: peewee.Database, model: type[peewee.Model], tables: dict[str, Any]
) -> None:
    name = model._meta.table_name
    expected = tables.get(name)
    if expected is None:  # a table newer than the archive: it starts empty
        return
    known = set(model._meta.columns)
    count, batch = 0, []
    for row in _table_rows(tar, name, expected):
        # A column the archive has and this release dropped is left out; a new one
        # gets its default.
        batch.append({k: v for k, v in row.items() if k in known})
        count += 1
        if len(batch) >= CHUNK:
            model.insert_many(batch).execute()
            batch = []
    if batch:
        model.insert_many(batch).execute()
    pk = model._meta.primary_key
    if not is_sqlite(db) and isinstance(pk, peewee.AutoField) and count:
        # Rows came with their ids: the sequence must go on after the largest.
        db.execute_sql(
            "SELECT setval(pg_get_serial_sequence(%s, %s), "
            "(SELECT MAX(" + pk.column_name + ") FROM " + name + "))",
            (name, pk.column_name),
        )
