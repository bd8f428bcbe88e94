"""The node's call-event outbox, and the ``events`` / ``events_ack`` control commands.

The proxy actor hands each turn's call events to :meth:`CallOutbox.add`,
which writes them in one transaction (``store.call_events``): durable in the
node's own store before anyone can acknowledge them. The outbox is bounded
by ``[database] max_call_events``: events beyond it are refused and counted
in ``dropped`` (better a known count of lost events than a full disk), and
so are events a failing store could not take.

The master polls ``{"cmd": "events", "since": seq, "limit": n}`` and, once it
has stored what it got, sends ``{"cmd": "events_ack", "upto": seq}``, which
deletes those events here. Peers may read the events but not acknowledge
them: only the master or an admin's control key may make them go.
"""

import logging

from sipcore.call_events import CallEvent
from store import call_events as outbox_store
from store.db import StoreError

from .bus import BusError

log = logging.getLogger(__name__)

MAX_PAGE = 1000
"""Most events one ``events`` answer holds."""


class CallOutbox:
    """Writes call events to the store, at most ``max_rows`` waiting; counts what it drops."""

    def __init__(self, max_rows: int, nodes: frozenset[str] = frozenset()):
        self.max_rows = max_rows
        self.nodes = nodes
        """ZAP names of the cluster's nodes: they may read events, never delete them."""
        self.pending = outbox_store.pending_count()
        self.stats = {"written": 0, "dropped": 0, "acked": 0}

    def add(self, events: list[CallEvent], wall: float) -> None:
        """Write ``events`` (seen at ``wall``) in one transaction, as room allows."""
        room = max(0, self.max_rows - self.pending)
        if len(events) > room:
            self.stats["dropped"] += len(events) - room
            log.warning("call event outbox full (%d events): %d events dropped",
                        self.max_rows, len(events) - room)
            events = events[:room]
        if not events:
            return
        rows = [{"at": wall, "kind": e.kind, "call_id": e.call_id, "caller": e.caller,
                 "callee": e.callee, "source": e.source, "status": e.status} for e in events]
        try:
            outbox_store.append_events(rows)
        except StoreError as e:
            self.stats["dropped"] += len(rows)
            log.error("%d call events lost: %s", len(rows), e)
            return
        self.pending += len(rows)
        self.stats["written"] += len(rows)

    def events(self, request: dict) -> dict:
        """Call events numbered above "since" (at most "limit"), with the outbox's counts."""
        since, limit = request.get("since", 0), request.get("limit", 100)
        for name, value in (("since", since), ("limit", limit)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BusError(f"{name} must be a non-negative integer")
        return {"events": outbox_store.events_since(since, min(limit, MAX_PAGE)),
                "last": outbox_store.last_seq(), "pending": self.pending,
                "max": self.max_rows, **self.stats}

    def ack(self, request: dict) -> int:
        """Delete the call events numbered up to "upto" (the master has stored them)."""
        if request.get("from") in self.nodes:
            raise BusError(f"events_ack is the master's, not node {request['from']}'s")
        upto = request.get("upto")
        if not isinstance(upto, int) or isinstance(upto, bool) or upto < 0:
            raise BusError("upto must be a non-negative integer")
        if upto > outbox_store.last_seq():
            raise BusError(f"upto {upto} is beyond the last event written")
        deleted = outbox_store.ack_upto(upto)
        self.pending = max(0, self.pending - deleted)
        self.stats["acked"] += deleted
        return deleted


def attach_call_outbox(node) -> None:
    """Give the node's proxy an outbox and serve it on the control endpoint, if any."""
    cfg = node.cfg
    outbox = CallOutbox(cfg.max_call_events, frozenset([cfg.id, *(p.id for p in cfg.peers)]))
    node.proxy.outbox = outbox
    control = node.replicator.control if node.replicator is not None else None
    if control is not None:
        control.handle("events", outbox.events)
        control.handle("events_ack", outbox.ack)
