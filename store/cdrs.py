"""Call detail records on the master: one per Call-ID, from the call events of every node.

:func:`store_events` takes a page of one node's outbox (``actors.call_outbox``)
and, in one transaction, folds each event newer than that node's cursor into
its call's record and moves the cursor: an event seen twice (a poll repeated
after the master died before its ``events_ack``) changes nothing. Folding is
order-free (earliest times win), so a BYE that passed another node and
arrives first still makes one record. Records beyond :data:`MAX_RECORDS` are
deleted oldest first.
"""

import csv
import io
import json
import logging
from collections.abc import Iterable
from typing import Any, cast

import peewee

from store.master import CallRecord, CdrCursor, EmergencyCall, master_db

log = logging.getLogger(__name__)

MAX_RECORDS = 1_000_000
"""Call detail records kept at most; the oldest go first."""

BUSY = frozenset((486, 600))
NO_ANSWER = frozenset((408, 480))
OUTCOMES = ("completed", "busy", "no answer", "cancelled", "failed", "node failure", "in progress")
"""Every outcome a record may have."""

FIELDS = (
    "call_id",
    "caller",
    "callee",
    "started_at",
    "answered_at",
    "ended_at",
    "duration",
    "outcome",
    "status",
    "nodes",
    "emergency",
)
"""What a record carries in the API and the CSV export, in order."""


def cursor(node_id: str) -> int:
    """The sequence number of the last event stored from ``node_id`` (0 before any)."""
    row = CdrCursor.get_or_none(CdrCursor.node_id == node_id)
    return int(row.seq) if row is not None else 0


def reset_cursor(node_id: str) -> None:
    """Forget the cursor of a node whose outbox started again from 1 (a new store)."""
    CdrCursor.delete().where(CdrCursor.node_id == node_id).execute()


KINDS = frozenset(("attempt", "emergency", "ringing", "answer", "failure", "cancel", "bye", "lost"))
MAX_TEXT = 512
"""Longest Call-ID, caller or callee kept (a longer one marks a malformed event)."""


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _well_formed(ev: dict[str, Any]) -> bool:
    """Whether a node's event has the fields and types a record is made of."""
    at, status = ev.get("at"), ev.get("status")
    return (
        ev.get("kind") in KINDS
        and all(
            isinstance(ev.get(k), str) and 0 < len(ev[k]) <= MAX_TEXT
            for k in ("call_id", "caller", "callee")
        )
        and isinstance(at, int | float)
        and not isinstance(at, bool)
        and 0 <= at < 1e11
        and (status is None or (_int(status) and 100 <= status <= 699))
    )


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _close(rec: CallRecord) -> None:
    """Derive the end, duration and outcome of ``rec`` from what it holds."""
    if rec.bye_at is not None:
        rec.outcome = "completed"
        rec.ended_at = rec.bye_at
    elif rec.lost_at is not None and rec.answered_at is not None:
        rec.outcome = "node failure"
        rec.ended_at = rec.lost_at
    elif rec.answered_at is not None:
        rec.outcome = "in progress"
        rec.ended_at = None
    else:
        rec.ended_at = rec.final_at
        if rec.cancelled:
            rec.outcome = "cancelled"
        elif rec.status in BUSY:
            rec.outcome = "busy"
        elif rec.status in NO_ANSWER:
            rec.outcome = "no answer"
        elif rec.status is not None:
            rec.outcome = "failed"
        else:
            rec.outcome = "in progress"
    rec.duration = (
        round(rec.ended_at - rec.answered_at, 3)
        if rec.ended_at is not None
        and rec.answered_at is not None
        and rec.outcome in ("completed", "node failure")
        else None
    )


def _fold(rec: CallRecord, ev: dict[str, Any], node_id: str) -> None:
    at, kind = float(ev["at"]), ev["kind"]
    rec.started_at = min(rec.started_at, at)
    if kind == "answer":
        rec.answered_at = _earliest(rec.answered_at, at)
    elif kind == "bye":
        rec.bye_at = _earliest(rec.bye_at, at)
    elif kind == "lost":
        rec.lost_at = _earliest(rec.lost_at, at)
    elif kind in ("failure", "cancel"):
        rec.final_at = _earliest(rec.final_at, at)
        if kind == "cancel":
            rec.cancelled = True
        elif rec.status is None or (ev.get("status") or 0) >= 600:
            rec.status = ev.get("status")
    nodes = json.loads(rec.nodes)
    if node_id not in nodes:
        rec.nodes = json.dumps(sorted([*nodes, node_id]))


def store_events(node_id: str, events: list[dict[str, Any]]) -> int:
    """Fold the events of ``node_id`` newer than its cursor into their records, in one
    transaction; return how many were new. The cursor moves to the last one."""
    with master_db.atomic():
        last = cursor(node_id)
        fresh = [
            e for e in events if isinstance(e, dict) and _int(e.get("seq")) and e["seq"] > last
        ]
        if not fresh:
            return 0
        top = max(e["seq"] for e in fresh)
        bad = [e for e in fresh if not _well_formed(e)]
        if bad:
            log.warning(
                "node %s sent %d malformed call events (first: seq %s); skipped",
                node_id,
                len(bad),
                bad[0]["seq"],
            )
            fresh = [e for e in fresh if _well_formed(e)]
        records: dict[str, CallRecord] = {}
        for ev in fresh:
            call_id = ev["call_id"]
            rec = records.get(call_id) or CallRecord.get_or_none(CallRecord.call_id == call_id)
            if rec is None:
                rec = CallRecord(
                    call_id=call_id,
                    caller=ev["caller"],
                    callee=ev["callee"],
                    started_at=float(ev["at"]),
                    outcome="in progress",
                )
            records[call_id] = rec
            _fold(rec, ev, node_id)
        for rec in records.values():
            _close(rec)
            rec.save()
        emergency = {ev["call_id"] for ev in fresh if ev["kind"] == "emergency"}
        if emergency:
            (
                EmergencyCall.insert_many([{"call_id": c} for c in sorted(emergency)])
                .on_conflict_ignore()
                .execute()
            )
        (
            CdrCursor.insert(node_id=node_id, seq=top)
            .on_conflict(conflict_target=[CdrCursor.node_id], preserve=[CdrCursor.seq])
            .execute()
        )
        _trim()
    return len(fresh)


def _trim() -> None:
    extra = CallRecord.select().count() - MAX_RECORDS
    if extra > 0:
        oldest = CallRecord.select(CallRecord.id).order_by(CallRecord.started_at).limit(extra)
        CallRecord.delete().where(CallRecord.id.in_(oldest)).execute()
        (
            EmergencyCall.delete()
            .where(EmergencyCall.call_id.not_in(CallRecord.select(CallRecord.call_id)))
            .execute()
        )


def _as_dict(rec: CallRecord, emergency: set[str]) -> dict[str, Any]:
    out = {f: getattr(rec, f) for f in FIELDS if f != "emergency"}
    out["nodes"] = json.loads(rec.nodes)
    out["emergency"] = rec.call_id in emergency
    return out


def search(
    caller: str = "",
    callee: str = "",
    outcome: str = "",
    since: float | None = None,
    until: float | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    """Records matching the filters (caller and callee: substrings; since and until: start
    times), newest first: ``{"total", "cdrs", "outcomes"}`` (counts per outcome)."""
    query = CallRecord.select()
    if caller:
        query = query.where(CallRecord.caller.contains(caller))
    if callee:
        query = query.where(CallRecord.callee.contains(callee))
    if since is not None:
        query = query.where(CallRecord.started_at >= since)
    if until is not None:
        query = query.where(CallRecord.started_at < until)
    counts = {o: 0 for o in OUTCOMES}
    grouped = cast(
        Iterable[tuple[str, int]],
        query.select(CallRecord.outcome, peewee.fn.COUNT(CallRecord.id))
        .group_by(CallRecord.outcome)
        .tuples(),
    )
    for name, count in grouped:
        counts[name] = count
    if outcome:
        query = query.where(CallRecord.outcome == outcome)
    page = list(query.order_by(CallRecord.started_at.desc()).limit(limit).offset(offset))
    ids = [r.call_id for r in page]
    emergency = {e.call_id for e in EmergencyCall.select().where(EmergencyCall.call_id.in_(ids))}
    return {
        "total": query.count(),
        "outcomes": counts,
        "cdrs": [_as_dict(r, emergency) for r in page],
    }


PER_NODE_SCAN = 100_000
"""Newest records :func:`per_node` reads at most."""


def per_node(since: float) -> dict[str, dict[str, Any]]:
    """Per node, over the calls started since ``since`` that it saw (the newest
    :data:`PER_NODE_SCAN`): calls, answered, the answer-seizure ratio (answered / calls)
    and the average call length (seconds, over completed calls with a duration)."""
    rows = (
        CallRecord.select(CallRecord.nodes, CallRecord.answered_at, CallRecord.duration)
        .where(CallRecord.started_at >= since)
        .order_by(CallRecord.started_at.desc())
        .limit(PER_NODE_SCAN)
        .tuples()
    )
    out: dict[str, dict[str, Any]] = {}
    for nodes, answered_at, duration in cast(Iterable[tuple[str, Any, Any]], rows):
        for node in json.loads(nodes):
            n = out.setdefault(node, {"calls": 0, "answered": 0, "talk": 0.0, "timed": 0})
            n["calls"] += 1
            n["answered"] += answered_at is not None
            if duration is not None:
                n["talk"] += duration
                n["timed"] += 1
    for n in out.values():
        n["asr"] = round(n["answered"] / n["calls"], 3)
        n["acl"] = round(n.pop("talk") / n["timed"], 1) if n["timed"] else None
        del n["timed"]
    return dict(sorted(out.items()))


def csv_cell(value: Any) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (OWASP CSV injection)."""
    text = "" if value is None else ";".join(value) if isinstance(value, list) else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(cdrs: list[dict[str, Any]]) -> str:
    """The records as CSV text with a header row."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    for cdr in cdrs:
        writer.writerow([csv_cell(cdr[f]) for f in FIELDS])
    return out.getvalue()


FAILURES = ("failed", "busy", "no answer")
"""Outcomes counted as failures in :func:`timeline` (a cancel is the caller's choice)."""
TIMELINE_SCAN = 200_000
"""Records :func:`timeline` reads at most (the newest of the range)."""


def timeline(since: float, until: float, buckets: int = 24) -> list[dict[str, Any]]:
    """Calls and failures per equal slice of ``[since, until)`` (by start time):
    ``[{"start", "end", "calls", "failures"}]``, oldest first."""
    if until <= since or buckets < 1:
        raise ValueError("timeline needs since < until and at least one bucket")
    width = (until - since) / buckets
    out = [
        {"start": since + k * width, "end": since + (k + 1) * width, "calls": 0, "failures": 0}
        for k in range(buckets)
    ]
    rows = (
        CallRecord.select(CallRecord.started_at, CallRecord.outcome)
        .where((CallRecord.started_at >= since) & (CallRecord.started_at < until))
        .order_by(CallRecord.started_at.desc())
        .limit(TIMELINE_SCAN)
        .tuples()
    )
    for started, outcome in cast(Iterable[tuple[float, str]], rows):
        slot = out[min(buckets - 1, int((started - since) / width))]
        slot["calls"] += 1
        slot["failures"] += outcome in FAILURES
    return out
