"""What the dashboard asks the nodes: state and registrations, over their control endpoints.

Every node is asked at once (one greenlet each) with a short bound, so a
dead node costs one timeout per page, not one per node; its answer is
shown as ``unreachable``. Registrations are merged by (address of record,
contact): each comes with its primary node and the nodes that hold it.
"""

import gevent

from actors.bus import BusError, request

ASK_TIMEOUT = 1.0
"""Seconds a node may take to answer the dashboard."""


def ask(bus, node: dict, message: dict, timeout: float = ASK_TIMEOUT) -> dict:
    """``node``'s result for ``message``, or ``{"error": text}``."""
    try:
        return request(bus, node["control"], node["public_key"], message, timeout)
    except BusError as e:
        return {"error": str(e)}


def ask_all(bus, nodes: list[dict], message: dict) -> dict:
    """``{node id: result or {"error": text}}`` for ``message`` sent to every node."""
    jobs = {n["node_id"]: gevent.spawn(ask, bus, n, message) for n in nodes}
    gevent.joinall(list(jobs.values()), timeout=ASK_TIMEOUT + 1)
    return {k: (j.value if j.successful() and j.value is not None else {"error": "no answer"})
            for k, j in jobs.items()}


def node_states(bus, nodes: list[dict]) -> dict:
    """Each node's replication state and binding count (``status``), or its error."""
    return ask_all(bus, nodes, {"cmd": "status"})


ALIVE, SUSPECTED, DEAD, SYNCING = "alive", "suspected", "dead", "syncing"


def health(states: dict) -> dict[str, str]:
    """Each node's word: ``dead`` when it does not answer, ``syncing`` until it holds
    every live peer's snapshot, ``suspected`` when a peer that answers suspects it (or
    holds it dead: the master hears it, its peers do not), else ``alive``."""
    seen: dict[str, set[str]] = {}
    for status in states.values():
        for peer, view in (status.get("peers") or {}).items():
            seen.setdefault(peer, set()).add(view.get("liveness"))
    out = {}
    for node_id, status in states.items():
        if "error" in status:
            out[node_id] = DEAD
        elif status.get("state") == "syncing":
            out[node_id] = SYNCING
        elif seen.get(node_id, set()) & {SUSPECTED, DEAD}:
            out[node_id] = SUSPECTED
        else:
            out[node_id] = ALIVE
    return out


def overview(nodes: list[dict], states: dict, rates, current_version: int) -> list[dict]:
    """One row per node for the Nodes page and ``/api/nodes``: health, uptime,
    configuration version (current or behind), bindings, REGISTER and call rates
    over the last minute (``rates``: a ``web.rates.Rates``) and the replication lag
    (ms, median of recent updates) from each peer."""
    words = health({n["node_id"]: states.get(n["node_id"], {"error": "not asked"})
                    for n in nodes})
    rows = []
    for n in nodes:
        status = states.get(n["node_id"], {})
        up = "error" not in status and bool(status)
        rows.append({"node_id": n["node_id"], "health": words[n["node_id"]],
                     "uptime": status.get("uptime") if up else None,
                     "config_version": n["acked_version"],
                     "config_current": n["acked_version"] >= current_version,
                     "bindings": status.get("bindings") if up else None,
                     **rates.of(n["node_id"]),
                     "replication_lag_ms": status.get("peer_lag_ms", {}) if up else {},
                     "error": status.get("error")})
    return rows


def registrations(bus, nodes: list[dict], user: str = "", limit: int = 100) -> dict:
    """The registrations of every node merged: ``{"bindings", "errors", "totals"}``."""
    answers = ask_all(bus, nodes, {"cmd": "bindings", "user": user, "limit": limit})
    merged: dict[tuple, dict] = {}
    errors, totals = {}, {}
    for node_id, answer in answers.items():
        if "error" in answer:
            errors[node_id] = answer["error"]
            continue
        totals[node_id] = answer["total"]
        for b in answer["bindings"]:
            entry = merged.setdefault((b["aor"], b["contact"]), {**b, "present_on": []})
            entry["present_on"].append(node_id)
    rows = sorted(merged.values(), key=lambda b: (b["aor"], b["contact"]))[:limit]
    return {"bindings": rows, "errors": errors, "totals": totals}


def balance_index(bindings: list[dict]) -> float:
    """1/Σ(nᵢ/N)² over the primary nodes: 1 when one node holds all, k when k share evenly."""
    counts: dict[str, int] = {}
    for b in bindings:
        counts[b["origin"]] = counts.get(b["origin"], 0) + 1
    total = sum(counts.values())
    return 1 / sum((n / total) ** 2 for n in counts.values()) if total else 0.0
