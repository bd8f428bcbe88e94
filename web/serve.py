"""``run.py master``: set up (``init``) or run the configuration master.

``rollback N`` makes version N's users and dial plan current again.
``init`` makes the data folder, the database (0600), the master's CurveZMQ
key pair and the first admin ``admin`` with a generated password, written
to ``<data_dir>/admin-password`` (0600) and shown once on the terminal, and
prints a join token with the command a new node runs (``token`` prints
another; ``node remove ID`` removes a node, ``node list`` lists them).
Running opens the database, records the ``[[nodes]]`` of the configuration,
starts the pusher, the call event collector, the rate sampler
(``web.rates``), the backup schedule and the alarm checker, and serves
the dashboard with gevent's WSGI server until SIGTERM. ``backup FILE``
and ``restore FILE`` write and restore an archive (``web.backups``).
A restore staged on the dashboard is applied at the start, before the
database opens; the dashboard asks for it with a restart: the master stops
as on SIGTERM and re-executes its own command line (``os.execv``, same
process id, so a supervisor sees it go on).
"""

import logging
import os
import signal
import sys
import time

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from store import join_tokens, versions
from store import master as ms
from store.db import StoreError

from . import create_app
from .alarms import AlarmChecker, AlarmSettingsError, env_settings
from .backups import BackupPlan, BackupScheduler, apply_staged, make_backup, restore_backup
from .cdr_collector import CdrCollector
from .rates import RateSampler
from .push import Pusher
from .settings import SettingsError, cluster_secret, init_files, load_settings, read_secret
from .zone_server import ZoneServer

log = logging.getLogger(__name__)

RESTART = -1
"""What :func:`serve` returns when the dashboard asked for a restart (a staged restore)."""


def init(settings) -> int:
    """First run: files, database, domain and the admin account."""
    if not settings.domain:
        raise SettingsError("set [master] domain (the SIP domain, e.g. example.test) first")
    password = init_files(settings)
    ms.init_master_store(settings.database_url)
    ms.setup(settings.domain)
    if password is not None:
        ms.add_admin("admin", password)
        sys.stdout.write(
            f"admin password: {password}\n(also in {settings.path('admin-password')}, mode 0600)\n"
        )
    public = read_secret(settings.path("master.public"))
    sys.stdout.write(f"master public key (each node's [cluster] master_key): {public}\n")
    return token(settings)


def token(settings) -> int:
    """Make a join token and print it with the command that joins a node."""
    ms.init_master_store(settings.database_url)
    try:
        made, expires = join_tokens.make_token(settings.join_token_ttl)
    finally:
        ms.close_master_store()
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
    sys.stdout.write(
        f"join token (single use, until {when}): {made}\n"
        f"on the new node's host: .venv/bin/python run.py node join --master "
        f"{settings.public_url} --token {made} --address NODE-ADDRESS\n"
    )
    return 0


def node_command(settings, words: list[str]) -> int:
    """``node list`` or ``node remove ID``."""
    ms.init_master_store(settings.database_url)
    try:
        if words == ["list"]:
            for n in ms.list_nodes():
                sys.stdout.write(
                    f"{n['node_id']}\t{n['sip']}\t{n['control']}\t"
                    f"configuration {n['acked_version']}\n"
                )
            return 0
        if len(words) != 2 or words[0] != "remove":
            raise SettingsError("expected `master node list` or `master node remove ID`")
        version = ms.remove_node(words[1])
    finally:
        ms.close_master_store()
    if version is None:
        raise SettingsError(f"no node {words[1]!r}")
    sys.stdout.write(
        f"{words[1]} removed (configuration {version}): the running master "
        "pushes the new peer list within its push interval; stop the node's "
        "service on its host.\n"
    )
    if any(n["id"] == words[1] for n in settings.nodes):
        log.warning(
            "%s is still a [[nodes]] entry of the master's configuration: remove it "
            "there too, or the master's next start adds it back",
            words[1],
        )
    return 0


def rollback_command(settings, words: list[str]) -> int:
    """``rollback N``: make version N's users and dial plan current again (a new version
    the running master rolls out within its push interval)."""
    if len(words) != 1 or not words[0].isdigit():
        raise SettingsError("expected `master rollback N` (a configuration version)")
    ms.init_master_store(settings.database_url)
    try:
        version = versions.restore(int(words[0]))
    finally:
        ms.close_master_store()
    if version is None:
        raise SettingsError(
            f"no version {words[0]} with its content kept (the newest {versions.KEEP} are)"
        )
    sys.stdout.write(
        f"version {words[0]} restored as configuration {version}: the running "
        "master rolls it out within its push interval.\n"
    )
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
        ms.save_node(
            n["id"],
            n["sip"],
            n["control"],
            n["public_key"],
            n.get("bus", ""),
            int(n.get("weight", 50)),
            n.get("snapshot", ""),
        )
    master_key = read_secret(settings.path("master.public"))
    pusher = Pusher(master_key, read_secret(settings.path("master.secret")), settings.push_interval)
    app = create_app(
        {
            "SECRET_KEY": read_secret(settings.path("session.key")),
            "LAB_DATA": settings.lab_data,
            "MASTER_SETTINGS": settings,
            "RELEASE": release,
            "MASTER_KEY": master_key,
            "CLUSTER_SECRET": cluster_secret(settings),
            "MASTER_URL": settings.public_url,
            "JOIN_TOKEN_TTL": settings.join_token_ttl,
        },
        pusher,
    )
    host, _, port = settings.listen.rpartition(":")
    server = WSGIServer((host, int(port)), app, log=None)
    server.start()
    pusher.start()
    pusher.poke()
    alarms = AlarmChecker(alarm_settings, pusher.bus)
    alarms.start()
    collector = CdrCollector(pusher.bus, on_emergency=alarms.emergency_now)
    collector.start()
    sampler = RateSampler(pusher.bus, app.extensions["rates"])
    sampler.start()
    backups = BackupScheduler(settings, plan, release)
    backups.start()
    zone = ZoneServer(settings.dns) if settings.dns else None
    if zone is not None:
        zone.start()
    log.info(
        "dashboard on http://%s, domain %s, %d nodes",
        settings.listen,
        ms.domain(),
        len(settings.nodes),
    )
    stopped, restart = Event(), []

    def restart_now() -> None:
        restart.append(True)
        stopped.set()

    app.config["RESTART"] = restart_now
    gevent.signal_handler(signal.SIGTERM, stopped.set)
    gevent.signal_handler(signal.SIGINT, stopped.set)
    stopped.wait()
    server.stop(timeout=2)
    if zone is not None:
        zone.stop()
    backups.stop()
    alarms.stop()
    sampler.stop()
    collector.stop()
    pusher.stop()
    ms.close_master_store()
    return RESTART if restart else 0


def reexec() -> None:
    """Replace this process by a fresh run of its own command line (its listeners are
    closed; every other descriptor is close-on-exec, Python's default)."""
    log.warning("the master restarts itself (a staged restore)")
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def cmd_master(args) -> int:
    """``run.py master [init | token | node list | node remove ID | rollback N |
    backup FILE | restore FILE] --config master.toml``."""
    release = getattr(args, "release", "")
    try:
        settings = load_settings(args.config)
        if getattr(args, "words", None) and args.action not in (
            "node",
            "backup",
            "restore",
            "rollback",
        ):
            raise SettingsError(f"`master {args.action}` takes no {' '.join(args.words)!r}")
        if args.action == "init":
            return init(settings)
        if args.action in ("backup", "restore"):
            if len(args.words) != 1:
                raise SettingsError(f"master {args.action} needs the archive's file name")
            archive = args.words[0]
        if args.action == "restore":
            manifest = restore_backup(settings, archive)
            sys.stdout.write(
                f"restored {archive} (release {manifest.get('release') or '?'}) "
                f"into {settings.data_dir}\n"
            )
            return 0
        if args.action in ("token", "node", "rollback"):
            if not os.path.exists(settings.path("master.secret")):
                raise SettingsError(
                    f"{settings.data_dir} is not set up: run "
                    f"`run.py master init --config {args.config}` first"
                )
            if args.action == "token":
                return token(settings)
            if args.action == "rollback":
                return rollback_command(settings, list(args.words))
            return node_command(settings, list(args.words))
        if not os.path.exists(settings.path("master.secret")):
            raise SettingsError(
                f"{settings.data_dir} is not set up: run "
                f"`run.py master init --config {args.config}` first"
            )
        if args.action == "backup":
            ms.init_master_store(settings.database_url)
            manifest = make_backup(settings, archive, release)
            sys.stdout.write(
                f"backup written to {archive}: "
                + ", ".join(f"{t} {v['rows']} rows" for t, v in manifest["tables"].items())
                + "\n"
            )
            return 0
        apply_staged(settings)
        if serve(settings, release) == RESTART:
            reexec()
        return 0
    except (SettingsError, StoreError, OSError) as e:
        log.error("%s", e)
        return 2
