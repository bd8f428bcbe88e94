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
from .filters import FilterError, range_and_page, texts

bp = Blueprint("calls", __name__)

MAX_PAGE = 1000
"""Records one JSON answer or one page holds at most."""
PER_NODE_WINDOW = 86400.0
"""Seconds of calls the page's per-node answer-seizure ratio and average length cover."""
MAX_CSV = 100_000
"""Records one CSV export holds at most."""
CHART_WINDOW = 86400.0
"""Seconds the calls chart covers when the filters give no time range."""


def filters(args, max_limit: int = MAX_PAGE) -> dict:
    """The ``store.cdrs.search`` arguments of the query string ``args``."""
    out: dict = {}
    texts(args, ("caller", "callee"), out)
    outcome = args.get("outcome", "")
    if outcome and outcome not in cdrs.OUTCOMES:
        raise FilterError(f"outcome must be one of {', '.join(cdrs.OUTCOMES)}")
    out["outcome"] = outcome
    return range_and_page(args, out, max_limit)


def csv_response(found: dict) -> Response:
    """The found records as a CSV download."""
    return Response(
        cdrs.to_csv(found["cdrs"]),
        mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=cdrs.csv"},
    )


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
    return render_template(
        "calls.html",
        error="",
        found=cdrs.search(**args),
        args=request.args,
        when=_when,
        per_node=cdrs.per_node(time.time() - PER_NODE_WINDOW),
        chart=chart,
    )


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
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
