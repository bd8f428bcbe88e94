"""Upgrades across releases for tests: the previous release's tree, and load through it.

:func:`previous_tree` extracts the previous release (the tag
:data:`PREVIOUS_RELEASE`, else its commit :data:`PREVIOUS_COMMIT`, for a
clone without tags) with ``git archive`` into a folder its ``run.py`` runs
from with this interpreter; without git or that commit the test is skipped,
and fails under ``CI``. :class:`Load` sends SIPp registrations and calls,
round after round, through the nodes in service, from loopback or from a
phones host of ``tests.netns``, and counts what failed.
"""

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from loadtest.bench_call import write_call_inf
from loadtest.bench_register import write_register_inf
from loadtest.harness import ROOT, free_port, run_sipp
from tests.conftest import _in_ci
from tests.joined import wait

PREVIOUS_RELEASE = "v0.23.0"
"""The tag of the release before this one (the one a rolling upgrade starts from)."""
PREVIOUS_COMMIT = "c39eecb04a25d65e30b2fa0aefbe47f0142d4142"
"""Its commit, for a clone made without tags."""


def _git(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, timeout=60, **kw)


def previous_commit() -> str | None:
    """The previous release's commit: by its tag if the clone has it, else by its id."""
    if shutil.which("git") is None:
        return None
    for ref in (f"{PREVIOUS_RELEASE}^{{commit}}", f"{PREVIOUS_COMMIT}^{{commit}}"):
        out = _git("rev-parse", "--verify", "--quiet", ref, text=True)
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def previous_tree(tmp_path_factory) -> str:
    """A folder holding the previous release's tree, runnable with this interpreter
    (skips the test when the clone lacks it; fails it under ``CI``)."""
    commit = previous_commit()
    if commit is None:
        why = (
            f"the previous release ({PREVIOUS_RELEASE}, {PREVIOUS_COMMIT[:12]}) is not in "
            f"this clone (`git fetch --tags`)"
        )
        if _in_ci():
            pytest.fail(why + " and CI is set", pytrace=False)
        pytest.skip(why)
    dest = str(tmp_path_factory.mktemp(PREVIOUS_RELEASE))
    archive = _git("archive", "--format=tar", commit)
    assert archive.returncode == 0, archive.stderr
    subprocess.run(["tar", "-x", "-C", dest], input=archive.stdout, check=True, timeout=60)
    version = subprocess.run(
        [sys.executable, os.path.join(dest, "run.py"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=dest,
    )
    assert version.returncode == 0, version.stderr
    return dest


def schema_of(database: str, name: str = "node") -> int:
    """The schema version (``node`` or ``master``) the SQLite file ``database`` records."""
    with sqlite3.connect(database) as db:
        return db.execute("SELECT version FROM schema_versions WHERE name = ?", (name,)).fetchone()[
            0
        ]


@dataclass
class Phones:
    """Where SIPp runs: loopback (free ports found there), or a host of ``tests.netns``
    (its address and ``ip netns exec`` prefix; ports handed out upwards from ``base``,
    since this process cannot probe another host's ports)."""

    address: str = "127.0.0.1"
    prefix: tuple = ()
    base: int = 0

    def port(self) -> int:
        """A local port for one more SIPp run."""
        if not self.prefix:
            return free_port(self.address)
        self.base += 1
        return self.base


def calls(node, callers, callee: str, work: str, phones: Phones) -> tuple[int, int]:
    """Authenticated SIPp calls from ``callers`` through ``node`` to ``callee``:
    ``(attempted, failed)``."""
    inf = os.path.join(work, f"calls-{time.monotonic_ns()}.csv")
    write_call_inf(inf, callers, node.domain, callee)
    res = run_sipp(
        "uac_auth_call.xml",
        f"{node.address}:{node.port}",
        work,
        inf=inf,
        calls=len(callers),
        rate=20,
        limit=20,
        local_ip=phones.address,
        local_port=phones.port(),
        timeout=30,
        prefix=phones.prefix,
    )
    return len(callers), len(callers) - res.successful


def registrations(node, rows, port: int, work: str, phones: Phones) -> tuple[int, int]:
    """Register ``rows`` through ``node`` from local ``port``: ``(attempted, failed)``."""
    inf = os.path.join(work, f"reg-{time.monotonic_ns()}.csv")
    write_register_inf(inf, rows, node.domain)
    res = run_sipp(
        "register_auth.xml",
        f"{node.address}:{node.port}",
        work,
        inf=inf,
        calls=len(rows),
        rate=100,
        local_ip=phones.address,
        local_port=port,
        timeout=30,
        prefix=phones.prefix,
    )
    return len(rows), len(rows) - res.successful


class Load:
    """Registrations and calls, round after round, through the nodes in service.

    Each round registers every load user again (from one local port) and
    places a few calls to each callee, through one node of ``self.targets``
    (turn by turn), until ``stop()``; it counts what was attempted and failed.
    Nodes need ``id``, ``address``, ``port`` and ``domain``.
    """

    def __init__(self, nodes, users, callees: list[str], work: str, phones: Phones | None = None):
        self.users, self.callees, self.work = users, callees, work
        self.phones = phones or Phones()
        self.targets = list(nodes)
        self.port = self.phones.port()
        self.rounds = 0
        self.counts = {"registrations": [0, 0], "calls": [0, 0]}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Load":
        self._thread.start()
        return self

    def _count(self, what: str, node, result: tuple[int, int]) -> None:
        self.counts[what][0] += result[0]
        self.counts[what][1] += result[1]
        if result[1]:
            self.failures.append(
                f"round {self.rounds}: {result[1]} {what} failed through {node.id}"
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            targets = list(self.targets)
            node = targets[self.rounds % len(targets)]
            self._count(
                "registrations",
                node,
                registrations(node, self.users, self.port, self.work, self.phones),
            )
            for k, callee in enumerate(self.callees):
                callers = self.users[k * 3 : k * 3 + 3]
                self._count("calls", node, calls(node, callers, callee, self.work, self.phones))
            self.rounds += 1

    def wait_rounds(self, n: int, timeout: float = 60) -> bool:
        """Until ``n`` more rounds are done (bounded)."""
        target = self.rounds + n
        return bool(wait(lambda: self.rounds >= target, timeout, 0.1))

    @contextmanager
    def sparing(self, node, nodes, rounds_after: int):
        """Send no load to ``node`` while the block runs (from the round after the one
        under way, which is waited for), then through all ``nodes`` again for
        ``rounds_after`` rounds."""
        self.targets = [n for n in nodes if n is not node]
        assert self.wait_rounds(1), self.counts
        yield
        self.targets = list(nodes)
        assert self.wait_rounds(rounds_after), self.counts

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
