"""The proxy in a real node process on loopback, with SIPp phones and a DNS server."""

import os
import socket
import time

import pytest

from actors.dnsserver import DnsServer
from loadtest.bench_call import Uas, register_contact, write_call_inf
from loadtest.harness import (
    SIPP_BUFFERS,
    NodeProcess,
    free_port,
    options_ping,
    run_sipp,
    write_users_csv,
)

USERS = 50
CALLS = 2000


def start_node(work, extra="", t1=None, users=USERS, sip="", numbers=0):
    """A node with ``users`` users (``user0``...), started; ``t1`` shortens every timer,
    ``sip`` adds lines to ``[sip]``, ``numbers`` adds users ``911``... (password ``pw1``...)."""
    n = NodeProcess(work, extra=extra)
    if t1 is not None or sip:
        with open(n.config) as f:
            text = f.read()
        lines = (f"t1 = {t1}\n" if t1 is not None else "") + sip
        with open(n.config, "w") as f:
            f.write(text.replace("[sip]\n", f"[sip]\n{lines}", 1))
    n.rows = write_users_csv(os.path.join(work, "users.csv"), users)
    if numbers:
        n.rows += write_users_csv(os.path.join(work, "numbers.csv"), numbers, "91", 1)
    for name in ("users.csv", "numbers.csv")[: 1 + bool(numbers)]:
        out = n.run_cli("user", "import", os.path.join(work, name))
        assert out.returncode == 0, out.stderr
    n.work = work
    return n.start()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node for the module's call tests."""
    n = start_node(str(tmp_path_factory.mktemp("proxy")))
    yield n
    n.stop()


def call(
    node,
    callee,
    scenario="uac_auth_call.xml",
    calls=10,
    rate=50,
    callers=None,
    timeout=60,
    transport="u1",
    extra=(),
):
    """Run a SIPp UAC from ``callers`` (default user10..user49) to ``callee``
    (a user of the node's domain, or ``user@other.domain``); ``extra``: more SIPp
    options (``-d MS``: each call held that long)."""
    inf = os.path.join(node.work, f"calls-{time.monotonic_ns()}.csv")
    write_call_inf(inf, callers or node.rows[10:], node.domain, callee)
    return run_sipp(
        scenario,
        f"{node.address}:{node.port}",
        node.work,
        inf=inf,
        calls=calls,
        rate=rate,
        limit=500,
        timeout=timeout,
        transport=transport,
        extra=(*SIPP_BUFFERS, *extra),
    )


def phone(node, user, scenario, calls=0, transport="u1"):
    """Register ``user`` from a fresh port, then start a SIPp UAS there."""
    port = free_port()
    password = dict(node.rows)[user]
    assert register_contact(node, user, password, port, node.work, transport)
    return Uas(scenario, port, node.work, calls=calls, transport=transport)


def exchange(node, text: str, timeout: float = 3.0) -> str | None:
    """Send one request over UDP (``PORT`` replaced by the local port); return the
    first final response."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.sendto(text.replace("PORT", str(port)).encode(), (node.address, node.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(65535).decode()
            except TimeoutError:
                return None
            if not data.startswith("SIP/2.0 1"):
                return data
    return None


def invite(to, frm="sip:stranger@other.test", call_id=None, branch=None):
    """An INVITE's text for ``exchange`` (``PORT`` is the sender's port)."""
    call_id = call_id or os.urandom(8).hex()
    branch = branch or "z9hG4bK" + os.urandom(6).hex()
    return (
        f"INVITE {to} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:PORT;branch={branch};rport\r\n"
        f"From: <{frm}>;tag=f1\r\nTo: <{to}>\r\nCall-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:x@127.0.0.1:PORT>\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def test_2000_authenticated_calls_without_a_failure(node):
    uas = phone(node, "user0", "uas_answer.xml")
    try:
        res = call(node, "user0", calls=CALLS, rate=250, timeout=90)
    finally:
        stats = uas.stop()
    assert (res.successful, res.failed) == (CALLS, 0), res.stderr
    assert stats["SuccessfulCall(C)"] == str(CALLS)


def test_cancel_while_ringing(node):
    uas = phone(node, "user1", "uas_ring_cancel.xml")
    try:
        res = call(node, "user1", "uac_cancel.xml", calls=50)
    finally:
        stats = uas.stop()
    assert (res.successful, res.failed) == (50, 0), res.stderr
    assert stats["SuccessfulCall(C)"] == "50"


def test_parallel_fork_busy_and_answer_gives_the_200(node):
    busy = phone(node, "user2", "uas_busy.xml")
    answer = phone(node, "user2", "uas_answer.xml")
    try:
        res = call(node, "user2", calls=30, rate=20)
    finally:
        busy_stats = busy.stop()
        answer_stats = answer.stop()
    assert (res.successful, res.failed) == (30, 0), res.stderr
    assert busy_stats["SuccessfulCall(C)"] == "30"
    assert answer_stats["SuccessfulCall(C)"] == "30"


def test_calls_over_tcp(node):
    uas = phone(node, "user3", "uas_answer.xml", transport="t1")
    try:
        res = call(node, "user3", calls=50, transport="t1")
    finally:
        stats = uas.stop()
    assert (res.successful, res.failed) == (50, 0), res.stderr
    assert stats["SuccessfulCall(C)"] == "50"


def test_unknown_user_and_known_user_without_binding_both_480(node):
    assert exchange(node, invite("sip:nobody@example.test")).startswith("SIP/2.0 480")
    assert exchange(node, invite("sip:user9@example.test")).startswith("SIP/2.0 480")


def test_local_caller_without_credentials_is_challenged(node):
    answer = exchange(node, invite("sip:user0@example.test", frm="sip:user5@example.test"))
    assert answer.startswith("SIP/2.0 407")
    assert 'Proxy-Authenticate: Digest realm="example.test"' in answer


def test_relaying_for_strangers_is_refused(node):
    assert exchange(node, invite("sip:bob@other.test")).startswith("SIP/2.0 403")


OTHER_ZONE = """\
$ORIGIN other.test.
$TTL 60
@ IN SOA ns.other.test. hostmaster.other.test. 1 3600 600 86400 60
@ IN NS ns.other.test.
ns IN A 127.0.0.1
dead IN A 127.0.0.1
live IN A 127.0.0.1
_sip._udp IN SRV 10 0 {dead} dead.other.test.
_sip._udp IN SRV 20 0 {live} live.other.test.
"""


def test_other_domain_through_srv_fails_over_from_a_dead_target(tmp_path):
    dead, live = free_port(), free_port()
    dns = DnsServer(OTHER_ZONE.format(dead=dead, live=live), "other.test")
    dns.start()
    n = start_node(
        str(tmp_path), extra=f'[dns]\nservers = ["127.0.0.1"]\nport = {dns.port}\n', t1=0.05
    )
    uas = Uas("uas_answer.xml", live, n.work)
    try:
        res = call(n, "bob@other.test", calls=3, rate=10, callers=n.rows[:3])
        stats = uas.stop()
    finally:
        uas.stop()
        n.stop()
        dns.stop()
    assert (res.successful, res.failed) == (3, 0), res.stderr + n.log_tail()
    assert stats["SuccessfulCall(C)"] == "3"
    assert ("_sip._udp.other.test", "SRV") in dns.queries
    assert "trying the next target" in n.log_tail(200)


def test_thousands_of_pending_transactions_do_not_block(tmp_path):
    n = start_node(str(tmp_path))
    try:
        blackhole = free_port()
        assert register_contact(n, "user7", dict(n.rows)["user7"], blackhole, n.work)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            for k in range(2000):
                s.sendto(
                    invite("sip:user7@example.test", call_id=f"pending-{k}")
                    .replace("PORT", str(port))
                    .encode(),
                    (n.address, n.port),
                )
            started = time.monotonic()
            answer = options_ping(n.address, n.port, 2.0)
            assert answer is not None and answer.startswith(b"SIP/2.0 200")
            assert time.monotonic() - started < 1.0
            s.settimeout(5.0)
            trying = set()
            deadline = time.monotonic() + 10
            while len(trying) < 2000 and time.monotonic() < deadline:
                data = s.recv(65535).decode()
                if data.startswith("SIP/2.0 100"):
                    trying.add(data.split("Call-ID: ")[1].split("\r\n")[0])
            assert len(trying) == 2000
        uas = phone(n, "user0", "uas_answer.xml")
        try:
            res = call(n, "user0", calls=20, rate=50)
        finally:
            uas.stop()
        assert (res.successful, res.failed) == (20, 0), res.stderr
    finally:
        n.stop()
