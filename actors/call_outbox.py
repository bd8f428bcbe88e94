"""The node's call-event outbox, and the ``events`` / ``events_ack`` control commands.

The proxy actor hands each turn's call events to :meth:`CallOutbox.add`,
which only queues them; the outbox's own greenlet writes what queued every
``flush_every`` seconds in one transaction (``store.call_events``): one
commit serves every call of that moment, as the registrar's group commit
does, and the proxy's loop never waits on the disk. A SQLite transaction
costs about 1 ms here whatever it holds (``store.call_events`` measured 964
us for one event, 122 us per event in batches of 20), so one per proxy turn
would cost more than the calls. Events are durable in the node's own store
before anyone can acknowledge them (the master only sees written ones).

The outbox is bounded by ``[database] max_call_events`` (written and
queued together): events beyond it are refused and counted in ``dropped``
(better a known count of lost events than a full disk). Events a failing
store does not take stay queued, within that bound, and go in the next
write that succeeds; the node's ``Health`` hears of both (``actors.health``).

The master polls ``{"cmd": "events", "since": seq, "limit": n}`` and, once it
has stored what it got, sends ``{"cmd": "events_ack", "upto": seq}``, which
deletes those events here. Peers may read the events but not acknowledge
them: only the master or an admin's control key may make them go.
"""

import logging

import gevent

from sipcore.call_events import CallEvent
from store import call_events as outbox_store
from store.db import StoreError

from .bus import BusError
from .health import DATABASE, Health

log = logging.getLogger(__name__)

MAX_PAGE = 1000
"""Most events one ``events`` answer holds."""


class CallOutbox:
    """Queues call events and writes them to the store in batches, at most ``max_rows``
    waiting; counts what it drops. ``nodes`` are the ZAP names of the cluster's nodes:
    they may read events, never delete them."""

    def __init__(
        self,
        max_rows: int,
        nodes: frozenset[str] = frozenset(),
        flush_every: float = 0.05,
        health: Health | None = None,
    ):
        self.max_rows = max_rows
        self.health = health or Health()
        self.nodes = nodes
        self.flush_every = flush_every
        self.pending = outbox_store.pending_count()
        self.next_seq = outbox_store.next_seq()
        self.queued: list[dict] = []
        self.stats = {"written": 0, "dropped": 0, "acked": 0, "batches": 0}

    def add(self, events: list[CallEvent], wall: float) -> None:
        """Queue ``events`` (seen at ``wall``) for the next write, as room allows."""
        room = max(0, self.max_rows - self.pending - len(self.queued))
        if len(events) > room:
            self.stats["dropped"] += len(events) - room
            log.warning(
                "call event outbox full (%d events): %d events dropped",
                self.max_rows,
                len(events) - room,
            )
            events = events[:room]
        self.queued.extend(
            {
                "at": wall,
                "kind": e.kind,
                "call_id": e.call_id,
                "caller": e.caller,
                "callee": e.callee,
                "source": e.source,
                "status": e.status,
            }
            for e in events
        )

    def flush(self) -> None:
        """Write what queued, in one transaction."""
        rows = self.queued
        if not rows:
            return
        try:
            outbox_store.append_events(rows, self.next_seq)
        except StoreError as e:
            self.health.fail(DATABASE, f"{len(rows)} call events wait: {e}")
            return
        self.queued = []
        self.health.ok(DATABASE)
        self.next_seq += len(rows)
        self.pending += len(rows)
        self.stats["written"] += len(rows)
        self.stats["batches"] += 1

    def run(self) -> None:
        """Write what queued every ``flush_every`` seconds; once more when stopped."""
        try:
            while True:
                gevent.sleep(self.flush_every)
                self.flush()
        finally:
            self.flush()

    def events(self, request: dict) -> dict:
        """Call events numbered above "since" (at most "limit"), with the outbox's counts."""
        since, limit = request.get("since", 0), request.get("limit", 100)
        for name, value in (("since", since), ("limit", limit)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BusError(f"{name} must be a non-negative integer")
        return {
            "events": outbox_store.events_since(since, min(limit, MAX_PAGE)),
            "last": self.next_seq - 1,
            "pending": self.pending,
            "max": self.max_rows,
            **self.stats,
        }

    def ack(self, request: dict) -> int:
        """Delete the call events numbered up to "upto" (the master has stored them)."""
        if request.get("from") in self.nodes:
            raise BusError(f"events_ack is the master's, not node {request['from']}'s")
        upto = request.get("upto")
        if not isinstance(upto, int) or isinstance(upto, bool) or upto < 0:
            raise BusError("upto must be a non-negative integer")
        if upto >= self.next_seq:
            raise BusError(f"upto {upto} is beyond the last event written")
        deleted = outbox_store.ack_upto(upto)
        self.pending = max(0, self.pending - deleted)
        self.stats["acked"] += deleted
        return deleted


def attach_call_outbox(node) -> None:
    """Give the node's proxy an outbox, start its writer in the node's group, and serve it
    on the control endpoint, if any."""
    cfg = node.cfg
    outbox = CallOutbox(
        cfg.max_call_events, frozenset([cfg.id, *(p.id for p in cfg.peers)]), health=node.health
    )
    node.proxy.outbox = outbox
    node.group.spawn(outbox.run).link_exception(node.actor_died)
    control = node.replicator.control if node.replicator is not None else None
    if control is not None:
        control.handle("events", outbox.events)
        control.handle("events_ack", outbox.ack)
