"""The dial plan on the dashboard: gateways (with the health the nodes report), ordered
rules with a "which rule would this number take?" tester, user permissions and emergency
settings; a page for admins (forms with CSRF tokens) and a JSON API (HTTP Basic).

JSON API under ``/api/dialplan``: ``GET`` the plan; ``PUT`` a whole plan;
``POST /gateways`` a gateway (replaces one of the same name), ``DELETE
/gateways/<name>``; ``POST /rules`` ``{"rule": {...}, "position": n}``, ``PUT
/rules/<i>``, ``DELETE /rules/<i>``, ``POST /rules/<i>/move`` ``{"to": n}``;
``POST /trusted`` ``{"name", "address", "certificate", "subject"}`` a trusted peer,
``DELETE /trusted/<name>``;
``PUT /users/<name>`` ``{"permissions", "caller_id", "emergency_callback", "numbers"}``;
``PUT /settings`` ``{"default_callback", "locations", "probe_interval", "probe_misses"}``;
``GET /which?number=`` the rule a number takes; ``GET /health`` each node's view
of each gateway. Every change is checked by compiling the whole plan (400 with
the reason otherwise) and makes a configuration version pushed to every node.
"""

import json

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import TextAreaField
from wtforms.validators import DataRequired, Length

from store import dialplan as dp
from store import master as ms
from store.db import StoreError

from . import cluster
from .auth import basic_auth_required, login_required

bp = Blueprint("dialplan", __name__)
api_bp = Blueprint("dialplan_api", __name__, url_prefix="/api/dialplan")

MAX_BODY = dp.MAX_DOCUMENT + 4096
"""Largest JSON body taken by the API (bytes); a larger one gets 413."""


class PlanForm(FlaskForm):
    """The whole plan as JSON, to replace it."""

    plan = TextAreaField("Plan (JSON)", validators=[DataRequired(), Length(max=dp.MAX_DOCUMENT)])


class ActionForm(FlaskForm):
    """A button that only carries the CSRF token."""


def _changed() -> None:
    pusher = current_app.extensions.get("pusher")
    if pusher is not None:
        pusher.poke()


def _health() -> dict:
    """``{node id: {"gateways": {name: {"state", "misses"}}, "probes", "calls"}`` (or
    ``{"error": ...}``) as each node says."""
    pusher = current_app.extensions.get("pusher")
    bus = getattr(pusher, "bus", None)
    if bus is None:
        return {}
    return cluster.ask_all(bus, ms.list_nodes(), {"cmd": "gateways"})


# -- JSON API ------------------------------------------------------------------------
def _body():
    """The request's JSON body, or an error response (413 too large, 400 not JSON)."""
    if (request.content_length or 0) > MAX_BODY:
        return None, ({"error": f"body larger than {MAX_BODY} bytes"}, 413)
    body = request.get_json(silent=True)
    if body is None:
        return None, ({"error": "expected a JSON body"}, 400)
    return body, None


def _apply(fn, *args):
    """Run a store change: ``{"version"}`` (pushed), 404 when it found nothing, 400 with
    the reason when the plan would not compile."""
    try:
        version = fn(*args)
    except StoreError as e:
        return {"error": str(e)}, 400
    if version is None:
        return {"error": "not found"}, 404
    _changed()
    return {"version": version}


@api_bp.get("")
@basic_auth_required
def get_plan():
    """The plan document and the configuration version."""
    return {"plan": dp.get_dialplan(), "version": ms.current_version()}


@api_bp.put("")
@basic_auth_required
def put_plan():
    """Replace the whole plan."""
    body, error = _body()
    return error or _apply(dp.save_dialplan, body)


@api_bp.post("/gateways")
@basic_auth_required
def post_gateway():
    """Add a gateway or replace the one of the same name."""
    body, error = _body()
    return error or _apply(dp.save_gateway, body)


@api_bp.delete("/gateways/<name>")
@basic_auth_required
def delete_gateway(name):
    """Remove a gateway (400 while a rule uses it)."""
    return _apply(dp.delete_gateway, name)


@api_bp.post("/trusted")
@basic_auth_required
def post_trusted():
    """Trust a carrier or gateway by source address or TLS certificate (replaces one of
    the same name)."""
    body, error = _body()
    return error or _apply(dp.save_trusted, body)


@api_bp.delete("/trusted/<name>")
@basic_auth_required
def delete_trusted(name):
    """Stop trusting a peer."""
    return _apply(dp.delete_trusted, name)


@api_bp.post("/rules")
@basic_auth_required
def post_rule():
    """Insert ``{"rule": {...}, "position": n}`` (no position: last)."""
    body, error = _body()
    if error:
        return error
    if not isinstance(body, dict) or "rule" not in body:
        return {"error": 'expected {"rule": {...}, "position": n}'}, 400
    return _apply(dp.save_rule, body["rule"], body.get("position"))


@api_bp.put("/rules/<int:index>")
@basic_auth_required
def put_rule(index):
    """Replace the rule at ``index``."""
    body, error = _body()
    return error or _apply(dp.replace_rule, index, body)


@api_bp.delete("/rules/<int:index>")
@basic_auth_required
def delete_rule(index):
    """Remove the rule at ``index``."""
    return _apply(dp.delete_rule, index)


@api_bp.post("/rules/<int:index>/move")
@basic_auth_required
def move_rule(index):
    """Move the rule at ``index`` to ``{"to": n}``."""
    body, error = _body()
    if error:
        return error
    to = body.get("to") if isinstance(body, dict) else None
    if not isinstance(to, int) or isinstance(to, bool):
        return {"error": 'expected {"to": n}'}, 400
    return _apply(dp.move_rule, index, to)


@api_bp.put("/users/<username>")
@basic_auth_required
def put_user(username):
    """Set a user's permissions, caller ID, emergency callback number, extensions and DIDs."""
    body, error = _body()
    return error or _apply(dp.save_user_policy, username, body)


@api_bp.put("/settings")
@basic_auth_required
def put_settings():
    """Set the default emergency callback number, the callback numbers by location and
    the gateway probes' interval/misses."""
    body, error = _body()
    return error or _apply(dp.save_settings, body)


@api_bp.get("/which")
@basic_auth_required
def which():
    """The rule ``?number=`` would take, the number sent on and its gateways."""
    try:
        return dp.which_rule(request.args.get("number", ""))
    except StoreError as e:
        return {"error": str(e)}, 400


@api_bp.get("/health")
@basic_auth_required
def health():
    """Each node's view of each gateway (up/down, probes missed)."""
    return {"nodes": _health()}


# -- the page --------------------------------------------------------------------------
@bp.route("/dialplan", methods=["GET", "POST"])
@login_required
def page():
    """Gateways with health, rules in order, the tester, user policies; replace the plan."""
    form = PlanForm()
    status = 200
    if request.method == "POST":
        if form.validate_on_submit():
            try:
                version = dp.save_dialplan(json.loads(form.plan.data))
            except (StoreError, ValueError) as e:
                flash(f"Plan not saved: {e}")
                status = 400
            else:
                _changed()
                flash(f"Dial plan saved: configuration {version}.")
                return redirect(url_for("dialplan.page"))
        else:
            flash("; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()))
            status = 400
    plan = dp.get_dialplan()
    if not form.plan.data:
        form.plan.data = json.dumps(plan, indent=2)
    number = request.args.get("number", "")[:64]
    tested = None
    if number:
        try:
            tested = dp.which_rule(number)
        except StoreError as e:
            tested = {"error": str(e)}
    return render_template(
        "dialplan.html",
        plan=plan,
        form=form,
        action=ActionForm(),
        number=number,
        tested=tested,
        health=_health(),
    ), status


@bp.route("/dialplan/rules/<int:index>/<op>", methods=["POST"])
@login_required
def rule_action(index, op):
    """Delete a rule (``op`` delete) or move it one place up (``op`` up)."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    try:
        if op == "delete":
            version = dp.delete_rule(index)
        elif op == "up":
            version = dp.move_rule(index, index - 1)
        else:
            return "unknown action", 404
    except StoreError as e:
        flash(str(e))
        return redirect(url_for("dialplan.page"))
    if version is None:
        flash(f"No rule {index}.")
    else:
        _changed()
        flash(
            f"Rule {index} {'deleted' if op == 'delete' else 'moved up'}: configuration {version}."
        )
    return redirect(url_for("dialplan.page"))
