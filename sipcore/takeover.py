"""Which nodes' floating addresses this node holds (built-in address takeover).

Each node of a cluster with ``[cluster] takeover`` serves SIP on a floating
address of its own. When a node is declared dead by the cluster's liveness
(heartbeats, ``sipcore.replication``), the surviving node with the lowest id
among the live ones takes its address over, so that the dead node's phones
(their NAT pinholes, their TCP reconnections, their configured server)
reach a live node. A node takes over only with a quorum: more than half of
the configured nodes (itself included) alive to it, so two sides of a
partition never both take one address. Hence takeover needs three nodes or
more: of two, a survivor cannot tell its peer's death from a cut between
them, and never takes over. A suspected peer still counts as alive (no
takeover on a missed heartbeat or two), and an address goes back as soon
as its owner is alive again.
"""

from collections.abc import Collection, Iterable, Mapping

from .location import Binding
from .proxy import parse_received

ALIVE_STATES = ("alive", "suspected")
"""Liveness states (``sipcore.replication``) that count a peer as alive."""


def has_quorum(me: str, nodes: Collection[str], states: Mapping[str, str]) -> bool:
    """Whether more than half of ``nodes`` (``me`` among them) are alive to ``me``."""
    alive = 1 + sum(1 for n in nodes if n != me and states.get(n) in ALIVE_STATES)
    return 2 * alive > len(set(nodes) | {me})


def to_hold(me: str, nodes: Collection[str], states: Mapping[str, str]) -> set[str]:
    """The peers among ``nodes`` whose addresses ``me`` holds, given each peer's
    liveness state in ``states``: the ones not alive, when ``me`` has the quorum and
    the lowest id of the live nodes; else none."""
    if not has_quorum(me, nodes, states):
        return set()
    alive = {me} | {n for n in nodes if states.get(n) in ALIVE_STATES}
    if min(alive) != me:
        return set()
    return {n for n in nodes if n not in alive}


def udp_sources(
    bindings: Iterable[Binding], origin: str, now: float, limit: int = 100_000
) -> set[tuple[str, int]]:
    """Where the live UDP bindings that ``origin`` made came from (``(host, port)``,
    ``limit`` at most): the NAT mappings open to ``origin``'s address, from which a
    node that took it over must send to them."""
    out: set[tuple[str, int]] = set()
    for b in bindings:
        if b.origin != origin or b.deleted or b.expires_at <= now:
            continue
        dest = parse_received(b.received)
        if dest is not None and dest[0] == "udp":
            out.add((dest[1], dest[2]))
            if len(out) >= limit:
                break
    return out
