"""Backups of the master: ``run.py master backup|restore FILE``, the dashboard's download,
and scheduled backups with retention.

An archive (``store.backup``) holds the master's whole database as one
moment, its CurveZMQ key pair (so the nodes, which know the master by its
public key, accept a restored master), the session key, the cluster secret
that joining nodes get (so they match the nodes that joined before), the
first admin's password file and the configuration file. A restore goes onto a fresh data
directory only: it refuses one that holds a key pair or a database with
data. The configuration file of the archive is written beside the keys as
``restored-master.toml`` for the operator to compare; the restored master
runs with the configuration it is started with.

The dashboard's restore (``POST /backup/restore``, also on a fresh master
after ``run.py master init``): an admin uploads an archive (at most
:data:`MAX_ARCHIVE` bytes) with the CSRF token and their password again. The
archive is read whole by :func:`check_archive` (``store.backup.check``, the
code of the command line's restore) before anything changes, then staged as
``<data_dir>/restore-staged.tar.gz`` (0600), and the master restarts: it
closes its listeners and re-executes its own command line (``os.execv``:
the same process id, so systemd, ``run.py lab`` or a shell see one process
go on). At every start :func:`apply_staged` finds a staged archive, moves
what the data folder holds into ``<data_dir>/before-restore-<UTC time>/``
(kept, never deleted; the folder itself stays, since systemd's
``StateDirectory`` is a fixed mount point under ``ProtectSystem=strict``),
restores the archive into the emptied folder with :func:`restore_backup`
and starts the restored master; if the restore fails, what was moved is put
back (the failed attempt kept in ``failed-restore-<time>/``) and the old
master starts. Either outcome is
written to ``restore-result.json`` (shown on the backup page) and the
audit log. This needs the database in the data folder (SQLite, the
default): with ``[master] database`` set the dashboard refuses, and
``run.py master restore`` onto a fresh database is the way.

Scheduled backups (``[backup]`` of the master's configuration): ``every``
seconds (default a day; 0 for none) an archive goes to ``dir`` (default
``<data_dir>/backups``, 0700), and only the newest ``keep`` (default 7)
are kept.
"""

import datetime
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass

import gevent
from flask import (
    Blueprint,
    current_app,
    g,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)

from store import audit
from store import backup as archive
from store import master as ms
from store import schema, versions
from store.files import make_private_dir, write_private
from store.migrations import MASTER_MIGRATIONS

from .auth import check_login, login_required
from .pages import ActionForm
from .settings import MasterSettings, SettingsError

log = logging.getLogger(__name__)

bp = Blueprint("backups", __name__)

SECRET_FILES = ("master.public", "master.secret", "session.key", "cluster.secret", "admin-password")
"""The data folder's files an archive carries."""
OPTIONAL_FILES = ("cluster.secret", "admin-password")
"""Of those, the ones a master may lack (made on first use, or deleted by the admin)."""
CONFIG_NAME = "master.toml"
"""The configuration file's name inside an archive."""
RESTORED_CONFIG = "restored-master.toml"
FIRST_DELAY = 60.0
"""Seconds after the start before the first scheduled archive when there is none yet."""
NAME = re.compile(r"^master-\d{8}T\d{6}Z\.tar\.gz$")
"""Scheduled archives' names (only these are pruned)."""
MAX_ARCHIVE = 256 << 20
"""Bytes an uploaded archive may have (a bigger request gets 413, read no further)."""
STAGED = "restore-staged.tar.gz"
"""The archive the next start restores (in the data folder, 0600)."""
STAGED_BY = "restore-staged.json"
"""Who staged it, from where and when."""
RESULT = "restore-result.json"
"""The outcome of the last staged restore (in the data folder the master then runs on)."""


@dataclass
class BackupPlan:
    """The ``[backup]`` settings."""

    dir: str
    every: float = 86400.0
    keep: int = 7

    @classmethod
    def of(cls, settings: MasterSettings) -> "BackupPlan":
        """The plan of ``settings`` (checked)."""
        table = dict(settings.backup)
        unknown = set(table) - {"dir", "every", "keep"}
        if unknown:
            raise SettingsError(f"unknown [backup] settings {sorted(unknown)}")
        every, keep = table.get("every", 86400), table.get("keep", 7)
        if not isinstance(every, int | float) or every < 0 or not isinstance(keep, int) or keep < 1:
            raise SettingsError("[backup] every must be seconds >= 0 and keep a count >= 1")
        if 0 < every < 60:
            raise SettingsError("[backup] every must be at least 60 seconds (or 0: none)")
        folder = os.path.join(settings.data_dir, str(table.get("dir", "backups")))
        return cls(dir=os.path.normpath(folder), every=float(every), keep=keep)


def make_backup(settings: MasterSettings, path: str, release: str = "") -> dict:
    """Write an archive of the running (or stopped) master at ``path``; its manifest.
    The master store must be open (``store.master.init_master_store``)."""
    files = {}
    for name in SECRET_FILES:
        try:
            with open(settings.path(name), "rb") as f:
                files[name] = f.read()
        except FileNotFoundError:
            if name not in OPTIONAL_FILES:
                raise SettingsError(
                    f"{settings.path(name)} is missing: is "
                    f"{settings.data_dir} a master's data folder?"
                ) from None
    if settings.config_path:
        with open(settings.config_path, "rb") as f:
            files[CONFIG_NAME] = f.read()
    db = ms.master_db.obj
    manifest = archive.backup(
        path,
        db,
        ms.master_models(),
        files,
        {"release": release, "domain": ms.domain(), "schema": schema.stored_version(db, "master")},
    )
    log.info(
        "backup of the master written to %s (%s)",
        path,
        ", ".join(f"{t} {v['rows']}" for t, v in manifest["tables"].items()),
    )
    return manifest


def backup_in_thread(settings: MasterSettings, path: str, release: str = "") -> dict:
    """:func:`make_backup` in a thread of gevent's pool, on its own database connection,
    so the master's greenlets (dashboard, pushes, call records) go on meanwhile: an
    export is CPU and disk work that would hold the loop for seconds (7.8 s for
    200,000 call records, measured)."""

    def job() -> dict:
        try:
            return make_backup(settings, path, release)
        finally:
            ms.master_db.obj.close()  # this thread's connection only

    return gevent.get_hub().threadpool.apply(job)


def check_archive(path: str) -> dict:
    """Read the whole archive at ``path`` (members, digests, rows), writing nothing, and
    check it fits this release; its manifest."""
    manifest = archive.check(
        path, [m._meta.table_name for m in ms.master_models()], (*SECRET_FILES, CONFIG_NAME)
    )
    newest = schema.current_version(MASTER_MIGRATIONS)
    if not isinstance(manifest.get("schema", 1), int) or manifest.get("schema", 1) > newest:
        raise archive.BackupError(
            f"the archive holds master schema {manifest.get('schema')!r}, "
            f"newer than this release's {newest}: restore it with the "
            "release that made it"
        )
    missing = {"master.public", "master.secret", "session.key"} - set(manifest["files"])
    if missing:
        raise archive.BackupError(f"the archive lacks {sorted(missing)}")
    return manifest


def restore_backup(settings: MasterSettings, path: str) -> dict:
    """Restore the archive at ``path`` into ``settings``' fresh data folder and database."""
    if os.path.exists(settings.path("master.secret")):
        raise SettingsError(
            f"{settings.data_dir} already holds a master (master.secret): "
            "restore onto a fresh data directory"
        )
    manifest = check_archive(path)
    make_private_dir(settings.data_dir)
    ms.init_master_store(settings.database_url)
    _, files = archive.restore(
        path, ms.master_db.obj, ms.master_models(), (*SECRET_FILES, CONFIG_NAME)
    )
    for name in SECRET_FILES:
        if name in files:
            write_private(settings.path(name), files[name].decode())
    if CONFIG_NAME in files:
        write_private(settings.path(RESTORED_CONFIG), files[CONFIG_NAME].decode())
    log.info(
        "master restored from %s (made %s by release %s) into %s",
        path,
        _stamp(manifest.get("created_at", 0)),
        manifest.get("release") or "?",
        settings.data_dir,
    )
    return manifest


KEPT_PREFIXES = ("before-restore-", "failed-restore-")
"""Folders inside the data folder that a staged restore keeps (never moved, never deleted)."""


def _move_contents(src: str, dst: str) -> None:
    """Move what ``src`` holds into ``dst``, except the kept folders (one rename each: the
    data folder itself stays, as systemd's ``StateDirectory`` must)."""
    for name in os.listdir(src):
        if not name.startswith(KEPT_PREFIXES):
            os.rename(os.path.join(src, name), os.path.join(dst, name))


def apply_staged(settings: MasterSettings) -> dict | None:
    """At the master's start: restore a staged archive into the emptied data folder, what
    it held kept in ``before-restore-<time>/`` inside it (put back if the restore fails);
    the outcome, or None when none is staged."""
    staged = settings.path(STAGED)
    if not os.path.exists(staged):
        return None
    now = time.time()
    try:
        with open(settings.path(STAGED_BY)) as f:
            by = json.load(f)
    except (OSError, ValueError):
        by = {}
    by = by if isinstance(by, dict) else {}
    ms.init_master_store(settings.database_url)
    try:
        handed_out = ms.current_version()
    finally:
        ms.close_master_store()
    kept = settings.path(f"before-restore-{_stamp(now)}")
    result: dict = {"at": now, "by": str(by.get("actor", "?")), "kept": kept}
    try:
        if settings.database:
            raise SettingsError(
                "[master] database is set: the dashboard restores onto the "
                "database in the data folder only"
            )
        os.mkdir(kept, 0o700)
        _move_contents(settings.data_dir, kept)
        manifest = restore_backup(settings, os.path.join(kept, STAGED))
        result.update(
            ok=True,
            created_at=manifest.get("created_at"),
            release=manifest.get("release") or "?",
            version=_number_past(handed_out, manifest),
        )
    except Exception as e:  # whatever went wrong, the old master must come back
        ms.close_master_store()
        log.error("staged restore failed, the master starts as it was: %s", e)
        if os.path.isdir(kept):
            failed = settings.path(f"failed-restore-{_stamp(now)}")
            os.mkdir(failed, 0o700)
            _move_contents(settings.data_dir, failed)
            _move_contents(kept, settings.data_dir)
            os.rmdir(kept)
        os.replace(staged, settings.path("restore-failed.tar.gz"))
        result.update(ok=False, error=str(e)[:500], kept="")
        ms.init_master_store(settings.database_url)
    else:
        log.warning(
            "staged restore applied: the master runs on the archive made %s; what "
            "the data folder held before is kept in %s",
            _stamp(manifest.get("created_at", 0)),
            kept,
        )
    try:
        audit.record(
            result["by"],
            "restore applied" if result["ok"] else "restore failed",
            "master",
            str(by.get("address", "")),
            ok=result["ok"],
            result=result.get("error")
            or f"archive of "
            f"{_stamp(result.get('created_at') or 0)}, the data folder before it "
            f"kept in {kept}",
        )
    finally:
        ms.close_master_store()
    write_private(settings.path(RESULT), json.dumps(result))
    return result


def _number_past(handed_out: int, manifest: dict) -> int:
    """The restored configuration as a new version numbered past every version the master
    handed out before the restore (``store.versions.number_past``)."""
    return versions.number_past(
        handed_out, f"restored from the archive of {_stamp(manifest.get('created_at', 0))}"
    )


def _stamp(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def scheduled(plan: BackupPlan) -> list[str]:
    """The scheduled archives in ``plan.dir``, oldest first."""
    try:
        return sorted(n for n in os.listdir(plan.dir) if NAME.match(n))
    except FileNotFoundError:
        return []


class BackupScheduler:
    """Writes an archive every ``plan.every`` seconds and keeps the newest ``plan.keep``."""

    def __init__(self, settings: MasterSettings, plan: BackupPlan, release: str = ""):
        self.settings, self.plan, self.release = settings, plan, release
        self.greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start the schedule (nothing when ``every`` is 0)."""
        if self.plan.every > 0:
            self.greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop the schedule."""
        if self.greenlet is not None:
            self.greenlet.kill(block=True, timeout=5)
            self.greenlet = None

    def _due_in(self, now: float) -> float:
        names = scheduled(self.plan)
        if not names:  # the first one soon, but not in the middle of the master's start
            return min(self.plan.every, FIRST_DELAY)
        last = os.path.getmtime(os.path.join(self.plan.dir, names[-1]))
        return max(0.0, last + self.plan.every - now)

    def _run(self) -> None:
        while True:
            gevent.sleep(self._due_in(time.time()))
            try:
                self.run_once(time.time())
            except Exception:
                log.exception("scheduled backup failed")
                gevent.sleep(min(self.plan.every, 600.0))

    def run_once(self, now: float) -> str:
        """Write one archive now and prune the oldest beyond ``keep``; its path."""
        make_private_dir(self.plan.dir)
        path = os.path.join(self.plan.dir, f"master-{_stamp(now)}.tar.gz")
        backup_in_thread(self.settings, path, self.release)
        for old in scheduled(self.plan)[: -self.plan.keep]:
            os.unlink(os.path.join(self.plan.dir, old))
            log.info("old backup %s removed (keep %d)", old, self.plan.keep)
        return path


def _last_result(settings: MasterSettings | None) -> dict | None:
    if settings is None:
        return None
    try:
        with open(settings.path(RESULT)) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def _page(error: str = "", status: int = 200):
    settings = current_app.config.get("MASTER_SETTINGS")
    plan = BackupPlan.of(settings) if settings is not None else None
    staged = settings is not None and os.path.exists(settings.path(STAGED))
    if error:
        g.audit_result = error  # the audit row tells why it was refused
    return render_template(
        "backup.html",
        plan=plan,
        archives=scheduled(plan) if plan else [],
        form=ActionForm(),
        error=error,
        staged=staged,
        result=_last_result(settings),
        max_mib=MAX_ARCHIVE >> 20,
        fresh=ms.ClusterNode.select().count() == 0,
    ), status


@bp.get("/backup")
@login_required
def page():
    """The backup page: the schedule, the scheduled archives, a download button, the restore
    form and the outcome of the last restore."""
    return _page()


def allow_archive_upload() -> None:
    """Before the CSRF check reads the form: the restore's upload may be an archive's size."""
    if request.endpoint == "backups.restore":
        request.max_content_length = MAX_ARCHIVE


@bp.post("/backup/restore")
@login_required
def restore():
    """Check an uploaded archive whole, stage it and restart the master into it (admins
    only, with the CSRF token and their password again)."""
    settings = current_app.config.get("MASTER_SETTINGS")
    if settings is None:
        return _page("this dashboard runs without a master's data folder", 503)
    if settings.database:
        return _page(
            "[master] database is set: stop the master and use `run.py master "
            "restore FILE` onto a fresh database",
            409,
        )
    if not check_login(session.get("admin", ""), request.form.get("password", "")):
        return _page("wrong password: the restore needs your admin password again", 403)
    upload = request.files.get("archive")
    if upload is None or not upload.filename:
        return _page("choose an archive to upload", 400)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tar.gz", dir=settings.data_dir)
    try:

        def save_and_check() -> dict:  # seconds of disk and CPU: off the master's loop
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(upload.stream, out)
            return check_archive(tmp)

        try:
            manifest = gevent.get_hub().threadpool.apply(save_and_check)
        except (archive.BackupError, SettingsError) as e:
            return _page(f"archive refused, nothing changed: {e}", 400)
        write_private(
            settings.path(STAGED_BY),
            json.dumps(
                {
                    "actor": session.get("admin", ""),
                    "address": request.remote_addr or "",
                    "at": time.time(),
                }
            ),
        )
        os.replace(tmp, settings.path(STAGED))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    g.audit_result = (
        f"archive of {_stamp(manifest.get('created_at', 0))} (release "
        f"{manifest.get('release') or '?'}) staged; the master restarts into it"
    )
    restart = current_app.config.get("RESTART")
    if restart is not None:
        gevent.spawn_later(0.5, restart)  # once this answer is out
    return redirect(url_for("backups.page"), 303)


@bp.post("/backup")
@login_required
def download():
    """A fresh archive of the master as a download (admins only, with the CSRF token)."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    settings = current_app.config.get("MASTER_SETTINGS")
    if settings is None:
        return "this dashboard runs without a master's data folder", 503
    fd, path = tempfile.mkstemp(prefix=".download-", suffix=".tar.gz", dir=settings.data_dir)
    os.close(fd)
    try:
        backup_in_thread(settings, path, current_app.config.get("RELEASE", ""))
        data = open(path, "rb")  # noqa: SIM115 (send_file closes it after the download)
    finally:
        os.unlink(path)  # the open file lives on, the name goes at once
    return send_file(
        data,
        mimetype="application/gzip",
        as_attachment=True,
        download_name=f"tandem-master-{_stamp(time.time())}.tar.gz",
    )
