"""Call detail records on the master: events folded per Call-ID in any order and once only,
outcomes, the bound, and ``/api/cdrs``, the calls page and the CSV through Flask's client."""

import csv
import io
import time

import pytest

from store import cdrs
from store import master as ms
from tests.test_web import PASSWORD, Poked, basic, login
from web import create_app

A, B = "sip:user1@example.test", "sip:user2@example.test"


@pytest.fixture
def master(tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    yield
    ms.close_master_store()


def ev(seq, kind, at, call_id="c1", status=None, caller=A, callee=B):
    return {
        "seq": seq,
        "at": at,
        "kind": kind,
        "call_id": call_id,
        "caller": caller,
        "callee": callee,
        "source": "udp:127.0.0.1:5070",
        "status": status,
    }


def one(call_id="c1"):
    found = [c for c in cdrs.search(limit=1000)["cdrs"] if c["call_id"] == call_id]
    assert len(found) == 1
    return found[0]


def test_a_call_whose_bye_passed_another_node_first_is_one_completed_record(master):
    assert cdrs.store_events("node2", [ev(1, "bye", 130.0)]) == 1
    assert one()["outcome"] == "completed" and one()["duration"] is None
    cdrs.store_events(
        "node1",
        [ev(1, "attempt", 100.0), ev(2, "ringing", 101.0, status=180), ev(3, "answer", 105.5)],
    )
    rec = one()
    assert (rec["started_at"], rec["answered_at"], rec["ended_at"]) == (100.0, 105.5, 130.0)
    assert rec["duration"] == 24.5 and rec["nodes"] == ["node1", "node2"]
    assert (rec["caller"], rec["callee"], rec["outcome"]) == (A, B, "completed")


def test_events_seen_twice_count_once(master):
    page = [ev(1, "attempt", 10.0), ev(2, "answer", 11.0), ev(3, "bye", 20.0)]
    assert cdrs.store_events("node1", page) == 3
    assert cdrs.store_events("node1", page) == 0
    assert cdrs.store_events("node1", page[1:] + [ev(4, "attempt", 30.0, "c2")]) == 1
    assert cdrs.cursor("node1") == 4 and cdrs.cursor("node2") == 0
    assert cdrs.search()["total"] == 2 and one()["duration"] == 9.0


@pytest.mark.parametrize(
    "events,outcome,status",
    [
        ([("failure", 486)], "busy", 486),
        ([("failure", 600)], "busy", 600),
        ([("failure", 408)], "no answer", 408),
        ([("failure", 480)], "no answer", 480),
        ([("cancel", None), ("failure", 487)], "cancelled", 487),
        ([("failure", 503)], "failed", 503),
        ([], "in progress", None),
        ([("answer", None)], "in progress", None),
    ],
)
def test_outcomes(master, events, outcome, status):
    cdrs.store_events(
        "node1",
        [ev(1, "attempt", 1.0)]
        + [ev(k, kind, 1.0 + k, status=st) for k, (kind, st) in enumerate(events, 2)],
    )
    rec = one()
    assert (rec["outcome"], rec["status"]) == (outcome, status)
    assert (rec["ended_at"] is None) == (outcome == "in progress")


def test_a_failed_reinvite_does_not_end_an_answered_call(master):
    cdrs.store_events(
        "node1",
        [
            ev(1, "attempt", 1.0),
            ev(2, "answer", 2.0),
            ev(3, "failure", 3.0, status=491),
            ev(4, "bye", 9.0),
        ],
    )
    assert (one()["outcome"], one()["duration"]) == ("completed", 7.0)


def test_records_are_bounded_oldest_first(master, monkeypatch):
    monkeypatch.setattr(cdrs, "MAX_RECORDS", 3)
    cdrs.store_events("node1", [ev(k, "attempt", float(k), f"c{k}") for k in range(1, 6)])
    assert sorted(c["call_id"] for c in cdrs.search()["cdrs"]) == ["c3", "c4", "c5"]


def test_a_node_with_a_new_store_starts_its_cursor_again(master):
    cdrs.store_events("node1", [ev(7, "attempt", 1.0)])
    cdrs.reset_cursor("node1")
    assert cdrs.store_events("node1", [ev(1, "attempt", 2.0, "c9")]) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "pwned"},
        {"call_id": ""},
        {"call_id": "x" * 513},
        {"caller": 5},
        {"at": "now"},
        {"at": True},
        {"at": 1e300},
        {"status": 99},
        {"status": "486"},
        {"status": 1000},
    ],
)
def test_forged_events_are_skipped_and_do_not_stall_the_node(master, bad):
    assert (
        cdrs.store_events(
            "node1", [{**ev(1, "attempt", 1.0, "x"), **bad}, ev(2, "attempt", 2.0, "good")]
        )
        == 1
    )
    assert [c["call_id"] for c in cdrs.search()["cdrs"]] == ["good"]
    assert cdrs.cursor("node1") == 2
    assert cdrs.store_events("node1", ["junk", {"seq": True}, {"seq": "3"}]) == 0


@pytest.fixture
def app(master):
    cdrs.store_events(
        "node1",
        [
            ev(1, "attempt", 1000.0, "ok"),
            ev(2, "answer", 1001.0, "ok"),
            ev(3, "bye", 1031.0, "ok"),
            ev(4, "attempt", 2000.0, "busy", caller=B, callee=A),
            ev(5, "failure", 2001.0, "busy", status=486, caller=B, callee=A),
            ev(6, "attempt", 3000.0, "=evil", caller='sip:=HYPERLINK("x")@example.test'),
            ev(
                7, "failure", 3001.0, "=evil", status=503, caller='sip:=HYPERLINK("x")@example.test'
            ),
        ],
    )
    return create_app({"SECRET_KEY": "test-key"}, Poked())


def test_api_cdrs_filters(app):
    c = app.test_client()
    r = c.get("/api/cdrs", headers=basic())
    assert r.status_code == 200
    body = r.get_json()
    assert [x["call_id"] for x in body["cdrs"]] == ["=evil", "busy", "ok"]
    assert body["outcomes"]["completed"] == 1 and body["outcomes"]["busy"] == 1
    assert [
        x["call_id"] for x in c.get("/api/cdrs?outcome=busy", headers=basic()).get_json()["cdrs"]
    ] == ["busy"]
    assert [
        x["call_id"] for x in c.get("/api/cdrs?caller=user2", headers=basic()).get_json()["cdrs"]
    ] == ["busy"]
    assert [
        x["call_id"] for x in c.get("/api/cdrs?callee=user1", headers=basic()).get_json()["cdrs"]
    ] == ["busy"]
    got = c.get("/api/cdrs?since=1500&until=2500", headers=basic()).get_json()
    assert [x["call_id"] for x in got["cdrs"]] == ["busy"] and got["total"] == 1
    ok = c.get("/api/cdrs?outcome=completed", headers=basic()).get_json()["cdrs"][0]
    assert ok["duration"] == 30.0 and ok["nodes"] == ["node1"]


@pytest.mark.parametrize(
    "query",
    ["since=yesterday", "until=1e300", "outcome=won", "limit=-1", "offset=x", "caller=" + "a" * 65],
)
def test_api_cdrs_refuses_bad_filters(app, query):
    r = app.test_client().get("/api/cdrs?" + query, headers=basic())
    assert r.status_code == 400 and "error" in r.get_json()


def test_api_cdrs_needs_an_admin(app):
    c = app.test_client()
    assert c.get("/api/cdrs").status_code == 401
    assert c.get("/api/cdrs", headers=basic("wrong")).status_code == 401
    assert c.get("/api/cdrs?format=csv", headers=basic(user="nobody")).status_code == 401
    for path in ("/calls", "/calls.csv"):
        r = c.get(path)
        assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_csv_export_defuses_formulas(app):
    c = app.test_client()
    r = c.get("/api/cdrs?format=csv", headers=basic())
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [row["call_id"] for row in rows] == ["'=evil", "busy", "ok"]
    assert rows[2]["duration"] == "30.0" and rows[2]["nodes"] == "node1"
    login(c)
    page_csv = c.get("/calls.csv?outcome=failed").get_data(as_text=True)
    assert len(page_csv.strip().splitlines()) == 2


def test_calls_page_shows_totals_records_and_escapes(app):
    c = app.test_client()
    login(c)
    html = c.get("/calls").get_data(as_text=True)
    assert "3 calls" in html and "completed: 1" in html and "busy (486)" in html
    assert "=HYPERLINK(&#34;x&#34;)" in html and '=HYPERLINK("x")' not in html
    assert c.get("/calls?since=nope").status_code == 400
    assert 'id="calls"' in c.get("/calls?outcome=busy").get_data(as_text=True)


def test_per_node_answer_seizure_ratio_and_average_call_length(master):
    now = time.time()
    cdrs.store_events(
        "node1",
        [
            ev(1, "attempt", now, "a"),
            ev(2, "answer", now + 1, "a"),
            ev(3, "bye", now + 11, "a"),
            ev(4, "attempt", now, "b"),
            ev(5, "failure", now + 1, "b", status=486),
            ev(6, "attempt", now - 90000, "old"),
        ],
    )
    cdrs.store_events("node2", [ev(1, "bye", now + 11, "a")])
    assert cdrs.per_node(now - 86400) == {
        "node1": {"calls": 2, "answered": 1, "asr": 0.5, "acl": 10.0},
        "node2": {"calls": 1, "answered": 1, "asr": 1.0, "acl": 10.0},
    }
    app = create_app({"SECRET_KEY": "k"}, Poked())
    c = app.test_client()
    assert c.get("/api/cdrs/nodes").status_code == 401
    assert c.get("/api/cdrs/nodes", headers=basic()).get_json()["nodes"]["node1"]["asr"] == 0.5
    login(c)
    html = c.get("/calls").get_data(as_text=True)
    assert 'id="per-node"' in html and "50%" in html


def test_an_emergency_event_marks_the_record(master):
    events = [
        {
            "seq": 1,
            "at": 100.0,
            "kind": "attempt",
            "call_id": "e1",
            "caller": "sip:a@x",
            "callee": "sip:911@x",
            "source": "udp:1.2.3.4:5060",
            "status": None,
        },
        {
            "seq": 2,
            "at": 100.0,
            "kind": "emergency",
            "call_id": "e1",
            "caller": "sip:a@x",
            "callee": "sip:911@x",
            "source": "udp:1.2.3.4:5060",
            "status": None,
        },
        {
            "seq": 3,
            "at": 100.0,
            "kind": "attempt",
            "call_id": "n1",
            "caller": "sip:a@x",
            "callee": "sip:b@x",
            "source": "udp:1.2.3.4:5060",
            "status": None,
        },
    ]
    assert cdrs.store_events("node1", events) == 3
    assert cdrs.store_events("node1", events) == 0
    found = {c["call_id"]: c["emergency"] for c in cdrs.search()["cdrs"]}
    assert found == {"e1": True, "n1": False}
    assert "emergency" in cdrs.to_csv(cdrs.search()["cdrs"]).splitlines()[0]


def test_a_call_a_survivor_ended_after_its_node_died_is_a_node_failure_closed_once(master):
    cdrs.store_events("node1", [ev(1, "attempt", 100.0), ev(2, "answer", 102.0, status=200)])
    cdrs.store_events("node2", [ev(1, "lost", 140.0), ev(2, "lost", 141.0)])
    rec = one()
    assert (rec["outcome"], rec["ended_at"], rec["duration"]) == ("node failure", 140.0, 38.0)
    assert rec["nodes"] == ["node1", "node2"]
    # A phone's BYE seen anyway (through a third node) wins: the call ended normally.
    cdrs.store_events("node3", [ev(1, "bye", 139.0)])
    assert (one()["outcome"], one()["ended_at"]) == ("completed", 139.0)
    assert cdrs.search(outcome="node failure")["total"] == 0
