"""The location table: expiry by a fake clock, lookup order, the merge rule, restore, records."""

import dataclasses
import itertools
import json

import pytest

from sipcore.location import Binding, Location, Sequencer, is_newer, tombstone

AOR = "sip:alice@example.test"
BOB = "sip:bob@example.test"


def bind(
    key="sip:alice@192.0.2.10", aor=AOR, expires_at=1000.0, call_id="c1", cseq=1, **kw
) -> Binding:
    kw.setdefault("origin", "n1")
    return Binding(
        aor=aor, key=key, contact=key, expires_at=expires_at, call_id=call_id, cseq=cseq, **kw
    )


def snapshot(loc: Location) -> dict:
    return {aor: dict(per) for aor, per in loc.table.items()}


# -- put, get, lookup ------------------------------------------------------------------


def test_put_get_and_counts():
    loc = Location()
    a, b, c = bind("k1"), bind("k2", expires_at=500.0), bind("k3", aor=BOB)
    for x in (a, b, c):
        assert loc.put(x) is None
    assert loc.get(AOR) == {"k1": a, "k2": b} and loc.get("sip:nobody@example.test") == {}
    assert len(loc) == 3 and sorted(x.key for x in loc.all()) == ["k1", "k2", "k3"]
    assert loc.live_count(100.0) == 3 and loc.live_count(500.0) == 2
    a2 = bind("k1", cseq=2, expires_at=2000.0)
    assert loc.put(a2) is a and loc.get(AOR)["k1"] is a2 and len(loc) == 3
    loc.put(tombstone(c, cseq=2))
    assert loc.live_count(100.0) == 2 and len(loc) == 3


def test_lookup_orders_by_q_and_skips_tombstones_and_expired():
    loc = Location()
    loc.put(bind("low", q=0.1))
    loc.put(bind("none"))
    loc.put(bind("mid", q=0.5))
    loc.put(bind("top", q=1.0))
    loc.put(bind("gone", q=0.9, expires_at=100.0))
    loc.put(tombstone(bind("dead", q=0.8)))
    assert [b.key for b in loc.lookup(AOR, 50.0)] == ["none", "top", "gone", "mid", "low"]
    assert [b.key for b in loc.lookup(AOR, 100.0)] == ["none", "top", "mid", "low"]
    assert loc.lookup(BOB, 50.0) == []


# -- expiry without any request ------------------------------------------------------------


def test_expire_drops_bindings_and_tombstones_at_their_time():
    loc = Location()
    a = bind("a", expires_at=100.0)
    t = tombstone(bind("t", expires_at=150.0))
    c = bind("c", aor=BOB, expires_at=200.0)
    for x in (c, t, a):
        loc.put(x)
    assert loc.next_expiry() == 100.0
    assert loc.expire(99.999) == []
    assert loc.expire(100.0) == [a]
    assert loc.next_expiry() == 150.0
    assert loc.expire(199.0) == [t]
    assert AOR not in loc.table
    assert loc.expire(1e12) == [c]
    assert loc.table == {} and loc.next_expiry() is None and loc.expire(1e12) == []


def test_expire_skips_heap_entries_of_refreshed_bindings():
    loc = Location()
    loc.put(bind(expires_at=100.0))
    later = bind(expires_at=300.0, cseq=2)
    loc.put(later)
    assert loc.expire(150.0) == []
    assert loc.lookup(AOR, 150.0) == [later]
    earlier = bind(expires_at=120.0, cseq=3)
    loc.put(earlier)
    assert loc.expire(150.0) == [earlier]
    assert loc.expire(400.0) == [] and len(loc) == 0


def test_a_tombstone_keeps_the_expiry_and_its_heap_entry():
    loc = Location()
    b = bind(expires_at=100.0)
    loc.put(b)
    heap = len(loc._heap)
    t = tombstone(b, cseq=2, updated_at=50.0)
    assert t.deleted and t.expires_at == 100.0 and not b.deleted and b.cseq == 1
    loc.put(t)
    assert len(loc._heap) == heap
    assert loc.expire(100.0) == [t]


def test_expire_many_bindings_in_time_order():
    loc = Location()
    for i in range(100):
        loc.put(bind(f"k{i}", aor=f"sip:u{i % 7}@example.test", expires_at=float((i * 37) % 100)))
    gone = []
    for now in range(0, 101, 10):
        batch = loc.expire(float(now))
        assert all(b.expires_at <= now for b in batch)
        assert all(b.expires_at > now for b in loc.all())
        gone += batch
    assert len(gone) == 100 and loc.table == {}


# -- merge and is_newer ---------------------------------------------------------------------


def test_merge_new_and_duplicate():
    loc = Location()
    b = bind(updated_at=10.0, seq=1)
    assert loc.merge(b) is True
    state = snapshot(loc)
    assert loc.merge(b) is False
    assert loc.merge(bind(updated_at=10.0, seq=1)) is False
    assert snapshot(loc) == state


def test_cseq_decides_within_a_call_id():
    old = bind(cseq=5, updated_at=100.0, origin="z")
    assert is_newer(bind(cseq=6, updated_at=1.0, origin="a"), old)
    assert not is_newer(bind(cseq=4, updated_at=999.0, origin="z"), old)
    loc = Location()
    loc.put(old)
    assert loc.merge(bind(cseq=4, updated_at=999.0, expires_at=9999.0)) is False
    assert loc.get(AOR)[old.key] is old


def test_time_then_origin_then_epoch_then_seq_across_call_ids():
    old = bind(call_id="a", cseq=9, updated_at=100.0, origin="n2", epoch=2, seq=50)
    assert is_newer(bind(call_id="b", cseq=1, updated_at=100.5), old)
    assert not is_newer(bind(call_id="b", cseq=99, updated_at=99.0, origin="n9"), old)
    assert is_newer(bind(call_id="b", updated_at=100.0, origin="n3"), old)
    assert not is_newer(bind(call_id="b", updated_at=100.0, origin="n1", epoch=9, seq=99), old)
    assert is_newer(bind(call_id="b", updated_at=100.0, origin="n2", epoch=3, seq=1), old)
    assert not is_newer(bind(call_id="b", updated_at=100.0, origin="n2", epoch=1, seq=99), old)
    assert is_newer(bind(call_id="b", updated_at=100.0, origin="n2", epoch=2, seq=51), old)
    assert not is_newer(bind(call_id="b", updated_at=100.0, origin="n2", epoch=2, seq=50), old)
    assert is_newer(old, None)


def test_an_older_update_never_revives_a_tombstone():
    loc = Location()
    live = bind(cseq=1, updated_at=10.0, seq=1)
    dead = tombstone(live, cseq=2, updated_at=20.0, seq=2)
    assert loc.merge(dead) is True
    assert loc.merge(live) is False
    assert loc.get(AOR)[live.key].deleted
    assert loc.merge(bind(call_id="other", updated_at=15.0)) is False
    assert loc.merge(bind(call_id="other", updated_at=25.0)) is True


def test_merge_converges_whatever_the_order():
    key = "sip:alice@192.0.2.10"
    versions = [
        bind(key, cseq=1, updated_at=10.0, origin="n1", seq=1, expires_at=500.0),
        bind(key, cseq=2, updated_at=11.0, origin="n1", seq=2, expires_at=600.0),
        tombstone(bind(key, cseq=3, updated_at=12.0, origin="n1", seq=3, expires_at=600.0)),
        bind(key, call_id="c2", cseq=1, updated_at=13.0, origin="n2", seq=1, expires_at=700.0),
        bind(key, call_id="c2", cseq=2, updated_at=13.0, origin="n2", seq=2, expires_at=800.0),
    ]
    for order in itertools.permutations(versions):
        loc = Location()
        for v in order + order:
            loc.merge(v)
        assert loc.get(AOR)[key] is versions[-1]


# -- restore after a failed commit ------------------------------------------------------------


def test_restore_drops_a_new_key_and_its_aor():
    loc = Location()
    b = bind()
    old = loc.put(b)
    loc.restore(b.aor, b.key, old)
    assert loc.table == {} and loc.lookup(AOR, 0.0) == []
    assert loc.expire(1e9) == []


def test_restore_puts_back_the_replaced_version_with_its_expiry():
    loc = Location()
    other = bind("other", expires_at=5000.0)
    first = bind(expires_at=100.0)
    loc.put(other)
    loc.put(first)
    refreshed = bind(expires_at=3600.0, cseq=2)
    undo = [(refreshed.aor, refreshed.key, loc.put(refreshed))]
    added = bind("new", expires_at=3600.0)
    undo.append((added.aor, added.key, loc.put(added)))
    for aor, key, old in reversed(undo):
        loc.restore(aor, key, old)
    assert loc.get(AOR) == {"other": other, first.key: first}
    assert loc.expire(100.0) == [first]
    assert loc.expire(4000.0) == [] and loc.get(AOR) == {"other": other}


def test_restore_undoes_a_tombstone():
    loc = Location()
    b = bind(expires_at=100.0)
    loc.put(b)
    old = loc.put(tombstone(b, cseq=2))
    loc.restore(b.aor, b.key, old)
    assert loc.lookup(AOR, 50.0) == [b]
    assert loc.expire(100.0) == [b]


def test_restore_the_same_key_twice_in_one_batch():
    loc = Location()
    b1 = bind(expires_at=100.0)
    loc.put(b1)
    undo = []
    for v in (bind(expires_at=200.0, cseq=2), bind(expires_at=300.0, cseq=3)):
        undo.append((v.aor, v.key, loc.put(v)))
    for aor, key, old in reversed(undo):
        loc.restore(aor, key, old)
    assert loc.get(AOR)[b1.key] is b1
    assert loc.expire(150.0) == [b1]


# -- records --------------------------------------------------------------------------------------


def record(b: Binding) -> dict:
    """``b`` as a database row reads: every field, ``path`` as JSON text."""
    return {**dataclasses.asdict(b), "path": json.dumps(b.path)}


@pytest.mark.parametrize(
    "b",
    [
        bind(),
        Binding(
            AOR,
            "<urn:uuid:1>;reg-id=1",
            "sip:alice@192.0.2.10:5060;ob",
            1234.5,
            "c@x",
            7,
            q=0.5,
            path=["<sip:edge1;lr>", "<sip:edge2;lr>"],
            instance="<urn:uuid:1>",
            reg_id=1,
            received="udp:192.0.2.10:5060",
            user_agent="phone/1",
            origin="n2",
            epoch=3,
            seq=99,
            updated_at=1200.25,
            deleted=True,
        ),
    ],
)
def test_record_round_trip(b):
    rec = record(b)
    assert isinstance(rec["path"], str) and json.loads(rec["path"]) == b.path
    assert Binding.from_record(rec) == b
    assert Binding.from_record(json.loads(json.dumps(rec))) == b


def test_from_record_of_a_database_row():
    row = record(bind(path=["<sip:e;lr>"]))
    row.update(id=42, deleted=0)
    b = Binding.from_record(row)
    assert b.deleted is False and b.path == ["<sip:e;lr>"]
    assert Binding.from_record({**row, "deleted": 1}).deleted is True
    assert Binding.from_record({**row, "path": None}).path == []
    assert Binding.from_record({**row, "path": ""}).path == []
    assert Binding.from_record({**row, "path": ["<sip:x;lr>"]}).path == ["<sip:x;lr>"]


def test_record_path_is_a_copy():
    b = bind(path=["<sip:e;lr>"])
    rec = record(b)
    c = Binding.from_record(rec)
    c.path.append("x")
    assert b.path == ["<sip:e;lr>"]


# -- sequencer ------------------------------------------------------------------------------------


def test_sequencer():
    s = Sequencer(epoch=7)
    assert s.peek() == 0
    assert [s.next() for _ in range(3)] == [(7, 1), (7, 2), (7, 3)]
    before = 1
    s.rewind(before)
    assert s.peek() == 1 and s.next() == (7, 2)
    assert Sequencer(8, seq=41).next() == (8, 42)
