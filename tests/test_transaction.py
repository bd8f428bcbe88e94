"""The transaction layer with a fake clock: every state machine and timer, no sockets."""

import ast
import pathlib
import random

import pytest

from sipcore.errors import SipError
from sipcore.message import Request, make_response, parse_message
from sipcore.timers import Timer, TimerConfig, TimerQueues
from sipcore.transaction import (
    MAGIC_COOKIE,
    AckReceived,
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    State,
    StrayResponse,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
    build_ack,
    build_cancel,
    new_branch,
    server_key,
)

UDP = ("udp", "10.0.0.2", 5060)
TCP = ("tcp", "10.0.0.2", 40000)
PEER = ("udp", "10.0.0.9", 5060)


def request(
    method="REGISTER",
    branch="z9hG4bKaaa",
    cseq=1,
    sent_by="10.0.0.2:5060",
    extra="",
    call_id="call-1@x",
    uri="sip:bob@example.com",
    vias=(),
) -> Request:
    """A parsed request as it would come off the wire."""
    via_lines = "".join(f"Via: {v}\r\n" for v in vias)
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {sent_by};branch={branch}\r\n{via_lines}"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=from1\r\n"
        "To: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    )
    return parse_message(text.encode())


def response_to(req, status, to_tag="totag"):
    """A parsed response to ``req`` (round-tripped through bytes)."""
    return parse_message(make_response(req, status, to_tag=to_tag).encode())


def events(layer):
    out = []
    while (ev := layer.next_event()) is not None:
        out.append(ev)
    return out


def sent(layer):
    return [data for data, _ in layer.messages_to_send()]


def run_until(layer, end):
    """Fire timers in order up to ``end``; return ``[(time, bytes)]`` sent meanwhile."""
    out = []
    while (t := layer.get_timer()) is not None and t <= end:
        layer.handle_timer(t)
        out.extend((t, data) for data in sent(layer))
    return out


def new_server(layer, req, now=0.0, source=UDP, reliable=False):
    layer.receive(req, source, now, reliable)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived)
    return ev.transaction


# -- server, non-INVITE ---------------------------------------------------------------


def test_new_request_event_and_retransmission_in_trying_absorbed():
    layer = TransactionLayer()
    req = request()
    tx = new_server(layer, req)
    assert isinstance(tx, ServerTransaction) and tx.state is State.TRYING
    assert tx.request is req and tx.destination == UDP and sent(layer) == []
    layer.receive(request(), UDP, 0.1)
    assert events(layer) == [] and sent(layer) == []


def test_final_response_retransmitted_on_request_retransmission_then_timer_j():
    layer = TransactionLayer()
    req = request()
    tx = new_server(layer, req)
    assert layer.respond(tx, make_response(req, 200, to_tag="t"), 1.0)
    (ok,) = sent(layer)
    assert ok.startswith(b"SIP/2.0 200 OK") and tx.state is State.COMPLETED
    assert tx.request is None
    layer.receive(request(), UDP, 2.0)
    assert sent(layer) == [ok] and events(layer) == []
    assert layer.get_timer() == 33.0
    layer.handle_timer(32.9)
    assert tx.state is State.COMPLETED
    layer.handle_timer(33.0)
    assert tx.state is State.TERMINATED and layer.stats()["server"] == 0
    assert not layer.respond(tx, make_response(req, 200), 34.0)
    layer.receive(request(), UDP, 34.0)
    assert isinstance(events(layer)[0], RequestReceived)


def test_unanswered_counts_only_transactions_without_a_final_response():
    layer = TransactionLayer()
    req = request()
    tx = new_server(layer, req)
    new_server(layer, request(branch="z9hG4bKbbb"))
    assert layer.unanswered() == {"server": 2, "client": 0}
    layer.respond(tx, make_response(req, 200), 0.0)
    assert layer.stats()["server"] == 2 and layer.unanswered() == {"server": 1, "client": 0}


def test_provisional_moves_to_proceeding_and_is_resent():
    layer = TransactionLayer()
    req = request("OPTIONS")
    tx = new_server(layer, req)
    layer.respond(tx, make_response(req, 183), 0.0)
    (prov,) = sent(layer)
    assert tx.state is State.PROCEEDING
    layer.receive(request("OPTIONS"), UDP, 0.5)
    assert sent(layer) == [prov]
    layer.respond(tx, make_response(req, 404), 0.6)
    (final,) = sent(layer)
    layer.receive(request("OPTIONS"), UDP, 0.7)
    assert sent(layer) == [final]
    assert not layer.respond(tx, make_response(req, 500), 0.8)
    assert sent(layer) == []


def test_reliable_non_invite_server_terminates_at_final():
    layer = TransactionLayer()
    req = request()
    tx = new_server(layer, req, source=TCP, reliable=True)
    layer.respond(tx, make_response(req, 200), 0.0)
    assert tx.state is State.TERMINATED and layer.stats() == {"server": 0, "client": 0}
    assert sent(layer)[0].startswith(b"SIP/2.0 200")
    assert layer.get_timer() is None


def test_same_branch_other_sent_by_or_method_is_another_transaction():
    layer = TransactionLayer()
    new_server(layer, request())
    layer.receive(request(sent_by="10.0.0.3:5060"), UDP, 0.0)
    layer.receive(request("OPTIONS"), UDP, 0.0)
    assert [type(e) for e in events(layer)] == [RequestReceived, RequestReceived]


# -- server, INVITE -------------------------------------------------------------------


def test_invite_server_sends_100_and_resends_last_provisional():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = new_server(layer, req)
    (trying,) = sent(layer)
    assert trying.startswith(b"SIP/2.0 100 Trying") and b"tag=" not in trying.split(b"To:")[1][:40]
    assert tx.state is State.PROCEEDING and tx.status == 100
    layer.receive(request("INVITE"), UDP, 0.1)
    assert sent(layer) == [trying] and events(layer) == []
    layer.respond(tx, make_response(req, 180, to_tag="t"), 0.2)
    (ringing,) = sent(layer)
    layer.receive(request("INVITE"), UDP, 0.3)
    assert sent(layer) == [ringing]


def test_invite_server_without_auto_trying():
    layer = TransactionLayer(auto_trying=False)
    tx = new_server(layer, request("INVITE"))
    assert sent(layer) == [] and tx.status == 0
    layer.receive(request("INVITE"), UDP, 0.1)
    assert sent(layer) == []


def test_timer_g_doubles_to_t2_and_ack_confirms_then_timer_i():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = new_server(layer, req)
    sent(layer)
    layer.respond(tx, make_response(req, 486, to_tag="t"), 0.0)
    (busy,) = sent(layer)
    resent = run_until(layer, 12.0)
    assert [t for t, _ in resent] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert all(data == busy for _, data in resent)
    layer.receive(request("INVITE"), UDP, 12.0)
    assert sent(layer) == [busy]
    layer.receive(request("ACK"), UDP, 12.0)
    assert tx.state is State.CONFIRMED and events(layer) == []
    layer.receive(request("ACK"), UDP, 13.0)
    layer.receive(request("INVITE"), UDP, 13.0)
    assert events(layer) == [] and sent(layer) == []
    assert run_until(layer, 16.9) == [] and tx.state is State.CONFIRMED
    run_until(layer, 17.0)
    assert tx.state is State.TERMINATED
    assert run_until(layer, 100.0) == [] and events(layer) == []


def test_timer_h_gives_up_without_ack():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = new_server(layer, req)
    layer.respond(tx, make_response(req, 404), 0.0)
    sent(layer)
    resent = run_until(layer, 40.0)
    assert [t for t, _ in resent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    (ev,) = events(layer)
    assert ev == TransactionTimeout(tx, Timer.H) and tx.state is State.TERMINATED


def test_reliable_invite_server_no_g_and_timer_i_zero():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = new_server(layer, req, source=TCP, reliable=True)
    layer.respond(tx, make_response(req, 603), 0.0)
    assert len(sent(layer)) == 2
    assert layer.get_timer() == 32.0
    layer.receive(request("ACK"), TCP, 1.0, reliable=True)
    assert tx.state is State.TERMINATED and events(layer) == []
    tx2 = new_server(layer, request("INVITE", branch="z9hG4bKb2"), source=TCP, reliable=True)
    layer.respond(tx2, make_response(tx2.request, 500), 2.0)
    sent(layer)
    assert run_until(layer, 40.0) == []
    assert events(layer) == [TransactionTimeout(tx2, Timer.H)]


def test_2xx_moves_invite_server_to_accepted_until_timer_l():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = new_server(layer, req)
    sent(layer)
    ok = make_response(req, 200, to_tag="t")
    assert layer.respond(tx, ok, 1.0)
    assert tx.state is State.ACCEPTED and layer.stats()["server"] == 1
    assert tx.request is None
    assert layer.get_timer() == 33.0
    layer.receive(request("INVITE"), UDP, 1.05)
    assert events(layer) == []
    ack = request("ACK", branch="z9hG4bKack2xx")
    layer.receive(ack, UDP, 1.1)
    assert events(layer) == [AckReceived(ack, UDP)]
    same_branch_ack = request("ACK")
    layer.receive(same_branch_ack, UDP, 1.2)
    assert events(layer) == [AckReceived(same_branch_ack, UDP)]
    assert sent(layer) == [ok.encode()]
    assert layer.respond(tx, make_response(req, 200, to_tag="fork2"), 1.3)
    assert b"tag=fork2" in sent(layer)[0]
    assert not layer.respond(tx, make_response(req, 486), 1.4)
    cancel = request("CANCEL")
    layer.receive(cancel, UDP, 1.5)
    (ev,) = events(layer)
    assert ev.invite is tx
    assert run_until(layer, 33.0) == []
    assert tx.state is State.TERMINATED and layer.stats()["server"] == 1
    layer.receive(request("INVITE"), UDP, 34.0)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived) and ev.transaction is not tx


def test_reliable_invite_server_accepted_too():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = new_server(layer, req, source=TCP, reliable=True)
    layer.respond(tx, make_response(req, 200, to_tag="t"), 1.0)
    assert tx.state is State.ACCEPTED
    layer.handle_timer(33.0)
    assert tx.state is State.TERMINATED and layer.stats()["server"] == 0


def test_cancel_is_its_own_transaction_and_finds_its_invite():
    layer = TransactionLayer()
    invite = request("INVITE")
    itx = new_server(layer, invite)
    cancel = request("CANCEL")
    layer.receive(cancel, UDP, 1.0)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived) and ev.invite is itx
    assert ev.transaction is not itx and ev.transaction.method == "CANCEL"
    assert layer.find_invite(cancel) is itx
    assert layer.find_invite(request("CANCEL", branch="z9hG4bKother")) is None
    assert layer.find_server(request("ACK")) is itx
    layer.respond(ev.transaction, make_response(cancel, 200, to_tag="t"), 1.0)
    layer.respond(itx, make_response(invite, 487, to_tag="t"), 1.0)
    assert [d[:15] for d in sent(layer)][1:] == [b"SIP/2.0 200 OK\r", b"SIP/2.0 487 Req"]
    layer.receive(request("CANCEL", branch="z9hG4bKnone"), UDP, 2.0)
    assert events(layer)[0].invite is None


def test_rfc2543_requests_without_magic_cookie():
    layer = TransactionLayer()
    invite = request("INVITE", branch="oldbranch1")
    tx = new_server(layer, invite)
    (trying,) = sent(layer)
    layer.receive(request("INVITE", branch="oldbranch1"), UDP, 0.1)
    assert sent(layer) == [trying] and events(layer) == []
    cancel = request("CANCEL", branch="oldbranch1")
    layer.receive(cancel, UDP, 0.2)
    assert events(layer)[0].invite is tx
    layer.respond(tx, make_response(invite, 480), 0.3)
    layer.receive(request("ACK", branch="oldbranch1"), UDP, 0.4)
    assert tx.state is State.CONFIRMED
    no_branch = parse_message(
        b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@b>\r\n"
        b"To: <sip:x@y>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
    layer.receive(no_branch, UDP, 0.5)
    assert isinstance(events(layer)[-1], RequestReceived)


def test_a_bare_magic_cookie_is_keyed_by_the_rfc2543_rules():
    # Every request of such a phone sends the same "z9hG4bK": keyed as a branch,
    # a second request from the same sent-by would be taken for a retransmission.
    layer = TransactionLayer()
    first = request("OPTIONS", branch="z9hG4bK", call_id="one")
    assert server_key(first)[0] is None
    tx = new_server(layer, first)
    layer.receive(request("OPTIONS", branch="z9hG4bK", call_id="one"), UDP, 0.1)
    assert events(layer) == []
    other = new_server(layer, request("OPTIONS", branch="z9hG4bK", call_id="two"), 0.2)
    assert other is not tx
    assert server_key(request("OPTIONS", branch="z9hG4bKx"))[0] == "z9hG4bKx"


def test_request_with_unparsable_via_raises_sip_error():
    layer = TransactionLayer()
    bad = parse_message(b"OPTIONS sip:x@y SIP/2.0\r\nVia: garbage\r\nCSeq: 1 OPTIONS\r\n\r\n")
    with pytest.raises(SipError):
        layer.receive(bad, UDP, 0.0)
    assert layer.find_invite(bad) is None and layer.find_server(bad) is None


# -- client, non-INVITE ---------------------------------------------------------------


def test_timer_e_capped_at_t2_and_timer_f_timeout():
    layer = TransactionLayer()
    req = request("OPTIONS")
    tx = layer.send_request(req, PEER, 0.0)
    assert isinstance(tx, ClientTransaction) and tx.state is State.TRYING
    assert layer.messages_to_send() == [(req.encode(), PEER)]
    resent = run_until(layer, 100.0)
    assert [t for t, _ in resent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert events(layer) == [TransactionTimeout(tx, Timer.F)] and tx.state is State.TERMINATED
    layer.receive(response_to(req, 200), PEER, 101.0)
    assert events(layer) == []


def test_non_invite_client_proceeding_retransmits_every_t2_then_k():
    layer = TransactionLayer()
    req = request("BYE")
    tx = layer.send_request(req, PEER, 0.0)
    sent(layer)
    layer.receive(response_to(req, 100), PEER, 0.2)
    assert tx.state is State.PROCEEDING
    assert isinstance(events(layer)[0], ResponseReceived)
    assert [t for t, _ in run_until(layer, 9.0)] == [0.5, 4.5, 8.5]
    ok = response_to(req, 200)
    layer.receive(ok, PEER, 9.0)
    assert events(layer) == [ResponseReceived(tx, ok)] and tx.status == 200
    assert tx.state is State.COMPLETED
    layer.receive(response_to(req, 200), PEER, 9.5)
    assert events(layer) == [] and sent(layer) == []
    assert run_until(layer, 13.9) == [] and tx.state is State.COMPLETED
    run_until(layer, 14.0)
    assert tx.state is State.TERMINATED and layer.stats()["client"] == 0


def test_reliable_non_invite_client():
    layer = TransactionLayer()
    req = request("REGISTER")
    tx = layer.send_request(req, TCP, 0.0, reliable=True)
    sent(layer)
    assert layer.get_timer() == 32.0
    layer.receive(response_to(req, 401), TCP, 0.1, reliable=True)
    assert tx.state is State.TERMINATED and len(events(layer)) == 1
    tx2 = layer.send_request(request(branch="z9hG4bKr2"), TCP, 1.0, reliable=True)
    sent(layer)
    assert run_until(layer, 40.0) == []
    assert events(layer) == [TransactionTimeout(tx2, Timer.F)]


# -- client, INVITE -------------------------------------------------------------------


def test_timer_a_doubles_and_timer_b_times_out():
    layer = TransactionLayer()
    tx = layer.send_request(request("INVITE"), PEER, 0.0)
    sent(layer)
    resent = run_until(layer, 100.0)
    assert [t for t, _ in resent] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert events(layer) == [TransactionTimeout(tx, Timer.B)]


def test_provisional_stops_timer_a_and_b():
    layer = TransactionLayer(t1=0.1, t2=1.0, t4=1.0)
    req = request("INVITE")
    tx = layer.send_request(req, PEER, 0.0)
    sent(layer)
    assert [t for t, _ in run_until(layer, 0.35)] == [0.1, 0.30000000000000004]
    layer.receive(response_to(req, 180), PEER, 0.4)
    assert tx.state is State.PROCEEDING
    layer.receive(response_to(req, 183), PEER, 0.5)
    assert [e.response.status for e in events(layer)] == [180, 183]
    assert run_until(layer, 1000.0) == [] and events(layer) == []
    assert tx.state is State.PROCEEDING


def test_non_2xx_final_is_acked_by_the_layer_and_timer_d():
    layer = TransactionLayer()
    route = "Route: <sip:p1.example.com;lr>\r\n"
    req = request("INVITE", extra=route, vias=("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKup",))
    tx = layer.send_request(req, PEER, 0.0)
    sent(layer)
    busy = response_to(req, 486, to_tag="callee")
    layer.receive(busy, PEER, 1.0)
    assert events(layer) == [ResponseReceived(tx, busy)] and tx.state is State.COMPLETED
    (ack_bytes,) = sent(layer)
    ack = parse_message(ack_bytes)
    assert ack.method == "ACK" and ack.uri == req.uri and ack.cseq == (1, "ACK")
    assert ack.get_all("via") == [req.get_all("via")[0]]
    assert ack.get("to") == busy.get("to") and ack.to.tag == "callee"
    assert ack.get("from") == req.get("from") and ack.call_id == req.call_id
    assert ack.get("route") == "<sip:p1.example.com;lr>"
    layer.receive(response_to(req, 486, to_tag="callee"), PEER, 2.0)
    assert sent(layer) == [ack_bytes] and events(layer) == []
    assert run_until(layer, 32.9) == [] and tx.state is State.COMPLETED
    run_until(layer, 33.0)
    assert tx.state is State.TERMINATED
    layer.receive(response_to(req, 486), PEER, 34.0)
    assert sent(layer) == [] and events(layer) == []


def test_reliable_invite_client_timer_d_zero():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = layer.send_request(req, TCP, 0.0, reliable=True)
    sent(layer)
    layer.receive(response_to(req, 503), TCP, 0.5, reliable=True)
    assert tx.state is State.TERMINATED and len(sent(layer)) == 1


def test_every_2xx_to_invite_reaches_the_tu_then_stray():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = layer.send_request(req, PEER, 0.0)
    sent(layer)
    oks = [response_to(req, 200, "a"), response_to(req, 200, "a"), response_to(req, 200, "b")]
    for i, ok in enumerate(oks):
        layer.receive(ok, PEER, 1.0 + i)
    assert events(layer) == [ResponseReceived(tx, ok) for ok in oks]
    assert tx.state is State.ACCEPTED and sent(layer) == []
    layer.receive(response_to(req, 180), PEER, 4.0)
    layer.receive(response_to(req, 486), PEER, 4.0)
    assert events(layer) == [] and sent(layer) == []
    assert run_until(layer, 100.0) == [] and tx.state is State.TERMINATED
    late = response_to(req, 200, "a")
    layer.receive(late, PEER, 101.0)
    assert events(layer) == [StrayResponse(late, PEER)]


def test_2xx_after_non_2xx_still_passed_on():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = layer.send_request(req, PEER, 0.0)
    layer.receive(response_to(req, 408), PEER, 1.0)
    ok = response_to(req, 200, "late")
    layer.receive(ok, PEER, 2.0)
    assert events(layer)[-1] == ResponseReceived(tx, ok)


def test_unmatched_and_malformed_responses_dropped():
    layer = TransactionLayer()
    req = request("INVITE")
    layer.send_request(req, PEER, 0.0)
    sent(layer)
    other = request("INVITE", branch="z9hG4bKzzz")
    layer.receive(response_to(other, 486), PEER, 1.0)
    layer.receive(response_to(request("OPTIONS"), 200), PEER, 1.0)
    layer.receive(response_to(request("CANCEL"), 200), PEER, 1.0)
    for raw in (
        b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: nonsense\r\nCSeq: 1 INVITE\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKaaa\r\nCSeq: x\r\n\r\n",
        b"SIP/2.0 486 Busy\r\nVia: SIP/2.0/UDP h\r\nCSeq: 1 INVITE\r\n\r\n",
    ):
        layer.receive(parse_message(raw), PEER, 1.0)
    assert events(layer) == [] and sent(layer) == []


# -- CANCEL ---------------------------------------------------------------------------


def test_cancel_deferred_until_provisional_and_built_per_9_1():
    layer = TransactionLayer()
    req = request(
        "INVITE",
        cseq=7,
        extra="Route: <sip:p1;lr>\r\nContact: <sip:a@h>\r\n",
        vias=("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKup",),
    )
    tx = layer.send_request(req, PEER, 0.0)
    sent(layer)
    assert layer.cancel(tx, 0.2, headers=[("Reason", "SIP;cause=487")])
    assert sent(layer) == [] and tx.cancel is None
    layer.receive(response_to(req, 180), PEER, 0.3)
    assert isinstance(tx.cancel, ClientTransaction)
    (data,) = [d for d in sent(layer) if d.startswith(b"CANCEL")]
    cancel = parse_message(data)
    assert cancel.uri == req.uri and cancel.cseq == (7, "CANCEL")
    assert cancel.get_all("via") == [req.get_all("via")[0]]
    assert cancel.top_via.branch == tx.branch
    for name in ("from", "to", "call-id", "route", "max-forwards"):
        assert cancel.get(name) == req.get(name)
    assert cancel.get("contact") is None and cancel.get("reason") == "SIP;cause=487"
    assert tx.cancel.method == "CANCEL" and tx.cancel.destination == PEER
    assert layer.cancel(tx, 0.4) and sent(layer) == []


def test_cancel_in_proceeding_is_sent_at_once():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = layer.send_request(req, PEER, 0.0)
    layer.receive(response_to(req, 100), PEER, 0.1)
    sent(layer)
    assert layer.cancel(tx, 0.2)
    assert [d[:6] for d in sent(layer)] == [b"CANCEL"]


def test_cancel_too_late_or_dropped_by_a_final():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = layer.send_request(req, PEER, 0.0)
    assert layer.cancel(tx, 0.1)
    layer.receive(response_to(req, 486), PEER, 0.2)
    assert [d[:3] for d in sent(layer)] == [b"INV", b"ACK"]
    assert tx.cancel is None and not layer.cancel(tx, 0.3)
    with pytest.raises(ValueError):
        layer.cancel(layer.send_request(request("BYE"), PEER, 0.0), 0.0)


def test_cancel_crossing_a_200():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = layer.send_request(req, PEER, 0.0)
    layer.receive(response_to(req, 180), PEER, 0.1)
    layer.cancel(tx, 0.2)
    events(layer)
    sent(layer)
    ok = response_to(req, 200)
    layer.receive(ok, PEER, 0.3)
    cancel_ok = response_to(build_cancel(req), 200)
    layer.receive(cancel_ok, PEER, 0.3)
    assert events(layer) == [ResponseReceived(tx, ok), ResponseReceived(tx.cancel, cancel_ok)]
    assert run_until(layer, 100.0) == [] and events(layer) == []


def test_no_final_after_cancel_times_out():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = layer.send_request(req, PEER, 0.0)
    layer.receive(response_to(req, 180), PEER, 1.0)
    layer.cancel(tx, 2.0)
    layer.receive(response_to(build_cancel(req), 200), PEER, 2.1)
    events(layer)
    run_until(layer, 100.0)
    assert events(layer) == [TransactionTimeout(tx, Timer.CANCEL)]
    assert tx.state is State.TERMINATED


# -- transport errors, helpers, purity ------------------------------------------------


def test_transport_error_for_a_transaction_and_for_a_destination():
    layer = TransactionLayer()
    req = request("INVITE")
    tx = layer.send_request(req, PEER, 0.0)
    layer.transport_error(tx, 0.1)
    assert events(layer) == [TransportError(tx, PEER)] and tx.state is State.TERMINATED
    layer.transport_error(tx, 0.2)
    layer.receive(response_to(req, 486), PEER, 0.3)
    assert events(layer) == []
    a = layer.send_request(request("OPTIONS", branch="z9hG4bK1"), TCP, 1.0, reliable=True)
    b = layer.send_request(request("OPTIONS", branch="z9hG4bK2"), TCP, 1.0, reliable=True)
    c = layer.send_request(request("OPTIONS", branch="z9hG4bK3"), PEER, 1.0)
    s = new_server(layer, request("MESSAGE", branch="z9hG4bK4"), 1.0, TCP, reliable=True)
    layer.transport_error(TCP, 1.5)
    assert {e.transaction for e in events(layer)} == {a, b, s}
    assert c.state is State.TRYING and layer.stats() == {"server": 0, "client": 1}
    layer.transport_error(("tcp", "nowhere", 1), 2.0)
    assert events(layer) == []


def test_send_request_rejects_bad_requests():
    layer = TransactionLayer()
    layer.send_request(request("OPTIONS"), PEER, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(request("OPTIONS"), PEER, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(request("ACK", branch="z9hG4bKx"), PEER, 0.0)
    no_via = parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n")
    with pytest.raises(ValueError):
        layer.send_request(no_via, PEER, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(request("OPTIONS", branch=""), PEER, 0.0)


def test_stateless_send_and_new_branch():
    layer = TransactionLayer()
    ack = request("ACK", branch=new_branch())
    layer.send(ack, PEER)
    layer.send(b"raw", PEER)
    assert layer.messages_to_send() == [(ack.encode(), PEER), (b"raw", PEER)]
    assert layer.messages_to_send() == []
    assert new_branch().startswith(MAGIC_COOKIE) and new_branch() != new_branch()
    assert new_branch(random.Random(1).randbytes) == new_branch(random.Random(1).randbytes)


def test_build_ack_keeps_only_the_top_via():
    req = request("INVITE", vias=("SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2",))
    ack = build_ack(req, response_to(req, 404, "x"))
    assert len(ack.vias) == 1 and ack.top_via.branch == "z9hG4bKaaa"
    assert ack.to.tag == "x"


def test_timer_queues_fire_in_deadline_order_across_durations():
    q = TimerQueues()
    assert q.next_deadline() is None and q.pop_due(10.0) == []
    q.add(0.0, 5.0, "five", 0)
    q.add(0.0, 1.0, "one", 0)
    q.add(3.0, 1.0, "four", 0)
    assert q.next_deadline() == 1.0 and len(q) == 3
    assert [o for _, o, _ in q.pop_due(5.0)] == ["one", "four", "five"]
    assert q.next_deadline() is None


def test_timer_config():
    assert TimerConfig().timeout == 32.0
    with pytest.raises(ValueError):
        TimerConfig(t1=0)
    with pytest.raises(ValueError):
        TimerConfig(t1=5.0, t2=4.0)


def test_sans_io_imports_only():
    banned = {"gevent", "zmq", "socket", "time", "peewee", "asyncio", "select"}
    root = pathlib.Path(__file__).resolve().parent.parent / "sipcore"
    for name in ("transaction.py", "timers.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            assert not {m.split(".")[0] for m in mods} & banned, (name, mods)
