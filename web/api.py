"""The JSON API under ``/api``: HTTP Basic as an admin on every call.

``GET /api/registrations`` (``?user=``, ``?node=``, ``?after=``, ``?limit=``),
``GET /api/users`` (``?q=`` search, ``?state=``), ``GET /api/users.csv``, ``POST
/api/users`` with ``{"username", "password"}``, ``PATCH /api/users/<name>`` with
``{"enabled": bool}``, ``DELETE /api/users/<name>``, ``POST /api/users/import`` (a CSV
body; 202 and a job), ``GET /api/users/import/<id>`` (its progress), ``GET
/api/nodes``, ``POST /api/nodes/<id>/restart`` (through the lab), ``POST
/api/nodes/<id>/drain`` with ``{"on": bool}`` (straight to the node), ``GET
/api/nodes/<id>/calls`` (``?limit=``: the calls the node carries, from its dialog
records), ``GET /api/nodes/<id>/services`` (state, uptime and restarts of each service), ``POST
/api/nodes/<id>/services/<name>/stop|start|restart`` (through the node's control
channel, lab or not), ``GET /api/config`` (the newest version, each node's and the SIP
settings), ``PUT /api/config`` (change SIP settings: a new version), ``GET
/api/versions`` (the newest versions, which can be restored, a stopped rollout) and
``POST /api/versions/<n>/restore`` (version n's users and dial plan again, as a new
version rolled out like any change).
"""

from flask import Blueprint, Response, current_app, request

from store import master as ms
from store import versions
from store.db import StoreError
from store.sip_settings import current_settings, save_settings

from . import cluster, services
from .auth import basic_auth_required
from .filters import FilterError
from .pages import STATES, start_import, user_filters
from .rates import states_and_rates
from .user_files import export_csv

bp = Blueprint("api", __name__, url_prefix="/api")

NODE_FIELDS = (
    "node_id",
    "sip",
    "bus",
    "control",
    "public_key",
    "weight",
    "acked_version",
    "acked_at",
    "last_error",
)


def _changed() -> None:
    pusher = current_app.extensions.get("pusher")
    if pusher is not None:
        pusher.poke()


@bp.get("/users")
@basic_auth_required
def users():
    """Users (no HA1s), ``?q=`` filters by name, ``?state=enabled|disabled``, ``?limit=`` up
    to 1000, ``?offset=``."""
    try:
        query = user_filters(request.args)
    except FilterError as e:
        return {"error": str(e)}, 400
    limit = min(max(request.args.get("limit", 100, type=int), 1), 1000)
    enabled = STATES[query["state"]]
    return {
        "total": ms.count_users(),
        "found": ms.count_users(query["q"], enabled),
        "users": ms.list_users(query["q"], limit, query["offset"], enabled),
    }


@bp.get("/users.csv")
@basic_auth_required
def export_users():
    """The users as CSV (``?q=``, ``?state=``): name, enabled, creation time."""
    try:
        query = user_filters(request.args)
    except FilterError as e:
        return {"error": str(e)}, 400
    return Response(
        export_csv(query["q"], STATES[query["state"]]),
        mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=users.csv"},
    )


@bp.post("/users")
@basic_auth_required
def add_user():
    """Add a user or change its password: ``{"username": ..., "password": ...}``, and
    ``"enabled"`` (a new user is enabled; an existing one keeps its state unless given)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return {"error": 'expected a JSON object {"username", "password"}'}, 400
    enabled = body.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        return {"error": "enabled must be true or false"}, 400
    try:
        version = ms.save_user(body.get("username"), body.get("password"), enabled)
    except StoreError as e:
        return {"error": str(e)}, 400
    _changed()
    return {"username": body["username"], "version": version}, 201


@bp.patch("/users/<username>")
@basic_auth_required
def patch_user(username):
    """Enable or disable a user on every node at once: ``{"enabled": true|false}``."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
        return {"error": 'expected a JSON object {"enabled": true|false}'}, 400
    version = ms.set_user_enabled(username, body["enabled"])
    if version is None:
        return {"error": f"no user {username}"}, 404
    _changed()
    return {"username": username, "enabled": body["enabled"], "version": version}


@bp.delete("/users/<username>")
@basic_auth_required
def delete_user(username):
    """Delete a user."""
    version = ms.delete_user(username)
    if version is None:
        return {"error": f"no user {username}"}, 404
    _changed()
    return {"username": username, "version": version}


@bp.post("/users/import")
@basic_auth_required
def import_users():
    """Start a background import of the CSV body (``username,password``; ``?name=`` names
    the file in messages): 202 with the job, whose progress ``GET
    /api/users/import/<id>`` tells."""
    name = request.args.get("name", "upload.csv")[:128] or "upload.csv"
    job = start_import(name, request.get_data(cache=False))
    if isinstance(job, str):
        return {"error": job}, 409 if "running" in job else 400
    return job.as_dict(), 202


@bp.get("/users/import/<int:job_id>")
@basic_auth_required
def import_status(job_id):
    """An import's phase (checking, hashing, writing, done, failed), rows done and total,
    the configuration version made or the error (naming the file and line)."""
    job = current_app.extensions["user_imports"].get(job_id)
    if job is None:
        return {"error": f"no import {job_id}"}, 404
    return job.as_dict()


@bp.get("/nodes")
@basic_auth_required
def nodes():
    """Every node: endpoints, weight, acknowledged version, last push error, and (asked
    now) health, uptime, bindings, rates over the last minute, replication lag per peer."""
    nodes = ms.list_nodes()
    pusher = current_app.extensions.get("pusher")
    states, rates = states_and_rates(getattr(pusher, "bus", None), nodes)
    rows = cluster.overview(nodes, states, rates, ms.current_version())
    return {
        "nodes": [
            {**{k: n[k] for k in NODE_FIELDS}, **row} for n, row in zip(nodes, rows, strict=True)
        ]
    }


@bp.get("/config")
@basic_auth_required
def config():
    """The newest configuration version, the one each node runs and the SIP settings."""
    return {
        "version": ms.current_version(),
        "domain": ms.domain(),
        "settings": current_settings(),
        "nodes": {n["node_id"]: n["acked_version"] for n in ms.list_nodes()},
    }


@bp.put("/config")
@basic_auth_required
def set_config():
    """Change SIP settings (some or all of ``aliases``, ``auth_algorithms``,
    ``min_expires``, ``max_expires``, ``default_expires``): a new version pushed to
    every node, or 400 with what is wrong and nothing changed."""
    try:
        version = save_settings(request.get_json(silent=True))
    except StoreError as e:
        return {"error": str(e)}, 400
    _changed()
    return {"version": version, "settings": current_settings()}


@bp.get("/registrations")
@basic_auth_required
def registrations():
    """Every node's registrations merged (``?user=``, ``?node=`` primary, ``?after=``
    cursor, ``?limit=`` up to 500): each with its primary and the nodes holding it,
    the counts by primary node and the load-balance index; ``next`` is the cursor of
    the following page (null on the last)."""
    try:
        query = cluster.registration_filters(request.args, [n["node_id"] for n in ms.list_nodes()])
    except FilterError as e:
        return {"error": str(e)}, 400
    pusher = current_app.extensions.get("pusher")
    if getattr(pusher, "bus", None) is None:
        return {"error": "the master has no bus"}, 503
    found = cluster.registrations(
        pusher.bus, ms.list_nodes(), query["user"], query["node"], query["after"], query["limit"]
    )
    last = found["bindings"][-1] if found["more"] else None
    return {**found, "next": f"{last['aor']} {last['key']}" if last else None}


@bp.post("/nodes/<node_id>/restart")
@basic_auth_required
def restart_node(node_id):
    """Restart a node's process through the lab; its new process state."""
    try:
        return {
            "node": node_id,
            "state": services.restart_node(current_app.config["LAB_DATA"], node_id),
        }
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
        return {
            "node": node_id,
            **services.node_calls(getattr(pusher, "bus", None), node_id, limit),
        }
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
        return {
            "node": node_id,
            **services.drain_node(getattr(pusher, "bus", None), node_id, body["on"]),
        }
    except services.ServiceError as e:
        return {"error": str(e)}, 400


@bp.get("/nodes/<node_id>/services")
@basic_auth_required
def node_services(node_id):
    """A node's services: state, uptime (s) and restart count of each."""
    pusher = current_app.extensions.get("pusher")
    try:
        return {
            "node": node_id,
            "services": services.node_services(getattr(pusher, "bus", None), node_id),
        }
    except services.ServiceError as e:
        return {"error": str(e)}, 400


@bp.post("/nodes/<node_id>/services/<name>/<any(stop, start, restart):action>")
@basic_auth_required
def service_action(node_id, name, action):
    """Stop, start or restart one service of a node (any node, lab or not); its new state."""
    pusher = current_app.extensions.get("pusher")
    try:
        return {
            "node": node_id,
            **services.service_action(getattr(pusher, "bus", None), node_id, name[:64], action),
        }
    except services.ServiceError as e:
        return {"error": str(e)}, 400


@bp.get("/versions")
@basic_auth_required
def list_versions():
    """The newest versions (number, time, reason, restorable) and a stopped rollout."""
    return {"versions": versions.list_versions(), "rollout_failed": versions.rollout_failure()}


@bp.post("/versions/<int:number>/restore")
@basic_auth_required
def restore_version(number):
    """Make version ``number``'s users and dial plan current again, as a new version."""
    try:
        version = versions.restore(number)
    except StoreError as e:
        return {"error": str(e)}, 400
    if version is None:
        return {
            "error": f"no version {number} with its content kept (the newest {versions.KEEP} are)"
        }, 404
    _changed()
    return {"restored": number, "version": version}
