"""The DNS page: the cluster's NAPTR, SRV and A records, SRV weights, a BIND export.

The zone is made by ``sipcore.zone.cluster_zone`` from the nodes' SIP
addresses, weights (50:50 by default) and the TLS ports they report
(``web.push``: ``_sips._tcp`` for each node with one). A lab's built-in DNS
reads the weights from the master's database and serves the changed zone at once.
"""

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for

from sipcore.zone import cluster_zone
from store import master as ms
from store.db import StoreError

from .auth import basic_auth_required, login_required
from .pages import ActionForm

bp = Blueprint("dns", __name__)


def zone_text() -> str:
    """The cluster's zone in BIND's master-file format."""
    return cluster_zone(ms.domain(), ms.zone_nodes(), serial=max(1, ms.current_version()))


def _set_weights(weights: dict) -> None:
    """Set every given weight, or none (each is checked first)."""
    known = {n[0] for n in ms.zone_nodes()}
    for node_id, weight in weights.items():
        if node_id not in known:
            raise StoreError(f"no node {node_id!r} with a SIP address")
        if (
            not isinstance(weight, int)
            or isinstance(weight, bool)
            or not 0 <= weight <= ms.MAX_WEIGHT
        ):
            raise StoreError(f"weight of {node_id} must be an integer from 0 to {ms.MAX_WEIGHT}")
    for node_id, weight in weights.items():
        ms.set_weight(node_id, weight)


@bp.route("/dns", methods=["GET", "POST"])
@login_required
def page():
    """Weights per node (editable) and the zone as it is served."""
    form = ActionForm()
    if request.method == "POST":
        if not form.validate_on_submit():
            return "CSRF token missing or wrong", 400
        try:
            _set_weights(
                {
                    k[len("weight-") :]: int(v) if v.strip().isdigit() else v
                    for k, v in request.form.items()
                    if k.startswith("weight-")
                }
            )
        except StoreError as e:
            flash(f"Weights not changed: {e}")
        else:
            flash("Weights saved; a lab's DNS serves them within a second.")
        return redirect(url_for("dns.page"))
    return render_template("dns.html", nodes=ms.zone_nodes(), zone=zone_text(), form=form)


@bp.get("/dns/zone")
@login_required
def export():
    """The zone as a BIND master file."""
    return Response(
        zone_text(),
        mimetype="text/plain",
        headers={"Content-Disposition": f"attachment; filename={ms.domain()}.zone"},
    )


@bp.get("/api/dns")
@basic_auth_required
def api_get():
    """Weights and TLS ports (0: none) per node, and the zone text."""
    nodes = ms.zone_nodes()
    return {
        "weights": {n[0]: n[3] for n in nodes},
        "tls_ports": {n[0]: n[4] for n in nodes},
        "zone": zone_text(),
    }


@bp.post("/api/dns")
@basic_auth_required
def api_set():
    """Set SRV weights: ``{"weights": {"node1": 70, "node2": 30}}``."""
    body = request.get_json(silent=True)
    weights = body.get("weights") if isinstance(body, dict) else None
    if not isinstance(weights, dict):
        return {"error": 'expected {"weights": {node id: weight}}'}, 400
    try:
        _set_weights(weights)
    except StoreError as e:
        return {"error": str(e)}, 400
    return api_get()
