"""The audit log on the dashboard: every admin action recorded, a page, CSV and ``/api/audit``.

:func:`init_app` hooks the app's requests, so the routes of the other
blueprints need no audit code: before a changing request (POST, PUT, PATCH,
DELETE) the state it may change is read (:data:`DESCRIBERS`, by endpoint),
and after it the state is read again and one row is written with the admin
(session or HTTP Basic), the client's address as the socket saw it, before
and after, and the outcome (the flashed message, or the JSON error).
A changing request to an endpoint without a describer is recorded too, with
its path. Logins, failed logins (page and API) and blocked logins are rows
of their own; requests that never got past authentication are not admin
actions and leave no row, except as failed logins.

Filters (query string, the page and the API alike): ``actor``, ``action``
(exact), ``target`` (substring), ``since``/``until`` (seconds since the
epoch), ``failed=1``, ``limit``, ``offset``; ``format=csv`` or
``/audit.csv`` for CSV. The retention (days) is set on the page or by
``POST /api/audit/retention`` ``{"days": N}``.
"""

import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from store import audit as store
from store import master as ms
from store.db import StoreError

from .auth import basic_auth_required, login_required
from .filters import FilterError, range_and_page, texts
from .pages import ActionForm

log = logging.getLogger(__name__)

bp = Blueprint("audit", __name__)

MAX_PAGE = 1000
"""Rows one page or one JSON answer holds at most."""
MAX_CSV = 100_000
"""Rows one CSV export holds at most."""
CHANGING = frozenset(("POST", "PUT", "PATCH", "DELETE"))
BLOCKED_EVERY = 60.0
"""Seconds between two ``login blocked`` rows of one address (the limiter answers each
request of a blocked address with 429; one row a minute tells the story)."""
MAX_BLOCKED = 10_000
"""Addresses whose last ``login blocked`` row is remembered at most."""


def _user_state(name: str) -> dict[str, Any]:
    row = ms.SipUser.get_or_none(ms.SipUser.username == name)
    if row is None:
        return {"exists": False}
    # The HA1 only tells whether the password changed; it is popped before recording.
    return {"exists": True, "enabled": row.enabled, "_ha1": row.ha1_sha256}


def _form_or_json(key: str) -> str:
    body = request.get_json(silent=True) if request.is_json else None
    value = body.get(key) if isinstance(body, dict) else request.form.get(key)
    return value[:64] if isinstance(value, str) else ""


def _saved_user() -> tuple[str, dict]:
    name = _form_or_json("username")
    return name, _user_state(name) if name else {}


def _deleted_user() -> tuple[str, dict]:
    name = str(request.view_args.get("username", ""))[:64] if request.view_args else ""
    return name, _user_state(name)


def _user_count() -> tuple[str, dict]:
    return "users", {"users": ms.count_users(), "version": ms.current_version()}


def _weights() -> tuple[str, dict]:
    return "dns", {"weights": {n[0]: n[3] for n in ms.zone_nodes()}}


def _node() -> tuple[str, dict]:
    node = str(request.view_args.get("node_id", ""))[:64] if request.view_args else ""
    return node, {}


def _ban() -> tuple[str, dict]:
    body = request.get_json(silent=True) if request.is_json else None
    source = body if isinstance(body, dict) else request.form
    kind, key = source.get("kind"), source.get("key")
    return f"{str(kind)[:16]} {str(key)[:256]}", {}


def _removed_node() -> tuple[str, dict]:
    node = str(request.view_args.get("node_id", ""))[:64] if request.view_args else ""
    row = ms.ClusterNode.get_or_none(ms.ClusterNode.node_id == node)
    if row is None:
        return node, {"exists": False}
    return node, {
        "exists": True,
        "sip": row.sip,
        "control": row.control,
        "acked_version": row.acked_version,
    }


def _retention() -> tuple[str, dict]:
    return "audit retention", {"days": store.retention_days()}


Describer = Callable[[], tuple[str, dict]]
DESCRIBERS: dict[str, tuple[str, Describer]] = {
    "pages.users": ("user saved", _saved_user),
    "api.add_user": ("user saved", _saved_user),
    "pages.delete_user": ("user deleted", _deleted_user),
    "api.delete_user": ("user deleted", _deleted_user),
    "pages.import_users": ("users import started", _user_count),
    "api.import_users": ("users import started", _user_count),
    "pages.enable_user": ("user enabled or disabled", _deleted_user),
    "api.patch_user": ("user enabled or disabled", _deleted_user),
    "dns.page": ("dns weights", _weights),
    "dns.api_set": ("dns weights", _weights),
    "pages.restart_node": ("service restart", _node),
    "api.restart_node": ("service restart", _node),
    "pages.drain_node": ("drain", _node),
    "api.drain_node": ("drain", _node),
    "auth.logout": ("logout", lambda: ("", {})),
    "backups.download": ("backup downloaded", lambda: ("master", {})),
    "backups.restore": ("restore staged", lambda: ("master", {})),
    "bans.lift_page": ("ban lifted", _ban),
    "bans.api_lift": ("ban lifted", _ban),
    "join.api_token": ("join token made", lambda: ("", {})),
    "join.token_page": ("join token made", lambda: ("", {})),
    "join.api_remove": ("node removed", _removed_node),
    "join.remove_page": ("node removed", _removed_node),
    "audit.retention": ("audit retention", _retention),
    "audit.api_retention": ("audit retention", _retention),
}
"""Endpoint: (action, what it targets and the state it may change)."""

NOT_ACTIONS = frozenset(("auth.login", "join.api_join"))
"""Changing endpoints recorded in their own way (logins, a node joining with a token)."""


def init_app(app: Flask) -> None:
    """Record every admin action of ``app``'s requests."""
    app.before_request(_before)
    app.after_request(_after)


def _dialplan() -> tuple[str, dict]:
    from store.dialplan import get_dialplan

    return "dial plan", get_dialplan()


DIFFED = frozenset(("dial plan changed",))
"""Actions whose before and after keep only the parts that changed (large states)."""


def _describe(endpoint: str) -> tuple[str, str, dict]:
    if endpoint.split(".", 1)[0] in ("dialplan", "dialplan_api", "ring_groups", "ring_groups_api"):
        return ("dial plan changed", *_dialplan())
    action, describer = DESCRIBERS.get(endpoint, ("", None))
    if describer is None:
        return endpoint or request.path[:64], request.path[:200], {}
    target, state = describer()
    return action, target, state


def _before() -> None:
    if request.method not in CHANGING or request.endpoint in NOT_ACTIONS:
        return
    if not session.get("admin") and request.authorization is None:
        return  # not signed in: the view refuses it, and no state is read for it
    g.audit_actor = session.get("admin")
    g.audit_flashes = len(session.get("_flashes", []))  # earlier ones await a page view
    try:
        g.audit_before = _describe(request.endpoint or "")
    except Exception:
        log.exception("audit: cannot read the state before %s", request.endpoint)
        g.audit_before = (request.endpoint or "", request.path[:200], {})


def _after(response: Response) -> Response:
    if request.method not in CHANGING:
        return response
    try:
        if request.endpoint == "auth.login":
            _login(response)
        elif request.endpoint == "join.api_join":
            _join(response)
        else:
            _action(response)
    except Exception:
        # A row that cannot be written must not turn a done change into an error page.
        log.exception("audit: cannot record %s %s", request.method, request.path)
    return response


def _address() -> str:
    return request.remote_addr or "?"


def _basic_name() -> str:
    creds = request.authorization
    return (creds.username or "")[:64] if creds is not None and creds.type == "basic" else ""


def _login(response: Response) -> None:
    name = request.form.get("username", "")[:64]
    if response.status_code == 302:
        store.record(name, "login", address=_address())
    elif response.status_code == 401:
        store.record(
            name,
            "failed login",
            address=_address(),
            ok=False,
            result="wrong admin name or password",
        )
    elif response.status_code == 429:
        now, addr = time.monotonic(), _address()
        _blocked = current_app.extensions.setdefault("audit_blocked", {})
        if now - _blocked.get(addr, -BLOCKED_EVERY) < BLOCKED_EVERY:
            return
        if addr not in _blocked and len(_blocked) >= MAX_BLOCKED:
            _blocked.pop(next(iter(_blocked)))
        _blocked[addr] = now
        store.record(
            name,
            "login blocked",
            address=addr,
            ok=False,
            result="too many failed logins from this address (one row a minute)",
        )


def _join(response: Response) -> None:
    """A node that joined with a token (its id and address, never the secret the reply
    carries), or a join refused before the address's limiter stepped in."""
    body = response.get_json(silent=True) if response.is_json else None
    body = body if isinstance(body, dict) else {}
    if response.status_code == 201:
        store.record(
            "join token",
            "node joined",
            str(body.get("node_id", ""))[:64],
            _address(),
            after={"node_id": body.get("node_id"), "version": body.get("version")},
        )
    elif response.status_code != 429:
        store.record(
            "join token",
            "join refused",
            "",
            _address(),
            ok=False,
            result=str(body.get("error", response.status))[:500],
        )


def _outcome(response: Response) -> str:
    if getattr(g, "audit_result", ""):  # a view's own words for what it did or refused
        return str(g.audit_result)
    if response.is_json:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
        return "" if response.status_code < 400 else response.status
    flashes = [m for _, m in session.get("_flashes", [])[getattr(g, "audit_flashes", 0) :]]
    return " ".join(flashes) or ("" if response.status_code < 400 else response.status)


def _action(response: Response) -> None:
    actor = getattr(g, "audit_actor", None) or session.get("admin")
    if not actor:
        name = _basic_name()
        if response.status_code == 401:
            if name or request.authorization is not None:
                store.record(
                    name or "?",
                    "failed login",
                    address=_address(),
                    ok=False,
                    result=f"HTTP Basic refused on {request.path[:200]}",
                )
            return
        actor = name
    if not actor:
        return
    described = getattr(g, "audit_before", None)
    if described is None:  # refused before the view ran (CSRF, 404, 405)
        store.record(
            actor,
            request.endpoint or request.path[:64],
            request.path,
            address=_address(),
            ok=False,
            result=_outcome(response),
        )
        return
    action, target, before = described
    after: dict = {}
    try:
        after = _describe(request.endpoint or "")[2] if before else {}
    except Exception:
        log.exception("audit: cannot read the state after %s", request.endpoint)
    if "_ha1" in before or "_ha1" in after:
        changed = before.pop("_ha1", None) != after.pop("_ha1", None)
        if after.get("exists") and before.get("exists"):
            after["credentials changed"] = changed
    if action in DIFFED:
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        before = {k: v for k, v in before.items() if k in changed}
        after = {k: v for k, v in after.items() if k in changed}
        if not changed:
            before, after = {}, {}
    if action == "drain":
        body = request.get_json(silent=True) if request.is_json else None
        on = body.get("on") if isinstance(body, dict) else request.form.get("on") == "1"
        action = "drain" if on else "undrain"
    store.record(
        actor,
        action,
        target,
        _address(),
        before=before or None,
        after=after or None,
        result=_outcome(response),
        ok=response.status_code < 400,
    )


def filters(args, max_limit: int = MAX_PAGE) -> dict:
    """The :func:`store.audit.search` arguments of the query string ``args``."""
    out: dict[str, Any] = {}
    texts(args, ("actor", "action", "target"), out)
    out["failed"] = args.get("failed", "") in ("1", "true", "on")
    return range_and_page(args, out, max_limit)


def _csv(found: dict) -> Response:
    return Response(
        store.to_csv(found["entries"]),
        mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=audit.csv"},
    )


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


@bp.get("/audit")
@login_required
def page():
    """The audit log, newest first, with its filters and the retention setting."""
    try:
        args = filters(request.args)
    except FilterError as e:
        return render_template(
            "audit.html",
            error=str(e),
            found=None,
            args=request.args,
            actions=store.actions(),
            days=store.retention_days(),
            form=ActionForm(),
        ), 400
    return render_template(
        "audit.html",
        error="",
        found=store.search(**args),
        args=request.args,
        actions=store.actions(),
        days=store.retention_days(),
        when=_when,
        form=ActionForm(),
    )


@bp.get("/audit.csv")
@login_required
def export():
    """The filtered rows as CSV."""
    try:
        return _csv(store.search(**filters(request.args, MAX_CSV)))
    except FilterError as e:
        return {"error": str(e)}, 400


@bp.post("/audit/retention")
@login_required
def retention():
    """Change the retention (days) from the page."""
    if not ActionForm().validate_on_submit():
        return "CSRF token missing or wrong", 400
    raw = request.form.get("days", "")
    try:
        store.set_retention_days(int(raw) if raw.strip().isdigit() else -1)
    except StoreError as e:
        flash(f"Retention not changed: {e}")
    else:
        flash(f"Audit rows are kept {store.retention_days()} days.")
    return redirect(url_for("audit.page"))


@bp.get("/api/audit")
@basic_auth_required
def api_audit():
    """The audit log, filtered, newest first; ``format=csv`` for CSV."""
    as_csv = request.args.get("format") == "csv"
    try:
        args = filters(request.args, MAX_CSV if as_csv else MAX_PAGE)
    except FilterError as e:
        return {"error": str(e)}, 400
    found = store.search(**args)
    return _csv(found) if as_csv else {**found, "retention_days": store.retention_days()}


@bp.post("/api/audit/retention")
@basic_auth_required
def api_retention():
    """Set the retention: ``{"days": N}``."""
    body = request.get_json(silent=True)
    try:
        store.set_retention_days(body.get("days") if isinstance(body, dict) else None)
    except StoreError as e:
        return {"error": str(e)}, 400
    return {"retention_days": store.retention_days()}
