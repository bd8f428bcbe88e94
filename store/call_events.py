"""The node's outbox of call events: kept in its own store until the master has them.

Each event gets the next number of this node's sequence: the writer keeps
it in memory, starting above both the highest event kept and the highest
acknowledged (``NodeState`` :data:`SEQ_KEY`, written with each
acknowledgement), so a number is never given twice, even after every row
was deleted or the node restarted, and a write costs no extra query. The
master reads them in order with :func:`events_since` and deletes what it
has stored with :func:`ack_upto`.
"""

from typing import Any

import peewee

from store.db import StoreError, reset_after_failure
from store.models import CallEventRow, get_database, get_state, set_state

SEQ_KEY = "call_event_seq"
"""NodeState key of the highest sequence number acknowledged."""

FIELDS = ("seq", "at", "kind", "call_id", "caller", "callee", "source", "status")
"""What each event read from the outbox carries."""


def next_seq() -> int:
    """The number the next event gets: above every event kept and every one acknowledged."""
    top = CallEventRow.select(peewee.fn.MAX(CallEventRow.seq)).scalar() or 0
    return max(int(top), int(get_state(SEQ_KEY, 0))) + 1


def append_events(rows: list[dict[str, Any]], first: int) -> None:
    """Write ``rows`` (dicts of :data:`FIELDS` but ``seq``) in one transaction, numbered from
    ``first`` on (the caller keeps the sequence, from :func:`next_seq`)."""
    numbered = [{**row, "seq": first + k} for k, row in enumerate(rows)]
    try:
        with get_database().atomic():
            for start in range(0, len(numbered), 100):
                CallEventRow.insert_many(numbered[start : start + 100]).execute()
    except peewee.PeeweeException as e:
        reset_after_failure(get_database())
        raise StoreError(f"cannot write call events: {e}") from e


def events_since(since: int, limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` events numbered above ``since``, in order."""
    query = (
        CallEventRow.select()
        .where(CallEventRow.seq > since)
        .order_by(CallEventRow.seq)
        .limit(limit)
    )
    return [{f: getattr(row, f) for f in FIELDS} for row in query]


def ack_upto(upto: int) -> int:
    """Delete every event numbered ``upto`` or less and remember ``upto`` (so its number is
    never given again, even with the outbox empty); return how many went."""
    with get_database().atomic():
        if upto > int(get_state(SEQ_KEY, 0)):
            set_state(SEQ_KEY, upto)
        return int(CallEventRow.delete().where(CallEventRow.seq <= upto).execute())


def pending_count() -> int:
    """How many events wait in the outbox."""
    return int(CallEventRow.select().count())
