"""The master's audit log: who did what to the cluster, when, and from where.

One row per admin action (a login, a failed login, each change with its
state before and after, a push, a service action, a drain, a ban lifted),
written by :func:`record`. Nothing secret is ever kept: :func:`scrub` turns
the value of any key that names a secret (password, HA1, secret, token) into
``"[redacted]"`` before a row is written, whatever the caller passed.
Rows older than the retention setting (``audit_retention_days`` in the
master's settings, :data:`DEFAULT_RETENTION_DAYS` by default) are pruned, and
the log never holds more than :data:`MAX_ENTRIES` rows.
"""

import csv
import io
import json
import time
from collections.abc import Iterable
from typing import Any, cast

import peewee

from store import master as ms
from store.cdrs import csv_cell
from store.db import StoreError

MAX_ENTRIES = 1_000_000
"""Rows the log holds at most (failed ones go first, then the oldest)."""
DEFAULT_RETENTION_DAYS = 365
"""Days a row is kept unless ``audit_retention_days`` says otherwise."""
MAX_RETENTION_DAYS = 3650
"""Longest retention the setting accepts."""
PRUNE_EVERY = 60.0
"""Seconds between two prunes made by :func:`record`."""
MAX_TEXT = 200
"""Characters kept of a name, an address, an action or a target."""
MAX_DETAIL = 4000
"""Characters kept of a before, an after or a result."""
SECRET_WORDS = ("password", "passwd", "ha1", "secret", "token", "private")
"""A key containing one of these names a secret: its value is never written."""
FIELDS = ("at", "actor", "address", "action", "target", "ok", "before", "after", "result")
"""The columns of a row as :func:`search` and the CSV give them."""


class AuditEntry(ms.MasterModel):
    """One admin action."""

    id = peewee.AutoField()
    at = peewee.DoubleField(index=True)
    actor = peewee.TextField(index=True)
    """The admin's name (or ``master`` for what the master does by itself)."""
    address = peewee.TextField(default="")
    """The client's address as the socket saw it (never a forwarded-for header)."""
    action = peewee.TextField(index=True)
    target = peewee.TextField(default="")
    ok = peewee.BooleanField(default=True)
    before = peewee.TextField(default="")
    """The state before the change, JSON (empty when the action changes no state)."""
    after = peewee.TextField(default="")
    result = peewee.TextField(default="")

    class Meta:
        table_name = "master_audit"


_last_prune = 0.0


def scrub(value: Any) -> Any:
    """``value`` with every secret-named key's value replaced by ``"[redacted]"``."""
    if isinstance(value, dict):
        return {
            str(k): "[redacted]" if any(w in str(k).lower() for w in SECRET_WORDS) else scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def _json(value: Any) -> str:
    if value is None:
        return ""
    text = json.dumps(scrub(value), sort_keys=True, default=str)
    if len(text) > MAX_DETAIL:  # still JSON: the beginning, said to be cut
        text = json.dumps({"cut at": MAX_DETAIL // 2, "text": text[: MAX_DETAIL // 2]})
    return text


def record(
    actor: str,
    action: str,
    target: str = "",
    address: str = "",
    *,
    before: Any = None,
    after: Any = None,
    result: str = "",
    ok: bool = True,
    now: float | None = None,
) -> None:
    """Write one row (secrets scrubbed, texts bounded); prune now and then."""
    global _last_prune
    at = time.time() if now is None else now
    AuditEntry.create(
        at=at,
        actor=(actor or "?")[:MAX_TEXT],
        address=(address or "")[:MAX_TEXT],
        action=action[:MAX_TEXT],
        target=(target or "")[:MAX_TEXT],
        ok=bool(ok),
        before=_json(before),
        after=_json(after),
        result=(result or "")[:MAX_DETAIL],
    )
    if at - _last_prune >= PRUNE_EVERY:
        _last_prune = at
        prune(at)


def retention_days() -> int:
    """The retention setting in days."""
    return int(ms.get_setting("audit_retention_days", DEFAULT_RETENTION_DAYS))


def set_retention_days(days: int) -> None:
    """Change the retention (1 to :data:`MAX_RETENTION_DAYS` days) and prune at once."""
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_RETENTION_DAYS:
        raise StoreError(
            f"audit retention must be a whole number of days from 1 to {MAX_RETENTION_DAYS}"
        )
    ms.set_setting("audit_retention_days", days)
    prune()


def prune(now: float | None = None) -> int:
    """Delete the rows older than the retention and those beyond :data:`MAX_ENTRIES`
    (failed ones first, then the oldest); how many went."""
    now = time.time() if now is None else now
    gone = AuditEntry.delete().where(AuditEntry.at < now - retention_days() * 86400).execute()
    extra = AuditEntry.select().count() - MAX_ENTRIES
    if extra > 0:
        # Refused and failed rows go first: a flood of bad logins from many addresses
        # must not push the admins' changes out of the log.
        oldest = (
            AuditEntry.select(AuditEntry.id).order_by(AuditEntry.ok, AuditEntry.id).limit(extra)
        )
        gone += AuditEntry.delete().where(AuditEntry.id.in_(oldest)).execute()
    return int(gone)


def _as_dict(row: AuditEntry) -> dict[str, Any]:
    out = {f: getattr(row, f) for f in FIELDS}
    for f in ("before", "after"):
        out[f] = json.loads(out[f]) if out[f] else None
    return out


def search(
    actor: str = "",
    action: str = "",
    target: str = "",
    since: float | None = None,
    until: float | None = None,
    failed: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    """Rows matching the filters (actor and action exact, target a substring, ``failed``
    only those that did not succeed), newest first: ``{"total", "entries"}``."""
    query = AuditEntry.select()
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action == action)
    if target:
        query = query.where(AuditEntry.target.contains(target))
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at < until)
    if failed:
        query = query.where(AuditEntry.ok == False)
    page = query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit).offset(offset)
    return {"total": query.count(), "entries": [_as_dict(r) for r in page]}


def actions() -> list[str]:
    """Every action name the log holds (for the page's filter)."""
    rows = AuditEntry.select(AuditEntry.action).distinct().order_by(AuditEntry.action).tuples()
    return [a for (a,) in cast(Iterable[tuple[str]], rows)]


def to_csv(entries: list[dict[str, Any]]) -> str:
    """Rows as CSV text with a header row (cells a spreadsheet will not run)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    for e in entries:
        writer.writerow(
            [
                csv_cell(
                    json.dumps(e[f], sort_keys=True)
                    if f in ("before", "after") and e[f] is not None
                    else e[f]
                )
                for f in FIELDS
            ]
        )
    return out.getvalue()
