"""``/metrics``: the cluster in Prometheus's text format, per node labels.

Asked of every node at scrape time (``status``, bounded as the pages are);
an unreachable node reports ``tandem_node_up 0`` and nothing else.
HTTP Basic as an admin, like the API (Prometheus's ``basic_auth``).
"""

from flask import Blueprint, Response, current_app

from store import master as ms

from . import cluster
from .auth import basic_auth_required

bp = Blueprint("metrics", __name__)

HELP = {
    "tandem_config_version_current": ("gauge", "newest configuration version of the master"),
    "tandem_users": ("gauge", "SIP users the master holds"),
    "tandem_node_up": ("gauge", "1 when the node answers its control endpoint"),
    "tandem_node_synced": ("gauge", "1 when the node holds a snapshot from every live peer"),
    "tandem_node_config_version": ("gauge", "configuration version the node acknowledged"),
    "tandem_node_bindings": ("gauge", "live bindings in the node's location table"),
    "tandem_node_replication_lag_p99_ms": ("gauge", "p99 replication lag of recent updates"),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@bp.get("/metrics")
@basic_auth_required
def metrics():
    """The exposition text."""
    nodes = ms.list_nodes()
    pusher = current_app.extensions.get("pusher")
    states = cluster.node_states(pusher.bus, nodes) if getattr(pusher, "bus", None) else {}
    samples: dict[str, list[str]] = {name: [] for name in HELP}
    samples["tandem_config_version_current"].append(f"tandem_config_version_current "
                                                    f"{ms.current_version()}")
    samples["tandem_users"].append(f"tandem_users {ms.count_users()}")
    for n in nodes:
        label = f'{{node="{_label(n["node_id"])}"}}'
        status = states.get(n["node_id"], {"error": "not asked"})
        up = "error" not in status
        samples["tandem_node_up"].append(f"tandem_node_up{label} {int(up)}")
        samples["tandem_node_config_version"].append(
            f"tandem_node_config_version{label} {n['acked_version']}")
        if not up:
            continue
        samples["tandem_node_synced"].append(
            f"tandem_node_synced{label} {int(status.get('state') == 'synced')}")
        samples["tandem_node_bindings"].append(
            f"tandem_node_bindings{label} {int(status.get('bindings', 0))}")
        p99 = (status.get("lag_ms") or {}).get("p99")
        if p99 is not None:
            samples["tandem_node_replication_lag_p99_ms"].append(
                f"tandem_node_replication_lag_p99_ms{label} {p99}")
    lines = []
    for name, (kind, text) in HELP.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples[name]]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
