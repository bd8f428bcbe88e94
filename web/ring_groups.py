"""Ring groups and call limits on the dashboard: a page for admins (forms with CSRF
tokens) and a JSON API (HTTP Basic) beside the dial plan's.

JSON API under ``/api/dialplan``: ``GET /groups``; ``POST /groups`` a group
(replaces one of the same name); ``DELETE /groups/<name>``; ``GET /limits``;
``PUT /limits`` ``{"user", "gateway", "users", "gateways"}``; ``GET /calls``
each node's calls in progress per user and gateway (what the limits count). Every
change is checked by compiling the whole plan (400 with the reason otherwise) and
makes a configuration version pushed to every node.
"""

import json

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import TextAreaField
from wtforms.validators import DataRequired, Length

from store import master as ms
from store import ring_groups as rg
from store.db import StoreError

from . import cluster
from .auth import basic_auth_required, login_required
from .dialplan import ActionForm, _apply, _body, _changed

bp = Blueprint("ring_groups", __name__)
api_bp = Blueprint("ring_groups_api", __name__, url_prefix="/api/dialplan")

MAX_FORM = 64 * 1024
"""Largest group or limits document taken from the page's forms (characters)."""


class JsonForm(FlaskForm):
    """One JSON object: a ring group, or the limits."""

    body = TextAreaField("JSON", validators=[DataRequired(), Length(max=MAX_FORM)])


def calls_now() -> dict:
    """``{node id: {"calls", "users", "gateways", "stats"}}`` (or ``{"error": ...}``) as
    each node counts its calls in progress."""
    pusher = current_app.extensions.get("pusher")
    bus = getattr(pusher, "bus", None)
    if bus is None:
        return {}
    return cluster.ask_all(bus, ms.list_nodes(), {"cmd": "call_counts"})


# -- JSON API ------------------------------------------------------------------------
@api_bp.get("/groups")
@basic_auth_required
def get_groups():
    """The ring groups."""
    return {"groups": rg.get_groups(), "version": ms.current_version()}


@api_bp.post("/groups")
@basic_auth_required
def post_group():
    """Add a ring group or replace the one of the same name."""
    body, error = _body()
    return error or _apply(rg.save_group, body)


@api_bp.delete("/groups/<name>")
@basic_auth_required
def delete_group(name):
    """Remove a ring group (400 while another group names it)."""
    return _apply(rg.delete_group, name)


@api_bp.get("/limits")
@basic_auth_required
def get_limits():
    """The concurrent-call limits."""
    return {"limits": rg.get_limits(), "version": ms.current_version()}


@api_bp.put("/limits")
@basic_auth_required
def put_limits():
    """Replace the concurrent-call limits."""
    body, error = _body()
    return error or _apply(rg.save_limits, body)


@api_bp.get("/calls")
@basic_auth_required
def get_calls():
    """Each node's calls in progress per user and per gateway."""
    return {"nodes": calls_now()}


# -- the page --------------------------------------------------------------------------
def _save(form: JsonForm, save, what: str) -> bool:
    """Save the form's JSON with ``save``; flash what happened; whether it was saved."""
    if not form.validate_on_submit():
        flash("; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()))
        return False
    try:
        version = save(json.loads(form.body.data))
    except (StoreError, ValueError) as e:
        flash(f"{what} not saved: {e}")
        return False
    _changed()
    flash(f"{what} saved: configuration {version}.")
    return True


@bp.route("/dialplan/groups", methods=["GET", "POST"])
@login_required
def page():
    """Ring groups, limits and the calls each node counts; add a group, set the limits."""
    group_form, limits_form = JsonForm(prefix="group"), JsonForm(prefix="limits")
    status = 200
    if request.method == "POST":
        if "group-body" in request.form:
            if _save(group_form, rg.save_group, "Ring group"):
                return redirect(url_for("ring_groups.page"))
        elif _save(limits_form, rg.save_limits, "Limits"):
            return redirect(url_for("ring_groups.page"))
        status = 400
    limits = rg.get_limits()
    if not limits_form.body.data:
        limits_form.body.data = json.dumps(limits, indent=2)
    return render_template(
        "ring_groups.html",
        groups=rg.get_groups(),
        limits=limits,
        group_form=group_form,
        limits_form=limits_form,
        action=ActionForm(),
        calls=calls_now(),
    ), status


@bp.route("/dialplan/groups/<name>/delete", methods=["POST"])
@login_required
def delete_action(name):
    """Delete a ring group."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    try:
        version = rg.delete_group(name)
    except StoreError as e:
        flash(str(e))
        return redirect(url_for("ring_groups.page"))
    if version is None:
        flash(f"No ring group {name[:64]}.")
    else:
        _changed()
        flash(f"Ring group {name[:64]} deleted: configuration {version}.")
    return redirect(url_for("ring_groups.page"))
