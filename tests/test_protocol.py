"""Protocol versions (sipcore.protocol): stamping, reading, and what a peer supports."""

import json

import pytest

from sipcore.location import Binding
from sipcore.protocol import (
    FEATURES,
    FIRST_VERSION,
    PROTOCOL_VERSION,
    NewerProtocol,
    ProtocolError,
    all_support,
    check_version,
    peer_supports,
    stamp,
    version_of,
)
from sipcore.replication import Heartbeat, NewerMessage, SnapshotAssembler, WireError
from sipcore.replication_wire import (
    decode_bans,
    decode_heartbeat,
    decode_snapshot_request,
    decode_update,
    encode_bans,
    encode_heartbeat,
    encode_snapshot_request,
    encode_update,
    snapshot_stream,
)
from sipcore.authguard import Ban
from tests.test_replication import T0, core, hb

B = Binding("sip:a@example.test", "k", "sip:a@h", T0 + 60, "c", 1, origin="n2", epoch=1, seq=1)


def every_body() -> list[bytes]:
    """One body of each kind this release writes on the bus."""
    stream = [body for _, body, _ in snapshot_stream(4, [B], 10, 1, 1)]
    return [
        encode_update("n2", 1, T0, [B]),
        encode_heartbeat("n2", T0, 1, 1, "synced"),
        encode_snapshot_request("n2", 4),
        encode_bans("n2", [Ban("source", "10.0.0.1", T0)]),
        *stream,
    ]


def test_every_bus_body_carries_this_releases_version():
    for body in every_body():
        assert json.loads(body)["pv"] == PROTOCOL_VERSION, body


def test_a_body_without_a_version_is_release_one_and_read():
    obj = json.loads(encode_update("n2", 1, T0, [B]))
    del obj["pv"]
    assert version_of(obj) == FIRST_VERSION == check_version(obj)
    assert decode_update(json.dumps(obj).encode()).bindings == [B]
    beat = json.loads(encode_heartbeat("n2", T0, 1, 1, "synced"))
    del beat["pv"]
    assert decode_heartbeat(json.dumps(beat).encode()).protocol == FIRST_VERSION


def restamped(body: bytes, pv) -> bytes:
    return json.dumps({**json.loads(body), "pv": pv}).encode()


@pytest.mark.parametrize(
    "decode, body",
    [
        (decode_update, encode_update("n2", 1, T0, [B])),
        (decode_snapshot_request, encode_snapshot_request("n2", 4)),
        (decode_bans, encode_bans("n2", [])),
    ],
)
def test_a_newer_body_is_refused_as_newer_and_a_malformed_version_as_bad(decode, body):
    with pytest.raises(NewerMessage, match=f"protocol version {PROTOCOL_VERSION + 1}"):
        decode(restamped(body, PROTOCOL_VERSION + 1))
    for bad in ("2", 0, -3, 2.0, True, None, [2], 10**400):
        with pytest.raises(WireError) as e:
            decode(restamped(body, bad))
        assert not isinstance(e.value, NewerMessage)


def test_a_newer_snapshot_batch_or_end_marker_is_refused():
    batch, end = [body for _, body, _ in snapshot_stream(4, [B], 10, 1, 1)]
    with pytest.raises(NewerMessage):
        SnapshotAssembler(4).add(restamped(batch, 9))
    assembler = SnapshotAssembler(4)
    assembler.add(batch)
    with pytest.raises(NewerMessage):
        assembler.finish(restamped(end, 9))


def test_a_newer_heartbeat_is_read_and_announces_its_version():
    got = decode_heartbeat(restamped(encode_heartbeat("n2", T0, 1, 1, "synced"), 7))
    assert (got.node, got.seq, got.protocol) == ("n2", 1, 7)
    with pytest.raises(WireError):
        decode_heartbeat(restamped(encode_heartbeat("n2", T0, 1, 1, "synced"), "7"))


def test_version_checks_and_stamp():
    assert stamp({"cmd": "x"}) == {"pv": PROTOCOL_VERSION, "cmd": "x"}
    assert stamp({"cmd": "x", "pv": 1}) == {"pv": 1, "cmd": "x"}, "an explicit version stays"
    with pytest.raises(NewerProtocol) as e:
        check_version({"pv": PROTOCOL_VERSION + 1})
    assert e.value.version == PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolError):
        version_of({"pv": "1"})


def test_peer_supports_what_its_version_has():
    assert FEATURES["pv"] == 2
    assert peer_supports(2, "pv") and peer_supports(PROTOCOL_VERSION + 5, "pv")
    assert not peer_supports(1, "pv") and not peer_supports(None, "pv")
    with pytest.raises(KeyError):
        peer_supports(2, "no-such-feature")
    assert all_support([], "pv") and all_support([2, 3], "pv") and not all_support([2, 1], "pv")


def test_the_sync_rules_know_what_every_peer_announced():
    r = core(peers=("n2", "n3"))
    assert not r.peers_support("pv")
    r.heartbeat_received("n2", hb("n2"), 0.1, T0)
    assert r.peers["n2"].protocol == FIRST_VERSION and r.peers["n2"].status()["pv"] == 1
    beat = decode_heartbeat(encode_heartbeat("n2", T0, 1, 0, "synced"))
    r.heartbeat_received("n2", beat, 0.2, T0)
    r.heartbeat_received("n3", Heartbeat("n3", T0, 1, 0, "synced", protocol=2), 0.2, T0)
    assert r.peers_support("pv")
    r.heartbeat_received("n3", hb("n3"), 0.3, T0)
    assert not r.peers_support("pv"), "a peer downgraded to release 1 is followed"
