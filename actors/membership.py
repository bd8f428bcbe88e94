"""Cluster membership from the configuration master: the node's peers, changed at run time.

A configuration push may carry ``peers``: every node of the cluster (id,
bus and snapshot endpoints, public key, SIP address), from
``store.master.peers_push``. ``parse_peers`` checks the whole list before
anything changes (a bad list refuses the whole version); the node keeps it
in its state (``cluster_peers``), so after a restart it starts with the
peers of the last version it got rather than those of its file
(``use_stored_peers``), and hands it to the replicator
(``Replicator.set_peers``), which connects to a new peer's bus, drops a
removed one and changes the keys its bus accepts, without a restart; the
registrar and the proxy learn the cluster's SIP addresses anew
(``follow_peers``), so a Contact pointing at a new node is refused too, and a
flow a new node holds is relayed through it; the call outbox learns the new
node ids too, so a new peer, like the others, may read call events but never
acknowledge (delete) them.
A push without ``peers`` leaves the peers as they are.
"""

import dataclasses
import logging
import re

from store.models import get_state, set_state

from .bus import BusError, check_key
from .config import ConfigError, NodeConfig, Peer, _sip_address, cluster_addresses

log = logging.getLogger(__name__)

PEERS_KEY = "cluster_peers"
"""Node state key of the peer list of the last configuration applied."""
MAX_PEERS = 256
"""Peers a pushed list may name at most."""
MAX_ENDPOINT = 200
"""Longest endpoint or address text taken."""
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A node id as a pushed list may name it (the master gives new nodes DNS labels)."""
_ENDPOINT = re.compile(r"^tcp://[A-Za-z0-9.:\[\]-]+:\d{1,5}$")


class MembershipError(Exception):
    """A pushed peer list that cannot be applied, with the reason."""


def parse_peers(items: object, self_id: str) -> list[Peer]:
    """The peers a pushed list names, this node (``self_id``) left out; every entry
    is checked first (``MembershipError`` names the first bad one)."""
    if not isinstance(items, list) or len(items) > MAX_PEERS:
        raise MembershipError(f"peers must be a list of at most {MAX_PEERS} nodes")
    peers: dict[str, Peer] = {}
    for item in items:
        if not isinstance(item, dict) or set(item) - {"id", "bus", "snapshot", "public_key", "sip"}:
            raise MembershipError(
                f"a peer must be {{id, bus, snapshot, public_key, sip}}, not {str(item)[:100]}"
            )
        node_id = item.get("id")
        if not isinstance(node_id, str) or not NODE_ID.match(node_id):
            raise MembershipError(f"bad peer id {str(node_id)[:70]!r}")
        for name in ("bus", "snapshot"):
            value = item.get(name)
            if (
                not isinstance(value, str)
                or len(value) > MAX_ENDPOINT
                or not _ENDPOINT.match(value)
            ):
                raise MembershipError(f"peer {node_id}: {name} must be tcp://host:port")
        try:
            key = check_key(str(item.get("public_key", "")), f"public key of {node_id}").decode()
            if item.get("sip"):
                _sip_address(str(item["sip"])[:MAX_ENDPOINT], f"peer {node_id}")
        except (BusError, ConfigError) as e:
            raise MembershipError(str(e)) from None
        if node_id in peers:
            raise MembershipError(f"peer {node_id} named twice")
        if node_id != self_id:
            peers[node_id] = Peer(
                node_id, item["bus"], item["snapshot"], key, str(item.get("sip") or "")
            )
    return list(peers.values())


def store_peers(items: list) -> None:
    """Keep a pushed list (already checked) for the next start."""
    set_state(PEERS_KEY, items)


def use_stored_peers(cfg: NodeConfig) -> bool:
    """Replace ``cfg.peers`` with the list of the last configuration applied, if any
    and if the node still follows a master (``[cluster] master_key``): call after the
    store is open, before the replicator is built."""
    items = get_state(PEERS_KEY)
    if items is None or not cfg.master_key:
        return False
    try:
        cfg.peers = parse_peers(items, cfg.id)
    except MembershipError as e:
        log.warning("stored peer list ignored (%s): the file's peers are used", e)
        return False
    log.info(
        "peers from the master's last configuration: %s",
        ", ".join(p.id for p in cfg.peers) or "none",
    )
    return True


def follow_peers(node, peers: list[Peer]) -> None:
    """Apply a pushed peer list to a running node: the replicator's peers, the
    cluster addresses its registrar and proxy check Contacts and Froms against, the
    peers' SIP addresses the proxy relays other nodes' flows through, and the node ids
    the call outbox refuses ``events_ack`` from."""
    node.replicator.set_peers(peers)
    transport = node.transport
    addresses = cluster_addresses(
        dataclasses.replace(node.cfg, peers=list(peers)),
        transport.port if transport is not None else None,
    )
    if node.registrar is not None:
        node.registrar.path.rules.cluster = addresses
    if node.proxy is not None:
        node.proxy.core.settings.addresses = addresses
        node.proxy.core.settings.set_peer_hops((p.id, p.sip) for p in peers if p.sip)
        if node.proxy.outbox is not None:
            node.proxy.outbox.nodes = frozenset([node.cfg.id, *(p.id for p in peers)])
