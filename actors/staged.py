"""Staged configuration on a node: apply a version, check itself, roll back by itself.

The master rolls a new version out to one node first (``web.push``) with
``config_staged``: the node checks itself first (``actors.selfcheck``; a node
that does not serve before the change says so, an error the master retries,
not blamed on the version), keeps what it runs, applies the version
(``actors.config_sync``) and checks itself again. Unhealthy, it rolls back at
once, by itself, whether or not the master still listens, and answers
``healthy: false`` with the reason; a version the node refuses outright (a
domain it does not serve) changes nothing and is answered the same way. The
master then stops the rollout. ``config_rollback`` (the master's, when a staged
push went unanswered) puts back what the node ran before a staged version
that it still runs; ``config_health`` runs the self-check now. Only the
master's key may stage or roll back (CurveZMQ proves it, as for ``config``).

A node still syncing answers every SIP request 503, so its self-check cannot
pass, and it serves nobody yet. The master never makes it the first node of a
rollout (a push marked ``first`` finding the node syncing, as after a restart
since the master asked, is an error the master retries); any other version
staged on it has been checked on a synced node already. It takes that one at
once, unchecked, so that it has its users and peers when it starts serving,
and answers ``checked: false``. A greenlet then waits (at most
:data:`SYNC_WAIT`) for the sync and checks the node: unhealthy while it still
runs that version, it rolls back by itself, and the master stages the version
on it again, now synced, with the check before and after. The control endpoint
answers one request at a time, so no handler waits for the sync.

Test hook :data:`BREAK_AT_ENV`: no real change breaks one node's self-check
after it applies (a version is checked on the master first, and one for a
domain the node does not serve is refused before it applies), so the path
"applied, unhealthy, rolled back by the node itself" is tested with real
processes by starting a node with this variable set.
"""

import logging
import os
import time

import gevent
from gevent import socket

from .bus import BusError
from .config_sync import MASTER, ConfigSync
from .selfcheck import self_check

log = logging.getLogger(__name__)

BREAK_AT_ENV = "TANDEM_TEST_SELFCHECK_UNREACHABLE_AT"
"""Tests only: while the node runs the configuration version this variable names, its
self-check probes a UDP port that never answers, as a node broken by that version
would answer nothing (``tests/test_staged_rollout.py``). Unset in any real setup."""
SYNC_WAIT = 60.0
"""Seconds a version taken while syncing waits for the sync before its self-check
(a node alone syncs within ``alone_wait``; with peers, within a few snapshots)."""
SYNC_POLL = 0.1
"""Seconds between looks at whether the node is synced."""


class StagedConfig:
    """``config_staged``, ``config_health`` and ``config_rollback`` of one node."""

    def __init__(
        self, sync: ConfigSync, check, synced=None, sync_wait: float = SYNC_WAIT, spawn=gevent.spawn
    ):
        self.sync = sync
        self.check = check
        """``check() -> None | reason``: the node's self-check."""
        self.synced = synced or (lambda: True)
        """``synced() -> bool``: whether the node serves SIP (a node syncing answers 503)."""
        self.sync_wait = sync_wait
        self.spawn = spawn
        """Starts the later check (the node's group: stopped with the node)."""
        self.previous: dict | None = None
        """What the node ran before the staged version it runs (kept until the next)."""
        self.staged_version = 0
        self.later: gevent.Greenlet | None = None
        """The check of a version taken while syncing, once synced (``_check_once_synced``)."""
        self.stats = {"received": 0, "staged": 0, "rolled_back": 0, "unchecked": 0}

    @staticmethod
    def _master_only(request: dict, what: str) -> None:
        if request.get("from") != MASTER:
            log.warning(
                "refused %s from %s: not the master's key", what, request.get("from") or "?"
            )
            raise BusError(f"{what} is accepted from the master's key only")

    def stage(self, request: dict) -> dict:
        """Apply a version, check itself, roll back by itself when unhealthy."""
        self._master_only(request, "a staged configuration")
        self.stats["received"] += 1
        if not self.synced():
            if request.get("first"):
                raise BusError(
                    "this node is syncing: it cannot check itself, so it cannot "
                    "be the first node of a rollout"
                )
            return self._stage_syncing(request)
        before = self.check()
        if before is not None:
            raise BusError(f"this node does not serve even before the change: {before}")
        result, answer = self._take(request)
        if answer is not None:
            return answer
        kept = self.previous["version"] if self.previous is not None else 0
        reason = self.check()
        if reason is None:
            return {**result, "healthy": True}
        self._roll_back()
        return {
            "version": kept,
            "applied": False,
            "healthy": False,
            "rolled_back": True,
            "reason": reason,
        }

    def _take(self, request: dict) -> tuple[dict, dict | None]:
        """Apply ``request``'s version, keeping the one it replaces to roll back to:
        ``(the apply's result, None)``, or ``({}, the answer)`` when nothing was staged
        (refused, or not newer than the version running)."""
        snapshot = self.sync.snapshot()
        try:
            result = self.sync.apply(request)
        except BusError as e:
            return {}, {
                "version": snapshot["version"],
                "applied": False,
                "healthy": False,
                "rolled_back": False,
                "reason": str(e),
            }
        if not result["applied"]:
            return {}, {**result, "healthy": True}
        self.stats["staged"] += 1
        self.previous, self.staged_version = snapshot, result["version"]
        return result, None

    def _stage_syncing(self, request: dict) -> dict:
        """Take a version while syncing, unchecked; check it once synced (class doc)."""
        result, answer = self._take(request)
        if answer is not None:
            return answer
        self.stats["unchecked"] += 1
        if self.later is not None:
            self.later.kill(block=False)
        self.later = self.spawn(self._check_once_synced, result["version"])
        log.info("configuration %d taken while syncing: checked once synced", result["version"])
        return {
            **result,
            "healthy": True,
            "checked": False,
            "reason": "taken while syncing: checked once synced",
        }

    def _check_once_synced(self, version: int) -> None:
        """Wait (bounded) until synced, then check the node while it runs ``version``;
        unhealthy, roll back by itself (the master stages the version again)."""
        deadline = time.monotonic() + self.sync_wait
        while not self.synced():
            if time.monotonic() >= deadline:
                log.warning(
                    "configuration %d taken while syncing: not synced within %.0f s, not checked",
                    version,
                    self.sync_wait,
                )
                return
            gevent.sleep(SYNC_POLL)
        if not self._runs_staged(version):
            return
        reason = self.check()
        if reason is None or not self._runs_staged(version):  # a newer one came meanwhile
            return
        log.warning(
            "configuration %d taken while syncing fails the self-check (%s): rolled back",
            version,
            reason,
        )
        self._roll_back()

    def _runs_staged(self, version: int) -> bool:
        return (
            self.previous is not None
            and self.staged_version == version
            and self.sync.version()["version"] == version
        )

    def health(self, _request: dict) -> dict:
        """Run the self-check now: the version run, healthy or not and why."""
        reason = self.check()
        return {
            **self.sync.version(),
            "healthy": reason is None,
            "reason": reason or "",
            **self.stats,
        }

    def rollback(self, request: dict) -> dict:
        """Put back what ran before staged version ``version``, if the node still runs it."""
        self._master_only(request, "a rollback")
        version = request.get("version")
        running = self.sync.version()["version"]
        if self.previous is None or version != self.staged_version or running != version:
            raise BusError(f"version {version!r} is not a staged version this node runs")
        self._roll_back()
        return {"version": self.sync.version()["version"], "rolled_back": True}

    def _roll_back(self) -> None:
        if self.previous is None:
            return
        self.sync.restore(self.previous)
        self.previous, self.staged_version = None, 0
        self.stats["rolled_back"] += 1


def attach_staged(node) -> StagedConfig | None:
    """Serve the staged commands on the node's control endpoint, beside ``config``."""
    sync = getattr(node, "config_sync", None)
    if sync is None:
        return None
    cfg = node.cfg
    broken_at = os.environ.get(BREAK_AT_ENV, "")

    def check() -> str | None:
        if broken_at and str(sync.version()["version"]) == broken_at:
            family = socket.AF_INET6 if ":" in cfg.address else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as silent:  # bound, never read
                silent.bind((cfg.address, 0))
                return self_check(cfg.address, silent.getsockname()[1], cfg.domain)
        return self_check(cfg.address, cfg.port, cfg.domain)

    staged = node.staged_config = StagedConfig(
        sync, check, lambda: node.replicator.synced, spawn=node.group.spawn
    )
    control = node.replicator.control
    control.handle("config_staged", staged.stage)
    control.handle("config_health", staged.health)
    control.handle("config_rollback", staged.rollback)
    return staged
