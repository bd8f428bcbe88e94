"""The master's alarms: raised, repeated (grouped), cleared, and their notifications.

An alarm is one row per occurrence of a trouble, keyed by its kind and
subject (``node down`` / ``node2``). While it is open, seeing the same
trouble again does not make a new alarm: it counts a repeat, and a
``repeated`` notice goes out at most once per ``repeat_every`` seconds,
with the count. When the trouble is gone, the alarm closes with a
``cleared`` notice; an event (an emergency call) has nothing to clear and
closes quietly after ``repeat_every`` seconds without a new one. A notice
waits in the row (``notice``) until it is delivered, retried a bounded
number of times.
"""

from collections.abc import Iterable
from typing import Any, cast

import peewee

from store import master as ms

MAX_ALARMS = 100_000
"""Rows kept at most (the oldest closed ones go first)."""
MAX_ATTEMPTS = 5
"""Deliveries tried for one notice before it is given up (and logged)."""


class Alarm(ms.MasterModel):
    """One occurrence of a trouble, from raised to cleared."""

    id = peewee.AutoField()
    key = peewee.TextField(index=True)
    """``kind:subject``: what groups repeats."""
    kind = peewee.TextField()
    subject = peewee.TextField()
    text = peewee.TextField()
    link = peewee.TextField(default="/")
    """The dashboard page that explains it (a path)."""
    first_at = peewee.DoubleField()
    last_at = peewee.DoubleField(index=True)
    count = peewee.IntegerField(default=1)
    open = peewee.BooleanField(default=True, index=True)
    cleared_at = peewee.DoubleField(null=True)
    notice = peewee.TextField(default="")
    """The notice waiting for delivery: ``raised``, ``repeated``, ``cleared`` or nothing."""
    notified_at = peewee.DoubleField(default=0.0)
    attempts = peewee.IntegerField(default=0)

    class Meta:
        table_name = "master_alarms"


FIELDS = (
    "id",
    "kind",
    "subject",
    "text",
    "link",
    "first_at",
    "last_at",
    "count",
    "open",
    "cleared_at",
)


def _open(key: str) -> Alarm | None:
    return Alarm.get_or_none((Alarm.key == key) & (Alarm.open == True))


def seen(kind: str, subject: str, text: str, link: str, now: float, repeat_every: float) -> Alarm:
    """Record that trouble ``kind`` of ``subject`` is there now; the alarm's row."""
    key = f"{kind}:{subject}"[:400]
    with ms.master_db.atomic():
        row = _open(key)
        if row is None:
            row = Alarm.create(
                key=key,
                kind=kind,
                subject=subject[:200],
                text=text[:1000],
                link=link[:400],
                first_at=now,
                last_at=now,
                notice="raised",
            )
            _trim()
            return row
        row.count += 1
        row.last_at, row.text = now, text[:1000]
        if not row.notice and now - row.notified_at >= repeat_every:
            row.notice, row.attempts = "repeated", 0
        row.save()
        return row


def clear_absent(kinds: Iterable[str], present: set[str], now: float) -> int:
    """Close the open alarms of ``kinds`` whose key is not in ``present``; how many."""
    closed = 0
    for row in Alarm.select().where((Alarm.open == True) & Alarm.kind.in_(list(kinds))):
        if row.key not in present:
            row.open, row.cleared_at, row.notice, row.attempts = False, now, "cleared", 0
            row.save()
            closed += 1
    return closed


def close_quiet(kinds: Iterable[str], quiet: float, now: float) -> int:
    """Close, without a notice, the open events of ``kinds`` not seen for ``quiet`` seconds."""
    return int(
        Alarm.update(open=False, cleared_at=now)
        .where((Alarm.open == True) & Alarm.kind.in_(list(kinds)) & (Alarm.last_at < now - quiet))
        .execute()
    )


def pending() -> list[Alarm]:
    """Alarms with a notice still to deliver, oldest first."""
    return list(
        Alarm.select()
        .where((Alarm.notice != "") & (Alarm.attempts < MAX_ATTEMPTS))
        .order_by(Alarm.id)
    )


def delivered(row: Alarm, ok: bool, now: float) -> None:
    """Record one delivery attempt of ``row``'s notice."""
    if ok:
        row.notice, row.notified_at, row.attempts = "", now, 0
    else:
        row.attempts += 1
    row.save()


def as_dict(row: Alarm) -> dict[str, Any]:
    """A JSON-ready view of an alarm."""
    return {f: getattr(row, f) for f in FIELDS}


def search(open_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    """Alarms, open ones first, newest first."""
    query = Alarm.select()
    if open_only:
        query = query.where(Alarm.open == True)
    rows = query.order_by(Alarm.open.desc(), Alarm.last_at.desc()).limit(limit)
    return [as_dict(r) for r in rows]


def open_of_kind(kind: str, limit: int) -> list[dict[str, Any]]:
    """The open alarms of ``kind``, newest first, at most ``limit``."""
    rows = (
        Alarm.select()
        .where((Alarm.open == True) & (Alarm.kind == kind))
        .order_by(Alarm.last_at.desc())
        .limit(limit)
    )
    return [as_dict(r) for r in rows]


def count_open() -> int:
    """How many alarms are open."""
    return Alarm.select().where(Alarm.open == True).count()


def _trim() -> None:
    extra = Alarm.select().count() - MAX_ALARMS
    if extra > 0:
        oldest = Alarm.select(Alarm.id).where(Alarm.open == False).order_by(Alarm.id).limit(extra)
        Alarm.delete().where(Alarm.id.in_(oldest)).execute()


def last_call_seen() -> int:
    """The id of the newest call record the emergency-call check has looked at (on the
    first check: the newest there is, so that old calls raise nothing)."""
    value = ms.get_setting("alarms_last_call")
    if value is None:
        value = ms.CallRecord.select(peewee.fn.MAX(ms.CallRecord.id)).scalar() or 0
        ms.set_setting("alarms_last_call", value)
    return int(value)


def emergency_calls(numbers: Iterable[str], limit: int = 1000) -> list[dict[str, Any]]:
    """Call records newer than the last looked at that a node marked as emergency calls
    (its ``[sip] emergency_numbers``) or whose callee's user part is one of ``numbers``;
    the check moves past every record it read."""
    numbers = set(numbers)
    after = last_call_seen()
    rows = cast(
        Iterable[dict[str, Any]],
        ms.CallRecord.select(
            ms.CallRecord.id,
            ms.CallRecord.call_id,
            ms.CallRecord.caller,
            ms.CallRecord.callee,
            ms.CallRecord.started_at,
        )
        .where(ms.CallRecord.id > after)
        .order_by(ms.CallRecord.id)
        .limit(limit)
        .dicts(),
    )
    rows = list(rows)
    marked = (
        {
            c
            for (c,) in cast(
                Iterable[tuple[str]],
                ms.EmergencyCall.select(ms.EmergencyCall.call_id)
                .where(ms.EmergencyCall.call_id.in_([r["call_id"] for r in rows]))
                .tuples(),
            )
        }
        if rows
        else set()
    )
    found, top = [], after
    for r in rows:
        top = max(top, r["id"])
        user = str(r["callee"]).split(":", 1)[-1].split("@", 1)[0].split(";", 1)[0]
        if user in numbers or r["call_id"] in marked:
            found.append(r)
    if top != after:
        ms.set_setting("alarms_last_call", top)
    return found
