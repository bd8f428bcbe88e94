"""``run.py node join``: enrol a new node with the configuration master.

On the new node's host, ``run.py node join --master URL --token T
[--address A] [--data DIR]`` makes the node's CurveZMQ key pair in
``DIR`` (``bus.public``, ``bus.secret`` 0600), sends the token with the
node's addresses and public key to the master's ``POST /api/join``
(``web.join``), and gets back its node id, the domain, the master's public
key, the cluster's ``[auth] secret`` and its peers (ids, bus and snapshot
endpoints, public keys, SIP addresses). It writes the node's configuration
(0600, ``DIR/node.toml`` unless ``--config``) and prints how to start it,
or with ``--start`` runs the node at once. The master then pushes the users
to it, and the new peer list to every other node, which connects to it
without a restart (``actors.membership``).

The token and the cluster secret travel in the request and its answer: use
an ``https://`` URL (the master behind a TLS proxy) across an untrusted
network. The token is single-use and expires, so a copy seen later is
worthless; the secret is written only to the 0600 configuration.
"""

import argparse
import ipaddress
import json
import logging
import os
import socket
import sys
import urllib.parse

from store.db import StoreError
from store.files import make_private_dir, write_private
from store.users import validate_domain

from .bus import BusError, check_key
from .keys import Member, cluster_toml, load_or_create_keypair
from .master_api import ask_master
from .membership import NODE_ID, MembershipError, parse_peers

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 30.0
"""Seconds the master may take to answer a join."""
DEFAULT_DATA = "/var/lib/tandem"
SERVICE_CONFIG = "/etc/tandem/node.toml"
"""The configuration ``conf/tandem-node.service`` runs the node with."""


class JoinFailed(Exception):
    """The join could not be done, with the reason."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``node join`` options to ``parser``."""
    parser.add_argument(
        "--master", help="with join: the master's URL, e.g. https://master.example.test"
    )
    parser.add_argument(
        "--token",
        help="with join: a join token from the master "
        "(`run.py master token`, or the dashboard's Nodes page); `-` reads "
        "it from stdin, out of sight of ps",
    )
    parser.add_argument(
        "--address",
        help="with join: this node's IP address (default: "
        "the one this host uses to reach the master)",
    )
    parser.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help=f"with join: the node's data folder (default {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--id",
        default="",
        help="with join: the node id to ask for (default: the master picks nodeN)",
    )
    parser.add_argument("--port", type=int, default=5060, help="with join: SIP port (5060)")
    parser.add_argument(
        "--bus-port",
        type=int,
        default=7001,
        help="with join: the first of three ports for the bus, snapshots and control (7001)",
    )
    parser.add_argument(
        "--start", action="store_true", help="with join: run the node once it has joined"
    )
    parser.add_argument(
        "--force", action="store_true", help="with join: overwrite an existing configuration"
    )


def _local_address(master_url: str) -> str:
    """The address this host uses towards the master (no packet is sent)."""
    parts = urllib.parse.urlsplit(master_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.connect(addr)
            return s.getsockname()[0]
    except OSError as e:
        raise JoinFailed(
            f"cannot tell this node's address towards {host} ({e}): give --address"
        ) from None


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def post_join(master_url: str, body: dict) -> dict:
    """POST ``body`` to the master's ``/api/join``; its answer, or ``JoinFailed``."""
    return ask_master(
        master_url,
        "/api/join",
        method="POST",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        timeout=JOIN_TIMEOUT,
        refused="the master refused the join",
        error=JoinFailed,
    )


def node_toml(me: Member, reply: dict, data: str, address: str, port: int) -> str:
    """The joined node's configuration from the master's answer (checked first)."""
    try:
        domain, node_id = validate_domain(reply["domain"]), reply["node_id"]
        if not isinstance(node_id, str) or not NODE_ID.match(node_id):
            raise ValueError(f"node id {str(node_id)[:70]!r}")
        master_key = check_key(reply["master_key"], "master_key").decode()
        secret = reply["auth_secret"]
        if len(bytes.fromhex(secret)) < 16:
            raise ValueError("auth_secret is shorter than 16 bytes")
        peers = parse_peers(reply.get("peers", []), node_id)
    except (KeyError, TypeError, ValueError, BusError, MembershipError, StoreError) as e:
        raise JoinFailed(f"the master's answer is malformed: {e}") from None
    if node_id != me.id:
        me = Member(node_id, me.pub, me.snapshot, me.control, me.public_key, me.secret_key, me.sip)
    members = [Member(p.id, p.bus, p.snapshot, "", p.public_key, sip=p.sip) for p in peers]
    text = json.dumps  # a JSON string is a TOML basic string, quotes and all escaped
    head = (
        f"[node]\nid = {text(node_id)}\ndata_dir = {text(data)}\n\n"
        f"[sip]\naddress = {text(address)}\nport = {port}\ndomain = {text(domain)}\n\n"
        f"[auth]\nsecret = {text(secret)}\n\n"
        f"[database]\nurl = {text('sqlite:///' + os.path.join(data, 'tandem.db'))}\n\n"
    )
    try:
        return head + cluster_toml(me, [me, *members], master_key=master_key)
    except ValueError as e:
        raise JoinFailed(f"the master's answer is malformed: {e}") from None


def cmd_join(args) -> tuple[int, str]:
    """``run.py node join``: ``(exit code, configuration path)``."""
    try:
        return 0, _join(args)
    except (JoinFailed, BusError, OSError) as e:
        log.error("join failed: %s", e)
        return 1, ""


def _join(args) -> str:
    if not args.master or not args.token:
        raise JoinFailed("node join needs --master URL and --token TOKEN")
    token = sys.stdin.readline(200).strip() if args.token == "-" else args.token
    if urllib.parse.urlsplit(args.master).scheme not in ("http", "https"):
        raise JoinFailed(f"--master must be an http:// or https:// URL, not {args.master!r}")
    address = args.address or _local_address(args.master)
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise JoinFailed(f"--address must be an IP address, not {address!r}") from None
    if not 0 < args.port < 65536 or not 0 < args.bus_port < 65534:
        raise JoinFailed("--port and --bus-port must be ports (the bus takes three)")
    data = os.path.abspath(args.data)
    config = os.path.abspath(args.config or os.path.join(data, "node.toml"))
    if os.path.exists(config) and not args.force:
        raise JoinFailed(
            f"{config} exists: this host joined already (--force makes a new configuration)"
        )
    make_private_dir(data)
    folder = os.path.dirname(config)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise JoinFailed(
            f"cannot write the configuration into {folder}: make it, writable "
            "by the user running the join, first"
        )
    public, secret = load_or_create_keypair(os.path.join(data, "bus"))
    host = _host(address)
    ends = [f"tcp://{host}:{args.bus_port + k}" for k in range(3)]
    me = Member(
        args.id or "joining", ends[0], ends[1], ends[2], public, secret, sip=f"{host}:{args.port}"
    )
    reply = post_join(
        args.master,
        {
            "token": token,
            "id": args.id,
            "sip": me.sip,
            "bus": me.pub,
            "snapshot": me.snapshot,
            "control": me.control,
            "public_key": public,
        },
    )
    node_id = reply.get("node_id")
    try:
        write_private(config, node_toml(me, reply, data, address, args.port))
    except (JoinFailed, OSError) as e:
        raise JoinFailed(
            f"{e}; the master recorded this node as {str(node_id)[:64]}: remove "
            "it there (run.py master node remove ID) and join with a new "
            "token"
        ) from None
    install = (
        ""
        if config == SERVICE_CONFIG
        else f"install -m 0600 -o tandem -g tandem {config} {SERVICE_CONFIG} && "
    )
    sys.stdout.write(
        f"{node_id} joined {reply['domain']} with {len(reply.get('peers', []))} peers; "
        f"configuration in {config} (0600).\n"
        f"Start it: .venv/bin/python run.py node --config {config}\n"
        f"or as a service: {install}systemctl enable --now tandem-node "
        "(conf/tandem-node.service)\n"
    )
    return config
