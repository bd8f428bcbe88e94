"""The forking proxy core (RFC 3261 §16) with a fake clock and no sockets."""

import ast
import pathlib

import pytest

from sipcore.cluster_addresses import ClusterAddresses
from sipcore.digest import Authenticator, Credentials, expected_response, ha1
from sipcore.forking import ProxyCore
from sipcore.location import Binding, Location
from sipcore.message import Response, parse_message
from sipcore.proxy import (
    BranchTarget,
    Lookup,
    ProxySettings,
    best_response,
    branch_request,
    loop_hash,
    preprocess_route,
    route_next_hop,
    target_groups,
)
from sipcore.rfc3263 import Target
from sipcore.uri import parse_uri
from sipcore.via import stamp_via

DOMAIN = "example.test"
PROXY = ("127.0.0.1", 5060)
ALICE = ("udp", "10.0.0.1", 5061)  # the caller
PHONES = [("udp", "10.0.0.2", 5062), ("udp", "10.0.0.3", 5063), ("udp", "10.0.0.4", 5064)]
WALL = 1_000_000.0
USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


@pytest.fixture
def location():
    """An empty location table."""
    return Location()


@pytest.fixture
def core(location):
    """A proxy for example.test at 127.0.0.1:5060 with digest users; 100 Trying at once."""
    settings = ProxySettings(DOMAIN, *PROXY)
    auth = Authenticator(DOMAIN, b"k" * 32, lookup, algorithms=("MD5",))
    return ProxyCore(settings, location, auth, trying_delay=0)


def lookup(user):
    """HA1 values of a test user (the Authenticator's lookup)."""
    pw = USERS.get(user)
    return None if pw is None else {"MD5": ha1(user, DOMAIN, pw, "MD5")}


def bind(location, user, phone, q=None, path=(), contact=None, n=0):
    """Register ``phone`` (a destination tuple) for ``user``."""
    contact = contact or f"sip:{user}@{phone[1]}:{phone[2]}"
    received = "%s:%s:%d" % phone
    location.put(
        Binding(
            f"sip:{user}@{DOMAIN}",
            f"{contact}#{n}",
            contact,
            WALL + 3600,
            "reg-call",
            1,
            q,
            list(path),
            received=received,
        )
    )


def request(
    method,
    uri="sip:bob@example.test",
    source=ALICE,
    frm="sip:alice@example.test",
    to="sip:bob@example.test",
    to_tag=None,
    cseq=1,
    call_id="call-1",
    branch="z9hG4bKc1",
    extra=(),
    body=b"",
):
    """A request as the transport hands it over: parsed, validated, Via stamped."""
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {source[1]}:{source[2]};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <{frm}>;tag=ftag",
        f"To: <{to}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *extra,
        f"Content-Length: {len(body)}",
        "",
        "",
    ]
    req = parse_message("\r\n".join(lines).encode() + body)
    req.validate()
    stamp_via(req, source[0], source[1], source[2])
    return req


def our_route(core, call_id="call-1"):
    """The Route a phone sends inside a dialog the proxy Record-Routed (From tag ``ftag``)."""
    return core.settings.record_route(request("INVITE", call_id=call_id))


def reply(forwarded, status, to_tag="callee", extra=()):
    """The response a downstream phone sends to a forwarded request (bytes in, parsed out)."""
    text = forwarded.encode().decode()
    head = text.split("\r\n\r\n")[0].split("\r\n")[1:]
    keep = [h for h in head if h.split(":")[0].lower() in ("via", "from", "call-id", "cseq")]
    to = next(h for h in head if h.lower().startswith("to:"))
    if status > 100 and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines = [f"SIP/2.0 {status} Reason", *keep, to, *extra, "Content-Length: 0", "", ""]
    resp = parse_message("\r\n".join(lines).encode())
    resp.validate()
    return resp


def out(core):
    """Everything the core sent, parsed: ``[(message, dest)]``."""
    return [(parse_message(data), dest) for data, dest in core.messages_to_send()]


def only(core, dest=None):
    """The one message the core sent (to ``dest`` when given)."""
    msgs = out(core)
    assert len(msgs) == 1, msgs
    if dest is not None:
        assert msgs[0][1] == dest
    return msgs[0][0]


def run_until(core, end):
    """Fire the core's timers in order up to ``end``; return what it sent meanwhile."""
    sent = []
    while (t := core.get_timer()) is not None and t <= end:
        core.handle_timer(t)
        sent.extend(out(core))
    return sent


def credentials(challenge_resp, user, method, uri):
    """A Proxy-Authorization value answering the 407 ``challenge_resp``."""
    value = challenge_resp.get("proxy-authenticate")
    nonce = value.split('nonce="')[1].split('"')[0]
    creds = Credentials(user, DOMAIN, nonce, uri, "", "MD5", "auth", "00000001", "cn")
    response = expected_response(creds, method, ha1(user, DOMAIN, USERS[user], "MD5"))
    return (
        f'Digest username="{user}", realm="{DOMAIN}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="cn"'
    )


def authed_invite(
    core, uri="sip:bob@example.test", call_id="call-1", now=0.0, user="alice", extra=()
):
    """INVITE, 407, ACK, INVITE with credentials: return the second INVITE."""
    first = request(
        "INVITE",
        uri,
        frm=f"sip:{user}@{DOMAIN}",
        to=uri,
        call_id=call_id,
        branch=f"z9hG4bK1{call_id}",
        extra=extra,
    )
    core.receive(first, ALICE, now, WALL)
    challenge = only(core, ALICE)
    assert challenge.status == 407
    core.receive(
        request(
            "ACK",
            uri,
            frm=f"sip:{user}@{DOMAIN}",
            to=uri,
            call_id=call_id,
            branch=f"z9hG4bK1{call_id}",
            to_tag=challenge.to.tag,
        ),
        ALICE,
        now,
        WALL,
    )
    assert out(core) == []
    auth = credentials(challenge, user, "INVITE", uri)
    return request(
        "INVITE",
        uri,
        frm=f"sip:{user}@{DOMAIN}",
        to=uri,
        call_id=call_id,
        cseq=2,
        branch=f"z9hG4bK2{call_id}",
        extra=(f"Proxy-Authorization: {auth}", *extra),
    )


def forward(core, req, now=0.0):
    """Feed ``req``; return (100 Trying or None, {dest: forwarded request})."""
    core.receive(req, ALICE, now, WALL)
    msgs = out(core)
    trying = [m for m, d in msgs if isinstance(m, Response) and m.status == 100 and d == ALICE]
    branches = {d: m for m, d in msgs if not isinstance(m, Response)}
    assert len(trying) + len(branches) == len(msgs)
    return (trying[0] if trying else None), branches


# -- §16.3 validation -------------------------------------------------------------


def test_max_forwards_zero_gets_483(core, location):
    bind(location, "bob", PHONES[0])
    req = request("MESSAGE", frm="sip:x@other.test")
    req.set("Max-Forwards", "0")
    core.receive(req, ALICE, 0.0, WALL)
    assert only(core, ALICE).status == 483


def test_unsupported_proxy_require_gets_420(core, location):
    bind(location, "bob", PHONES[0])
    core.receive(
        request("MESSAGE", frm="sip:x@other.test", extra=("Proxy-Require: foo, bar",)),
        ALICE,
        0.0,
        WALL,
    )
    resp = only(core, ALICE)
    assert resp.status == 420 and resp.get("unsupported") == "foo, bar"


def test_loop_gets_482_but_a_spiral_passes(location):
    settings = ProxySettings(DOMAIN, *PROXY, nat_handling="always")
    core = ProxyCore(settings, location, Authenticator(DOMAIN, b"k" * 32, lookup), trying_delay=0)
    same = loop_hash(request("INVITE"))
    assert same == loop_hash(request("CANCEL")) != loop_hash(request("INVITE", cseq=2))
    bind(location, "bob", PHONES[0])
    bind(location, "carol", PHONES[1])
    bind(location, "bob2", PHONES[2])
    _, branches = forward(core, request("MESSAGE", frm="sip:x@other.test"))
    looped = branches[PHONES[0]]
    assert looped.max_forwards == 69 and looped.top_via.host == "127.0.0.1"
    # bob's device sends it back to bob unchanged: a loop
    looped = parse_message(looped.encode())
    looped.uri = "sip:bob@example.test"
    stamp_via(looped, "udp", *PHONES[0][1:])
    core.receive(looped, PHONES[0], 0.1, WALL)
    assert only(core).status == 482
    _, branches = forward(
        core,
        request(
            "MESSAGE",
            uri="sip:carol@example.test",
            call_id="c2",
            frm="sip:x@other.test",
            to="sip:carol@example.test",
            branch="z9hG4bKc2",
        ),
    )
    # carol's device forwards it to bob2: a spiral
    spiral = parse_message(branches[PHONES[1]].encode())
    spiral.uri = "sip:bob2@example.test"
    stamp_via(spiral, "udp", *PHONES[1][1:])
    core.receive(spiral, PHONES[1], 0.2, WALL)
    msgs = out(core)
    assert [d for _, d in msgs] == [PHONES[2]]
    assert len(msgs[0][0].vias) == 3 and msgs[0][0].max_forwards == 68


# -- §16.4 Route pre-processing, §16.6 forwarding ----------------------------------


def test_our_route_is_removed_and_in_dialog_request_forwarded_unchallenged(core):
    bye = request(
        "BYE",
        uri="sip:bob@10.0.0.2:5062",
        to_tag="callee",
        extra=(f"Route: {our_route(core)}, <sip:10.9.9.9;lr>",),
    )
    _, branches = forward(core, bye)
    (fwd,) = branches.values()
    assert list(branches) == [("udp", "10.9.9.9", 5060)]
    assert fwd.get_all("route") == ["<sip:10.9.9.9;lr>"]
    assert fwd.uri == "sip:bob@10.0.0.2:5062" and fwd.get("record-route") is None
    assert fwd.vias[0].branch.startswith("z9hG4bK") and fwd.vias[1].received == "10.0.0.1"


def test_strict_router_rewrite_is_undone(core):
    strict = our_route(core)[1:-1]
    req = request("BYE", uri=strict, to_tag="t", extra=("Route: <sip:bob@10.0.0.2:5062>",))
    _, branches = forward(core, req)
    assert branches[PHONES[0]].uri == "sip:bob@10.0.0.2:5062"
    assert branches[PHONES[0]].get("route") is None


def test_next_hop_strict_router_gets_the_uri_in_its_request_uri():
    settings = ProxySettings(DOMAIN, *PROXY)
    req = request(
        "BYE",
        uri="sip:bob@10.0.0.2:5062",
        to_tag="t",
        extra=("Route: <sip:10.0.0.8:5070>, <sip:10.0.0.9;lr>",),
    )
    assert not preprocess_route(req, settings)
    fwd = branch_request(req, BranchTarget(req.uri), None, None)
    hop = route_next_hop(fwd)
    assert (hop.host, hop.port) == ("10.0.0.8", 5070)
    assert fwd.uri == "sip:10.0.0.8:5070"
    assert fwd.get_all("route") == ["<sip:10.0.0.9;lr>", "<sip:bob@10.0.0.2:5062>"]


def test_path_becomes_route_and_record_route_is_added(core, location):
    bind(location, "bob", PHONES[0], path=["<sip:10.5.5.5:5080;lr>"])
    other = 'Digest username="x", realm="far.test", nonce="n", uri="sip:b", response="r"'
    _, branches = forward(core, authed_invite(core, extra=(f"Proxy-Authorization: {other}",)))
    (dest,) = branches
    fwd = branches[dest]
    assert dest == ("udp", "10.5.5.5", 5080)
    assert fwd.get("route") == "<sip:10.5.5.5:5080;lr>"
    assert fwd.get("record-route") == our_route(core)
    assert fwd.get("record-route").startswith("<sip:127.0.0.1:5060;lr;dlg=")
    assert fwd.raw_values("proxy-authorization") == [other]


def test_tcp_flow_first_then_the_contact(core, location):
    contact = "sip:bob@10.0.0.2:5062;transport=tcp"
    location.put(
        Binding(
            f"sip:bob@{DOMAIN}", "k", contact, WALL + 3600, "reg", 1, received="tcp:10.0.0.2:40000"
        )
    )
    _, branches = forward(core, request("MESSAGE", frm="sip:x@other.test"))
    assert list(branches) == [("tcp", "10.0.0.2", 40000)]
    assert branches[("tcp", "10.0.0.2", 40000)].top_via.transport == "TCP"
    core.transport_error(("tcp", "10.0.0.2", 40000), 0.1)
    retry = only(core, ("tcp", "10.0.0.2", 5062))
    assert retry.uri == contact
    core.receive(reply(retry, 202), ("tcp", "10.0.0.2", 5062), 0.2)
    assert only(core, ALICE).status == 202


def test_target_groups_by_q():
    def b(q, n):
        return Binding("sip:x@d", str(n), f"sip:x@10.0.0.{n}", 0, "c", 1, q)

    groups = target_groups([b(1.0, 1), b(None, 2), b(0.5, 3), b(0.5, 4), b(0.1, 5)])
    assert [[t.uri for t in g] for g in groups] == [
        ["sip:x@10.0.0.1", "sip:x@10.0.0.2"],
        ["sip:x@10.0.0.3", "sip:x@10.0.0.4"],
        ["sip:x@10.0.0.5"],
    ]


# -- §16.5 targets and authentication ---------------------------------------------


def test_unknown_user_and_known_user_without_binding_both_480(core):
    core.receive(
        request("MESSAGE", uri="sip:nobody@example.test", frm="sip:x@other.test"), ALICE, 0.0, WALL
    )
    assert only(core).status == 480
    core.receive(
        request(
            "MESSAGE",
            uri="sip:carol@example.test",
            frm="sip:x@other.test",
            call_id="c2",
            branch="z9hG4bKc2",
        ),
        ALICE,
        0.0,
        WALL,
    )
    assert only(core).status == 480


def test_local_caller_is_challenged_then_forwarded(core, location):
    bind(location, "bob", PHONES[0])
    trying, branches = forward(core, authed_invite(core))
    assert trying.status == 100 and list(branches) == [PHONES[0]]
    assert branches[PHONES[0]].uri == "sip:bob@10.0.0.2:5062"


def test_challenge_is_stateless_and_its_ack_dropped(core, location):
    bind(location, "bob", PHONES[0])
    first = request("INVITE", uri="sip:dave@other.test", to="sip:dave@other.test")
    core.receive(first, ALICE, 0.0, WALL)
    challenge = only(core, ALICE)
    assert challenge.status == 407 and core.layer.stats() == {"server": 0, "client": 0}
    core.receive(
        request("INVITE", uri="sip:dave@other.test", to="sip:dave@other.test"), ALICE, 0.5, WALL
    )
    again = only(core, ALICE)
    assert again.status == 407 and again.get("proxy-authenticate") != challenge.get(
        "proxy-authenticate"
    )
    core.receive(
        request(
            "ACK", uri="sip:dave@other.test", to="sip:dave@other.test", to_tag=challenge.to.tag
        ),
        ALICE,
        0.6,
        WALL,
    )
    assert out(core) == [] and core.lookups() == []


def test_credentials_of_another_user_are_refused(core, location):
    bind(location, "bob", PHONES[0])
    first = request("MESSAGE", frm="sip:alice@example.test")
    core.receive(first, ALICE, 0.0, WALL)
    challenge = only(core)
    auth = credentials(challenge, "carol", "MESSAGE", "sip:bob@example.test")
    core.receive(
        request("MESSAGE", cseq=2, branch="z9hG4bKc2", extra=(f"Proxy-Authorization: {auth}",)),
        ALICE,
        0.1,
        WALL,
    )
    assert only(core).status == 403


def test_wrong_password_is_challenged_again(core, location):
    bind(location, "bob", PHONES[0])
    core.receive(request("OPTIONS"), ALICE, 0.0, WALL)
    challenge = only(core)
    auth = credentials(challenge, "alice", "OPTIONS", "sip:bob@example.test").replace(
        'response="', 'response="0'
    )
    core.receive(
        request("OPTIONS", cseq=2, branch="z9hG4bKc2", extra=(f"Proxy-Authorization: {auth}",)),
        ALICE,
        0.1,
        WALL,
    )
    assert only(core).status == 407


def test_foreign_caller_reaches_local_user_without_challenge(core, location):
    bind(location, "bob", PHONES[0])
    _, branches = forward(core, request("INVITE", frm="sip:mallory@other.test"))
    assert list(branches) == [PHONES[0]]


def test_relaying_for_strangers_is_denied(core):
    core.receive(
        request(
            "INVITE", uri="sip:bob@other.test", frm="sip:x@elsewhere.test", to="sip:bob@other.test"
        ),
        ALICE,
        0.0,
        WALL,
    )
    assert only(core).status == 403
    core.receive(
        request(
            "INVITE",
            uri="sip:bob@other.test",
            frm="sip:x@elsewhere.test",
            to="sip:bob@other.test",
            call_id="c2",
            extra=("Route: <sip:127.0.0.1:5060;lr>",),
        ),
        ALICE,
        0.0,
        WALL,
    )
    assert only(core).status == 403


def test_requests_to_the_proxy_itself(core):
    core.receive(
        request("OPTIONS", uri="sip:example.test", frm="sip:x@other.test"), ALICE, 0.0, WALL
    )
    assert only(core).status == 200
    core.receive(request("PUBLISH", uri="sip:example.test", call_id="c2"), ALICE, 0.0, WALL)
    resp = only(core)
    assert resp.status == 405 and "INVITE" in resp.get("allow")


# -- forking and response selection ------------------------------------------------


def test_forking_to_three_contacts_where_the_second_answers(core, location):
    for n, phone in enumerate(PHONES):
        bind(location, "bob", phone, n=n)
    trying, branches = forward(core, authed_invite(core))
    assert trying is not None and set(branches) == set(PHONES)
    first, second, third = (branches[p] for p in PHONES)
    assert len({b.top_via.branch for b in branches.values()}) == 3
    core.receive(reply(first, 180, "t1"), PHONES[0], 0.5)
    ringing = only(core, ALICE)
    assert ringing.status == 180 and len(ringing.vias) == 1
    core.receive(reply(second, 200, "t2"), PHONES[1], 1.0)
    msgs = out(core)
    ok = [m for m, d in msgs if d == ALICE]
    assert [m.status for m in ok] == [200] and ok[0].to.tag == "t2"
    cancels = [(m, d) for m, d in msgs if d != ALICE]
    assert [(m.method, d) for m, d in cancels] == [("CANCEL", PHONES[0])]
    assert cancels[0][0].top_via.branch == first.top_via.branch
    assert "Call completed elsewhere" in cancels[0][0].get("reason")
    core.receive(reply(third, 180, "t3"), PHONES[2], 1.1)
    (cancel3,) = [m for m, d in out(core) if d == PHONES[2]]
    assert cancel3.method == "CANCEL"
    core.receive(reply(first, 487, "t1"), PHONES[0], 1.2)
    assert [(m.method, d) for m, d in out(core)] == [("ACK", PHONES[0])]
    core.receive(reply(second, 200, "t2"), PHONES[1], 1.3)
    assert [(m.status, d) for m, d in out(core)] == [(200, ALICE)]


def test_sequential_groups_by_q_and_busy_first(core, location):
    bind(location, "bob", PHONES[0], q=1.0, n=0)
    bind(location, "bob", PHONES[1], q=0.5, n=1)
    _, branches = forward(core, authed_invite(core))
    assert list(branches) == [PHONES[0]]
    core.receive(reply(branches[PHONES[0]], 486), PHONES[0], 1.0)
    msgs = out(core)
    assert [(getattr(m, "method", None), d) for m, d in msgs] == [
        ("ACK", PHONES[0]),
        ("INVITE", PHONES[1]),
    ]
    core.receive(reply(msgs[1][0], 200), PHONES[1], 2.0)
    assert [(m.status, d) for m, d in out(core)] == [(200, ALICE)]


def test_six_hundred_stops_forking_and_is_chosen(core, location):
    bind(location, "bob", PHONES[0], q=1.0, n=0)
    bind(location, "bob", PHONES[1], q=1.0, n=1)
    bind(location, "bob", PHONES[2], q=0.5, n=2)
    _, branches = forward(core, authed_invite(core))
    a, b = branches[PHONES[0]], branches[PHONES[1]]
    core.receive(reply(a, 180), PHONES[0], 0.5)
    out(core)
    core.receive(reply(b, 603), PHONES[1], 1.0)
    msgs = out(core)
    assert sorted((getattr(m, "method", None), d) for m, d in msgs) == [
        ("ACK", PHONES[1]),
        ("CANCEL", PHONES[0]),
    ]
    core.receive(reply(a, 487), PHONES[0], 1.5)
    msgs = out(core)
    assert [
        (getattr(m, "status", m.method if hasattr(m, "method") else None), d) for m, d in msgs
    ] == [("ACK", PHONES[0]), (603, ALICE)]


def test_best_response_rules():
    def r(status, *challenge):
        resp = Response(status, None, [["via", "Via", "SIP/2.0/UDP x;branch=z9hG4bKx"]])
        for c in challenge:
            resp.add("WWW-Authenticate" if status == 401 else "Proxy-Authenticate", c)
        return resp

    assert best_response([r(486), r(302), r(404)]).status == 302
    assert best_response([r(486), r(603), r(302)]).status == 603
    assert best_response([r(486), r(484), r(404)]).status == 484
    chosen = best_response([r(500), r(407, "Digest a"), r(401, "Digest b"), r(407, "Digest c")])
    assert chosen.status == 401
    assert chosen.raw_values("proxy-authenticate") == ["Digest a", "Digest c"]
    assert chosen.raw_values("www-authenticate") == ["Digest b"]


def test_503_becomes_500_and_no_answer_408(core, location):
    bind(location, "bob", PHONES[0])
    _, branches = forward(core, request("MESSAGE", frm="sip:x@other.test"))
    core.receive(reply(branches[PHONES[0]], 503), PHONES[0], 1.0)
    assert only(core, ALICE).status == 500
    _, branches = forward(core, request("INVITE", frm="sip:x@other.test", call_id="c2"), now=2.0)
    assert list(branches) == [PHONES[0]]
    core.handle_timer(2.0 + 32.0)
    msgs = out(core)
    assert [m.status for m, d in msgs if d == ALICE] == [408]


# -- CANCEL -----------------------------------------------------------------------


def test_cancel_is_answered_branches_cancelled_and_487_relayed(core, location):
    bind(location, "bob", PHONES[0])
    invite = request("INVITE", frm="sip:x@other.test")
    _, branches = forward(core, invite)
    fwd = branches[PHONES[0]]
    core.receive(reply(fwd, 180), PHONES[0], 0.5)
    out(core)
    core.receive(request("CANCEL", frm="sip:x@other.test"), ALICE, 1.0, WALL)
    msgs = out(core)
    assert [(getattr(m, "status", None), getattr(m, "method", None), d) for m, d in msgs] == [
        (200, None, ALICE),
        (None, "CANCEL", PHONES[0]),
    ]
    assert msgs[0][0].cseq == (1, "CANCEL")
    core.receive(reply(msgs[1][0], 200), PHONES[0], 1.1)
    assert out(core) == []
    core.receive(reply(fwd, 487), PHONES[0], 1.2)
    msgs = out(core)
    assert [(getattr(m, "status", None), d) for m, d in msgs] == [(None, PHONES[0]), (487, ALICE)]
    core.receive(request("CANCEL", frm="sip:x@other.test", branch="z9hG4bKnone"), ALICE, 2.0, WALL)
    assert only(core).status == 481


def test_cancel_crossing_a_200(core, location):
    bind(location, "bob", PHONES[0])
    _, branches = forward(core, request("INVITE", frm="sip:x@other.test"))
    fwd = branches[PHONES[0]]
    core.receive(reply(fwd, 180), PHONES[0], 0.5)
    out(core)
    core.receive(reply(fwd, 200), PHONES[0], 1.0)
    assert [m.status for m, _ in out(core)] == [200]
    core.receive(request("CANCEL", frm="sip:x@other.test"), ALICE, 1.01, WALL)
    assert [(m.status, d) for m, d in out(core)] == [(200, ALICE)]
    core.receive(request("INVITE", frm="sip:x@other.test"), ALICE, 1.02, WALL)
    assert out(core) == []
    _, branches = forward(
        core, request("INVITE", frm="sip:x@other.test", call_id="c2", branch="z9hG4bKc2"), now=2.0
    )
    fwd = branches[PHONES[0]]
    core.receive(reply(fwd, 180), PHONES[0], 2.5)
    out(core)
    core.receive(
        request("CANCEL", frm="sip:x@other.test", call_id="c2", branch="z9hG4bKc2"),
        ALICE,
        3.0,
        WALL,
    )
    assert [
        getattr(m, "method", m.status if isinstance(m, Response) else None) for m, _ in out(core)
    ] == [200, "CANCEL"]
    core.receive(reply(fwd, 200), PHONES[0], 3.01)
    assert [(m.status, d) for m, d in out(core)] == [(200, ALICE)]
    core.handle_timer(3.0 + 32.0)
    assert [m.status for m, d in out(core) if d == ALICE] == []


def test_timer_c_cancels_a_branch_that_rings_forever(core, location):
    bind(location, "bob", PHONES[0])
    _, branches = forward(core, request("INVITE", frm="sip:x@other.test"))
    fwd = branches[PHONES[0]]
    core.receive(reply(fwd, 180), PHONES[0], 1.0)
    out(core)
    core.receive(reply(fwd, 183), PHONES[0], 100.0)
    out(core)
    assert run_until(core, 279.9) == []
    assert core.get_timer() == 280.0
    (cancel,) = [m for m, d in run_until(core, 280.0) if d == PHONES[0]]
    assert cancel.method == "CANCEL"
    assert [m.status for m, d in run_until(core, 280.0 + 32.0) if d == ALICE] == [408]


# -- stateless forwarding, DNS and failover ------------------------------------------


def test_ack_for_2xx_and_stray_2xx_are_forwarded_statelessly(core):
    ack = request(
        "ACK",
        uri="sip:bob@10.0.0.2:5062",
        to_tag="t",
        branch="z9hG4bKack",
        extra=(f"Route: {our_route(core)}",),
    )
    core.receive(ack, ALICE, 0.0, WALL)
    fwd = only(core, PHONES[0])
    assert fwd.method == "ACK" and fwd.get("route") is None and len(fwd.vias) == 2
    core.receive(
        request(
            "ACK",
            uri="sip:bob@10.0.0.2:5062",
            to_tag="t",
            branch="z9hG4bKack",
            extra=(f"Route: {our_route(core)}",),
        ),
        ALICE,
        0.1,
        WALL,
    )
    assert only(core).top_via.branch == fwd.top_via.branch
    stray = reply(fwd, 200)
    stray.set("CSeq", "1 INVITE")
    core.receive(stray, PHONES[0], 0.2)
    resp = only(core, ("udp", "10.0.0.1", 5061))
    assert resp.status == 200 and len(resp.vias) == 1


def test_in_dialog_request_is_forwarded_statelessly_with_its_response(core):
    bye = request(
        "BYE",
        uri="sip:bob@10.0.0.2:5062",
        to_tag="t",
        branch="z9hG4bKbye",
        extra=(f"Route: {our_route(core)}",),
    )
    core.receive(bye, ALICE, 0.0, WALL)
    fwd = only(core, PHONES[0])
    assert fwd.method == "BYE" and fwd.get("route") is None and fwd.max_forwards == 69
    assert fwd.top_via.branch.startswith("z9hG4bKs")
    assert core.layer.stats() == {"server": 0, "client": 0}
    core.receive(
        request(
            "BYE",
            uri="sip:bob@10.0.0.2:5062",
            to_tag="t",
            branch="z9hG4bKbye",
            extra=(f"Route: {our_route(core)}",),
        ),
        ALICE,
        0.5,
        WALL,
    )
    assert only(core, PHONES[0]).top_via.branch == fwd.top_via.branch
    core.receive(reply(fwd, 200), PHONES[0], 0.6)
    resp = only(core, ("udp", "10.0.0.1", 5061))
    assert resp.status == 200 and len(resp.vias) == 1
    core.receive(reply(fwd, 200), ("udp", "10.9.9.9", 5060), 0.7)
    assert len(out(core)) == 1


def test_trying_waits_200_ms_and_is_skipped_when_the_phone_rings(location):
    core = ProxyCore(ProxySettings(DOMAIN, *PROXY), location)
    bind(location, "bob", PHONES[0])
    core.receive(request("INVITE", frm="sip:x@other.test"), ALICE, 0.0, WALL)
    fwd = only(core, PHONES[0])
    core.receive(reply(fwd, 180), PHONES[0], 0.1)
    assert only(core, ALICE).status == 180
    assert [m for m, d in run_until(core, 0.3) if d == ALICE] == []
    core.receive(
        request("INVITE", frm="sip:x@other.test", call_id="c2", branch="z9hG4bKc2"),
        ALICE,
        1.0,
        WALL,
    )
    only(core, PHONES[0])
    assert run_until(core, 1.19) == []
    assert [(m.status, d) for m, d in run_until(core, 1.2)] == [(100, ALICE)]


def test_other_domain_is_located_and_fails_over(core):
    invite = authed_invite(core, uri="sip:dave@other.test")
    core.receive(invite, ALICE, 0.0, WALL)
    assert [m.status for m, _ in out(core)] == [100]
    (lookup,) = core.lookups()
    assert lookup == Lookup(lookup.token, "other.test", None, None, "sip")
    targets = [
        Target("10.1.0.1", 5060, "udp"),
        Target("10.1.0.2", 5070, "tcp"),
        Target("10.1.0.3", 5060, "udp"),
    ]
    core.resolved(lookup.token, targets, 0.1)
    first = only(core, ("udp", "10.1.0.1", 5060))
    assert first.uri == "sip:dave@other.test" and first.top_via.transport == "UDP"
    msgs = run_until(core, 0.1 + 32.0)
    assert {d for _, d in msgs} == {("udp", "10.1.0.1", 5060), ("tcp", "10.1.0.2", 5070)}
    second = msgs[-1][0]
    assert second.top_via.transport == "TCP" and second.top_via.branch != first.top_via.branch
    core.receive(reply(second, 503), ("tcp", "10.1.0.2", 5070), 33.0)
    assert [(m.method, d) for m, d in out(core)] == [
        ("ACK", ("tcp", "10.1.0.2", 5070)),
        ("INVITE", ("udp", "10.1.0.3", 5060)),
    ]
    core.transport_error(("udp", "10.1.0.3", 5060), 33.1)
    resp = only(core, ALICE)
    assert resp.status == 500


def test_unresolvable_domain_and_cancel_while_resolving(core):
    core.receive(authed_invite(core, uri="sip:dave@nowhere.test"), ALICE, 0.0, WALL)
    out(core)
    (lookup,) = core.lookups()
    core.resolved(lookup.token, [], 0.1)
    assert only(core, ALICE).status == 404
    core.receive(authed_invite(core, uri="sip:dave@slow.test", call_id="c2"), ALICE, 1.0, WALL)
    out(core)
    (lookup,) = core.lookups()
    core.receive(
        request(
            "CANCEL",
            uri="sip:dave@slow.test",
            to="sip:dave@slow.test",
            cseq=2,
            call_id="c2",
            branch="z9hG4bK2c2",
        ),
        ALICE,
        1.1,
        WALL,
    )
    assert [m.status for m, _ in out(core)] == [200, 487]
    core.resolved(lookup.token, [Target("10.1.0.1", 5060, "udp")], 1.2)
    assert out(core) == []


def test_thousands_of_unanswered_branches_time_out(core, location):
    bind(location, "bob", PHONES[0])
    for n in range(2000):
        core.receive(
            request("INVITE", frm="sip:x@other.test", call_id=f"c{n}", branch=f"z9hG4bK{n}"),
            ALICE,
            n * 0.001,
            WALL,
        )
    assert len(out(core)) == 4000
    core.handle_timer(40.0)
    assert sorted({m.status for m, d in out(core) if d == ALICE}) == [408]
    assert core.layer.stats()["client"] == 0


def test_sans_io_imports_only():
    banned = {"gevent", "zmq", "socket", "time", "peewee", "asyncio", "select"}
    root = pathlib.Path(__file__).resolve().parent.parent / "sipcore"
    for name in ("proxy.py", "forking.py"):
        tree = ast.parse((root / name).read_text())
        mods = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        mods += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
        assert not {m.split(".")[0] for m in mods} & banned, (name, mods)


# -- issue 11: dialogs proven, loops bounded, identity, enumeration, emergency ----


def test_a_route_without_our_token_proves_no_dialog(core):
    forged = (
        "Route: <sip:127.0.0.1:5060;lr>",
        "Route: <sip:127.0.0.1:5060;lr;dlg=00ff>",
        f"Route: {our_route(core, call_id='another-call')}",
    )
    for k, route in enumerate(forged):
        core.receive(
            request(
                "INVITE",
                uri="sip:+15551234567@10.9.9.9",
                frm="sip:x@other.test",
                to_tag="t",
                call_id="call-1",
                branch=f"z9hG4bKf{k}",
                extra=(route,),
            ),
            ALICE,
            0.0,
            WALL,
        )
        assert only(core, ALICE).status == 403
        core.receive(
            request(
                "MESSAGE",
                uri="sip:+15551234567@10.9.9.9",
                to_tag="t",
                branch=f"z9hG4bKm{k}",
                extra=(route,),
            ),
            ALICE,
            0.0,
            WALL,
        )
        assert only(core, ALICE).status == 407
        core.receive(
            request(
                "ACK",
                uri="sip:+15551234567@10.9.9.9",
                to_tag="t",
                branch=f"z9hG4bKa{k}",
                extra=(route,),
            ),
            ALICE,
            0.0,
            WALL,
        )
        assert out(core) == []


def test_a_peer_node_accepts_our_token_after_failover(location):
    cluster = ClusterAddresses([DOMAIN], [PROXY, ("127.0.0.2", 5060)])
    mine = ProxySettings(DOMAIN, *PROXY, secret=b"s" * 32, cluster=cluster)
    peer = ProxyCore(
        ProxySettings(DOMAIN, "127.0.0.2", 5060, secret=b"s" * 32, cluster=cluster), location
    )
    route = mine.record_route(request("INVITE"))
    # the callee hangs up: the caller's tag is in To
    bye = request(
        "BYE",
        uri="sip:alice@10.0.0.1:5061",
        frm="sip:bob@example.test",
        to="sip:alice@example.test",
        to_tag="ftag",
        extra=(f"Route: {route}",),
    )
    bye.set("From", "<sip:bob@example.test>;tag=callee")
    core_sent = forward(peer, bye)[1]
    assert list(core_sent) == [ALICE] and core_sent[ALICE].get("route") is None
    other = ProxySettings(DOMAIN, *PROXY, secret=b"t" * 32, cluster=cluster)
    assert route != other.record_route(request("INVITE"))


def test_max_breadth_and_max_branches(location):
    core = ProxyCore(ProxySettings(DOMAIN, *PROXY, max_branches=2), location, trying_delay=0)
    for n, phone in enumerate(PHONES):
        bind(location, "bob", phone, n=n)
    _, branches = forward(core, request("MESSAGE", frm="sip:x@other.test"))
    assert len(branches) == 2
    assert {m.get("max-breadth") for m in branches.values()} == {"30"}
    core.receive(
        request(
            "MESSAGE",
            frm="sip:x@other.test",
            call_id="c2",
            branch="z9hG4bKc2",
            extra=("Max-Breadth: 0",),
        ),
        ALICE,
        0.0,
        WALL,
    )
    resp = only(core, ALICE)
    assert (resp.status, resp.reason) == (440, "Max-Breadth Exceeded")
    _, branches = forward(
        core,
        request(
            "MESSAGE",
            frm="sip:x@other.test",
            call_id="c3",
            branch="z9hG4bKc3",
            extra=("Max-Breadth: 1",),
        ),
    )
    assert [m.get("max-breadth") for m in branches.values()] == ["1"]


def test_bindings_reaching_the_cluster_are_never_forked_to(core, location):
    bind(location, "bob", PHONES[0], contact="sip:bob@example.test", n=1)
    bind(location, "bob", PHONES[1], contact="sip:bob@127.0.0.1:5060", n=2)
    core.receive(request("MESSAGE", frm="sip:x@other.test"), ALICE, 0.0, WALL)
    assert only(core, ALICE).status == 480
    bind(location, "bob", PHONES[2], n=3)
    _, branches = forward(
        core, request("MESSAGE", frm="sip:x@other.test", call_id="c2", branch="z9hG4bKc2")
    )
    assert list(branches) == [PHONES[2]]


@pytest.mark.parametrize(
    "frm",
    [
        "sip:alice@example.test.",
        "sip:alice@EXAMPLE.TEST",
        "sip:alice@127.0.0.1",
        "sip:alice@127.0.0.1:5070",
    ],
)
def test_the_domain_in_any_spelling_is_challenged(core, location, frm):
    bind(location, "bob", PHONES[0])
    core.receive(request("INVITE", frm=frm), ALICE, 0.0, WALL)
    assert only(core, ALICE).status == 407


def test_emergency_numbers_are_never_challenged(location):
    settings = ProxySettings(DOMAIN, *PROXY, emergency=frozenset({"911", "112"}))
    auth = Authenticator(DOMAIN, b"k" * 32, lookup, algorithms=("MD5",))
    core = ProxyCore(settings, location, auth, trying_delay=0)
    bind(location, "911", PHONES[2])
    for k, uri in enumerate(("sip:911@example.test", "sip:911@far.test", "tel:911")):
        bad = 'Digest username="bob", realm="example.test", nonce="n", uri="x", response="r"'
        _, branches = forward(
            core,
            request(
                "INVITE",
                uri=uri,
                to=uri,
                call_id=f"e{k}",
                branch=f"z9hG4bKe{k}",
                extra=("Max-Breadth: 0", f"Proxy-Authorization: {bad}"),
            ),
        )
        assert list(branches) == [PHONES[2]] and branches[PHONES[2]].uri.startswith("sip:911@")
    for k, (uri, frm) in enumerate(
        (
            ("sip:112@example.test", "sip:alice@example.test"),
            ("sip:112@far.test", "sip:x@other.test"),
        )
    ):
        core.receive(
            request("INVITE", uri=uri, to=uri, frm=frm, call_id=f"n{k}", branch=f"z9hG4bKn{k}"),
            ALICE,
            0.0,
            WALL,
        )
        resp = [m for m, _ in out(core) if m.status != 100]
        assert [(r.status, r.reason) for r in resp] == [(480, "No Route For Emergency Number")]


# -- Record-Route per transport (§16.6 step 4, RFC 5658) ---------------------------

TCP_BOB = "sip:bob@10.0.0.2:5062;transport=tcp"
SUBSCRIBE = dict(frm="sip:x@other.test", extra=("Event: presence",))


def rr(settings, transport, req=None):
    """Our Record-Route for ``req``'s dialog (the SUBSCRIBE below by default) on a leg."""
    return settings.record_route(req or request("SUBSCRIBE", **SUBSCRIBE), transport)


def _subscribe_to_tcp_bob(core, location, source):
    location.put(
        Binding(
            f"sip:bob@{DOMAIN}", "k", TCP_BOB, WALL + 3600, "reg", 1, received="tcp:10.0.0.2:40000"
        )
    )
    core.receive(request("SUBSCRIBE", **SUBSCRIBE), source, 0.0, WALL)
    return {d: m for m, d in out(core) if not isinstance(m, Response)}


def test_tcp_to_tcp_records_one_route_with_its_transport(core, location):
    (fwd,) = _subscribe_to_tcp_bob(core, location, ("tcp", "10.0.0.1", 41000)).values()
    assert fwd.get_all("record-route") == [rr(core.settings, "tcp")]
    assert ";transport=tcp;lr;dlg=" in fwd.get("record-route")


def test_udp_to_tcp_records_two_routes(core, location):
    """RFC 5658: the one facing the callee (TCP) on top, the caller's (UDP) below."""
    branches = _subscribe_to_tcp_bob(core, location, ALICE)
    assert list(branches) == [("tcp", "10.0.0.2", 40000)]
    (fwd,) = branches.values()
    assert fwd.get_all("record-route") == [rr(core.settings, "tcp"), rr(core.settings, "udp")]
    assert fwd.top_via.transport == "TCP"


def test_udp_to_udp_record_route_has_no_transport(core, location):
    bind(location, "bob", PHONES[0])
    _, branches = forward(core, request("SUBSCRIBE", **SUBSCRIBE))
    assert branches[PHONES[0]].get_all("record-route") == [rr(core.settings, "udp")]
    assert "transport" not in branches[PHONES[0]].get("record-route")


def test_both_of_a_double_record_route_are_removed():
    settings = ProxySettings(DOMAIN, *PROXY)
    bye = dict(uri="sip:bob@10.0.0.2:5062", to_tag="t")
    tcp, udp = (
        rr(settings, "tcp", request("BYE", **bye)),
        rr(settings, "udp", request("BYE", **bye)),
    )
    req = request("BYE", **bye, extra=(f"Route: {tcp}, {udp}, <sip:10.0.0.9;lr>",))
    assert preprocess_route(req, settings)
    assert req.get_all("route") == ["<sip:10.0.0.9;lr>"]
    req = request("BYE", **bye, extra=(f"Route: {udp}, {tcp}",))
    assert preprocess_route(req, settings) and req.get("route") is None
    req = request("BYE", **bye, extra=(f"Route: {udp}", f"Route: {tcp}"))
    assert preprocess_route(req, settings) and req.get("route") is None


def test_sips_is_refused_never_downgraded(core, location):
    """§26.2: without TLS a sips request gets 416 with the reason, not a UDP copy."""
    bind(location, "bob", PHONES[0])
    core.receive(
        request(
            "MESSAGE",
            uri="sips:bob@example.test",
            frm="sip:x@other.test",
            to="sips:bob@example.test",
        ),
        ALICE,
        0.0,
        WALL,
    )
    ((resp, dest),) = out(core)
    assert dest == ALICE and resp.status == 416 and "TLS" in resp.reason
    core.receive(
        request(
            "MESSAGE",
            frm="sip:x@other.test",
            call_id="c2",
            branch="z9hG4bKc2",
            extra=("Route: <sips:proxy.far.test;lr>",),
        ),
        ALICE,
        0.0,
        WALL,
    )
    ((resp, dest),) = out(core)
    assert resp.status == 416


@pytest.fixture
def tls_core(location):
    """The ``core`` proxy with TLS on port 5061 (no authentication)."""
    return ProxyCore(ProxySettings(DOMAIN, *PROXY, tls_port=5061), location, trying_delay=0)


def test_with_tls_a_sips_request_goes_over_tls_only(tls_core, location):
    """§26.2 with TLS: a sips request reaches a phone registered over TLS (its
    flow), and is never copied to a binding reachable only over UDP."""
    bind(location, "bob", ("tls", "10.0.0.2", 5062), contact="sips:bob@10.0.0.2:5062")
    bind(location, "bob", PHONES[1], n=1)
    tls_core.receive(
        request(
            "INVITE",
            uri="sips:bob@example.test",
            frm="sips:x@other.test",
            to="sips:bob@example.test",
        ),
        ALICE,
        0.0,
        WALL,
    )
    sent = [(m, d) for m, d in out(tls_core) if d != ALICE]
    assert [d for _, d in sent] == [("tls", "10.0.0.2", 5062)]
    fwd = sent[0][0]
    assert (fwd.top_via.transport, fwd.top_via.port) == ("TLS", 5061)
    # The caller's leg is UDP, the callee's TLS: two Record-Routes (RFC 5658).
    rr = fwd.get_all("record-route")
    assert rr[0].startswith("<sip:127.0.0.1:5061;transport=tls;lr;") and len(rr) == 2
    assert rr[1].startswith("<sip:127.0.0.1:5060;lr;")


def test_with_tls_our_address_on_the_tls_port_is_local():
    settings = ProxySettings(DOMAIN, *PROXY, tls_port=5061)
    assert settings.is_local(parse_uri("sips:bob@127.0.0.1"))
    assert settings.is_local(parse_uri("sip:bob@127.0.0.1:5061;transport=tls"))
    assert not settings.is_local(parse_uri("sip:bob@127.0.0.1:5062"))
    assert not ProxySettings(DOMAIN, *PROXY).is_local(parse_uri("sips:bob@127.0.0.1"))


def test_with_tls_a_loop_through_our_tls_via_gets_482(tls_core, location):
    """Our Via over TLS names the TLS port; a request coming back with it is still a loop."""
    tls_phone = ("tls", "10.0.0.2", 5062)
    bind(location, "bob", tls_phone, contact="sip:bob@10.0.0.2:5062;transport=tls")
    _, branches = forward(tls_core, request("MESSAGE", frm="sip:x@other.test"))
    looped = parse_message(branches[tls_phone].encode())
    assert looped.top_via.port == 5061
    looped.uri = "sip:bob@example.test"
    stamp_via(looped, *tls_phone)
    tls_core.receive(looped, tls_phone, 0.1, WALL)
    assert only(tls_core).status == 482


def test_with_tls_a_sips_request_to_udp_phones_only_is_not_downgraded(tls_core, location):
    bind(location, "bob", PHONES[0])
    tls_core.receive(
        request(
            "MESSAGE",
            uri="sips:bob@example.test",
            frm="sip:x@other.test",
            to="sips:bob@example.test",
        ),
        ALICE,
        0.0,
        WALL,
    )
    sent = out(tls_core)
    assert all(dest == ALICE for _, dest in sent), sent
    assert (sent[-1][0].status, sent[-1][0].reason) == (404, "Destination Not Found")


def test_a_stack_of_forged_routes_naming_us_is_all_removed_once():
    """Hostile: 200 Routes naming us (both forms, no dialog token) before a foreign one are
    all removed in one pass, and prove no dialog: the request is not trusted as in one."""
    settings = ProxySettings(DOMAIN, *PROXY)
    ours = ", ".join(["<sip:127.0.0.1:5060;lr>", "<sip:127.0.0.1:5060;transport=tcp;lr>"] * 100)
    req = request(
        "BYE", uri="sip:bob@10.0.0.2:5062", to_tag="t", extra=(f"Route: {ours}, <sip:10.0.0.9;lr>",)
    )
    assert not preprocess_route(req, settings)
    assert req.get_all("route") == ["<sip:10.0.0.9;lr>"]
