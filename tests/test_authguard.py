"""The guard against password guessing, on a fake clock."""

from sipcore.authguard import SOURCE, USER, AuthGuard, Ban, GuardSettings


def guard(**kw) -> AuthGuard:
    return AuthGuard(
        GuardSettings(
            **{"max_failures": 3, "max_user_failures": 5, "window": 60.0, "ban_time": 100.0, **kw}
        )
    )


def test_source_banned_past_threshold_in_window_then_released():
    g = guard()
    for i in range(2):
        g.failed("10.0.0.1", f"u{i}", 0.0)
    assert not g.refused("10.0.0.1", "anyone", 1.0)
    g.failed("10.0.0.1", "u9", 1.0)
    assert g.refused("10.0.0.1", "anyone", 2.0)
    assert not g.refused("10.0.0.2", "anyone", 2.0)
    assert [b.key for b in g.take_new()] == ["10.0.0.1"] and g.take_new() == []
    assert not g.refused("10.0.0.1", "anyone", 101.5)
    assert g.bans(101.5) == []


def test_failures_outside_the_window_do_not_add_up():
    g = guard()
    for t in (0.0, 30.0, 61.0, 90.0, 122.0):
        g.failed("10.0.0.1", "u", t)
    assert not g.refused("10.0.0.1", "x", 123.0)


def test_user_locked_except_for_sources_that_knew_the_password():
    g = guard(max_failures=0)
    g.succeeded("10.0.0.7", "alice", 0.0)
    for i in range(5):
        g.failed(f"198.51.100.{i}", "alice", 1.0)
    assert g.refused("198.51.100.99", "alice", 2.0)
    assert not g.refused("10.0.0.7", "alice", 2.0)
    assert not g.refused("198.51.100.99", "bob", 2.0)
    # Unknown user names lock the same way: a lockout tells nothing of who exists.
    for i in range(5):
        g.failed(f"198.51.100.{i}", "nobody", 1.0)
    assert g.refused("198.51.100.99", "nobody", 2.0)


def test_peer_bans_applied_listed_and_lifted():
    g = guard()
    assert g.add(Ban(SOURCE, "203.0.113.5", 50.0, "node2"), 10.0)
    assert not g.add(Ban(SOURCE, "203.0.113.5", 40.0, "node3"), 10.0), (
        "a shorter ban changes nothing"
    )
    assert not g.add(Ban(SOURCE, "203.0.113.6", 5.0), 10.0), "an ended ban is not taken"
    assert not g.add(Ban("weird", "x", 50.0), 10.0)
    assert g.refused("203.0.113.5", "u", 11.0)
    assert g.take_new() == [], "a peer's ban is not shared again"
    assert [(b.kind, b.key, b.origin) for b in g.bans(11.0)] == [(SOURCE, "203.0.113.5", "node2")]
    assert g.lift(SOURCE, "203.0.113.5") and not g.lift(SOURCE, "203.0.113.5")
    assert not g.refused("203.0.113.5", "u", 11.0)
    assert not g.lift(USER, "nobody")


def test_tables_are_bounded_under_a_flood_of_sources():
    g = guard(max_entries=100, max_failures=2)
    for i in range(10_000):
        g.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"user{i}", float(i % 50))
        g.succeeded(f"10.9.{i // 256 % 256}.{i % 256}", f"user{i}", float(i % 50))
    assert len(g._failures) <= 100 and len(g._bans) <= 100 and len(g._known) <= 100
    assert len(g.take_new()) <= 100


def test_bans_on_the_wire_round_trip_and_malformed_ones_refused():
    import pytest

    from sipcore.replication_wire import MAX_BANS, WireError, decode_bans, encode_bans

    g = guard()
    g.add(Ban(SOURCE, "203.0.113.9", 500.0), 10.0, share=True)
    g.lift(SOURCE, "203.0.113.9")
    body = encode_bans("node1", g.take_new())
    assert len(body) < 120, "small on the wire"
    node, bans = decode_bans(body)
    assert node == "node1" and bans == [
        (SOURCE, "203.0.113.9", 500.0),
        (SOURCE, "203.0.113.9", 0.0),
    ]
    peer = guard()
    assert peer.apply_peer(node, bans[:1], 10.0) == 1 and peer.refused("203.0.113.9", "u", 11.0)
    assert peer.apply_peer(node, bans[1:], 10.0) == 1 and not peer.refused("203.0.113.9", "u", 11.0)
    assert peer.take_new() == [], "a peer's bans and lifts are not shared again"
    for bad in (
        b'{"v":2,"id":"n","b":[]}',
        b'{"v":1,"id":"n","b":[["x","k",1]]}',
        b'{"v":1,"id":"n","b":[["s","",1]]}',
        b'{"v":1,"id":"n","b":[["s","k",true]]}',
        b'{"v":1,"id":"n","b":[["s","k"]]}',
        b"[]",
        b"\xff",
        b'{"v":1,"id":"n","b":[["s","' + b"k" * 300 + b'",1]]}',
        ('{"v":1,"id":"n","b":[' + ",".join(['["s","k",1]'] * (MAX_BANS + 1)) + "]}").encode(),
    ):
        with pytest.raises(WireError):
            decode_bans(bad)
