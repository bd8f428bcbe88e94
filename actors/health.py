"""What is failing in this node, and the retries that find it fixed.

A node that cannot do its work must say so, so that phones and the master
move away from it, and must come back by itself when the fault clears: a
node that answers OPTIONS 200 while its registrar answers every REGISTER
with an error keeps its phones, and they never register anywhere.

The actors report into one :class:`Health`: :meth:`Health.fail` when an
operation failed (the registrar's group commit, the call outbox's write),
:meth:`Health.ok` when one succeeded. While any kind of fault is on, the
node is ``degraded``: its control status says so with the reasons, an
OPTIONS to the node gets 503 with Retry-After (``actors.node``), and the
challenge front passes everything to the node. A kind may have a check
(:meth:`Health.watch`), which :meth:`Health.run` calls every ``retry``
seconds while the kind fails, so the node recovers with no traffic at all
(its phones have moved away); a kind without one clears at its actor's
next success.

Logging is bounded per kind: one error line when a kind starts failing, at
most one line per ``log_every`` seconds while it goes on (with the number
of failures since), and one line when it recovers.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent

from store.models import check_writable

log = logging.getLogger(__name__)

DATABASE = "database"
"""The kind of fault of a store that takes no write."""
REGISTRAR = "registrar"
"""The kind of fault of a registrar batch that raised."""
DEGRADED = "degraded"
"""The node's state in its control status while a fault is on."""


@dataclass
class Fault:
    """One kind of fault that is on."""

    reason: str
    since: float
    failures: int = 1
    logged_at: float = 0.0
    unlogged: int = 0


@dataclass
class Health:
    """The node's faults by kind, with the checks that retry them."""

    retry: float = 1.0
    """Seconds between two checks of a failing kind."""
    log_every: float = 60.0
    """Seconds between two log lines about a kind that goes on failing."""
    retry_after: int = 5
    """Seconds the 503s of a degraded node ask the client to wait (``Retry-After``)."""
    clock: Callable[[], float] = time.monotonic
    faults: dict[str, Fault] = field(default_factory=dict)
    checks: dict[str, Callable[[], object]] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """Whether no kind of fault is on."""
        return not self.faults

    def failing(self, kind: str) -> bool:
        """Whether ``kind`` of fault is on."""
        return kind in self.faults

    def fail(self, kind: str, reason: str) -> bool:
        """Record a failure of ``kind``; True when it was logged (the caller may then
        log its details, a traceback, once)."""
        now = self.clock()
        fault = self.faults.get(kind)
        if fault is None:
            self.faults[kind] = Fault(reason, now, logged_at=now)
            log.error("%s failing, the node reports itself degraded: %s", kind, reason)
            return True
        fault.reason = reason
        fault.failures += 1
        if now - fault.logged_at < self.log_every:
            fault.unlogged += 1
            return False
        log.error(
            "%s still failing after %.0f s (%d failures since the last line): %s",
            kind,
            now - fault.since,
            fault.unlogged + 1,
            reason,
        )
        fault.logged_at, fault.unlogged = now, 0
        return True

    def ok(self, kind: str) -> None:
        """Record a success of ``kind``: it recovers if it was failing."""
        fault = self.faults.pop(kind, None) if self.faults else None
        if fault is not None:
            log.warning(
                "%s recovered after %.1f s and %d failures",
                kind,
                self.clock() - fault.since,
                fault.failures,
            )

    def watch(self, kind: str, check: Callable[[], object]) -> None:
        """Retry ``kind`` with ``check`` while it fails: a check that returns is a
        success, one that raises a failure."""
        self.checks[kind] = check

    def status(self) -> dict[str, Any]:
        """``{kind: {"reason", "for", "failures"}}`` of the faults that are on."""
        now = self.clock()
        return {
            kind: {"reason": f.reason, "for": round(now - f.since, 1), "failures": f.failures}
            for kind, f in self.faults.items()
        }

    def check_failing(self) -> None:
        """Run the check of every failing kind that has one, once."""
        for kind in [k for k in self.faults if k in self.checks]:
            try:
                self.checks[kind]()
            except Exception as exc:  # a check's every failure is the fault going on
                self.fail(kind, str(exc) or type(exc).__name__)
            else:
                self.ok(kind)

    def run(self) -> None:
        """Check the failing kinds every ``retry`` seconds, for ever."""
        while True:
            gevent.sleep(self.retry)
            if self.faults:
                self.check_failing()


def attach_health(node) -> None:
    """Run the node's ``Health``: its database is checked with a write while it
    fails, and the control ``status`` says ``degraded``, with the faults, while any
    fault is on."""
    health = node.health
    health.watch(DATABASE, check_writable)
    node.group.spawn(health.run).link_exception(node.actor_died)
    control = node.replicator.control if node.replicator is not None else None
    if control is not None:

        def status(_request: dict, out: dict) -> None:
            if not health.healthy:
                out["state"] = DEGRADED
                out["faults"] = health.status()

        control.extend("status", status)
