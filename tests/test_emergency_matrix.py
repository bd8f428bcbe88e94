"""Emergency calls pass every defence (issue 17), one real-process cell per fault, each with
an emergency call that must reach the emergency gateway (a SIPp UAS) and, where the defence
refuses, an ordinary request that it does refuse:

- master down: the nodes' master (its key configured) never answers; the node notifies
  the webhook itself;
- the caller's source banned (shared by every node): an authenticated call gets 403;
- node drained: a REGISTER gets 503 Draining;
- overload: a flood into a SIGSTOPped node makes it shed (503) new work;
- node killed: SIGKILL, the call goes through the other node;
- node syncing: its peer never answers, a REGISTER gets 503 Syncing;
- TCP per-source cap: a connection over it is closed unless it brings an emergency INVITE;
- NAT in front: a phone in a network namespace behind a masquerading router, its public
  address banned, dials 911 with SIPp; the callback is that of the router's location.
"""

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from actors.bus import generate_keypair
from loadtest.harness import Cluster, NodeProcess, free_port, write_users_csv
from loadtest.sipclient import SipClient, SipClientError
from tests.netns import behind_nat, network_or_skip
from tests.test_alarms import Webhook
from tests.test_gateways import Gateway, wait_for
from tests.test_master_push import SETTINGS, wait_serving
from tests.test_overload import flood

NAT_CALLBACK = "+15557000"


def plan(psap_port: int, locations: str = "") -> str:
    return f"""
[dialplan]
probe_interval = 0
default_callback = "+15550000"
{locations}
[[dialplan.gateways]]
name = "psap"
host = "127.0.0.1"
port = {psap_port}
emergency = true
"""


@pytest.fixture(scope="module")
def psap(tmp_path_factory):
    gw = Gateway(free_port(), str(tmp_path_factory.mktemp("psap")), "psap")
    yield gw
    gw.stop()


def start_cluster(
    work: str,
    psap: Gateway,
    n: int = 2,
    start: int | None = None,
    settings: dict | None = None,
    address: str = "127.0.0.1",
    locations: str = "",
    limits: str = "",
    more: str = "",
) -> tuple[Cluster, dict]:
    cluster = Cluster(
        work,
        n,
        settings={**SETTINGS, **(settings or {})},
        address=address,
        extra=plan(psap.uas.port, locations) + more,
    )
    users = os.path.join(work, "users.csv")
    rows = dict(write_users_csv(users, 5))
    if "master_key" not in (settings or {}):  # else the (absent) master holds the users
        cluster.provision(users)
    for node in cluster.nodes:
        node.rows = rows
        if limits:
            with open(node.config) as f:
                text = f.read()
            with open(node.config, "w") as f:
                f.write(
                    text.replace("[limits]\n", f"[limits]\n{limits}\n", 1).replace(
                        "overload_delay = 0\n", ""
                    )
                )
    for node in cluster.nodes[:start]:
        node.start()
    return cluster, rows


def dial(node: NodeProcess, number: str, password: str | None = None, user: str = "user1") -> int:
    """``number`` from ``user``; hang up a 2xx; the final status (407/403 when the
    credentials were refused)."""
    c = SipClient(
        (node.address, node.port),
        user,
        password if password is not None else node.rows[user],
        "example.test",
        t1=0.1,
        timeout=10.0,
    )
    try:
        resp, dialog = c.invite(f"sip:{number}@example.test")
        if dialog is not None:
            assert dialog.bye().status == 200
        return resp.status
    except SipClientError as e:
        for status in (403, 407):
            if f"credentials refused: {status}" in str(e):
                return status
        raise
    finally:
        c.close()


def register(node: NodeProcess, user: str = "user2") -> int:
    c = SipClient(
        (node.address, node.port), user, node.rows[user], "example.test", t1=0.1, timeout=5.0
    )
    try:
        return c.register().status
    finally:
        c.close()


def reaches_psap(psap: Gateway, node: NodeProcess, number: str = "911") -> str:
    """An emergency call through ``node``: answered, and the INVITE the gateway got."""
    before = len(psap.invites())
    assert dial(node, number, password="wrong") == 200
    return wait_for(lambda: psap.invites()[before:], 5)[-1]


@pytest.fixture(scope="module")
def hook():
    h = Webhook()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, psap, hook):
    work = str(tmp_path_factory.mktemp("matrix"))
    master_public, _ = generate_keypair()  # a master whose key the nodes know, never running
    c, _rows = start_cluster(
        work,
        psap,
        settings={"master_key": master_public},
        limits="overload_delay = 0.2",
        more=f'\n[emergency]\nwebhook = "{hook.url}"\n',
    )
    try:
        for node in c.nodes:
            assert wait_serving(c, node, 30.0), node.log_tail()
        yield c
    finally:
        c.stop()


def test_cell_master_down(cluster, psap, hook):
    n1 = cluster.nodes[0]
    assert "INVITE sip:911@" in reaches_psap(psap, n1)
    # The node itself tells the designated people: no master is needed.
    assert wait_for(lambda: [b for b in hook.bodies if b.get("node") == "node1"], 10)
    assert dial(n1, "95551234", password="wrong") == 407


def test_cell_source_banned(cluster, psap):
    n1, n2 = cluster.nodes
    assert cluster.control(n1, "ban", kind="source", key="127.0.0.1", seconds=120)
    try:
        assert wait_for(lambda: cluster.control(n2, "bans"), 5)  # shared with the peer
        assert dial(n1, "user2") == 403  # right password, banned source
        for node in (n1, n2):
            assert "INVITE sip:911@" in reaches_psap(psap, node)
    finally:
        for node in (n1, n2):
            cluster.control(node, "unban", kind="source", key="127.0.0.1")


def test_cell_node_drained(cluster, psap):
    n2 = cluster.nodes[1]
    cluster.control(n2, "drain", on=True, retry_after=5)
    try:
        assert register(n2) == 503
        assert "INVITE sip:911@" in reaches_psap(psap, n2)
    finally:
        cluster.control(n2, "drain", on=False)


def test_cell_overload(cluster, psap):
    n1 = cluster.nodes[0]
    stop, replies, progress = threading.Event(), [], {"sent": 0}
    flooder = threading.Thread(target=flood, args=(n1, stop, replies, progress))
    flooder.start()
    try:
        n1.signal(signal.SIGSTOP)  # a second of the flood waits in the node's socket
        try:
            deadline = time.monotonic() + 5
            while progress["sent"] < 2000 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            n1.signal(signal.SIGCONT)
        # The flood grows until the node sheds (test_overload.flood): bounded by 10 s.
        assert wait_for(lambda: any(r[0].startswith(b"SIP/2.0 503") for r in replies[:]), 10), (
            progress
        )
        invite = reaches_psap(psap, n1)
    finally:
        stop.set()
        flooder.join(timeout=20)
    assert "INVITE sip:911@" in invite


def test_cell_node_killed(cluster, psap):
    n1, n2 = cluster.nodes
    n1.signal(signal.SIGKILL)
    n1.proc.wait(timeout=10)
    assert "INVITE sip:911@" in reaches_psap(psap, n2)


def test_cell_node_syncing(tmp_path, psap):
    c, _ = start_cluster(str(tmp_path), psap, start=1, settings={"alone_wait": 60.0})
    try:
        n1 = c.nodes[0]
        assert c.control(n1, "status", brief=True)["state"] == "syncing"
        assert register(n1) == 503
        assert dial(n1, "user2") == 503
        # A request dressed up as within a dialog, its Route without the dialog's token.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(5)
            forged = raw_invite(s.getsockname(), "user2", "UDP").replace(
                b"To: <sip:user2@example.test>",
                b"To: <sip:user2@example.test>;tag=t1\r\n"
                b"Route: <sip:%s:%d;lr>" % (n1.address.encode(), n1.port),
            )
            s.sendto(forged, (n1.address, n1.port))
            assert s.recv(65535).startswith(b"SIP/2.0 503 Syncing")
        invite = reaches_psap(psap, n1, "911")
        assert "INVITE sip:911@" in invite
        assert c.control(n1, "status", brief=True)["state"] == "syncing"
    finally:
        c.stop()


def raw_invite(local: tuple[str, int], number: str, transport: str = "TCP") -> bytes:
    tag = os.urandom(4).hex()
    return (
        f"INVITE sip:{number}@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch=z9hG4bK{tag};rport\r\n"
        f"From: <sip:user1@example.test>;tag={tag}\r\nTo: <sip:{number}@example.test>\r\n"
        f"Call-ID: {tag}@matrix\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:user1@{local[0]}:{local[1]};transport=tcp>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def connect(node: NodeProcess) -> socket.socket:
    s = socket.create_connection((node.address, node.port), timeout=5)
    s.settimeout(5)
    return s


def closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        while s.recv(65535):
            pass
        return True
    except (TimeoutError, OSError) as e:
        return not isinstance(e, TimeoutError)


def test_cell_tcp_per_source_cap(tmp_path, psap):
    node = NodeProcess(
        str(tmp_path),
        extra=plan(psap.uas.port),
        limits="udp_rate = 0\noverload_delay = 0\ntcp_max_per_source = 2\ntcp_header_timeout = 2",
    )
    node.start()
    held = [connect(node) for _ in range(2)]
    try:
        other = connect(node)  # over the cap: not an emergency call, closed
        other.sendall(raw_invite(other.getsockname(), "9110"))
        assert closed_within(other, 3.0)
        idle = connect(node)  # over the cap and silent: closed after the header timeout
        assert closed_within(idle, 4.0)
        before = len(psap.invites())
        sos = connect(node)
        sos.sendall(raw_invite(sos.getsockname(), "911"))
        answers = b""
        deadline = time.monotonic() + 5
        while b"SIP/2.0 200" not in answers and time.monotonic() < deadline:
            answers += sos.recv(65535)
        assert b"SIP/2.0 200" in answers, answers
        assert wait_for(lambda: psap.invites()[before:], 5)
        for s in (other, idle, sos):
            s.close()
    finally:
        for s in held:
            s.close()
        node.stop()


def test_cell_nat_in_front_with_its_address_banned(tmp_path, psap):
    net = network_or_skip(["router"])
    try:
        router = net["router"]
        phone = behind_nat(net, "router", "phone")
        locations = (
            f'[[dialplan.locations]]\nnetwork = "{router.address}/32"\n'
            f'callback = "{NAT_CALLBACK}"\nname = "branch office"\n'
        )
        c, _ = start_cluster(
            str(tmp_path), psap, n=1, start=1, address=f"{net.subnet}.1", locations=locations
        )
        try:
            node = c.nodes[0]
            assert wait_serving(c, node, 30.0), node.log_tail()
            assert c.control(node, "ban", kind="source", key=router.address, seconds=120)
            before = len(psap.invites())
            out = subprocess.run(
                [
                    *phone,
                    "sipp",
                    "-sn",
                    "uac",
                    "-s",
                    "911",
                    f"{node.address}:{node.port}",
                    "-m",
                    "1",
                    "-timeout",
                    "15",
                    "-timeout_error",
                    "-nostdin",
                    "-trace_err",
                    "-error_file",
                    str(tmp_path / "sipp-nat.err"),
                ],
                capture_output=True,
                text=True,
                timeout=30,
                cwd=str(tmp_path),
            )
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
            invite = wait_for(lambda: psap.invites()[before:], 5)[-1]
            assert f"P-Asserted-Identity: <sip:{NAT_CALLBACK}@example.test;user=phone>" in invite
        finally:
            c.stop()
    finally:
        net.close()
