"""The master's collector of call events: every node's outbox into call detail records.

One greenlet polls each node's ``events`` (through ``web.cluster.ask``, on
the pusher's bus) every ``interval`` seconds, all nodes at once, a bounded
number of pages per node and round. A page is stored first
(``store.cdrs.store_events``, one transaction that also moves the node's
cursor) and acknowledged after (``events_ack``): if the master dies between
the two, the node sends the page again and the cursor makes it a no-op.
A round that stored an emergency call's event calls ``on_emergency`` at
once (the alarms raise the ``emergency call`` alarm and its dashboard
banner then, not at their next check).
"""

import logging
from collections.abc import Callable

import gevent

from store import cdrs
from store import master as ms

from .cluster import ask
from .periodic import Periodic

log = logging.getLogger(__name__)

PAGE = 1000
"""Events asked per request."""
PAGES_PER_ROUND = 20
"""Pages taken from one node per round at most, so one busy node cannot hold a round."""


class CdrCollector(Periodic):
    """Polls every node's call events into the master's call detail records."""

    what = "call event collection round"

    def __init__(self, bus, interval: float = 1.0, on_emergency: Callable[[], None] | None = None):
        super().__init__(interval)
        self.bus = bus
        self.on_emergency = on_emergency
        self._emergency_seen = False
        self.stats = {"rounds": 0, "events": 0, "errors": 0, "emergency": 0}

    def round(self) -> dict:
        """One collection round (:meth:`collect_round`)."""
        return self.collect_round()

    def collect_round(self) -> dict:
        """Take what every node has; ``{node id: events stored or error text}``."""
        jobs = {n["node_id"]: gevent.spawn(self.collect, n) for n in ms.list_nodes()}
        gevent.joinall(list(jobs.values()))
        self.stats["rounds"] += 1
        if self._emergency_seen and self.on_emergency is not None:
            self._emergency_seen = False
            self.on_emergency()
        return {k: (j.value if j.successful() else "collection failed") for k, j in jobs.items()}

    def collect(self, node: dict) -> int | str:
        """Store and acknowledge ``node``'s pending events; how many were new, or an error."""
        node_id, stored = node["node_id"], 0
        for _ in range(PAGES_PER_ROUND):
            since = cdrs.cursor(node_id)
            answer = ask(self.bus, node, {"cmd": "events", "since": since, "limit": PAGE})
            if isinstance(answer, dict) and "error" in answer:
                self.stats["errors"] += 1
                return str(answer["error"])
            if not isinstance(answer, dict):
                answer = {}
            events, last = answer.get("events"), answer.get("last")
            if (
                not isinstance(events, list)
                or not isinstance(last, int)
                or not all(isinstance(e, dict) and isinstance(e.get("seq"), int) for e in events)
            ):
                self.stats["errors"] += 1
                log.warning("node %s answered events with a malformed page", node_id)
                return "malformed answer"
            if last < since:
                log.warning(
                    "node %s numbers its call events from %d again (a new store): "
                    "its cursor restarts",
                    node_id,
                    last,
                )
                cdrs.reset_cursor(node_id)
                continue
            if not events:
                if since and answer.get("pending"):
                    ask(self.bus, node, {"cmd": "events_ack", "upto": since})
                return stored
            stored += cdrs.store_events(node_id, events)
            self.stats["events"] += len(events)
            emergency = sum(1 for e in events if e.get("kind") == "emergency")
            if emergency:
                self.stats["emergency"] += emergency
                self._emergency_seen = True
            top = max(e["seq"] for e in events)
            acked = ask(self.bus, node, {"cmd": "events_ack", "upto": top})
            if isinstance(acked, dict) and "error" in acked:
                log.info("node %s: events_ack failed: %s", node_id, acked["error"])
            if len(events) < PAGE:
                return stored
        return stored
