"""Tandem's one entry point: ``node``, ``master``, ``user``, ``lab`` (see ``--help``)."""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

__version__ = "0.9.0"
"""Tandem's release; tags in git are ``v<version>``."""


from actors.logs import setup_logging  # noqa: E402


def load_node_config(path: str, role: str = ""):
    """The node configuration at ``path``, with logging set up for it (the
    log lines carry the node id, and ``/role`` if given); None, logged, when
    the file is wrong."""
    from actors.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as e:
        setup_logging("INFO")
        logging.getLogger("tandem").error("configuration: %s", e)
        return None
    try:
        setup_logging(cfg.log_level, f"{cfg.id}/{role}" if role else cfg.id, cfg.log_file)
    except OSError as e:
        setup_logging("INFO", cfg.id)
        logging.getLogger("tandem").error("cannot open log_file %s: %s", cfg.log_file, e)
        return None
    return cfg


def cmd_node(args) -> int:
    """Run one node from its configuration file until SIGTERM (or: join a cluster)."""
    from actors.bus import BusError
    from actors.node import Node

    if args.action == "join":
        from actors.join import cmd_join

        setup_logging("INFO", "join")
        code, config = cmd_join(args)
        if code or not args.start:
            return code
        args.config = config
    elif not args.config:
        setup_logging("INFO")
        logging.getLogger("tandem").error("run.py node needs --config (or: node join)")
        return 2
    cfg = load_node_config(args.config)
    if cfg is None:
        return 2
    node = Node(cfg)
    try:
        node.start()
    except (OSError, BusError, ValueError) as e:
        logging.getLogger("tandem").error("cannot start: %s", e)
        node.stop()
        return 1
    node.serve_forever()
    return node.exit_code


def cmd_front(args) -> int:
    """Run a node's challenge front (started by the node: secret, pid and origin tag on stdin)."""
    from actors.front import serve_front

    cfg = load_node_config(args.config, "front")
    if cfg is None:
        return 2
    try:
        secret_hex, parent, origin = sys.stdin.readline().split()
        secret, parent = bytes.fromhex(secret_hex), int(parent)
    except ValueError:
        secret, parent, origin = b"", 0, ""
    if not secret:
        logging.getLogger("tandem").error(
            "expected the secret, the node's pid and its origin tag on stdin"
        )
        return 2
    return serve_front(cfg, secret, parent, origin)


def cmd_user_via_master(args, url: str) -> int:
    """``user add|import`` through the configuration master at ``url``."""
    from actors import master_users as mu

    log = logging.getLogger("tandem")
    try:
        creds = mu.admin_credentials(args.admin_file)
        if args.action == "add":
            version = mu.add_user(url, creds, args.name, args.password)
            log.warning(
                "user %s saved on the master (configuration %d, pushed to every node)",
                args.name,
                version,
            )
            return 0
        job = mu.import_users(
            url,
            creds,
            args.file,
            on_progress=lambda j: sys.stderr.write(
                f"import {j.get('id')}: {j.get('phase')} {j.get('done')} of {j.get('total')}\n"
            ),
        )
    except mu.MasterError as e:
        log.error("%s", e)
        return 2
    if job.get("phase") != "done":
        log.error("%s", job.get("error") or f"import ended {job.get('phase')}")
        return 2
    log.warning(
        "%d users imported on the master (configuration %d, pushed to every node)",
        job.get("total", 0),
        job.get("version", 0),
    )
    return 0


def cmd_user(args) -> int:
    """Provision users: on the configuration master when one is named (``--master`` or
    ``TANDEM_MASTER_URL``), else in the node's own database."""
    from actors.config import ConfigError, load_config, sqlite_dir
    from actors.master_users import MasterError, master_url
    from store.db import StoreError
    from store.models import init_store
    from store.users import add_user, import_users_csv

    setup_logging("WARNING")
    log = logging.getLogger("tandem")
    try:
        url = master_url(args.master)
    except MasterError as e:
        log.error("%s", e)
        return 2
    if url:
        return cmd_user_via_master(args, url)
    try:
        cfg = load_config(args.config)
        folder = sqlite_dir(cfg)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if cfg.master_key:
            log.error(
                "%s takes its users from the configuration master ([cluster] master_key): "
                "add them there (--master URL --admin-file FILE, the dashboard's Users "
                "page or POST /api/users); a user written here would be removed by the "
                "master's next push",
                args.config,
            )
            return 2
        init_store(cfg.database)
        if args.action == "add":
            add_user(args.name, cfg.domain, args.password, replace=True)
            log.warning("user %s@%s saved", args.name, cfg.domain)
        else:
            n = import_users_csv(args.file, cfg.domain)
            log.warning("%d users imported into %s", n, cfg.domain)
    except (ConfigError, StoreError, OSError) as e:
        log.error("%s", e)
        return 2
    return 0


def cmd_lab(args) -> int:
    """Start a ready lab on loopback, or ask a running one for its state or a restart."""
    from actors.lab import run_lab
    from actors.lab_control import LabControlError, ask

    setup_logging("INFO", "lab")
    if args.action == "run":
        return run_lab(args)
    if args.action == "restart" and not args.node:
        logging.getLogger("tandem").error("lab restart needs a node id, e.g. node2")
        return 2
    try:
        result = ask(args.data, "status" if args.action == "status" else f"restart {args.node}")
    except LabControlError as e:
        logging.getLogger("tandem").error("%s", e)
        return 1
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_master(args) -> int:
    """Set up or run the configuration master (the dashboard)."""
    from web.serve import cmd_master as run_master

    setup_logging("INFO", "master")
    args.release = __version__
    return run_master(args)


def main(argv=None) -> int:
    """Parse the command line and run the chosen command."""
    from actors.keys import cmd_keys, configure_parser as configure_keys

    p = argparse.ArgumentParser(prog="run.py", description="Tandem SIP cluster")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node", help="run one node (or: node join --master URL --token T)")
    node.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "join"),
        help="run the node (default), or join a cluster with a master's token",
    )
    node.add_argument(
        "--config",
        help="node configuration (TOML); with join: where to write it (default DATA/node.toml)",
    )
    from actors.join import configure_parser as configure_join

    configure_join(node)
    node.set_defaults(func=cmd_node)
    front = sub.add_parser("front", help="a node's challenge front (the node starts it)")
    front.add_argument("--config", required=True, help="the node's configuration (TOML)")
    front.set_defaults(func=cmd_front)
    user = sub.add_parser("user", help="provision users")
    user.add_argument(
        "--config",
        default="conf/node.example.toml",
        help="node configuration naming the database and domain",
    )
    via = argparse.ArgumentParser(add_help=False)
    via.add_argument(
        "--master",
        help="the configuration master's URL (or "
        "TANDEM_MASTER_URL): the users go there, and it pushes them to every node",
    )
    via.add_argument(
        "--admin-file",
        help="with --master: a file (mode 0600) holding a master "
        "admin's name:password (or TANDEM_MASTER_ADMIN=name:password)",
    )
    usub = user.add_subparsers(dest="action", required=True)
    add = usub.add_parser("add", help="add or update one user", parents=[via])
    add.add_argument("name")
    add.add_argument("--password", required=True)
    imp = usub.add_parser(
        "import", help="import users from a CSV (username,password)", parents=[via]
    )
    imp.add_argument("file")
    user.set_defaults(func=cmd_user)
    master = sub.add_parser(
        "master",
        help="run the configuration master (or: master init, "
        "master token, master node list|remove ID, master rollback N, "
        "master backup FILE, master restore FILE)",
    )
    master.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "init", "token", "node", "rollback", "backup", "restore"),
        help="run the dashboard (default); init: set up its data folder, "
        "database, key pair and admin account; token: print a join "
        "token; node list, node remove ID; rollback N: restore configuration "
        "version N (a new version, rolled out); backup FILE: write an archive "
        "of the master (while it runs); restore FILE: restore one onto a "
        "fresh data folder",
    )
    master.add_argument(
        "words",
        nargs="*",
        help="with node: list, or remove ID; with rollback: N; with backup or restore: the archive",
    )
    master.add_argument("--config", required=True, help="master configuration (TOML)")
    master.set_defaults(func=cmd_master)
    keys = sub.add_parser("keys", help="make a CurveZMQ key pair")
    configure_keys(keys)
    keys.set_defaults(func=cmd_keys)
    lab = sub.add_parser(
        "lab", help="start a ready lab on loopback (or: lab status, lab restart NODE)"
    )
    lab.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "status", "restart"),
        help="run the lab (default), or ask the running lab for its state or to restart a node",
    )
    lab.add_argument("node", nargs="?", help="with restart: the node id, e.g. node2")
    lab.add_argument("--users", help="CSV of extra users (username,password)")
    lab.add_argument("--data", default="var/lab", help="where the lab keeps its state")
    lab.add_argument(
        "--nodes",
        type=int,
        default=2,
        choices=range(1, 10),
        metavar="N",
        help="how many nodes (replicating), 1 to 9",
    )
    lab.add_argument(
        "--base",
        default="127.0.0.10",
        help="the lab's first loopback address: its DNS; node k gets the k-th address after it",
    )
    lab.set_defaults(func=cmd_lab)
    args = p.parse_args(argv)
    os.umask(0o077)  # whatever Tandem creates (keys, configs, databases, logs) is its owner's only
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
