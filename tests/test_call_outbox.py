"""The node's call-event outbox: SIPp calls through a real node leave their events in its
store, numbered; ``events`` pages them, ``events_ack`` deletes them; they survive a SIGKILL;
the outbox is bounded and counts what it drops; bad requests and strangers are refused."""

import os
import time

import pytest

from actors.bus import Bus, BusError, request
from actors.call_outbox import CallOutbox
from actors.health import DATABASE
from actors.keys import generate_keypair
from loadtest.harness import Cluster, write_users_csv
from sipcore.call_events import CallEvent
from store import call_events as outbox_store
from tests.test_proxy import call, phone


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("outbox"))
    c = Cluster(work, n=1)
    users = os.path.join(work, "users.csv")
    rows = write_users_csv(users, 50)
    c.provision(users)
    c.start()
    node = c.nodes[0]
    node.rows, node.work = rows, work
    yield c
    c.stop()


def drain(cluster, node, since=0, limit=1000):
    return cluster.control(node, "events", since=since, limit=limit)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_sipp_calls_leave_numbered_events_until_acked(cluster):
    node = cluster.nodes[0]
    uas = phone(node, "user0", "uas_answer.xml")
    try:
        res = call(node, "user0", calls=10, rate=20)
    finally:
        uas.stop()
    assert (res.successful, res.failed) == (10, 0), res.stderr
    uas = phone(node, "user1", "uas_busy.xml")
    try:
        call(node, "user1", calls=3, rate=10)
    finally:
        uas.stop()
    got = wait_for(
        lambda: (lambda r: r if sum(e["kind"] == "failure" for e in r["events"]) >= 3 else None)(
            drain(cluster, node)
        )
    )
    assert got, drain(cluster, node)
    events = got["events"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    byes = [e for e in events if e["kind"] == "bye"]
    assert len({e["call_id"] for e in byes}) == 10
    assert all(e["callee"] == "sip:user0@example.test" for e in byes)
    fails = [e for e in events if e["kind"] == "failure"]
    assert [e["status"] for e in fails] == [486] * 3
    assert got["pending"] == len(events) and got["dropped"] == 0
    page = drain(cluster, node, since=seqs[4], limit=3)["events"]
    assert [e["seq"] for e in page] == seqs[5:8]
    assert cluster.control(node, "events_ack", upto=seqs[-1]) == len(events)
    after = drain(cluster, node, since=0)
    assert after["events"] == [] and after["pending"] == 0 and after["last"] == seqs[-1]


def test_events_survive_a_sigkill_and_numbers_go_on(cluster):
    node = cluster.nodes[0]
    before = drain(cluster, node)["last"]
    uas = phone(node, "user2", "uas_answer.xml")
    try:
        res = call(node, "user2", calls=5, rate=20)
    finally:
        uas.stop()
    assert res.successful == 5, res.stderr
    kept = wait_for(
        lambda: (lambda r: r if sum(e["kind"] == "bye" for e in r["events"]) == 5 else None)(
            drain(cluster, node, since=before)
        )
    )
    assert kept
    node.kill()
    node.start()
    again = wait_for(lambda: drain(cluster, node, since=before))
    assert again["events"] == kept["events"]
    assert again["events"][0]["seq"] == before + 1
    cluster.control(node, "events_ack", upto=again["last"])


@pytest.mark.parametrize("args", [{"since": "0"}, {"since": -1}, {"limit": True}, {"limit": 1.5}])
def test_bad_events_requests_are_refused(cluster, args):
    with pytest.raises(BusError, match="non-negative integer"):
        cluster.control(cluster.nodes[0], "events", **args)


def test_acking_beyond_the_last_event_or_without_upto_is_refused(cluster):
    node = cluster.nodes[0]
    with pytest.raises(BusError, match="beyond the last"):
        cluster.control(node, "events_ack", upto=10**12)
    with pytest.raises(BusError, match="upto"):
        cluster.control(node, "events_ack")


def test_a_stranger_cannot_read_or_ack_events(cluster):
    node = cluster.nodes[0]
    member = cluster.members[node.id]
    stranger = Bus(*generate_keypair())
    try:
        for msg in ({"cmd": "events"}, {"cmd": "events_ack", "upto": 1}):
            with pytest.raises(BusError, match="no reply"):
                request(stranger, member.control, member.public_key, msg, 1.0)
    finally:
        stranger.close()


def _event(n):
    return CallEvent("attempt", f"c{n}", "sip:a@x.test", "sip:b@x.test", "udp:127.0.0.1:5")


def test_the_outbox_is_bounded_and_counts_drops(store):
    box = CallOutbox(max_rows=5)
    box.add([_event(n) for n in range(3)], 1.0)
    box.add([_event(n) for n in range(3, 7)], 2.0)
    assert box.stats["dropped"] == 2 and outbox_store.events_since(0, 100) == []
    box.flush()
    assert box.pending == 5 and box.stats["batches"] == 1
    assert [e["call_id"] for e in outbox_store.events_since(0, 100)] == [f"c{n}" for n in range(5)]
    assert box.ack({"upto": 2}) == 2
    box.add([_event(9)], 3.0)
    box.flush()
    assert box.pending == 4
    assert [e["seq"] for e in outbox_store.events_since(0, 100)] == [3, 4, 5, 6]


def test_numbers_are_never_reused_after_every_event_was_acked(store):
    box = CallOutbox(max_rows=1000)
    box.add([_event(n) for n in range(250)], 1.0)
    box.flush()
    assert box.ack({"upto": 250}) == 250 and outbox_store.pending_count() == 0
    again = CallOutbox(max_rows=10)
    again.add([_event(1)], 4.0)
    again.flush()
    assert outbox_store.events_since(0, 10)[0]["seq"] == 251
    assert CallOutbox(max_rows=10).next_seq == 252


def test_a_peer_may_not_ack(store):
    box = CallOutbox(max_rows=10, nodes=frozenset({"node2"}))
    box.add([_event(1)], 1.0)
    box.flush()
    with pytest.raises(BusError, match="the master's"):
        box.ack({"upto": 1, "from": "node2"})
    assert box.ack({"upto": 1, "from": "master"}) == 1


def test_events_a_failing_store_does_not_take_wait_for_its_next_write(store):
    box = CallOutbox(max_rows=10)
    store.execute_sql("ALTER TABLE call_events RENAME TO call_events_away")
    box.add([_event(n) for n in range(3)], 1.0)
    box.flush()
    assert box.health.failing(DATABASE) and box.stats["written"] == 0 and len(box.queued) == 3
    box.add([_event(n) for n in range(3, 12)], 2.0)
    assert box.stats["dropped"] == 2  # the bound holds while they wait
    box.flush()
    store.execute_sql("ALTER TABLE call_events_away RENAME TO call_events")
    box.flush()
    assert box.health.healthy and box.queued == [] and box.pending == 10
    assert [e["call_id"] for e in outbox_store.events_since(0, 100)] == [f"c{n}" for n in range(10)]
