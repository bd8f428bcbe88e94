"""Attacks on the proxy half of a node open to the public (issue 11), tried on a real node.

Each test plays the attacker with plain UDP sockets (forged requests) and
the ``SipClient`` of the load tests (real phones, registered with digest
credentials), and checks that the forged request reaches nothing:

- an unauthenticated request that looks in-dialog (To tag, Route to the
  node, a Record-Route token stolen from another call) is not relayed;
- a REGISTER whose Contact points back at the cluster is refused, so the
  issue's one-INVITE amplification cannot be set up, and Max-Breadth
  bounds what one INVITE forks to;
- a From naming the domain in another spelling is challenged;
- an unknown user and a user without a binding look the same;
- a call to an emergency number is never challenged nor refused.
"""

import os
import socket
import statistics
import subprocess
import time

import pytest

from loadtest.harness import Cluster, write_users_csv
from loadtest.sipclient import SipClient
from sipcore.message import Request, parse_message
from tests.test_proxy import exchange, invite, start_node

ALIAS = "alias.test"
QUIET = 1.0


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node with users ``user0``.. and ``911``, and the alias ``alias.test``."""
    work = str(tmp_path_factory.mktemp("attacks"))
    n = start_node(work, users=20, sip=f'aliases = ["{ALIAS}"]\n', numbers=1)
    yield n
    n.stop()


def phone(node, user):
    """A registered phone: a ``SipClient`` whose socket is the contact it registered."""
    client = SipClient(
        (node.address, node.port), user, dict(node.rows)[user], node.domain, t1=0.25, timeout=8.0
    )
    resp = client.register()
    assert resp.status == 200, resp.status
    return client


def received(sock, wait: float = QUIET) -> list[Request]:
    """Every request that reaches ``sock`` within ``wait`` seconds (bounded)."""
    got = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            msg = parse_message(sock.recv(65535))
        except TimeoutError:
            break
        if isinstance(msg, Request):
            got.append(msg)
    return got


def forged(
    method, target, route, frm="sip:stranger@other.test", call_id=None, to_tag="t1", from_tag="f1"
):
    """An in-dialog-looking request (``PORT``: the sender's port, for ``exchange``)."""
    call_id = call_id or os.urandom(8).hex()
    return (
        f"{method} {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:PORT;branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
        f"Route: {route}\r\nFrom: <{frm}>;tag={from_tag}\r\nTo: <{target}>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 2 {method}\r\nMax-Forwards: 70\r\n"
        "Contact: <sip:x@127.0.0.1:PORT>\r\nContent-Length: 0\r\n\r\n"
    )


def listener():
    """A UDP socket standing for the toll-fraud destination."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def test_forged_in_dialog_invite_and_message_reach_nothing(node):
    far = listener()
    try:
        target = f"sip:+15551234567@127.0.0.1:{far.getsockname()[1]}"
        plain = f"<sip:{node.address}:{node.port};lr>"
        bad_token = f"<sip:{node.address}:{node.port};lr;dlg={'0' * 24}>"
        for route in (plain, bad_token):
            for method in ("INVITE", "MESSAGE"):
                answer = exchange(node, forged(method, target, route))
                assert answer.startswith("SIP/2.0 403"), answer
                answer = exchange(node, forged(method, target, route, frm="sip:user5@example.test"))
                assert answer.startswith("SIP/2.0 407"), answer
            assert exchange(node, forged("ACK", target, route), timeout=QUIET) is None
        assert received(far) == []
    finally:
        far.close()


def test_a_token_from_another_call_does_not_open_a_relay(node):
    callee = phone(node, "user1")
    far = listener()
    try:
        call_id = os.urandom(8).hex()
        exchange(node, invite("sip:user1@example.test", call_id=call_id), timeout=QUIET)
        inv = next(m for m in received(callee.sock) if m.method == "INVITE")
        rr = inv.get("record-route")
        assert ";dlg=" in rr
        target = f"sip:+15551234567@127.0.0.1:{far.getsockname()[1]}"
        answer = exchange(node, forged("INVITE", target, rr))
        assert answer.startswith("SIP/2.0 403"), answer
        assert received(far) == []
        # within its own dialog the same Route is honoured (the callee hangs up)
        bye = forged(
            "BYE",
            f"sip:x@127.0.0.1:{far.getsockname()[1]}",
            rr,
            call_id=call_id,
            frm="sip:user1@example.test",
            from_tag="callee",
            to_tag="f1",
        )
        exchange(node, bye, timeout=QUIET)
        assert [m.method for m in received(far)] == ["BYE"]
    finally:
        far.close()
        callee.close()


@pytest.mark.parametrize(
    "contact",
    [
        "<sip:user2@{addr}:{port}>",
        "sip:user2@{addr}:{port}",
        "<sip:user2@example.test>",
        "<sip:user2@EXAMPLE.test.:5080>",
        f"<sip:user2@{ALIAS}>",
        "<sip:user2@10.9.9.9:{port};maddr={addr}>",
    ],
)
def test_register_contact_pointing_at_the_cluster_is_refused(node, contact):
    client = SipClient(
        (node.address, node.port),
        "user2",
        dict(node.rows)["user2"],
        node.domain,
        t1=0.25,
        timeout=8.0,
    )
    try:
        value = contact.format(addr=node.address, port=node.port)
        resp = client.request(
            "REGISTER", f"sip:{node.domain}", [("Contact", value), ("Expires", "600")]
        )
        assert (resp.status, resp.reason) == (403, "Contact Points At This Cluster")
    finally:
        client.close()


def test_the_issues_loop_cannot_be_set_up_and_its_invite_ends_at_once(node):
    """Issue 11: ten contacts pointing back, then one unauthenticated INVITE."""
    client = SipClient(
        (node.address, node.port),
        "user3",
        dict(node.rows)["user3"],
        node.domain,
        t1=0.25,
        timeout=8.0,
    )
    try:
        for k in range(10):
            resp = client.request(
                "REGISTER",
                f"sip:{node.domain}",
                [("Contact", f"<sip:user3-{k}@{node.address}:{node.port}>")],
            )
            assert resp.status == 403
    finally:
        client.close()
    start = time.monotonic()
    answer = exchange(node, invite("sip:user3@example.test"))
    assert answer.startswith("SIP/2.0 480") and time.monotonic() - start < 1.0


def test_max_breadth_bounds_the_branches_of_one_invite(node):
    phones = [phone(node, "user4") for _ in range(4)]
    try:
        answer = exchange(
            node,
            invite("sip:user4@example.test").replace(
                "Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nMax-Breadth: 0\r\n"
            ),
        )
        assert answer.startswith("SIP/2.0 440"), answer
        exchange(
            node,
            invite("sip:user4@example.test").replace(
                "Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nMax-Breadth: 2\r\n"
            ),
            timeout=QUIET,
        )
        got = {p.local: m for p in phones for m in received(p.sock, 0.3) if m.method == "INVITE"}
        assert len(got) == 2 and all(m.get("max-breadth") == "1" for m in got.values())
    finally:
        for p in phones:
            p.close()


@pytest.mark.parametrize(
    "frm",
    [
        "sip:user5@example.test.",
        "sip:user5@EXAMPLE.TEST",
        "sip:user5@{addr}",
        "sip:user5@{addr}:5070",
        f"sip:user5@{ALIAS}",
        "sip:user5@{addr}:{port}",
    ],
)
def test_spoofed_caller_in_any_spelling_of_the_domain_is_challenged(node, frm):
    callee = phone(node, "user6")
    try:
        frm = frm.format(addr=node.address, port=node.port)
        answer = exchange(node, invite("sip:user6@example.test", frm=frm))
        assert answer.startswith("SIP/2.0 407"), answer
        assert [m for m in received(callee.sock, 0.3) if m.method == "INVITE"] == []
    finally:
        callee.close()


def _options(to: str) -> str:
    return invite(to).replace("INVITE", "OPTIONS")


def test_unknown_user_and_user_without_binding_look_the_same(node):
    """Same status and header names; lower quartiles of the answer times within 1.5x."""
    times: dict[str, list[float]] = {"nobody": [], "user9": []}
    answers = {}
    for _ in range(60):
        for user in times:
            for make in (invite, _options):
                start = time.perf_counter()
                answer = exchange(node, make(f"sip:{user}@example.test"))
                times[user].append(time.perf_counter() - start)
                head = answer.split("\r\n\r\n")[0].split("\r\n")
                answers.setdefault(user, set()).add(
                    (head[0], tuple(sorted(h.split(":")[0] for h in head[1:])))
                )
    assert answers["nobody"] == answers["user9"]
    assert {a[0] for a in answers["nobody"]} == {"SIP/2.0 480 Temporarily Unavailable"}
    low = {u: statistics.quantiles(t, n=4)[0] for u, t in times.items()}
    assert max(low.values()) < 1.5 * min(low.values()), low


def test_emergency_calls_are_never_challenged_nor_refused(node):
    sos = phone(node, "911")
    sos_contact = f"sip:911@{sos.local[0]}:{sos.local[1]}"
    try:
        for to, frm in (
            ("sip:911@example.test", "sip:user7@example.test"),
            ("sip:911@example.test", "sip:user7@example.test."),
            ("sip:911@far.test", "sip:stranger@other.test"),
            ("tel:911", "sip:user7@example.test"),
        ):
            exchange(
                node,
                invite(to, frm=frm).replace(
                    "Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nMax-Breadth: 0\r\n"
                ),
                timeout=0.5,
            )
            got = [m for m in received(sos.sock, 0.5) if m.method == "INVITE"]
            assert got and got[0].uri == sos_contact, (to, frm)
        answer = exchange(node, invite("sip:112@example.test", frm="sip:user7@example.test"))
        assert answer.startswith("SIP/2.0 480"), answer
        answer = exchange(node, invite("sip:112@far.test"))
        assert answer.startswith("SIP/2.0 480"), answer
    finally:
        sos.close()


def test_in_a_cluster_a_peer_is_refused_as_contact_and_honours_our_tokens(tmp_path):
    """Two nodes: a Contact at the peer's address is refused, and a dialog Record-Routed
    by node 1 goes on through node 2 (failover), while a forged one does not."""
    work = str(tmp_path)
    cluster = Cluster(work, n=2)
    rows = write_users_csv(os.path.join(work, "users.csv"), 5)
    cluster.provision(os.path.join(work, "users.csv"))
    cluster.start()
    one, two = cluster.nodes
    one.rows = rows
    callee = far = None
    try:
        assert cluster.wait_synced(15)
        client = SipClient(
            (one.address, one.port), "user2", "pw2", one.domain, t1=0.25, timeout=8.0
        )
        resp = client.request(
            "REGISTER", f"sip:{one.domain}", [("Contact", f"<sip:user2@{two.address}:{two.port}>")]
        )
        client.close()
        assert (resp.status, resp.reason) == (403, "Contact Points At This Cluster")
        callee = phone(one, "user1")
        far = listener()
        call_id = os.urandom(8).hex()
        exchange(one, invite("sip:user1@example.test", call_id=call_id), timeout=QUIET)
        rr = next(m for m in received(callee.sock) if m.method == "INVITE").get("record-route")
        target = f"sip:x@127.0.0.1:{far.getsockname()[1]}"
        answer = exchange(two, forged("INVITE", target, rr))
        assert answer.startswith("SIP/2.0 403"), answer
        bye = forged(
            "BYE",
            target,
            rr,
            call_id=call_id,
            frm="sip:user1@example.test",
            from_tag="callee",
            to_tag="f1",
        )
        exchange(two, bye, timeout=QUIET)
        got = received(far)
        # node 2 forwards it statefully (Timer E retransmits: the far end never answers)
        assert {(m.method, m.top_via.branch) for m in got} == {("BYE", got[0].top_via.branch)}
        assert got[0].get("route") is None
    finally:
        for s in (callee, far):
            if s is not None:
                s.close()
        cluster.stop()


def test_sipsak_cannot_register_the_domain_as_its_contact(node):
    reg = subprocess.run(
        [
            "sipsak",
            "-U",
            "-s",
            f"sip:user8@{node.address}:{node.port}",
            "-C",
            "sip:user8@example.test",
            "-u",
            "user8",
            "-a",
            dict(node.rows)["user8"],
            "-x",
            "120",
            "-vv",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert reg.returncode != 0
    assert "403 Contact Points At This Cluster" in reg.stdout + reg.stderr, reg.stdout
