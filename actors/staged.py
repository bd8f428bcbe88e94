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

Test hook :data:`BREAK_AT_ENV`: no real change breaks one node's self-check
after it applies (a version is checked on the master first, and one for a
domain the node does not serve is refused before it applies), so the path
"applied, unhealthy, rolled back by the node itself" is tested with real
processes by starting a node with this variable set.
"""

import logging
import os

from gevent import socket

from .bus import BusError
from .config_sync import MASTER, ConfigSync
from .selfcheck import self_check

log = logging.getLogger(__name__)

BREAK_AT_ENV = "TANDEM_TEST_SELFCHECK_UNREACHABLE_AT"
"""Tests only: while the node runs the configuration version this variable names, its
self-check probes a UDP port that never answers, as a node broken by that version
would answer nothing (``tests/test_staged_rollout.py``). Unset in any real setup."""


class StagedConfig:
    """``config_staged``, ``config_health`` and ``config_rollback`` of one node."""

    def __init__(self, sync: ConfigSync, check):
        self.sync = sync
        self.check = check
        """``check() -> None | reason``: the node's self-check."""
        self.previous: dict | None = None
        """What the node ran before the staged version it runs (kept until the next)."""
        self.staged_version = 0
        self.stats = {"received": 0, "staged": 0, "rolled_back": 0}

    @staticmethod
    def _master_only(request: dict, what: str) -> None:
        if request.get("from") != MASTER:
            log.warning("refused %s from %s: not the master's key", what,
                        request.get("from") or "?")
            raise BusError(f"{what} is accepted from the master's key only")

    def stage(self, request: dict) -> dict:
        """Apply a version, check itself, roll back by itself when unhealthy."""
        self._master_only(request, "a staged configuration")
        self.stats["received"] += 1
        before = self.check()
        if before is not None:
            raise BusError(f"this node does not serve even before the change: {before}")
        snapshot = self.sync.snapshot()
        try:
            result = self.sync.apply(request)
        except BusError as e:
            return {"version": snapshot["version"], "applied": False, "healthy": False,
                    "rolled_back": False, "reason": str(e)}
        if not result["applied"]:
            return {**result, "healthy": True}
        self.stats["staged"] += 1
        self.previous, self.staged_version = snapshot, result["version"]
        reason = self.check()
        if reason is None:
            return {**result, "healthy": True}
        self._roll_back()
        return {"version": snapshot["version"], "applied": False, "healthy": False,
                "rolled_back": True, "reason": reason}

    def health(self, _request: dict) -> dict:
        """Run the self-check now: the version run, healthy or not and why."""
        reason = self.check()
        return {**self.sync.version(), "healthy": reason is None, "reason": reason or "",
                **self.stats}

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
    staged = node.staged_config = StagedConfig(sync, check)
    control = node.replicator.control
    control.handle("config_staged", staged.stage)
    control.handle("config_health", staged.health)
    control.handle("config_rollback", staged.rollback)
    return staged
