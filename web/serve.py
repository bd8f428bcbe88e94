"""``run.py master``: set up (``init``) or run the configuration master.

``init`` makes the data folder, the database (0600), the master's CurveZMQ
key pair and the first admin ``admin`` with a generated password, written
to ``<data_dir>/admin-password`` (0600) and shown once on the terminal.
Running opens the database, records the ``[[nodes]]`` of the configuration,
starts the pusher, the call event collector, the backup schedule and the
alarm checker, and
serves the dashboard with gevent's WSGI server until SIGTERM. ``backup FILE``
and ``restore FILE`` write and restore an archive (``web.backups``).
"""

import logging
import os
import signal
import sys

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from store import master as ms
from store.db import StoreError

from . import create_app
from .alarms import AlarmChecker, AlarmSettingsError, env_settings
from .backups import BackupPlan, BackupScheduler, make_backup, restore_backup
from .cdr_collector import CdrCollector
from .push import Pusher
from .settings import SettingsError, init_files, load_settings, read_secret

log = logging.getLogger(__name__)


def init(settings) -> int:
    """First run: files, database, domain and the admin account."""
    if not settings.domain:
        raise SettingsError("set [master] domain (the SIP domain, e.g. example.test) first")
    password = init_files(settings)
    ms.init_master_store(settings.database_url)
    ms.setup(settings.domain)
    if password is not None:
        ms.add_admin("admin", password)
        sys.stdout.write(f"admin password: {password}\n"
                         f"(also in {settings.path('admin-password')}, mode 0600)\n")
    public = read_secret(settings.path("master.public"))
    sys.stdout.write(f"master public key (each node's [cluster] master_key): {public}\n")
    return 0


def serve(settings, release: str = "") -> int:
    """Run the dashboard and the pusher until SIGTERM or SIGINT."""
    plan = BackupPlan.of(settings)
    try:
        alarm_settings = env_settings(settings.alarms, settings.listen)
    except AlarmSettingsError as e:
        raise SettingsError(str(e)) from None
    ms.init_master_store(settings.database_url)
    for n in settings.nodes:
        ms.save_node(n["id"], n["sip"], n["control"], n["public_key"], n.get("bus", ""),
                     int(n.get("weight", 50)))
    pusher = Pusher(read_secret(settings.path("master.public")),
                    read_secret(settings.path("master.secret")), settings.push_interval)
    app = create_app({"SECRET_KEY": read_secret(settings.path("session.key")),
                      "LAB_DATA": settings.lab_data, "MASTER_SETTINGS": settings,
                      "RELEASE": release}, pusher)
    host, _, port = settings.listen.rpartition(":")
    server = WSGIServer((host, int(port)), app, log=None)
    server.start()
    pusher.start()
    pusher.poke()
    collector = CdrCollector(pusher.bus)
    collector.start()
    backups = BackupScheduler(settings, plan, release)
    backups.start()
    alarms = AlarmChecker(alarm_settings, pusher.bus)
    alarms.start()
    log.info("dashboard on http://%s, domain %s, %d nodes", settings.listen, ms.domain(),
             len(settings.nodes))
    stopped = Event()
    gevent.signal_handler(signal.SIGTERM, stopped.set)
    gevent.signal_handler(signal.SIGINT, stopped.set)
    stopped.wait()
    server.stop(timeout=2)
    backups.stop()
    alarms.stop()
    collector.stop()
    pusher.stop()
    ms.close_master_store()
    return 0


def cmd_master(args) -> int:
    """``run.py master [init|backup FILE|restore FILE] --config master.toml``."""
    release = getattr(args, "release", "")
    try:
        settings = load_settings(args.config)
        if args.action == "init":
            return init(settings)
        if args.action in ("backup", "restore") and not getattr(args, "file", None):
            raise SettingsError(f"master {args.action} needs the archive's file name")
        if args.action == "restore":
            manifest = restore_backup(settings, args.file)
            sys.stdout.write(f"restored {args.file} (release {manifest.get('release') or '?'}) "
                             f"into {settings.data_dir}\n")
            return 0
        if not os.path.exists(settings.path("master.secret")):
            raise SettingsError(f"{settings.data_dir} is not set up: run "
                                f"`run.py master init --config {args.config}` first")
        if args.action == "backup":
            ms.init_master_store(settings.database_url)
            manifest = make_backup(settings, args.file, release)
            sys.stdout.write(f"backup written to {args.file}: " + ", ".join(
                f"{t} {v['rows']} rows" for t, v in manifest["tables"].items()) + "\n")
            return 0
        return serve(settings, release)
    except (SettingsError, StoreError, OSError) as e:
        log.error("%s", e)
        return 2
