"""User CSV files: imports that run in the background, with their progress, and exports.

An upload (page or API) hands the CSV text to :class:`Imports`, which
checks, hashes and writes it in its own greenlet while the page polls the
job's state (``checking``, ``hashing``, ``writing``, then ``done`` or
``failed``). Everything is checked before anything is written: a bad line
fails the job with the file's name and the line number, and the users stay
as they were (:func:`store.master.save_users`). One import runs at a time;
the newest :data:`MAX_JOBS` jobs are remembered.

An export lists users (name, enabled, creation time; never an HA1) with every
cell that a spreadsheet would run as a formula (``=cmd|...``) quoted.
"""

import csv
import datetime
import io
import itertools
import logging
import time
from dataclasses import asdict, dataclass, field

import gevent

from store import audit
from store.cdrs import csv_cell
from store import master as ms
from store.db import StoreError
from store.users import read_users_csv

log = logging.getLogger(__name__)

MAX_JOBS = 20
"""Finished import jobs remembered (the oldest are forgotten)."""


EXPORT_FIELDS = ("username", "enabled", "created_at")
"""The columns of an export."""


def export_csv(search: str = "", enabled: bool | None = None) -> str:
    """The users matching ``search`` and ``enabled`` as CSV text, by name."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EXPORT_FIELDS)
    for u in ms.list_users(search, ms.MAX_USERS, 0, enabled):
        created = datetime.datetime.fromtimestamp(u["created_at"], datetime.UTC)
        writer.writerow(
            [
                csv_cell(u["username"]),
                "yes" if u["enabled"] else "no",
                created.strftime("%Y-%m-%d %H:%M:%S"),
            ]
        )
    return out.getvalue()


class ImportBusy(Exception):
    """An import is running already."""


@dataclass
class ImportJob:
    """One import: what it reads, how far it got and how it ended."""

    id: int
    name: str
    actor: str
    phase: str = "checking"
    done: int = 0
    total: int = 0
    version: int = 0
    error: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0

    @property
    def running(self) -> bool:
        """Whether the job has not ended yet."""
        return self.phase not in ("done", "failed")

    def as_dict(self) -> dict:
        """The job's state, JSON-ready."""
        return {**asdict(self), "running": self.running}


class Imports:
    """Runs user imports one at a time in the background; ``on_done()`` after a success."""

    def __init__(self, on_done=None):
        self.jobs: dict[int, ImportJob] = {}
        self.greenlet: gevent.Greenlet | None = None
        self.on_done = on_done
        self._ids = itertools.count(1)

    def start(self, name: str, text: str, actor: str) -> ImportJob:
        """Start importing ``text`` (CSV ``username,password``) read from file ``name``."""
        if any(j.running for j in self.jobs.values()):
            raise ImportBusy("an import is running already: wait for it to end")
        job = ImportJob(next(self._ids), name[:128], actor)
        self.jobs[job.id] = job
        while len(self.jobs) > MAX_JOBS:
            del self.jobs[min(self.jobs)]
        self.greenlet = gevent.spawn(self._run, job, text)
        return job

    def get(self, job_id: int) -> ImportJob | None:
        """The job numbered ``job_id``, if it is remembered."""
        return self.jobs.get(job_id)

    def wait(self, timeout: float) -> bool:
        """Until the running import ends (bounded); whether it did."""
        if self.greenlet is not None:
            self.greenlet.join(timeout)
        return not any(j.running for j in self.jobs.values())

    def _progress(self, job: ImportJob, phase: str, done: int) -> None:
        job.phase, job.done = phase, done
        gevent.sleep(0)  # let the pages (and their polls) be served meanwhile

    def _run(self, job: ImportJob, text: str) -> None:
        try:
            self._import(job, text)
            audit.record(
                job.actor,
                "users imported",
                job.name,
                after={"users": job.total, "version": job.version},
                result=job.error
                or f"{job.total} users imported in {job.finished_at - job.started_at:.1f} s",
                ok=not job.error,
            )
        except Exception:
            log.exception("audit: cannot record user import %d", job.id)
        finally:
            ms.master_db.close()  # this greenlet's own connection

    def _import(self, job: ImportJob, text: str) -> None:
        try:
            rows = read_users_csv(io.StringIO(text, newline=""), job.name)
            if not rows:
                raise StoreError(
                    f"{job.name} holds no user (expected the header "
                    "username,password, then one user a line)"
                )
            job.total = len(rows)
            gevent.sleep(0)
            job.version = ms.save_users(
                rows,
                f"{len(rows)} users imported from {job.name}",
                lambda phase, done: self._progress(job, phase, done),
            )
        except StoreError as e:
            job.phase, job.error = "failed", f"Nothing imported: {e}"
        except Exception:
            log.exception("user import %d from %s failed", job.id, job.name)
            job.phase, job.error = "failed", "Nothing imported: internal error (see the log)"
        else:
            job.phase, job.done = "done", job.total
            if self.on_done is not None:
                self.on_done()
        job.finished_at = time.time()
        log.info(
            "user import %d from %s: %s",
            job.id,
            job.name,
            job.error or f"{job.total} users, configuration {job.version}",
        )
