"""Replication rules without sockets: wire format, snapshots, merge order, gaps, liveness."""

import json
import random

import pytest

from sipcore.location import Binding, Location, tombstone
from sipcore.protocol import PROTOCOL_VERSION
from sipcore.replication import (
    ALIVE,
    DEAD,
    MAX_VERSIONS,
    SUSPECTED,
    SYNCED,
    SYNCING,
    UNKNOWN,
    ApplyBindings,
    Heartbeat,
    Liveness,
    Notice,
    Replication,
    RequestSnapshot,
    SetDigest,
    SkewMeter,
    SnapshotAssembler,
    SnapshotError,
    Update,
    WireError,
    decode_heartbeat,
    decode_snapshot_request,
    decode_update,
    encode_heartbeat,
    encode_snapshot_request,
    encode_update,
    row_binding,
    snapshot_stream,
)

T0 = 1_700_000_000.0


def b(
    user="alice",
    contact=None,
    seq=1,
    origin="n1",
    epoch=1,
    cseq=1,
    call_id=None,
    updated_at=T0,
    expires_at=T0 + 3600,
    **kw,
) -> Binding:
    """A binding of ``sip:user@example.test`` stamped by ``origin``."""
    contact = contact or f"sip:{user}@10.0.0.1:5060"
    return Binding(
        aor=f"sip:{user}@example.test",
        key=contact,
        contact=contact,
        expires_at=expires_at,
        call_id=call_id or f"cid-{user}",
        cseq=cseq,
        origin=origin,
        epoch=epoch,
        seq=seq,
        updated_at=updated_at,
        **kw,
    )


def update(first, n=1, origin="n1", epoch=1, sent_at=T0) -> Update:
    """An ``Update`` of ``n`` changes numbered from ``first``, through the wire."""
    bs = [b(user=f"u{s}", seq=s, origin=origin, epoch=epoch) for s in range(first, first + n)]
    return decode_update(encode_update(origin, epoch, sent_at, bs))


def kinds(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


# -- wire format -------------------------------------------------------------------------


def test_update_round_trip_keeps_every_field():
    full = b(
        seq=7,
        q=0.5,
        path=["<sip:edge@10.0.0.9;lr>"],
        instance="urn:uuid:1",
        reg_id=2,
        received="udp:10.0.0.1:5060",
        user_agent="Phone/1.0 ünïcode",
    )
    later = b(user="bob", seq=8, deleted=True)
    upd = decode_update(encode_update("n1", 1, T0 + 0.25, [full, later]))
    assert (upd.origin, upd.epoch, upd.first, upd.last, upd.sent_at) == ("n1", 1, 7, 8, T0 + 0.25)
    assert upd.bindings == [full, later]


@pytest.mark.parametrize(
    "body, match",
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"e": 1, "t": 1.0, "b": []}', "missing field 'id'"),
        (b'{"id": "n1", "e": true, "t": 1.0, "b": []}', "must be a integer"),
        (b'{"id": "n1", "e": 1, "t": "now", "b": []}', "must be a number"),
        (b'{"id": "n1", "e": 1, "t": NaN, "b": []}', "non-finite"),
        (b'{"id": "n1", "e": 1, "t": 1.0, "b": []}', "without bindings"),
        (b'{"id": "n1", "e": 1, "t": 1.0, "b": [[1, 2]]}', "list of 17 fields"),
        (b'{"id": "n1", "e": 1, "t": 1.0, "b": {}}', "must be a list"),
    ],
)
def test_decode_update_rejects_malformed_bodies(body, match):
    with pytest.raises(WireError, match=match):
        decode_update(body)


def _row_body(mutate) -> bytes:
    obj = json.loads(encode_update("n1", 1, T0, [b()]))
    mutate(obj["b"][0])
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "index, value, match",
    [
        (5, True, "cseq must be a integer"),
        (5, -1, "not be negative"),
        (3, 1e999, "finite"),
        (7, [1], "path must be a list of strings"),
        (7, "x", "path must be a list"),
        (16, 0, "deleted must be a boolean"),
        (0, "", "must not be empty"),
        (12, None, "origin is missing"),
        (6, "high", "q must be a number"),
    ],
)
def test_decode_update_rejects_bad_binding_fields(index, value, match):
    def mutate(row):
        row[index] = value

    with pytest.raises(WireError, match=match):
        decode_update(_row_body(mutate))


def test_update_must_be_one_origin_epoch_and_consecutive():
    with pytest.raises(WireError, match="carries a change of n2"):
        decode_update(encode_update("n1", 1, T0, [b(seq=1), b(user="x", seq=2, origin="n2")]))
    with pytest.raises(WireError, match="carries a change of n1/2"):
        decode_update(encode_update("n1", 1, T0, [b(seq=1, epoch=2)]))
    with pytest.raises(WireError, match="not consecutive at 3"):
        decode_update(encode_update("n1", 1, T0, [b(seq=1), b(user="x", seq=3)]))


def test_random_corruption_only_ever_raises_wire_error():
    rng = random.Random(4)
    good = encode_update("n1", 1, T0, [b(seq=1), b(user="bob", seq=2)])
    decoders = (decode_update, decode_heartbeat, decode_snapshot_request)
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        for decode in decoders:
            try:
                decode(bytes(data))
            except WireError:
                pass


def test_heartbeat_and_request_round_trip():
    hb = decode_heartbeat(encode_heartbeat("n2", T0, 3, 41, SYNCED))
    assert hb == Heartbeat("n2", T0, 3, 41, SYNCED, protocol=PROTOCOL_VERSION)
    with pytest.raises(WireError):
        decode_heartbeat(encode_heartbeat("n2", T0, 3, 41, "confused"))
    with pytest.raises(WireError):
        decode_heartbeat(encode_heartbeat("n2", T0, 3, -1, SYNCED))
    assert decode_snapshot_request(encode_snapshot_request("n3", 9)) == ("n3", 9)
    with pytest.raises(WireError):
        decode_snapshot_request(b'{"id": "n3", "r": "9"}')


# -- snapshots -----------------------------------------------------------------------------


def stream(bindings, batch=3, request=5, epoch=2, seq=40):
    return list(snapshot_stream(request, bindings, batch, epoch, seq))


def test_snapshot_round_trip_in_batches_with_end_marker():
    bindings = [b(user=f"u{i}", seq=i) for i in range(10)] + [b(user="gone", deleted=True)]
    msgs = stream(bindings)
    assert [is_end for is_end, _, _ in msgs] == [False] * 4 + [True]
    asm = SnapshotAssembler(5)
    got = [x for _, body, _ in msgs[:-1] for x in asm.add(body)]
    end = asm.finish(msgs[-1][1])
    assert got == bindings
    assert (end.count, end.batches, end.epoch, end.seq) == (11, 4, 2, 40)


def test_empty_snapshot_is_valid():
    msgs = stream([])
    end = SnapshotAssembler(5).finish(msgs[-1][1])
    assert (end.count, end.batches) == (0, 0)


def test_snapshot_missing_batch_is_detected():
    msgs = stream([b(user=f"u{i}") for i in range(9)])
    asm = SnapshotAssembler(5)
    asm.add(msgs[0][1])
    with pytest.raises(SnapshotError, match="expected batch 1"):
        asm.add(msgs[2][1])


def test_snapshot_truncated_stream_is_detected():
    msgs = stream([b(user=f"u{i}") for i in range(9)])
    asm = SnapshotAssembler(5)
    asm.add(msgs[0][1])
    asm.add(msgs[1][1])
    with pytest.raises(
        SnapshotError, match="incomplete: got 6 bindings in 2 batches, server sent 9 in 3"
    ):
        asm.finish(msgs[-1][1])


def _tampered_end(body, **changes):
    obj = json.loads(body)
    obj.update(changes)
    return json.dumps(obj).encode()


def test_snapshot_count_and_digest_mismatch_are_detected():
    msgs = stream([b(user=f"u{i}") for i in range(4)], batch=10)
    asm = SnapshotAssembler(5)
    asm.add(msgs[0][1])
    with pytest.raises(SnapshotError, match="incomplete"):
        asm.finish(_tampered_end(msgs[1][1], c=5))
    with pytest.raises(SnapshotError, match="digest mismatch"):
        asm.finish(_tampered_end(msgs[1][1], d="0" * 32))
    altered = SnapshotAssembler(5)
    altered.add(msgs[0][1].replace(b"u1@", b"u9@"))
    with pytest.raises(SnapshotError, match="digest mismatch"):
        altered.finish(msgs[1][1])
    assert asm.finish(msgs[1][1]).count == 4


def test_snapshot_of_another_request_is_rejected():
    msgs = stream([b()])
    with pytest.raises(WireError):
        SnapshotAssembler(6).add(msgs[0][1])
    with pytest.raises(WireError):
        SnapshotAssembler(6).finish(msgs[-1][1])


def test_rows_sharing_call_id_and_cseq_all_survive_a_snapshot():
    """sipXecs dropped rows with equal Call-ID and CSeq: one REGISTER, several contacts."""
    one_register = [
        b(contact=f"sip:alice@10.0.0.{i}", call_id="same", cseq=7, seq=i) for i in range(1, 6)
    ]
    msgs = stream(one_register, batch=2)
    asm = SnapshotAssembler(5)
    got = [x for _, body, _ in msgs[:-1] for x in asm.add(body)]
    assert asm.finish(msgs[-1][1]).count == 5
    loc = Location()
    assert all(loc.merge(x) for x in got)
    assert len(loc.get("sip:alice@example.test")) == 5


# -- merge order ----------------------------------------------------------------------------


def test_update_applied_twice_changes_nothing():
    loc = Location()
    upd = update(1, 3)
    assert all(loc.merge(x) for x in upd.bindings)
    before = {(x.aor, x.key): x for x in loc.all()}
    again = update(1, 3)
    assert not any(loc.merge(x) for x in again.bindings)
    assert {(x.aor, x.key): x for x in loc.all()} == before


def test_older_update_never_overwrites_in_either_order():
    old = b(cseq=1, updated_at=T0, seq=1)
    new = b(cseq=2, updated_at=T0 + 5, seq=2, contact=old.contact)
    other_call = b(call_id="other", updated_at=T0 + 1, origin="n2", seq=9, contact=old.contact)
    for order in ([old, other_call, new], [new, other_call, old], [other_call, new, old]):
        loc = Location()
        for x in order:
            loc.merge(x)
        assert loc.get(old.aor)[old.key] == new


def test_same_call_id_cseq_decides_before_time():
    later_cseq = b(cseq=3, updated_at=T0)
    earlier_cseq = b(cseq=2, updated_at=T0 + 10)
    loc = Location()
    loc.merge(later_cseq)
    assert not loc.merge(earlier_cseq)


def test_tombstone_is_not_revived_by_a_late_older_version():
    live = b(cseq=1, updated_at=T0)
    dead = tombstone(live, cseq=2, updated_at=T0 + 1, seq=2)
    loc = Location()
    loc.merge(dead)
    assert not loc.merge(live)
    assert loc.get(live.aor)[live.key].deleted
    assert loc.lookup(live.aor, T0) == []


def test_ties_break_on_origin_so_every_node_picks_the_same():
    x = b(call_id="a", origin="n1", updated_at=T0)
    y = b(call_id="b", origin="n2", updated_at=T0)
    for order in ([x, y], [y, x]):
        loc = Location()
        for v in order:
            loc.merge(v)
        assert loc.get(x.aor)[x.key] == y


# -- set digest -----------------------------------------------------------------------------


def test_set_digest_is_order_independent_and_content_sensitive():
    items = [b(user=f"u{i}", seq=i) for i in range(50)] + [b(user="t", deleted=True)]
    d1 = SetDigest().add(items).summary()
    d2 = SetDigest().add(list(reversed(items))).summary()
    assert d1 == d2 and d1["live"] == 50 and d1["tombstones"] == 1
    changed = items[:-1] + [b(user="t", deleted=True, expires_at=T0 + 1)]
    assert SetDigest().add(changed).summary()["digest"] != d1["digest"]
    assert SetDigest().add(items, wall=T0 + 4000).summary()["live"] == 0


# -- liveness and skew ----------------------------------------------------------------------


def test_liveness_transitions_with_a_fake_clock():
    lv = Liveness(suspect_after=1.5, dead_after=5.0)
    assert lv.state == UNKNOWN and lv.check(100.0) is None
    assert lv.heard(0.0) == UNKNOWN and lv.state == ALIVE
    assert lv.check(1.4) is None
    assert lv.check(1.5) == ALIVE and lv.state == SUSPECTED
    assert lv.check(4.9) is None
    assert lv.check(5.0) == SUSPECTED and lv.state == DEAD
    assert lv.heard(9.0) == DEAD and lv.state == ALIVE
    assert lv.heard(9.5) is None


def beats(meter, offset, start, n, every=0.5):
    """Feed ``n`` heartbeats sent every ``every`` s by a clock ``offset`` s ahead of ours."""
    changed = [
        meter.observe(T0 + start + i * every + offset, T0 + start + i * every) for i in range(n)
    ]
    return any(changed)


def test_skew_over_one_second_is_flagged_and_cleared():
    m = SkewMeter(window=4)
    assert not beats(m, 0.2, 0, 3) and not m.skewed
    assert beats(m, 1.5, 10, 3) and m.skewed and abs(m.skew - 1.5) < 1e-6
    assert beats(m, -0.1, 20, 5) and not m.skewed
    assert abs(m.skew + 0.1) < 1e-6
    assert beats(m, -2.0, 30, 5) and m.skewed


def test_skew_ignores_a_backlog_of_late_heartbeats():
    """After our own pause, queued heartbeats look seconds late: they are not skew."""
    m = SkewMeter(window=4)
    beats(m, 0.0, 0, 5)
    for i in range(12):
        assert not m.observe(T0 + 3 + i * 0.5, T0 + 9.0 + i * 0.0001)
    assert not beats(m, 0.0, 9.1, 5)
    assert not m.skewed and abs(m.skew) < 1e-3


def test_heartbeat_of_a_peer_back_from_a_pause_still_counts():
    m = SkewMeter(window=8)
    beats(m, 1.2, 0, 3)
    assert m.skewed and len(m.samples) == 2
    m.observe(T0 + 30.0 + 1.2, T0 + 30.0)
    assert len(m.samples) == 3


# -- sync rules -----------------------------------------------------------------------------


def core(peers=("n2", "n3"), now=0.0, **kw):
    kw = {"suspect_after": 1.5, "dead_after": 5.0, "alone_wait": 3.0, **kw}
    return Replication("n1", peers, now, **kw)


def hb(node="n2", epoch=1, seq=0, wall=T0):
    return Heartbeat(node, wall, epoch, seq, SYNCED)


def test_skew_is_reported_by_the_sync_rules():
    r = core(peers=("n2",), heartbeat=0.5)
    notices = []
    for i in range(4):
        notices += kinds(
            r.heartbeat_received("n2", hb(wall=T0 + 3 + i * 0.5), i * 0.5, T0 + i * 0.5), Notice
        )
    assert any("clock of n2 is +3.000 s off ours" in n.text and n.warning for n in notices)
    assert r.peers["n2"].status()["skewed"] is True


def joined(r, peer="n2", now=0.0, epoch=1, seq=0):
    """Hear ``peer`` and complete the join snapshot; return its request number."""
    req = kinds(r.heartbeat_received(peer, hb(peer, epoch, seq), now, T0), RequestSnapshot)
    assert [a.reason for a in req] == ["join"]
    r.snapshot_completed(peer, req[0].request, epoch, seq, now)
    return req[0].request


def test_join_queues_live_updates_and_replays_those_newer_than_the_snapshot():
    r = core()
    acts = r.heartbeat_received("n2", hb(), 0.0, T0)
    (req,) = kinds(acts, RequestSnapshot)
    assert req.reason == "join"
    assert kinds(r.update_received("n2", update(1, 2), 0.1), ApplyBindings) == []
    assert kinds(r.update_received("n2", update(3, 1), 0.2), ApplyBindings) == []
    acts = r.snapshot_completed("n2", req.request, 1, 2, 0.3)
    applied = kinds(acts, ApplyBindings)
    assert [x.seq for a in applied for x in a.bindings] == [3]
    assert r.peers["n2"].seq == 3


def test_consecutive_updates_apply_and_duplicates_are_skipped():
    r = core()
    joined(r)
    assert len(kinds(r.update_received("n2", update(1, 2), 1.0), ApplyBindings)) == 1
    assert kinds(r.update_received("n2", update(1, 2), 1.1), ApplyBindings) == []
    assert len(kinds(r.update_received("n2", update(3), 1.2), ApplyBindings)) == 1
    assert r.peers["n2"].counts["duplicates"] == 1 and r.peers["n2"].seq == 3


def test_gap_in_updates_asks_for_a_snapshot_then_replays():
    r = core()
    joined(r)
    r.update_received("n2", update(1), 1.0)
    acts = r.update_received("n2", update(4), 1.1)
    (req,) = kinds(acts, RequestSnapshot)
    assert req.reason == "gap" and kinds(acts, ApplyBindings) == []
    assert kinds(r.update_received("n2", update(5), 1.2), RequestSnapshot) == []
    acts = r.snapshot_completed("n2", req.request, 1, 4, 1.3)
    assert [x.seq for a in kinds(acts, ApplyBindings) for x in a.bindings] == [5]
    assert r.peers["n2"].counts["gaps"] == 1


def test_heartbeat_revealing_a_lost_last_update_is_a_gap():
    r = core()
    joined(r)
    r.update_received("n2", update(1), 1.0)
    assert kinds(r.heartbeat_received("n2", hb(seq=1), 1.1, T0), RequestSnapshot) == []
    (req,) = kinds(r.heartbeat_received("n2", hb(seq=2), 1.2, T0), RequestSnapshot)
    assert req.reason == "gap"


def test_gap_still_present_after_the_snapshot_asks_again():
    r = core()
    joined(r)
    (req,) = kinds(r.update_received("n2", update(3), 1.0), RequestSnapshot)
    r.update_received("n2", update(9), 1.1)
    acts = r.snapshot_completed("n2", req.request, 1, 5, 1.2)
    (again,) = kinds(acts, RequestSnapshot)
    assert again.reason == "gap" and len(r.peers["n2"].queue) == 1


def test_new_epoch_asks_for_a_snapshot_and_drops_stale_queued_updates():
    r = core()
    joined(r)
    r.update_received("n2", update(1), 1.0)
    (req,) = kinds(r.heartbeat_received("n2", hb(epoch=2, seq=0), 1.1, T0), RequestSnapshot)
    assert req.reason == "epoch"
    r.update_received("n2", update(2, epoch=1), 1.2)
    r.update_received("n2", update(1, epoch=2), 1.3)
    acts = r.snapshot_completed("n2", req.request, 2, 0, 1.4)
    assert [(x.epoch, x.seq) for a in kinds(acts, ApplyBindings) for x in a.bindings] == [(2, 1)]
    (req2,) = kinds(r.update_received("n2", update(1, epoch=3), 1.5), RequestSnapshot)
    assert req2.reason == "epoch"


def test_peer_back_from_dead_is_resynced():
    r = core()
    joined(r)
    r.tick(3.0)
    assert r.peers["n2"].liveness.state == SUSPECTED
    acts = r.tick(6.0)
    assert r.peers["n2"].liveness.state == DEAD
    assert any("n2 suspected -> dead" in a.text for a in kinds(acts, Notice))
    (req,) = kinds(r.heartbeat_received("n2", hb(), 7.0, T0), RequestSnapshot)
    assert req.reason == "reconnect"


def test_suspected_peer_heard_again_is_not_resynced():
    r = core()
    joined(r)
    r.tick(2.0)
    assert kinds(r.heartbeat_received("n2", hb(), 2.1, T0), RequestSnapshot) == []


def test_failed_snapshot_is_retried_while_the_peer_lives():
    r = core(retry_after=1.0)
    (req,) = kinds(r.heartbeat_received("n2", hb(), 0.0, T0), RequestSnapshot)
    acts = r.snapshot_failed("n2", req.request, "timeout", 0.5)
    assert kinds(acts, Notice)[0].warning
    r.heartbeat_received("n2", hb(), 1.0, T0)
    assert kinds(r.tick(1.2), RequestSnapshot) == []
    (retry,) = kinds(r.tick(1.6), RequestSnapshot)
    assert retry.reason == "retry"
    assert r.snapshot_completed("n2", req.request, 1, 0, 1.7) == []
    assert not r.peers["n2"].has_snapshot


def test_failed_snapshot_of_a_dead_peer_is_not_retried():
    r = core()
    (req,) = kinds(r.heartbeat_received("n2", hb(), 0.0, T0), RequestSnapshot)
    r.tick(6.0)
    r.snapshot_failed("n2", req.request, "timeout", 6.0)
    assert kinds(r.tick(20.0), RequestSnapshot) == []


def test_alone_node_becomes_synced_after_alone_wait():
    r = core()
    assert r.state == SYNCING and r.retry_after_hint(0.0) == 3
    r.tick(2.9)
    assert not r.synced
    r.tick(3.0)
    assert r.synced and r.state == SYNCED and r.retry_after_hint(3.0) == 0


def test_no_peers_means_synced_at_first_tick():
    r = core(peers=())
    r.tick(0.0)
    assert r.synced


def test_synced_needs_a_snapshot_from_every_live_peer():
    r = core()
    joined(r, "n2")
    r.tick(0.5)
    assert not r.synced
    (req,) = kinds(r.heartbeat_received("n3", hb("n3"), 0.6, T0), RequestSnapshot)
    r.tick(10.0 - 6.0)
    assert not r.synced
    r.heartbeat_received("n2", hb(), 4.0, T0)
    r.heartbeat_received("n3", hb("n3"), 4.0, T0)
    r.snapshot_completed("n3", req.request, 1, 0, 4.1)
    assert r.synced


def test_a_peer_that_never_shows_up_does_not_block_sync_past_alone_wait():
    r = core()
    joined(r, "n2")
    r.heartbeat_received("n2", hb(), 2.9, T0)
    r.tick(2.9)
    assert not r.synced
    r.tick(3.1)
    assert r.synced


def test_synced_is_kept_when_a_peer_comes_back():
    r = core(peers=("n2",))
    joined(r, "n2")
    assert r.synced
    r.tick(6.0)
    r.heartbeat_received("n2", hb(epoch=2), 7.0, T0)
    assert r.synced


def test_queue_is_bounded_and_counts_drops():
    r = core(queue_max=3)
    r.heartbeat_received("n2", hb(), 0.0, T0)
    for s in range(1, 6):
        r.update_received("n2", update(s), 0.1)
    assert len(r.peers["n2"].queue) == 3 and r.peers["n2"].counts["dropped"] == 2


def test_status_is_json_ready():
    r = core()
    joined(r)
    json.dumps(r.peers["n2"].status())
    assert r.peers["n2"].status()["liveness"] == ALIVE


def test_row_binding_builds_a_binding():
    row = json.loads(encode_update("n1", 1, T0, [b()]))["b"][0]
    assert row_binding(row) == b()


# -- version vectors: gaps of a third origin ------------------------------------------------


def test_heartbeat_and_end_marker_carry_version_vectors():
    hb_ = decode_heartbeat(encode_heartbeat("n2", T0, 3, 41, SYNCED, {"n3": (2, 7), "n1": (5, 0)}))
    assert hb_.versions == {"n3": (2, 7), "n1": (5, 0)}
    assert decode_heartbeat(b'{"id":"n2","t":1.0,"e":1,"s":0,"st":"synced"}').versions == {}
    msgs = list(snapshot_stream(5, [b()], 3, 2, 40, {"n3": (1, 9)}))
    asm = SnapshotAssembler(5)
    asm.add(msgs[0][1])
    assert asm.finish(msgs[-1][1]).versions == {"n3": (1, 9)}


@pytest.mark.parametrize(
    "vector",
    [
        "[]",
        '{"n3": [1]}',
        '{"n3": [1, -1]}',
        '{"n3": [true, 1]}',
        '{"n3": [1.5, 1]}',
        '{"n3": "1/2"}',
        '{"": [1, 2]}',
        json.dumps({f"n{i}": [1, 1] for i in range(MAX_VERSIONS + 1)}),
    ],
)
def test_bad_version_vectors_are_wire_errors(vector):
    body = ('{"id": "n2", "t": 1.0, "e": 1, "s": 0, "st": "synced", "v": %s}' % vector).encode()
    with pytest.raises(WireError):
        decode_heartbeat(body)
    end = ('{"r": 5, "n": 0, "c": 0, "d": "x", "e": 1, "s": 0, "v": %s}' % vector).encode()
    with pytest.raises(WireError):
        SnapshotAssembler(5).finish(end)


def hbv(node="n2", versions=None, epoch=1, seq=0):
    """A heartbeat of ``node`` carrying a version vector."""
    return Heartbeat(node, T0, epoch, seq, SYNCED, versions or {})


def both_joined(**kw):
    """n1 with peers n2 and n3, both joined at epoch 1 seq 0 at t=0; n3 sent seq 1-2 at 0.1."""
    r = core(relay_grace=0.5, **kw)
    joined(r, "n2")
    joined(r, "n3")
    r.update_received("n3", update(1, 2, origin="n3"), 0.1)
    return r


def test_versions_report_direct_and_relayed_streams_but_never_our_own():
    r = core()
    assert r.versions() == {}
    joined(r, "n2")
    r.update_received("n2", update(1, 3), 0.1)
    assert r.versions() == {"n2": (1, 3)}
    (req,) = kinds(r.heartbeat_received("n3", hb("n3"), 0.2, T0), RequestSnapshot)
    r.snapshot_completed("n3", req.request, 1, 0, 0.3, {"n1": (7, 7), "n2": (1, 1), "n9": (1, 1)})
    assert r.versions() == {"n2": (1, 3), "n3": (1, 0)}
    (req,) = kinds(r.heartbeat_received("n3", hb("n3", epoch=2), 0.4, T0), RequestSnapshot)
    r.snapshot_completed("n3", req.request, 2, 0, 0.5, {"n2": (1, 8)})
    assert r.versions() == {"n2": (1, 8), "n3": (2, 0)}
    status = r.peers["n2"].status()
    assert (status["seq"], status["relayed"]) == (3, [1, 8])
    json.dumps(status)


def test_peer_holding_what_a_dead_origin_sent_last_is_asked_for_a_snapshot():
    """n3 sent seq 3, n1 missed it, n2 got it; n3 dies before a heartbeat reveals the gap."""
    r = both_joined()
    assert (
        kinds(r.heartbeat_received("n2", hbv(versions={"n3": (1, 3)}), 0.2, T0), RequestSnapshot)
        == []
    )
    assert (
        kinds(r.heartbeat_received("n2", hbv(versions={"n3": (1, 3)}), 1.0, T0), RequestSnapshot)
        == []
    ), "n3 is still alive: its own heartbeat will tell"
    r.tick(1.7)
    assert r.peers["n3"].liveness.state == SUSPECTED
    acts = r.heartbeat_received("n2", hbv(versions={"n3": (1, 3)}), 1.7, T0)
    (req,) = kinds(acts, RequestSnapshot)
    assert (req.peer, req.reason) == ("n2", "relay")
    assert any(
        "gap from n3" in n.text and "n2 holds 1/3, we hold 1/2" in n.text
        for n in kinds(acts, Notice)
    )
    assert r.peers["n3"].counts["gaps"] == 1 and r.peers["n2"].reasons["relay"] == 1
    r.snapshot_completed("n2", req.request, 1, 0, 1.8, {"n3": (1, 3)})
    assert r.versions()["n3"] == (1, 3)
    assert (r.peers["n3"].epoch, r.peers["n3"].seq) == (1, 2)
    for t in (2.5, 3.0, 6.0):
        r.tick(t)
        assert (
            kinds(r.heartbeat_received("n2", hbv(versions={"n3": (1, 3)}), t, T0), RequestSnapshot)
            == []
        )


def test_a_claim_must_last_the_grace_period():
    r = both_joined()
    r.tick(2.0)
    assert r.peers["n3"].liveness.state == SUSPECTED
    claim = {"n3": (1, 3)}
    assert kinds(r.heartbeat_received("n2", hbv(versions=claim), 2.0, T0), RequestSnapshot) == []
    assert kinds(r.heartbeat_received("n2", hbv(versions=claim), 2.4, T0), RequestSnapshot) == []
    (req,) = kinds(r.heartbeat_received("n2", hbv(versions=claim), 2.5, T0), RequestSnapshot)
    assert req.reason == "relay"


def test_claims_about_an_origin_alive_to_us_never_ask_a_relay():
    r = both_joined()
    for i in range(20):
        t = 0.2 + i * 0.4
        r.heartbeat_received("n3", hb("n3", seq=2), t, T0)
        assert (
            kinds(r.heartbeat_received("n2", hbv(versions={"n3": (1, 5)}), t, T0), RequestSnapshot)
            == []
        )
        r.tick(t)


def test_a_claim_caught_up_by_the_origin_stream_is_forgotten():
    r = both_joined()
    r.heartbeat_received("n2", hbv(versions={"n3": (1, 3)}), 0.2, T0)
    r.update_received("n3", update(3, origin="n3"), 0.3)
    r.tick(2.0)
    assert r.peers["n3"].liveness.state == SUSPECTED
    assert (
        kinds(r.heartbeat_received("n2", hbv(versions={"n3": (1, 3)}), 2.0, T0), RequestSnapshot)
        == []
    )
    assert (
        kinds(r.heartbeat_received("n2", hbv(versions={"n3": (1, 3)}), 3.0, T0), RequestSnapshot)
        == []
    )


def test_a_newer_epoch_of_a_dead_origin_is_a_gap_too():
    r = both_joined()
    r.tick(2.0)
    r.heartbeat_received("n2", hbv(versions={"n3": (2, 1)}), 2.0, T0)
    (req,) = kinds(
        r.heartbeat_received("n2", hbv(versions={"n3": (2, 1)}), 2.6, T0), RequestSnapshot
    )
    assert req.reason == "relay"


def test_an_origin_never_heard_is_covered_by_the_relay_join_snapshot():
    """n1 starts after n3 died: the join snapshot of n2 says what it held of n3."""
    r = core(relay_grace=0.5)
    (req,) = kinds(
        r.heartbeat_received("n2", hbv(versions={"n3": (1, 9)}), 0.0, T0), RequestSnapshot
    )
    assert req.reason == "join"
    r.snapshot_completed("n2", req.request, 1, 0, 0.1, {"n3": (1, 9)})
    for t in (0.5, 1.0, 4.0):
        r.tick(t)
        assert (
            kinds(r.heartbeat_received("n2", hbv(versions={"n3": (1, 9)}), t, T0), RequestSnapshot)
            == []
        )
    r.heartbeat_received("n2", hbv(versions={"n3": (1, 10)}), 4.1, T0)
    (req,) = kinds(
        r.heartbeat_received("n2", hbv(versions={"n3": (1, 10)}), 4.7, T0), RequestSnapshot
    )
    assert req.reason == "relay"


def test_own_unknown_and_sender_origins_in_a_vector_are_ignored():
    r = both_joined()
    r.tick(2.0)
    odd = {"n1": (9, 9), "n7": (1, 1), "n2": (5, 5)}
    for t in (2.0, 3.0, 4.0):
        assert kinds(r.heartbeat_received("n2", hbv(versions=odd), t, T0), RequestSnapshot) == []


def test_no_relay_while_the_sender_itself_is_being_synced():
    r = both_joined()
    r.tick(2.0)
    claim = {"n3": (1, 3)}
    r.heartbeat_received("n2", hbv(versions=claim), 2.0, T0)
    (req,) = kinds(r.heartbeat_received("n2", hbv(versions=claim, seq=4), 2.1, T0), RequestSnapshot)
    assert req.reason == "gap"
    assert (
        kinds(r.heartbeat_received("n2", hbv(versions=claim, seq=4), 3.0, T0), RequestSnapshot)
        == []
    )
    r.snapshot_completed("n2", req.request, 1, 4, 3.1, claim)
    assert r.versions()["n3"] == (1, 3)
