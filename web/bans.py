"""The bans in force against password guessing, on every node, and lifting one.

Each node lists its bans (``bans`` on its control endpoint: kind, key,
seconds left, the node that made it); the page merges them by kind and key
with the nodes holding each. Lifting sends ``unban`` to every node that
answers (a node shares a lift with its peers too, but one that is cut off
would miss it): the audit log records it as ``ban lifted``.
"""

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from store import master as ms

from . import cluster
from .auth import basic_auth_required, login_required
from .pages import ActionForm

bp = Blueprint("bans", __name__)

KINDS = ("source", "user")
"""What a ban is on: a source address or a user name."""
MAX_KEY = 256
"""Longest address or user name a lift accepts."""


class BanError(ValueError):
    """A lift that cannot be done, with the reason."""


def _bus():
    return getattr(current_app.extensions.get("pusher"), "bus", None)


def bans_in_force(bus) -> dict:
    """``{"bans": [{kind, key, left, origin, nodes}], "errors": {node: text}}``."""
    merged: dict[tuple, dict] = {}
    errors = {}
    for node, answer in cluster.ask_all(bus, ms.list_nodes(), {"cmd": "bans"}).items():
        if isinstance(answer, dict):
            errors[node] = answer.get("error", "no answer")
            continue
        for b in answer:
            entry = merged.setdefault((b["kind"], b["key"]), {**b, "nodes": []})
            entry["left"] = max(entry["left"], b["left"])
            entry["nodes"].append(node)
    return {"bans": sorted(merged.values(), key=lambda b: (b["kind"], b["key"])), "errors": errors}


def lift(bus, kind, key) -> dict:
    """Lift the ban of ``kind`` on ``key`` on every node: ``{node: lifted or error}``."""
    if kind not in KINDS:
        raise BanError(f"kind must be one of {', '.join(KINDS)}")
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise BanError(f"key must be an address or a user name of 1 to {MAX_KEY} characters")
    if bus is None:
        raise BanError("the master has no bus to reach the nodes")
    answers = cluster.ask_all(bus, ms.list_nodes(), {"cmd": "unban", "kind": kind, "key": key})
    return {
        node: (a if isinstance(a, bool) else a.get("error", "no answer"))
        for node, a in answers.items()
    }


@bp.get("/bans")
@login_required
def page():
    """Every ban in force, merged over the nodes, each with a Lift button."""
    bus = _bus()
    found = bans_in_force(bus) if bus is not None else {"bans": [], "errors": {}}
    return render_template("bans.html", **found, form=ActionForm())


@bp.post("/bans/lift")
@login_required
def lift_page():
    """Lift one ban (``kind``, ``key``) on every node."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    kind, key = request.form.get("kind", ""), request.form.get("key", "")
    try:
        result = lift(_bus(), kind, key)
    except BanError as e:
        flash(f"Ban not lifted: {e}")
        return redirect(url_for("bans.page")), 303
    lifted = sorted(n for n, r in result.items() if r is True)
    flash(f"Ban of {kind} {key} lifted on {', '.join(lifted) or 'no node (none had it)'}.")
    return redirect(url_for("bans.page"))


@bp.get("/api/bans")
@basic_auth_required
def api_bans():
    """Every ban in force, merged over the nodes."""
    bus = _bus()
    if bus is None:
        return {"error": "the master has no bus"}, 503
    return bans_in_force(bus)


@bp.post("/api/bans/lift")
@basic_auth_required
def api_lift():
    """Lift a ban: ``{"kind": "source"|"user", "key": ...}``; ``{node: lifted or error}``."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return {"error": 'expected {"kind": "source"|"user", "key": ...}'}, 400
    try:
        return {"nodes": lift(_bus(), body.get("kind"), body.get("key"))}
    except BanError as e:
        return {"error": str(e)}, 400
