"""The bus, the control endpoint, keys and the replicator over real ZeroMQ sockets on loopback."""

import json
import os
import shutil
import stat
import tempfile
import time
import tomllib
from argparse import Namespace
from types import SimpleNamespace

import gevent
import pytest
import zmq.green as zmq
from gevent.queue import Queue

from actors.bus import (
    BUS_DOMAIN,
    CONTROL_DOMAIN,
    HEARTBEAT,
    SNAPSHOT_END,
    SNAPSHOT_REQUEST,
    UPDATE,
    Bus,
    BusError,
    check_key,
    generate_keypair,
    recv,
    recv_from,
    request,
    send,
    unpack,
)
from actors.config import NodeConfig, Peer, parse_config
from actors.control import ControlServer
from actors.keys import Member, cluster_toml, cmd_keys, load_or_create_keypair, read_keypair
from actors.replicator import Replicator, attach_replicator
from sipcore.location import Binding, Location, Sequencer
from sipcore.protocol import PROTOCOL_VERSION
from sipcore.replication import (
    SnapshotAssembler,
    encode_heartbeat,
    encode_snapshot_request,
    encode_update,
)


def wait_for(cond, timeout=5.0, step=0.01):
    """Poll ``cond`` (yielding to gevent) until true or ``timeout``; return its last value."""
    deadline = gevent.get_hub().loop.now() + timeout
    while True:
        value = cond()
        if value or gevent.get_hub().loop.now() > deadline:
            return value
        gevent.sleep(step)


@pytest.fixture
def buses():
    made = []

    def make(keys=None, name="n"):
        pub, sec = keys or generate_keypair()
        bus = Bus(pub, sec, name)
        made.append(bus)
        return bus, pub

    yield make
    for bus in made:
        bus.close()


def tcp_server(bus, kind, domain=BUS_DOMAIN, hwm=1000):
    sock = bus.server(kind, "tcp://127.0.0.1:*", domain, hwm)
    return sock, sock.last_endpoint.decode()


# -- keys and framing -----------------------------------------------------------------------


def test_check_key_never_echoes_the_key():
    pub, sec = generate_keypair()
    assert check_key(pub, "public_key") == pub.encode()
    for bad in ("short", sec[:-1] + '"', 42, ""):
        with pytest.raises(BusError) as e:
            check_key(bad, "secret_key")
        assert "secret_key" in str(e.value)
        assert not isinstance(bad, str) or not bad or bad not in str(e.value)


def test_bus_refuses_a_secret_key_of_another_pair():
    pub, _ = generate_keypair()
    _, sec = generate_keypair()
    with pytest.raises(BusError, match="does not belong") as e:
        Bus(pub, sec)
    assert sec not in str(e.value)


def test_unpack_turns_garbage_into_bus_error():
    for bad in (b"\x00\xff", b"[1]", b"{"):
        with pytest.raises(BusError):
            unpack(bad)


def test_binding_before_start_is_an_error(buses):
    bus, _ = buses()
    with pytest.raises(BusError, match="start"):
        bus.server(zmq.PUB, "tcp://127.0.0.1:*", BUS_DOMAIN)


def test_bad_endpoint_is_a_bus_error(buses):
    bus, _ = buses()
    bus.start()
    with pytest.raises(BusError, match="cannot bind"):
        bus.server(zmq.PUB, "nonsense://x", BUS_DOMAIN)


def test_send_that_cannot_complete_times_out(buses):
    bus, _ = buses()
    peer_pub, _ = generate_keypair()
    sock = bus.client(zmq.DEALER, "tcp://127.0.0.1:9", peer_pub)
    with pytest.raises(BusError, match="blocked"):
        send(sock, [b"x"], timeout=0.2)


def test_keys_files_and_cluster_toml(tmp_path, capsys):
    prefix = str(tmp_path / "keys" / "node1")
    pub, sec = load_or_create_keypair(prefix)
    assert load_or_create_keypair(prefix) == (pub, sec) == read_keypair(prefix)
    assert stat.S_IMODE(os.stat(prefix + ".secret").st_mode) == 0o600
    assert cmd_keys(Namespace(out=None)) == 0
    printed = tomllib.loads(capsys.readouterr().out)["cluster"]
    Bus(printed["public_key"], printed["secret_key"]).close()
    assert cmd_keys(Namespace(out=prefix, force=False)) == 1
    assert cmd_keys(Namespace(out=prefix, force=True)) == 0
    assert sec not in capsys.readouterr().out
    members = [
        Member(
            f"n{i}",
            f"tcp://127.0.0.1:{7000 + i}",
            f"tcp://127.0.0.1:{7100 + i}",
            f"tcp://127.0.0.1:{7200 + i}",
            *generate_keypair(),
        )
        for i in (1, 2, 3)
    ]
    text = '[node]\nid = "n1"\n[sip]\ndomain = "example.test"\n' + cluster_toml(
        members[0], members, heartbeat=0.2, control_keys=[pub]
    )
    cfg = parse_config(tomllib.loads(text))
    assert cfg.bus_pub == members[0].pub and cfg.secret_key == members[0].secret_key
    assert cfg.heartbeat == 0.2 and cfg.control_keys == [pub]
    assert [(p.id, p.bus, p.public_key) for p in cfg.peers] == [
        (m.id, m.pub, m.public_key) for m in members[1:]
    ]


# -- CurveZMQ access control ----------------------------------------------------------------


def test_subscriber_with_unknown_key_receives_nothing(buses):
    server, server_pub = buses(name="server")
    friend, friend_pub = buses(name="friend")
    stranger, _ = buses(name="stranger")
    server.allow(BUS_DOMAIN, {friend_pub: "friend"})
    server.start()
    pub, endpoint = tcp_server(server, zmq.PUB)
    good = friend.client(zmq.SUB, endpoint, server_pub)
    bad = stranger.client(zmq.SUB, endpoint, server_pub)
    got, leaked = [], []

    def drain(sock, into):
        while True:
            into.append(recv(sock))

    readers = [gevent.spawn(drain, good, got), gevent.spawn(drain, bad, leaked)]
    try:

        def publish_until_received():
            send(pub, [HEARTBEAT, b"{}"])
            return len(got) >= 20

        assert wait_for(publish_until_received, 5.0)
        for _ in range(20):
            send(pub, [HEARTBEAT, b"{}"])
            gevent.sleep(0.01)
        assert leaked == []
        assert server.stats["refused"] >= 1
    finally:
        gevent.killall(readers)


def test_server_impersonator_is_not_trusted(buses):
    _real, real_pub = buses(name="real")
    fake, _ = buses(name="fake")
    client, client_pub = buses(name="client")
    fake.allow(BUS_DOMAIN, {client_pub: "client"})
    fake.start()
    pub, endpoint = tcp_server(fake, zmq.PUB)
    sub = client.client(zmq.SUB, endpoint, real_pub)
    for _ in range(20):
        send(pub, [HEARTBEAT, b"{}"])
        gevent.sleep(0.01)
    assert recv(sub, 0.3) is None


def test_router_sees_only_known_dealers_and_their_names(buses):
    server, server_pub = buses(name="server")
    friend, friend_pub = buses(name="friend")
    stranger, _ = buses(name="stranger")
    server.allow(BUS_DOMAIN, {friend_pub: "friend"})
    server.start()
    router, endpoint = tcp_server(server, zmq.ROUTER)
    intruder = stranger.client(zmq.DEALER, endpoint, server_pub)
    with pytest.raises(BusError):
        send(intruder, [b"S", b"{}"], timeout=0.5)
    assert recv_from(router, 0.3) is None
    dealer = friend.client(zmq.DEALER, endpoint, server_pub)
    send(dealer, [b"S", b"hello"], timeout=2.0)
    frames, user = recv_from(router, 2.0)
    assert frames[1:] == [b"S", b"hello"] and user == "friend"


def test_control_endpoint_answers_allowed_keys_only(buses):
    server, server_pub = buses(name="node")
    admin, admin_pub = buses(name="admin")
    stranger, _ = buses(name="stranger")
    server.allow(CONTROL_DOMAIN, {admin_pub: "dashboard"})
    server.start()
    endpoint = "tcp://127.0.0.1:*"
    control = ControlServer(server, endpoint, {"status": lambda msg: {"state": "synced"}})
    control.handle("boom", lambda msg: 1 / 0)
    control.start()
    try:
        endpoint = control.sock.last_endpoint.decode()
        assert request(admin, endpoint, server_pub, {"cmd": "status"}) == {"state": "synced"}
        with pytest.raises(BusError, match="unknown command 'nope'"):
            request(admin, endpoint, server_pub, {"cmd": "nope"})
        with pytest.raises(BusError, match="internal error"):
            request(admin, endpoint, server_pub, {"cmd": "boom"})
        with pytest.raises(BusError, match="no reply"):
            request(stranger, endpoint, server_pub, {"cmd": "status"}, timeout=0.5)
        assert control.answer(b"not json")["ok"] is False
        commands = request(admin, endpoint, server_pub, {"cmd": "help"})
        assert set(commands) == {"boom", "help", "ping", "status"}
        assert request(admin, endpoint, server_pub, {"cmd": "ping"})["name"] == "node"
    finally:
        control.stop()


# -- the replicator over real sockets -------------------------------------------------------


class InProcessNode:
    """One in-process replicator with its own location table and store stand-in."""

    def __init__(self, node_id, cfg):
        self.location = Location()
        self.sequencer = Sequencer(epoch=1)
        self.applied = 0
        self.rep = Replicator(cfg, 1, self.location, self.apply)

    def apply(self, bindings):
        for b in bindings:
            self.applied += self.location.merge(b)

    def register(self, n, start=0, publish=True):
        """Make ``n`` bindings as this node's registrar would; publish them as one commit."""
        made = []
        for i in range(start, start + n):
            epoch, seq = self.sequencer.next()
            contact = f"sip:u{i}@10.0.0.1:5060"
            b = Binding(
                f"sip:u{i}@example.test",
                contact,
                contact,
                time.time() + 7200,
                f"c{i}",
                1,
                origin=self.rep.id,
                epoch=epoch,
                seq=seq,
                updated_at=time.time(),
            )
            self.location.put(b)
            made.append(b)
        if publish:
            self.rep.publish(made)
        return made


@pytest.fixture
def pair():
    """A factory of in-process replicators n1 and n2, peered over ipc:// with fast heartbeats.

    ``pair.keys``, ``pair.ends`` and ``pair.cfg`` give their keys, endpoints and configs.
    """
    d = tempfile.mkdtemp(prefix="tz", dir="/tmp")
    keys = {n: generate_keypair() for n in ("n1", "n2")}
    ends = {n: (f"ipc://{d}/{n}.pub", f"ipc://{d}/{n}.snap") for n in keys}

    def cfg(n, **kw):
        peers = [Peer(p, ends[p][0], ends[p][1], keys[p][0]) for p in keys if p != n]
        return NodeConfig(
            id=n,
            domain="example.test",
            bus_pub=ends[n][0],
            bus_snapshot=ends[n][1],
            public_key=keys[n][0],
            secret_key=keys[n][1],
            peers=peers,
            heartbeat=0.05,
            suspect_after=0.5,
            dead_after=1.0,
            alone_wait=0.5,
            snapshot_batch=1000,
            sync_timeout=1.0,
            **kw,
        )

    made = {}

    def make(n, **kw):
        made[n] = InProcessNode(n, cfg(n, **kw))
        return made[n]

    make.keys, make.ends, make.cfg, make.dir = keys, ends, cfg, d
    yield make
    for m in made.values():
        m.rep.stop()
    shutil.rmtree(d, ignore_errors=True)


def digests_equal(a, b):
    return a.rep.digest()["digest"] == b.rep.digest()["digest"]


def test_replicators_converge_by_snapshot_then_live_updates(pair):
    a = pair("n1")
    a.register(2500, publish=False)
    a.rep.published_seq = a.sequencer.peek()
    a.rep.start()
    assert wait_for(lambda: a.rep.synced, 3.0)
    b = pair("n2")
    b.rep.start()
    assert wait_for(lambda: b.rep.synced and a.rep.core.peers["n2"].has_snapshot, 5.0)
    assert wait_for(lambda: digests_equal(a, b), 3.0)
    assert b.rep.digest()["live"] == 2500
    a.register(3, start=5000)
    assert wait_for(lambda: digests_equal(a, b), 2.0)
    status = b.rep.status()
    assert status["peers"]["n1"]["liveness"] == "alive" and status["lag_ms"]["samples"] >= 1
    assert status["peers"]["n1"]["sync_reasons"] == {"join": 1}


def test_lost_update_is_recovered_through_the_gap_rule(pair):
    a, b = pair("n1"), pair("n2")
    a.rep.start()
    b.rep.start()
    assert wait_for(lambda: a.rep.synced and b.rep.synced, 5.0)
    a.register(3)
    assert wait_for(lambda: b.rep.core.peers["n1"].seq == 3, 2.0)
    a.register(1, start=10, publish=False)
    a.register(1, start=20)
    assert wait_for(lambda: digests_equal(a, b), 3.0)
    peer = b.rep.core.peers["n1"]
    assert peer.counts["gaps"] >= 1 and peer.reasons.get("gap", 0) >= 1


def test_lost_last_update_is_found_by_the_heartbeat(pair):
    a, b = pair("n1"), pair("n2")
    a.rep.start()
    b.rep.start()
    assert wait_for(lambda: a.rep.synced and b.rep.synced, 5.0)
    a.register(1, publish=False)
    a.rep.published_seq = a.sequencer.peek()
    assert wait_for(lambda: digests_equal(a, b), 3.0)
    assert b.rep.core.peers["n1"].reasons.get("gap", 0) >= 1


def test_restarted_peer_gets_back_its_own_bindings(pair):
    a, b = pair("n1"), pair("n2")
    a.rep.start()
    b.rep.start()
    assert wait_for(lambda: a.rep.synced and b.rep.synced, 5.0)
    a.register(50)
    assert wait_for(lambda: digests_equal(a, b), 2.0)
    a.rep.stop()
    assert wait_for(lambda: b.rep.core.peers["n1"].liveness.state == "dead", 3.0)
    again = pair("n1")
    again.sequencer = Sequencer(epoch=2)
    again.rep.epoch = 2
    again.rep.start()
    assert wait_for(lambda: again.rep.synced, 5.0)
    assert wait_for(lambda: digests_equal(again, b), 3.0)
    assert again.rep.digest()["live"] == 50
    assert wait_for(lambda: b.rep.core.peers["n1"].reasons.get("reconnect", 0) >= 1, 2.0)


def test_bad_messages_from_a_peer_are_dropped_and_counted(pair):
    a = pair("n1")
    a.rep.start()
    fake = Bus(*pair.keys["n2"], "n2")
    fake.allow(BUS_DOMAIN, {pair.keys["n1"][0]: "n1"})
    fake.start()
    try:
        pub = fake.server(zmq.PUB, pair.ends["n2"][0], BUS_DOMAIN)
        stranger = Binding(
            "sip:x@example.test",
            "k",
            "sip:x@h",
            time.time() + 60,
            "c",
            1,
            origin="n3",
            epoch=1,
            seq=1,
        )
        junk = (
            [UPDATE, b"{"],
            [HEARTBEAT],
            [b"Z", b"{}"],
            [UPDATE, encode_update("n3", 1, time.time(), [stranger])],
        )

        def junk_then_heartbeat():
            for frames in junk:
                send(pub, frames)
            send(pub, [HEARTBEAT, encode_heartbeat("n2", time.time(), 1, 0, "synced")])
            return a.rep.core.peers["n2"].liveness.state == "alive"

        assert wait_for(junk_then_heartbeat, 5.0)
        assert a.rep.stats["bad_messages"] >= 3 and a.rep.stats["unknown_kinds"] >= 1
        dealer = fake.client(zmq.DEALER, pair.ends["n1"][1], pair.keys["n1"][0])
        send(dealer, [SNAPSHOT_REQUEST, b"not json"], timeout=2.0)
        send(dealer, [SNAPSHOT_REQUEST, encode_snapshot_request("n3", 1)], timeout=2.0)
        send(dealer, [SNAPSHOT_REQUEST, encode_snapshot_request("n2", 7)], timeout=2.0)
        kind, body = recv(dealer, 3.0)
        assert kind == SNAPSHOT_END and SnapshotAssembler(7).finish(body).count == 0
        assert not any(g.dead for g in a.rep.group)
    finally:
        fake.close()


def restamp(body: bytes, pv) -> bytes:
    """``body`` with its protocol version set to ``pv`` (``None``: left out, as release 1)."""
    obj = json.loads(body)
    obj.pop("pv", None)
    return json.dumps(obj if pv is None else {"pv": pv, **obj}).encode()


def test_a_peer_of_another_release_is_read_by_its_protocol_version(pair, caplog):
    """The rules of ``sipcore.protocol`` on real sockets: a newer heartbeat is read and
    announces the peer's version; a newer update or snapshot request is dropped and
    counted (a flood of them logged once); an unknown kind is ignored and counted; a
    request without ``pv`` (release 1) is served; none of it is a bad message."""
    a = pair("n1")
    a.rep.start()
    fake = Bus(*pair.keys["n2"], "n2")
    fake.allow(BUS_DOMAIN, {pair.keys["n1"][0]: "n1"})
    fake.start()
    try:
        pub = fake.server(zmq.PUB, pair.ends["n2"][0], BUS_DOMAIN)
        mine = Binding(
            "sip:x@example.test",
            "k",
            "sip:x@h",
            time.time() + 60,
            "c",
            1,
            origin="n2",
            epoch=1,
            seq=1,
        )
        newer = restamp(encode_update("n2", 1, time.time(), [mine]), PROTOCOL_VERSION + 1)
        assert not a.rep.core.peers_support("pv"), "a peer not heard yet supports nothing new"

        def send_until_heard():
            send(pub, [UPDATE, newer])
            send(pub, [b"D", b'{"pv": 3, "dialogs": []}'])
            beat = encode_heartbeat("n2", time.time(), 1, 0, "synced")
            send(pub, [HEARTBEAT, restamp(beat, PROTOCOL_VERSION + 1)])
            return a.rep.core.peers["n2"].protocol == PROTOCOL_VERSION + 1

        assert wait_for(send_until_heard, 5.0)
        for _ in range(50):
            send(pub, [UPDATE, newer])
        stats = a.rep.stats
        assert wait_for(lambda: stats["newer_protocol"] >= 50, 2.0)
        logged = [
            r
            for r in caplog.records
            if r.levelname == "WARNING" and "dropped a message from n2" in r.getMessage()
        ]
        assert len(logged) == 1, logged
        assert stats["newer_protocol"] >= 1 and stats["unknown_kinds"] >= 1
        assert stats["bad_messages"] == 0 and a.rep.core.peers["n2"].counts["updates"] == 0
        assert a.rep.status()["peers"]["n2"]["pv"] == PROTOCOL_VERSION + 1
        assert a.rep.status()["pv"] == PROTOCOL_VERSION and a.rep.core.peers_support("pv")
        dealer = fake.client(zmq.DEALER, pair.ends["n1"][1], pair.keys["n1"][0])
        send(dealer, [SNAPSHOT_REQUEST, restamp(encode_snapshot_request("n2", 7), 99)], timeout=2.0)
        send(
            dealer, [SNAPSHOT_REQUEST, restamp(encode_snapshot_request("n2", 8), None)], timeout=2.0
        )
        kind, body = recv(dealer, 3.0)
        assert kind == SNAPSHOT_END and json.loads(body)["r"] == 8
        assert json.loads(body)["pv"] == PROTOCOL_VERSION
        assert stats["newer_protocol"] >= 2 and stats["bad_messages"] == 0
        send(pub, [UPDATE, restamp(encode_update("n2", 1, time.time(), [mine]), "2")])
        assert wait_for(lambda: stats["bad_messages"] == 1, 2.0), "a malformed pv is bad"
        assert not any(g.dead for g in a.rep.group)
    finally:
        fake.close()


def test_control_requests_carry_the_protocol_version(buses):
    """A request of a newer version gets an error naming the versions (counted); one
    without ``pv`` (release 1) is answered; every reply says what the node speaks."""
    server, server_pub = buses(name="node")
    admin, admin_pub = buses(name="admin")
    server.allow(CONTROL_DOMAIN, {admin_pub: "dashboard"})
    server.start()
    seen = []
    control = ControlServer(server, "tcp://127.0.0.1:*", {"status": seen.append})
    control.start()
    try:
        endpoint = control.sock.last_endpoint.decode()
        request(admin, endpoint, server_pub, {"cmd": "status"})
        assert seen[-1]["pv"] == PROTOCOL_VERSION
        with pytest.raises(
            BusError, match=f"protocol version 99, this node reads up to {PROTOCOL_VERSION}"
        ):
            request(admin, endpoint, server_pub, {"cmd": "status", "pv": 99})
        with pytest.raises(BusError, match="bad protocol version"):
            request(admin, endpoint, server_pub, {"cmd": "status", "pv": -1})
        assert len(seen) == 1
        reply = control.answer(b'{"cmd": "status"}', "old-master")
        assert reply == {"pv": PROTOCOL_VERSION, "ok": True, "result": None}
        assert "pv" not in seen[-1] and seen[-1]["from"] == "old-master"
        assert control.answer(b'{"cmd": "dialogs"}')["pv"] == PROTOCOL_VERSION
        ping = request(admin, endpoint, server_pub, {"cmd": "ping"})
        assert (ping["newer_protocol"], ping["unknown_commands"]) == (1, 1)
    finally:
        control.stop()


def test_attach_replicator_wires_the_registrar_and_the_control_endpoint(pair):
    client_pub, client_sec = generate_keypair()
    cfg = pair.cfg("n1", control=f"ipc://{pair.dir}/n1.ctl", control_keys=[client_pub])
    merged = []
    registrar = SimpleNamespace(sequencer=Sequencer(epoch=4), merge=merged.extend, inbox=Queue())
    died = []
    node = SimpleNamespace(
        cfg=cfg,
        registrar=registrar,
        location=Location(),
        actor_died=died.append,
        peer_bans=lambda origin, bans: None,
    )
    rep = attach_replicator(node)
    client = Bus(client_pub, client_sec, "dashboard")
    try:
        assert node.replicator is rep and rep.on_bans is node.peer_bans
        status = request(client, cfg.control, cfg.public_key, {"cmd": "status"}, 3.0)
        assert (status["id"], status["epoch"]) == ("n1", 4)
        assert status["peers"]["n2"]["liveness"] == "unknown"
        assert wait_for(
            lambda: (
                request(client, cfg.control, cfg.public_key, {"cmd": "status"})["state"] == "synced"
            ),
            3.0,
        )
        digest = request(client, cfg.control, cfg.public_key, {"cmd": "digest"})
        assert (digest["live"], digest["tombstones"]) == (0, 0)
    finally:
        client.close()
        rep.stop()
    assert died == []


def test_without_peers_replication_is_off_and_synced():
    rep = Replicator(NodeConfig(id="solo", domain="example.test"), 1, Location(), list)
    rep.start()
    assert rep.synced and rep.state == "synced" and rep.bus is None and rep.retry_after() == 0
    rep.publish([Binding("sip:a@example.test", "k", "sip:a@h", time.time() + 60, "c", 1)])
    assert rep.outbox.qsize() == 0
    rep.stop()


def test_a_clustered_node_without_keys_is_refused():
    cfg = NodeConfig(
        id="n1", domain="example.test", bus_pub="ipc:///tmp/x", bus_snapshot="ipc:///tmp/y"
    )
    with pytest.raises(BusError, match="secret_key and public_key"):
        Replicator(cfg, 1, Location(), list)
