"""Nodes joining and leaving the cluster: join tokens, the join call, node removal.

``POST /api/join`` is the one call authenticated by a join token alone (no
admin): ``run.py node join`` sends the token with the new node's addresses
and public key, and gets back its node id, the domain, the master's public
key, the cluster's ``[auth] secret`` and its peers. The token is spent in
the transaction that records the node, so a replayed token gets 403; a
body over ``MAX_BODY`` bytes gets 413 unread; every refused join counts
against the client's address in the same kind of limiter as the admin
login (``JOIN_FAILURES`` within a minute, then 429 for the rest of it).

Admins make tokens (``POST /api/tokens``, the Nodes page's button, or
``run.py master token``) and remove nodes (``DELETE /api/nodes/<id>``, the
Remove button, ``run.py master node remove ID``). Both joining and removing
make a new configuration version, whose ``peers`` (``store.master.peers_push``)
every node applies without a restart; the DNS zone is made from the same
node table, so it follows at once.
"""

import ipaddress
import json
import logging
import re
import time
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from actors.bus import BusError, check_key
from store import join_tokens as jt
from store import master as ms
from store.db import StoreError

from .auth import Limiter, basic_auth_required, login_required
from .pages import ActionForm, changed

log = logging.getLogger(__name__)

bp = Blueprint("join", __name__)

MAX_BODY = 4096
"""Largest join request body (bytes); a bigger one gets 413."""
JOIN_FAILURES = 10
"""Refused joins from one address within a minute before it gets 429."""
MAX_NODES = 64
"""Nodes the master manages at most (each node connects to every other)."""
NO_STORE = {"Cache-Control": "no-store"}
"""Answers holding a token or the cluster's secret are kept by no cache."""
NODE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
"""A node id: a lower-case DNS label (it names the node's A record in the zone)."""


class JoinError(Exception):
    """A join request refused, with its HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _limiter() -> Limiter:
    limiter = current_app.extensions.get("join_limiter")
    if limiter is None:
        limiter = current_app.extensions["join_limiter"] = Limiter(JOIN_FAILURES, 60.0)
    return limiter


def _host_port(text: object, what: str) -> tuple[str, int]:
    """``ip:port`` (``[v6]:port``) with an IP address, else ``JoinError``."""
    if not isinstance(text, str) or len(text) > 100:
        raise JoinError(f"{what} must be ip:port")
    host, sep, port = text.rpartition(":")
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        raise JoinError(f"{what} must be ip:port with an IP address, not {text!r}") from None
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise JoinError(f"{what} must be ip:port, not {text!r}")
    if ip.is_unspecified or ip.is_multicast:
        raise JoinError(f"{what}: {ip} cannot be a node's address")
    return str(ip), int(port)


def _endpoint(text: object, what: str) -> str:
    """A ``tcp://ip:port`` ZeroMQ endpoint, else ``JoinError``."""
    if not isinstance(text, str) or not text.startswith("tcp://"):
        raise JoinError(f"{what} must be tcp://ip:port")
    _host_port(text[len("tcp://") :], what)
    return text


def check_request(body: object) -> dict[str, Any]:
    """The fields of a join request, checked (``JoinError`` names the first wrong one)."""
    if not isinstance(body, dict):
        raise JoinError(
            "expected a JSON object {token, sip, bus, snapshot, control, public_key[, id]}"
        )
    node_id = body.get("id") or ""
    if node_id and (not isinstance(node_id, str) or not NODE_ID.match(node_id)):
        raise JoinError(
            "id must be a lower-case DNS label (letters, digits, '-'), at most 32 characters"
        )
    try:
        key = check_key(str(body.get("public_key", "")), "public_key").decode()
    except BusError as e:
        raise JoinError(str(e)) from None
    _host_port(body.get("sip"), "sip")
    return {
        "id": node_id,
        "sip": body["sip"],
        "public_key": key,
        **{k: _endpoint(body.get(k), k) for k in ("bus", "snapshot", "control")},
    }


def _free_id(taken: set[str]) -> str:
    return next(f"node{k}" for k in range(1, MAX_NODES + 2) if f"node{k}" not in taken)


def join(body: object, cluster_secret: str, master_key: str) -> dict[str, Any]:
    """Record the node a join request describes and spend its token (one transaction);
    what the node needs to run. ``JoinError`` (and the token unspent) otherwise."""
    token = body.get("token") if isinstance(body, dict) else None
    fields = check_request(body)
    with ms.master_db.atomic():
        nodes = ms.list_nodes()
        if len(nodes) >= MAX_NODES:
            raise JoinError(f"the cluster has {MAX_NODES} nodes already (the limit)", 409)
        node_id = fields["id"] or _free_id({n["node_id"] for n in nodes})
        try:
            jt.take_token(token, node_id)
        except jt.TokenError as e:
            raise JoinError(str(e), 403) from None
        for n in nodes:
            clash = next(
                (
                    k
                    for k, v in (
                        ("id", node_id),
                        ("public_key", fields["public_key"]),
                        ("sip", fields["sip"]),
                        ("bus", fields["bus"]),
                    )
                    if n["node_id" if k == "id" else k] == v
                ),
                None,
            )
            if clash is not None:  # raised inside the transaction: the token stays unspent
                raise JoinError(
                    f"{clash} {n['node_id' if clash == 'id' else clash]} belongs "
                    f"to {n['node_id']} already",
                    409,
                )
        ms.save_node(
            node_id,
            fields["sip"],
            fields["control"],
            fields["public_key"],
            fields["bus"],
            snapshot=fields["snapshot"],
        )
        pushed = ms.peers_push()
        if "peers" not in pushed:  # raised inside the transaction: nothing is recorded
            raise JoinError(
                "the master does not know every node's bus and snapshot "
                "endpoints, so it cannot tell the nodes of each other: give each "
                "[[nodes]] entry of its configuration bus and snapshot",
                409,
            )
        version = ms.new_version(f"node {node_id} joined")
        peers = pushed["peers"]
    log.info("node %s joined from %s (configuration %d)", node_id, fields["sip"], version)
    return {
        "node_id": node_id,
        "domain": ms.domain(),
        "master_key": master_key,
        "auth_secret": cluster_secret,
        "version": version,
        "peers": [p for p in peers if p["id"] != node_id],
    }


@bp.post("/api/join")
def api_join():
    """Join the cluster with a join token: ``{token, sip, bus, snapshot, control,
    public_key[, id]}``; the node's id, domain, master key, cluster secret and peers."""
    addr = request.remote_addr or "?"
    if _limiter().blocked(addr):
        return {"error": "too many refused joins from this address; wait a minute"}, 429
    if (request.content_length or 0) > MAX_BODY or len(
        data := request.stream.read(MAX_BODY + 1)
    ) > MAX_BODY:
        _limiter().fail(addr)
        return {"error": f"a join request is at most {MAX_BODY} bytes"}, 413
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        body = None
    secret = current_app.config.get("CLUSTER_SECRET", "")
    master_key = current_app.config.get("MASTER_KEY", "")
    try:
        if not secret or not master_key:
            raise JoinError("this master takes no joins: it has no cluster secret or key", 503)
        reply = join(body, secret, master_key)
    except JoinError as e:
        _limiter().fail(addr)
        log.warning("join from %s refused: %s", addr, e)
        return {"error": str(e)}, e.status
    except StoreError as e:
        _limiter().fail(addr)
        return {"error": str(e)}, 400
    changed()
    return reply, 201, NO_STORE


def new_token() -> tuple[str, float]:
    """A join token that lives ``JOIN_TOKEN_TTL`` seconds (the master's setting)."""
    return jt.make_token(float(current_app.config.get("JOIN_TOKEN_TTL", jt.DEFAULT_TTL)))


def join_command(token: str) -> str:
    """The command that joins a new node with ``token``."""
    url = current_app.config.get("MASTER_URL") or request.host_url.rstrip("/")
    return (
        f".venv/bin/python run.py node join --master {url} --token {token} --address NODE-ADDRESS"
    )


@bp.post("/api/tokens")
@basic_auth_required
def api_token():
    """Make a join token: the token (shown this once), when it expires, the command."""
    try:
        token, expires = new_token()
    except StoreError as e:
        return {"error": str(e)}, 409
    return ({"token": token, "expires_at": expires, "command": join_command(token)}, 201, NO_STORE)


@bp.delete("/api/nodes/<node_id>")
@basic_auth_required
def api_remove(node_id):
    """Remove a node: its peers drop it and the zone loses its records."""
    version = ms.remove_node(node_id)
    if version is None:
        return {"error": f"no node {node_id}"}, 404
    changed()
    return {"node": node_id, "version": version}


@bp.route("/nodes/token", methods=["POST"])
@login_required
def token_page():
    """Make a join token and show it (once) with the command that uses it."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    try:
        token, expires = new_token()
    except StoreError as e:
        flash(f"No token made: {e}")
        return redirect(url_for("pages.nodes"))
    return (
        render_template(
            "join_token.html",
            token=token,
            command=join_command(token),
            expires=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires)),
        ),
        200,
        NO_STORE,
    )


@bp.route("/nodes/<node_id>/remove", methods=["POST"])
@login_required
def remove_page(node_id):
    """Remove a node (the Remove button)."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    version = ms.remove_node(node_id)
    if version is None:
        flash(f"No node {node_id}.")
    else:
        changed()
        flash(
            f"{node_id} removed: configuration {version}; its peers drop it. "
            f"Stop its service on its host."
        )
    return redirect(url_for("pages.nodes"))
