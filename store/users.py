"""SIP users: digest HA1 values per (username, domain), never passwords.

A user's realm is its domain, so HA1 = H("username:domain:password") for
H in MD5 and SHA-256 (RFC 8760), both kept so that either algorithm can be
offered in a challenge. Lookups return ``{"MD5": hex, "SHA-256": hex}``.

Disabled users are kept but invisible to authentication: neither
:func:`get_user_ha1` nor :func:`load_user_ha1s` returns them.
"""

import csv
import hashlib
import logging
import re
import time
from collections.abc import Iterable
from typing import Any, cast

import peewee

from store.db import StoreError
from store.models import User, get_database, get_state, incr_state

log = logging.getLogger(__name__)

USERNAME_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
"""A SIP URI user part (RFC 3261 ``user``): unreserved, user-unreserved and
%-escaped characters; so never ':', '@' or whitespace."""

DOMAIN_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?"
    r"|\[[0-9A-Fa-f:.]+\]"
)
"""A host name, an IPv4 address or a bracketed IPv6 address."""

CSV_HEADER = ["username", "password"]
"""The header line :func:`import_users_csv` expects."""

_ROWS_PER_STATEMENT = 100
_VERSION_KEY = "users_version"


def compute_ha1s(username: str, realm: str, password: str) -> dict[str, str]:
    """Return the digest HA1 of the credentials for MD5 and for SHA-256."""
    secret = ("%s:%s:%s" % (username, realm, password)).encode("utf-8")
    return {"MD5": hashlib.md5(secret).hexdigest(), "SHA-256": hashlib.sha256(secret).hexdigest()}


def validate_username(username: str) -> str:
    """Return ``username`` if it is a valid SIP user part, else raise."""
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise StoreError(
            "invalid username %r: use letters, digits and "
            "-_.!~*'()&=+$,;?/ or %%XX escapes; no ':', '@' or "
            "whitespace" % (username,)
        )
    return username


def validate_domain(domain: str) -> str:
    """Return ``domain`` if it is a host name or an address, else raise."""
    if not isinstance(domain, str) or not DOMAIN_RE.fullmatch(domain):
        raise StoreError("invalid domain %r: expected a host name or an IP address" % (domain,))
    return domain


def _validate_password(password: str) -> str:
    """Return ``password`` if it is a non-empty string, else raise."""
    if not isinstance(password, str) or not password:
        raise StoreError("password must be a non-empty string")
    return password


def _row(username: str, domain: str, password: str, enabled: bool) -> dict[str, Any]:
    """Build the User row for validated credentials."""
    ha1 = compute_ha1s(username, domain, password)
    return {
        "username": username,
        "domain": domain,
        "ha1_md5": ha1["MD5"],
        "ha1_sha256": ha1["SHA-256"],
        "enabled": enabled,
        "created_at": time.time(),
    }


def users_version() -> int:
    """A number that changes whenever a user is added, changed or deleted.

    Nodes keep every user's HA1 in memory and reload them only when this
    number moves, which is one cheap read instead of a whole table.
    """
    return int(get_state(_VERSION_KEY, 0))


def _changed() -> None:
    incr_state(_VERSION_KEY)


def _upsert(rows: list[dict[str, Any]]) -> None:
    """Insert the rows, or update the HA1s of existing (username, domain)."""
    db = get_database()
    try:
        with db.atomic():
            for chunk in peewee.chunked(rows, _ROWS_PER_STATEMENT):
                (
                    User.insert_many(chunk)
                    .on_conflict(
                        conflict_target=[User.username, User.domain],
                        preserve=[User.ha1_md5, User.ha1_sha256],
                    )
                    .as_rowcount()
                    .execute()
                )
            _changed()
    except peewee.PeeweeException as exc:
        raise StoreError("cannot write users: %s" % exc) from exc


def add_user(
    username: str, domain: str, password: str, *, enabled: bool = True, replace: bool = False
) -> None:
    """Create a user of ``domain`` from its plain password (not stored).

    If the user exists, raise :class:`StoreError`; with ``replace`` set its
    password (HA1s) is changed instead, and its enabled flag left alone.
    """
    row = _row(
        validate_username(username),
        validate_domain(domain),
        _validate_password(password),
        bool(enabled),
    )
    if replace:
        _upsert([row])
        log.info("user %s@%s added or updated", username, domain)
        return
    get_database()
    try:
        with get_database().atomic():
            User.insert(row).as_rowcount().execute()
            _changed()
    except peewee.IntegrityError as exc:
        raise StoreError("user %s@%s already exists" % (username, domain)) from exc
    except peewee.PeeweeException as exc:
        raise StoreError("cannot add user %s@%s: %s" % (username, domain, exc)) from exc
    log.info("user %s@%s added", username, domain)


def add_users(users: list[tuple[str, str]], domain: str) -> int:
    """Create or update many users of ``domain`` in one transaction; return how many.

    ``users`` holds (username, password) pairs, all checked before anything
    is written; existing users get the new password (as ``replace=True``).
    """
    validate_domain(domain)
    rows = [
        _row(validate_username(name), domain, _validate_password(pw), True) for name, pw in users
    ]
    if rows:
        _upsert(rows)
    log.info("added or updated %d users of %s", len(rows), domain)
    return len(rows)


def read_users_csv(handle: Iterable[str], name: str) -> list[tuple[str, str]]:
    """The ``(username, password)`` rows of a users CSV read from ``handle``.

    The text starts with the header ``username,password``; each further line
    is one user. Fields are taken as written (no trimming). A bad line raises
    :class:`StoreError` naming ``name`` (the file) and the line number.
    """
    rows = []
    seen: dict[str, int] = {}
    try:
        reader = csv.reader(handle)
        header = None
        for fields in reader:
            line = reader.line_num
            if not fields:
                continue
            if header is None:
                header = [field.strip().lower() for field in fields]
                if header != CSV_HEADER:
                    raise StoreError(
                        "%s line %d: header must be 'username,password',"
                        " not %r" % (name, line, ",".join(fields))
                    )
                continue
            if len(fields) != 2:
                raise StoreError(
                    "%s line %d: expected 2 fields (username,password), "
                    "got %d" % (name, line, len(fields))
                )
            username, password = fields
            try:
                validate_username(username)
                _validate_password(password)
            except StoreError as exc:
                raise StoreError("%s line %d: %s" % (name, line, exc)) from None
            if username in seen:
                raise StoreError(
                    "%s line %d: user %r already on line %d"
                    % (name, line, username, seen[username])
                )
            seen[username] = line
            rows.append((username, password))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise StoreError("users file %s is not valid UTF-8 CSV: %s" % (name, exc)) from exc
    return rows


def import_users_csv(path: str, domain: str) -> int:
    """Import users of ``domain`` from a CSV file; return how many.

    The file (UTF-8) is read by :func:`read_users_csv`. Existing users get
    the new password; users not in the file are left alone. The file is
    checked whole before anything is written, and a bad line raises
    :class:`StoreError` naming the file and line number.
    """
    validate_domain(domain)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            pairs = read_users_csv(handle, path)
    except OSError as exc:
        raise StoreError("cannot read users file %s: %s" % (path, exc)) from exc
    rows = [_row(username, domain, password, True) for username, password in pairs]
    if rows:
        _upsert(rows)
    log.info("imported %d users of %s from %s", len(rows), domain, path)
    return len(rows)


def get_user_ha1(username: str, domain: str) -> dict[str, str] | None:
    """Return ``{"MD5": ..., "SHA-256": ...}`` for an enabled user, or None."""
    get_database()
    row = (
        User.select(User.ha1_md5, User.ha1_sha256)
        .where((User.username == username) & (User.domain == domain) & (User.enabled == True))
        .tuples()
        .first()
    )
    if row is None:
        return None
    return {"MD5": row[0], "SHA-256": row[1]}


def load_user_ha1s(domain: str) -> dict[str, dict[str, str]]:
    """Return the HA1s of every enabled user of ``domain``, by username."""
    get_database()
    query = (
        User.select(User.username, User.ha1_md5, User.ha1_sha256)
        .where((User.domain == domain) & (User.enabled == True))
        .tuples()
    )
    # .tuples() and .dicts() change the rows, which peewee's annotations do not say.
    rows = cast(Iterable[tuple[str, str, str]], query)
    return {username: {"MD5": md5, "SHA-256": sha256} for username, md5, sha256 in rows}


def list_users(domain: str) -> list[dict[str, Any]]:
    """List the users of ``domain`` by username, without their HA1s.

    Each item has ``username``, ``domain``, ``enabled`` and ``created_at``
    (unix time).
    """
    get_database()
    query = (
        User.select(User.username, User.domain, User.enabled, User.created_at)
        .where(User.domain == domain)
        .order_by(User.username)
        .dicts()
    )
    rows = cast(Iterable[dict[str, Any]], query)
    return list(rows)


def set_user_enabled(username: str, domain: str, enabled: bool) -> bool:
    """Enable or disable a user; return False if there is no such user."""
    with get_database().atomic():
        count = (
            User.update(enabled=bool(enabled))
            .where((User.username == username) & (User.domain == domain))
            .execute()
        )
        _changed()
    return bool(count > 0)


def delete_user(username: str, domain: str) -> bool:
    """Delete a user; return False if there was no such user."""
    with get_database().atomic():
        count = User.delete().where((User.username == username) & (User.domain == domain)).execute()
        _changed()
    if count:
        log.info("user %s@%s deleted", username, domain)
    return bool(count > 0)


_HEX = frozenset("0123456789abcdef")


def _ha1_row(user: dict[str, Any], domain: str) -> dict[str, Any]:
    """A User row from a pushed ``{username, ha1_md5, ha1_sha256, enabled}``, checked."""
    if not isinstance(user, dict):
        raise StoreError("a pushed user must be an object, not %r" % (user,))
    username = validate_username(user.get("username"))  # type: ignore[arg-type] # checked there
    md5, sha256 = user.get("ha1_md5"), user.get("ha1_sha256")
    for value, size, name in ((md5, 32, "ha1_md5"), (sha256, 64, "ha1_sha256")):
        if not isinstance(value, str) or len(value) != size or not _HEX.issuperset(value):
            raise StoreError("user %s: %s must be %d lowercase hex digits" % (username, name, size))
    return {
        "username": username,
        "domain": domain,
        "ha1_md5": md5,
        "ha1_sha256": sha256,
        "enabled": bool(user.get("enabled", True)),
        "created_at": time.time(),
    }


def pushed_users(domain: str) -> list[dict[str, Any]]:
    """``domain``'s users as the master pushes them (HA1s), to push them back on a rollback."""
    query = (
        User.select(User.username, User.ha1_md5, User.ha1_sha256, User.enabled)
        .where(User.domain == domain)
        .order_by(User.username)
        .dicts()
    )
    return [{**u, "enabled": bool(u["enabled"])} for u in cast(Iterable[dict[str, Any]], query)]


def replace_users(domain: str, users: list[dict[str, Any]]) -> tuple[int, int]:
    """Make ``domain``'s users exactly ``users`` (HA1s as the master pushes them).

    Each item is ``{"username", "ha1_md5", "ha1_sha256", "enabled"}``; every
    item is checked before anything is written, and the whole change is one
    transaction, so a node holds either the old set or the new one; only the
    users that differ are written. Returns ``(written, deleted)``.
    """
    validate_domain(domain)
    rows = [_ha1_row(u, domain) for u in users]
    names = {r["username"] for r in rows}
    if len(names) != len(rows):
        raise StoreError("the pushed users name someone twice")
    db = get_database()
    try:
        with db.atomic():
            # Only what differs is written: a push carries every user, and
            # one changed password must not rewrite ten thousand rows.
            query = (
                User.select(User.username, User.ha1_md5, User.ha1_sha256, User.enabled)
                .where(User.domain == domain)
                .tuples()
            )
            present = {
                u: (md5, sha256, bool(enabled))
                for u, md5, sha256, enabled in cast(Iterable[tuple[str, str, str, bool]], query)
            }
            rows = [
                r
                for r in rows
                if present.get(r["username"]) != (r["ha1_md5"], r["ha1_sha256"], r["enabled"])
            ]
            for chunk in peewee.chunked(rows, _ROWS_PER_STATEMENT):
                (
                    User.insert_many(chunk)
                    .on_conflict(
                        conflict_target=[User.username, User.domain],
                        preserve=[User.ha1_md5, User.ha1_sha256, User.enabled],
                    )
                    .as_rowcount()
                    .execute()
                )
            gone = sorted(set(present) - names)
            for names_chunk in peewee.chunked(gone, _ROWS_PER_STATEMENT):
                (
                    User.delete()
                    .where((User.domain == domain) & (User.username.in_(names_chunk)))
                    .execute()
                )
            _changed()
    except peewee.PeeweeException as exc:
        raise StoreError("cannot write users: %s" % exc) from exc
    return len(rows), len(gone)
