"""The dialog records (``sipcore.dialogs``) with a fake clock, their wire format under
hostile input, the requests a survivor sends, and the proxy core making records."""

import json

import pytest

from sipcore.call_events import ANSWER
from sipcore.dialogs import (
    BRANCH_PREFIX,
    MAX_ROWS,
    Dialog,
    DialogTable,
    DialogWireError,
    NewerDialogMessage,
    adopter,
    bye_request,
    decode_dialogs,
    encode_dialogs,
    parse_dest,
    probe_request,
)
from sipcore.message import parse_message
from sipcore.proxy import ProxySettings
from sipcore.replication_wire import WireError


def dialog(call_id: str = "c1", owner: str = "node1", answered: float = 100.0) -> Dialog:
    return Dialog(
        call_id,
        "ft",
        "tt",
        "sip:alice@example.test",
        "sip:bob@example.test",
        "sip:alice@10.0.0.1:5070",
        "sip:bob@10.0.0.2:5080",
        "udp:10.0.0.1:5070",
        "udp:10.0.0.2:5080",
        "<sip:example.test;lr;dlg=1>",
        2,
        answered,
        answered,
        owner,
    )


def test_a_record_lives_from_its_answer_to_its_bye_with_its_start_time():
    t = DialogTable("node1")
    t.attempt("c1", 90.0)
    d = t.answered(dialog())
    assert (d.started_at, d.answered_at, len(t), t.count("node1")) == (90.0, 100.0, 1, 1)
    assert t.ended("c1", 130.0) == d
    assert len(t) == 0 and t.ended("c1", 131.0) is None
    assert t.stats["answered"] == t.stats["ended"] == 1


def test_a_record_arriving_after_its_end_does_not_come_back_until_the_end_is_forgotten():
    t = DialogTable("node2", ended_memory=60.0)
    t.apply([], ["c1"], 100.0)
    t.apply([dialog()], [], 101.0)
    assert len(t) == 0 and t.stats["stale"] == 1
    t.expire(161.0)
    t.apply([dialog()], [], 162.0)
    assert len(t) == 1


def test_the_table_is_bounded_and_old_records_expire():
    t = DialogTable("node1", max_dialogs=3, max_age=1000.0)
    for k in range(5):
        t.answered(dialog(f"c{k}", answered=100.0 + k))
    assert list(t.dialogs) == ["c2", "c3", "c4"] and t.stats["evicted"] == 2
    assert [d.call_id for d in t.expire(1103.5)] == ["c2", "c3"]
    assert list(t.dialogs) == ["c4"] and t.stats["expired"] == 2
    for k in range(20_000):  # set-up times of calls never answered stay bounded
        t.attempt(f"x{k}", 1.0)
    assert len(t._pending) <= 10_000


def test_exactly_one_survivor_takes_the_calls_of_a_dead_node():
    assert adopter("node1", ["node3", "node2", "node1"]) == "node2"
    assert adopter("node2", ["node1", "node3"]) == "node1"
    assert adopter("node1", ["node1"]) is None
    t = DialogTable("node2")
    t.apply([dialog("a"), dialog("b"), dialog("c", owner="node3")], [], 100.0)
    taken = t.adopt("node1", "node2")
    assert {d.call_id for d in taken} == {"a", "b"} and t.count("node2") == 2
    assert t.count("node3") == 1 and t.adopt("node1", "node2") == []


def test_the_wire_format_round_trips():
    body = encode_dialogs("node1", [dialog("a"), dialog("b")], ["z"])
    node, got, ends = decode_dialogs(body)
    assert (node, got, ends) == ("node1", [dialog("a"), dialog("b")], ["z"])
    assert json.loads(body)["pv"] == 2


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"pv": 2, "v": 2, "id": "n", "d": [], "x": []}',
        b'{"pv": "2", "v": 1, "id": "n", "d": [], "x": []}',
        b'{"pv": 2, "v": 1, "id": "", "d": [], "x": []}',
        b'{"pv": 2, "v": 1, "id": "n", "d": [["short"]], "x": []}',
        b'{"pv": 2, "v": 1, "id": "n", "d": [], "x": [7]}',
        b'{"pv": 2, "v": 1, "id": "n", "d": {}, "x": []}',
        json.dumps({"pv": 2, "v": 1, "id": "n", "d": [], "x": ["c"] * (MAX_ROWS + 1)}).encode(),
        json.dumps({"pv": 2, "v": 1, "id": "n", "d": [dialog("x" * 600).row()], "x": []}).encode(),
        json.dumps(
            {
                "pv": 2,
                "v": 1,
                "id": "n",
                "d": [dialog().row()[:10] + [True] + dialog().row()[11:]],
                "x": [],
            }
        ).encode(),
        json.dumps(
            {
                "pv": 2,
                "v": 1,
                "id": "n",
                "d": [dialog().row()[:9] + ["r" * 3000] + dialog().row()[10:]],
                "x": [],
            }
        ).encode(),
        b'{"pv": 2, "v": 1, "id": "n", "d": [["c","f","t","a","b","","","","","",1,NaN,1,"n"]],'
        b' "x": []}',
        b"[" * 100000,
    ],
)
def test_a_forged_or_malformed_message_is_a_wire_error_never_a_crash(body):
    with pytest.raises(DialogWireError):
        decode_dialogs(body)


def test_a_message_of_a_newer_protocol_is_told_apart():
    body = json.dumps({"pv": 3, "v": 1, "id": "n", "d": [], "x": []}).encode()
    with pytest.raises(NewerDialogMessage) as e:
        decode_dialogs(body)
    assert isinstance(e.value, WireError)  # the replicator counts it as newer


def test_the_probe_and_the_bye_are_requests_of_the_dialog_towards_each_end():
    d = dialog()
    to_caller = parse_message(bye_request(d, True, "10.0.0.9:5060", BRANCH_PREFIX + "1"))
    assert (to_caller.method, to_caller.uri, to_caller.from_.tag, to_caller.to.tag) == (
        "BYE",
        "sip:alice@10.0.0.1:5070",
        "tt",
        "ft",
    )
    assert to_caller.cseq == (1002, "BYE") and to_caller.get("reason")
    to_callee = parse_message(probe_request(d, False, "10.0.0.9:5060", BRANCH_PREFIX + "2"))
    assert (to_callee.method, to_callee.uri, to_callee.from_.tag, to_callee.to.tag) == (
        "OPTIONS",
        "sip:bob@10.0.0.2:5080",
        "ft",
        "tt",
    )
    assert to_callee.top_via.branch == BRANCH_PREFIX + "2"
    assert parse_dest("udp:10.0.0.2:5080") == ("udp", "10.0.0.2", 5080)
    assert parse_dest("udp:[::1]:5080") == ("udp", "::1", 5080)
    assert parse_dest("nonsense") is None and parse_dest("udp:host:99999") is None


def test_record_route_names_the_configured_host_and_any_node_takes_it_as_its_own():
    one = ProxySettings(
        "example.test", "127.0.0.11", 5060, secret=b"k" * 32, rr_host="example.test", tls_port=5061
    )
    two = ProxySettings(
        "example.test", "127.0.0.12", 5060, secret=b"k" * 32, rr_host="example.test"
    )
    req = parse_message(
        b"INVITE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;"
        b"branch=z9hG4bK1\r\nFrom: <sip:a@example.test>;tag=f\r\nTo: <sip:bob@"
        b"example.test>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    rr = one.record_route(req)
    assert rr.startswith("<sip:example.test;lr;dlg=")
    assert one.record_route(req, "tls").startswith("<sip:example.test;transport=tls;lr;dlg=")
    assert two.is_record_route(rr, req)
    assert not two.is_record_route(rr.replace("dlg=", "dlg=0"), req)  # forged token
    floating = ProxySettings(
        "example.test", "127.0.0.11", 5070, rr_host="10.1.1.1:5070", tls_port=5071
    )
    assert floating.record_route(req).startswith("<sip:10.1.1.1:5070;lr;")
    assert floating.record_route(req, "tls").startswith("<sip:10.1.1.1:5071;transport=tls;")
    plain = ProxySettings("example.test", "127.0.0.11", 5060)
    assert plain.record_route(req).startswith("<sip:127.0.0.11:5060;lr;dlg=")


def test_the_proxy_core_gives_the_answer_event_its_dialog():
    from sipcore.dialogs import answered_dialog

    invite = parse_message(
        b"INVITE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;"
        b"branch=z9hG4bK1\r\nFrom: <sip:a@example.test>;tag=f\r\nTo: <sip:bob"
        b"@example.test>\r\nCall-ID: c\r\nCSeq: 7 INVITE\r\nContact: <sip:a@"
        b"1.2.3.4:5070>\r\nContent-Length: 0\r\n\r\n"
    )
    ok = parse_message(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\nFrom: "
        b"<sip:a@example.test>;tag=f\r\nTo: <sip:bob@example.test>;tag=t\r\n"
        b"Call-ID: c\r\nCSeq: 7 INVITE\r\nContact: <sip:bob@5.6.7.8>\r\n"
        b"Record-Route: <sip:p2;lr>\r\nRecord-Route: <sip:p1;lr>\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    d = answered_dialog(invite, ok, ("udp", "1.2.3.4", 5070), ("udp", "5.6.7.8", 5060))
    assert d is not None and (
        d.from_tag,
        d.to_tag,
        d.cseq,
        d.caller_contact,
        d.callee_contact,
        d.callee_dest,
    ) == ("f", "t", 7, "sip:a@1.2.3.4:5070", "sip:bob@5.6.7.8", "udp:5.6.7.8:5060")
    assert d.route == "<sip:p2;lr>,<sip:p1;lr>"
    no_tag = parse_message(bytes(ok.encode()).replace(b";tag=t", b""))
    assert answered_dialog(invite, no_tag, ("udp", "1.2.3.4", 5070), ("udp", "5", 1)) is None
    assert ANSWER == "answer"


def test_the_node_keeps_records_from_its_proxy_events_and_refuses_bad_requests():
    from actors.bus import BusError
    from actors.dialogs import Dialogs
    from sipcore.call_events import ATTEMPT, BYE, CallEvent

    keeper = Dialogs("node1", "example.test", "127.0.0.1", clock=lambda: 500.0)
    bare = dialog()
    keeper.observe([CallEvent(ATTEMPT, "c1", "sip:a@x", "sip:b@x", "udp:1.2.3.4:5")], 99.0)
    keeper.observe(
        [CallEvent(ANSWER, "c1", "sip:a@x", "sip:b@x", "udp:1.2.3.4:5", 200, bare)], 100.0
    )
    got = keeper.calls({"owner": "node1"})
    assert got["total"] == 1 and got["calls"][0]["started_at"] == 99.0
    assert keeper.status()["calls"] == 1
    for bad in ({"owner": 7}, {"limit": -1}, {"limit": True}, {"limit": "9"}):
        with pytest.raises(BusError):
            keeper.calls(bad)
    assert len(keeper.calls({"limit": 10**9})["calls"]) == 1
    keeper.observe([CallEvent(BYE, "c1", "sip:a@x", "sip:b@x", "udp:1.2.3.4:5")], 130.0)
    assert keeper.status()["calls"] == 0
    # A response whose branch is not one of ours is the proxy's; one that forges our
    # prefix settles nothing (no probe waits for that branch).
    ok = parse_message(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4;branch="
        + BRANCH_PREFIX.encode()
        + b"forged\r\nFrom: <sip:a@x>;tag=1\r\n"
        b"To: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert keeper.response(ok) is True and not keeper._waiting
    other = parse_message(ok.encode().replace(BRANCH_PREFIX.encode(), b"z9hG4bKx"))
    assert keeper.response(other) is False
    broken = parse_message(
        b"SIP/2.0 200 OK\r\nVia: !!!\r\nFrom: <sip:a@x>;tag=1\r\n"
        b"To: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert keeper.response(broken) is False  # the proxy's to refuse, not a crash here
