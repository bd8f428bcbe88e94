"""The node's outbox of call events: kept in its own store until the master has them.

Each event gets the next number of this node's sequence (kept in
``NodeState`` under :data:`SEQ_KEY`, in the same transaction as the rows,
so a number is never given twice, even after every row was deleted or the
node restarted). The master reads them in order with :func:`events_since`
and deletes what it has stored with :func:`ack_upto`.
"""

from typing import Any

import peewee

from store.db import StoreError
from store.models import CallEventRow, get_database, get_state, set_state

SEQ_KEY = "call_event_seq"
"""NodeState key of the last sequence number given to a call event."""

FIELDS = ("seq", "at", "kind", "call_id", "caller", "callee", "source", "status")
"""What each event read from the outbox carries."""


def append_events(rows: list[dict[str, Any]]) -> int:
    """Write ``rows`` (dicts of :data:`FIELDS` but ``seq``) in one transaction, numbered
    after the last event; return the last number given."""
    db = get_database()
    try:
        with db.atomic():
            last = int(get_state(SEQ_KEY, 0))
            numbered = [{**row, "seq": last + k} for k, row in enumerate(rows, 1)]
            for start in range(0, len(numbered), 100):
                CallEventRow.insert_many(numbered[start:start + 100]).execute()
            last += len(numbered)
            set_state(SEQ_KEY, last)
    except peewee.PeeweeException as e:
        raise StoreError(f"cannot write call events: {e}") from e
    return last


def events_since(since: int, limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` events numbered above ``since``, in order."""
    query = (CallEventRow.select().where(CallEventRow.seq > since)
             .order_by(CallEventRow.seq).limit(limit))
    return [{f: getattr(row, f) for f in FIELDS} for row in query]


def ack_upto(upto: int) -> int:
    """Delete every event numbered ``upto`` or less; return how many went."""
    with get_database().atomic():
        return int(CallEventRow.delete().where(CallEventRow.seq <= upto).execute())


def pending_count() -> int:
    """How many events wait in the outbox."""
    return int(CallEventRow.select().count())


def last_seq() -> int:
    """The number of the latest event written (0 before the first)."""
    return int(get_state(SEQ_KEY, 0))
