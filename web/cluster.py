"""What the dashboard asks the nodes: state and registrations, over their control endpoints.

Every node is asked at once (one greenlet each) with a short bound, so a
dead node costs one timeout per page, not one per node; its answer is
shown as ``unreachable``. Registrations are merged by (address of record,
contact): each comes with its primary node and the nodes that hold it.
"""

import gevent

from actors.bus import BusError, request

from .filters import FilterError, texts

ASK_TIMEOUT = 1.0
"""Seconds a node may take to answer the dashboard."""


def ask(bus, node: dict, message: dict, timeout: float | None = None) -> dict:
    """``node``'s result for ``message`` within ``timeout`` s (``ASK_TIMEOUT``), or
    ``{"error": text}``."""
    try:
        return request(
            bus,
            node["control"],
            node["public_key"],
            message,
            ASK_TIMEOUT if timeout is None else timeout,
        )
    except BusError as e:
        return {"error": str(e)}


def ask_all(bus, nodes: list[dict], message: dict) -> dict:
    """``{node id: result or {"error": text}}`` for ``message`` sent to every node."""
    jobs = {n["node_id"]: gevent.spawn(ask, bus, n, message) for n in nodes}
    gevent.joinall(list(jobs.values()), timeout=ASK_TIMEOUT + 1)
    return {
        k: (j.value if j.successful() and j.value is not None else {"error": "no answer"})
        for k, j in jobs.items()
    }


def node_states(bus, nodes: list[dict]) -> dict:
    """Each node's replication state and binding count (``status``), or its error."""
    return ask_all(bus, nodes, {"cmd": "status"})


ALIVE, SUSPECTED, DEAD, SYNCING, DEGRADED = "alive", "suspected", "dead", "syncing", "degraded"


def health(states: dict) -> dict[str, str]:
    """Each node's word: ``dead`` when it does not answer, ``syncing`` until it holds
    every live peer's snapshot, ``degraded`` while a part of it fails (its database:
    ``actors.health``), ``suspected`` when a peer that answers suspects it (or
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
        elif status.get("state") == "degraded":
            out[node_id] = DEGRADED
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
    words = health({n["node_id"]: states.get(n["node_id"], {"error": "not asked"}) for n in nodes})
    rows = []
    for n in nodes:
        status = states.get(n["node_id"], {})
        up = "error" not in status and bool(status)
        rows.append(
            {
                "node_id": n["node_id"],
                "health": words[n["node_id"]],
                "uptime": status.get("uptime") if up else None,
                "config_version": n["acked_version"],
                "config_current": n["acked_version"] >= current_version,
                "bindings": status.get("bindings") if up else None,
                **rates.of(n["node_id"]),
                "replication_lag_ms": status.get("peer_lag_ms", {}) if up else {},
                "error": status.get("error"),
            }
        )
    return rows


def merge(answers: dict, limit: int) -> dict:
    """Merge the nodes' ``bindings`` answers (each asked for ``limit + 1`` rows after
    the same key) into one page: ``{"bindings", "more", "errors", "totals",
    "by_primary", "total", "balance_index"}``.

    Keyset paging makes the merge exact: the first ``limit`` bindings after the
    key among all nodes are among each node's first ``limit``, so each row's
    ``present_on`` names every node that holds it. A primary node's count of
    its own bindings is taken from itself (it is the authority on them), or,
    when it did not answer, from the peer that holds most of them.
    """
    merged: dict[tuple, dict] = {}
    errors: dict[str, str] = {}
    totals: dict[str, int] = {}
    seen: dict[str, dict[str, int]] = {}
    for node_id, answer in answers.items():
        if "error" in answer:
            errors[node_id] = answer["error"]
            continue
        totals[node_id] = answer["total"]
        seen[node_id] = answer.get("by_origin", {})
        for b in answer["bindings"]:
            entry = merged.setdefault((b["aor"], b["key"]), {**b, "present_on": []})
            entry["present_on"].append(node_id)
    rows = sorted(merged.values(), key=lambda b: (b["aor"], b["key"]))
    by_primary: dict[str, int] = {}
    for counts in seen.values():
        for origin, n in counts.items():
            by_primary[origin] = max(by_primary.get(origin, 0), n)
    for origin in by_primary:
        if origin in seen:
            by_primary[origin] = seen[origin].get(origin, 0)
    for row in rows:
        row["present_on"].sort()
    return {
        "bindings": rows[:limit],
        "more": len(rows) > limit,
        "errors": errors,
        "totals": totals,
        "by_primary": dict(sorted(by_primary.items())),
        "total": sum(by_primary.values()),
        "balance_index": balance_index(by_primary),
    }


def registrations(
    bus,
    nodes: list[dict],
    user: str = "",
    origin: str = "",
    after: tuple[str, str] | None = None,
    limit: int = 100,
) -> dict:
    """The registrations of every node merged (see :func:`merge`): those whose AOR holds
    ``user`` and whose primary is ``origin`` (when given), ``limit`` after ``after``."""
    message = {
        "cmd": "bindings",
        "user": user,
        "origin": origin,
        "limit": limit + 1,
        "after": list(after) if after else None,
    }
    return merge(ask_all(bus, nodes, message), limit)


def balance_index(by_primary: dict[str, int]) -> float:
    """1/Σ(nᵢ/N)² over the primary nodes' binding counts: 1 when one node holds all,
    k when k share evenly (0 when there is none)."""
    total = sum(by_primary.values())
    return 1 / sum((n / total) ** 2 for n in by_primary.values()) if total else 0.0


MAX_LIMIT = 500
"""Most registrations one page or one JSON answer holds."""
MAX_CURSOR = 4096
"""Longest ``after`` cursor (a node takes an AOR and a key of 2048 characters each)."""


def registration_filters(args, node_ids: list[str]) -> dict:
    """``user``, ``node`` (a primary node's id), ``after`` (the cursor: the last row's
    AOR and key, space-separated) and ``limit`` of a query string, checked."""
    out: dict = {}
    texts(args, ("user", "node"), out)
    if out["node"] and out["node"] not in node_ids:
        raise FilterError(f"no node {out['node']!r}")
    raw = args.get("after", "")
    if len(raw) > MAX_CURSOR or (raw and " " not in raw):
        raise FilterError("after must be the AOR and key of a listed binding")
    aor, _, key = raw.partition(" ")
    out["after"] = (aor, key) if raw else None
    limit = args.get("limit", "")
    if limit and (not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT):
        raise FilterError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    out["limit"] = int(limit) if limit else 100
    return out
