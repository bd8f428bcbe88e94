"""``/metrics``: the cluster in Prometheus's text format, per node labels.

Asked of every node at scrape time (``status``, bounded as the pages are);
an unreachable node reports ``tandem_node_up 0``, its health and nothing
else. Per node: health (alive, suspected, dead, syncing, degraded), sync state,
configuration version, uptime, bindings, requests by method, responses by
code and calls (counters of the node's process, ``actors.traffic``), and the
replication lag from each peer.
HTTP Basic as an admin, like the API (Prometheus's ``basic_auth``).
"""

from flask import Blueprint, Response, current_app

from store import master as ms

from . import cluster
from .auth import basic_auth_required
from .rates import states_and_rates

bp = Blueprint("metrics", __name__)

HELP = {
    "tandem_config_version_current": ("gauge", "newest configuration version of the master"),
    "tandem_users": ("gauge", "SIP users the master holds"),
    "tandem_node_up": ("gauge", "1 when the node answers its control endpoint"),
    "tandem_node_synced": ("gauge", "1 when the node holds a snapshot from every live peer"),
    "tandem_node_config_version": ("gauge", "configuration version the node acknowledged"),
    "tandem_node_bindings": ("gauge", "live bindings in the node's location table"),
    "tandem_node_replication_lag_p99_ms": ("gauge", "p99 replication lag of recent updates"),
    "tandem_node_replication_lag_ms": ("gauge", "median lag of recent updates from each peer"),
    "tandem_node_health": (
        "gauge",
        "1 for the node's health: alive, suspected, dead, syncing, degraded",
    ),
    "tandem_node_uptime_seconds": ("gauge", "seconds since the node's process started"),
    "tandem_node_requests_total": ("counter", "SIP requests the node took, by method"),
    "tandem_node_responses_total": ("counter", "SIP responses the node sent, by status code"),
    "tandem_node_calls_total": ("counter", "call attempts the node's proxy handled"),
    "tandem_node_calls_in_progress": ("gauge", "answered calls the node carries now"),
    "tandem_node_shed_total": ("counter", "new requests the node shed under overload, by method"),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value) -> float | int:
    """A sample value from a node's answer: a number, anything else 0."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _counters(samples: dict[str, list[str]], node: str, status: dict) -> None:
    """The traffic counters, uptime and per-peer lags of one node's ``status`` answer."""
    if "uptime" in status:
        samples["tandem_node_uptime_seconds"].append(
            f'tandem_node_uptime_seconds{{node="{node}"}} {_number(status["uptime"])}'
        )
    for key, name, label in (
        ("requests", "tandem_node_requests_total", "method"),
        ("responses", "tandem_node_responses_total", "code"),
    ):
        found = status.get(key)
        for value, count in sorted(found.items() if isinstance(found, dict) else ()):
            samples[name].append(
                f'{name}{{node="{node}",{label}="{_label(str(value))}"}} {_number(count)}'
            )
    overload = status.get("overload")
    shed = overload.get("shed_by_method") if isinstance(overload, dict) else None
    for method, count in sorted(shed.items() if isinstance(shed, dict) else ()):
        samples["tandem_node_shed_total"].append(
            f'tandem_node_shed_total{{node="{node}",method="{_label(str(method))}"}} '
            f"{_number(count)}"
        )
    if "call_attempts" in status:
        samples["tandem_node_calls_total"].append(
            f'tandem_node_calls_total{{node="{node}"}} {_number(status["call_attempts"])}'
        )
    if "calls" in status:
        samples["tandem_node_calls_in_progress"].append(
            f'tandem_node_calls_in_progress{{node="{node}"}} {_number(status["calls"])}'
        )
    lags = status.get("peer_lag_ms")
    for peer, lag in sorted(lags.items() if isinstance(lags, dict) else ()):
        samples["tandem_node_replication_lag_ms"].append(
            f'tandem_node_replication_lag_ms{{node="{node}",peer="{_label(str(peer))}"}} '
            f"{_number(lag)}"
        )


@bp.get("/metrics")
@basic_auth_required
def metrics():
    """The exposition text."""
    nodes = ms.list_nodes()
    pusher = current_app.extensions.get("pusher")
    states, _rates = states_and_rates(getattr(pusher, "bus", None), nodes)
    health = cluster.health(
        {n["node_id"]: states.get(n["node_id"], {"error": "not asked"}) for n in nodes}
    )
    samples: dict[str, list[str]] = {name: [] for name in HELP}
    samples["tandem_config_version_current"].append(
        f"tandem_config_version_current {ms.current_version()}"
    )
    samples["tandem_users"].append(f"tandem_users {ms.count_users()}")
    for n in nodes:
        node = _label(n["node_id"])
        label = f'{{node="{node}"}}'
        status = states.get(n["node_id"], {"error": "not asked"})
        up = "error" not in status
        samples["tandem_node_up"].append(f"tandem_node_up{label} {int(up)}")
        samples["tandem_node_config_version"].append(
            f"tandem_node_config_version{label} {n['acked_version']}"
        )
        for word in (
            cluster.ALIVE,
            cluster.SUSPECTED,
            cluster.DEAD,
            cluster.SYNCING,
            cluster.DEGRADED,
        ):
            samples["tandem_node_health"].append(
                f'tandem_node_health{{node="{node}",state="{word}"}} '
                f"{int(health[n['node_id']] == word)}"
            )
        if not up:
            continue
        _counters(samples, node, status)
        samples["tandem_node_synced"].append(
            f"tandem_node_synced{label} {int(status.get('state') == 'synced')}"
        )
        samples["tandem_node_bindings"].append(
            f"tandem_node_bindings{label} {int(status.get('bindings', 0))}"
        )
        p99 = (status.get("lag_ms") or {}).get("p99")
        if p99 is not None:
            samples["tandem_node_replication_lag_p99_ms"].append(
                f"tandem_node_replication_lag_p99_ms{label} {p99}"
            )
    lines = []
    for name, (kind, text) in HELP.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples[name]]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
