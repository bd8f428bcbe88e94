"""Call detail records from two real nodes: calls placed through node1 and ended by a BYE
sent through node2 (as a phone that moved to the other SRV target) make one completed record
each, with both nodes and the call's length; busy, cancelled and unanswered calls have
those outcomes; a page stored but never acknowledged (the master
died between the two) is not counted twice; 500 SIPp calls over two nodes, each held 1 s,
give 500 records of that length;
a BYE through a node whose store was wiped mid-call closes the record begun before;
``run.py lab``'s master collects records and, killed mid-run and restarted, loses none."""

import base64
import json
import os
import signal
import time
import urllib.request

import gevent
import pytest

from actors.bus import Bus, BusError, request
from actors.config import load_config
from loadtest.answerer import AnsweringAgent
from loadtest.harness import Cluster, write_users_csv
from loadtest.sipclient import SipClient
from store import cdrs
from store import master as ms
from tests.test_lab import lab, lab_status, node_ip, run_py  # noqa: F401 (lab: the fixture)
from tests.test_master_push import SETTINGS, wait_serving
from tests.test_proxy import call, phone
from web.cdr_collector import CdrCollector
from web.cluster import ask

HOLD = 0.3
"""Seconds each call stays up between its 200 and its BYE."""
HELD = 1.0
"""Seconds SIPp holds each of the 500 calls between its ACK and its BYE."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("cdrs"))
    cluster = Cluster(work, 2, settings=SETTINGS)
    users = os.path.join(work, "users.csv")
    listed = write_users_csv(users, 50)
    cluster.provision(users)
    cluster.start()
    for node in cluster.nodes:
        node.rows, node.work = listed, work
    for node in cluster.nodes:
        assert wait_serving(cluster, node, 30.0), node.log_tail()
    ms.init_master_store(f"sqlite:///{work}/master.db")
    ms.setup("example.test")
    for m in cluster.members.values():
        ms.save_node(m.id, "", m.control, m.public_key)
    # The master's collector speaks with a key every node lets on its control endpoint.
    bus = Bus(cluster.client_public, cluster.client_secret, "master")
    agent = AnsweringAgent(ring=0.05)
    agent.start()
    try:
        yield cluster, CdrCollector(bus), agent, dict(listed)
    finally:
        agent.stop()
        bus.close()
        ms.close_master_store()
        cluster.stop()


def wait_for(predicate, timeout=5.0):
    """``predicate()`` once it is truthy; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        gevent.sleep(0.05)
    return predicate()


def collect_until(collector, done, timeout=10.0):
    """Collection rounds until ``done()`` holds; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        collector.collect_round()
        if done():
            return True
        gevent.sleep(0.1)
    return done()


def test_bye_through_the_other_node_closes_one_record(setup):
    cluster, collector, agent, rows = setup
    n1, n2 = cluster.nodes
    assert agent.register([(n1.address, n1.port)], [("user0", rows["user0"])], "example.test") == 1
    caller = SipClient(
        (n1.address, n1.port), "user1", rows["user1"], "example.test", t1=0.1, timeout=5.0
    )
    call_ids = []
    try:
        for _ in range(3):
            resp, dialog = caller.invite("sip:user0@example.test")
            assert resp.status == 200 and dialog is not None
            call_ids.append(dialog.call_id)
            gevent.sleep(HOLD)
            dialog._dest = lambda: (n2.address, n2.port)
            assert dialog.bye().status == 200
    finally:
        caller.close()

    def closed():
        found = {c["call_id"]: c for c in cdrs.search(limit=100)["cdrs"]}
        return all(
            found.get(cid, {}).get("outcome") == "completed"
            and found[cid]["answered_at"] is not None
            for cid in call_ids
        )

    assert collect_until(collector, closed), cdrs.search()
    for cid in call_ids:
        rec = next(c for c in cdrs.search(limit=100)["cdrs"] if c["call_id"] == cid)
        assert rec["nodes"] == ["node1", "node2"]
        assert (rec["caller"], rec["callee"]) == (
            "sip:user1@example.test",
            "sip:user0@example.test",
        )
        assert HOLD <= rec["duration"] < HOLD + 2
        assert rec["started_at"] <= rec["answered_at"] <= rec["ended_at"]
    for node in cluster.nodes:
        assert cluster.control(node, "events", since=0)["pending"] == 0


def test_a_page_stored_but_never_acked_is_not_counted_twice(setup):
    cluster, collector, _agent, rows = setup
    n1 = cluster.nodes[0]
    caller = SipClient(
        (n1.address, n1.port), "user2", rows["user2"], "example.test", t1=0.1, timeout=5.0
    )
    try:
        resp, dialog = caller.invite("sip:user0@example.test")
        assert resp.status == 200
        assert dialog.bye().status == 200
    finally:
        caller.close()
    node = ms.list_nodes()[0]

    def written():
        got = ask(collector.bus, node, {"cmd": "events", "since": cdrs.cursor("node1")})
        return (
            got
            if any(e["kind"] == "bye" and e["call_id"] == dialog.call_id for e in got["events"])
            else None
        )

    page = wait_for(written)
    assert page, "the call's BYE never reached node1's outbox"
    assert cdrs.store_events("node1", page["events"]) == len(page["events"])
    before = cdrs.search(limit=1000)
    assert collect_until(collector, lambda: cluster.control(n1, "events")["pending"] == 0)
    after = cdrs.search(limit=1000)
    assert after["total"] == before["total"] and after["cdrs"] == before["cdrs"]
    rec = next(c for c in after["cdrs"] if c["call_id"] == dialog.call_id)
    assert rec["outcome"] == "completed" and rec["nodes"] == ["node1"]


def test_a_peer_cannot_acknowledge_another_nodes_events(setup):
    cluster = setup[0]
    n1, n2 = cluster.nodes
    cfg2 = load_config(n2.config)
    peer = Bus(cfg2.public_key, cfg2.secret_key, n2.id)
    try:
        m1 = cluster.members[n1.id]
        with pytest.raises(BusError, match="the master's"):
            request(peer, m1.control, m1.public_key, {"cmd": "events_ack", "upto": 0}, 2.0)
    finally:
        peer.close()


def test_500_sipp_calls_over_two_nodes_give_500_records(setup):
    cluster, collector, _agent, _rows = setup
    n1, n2 = cluster.nodes
    uas = phone(n1, "user3", "uas_answer.xml")
    try:
        assert collect_until(
            collector, lambda: cluster.control(n2, "bindings", user="user3@")["total"] == 1
        )
        results = [
            call(n, "user3", calls=250, rate=100, extra=("-d", str(int(HELD * 1000))))
            for n in (n1, n2)
        ]
    finally:
        uas.stop()
    assert [(r.successful, r.failed) for r in results] == [(250, 0)] * 2, results[0].stderr

    def mine():
        return cdrs.search(callee="sip:user3@", limit=1000)

    started = time.monotonic()
    assert collect_until(collector, lambda: mine()["outcomes"]["completed"] == 500, 30.0), mine()[
        "outcomes"
    ]
    found = mine()
    assert found["total"] == 500 and len({c["call_id"] for c in found["cdrs"]}) == 500
    assert {tuple(c["nodes"]) for c in found["cdrs"]} == {("node1",), ("node2",)}
    # Each call was held HELD s between its ACK and its BYE (SIPp -d): its length, as
    # the node saw the 200 and the BYE (a busy proxy stamps a batch's messages with the
    # time it took them, so a 200 behind others may be stamped a few ms late).
    assert all(HELD - 0.05 <= c["duration"] < HELD + 1.5 for c in found["cdrs"]), sorted(
        c["duration"] for c in found["cdrs"]
    )[::50]
    assert time.monotonic() - started < 30
    for node in cluster.nodes:
        assert cluster.control(node, "events")["dropped"] == 0


def test_the_labs_master_collects_records_and_a_master_killed_mid_run_loses_none(lab):  # noqa: F811
    _proc, data, base, _out = lab
    with open(os.path.join(data, "master", "admin-password")) as f:
        auth = "Basic " + base64.b64encode(f"admin:{f.read().strip()}".encode()).decode()

    def records():
        req = urllib.request.Request(
            f"http://{base}:8080/api/cdrs?callee=bob&limit=1000", headers={"Authorization": auth}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    n1, n2 = (node_ip(base, 1), 5060), (node_ip(base, 2), 5060)
    agent = AnsweringAgent(local_ip=n1[0], ring=0.02)
    agent.start()
    caller = SipClient(
        n1, "alice", "alice-secret", "example.test", local_ip=n1[0], t1=0.1, timeout=5.0
    )
    call_ids = []

    def place(n):
        for _ in range(n):
            resp, dialog = caller.invite("sip:bob@example.test")
            assert resp.status == 200 and dialog is not None
            call_ids.append(dialog.call_id)
            dialog._dest = lambda: n2
            assert dialog.bye().status == 200

    try:
        assert agent.register([n1], [("bob", "bob-secret")], "example.test") == 1
        place(3)
        assert wait_for(lambda: (records() or {}).get("outcomes", {}).get("completed") == 3, 15), (
            records()
        )
        os.kill(lab_status(data)["master"]["pid"], signal.SIGKILL)
        place(3)
        assert run_py("lab", "restart", "master", "--data", data).returncode == 0
        assert wait_for(lambda: (records() or {}).get("outcomes", {}).get("completed") == 6, 20), (
            records()
        )
    finally:
        caller.close()
        agent.stop()
    found = records()
    assert found["total"] == 6
    assert sorted(c["call_id"] for c in found["cdrs"]) == sorted(call_ids)
    assert all(c["nodes"] == ["node1", "node2"] for c in found["cdrs"])


def test_busy_cancelled_and_unanswered_calls_over_two_nodes_have_their_outcomes(setup):
    """SIPp callees registered on node1, called through node2: a busy phone (486), calls
    the caller cancels while they ring, and calls to a user with no phone (480) give one
    record each with that outcome and status, none with a length."""
    cluster, collector, _agent, _rows = setup
    n1, n2 = cluster.nodes
    busy, ringing = phone(n1, "user6", "uas_busy.xml"), phone(n1, "user7", "uas_ring_cancel.xml")
    try:
        assert collect_until(
            collector,
            lambda: all(
                cluster.control(n2, "bindings", user=f"{u}@")["total"] == 1
                for u in ("user6", "user7")
            ),
        )
        call(n2, "user6", calls=3, rate=10)
        cancelled = call(n2, "user7", "uac_cancel.xml", calls=3, rate=10)
        assert cancelled.successful == 3, cancelled.stderr
        call(n2, "user8", calls=3, rate=10)
    finally:
        busy.stop()
        ringing.stop()
    want = {"user6": ("busy", 486), "user7": ("cancelled", None), "user8": ("no answer", 480)}

    def outcomes():
        return {
            u: {
                (c["outcome"], c["status"], c["duration"])
                for c in cdrs.search(callee=f"sip:{u}@", limit=100)["cdrs"]
            }
            for u in want
        }

    assert collect_until(
        collector,
        lambda: all(
            cdrs.search(callee=f"sip:{u}@")["outcomes"][o] == 3 for u, (o, _s) in want.items()
        ),
    ), outcomes()
    assert outcomes() == {u: {(o, status, None)} for u, (o, status) in want.items()}
    assert all(cdrs.search(callee=f"sip:{u}@")["total"] == 3 for u in want)


def test_a_bye_after_its_nodes_store_was_wiped_closes_the_record_begun_before(setup):
    """node2's store is wiped mid-call (stopped, database deleted, users imported again,
    restarted and synced from node1): its outbox numbers events from 1 again, the
    collector restarts node2's cursor, and the BYE, seq 1, folds into the Call-ID's
    record made before the wipe: one completed record with its length."""
    cluster, collector, _agent, rows = setup
    n2 = cluster.nodes[1]
    caller = SipClient(
        (n2.address, n2.port), "user5", rows["user5"], "example.test", t1=0.1, timeout=5.0
    )
    try:
        resp, dialog = caller.invite("sip:user0@example.test")
        assert resp.status == 200

        def record():
            return next(
                (
                    c
                    for c in cdrs.search(caller="user5", limit=1000)["cdrs"]
                    if c["call_id"] == dialog.call_id
                ),
                None,
            )

        assert collect_until(collector, lambda: (record() or {}).get("answered_at"))
        assert collect_until(collector, lambda: cluster.control(n2, "events")["pending"] == 0)
        before = cdrs.cursor("node2")
        assert before > 1
        n2.stop()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{n2.dir}/tandem.db{suffix}"):
                os.remove(f"{n2.dir}/tandem.db{suffix}")
        imported = n2.run_cli("user", "import", os.path.join(n2.work, "users.csv"))
        assert imported.returncode == 0, imported.stderr
        n2.start()
        assert wait_serving(cluster, n2, 30.0), n2.log_tail()
        assert dialog.bye().status == 200
    finally:
        caller.close()
    assert collect_until(collector, lambda: record()["outcome"] == "completed"), record()
    rec = record()
    assert rec["nodes"] == ["node2"] and rec["duration"] is not None and rec["duration"] >= 0
    assert rec["started_at"] <= rec["answered_at"] <= rec["ended_at"]
    assert [c["call_id"] for c in cdrs.search(limit=10_000)["cdrs"]].count(dialog.call_id) == 1
    assert cdrs.cursor("node2") < before, "node2's cursor restarted with its new store"


def test_a_call_whose_first_node_dies_mid_call_still_closes(setup):
    cluster, collector, _agent, rows = setup
    n1, n2 = cluster.nodes
    caller = SipClient(
        (n1.address, n1.port), "user4", rows["user4"], "example.test", t1=0.1, timeout=5.0
    )
    try:
        resp, dialog = caller.invite("sip:user0@example.test")
        assert resp.status == 200

        def answered():
            return any(
                c["call_id"] == dialog.call_id and c["answered_at"]
                for c in cdrs.search(callee="user0", limit=1000)["cdrs"]
            )

        assert collect_until(collector, answered)
        n1.kill()
        dialog._dest = lambda: (n2.address, n2.port)
        assert dialog.bye().status == 200
    finally:
        caller.close()

    def record():
        return next(
            (
                c
                for c in cdrs.search(callee="user0", limit=1000)["cdrs"]
                if c["call_id"] == dialog.call_id
            ),
            None,
        )

    assert collect_until(collector, lambda: record()["outcome"] == "completed")
    rec = record()
    assert rec["nodes"] == ["node1", "node2"] and rec["duration"] is not None
    assert "error" in ask(collector.bus, ms.list_nodes()[0], {"cmd": "events"}, 0.5)
