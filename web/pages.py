"""The dashboard's pages: nodes (configuration version per node) and users."""

import time

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from store import cdrs
from store import master as ms
from store import versions
from store.db import StoreError

from . import cluster, services
from .calls import _when
from .auth import login_required
from .charts import split_chart
from .filters import FilterError, texts
from .rates import states_and_rates
from .user_files import ImportBusy, export_csv

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
    return render_template(
        "nodes.html",
        nodes=nodes,
        version=version,
        rows=rows,
        domain=ms.domain(),
        states=states,
        action=ActionForm(),
        calls=cdrs.per_node(time.time() - 86400),
        rollout_failed=versions.rollout_failure(),
        versions=versions.list_versions(VERSIONS_SHOWN),
        when=_when,
    )


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
        flash(
            f"{node_id} drains: new calls and REGISTERs get 503."
            if on
            else f"{node_id} takes new calls and REGISTERs again."
        )
    return redirect(url_for("pages.nodes"))


@bp.route("/nodes/<node_id>/services")
@login_required
def node_services(node_id):
    """A node's services with their state, uptime and restarts, and Stop, Start, Restart."""
    try:
        found, error = services.node_services(bus(), node_id), ""
    except services.ServiceError as e:
        found, error = {}, str(e)
    return render_template(
        "services.html", node_id=node_id, services=found, error=error, action=ActionForm()
    ), (200 if found else 502)


@bp.route("/nodes/<node_id>/services/<name>/<any(stop, start, restart):action>", methods=["POST"])
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
    """The registrations of every node merged, with primary node and the nodes holding
    each; filters by user and primary node, pages by key, and the load split."""
    node_ids = [n["node_id"] for n in ms.list_nodes()]
    try:
        query = cluster.registration_filters(request.args, node_ids)
    except FilterError as e:
        flash(f"Filter not used: {e}")
        return redirect(url_for("pages.registrations"))
    found = (
        cluster.registrations(
            bus(), ms.list_nodes(), query["user"], query["node"], query["after"], query["limit"]
        )
        if bus() is not None
        else cluster.merge({}, query["limit"])
    )
    last = found["bindings"][-1] if found["more"] else None
    return render_template(
        "registrations.html",
        query=query,
        node_ids=node_ids,
        now=time.time(),
        chart=split_chart(found["by_primary"]),
        next_after=f"{last['aor']} {last['key']}" if last else "",
        **found,
    )


PAGE_SIZE = 100
"""Users one page lists."""
STATES = {"": None, "enabled": True, "disabled": False}
"""The state filter of the users page and its CSV."""


def user_filters(args) -> dict:
    """``q`` (a name part), ``state`` (enabled or disabled) and ``offset`` of a query string,
    checked."""
    out: dict = {}
    texts(args, ("q", "state", "edit"), out)
    if out["state"] not in STATES:
        raise FilterError("state must be enabled or disabled")
    raw = args.get("offset", "")
    if raw and (not raw.isdigit() or len(raw) > 10):
        raise FilterError("offset must be a whole number")
    out["offset"] = min(int(raw) if raw else 0, ms.MAX_USERS)
    return out


@bp.route("/users", methods=["GET", "POST"])
@login_required
def users():
    """List, search (by name, by state), page, add users and change their passwords."""
    form = UserForm()
    status = 200
    if request.method == "POST":
        if form.validate_on_submit():
            try:
                version = ms.save_user(form.username.data, form.password.data, enabled=None)
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
    try:
        query = user_filters(request.args)
    except FilterError as e:
        flash(f"Filter not used: {e}")
        query, status = user_filters({}), 400
    enabled = STATES[query["state"]]
    if request.method == "GET" and query["edit"]:
        form.username.data = query["edit"]
    return render_template(
        "users.html",
        form=form,
        query=query,
        page_size=PAGE_SIZE,
        users=ms.list_users(query["q"], PAGE_SIZE, query["offset"], enabled),
        found=ms.count_users(query["q"], enabled),
        total=ms.count_users(),
        action=ActionForm(),
        upload=ImportForm(),
    ), status


@bp.route("/users.csv")
@login_required
def export_users():
    """The users (as filtered on the page) as a CSV download; never an HA1."""
    try:
        query = user_filters(request.args)
    except FilterError as e:
        return f"Filter not used: {e}", 400
    return Response(
        export_csv(query["q"], STATES[query["state"]]),
        mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=users.csv"},
    )


@bp.route("/users/<username>/enable", methods=["POST"])
@login_required
def enable_user(username):
    """Enable (``on=1``) or disable (``on=0``) a user on every node at once."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    on = request.form.get("on") == "1"
    version = ms.set_user_enabled(username, on)
    if version is None:
        flash(f"No user {username}.")
    else:
        changed()
        flash(f"User {username} {'enabled' if on else 'disabled'}: configuration {version}.")
    return redirect(url_for("pages.users", q=request.args.get("q", "")[:64]))


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


def start_import(name: str, data: bytes):
    """Start a background import of ``data`` (a CSV) read from ``name``: the job, or an
    error message."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return f"Nothing imported: {name} is not UTF-8 ({e.reason} at byte {e.start})"
    try:
        return current_app.extensions["user_imports"].start(
            name, text, session.get("admin") or getattr(request.authorization, "username", "?")
        )
    except ImportBusy as e:
        return str(e)


@bp.route("/users/import", methods=["POST"])
@login_required
def import_users():
    """Import a CSV of users in the background (all of it, or on a bad line nothing),
    then show its progress."""
    form = ImportForm()
    if not form.validate_on_submit():
        flash("; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()))
        return redirect(url_for("pages.users")), 303
    job = start_import(form.file.data.filename or "upload.csv", form.file.data.read())
    if isinstance(job, str):
        flash(job)
        return redirect(url_for("pages.users")), 303
    flash(f"Import {job.id} of {job.name} started.")
    return redirect(url_for("pages.import_status", job_id=job.id)), 303


@bp.route("/users/import/<int:job_id>")
@login_required
def import_status(job_id):
    """An import's progress; the page reloads itself every second until the import ends."""
    job = current_app.extensions["user_imports"].get(job_id)
    if job is None:
        return render_template("import.html", job=None), 404
    return render_template("import.html", job=job)
