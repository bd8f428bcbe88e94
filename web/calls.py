"""Call detail records on the dashboard: the calls page, its CSV export and ``/api/cdrs``.

Both take the same filters from the query string: ``caller`` and ``callee``
(substrings of the addresses, up to 64 characters), ``outcome`` (one of
``store.cdrs.OUTCOMES``), ``since`` and ``until`` (start times, seconds
since the epoch), ``limit`` and ``offset``; ``format=csv`` (or the page's
``/calls.csv``) gives a CSV file. Bad filters get 400, never a silent
"everything".
"""

import datetime
import time

from flask import Blueprint, Response, render_template, request

from store import cdrs

from . import charts
from .auth import basic_auth_required, login_required

bp = Blueprint("calls", __name__)

MAX_PAGE = 1000
"""Records one JSON answer or one page holds at most."""
PER_NODE_WINDOW = 86400.0
"""Seconds of calls the page's per-node answer-seizure ratio and average length cover."""
MAX_CSV = 100_000
"""Records one CSV export holds at most."""
CHART_WINDOW = 86400.0
"""Seconds the calls chart covers when the filters give no time range."""


class FilterError(ValueError):
    """A filter of the query string that cannot be used (its message says why)."""


def filters(args, max_limit: int = MAX_PAGE) -> dict:
    """The ``store.cdrs.search`` arguments of the query string ``args``."""
    out: dict = {}
    for name in ("caller", "callee"):
        value = args.get(name, "")
        if len(value) > 64:
            raise FilterError(f"{name} is longer than 64 characters")
        out[name] = value
    outcome = args.get("outcome", "")
    if outcome and outcome not in cdrs.OUTCOMES:
        raise FilterError(f"outcome must be one of {', '.join(cdrs.OUTCOMES)}")
    out["outcome"] = outcome
    for name in ("since", "until"):
        raw = args.get(name, "")
        try:
            out[name] = float(raw) if raw else None
        except ValueError:
            raise FilterError(f"{name} must be seconds since the epoch, not {raw[:32]!r}") \
                from None
        if out[name] is not None and not 0 <= out[name] < 1e11:
            raise FilterError(f"{name} is out of range")
    for name, default, top in (("limit", 100, max_limit), ("offset", 0, 10**9)):
        raw = args.get(name, "")
        if raw and not raw.isdigit():
            raise FilterError(f"{name} must be a non-negative integer")
        out[name] = min(int(raw) if raw else default, top)
    return out


def csv_response(found: dict) -> Response:
    """The found records as a CSV download."""
    return Response(cdrs.to_csv(found["cdrs"]), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=cdrs.csv"})


@bp.get("/api/cdrs")
@basic_auth_required
def api_cdrs():
    """Call detail records, newest first, filtered; ``format=csv`` for CSV."""
    as_csv = request.args.get("format") == "csv"
    try:
        args = filters(request.args, MAX_CSV if as_csv else MAX_PAGE)
    except FilterError as e:
        return {"error": str(e)}, 400
    found = cdrs.search(**args)
    return csv_response(found) if as_csv else found


@bp.get("/api/cdrs/nodes")
@basic_auth_required
def api_per_node():
    """Per node, over the last day: calls, answered, answer-seizure ratio, average length."""
    return {"window": PER_NODE_WINDOW, "nodes": cdrs.per_node(time.time() - PER_NODE_WINDOW)}


@bp.get("/calls")
@login_required
def page():
    """The calls page: filters, totals per outcome, a chart of calls and failures over the
    filtered time range (the last day by default), the newest records and, per node over
    the last day, the answer-seizure ratio and the average call length."""
    try:
        args = filters(request.args)
    except FilterError as e:
        return render_template("calls.html", error=str(e), found=None, args=request.args), 400
    until = args["until"] if args["until"] is not None else time.time()
    since = args["since"] if args["since"] is not None else until - CHART_WINDOW
    chart = charts.calls_chart(cdrs.timeline(since, until)) if since < until else ""
    return render_template("calls.html", error="", found=cdrs.search(**args), args=request.args,
                           when=_when, per_node=cdrs.per_node(time.time() - PER_NODE_WINDOW),
                           chart=chart)


@bp.get("/calls.csv")
@login_required
def export():
    """The filtered records as CSV."""
    try:
        args = filters(request.args, MAX_CSV)
    except FilterError as e:
        return {"error": str(e)}, 400
    return csv_response(cdrs.search(**args))


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S")
