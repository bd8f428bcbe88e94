"""REGISTER and call rates of each node over the last minute, from its counters.

A node's ``status`` answer carries counters that only grow while its
process lives (``actors.traffic``): REGISTERs taken and call attempts.
``Rates`` keeps, per node, the samples of the last ``WINDOW`` seconds and
gives the rate between the oldest and the newest (per second). Every
status answer the master gets feeds it (the pages, ``/metrics``, the
``RateSampler`` that ``run.py master`` runs every ``SAMPLE_EVERY``
seconds); a restarted node (its ``started_at`` moved, or a counter went
back) starts a new series. Bounded: ``MAX_SAMPLES`` per node, and only the
nodes the master knows.
"""

import logging
import time
from collections import deque

from flask import current_app

from store import master as ms

from . import cluster
from .periodic import Periodic

log = logging.getLogger(__name__)

WINDOW = 60.0
"""Seconds the rates look back."""
SAMPLE_EVERY = 5.0
"""Seconds between two samples of the sampler."""
MAX_SAMPLES = 64
"""Samples kept per node (more than a window's worth at the sampler's pace)."""


def _counts(status: dict) -> tuple[float, int, int] | None:
    requests = status.get("requests")
    if not isinstance(requests, dict) or "started_at" not in status:
        return None
    return (
        float(status["started_at"]),
        int(requests.get("REGISTER", 0)),
        int(status.get("call_attempts", 0)),
    )


class Rates:
    """Samples per node and the rates they give."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.samples: dict[str, deque] = {}

    def record(self, states: dict) -> None:
        """Keep a sample of every answer of ``states`` (``{node id: status or error}``)."""
        now = self.clock()
        for node_id, status in states.items():
            counts = _counts(status) if isinstance(status, dict) else None
            if counts is None:
                continue
            series = self.samples.setdefault(node_id, deque(maxlen=MAX_SAMPLES))
            if series and (
                series[-1][1] != counts[0] or series[-1][2] > counts[1] or series[-1][3] > counts[2]
            ):
                series.clear()  # a new process: its counters start over
            series.append((now, *counts))
            while series and now - series[0][0] > WINDOW:
                series.popleft()

    def forget(self, known: set[str]) -> None:
        """Drop the samples of nodes no longer known."""
        for node_id in set(self.samples) - known:
            del self.samples[node_id]

    def of(self, node_id: str) -> dict:
        """``{"register_rate", "call_rate", "window"}`` (per second, over ``window``
        seconds up to the last minute), or Nones before two samples exist."""
        now = self.clock()
        kept = [s for s in self.samples.get(node_id, ()) if now - s[0] <= WINDOW]
        if len(kept) < 2 or kept[-1][0] <= kept[0][0]:
            return {"register_rate": None, "call_rate": None, "window": None}
        first, last = kept[0], kept[-1]
        span = last[0] - first[0]
        return {
            "register_rate": round((last[2] - first[2]) / span, 2),
            "call_rate": round((last[3] - first[3]) / span, 2),
            "window": round(span, 1),
        }


class RateSampler(Periodic):
    """Asks every node for its brief status every ``every`` seconds and feeds ``rates``."""

    what = "sampling the nodes' counters"

    def __init__(self, bus, rates: Rates, every: float = SAMPLE_EVERY):
        super().__init__(every)
        self.bus = bus
        self.rates = rates

    def round(self) -> None:
        """One sample of every node (:meth:`sample`)."""
        self.sample()

    def sample(self) -> None:
        """One sample of every node."""
        nodes = ms.list_nodes()
        self.rates.forget({n["node_id"] for n in nodes})
        self.rates.record(cluster.ask_all(self.bus, nodes, {"cmd": "status", "brief": True}))


def states_and_rates(bus, nodes: list[dict]) -> tuple[dict, Rates]:
    """Every node's full status (asked now, ``{}`` without a bus), recorded into the
    app's ``Rates``, and those rates."""
    rates = current_app.extensions["rates"]
    states = cluster.node_states(bus, nodes) if bus is not None else {}
    rates.record(states)
    return states, rates
