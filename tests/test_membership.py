"""Membership from the master's push: the peer list checked, kept and applied.

The running part (a node connecting to a new peer and dropping a removed one
without a restart) is in ``tests/test_join.py`` with real processes.
"""

from types import SimpleNamespace

import pytest

from actors.bus import BusError, generate_keypair
from actors.call_outbox import CallOutbox
from actors.config import NodeConfig
from actors.config_sync import MASTER, ConfigSync
from actors.membership import MembershipError, follow_peers, parse_peers, use_stored_peers
from actors.proxy import ProxyActor
from actors.replicator import Replicator
from sipcore.call_events import CallEvent
from sipcore.digest import Authenticator
from sipcore.forking import ProxyCore
from sipcore.location import Binding, Location
from sipcore.proxy import ProxySettings
from sipcore.replication import RequestSnapshot
from store.models import close_store, get_state, init_store
from tests.test_flow_relay import CONTACT, DOMAIN, FLOW, NODE1, NODE2, WALL, lookup, relayed
from tests.test_replication import T0, core, hb, joined, kinds


def entry(k: int, **extra) -> dict:
    return {
        "id": f"node{k}",
        "bus": f"tcp://192.0.2.{k}:7001",
        "snapshot": f"tcp://192.0.2.{k}:7002",
        "public_key": generate_keypair()[0],
        "sip": f"192.0.2.{k}:5060",
        **extra,
    }


def test_a_good_list_gives_every_peer_but_the_node_itself():
    items = [entry(1), entry(2), entry(3)]
    peers = parse_peers(items, "node2")
    assert [p.id for p in peers] == ["node1", "node3"]
    assert (peers[0].bus, peers[0].snapshot, peers[0].public_key, peers[0].sip) == (
        items[0]["bus"],
        items[0]["snapshot"],
        items[0]["public_key"],
        items[0]["sip"],
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "bad id"},
        {"id": ""},
        {"id": 7},
        {"bus": "ipc:///tmp/bus"},
        {"snapshot": "tcp://192.0.2.1"},
        {"bus": 'tcp://x";rm:1'},
        {"public_key": "~" * 40},
        {"public_key": None},
        {"sip": "192.0.2.1"},
        {"extra": 1},
        {"bus": "tcp://h:1" + "1" * 300},
    ],
)
def test_a_bad_entry_refuses_the_whole_list(bad):
    with pytest.raises(MembershipError):
        parse_peers([entry(1), entry(2, **bad)], "node9")


def test_lists_that_are_not_lists_too_long_or_name_a_node_twice_are_refused():
    for items in (
        {"node1": entry(1)},
        "node1",
        [entry(1), entry(1)],
        [entry(k % 250 + 1, id=f"n{k}") for k in range(257)],
        ["node1"],
    ):
        with pytest.raises(MembershipError):
            parse_peers(items, "node9")


@pytest.fixture
def node_store(tmp_path):
    init_store(f"sqlite:///{tmp_path}/node.db")
    yield
    close_store()


def push(version: int, **extra) -> dict:
    return {
        "from": MASTER,
        "version": version,
        "domain": "example.test",
        "users": [
            {"username": "alice", "ha1_md5": "0" * 32, "ha1_sha256": "0" * 64, "enabled": True}
        ],
        **extra,
    }


def test_a_pushed_list_is_applied_kept_and_used_at_the_next_start(node_store):
    seen = []
    sync = ConfigSync("example.test", None, "node2", seen.append)
    items = [entry(1), entry(2), entry(3)]
    assert sync.apply(push(1, peers=items))["applied"]
    assert [[p.id for p in peers] for peers in seen] == [["node1", "node3"]]
    assert get_state("cluster_peers") == items
    cfg = NodeConfig(id="node2", domain="example.test", master_key=generate_keypair()[0])
    assert use_stored_peers(cfg) and [p.id for p in cfg.peers] == ["node1", "node3"]
    alone = NodeConfig(id="node2", domain="example.test")
    assert not use_stored_peers(alone) and alone.peers == [], (
        "a node taken off its master goes by its own file"
    )
    assert sync.apply(push(2))["applied"]
    assert len(seen) == 1, "a version without peers leaves them as they are"


def test_a_push_with_a_bad_list_changes_nothing(node_store):
    seen = []
    sync = ConfigSync("example.test", None, "node2", seen.append)
    assert sync.apply(push(1, peers=[entry(1)]))["applied"]
    with pytest.raises(BusError, match="refused"):
        sync.apply({**push(2, peers=[entry(1, public_key="forged")]), "users": []})
    assert sync.version()["version"] == 1 and len(seen) == 1
    assert [p["id"] for p in get_state("cluster_peers")] == ["node1"]
    with pytest.raises(BusError, match="master's key only"):
        sync.apply({**push(3, peers=[]), "from": "node1"})
    assert len(seen) == 1


def test_without_a_stored_list_the_files_peers_stay(node_store):
    cfg = NodeConfig(id="node2", domain="example.test")
    assert not use_stored_peers(cfg) and cfg.peers == []


def test_a_peer_added_at_run_time_is_synced_from_and_the_node_stays_synced():
    r = core(peers=("n2",))
    joined(r, "n2")
    assert r.synced
    r.add_peer("n3")
    assert r.synced and r.peers["n3"].liveness.state == "unknown"
    req = kinds(r.heartbeat_received("n3", hb("n3", 1, 4), 1.0, T0), RequestSnapshot)
    assert [a.reason for a in req] == ["join"]
    r.snapshot_completed("n3", req[0].request, 1, 4, 1.0)
    assert r.versions() == {"n2": (1, 0), "n3": (1, 4)}
    r.remove_peer("n3")
    assert "n3" not in r.peers and r.versions() == {"n2": (1, 0)}
    assert r.synced
    r.remove_peer("n3")


def test_a_peer_pushed_at_run_time_is_relayed_through():
    """node1 started alone: a flow node2 holds is not reachable through it; once the
    master's list names node2 (with its SIP address), node1 relays bob's request to
    node2, and no longer once a list leaves node2 out."""
    cfg = NodeConfig(id="node1", domain=DOMAIN, address=NODE1[0], port=NODE1[1])
    location = Location()
    binding = Binding(
        f"sip:bob@{DOMAIN}",
        "<urn:uuid:1>;reg-id=1",
        CONTACT,
        WALL + 600,
        "reg",
        1,
        received="tcp:127.0.0.1:44433",
        instance="<urn:uuid:1>",
        reg_id=1,
        origin="node2",
    )
    location.put(binding)
    auth = Authenticator(DOMAIN, b"k" * 32, lookup, algorithms=("MD5",))
    core1 = ProxyCore(
        ProxySettings(DOMAIN, *NODE1, secret=b"s" * 32, node_id="node1"),
        location,
        auth,
        trying_delay=0,
    )
    node = SimpleNamespace(
        cfg=cfg,
        replicator=Replicator(cfg, 1, location, lambda b: None),
        transport=None,
        registrar=None,
        proxy=ProxyActor(core1, None, None),
    )
    assert core1.settings.relay_route(binding, FLOW) is None
    node2 = {**entry(2), "sip": f"{NODE2[0]}:{NODE2[1]}"}
    follow_peers(node, parse_peers([entry(1), node2], "node1"))
    assert core1.settings.peer_hops == (("node2", f"{NODE2[0]}:{NODE2[1]}"),)
    relayed(core1)
    follow_peers(node, parse_peers([entry(3)], "node1"))
    assert core1.settings.relay_route(binding, FLOW) is None, "a removed peer is no hop"


def test_a_peer_pushed_at_run_time_may_read_but_never_acknowledge_call_events(store):
    """The call outbox learns the pushed peers: node3, added at run time, is refused
    ``events_ack`` as node2 is, while the master still acknowledges."""
    cfg = NodeConfig(id="node1", domain=DOMAIN, address=NODE1[0], port=NODE1[1])
    location = Location()
    auth = Authenticator(DOMAIN, b"k" * 32, lookup, algorithms=("MD5",))
    core1 = ProxyCore(
        ProxySettings(DOMAIN, *NODE1, secret=b"s" * 32, node_id="node1"),
        location,
        auth,
        trying_delay=0,
    )
    proxy = ProxyActor(core1, None, None)
    proxy.outbox = CallOutbox(10, frozenset({"node1", "node2"}))
    proxy.outbox.add([CallEvent("attempt", "c1", "sip:a@x.test", "sip:b@x.test", "udp:h:5")], 1.0)
    proxy.outbox.flush()
    node = SimpleNamespace(
        cfg=cfg,
        replicator=Replicator(cfg, 1, location, lambda b: None),
        transport=None,
        registrar=None,
        proxy=proxy,
    )
    follow_peers(node, parse_peers([entry(2), entry(3)], "node1"))
    for peer in ("node2", "node3"):
        with pytest.raises(BusError, match=f"not node {peer}'s"):
            proxy.outbox.ack({"from": peer, "upto": 1})
    assert proxy.outbox.events({"since": 0})["pending"] == 1
    assert proxy.outbox.ack({"from": MASTER, "upto": 1}) == 1
