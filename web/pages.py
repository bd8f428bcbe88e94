"""The dashboard's pages: nodes (configuration version per node) and users."""

import io
import time

from flask import (Blueprint, current_app, flash, redirect, render_template, request, url_for)
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from store import cdrs
from store import master as ms
from store.db import StoreError
from store.users import read_users_csv

from . import cluster, services
from .auth import login_required
from .rates import states_and_rates

bp = Blueprint("pages", __name__)


class UserForm(FlaskForm):
    """Add a user or change its password."""

    username = StringField("User", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])


class ImportForm(FlaskForm):
    """Import users from a CSV (``username,password``)."""

    file = FileField("CSV", validators=[FileRequired()])


class ActionForm(FlaskForm):
    """A button that only carries the CSRF token (delete, logout)."""


def changed() -> None:
    """Tell the pusher a new configuration version exists."""
    pusher = current_app.extensions.get("pusher")
    if pusher is not None:
        pusher.poke()


def bus():
    """The master's bus (the pusher's), or None when the app runs without one."""
    pusher = current_app.extensions.get("pusher")
    return getattr(pusher, "bus", None)


@bp.route("/")
@login_required
def nodes():
    """Every node: health, uptime, bindings, REGISTER and call rates over the last minute
    and replication lag from each peer (asked now), the configuration version it
    acknowledged, and over the last day its answer-seizure ratio and average call length."""
    nodes = ms.list_nodes()
    states, rates = states_and_rates(bus(), nodes)
    version = ms.current_version()
    rows = {r["node_id"]: r for r in cluster.overview(nodes, states, rates, version)}
    return render_template("nodes.html", nodes=nodes, version=version, rows=rows,
                           domain=ms.domain(), states=states, action=ActionForm(),
                           calls=cdrs.per_node(time.time() - 86400))


@bp.route("/nodes/<node_id>/restart", methods=["POST"])
@login_required
def restart_node(node_id):
    """Restart a node's process (through the lab) and show the result."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    try:
        state = services.restart_node(current_app.config["LAB_DATA"], node_id)
    except services.ServiceError as e:
        flash(f"Restart of {node_id} failed: {e}")
    else:
        flash(f"{node_id} restarted (restarts: {state.get('restarts')}); it answers again.")
    return redirect(url_for("pages.nodes"))


@bp.route("/nodes/<node_id>/drain", methods=["POST"])
@login_required
def drain_node(node_id):
    """Drain a node (``on=1``) or end its drain (``on=0``) and show the result."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    on = request.form.get("on") == "1"
    try:
        services.drain_node(bus(), node_id, on)
    except services.ServiceError as e:
        flash(f"{'Drain' if on else 'Undrain'} of {node_id} failed: {e}")
    else:
        flash(f"{node_id} drains: new calls and REGISTERs get 503." if on
              else f"{node_id} takes new calls and REGISTERs again.")
    return redirect(url_for("pages.nodes"))


@bp.route("/nodes/<node_id>/services")
@login_required
def node_services(node_id):
    """A node's services with their state, uptime and restarts, and Stop, Start, Restart."""
    try:
        found, error = services.node_services(bus(), node_id), ""
    except services.ServiceError as e:
        found, error = {}, str(e)
    return render_template("services.html", node_id=node_id, services=found, error=error,
                           action=ActionForm()), (200 if found else 502)


@bp.route("/nodes/<node_id>/services/<name>/<any(stop, start, restart):action>",
          methods=["POST"])
@login_required
def service_action(node_id, name, action):
    """Stop, start or restart one service of a node and show the result."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    try:
        state = services.service_action(bus(), node_id, name[:64], action)
    except services.ServiceError as e:
        flash(f"{action.capitalize()} of {name[:64]} on {node_id} failed: {e}")
    else:
        flash(f"{name} on {node_id}: {state['state']} (restarts: {state['restarts']}).")
    return redirect(url_for("pages.node_services", node_id=node_id))


@bp.route("/registrations")
@login_required
def registrations():
    """The registrations of every node merged, with primary node; filter by user."""
    user = request.args.get("user", "")[:64]
    found = (cluster.registrations(bus(), ms.list_nodes(), user) if bus() is not None
             else {"bindings": [], "errors": {}, "totals": {}})
    return render_template("registrations.html", user=user, **found,
                           balance=cluster.balance_index(found["bindings"]))


@bp.route("/users", methods=["GET", "POST"])
@login_required
def users():
    """List, search and add users."""
    form = UserForm()
    status = 200
    if request.method == "POST":
        if form.validate_on_submit():
            try:
                version = ms.save_user(form.username.data, form.password.data)
            except StoreError as e:
                flash(str(e))
                status = 400
            else:
                changed()
                flash(f"User {form.username.data} saved: configuration {version}.")
                return redirect(url_for("pages.users"))
        else:
            flash("; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()))
            status = 400
    search = request.args.get("q", "")[:64]
    return render_template("users.html", form=form, users=ms.list_users(search), search=search,
                           total=ms.count_users(), action=ActionForm(),
                           upload=ImportForm()), status


@bp.route("/users/<username>/delete", methods=["POST"])
@login_required
def delete_user(username):
    """Delete one user."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    version = ms.delete_user(username)
    if version is None:
        flash(f"No user {username}.")
    else:
        changed()
        flash(f"User {username} deleted: configuration {version}.")
    return redirect(url_for("pages.users"))


@bp.route("/users/import", methods=["POST"])
@login_required
def import_users():
    """Import a CSV of users: all of it, or (on a bad line) nothing."""
    form = ImportForm()
    if not form.validate_on_submit():
        flash("; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()))
        return redirect(url_for("pages.users")), 303
    name = form.file.data.filename or "upload.csv"
    try:
        text = io.TextIOWrapper(form.file.data.stream, encoding="utf-8-sig", newline="")
        rows = read_users_csv(text, name)
        version = ms.save_users(rows, f"{len(rows)} users imported from {name}")
    except StoreError as e:
        flash(f"Nothing imported: {e}")
        return redirect(url_for("pages.users")), 303
    changed()
    flash(f"{len(rows)} users imported from {name}: configuration {version}.")
    return redirect(url_for("pages.users"))
