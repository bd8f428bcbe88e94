"""Per-source token buckets and the log limiter, on a fake clock."""

import pytest

from sipcore.ratelimit import LogLimiter, SourceLimiter


def test_bucket_allows_the_burst_then_the_rate():
    lim = SourceLimiter(rate=10, burst=20)
    assert sum(lim.allow("a", 0.0) for _ in range(50)) == 20
    assert lim.dropped == 30
    assert sum(lim.allow("a", 1.0) for _ in range(50)) == 10, "one second refills ten"
    assert sum(lim.allow("b", 1.0) for _ in range(50)) == 20, "another source has its own bucket"
    assert sum(lim.allow("a", 100.0) for _ in range(50)) == 20, "never more than the burst"


def test_flooder_does_not_starve_a_quiet_source():
    lim = SourceLimiter(rate=200, burst=400)
    quiet_ok = 0
    for ms in range(2000):
        now = ms / 1000
        for _ in range(50):
            lim.allow("flood", now)
        if ms % 100 == 0:
            quiet_ok += lim.allow("phone", now)
    assert quiet_ok == 20
    assert lim.dropped > 90_000


def test_table_bounded_under_many_sources():
    lim = SourceLimiter(rate=1, burst=2, max_sources=1000)
    for i in range(50_000):
        lim.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i / 1e6)
    assert len(lim) <= 1000


def test_bad_settings_refused():
    with pytest.raises(ValueError):
        SourceLimiter(0, 10)
    with pytest.raises(ValueError):
        SourceLimiter(1, 0)


def test_log_limiter_lets_a_few_lines_through_and_counts_the_rest():
    log = LogLimiter(rate=2, burst=3)
    got = [log.allow("malformed", 0.0) for _ in range(10)]
    assert got[:3] == [0, 0, 0] and got[3:] == [None] * 7
    assert log.allow("other", 0.0) == 0
    assert log.allow("malformed", 0.5) == 7, "the next line tells how many were dropped"
    assert LogLimiter(rate=0).allow("x", 0.0) == 0


def test_a_shared_bucket_is_one_budget_for_two_processes():
    from sipcore.ratelimit import SharedSourceLimiter

    buffer = bytearray(SharedSourceLimiter.size(64))
    node, front = SharedSourceLimiter(buffer, 10, 20), SharedSourceLimiter(buffer, 10, 20)
    assert sum(lim.allow("a", 0.0) for _ in range(25) for lim in (node, front)) == 20
    assert sum(lim.allow("a", 1.0) for _ in range(25) for lim in (node, front)) == 10
    assert sum(front.allow("b", 1.0) for _ in range(30)) == 20, "another source, another bucket"
    assert sum(node.allow("a", 100.0) for _ in range(50)) == 20, "never more than the burst"


def test_a_shared_table_stays_its_size_under_many_sources():
    from sipcore.ratelimit import SharedSourceLimiter

    buffer = bytearray(SharedSourceLimiter.size(128))
    lim = SharedSourceLimiter(buffer, 1, 2)
    for i in range(20_000):
        lim.allow(f"10.0.{i >> 8 & 255}.{i & 255}", i / 1e6)
    assert len(buffer) == SharedSourceLimiter.size(128)
    # A source whose slot another took starts again with a full bucket, never an empty one.
    assert lim.allow("10.0.0.1", 1.0)
