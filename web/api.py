"""The JSON API under ``/api``: HTTP Basic as an admin on every call.

``GET /api/registrations`` (``?user=``), ``GET /api/users`` (``?q=``
search), ``POST /api/users`` with ``{"username", "password"}``, ``DELETE
/api/users/<name>``, ``GET /api/nodes``, ``POST /api/nodes/<id>/restart``
(through the lab), ``POST /api/nodes/<id>/drain`` with ``{"on": bool}``
(straight to the node), ``GET /api/nodes/<id>/calls`` (``?limit=``: the calls
the node carries, from its dialog records) and ``GET /api/config`` (the newest version and each
node's).
"""

from flask import Blueprint, current_app, request

from store import master as ms
from store.db import StoreError

from . import cluster, services
from .auth import basic_auth_required

bp = Blueprint("api", __name__, url_prefix="/api")

NODE_FIELDS = ("node_id", "sip", "bus", "control", "public_key", "weight", "acked_version",
               "acked_at", "last_error")


def _changed() -> None:
    pusher = current_app.extensions.get("pusher")
    if pusher is not None:
        pusher.poke()


@bp.get("/users")
@basic_auth_required
def users():
    """Users (no HA1s), ``?q=`` filters by name, ``?limit=`` up to 1000."""
    limit = min(max(request.args.get("limit", 100, type=int), 1), 1000)
    offset = max(request.args.get("offset", 0, type=int), 0)
    return {"total": ms.count_users(),
            "users": ms.list_users(request.args.get("q", "")[:64], limit, offset)}


@bp.post("/users")
@basic_auth_required
def add_user():
    """Add a user or change its password: ``{"username": ..., "password": ...}``."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return {"error": "expected a JSON object {\"username\", \"password\"}"}, 400
    try:
        version = ms.save_user(body.get("username"), body.get("password"),
                               bool(body.get("enabled", True)))
    except StoreError as e:
        return {"error": str(e)}, 400
    _changed()
    return {"username": body["username"], "version": version}, 201


@bp.delete("/users/<username>")
@basic_auth_required
def delete_user(username):
    """Delete a user."""
    version = ms.delete_user(username)
    if version is None:
        return {"error": f"no user {username}"}, 404
    _changed()
    return {"username": username, "version": version}


@bp.get("/nodes")
@basic_auth_required
def nodes():
    """Every node: endpoints, weight, acknowledged version, last push error."""
    return {"nodes": [{k: n[k] for k in NODE_FIELDS} for n in ms.list_nodes()]}


@bp.get("/config")
@basic_auth_required
def config():
    """The newest configuration version and the one each node runs."""
    return {"version": ms.current_version(), "domain": ms.domain(),
            "nodes": {n["node_id"]: n["acked_version"] for n in ms.list_nodes()}}


@bp.get("/registrations")
@basic_auth_required
def registrations():
    """Every node's registrations merged: user, contact, primary node, nodes holding it."""
    pusher = current_app.extensions.get("pusher")
    if pusher is None:
        return {"error": "the master has no bus"}, 503
    found = cluster.registrations(pusher.bus, ms.list_nodes(), request.args.get("user", "")[:64],
                                  min(max(request.args.get("limit", 100, type=int), 1), 1000))
    return {**found, "balance_index": cluster.balance_index(found["bindings"])}


@bp.post("/nodes/<node_id>/restart")
@basic_auth_required
def restart_node(node_id):
    """Restart a node's process through the lab; its new process state."""
    try:
        return {"node": node_id, "state": services.restart_node(current_app.config["LAB_DATA"],
                                                                node_id)}
    except services.ServiceError as e:
        return {"error": str(e)}, 400


@bp.get("/nodes/<node_id>/calls")
@basic_auth_required
def node_calls(node_id):
    """The calls a node carries (``?limit=`` 1 to 1000, 100 by default): its total and
    records (Call-ID, caller, callee, start and answer times, owner)."""
    text = request.args.get("limit", "100")
    limit = int(text) if text.isdigit() and len(text) <= 4 else 0
    if not 1 <= limit <= 1000:
        return {"error": "limit must be a whole number from 1 to 1000"}, 400
    pusher = current_app.extensions.get("pusher")
    try:
        return {"node": node_id,
                **services.node_calls(getattr(pusher, "bus", None), node_id, limit)}
    except services.ServiceError as e:
        return {"error": str(e)}, 400


@bp.post("/nodes/<node_id>/drain")
@basic_auth_required
def drain_node(node_id):
    """Drain a node or end its drain: ``{"on": true|false}``; the node's drain state."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("on"), bool):
        return {"error": 'expected a JSON object {"on": true|false}'}, 400
    pusher = current_app.extensions.get("pusher")
    try:
        return {"node": node_id,
                **services.drain_node(getattr(pusher, "bus", None), node_id, body["on"])}
    except services.ServiceError as e:
        return {"error": str(e)}, 400
