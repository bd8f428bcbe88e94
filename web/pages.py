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
from store import versions
from store.db import StoreError
from store.users import read_users_csv

from . import cluster, services
from .calls import _when
from .auth import login_required

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
    """Every node: state and bindings (asked now), the configuration version it acknowledged,
    and over the last day its answer-seizure ratio and average call length."""
    nodes = ms.list_nodes()
    states = cluster.node_states(bus(), nodes) if bus() is not None else {}
    return render_template("nodes.html", nodes=nodes, version=ms.current_version(),
                           domain=ms.domain(), states=states, action=ActionForm(),
                           calls=cdrs.per_node(time.time() - 86400),
                           rollout_failed=versions.rollout_failure(),
                           versions=versions.list_versions(VERSIONS_SHOWN), when=_when)


VERSIONS_SHOWN = 20
"""Configuration versions the nodes page lists (the API lists every one kept)."""


@bp.route("/versions/<int:number>/restore", methods=["POST"])
@login_required
def restore_version(number):
    """Make an earlier version's users and dial plan current again (a new version)."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    try:
        version = versions.restore(number)
    except StoreError as e:
        flash(f"Version {number} not restored: {e}")
        return redirect(url_for("pages.nodes"))
    if version is None:
        return f"no version {number} with its content kept", 404
    changed()
    flash(f"Version {number} restored as version {version}; it rolls out now.")
    return redirect(url_for("pages.nodes"))


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
