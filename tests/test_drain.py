"""Draining a real node (issues 12 and 17): 503 with Retry-After for new calls and
REGISTERs (sipsak and the load tests' SIP client), calls in progress go on to their
BYE, an emergency call still goes through, and undraining takes everything again.
The control command is tried with bad arguments and with a key the node does not know;
the dashboard's API and Nodes page drive the same node through Flask's test client."""

import os
import re
import socket
import time
import subprocess

import pytest

from actors.bus import Bus, BusError, generate_keypair, request
from actors.keys import Member, cluster_toml
from loadtest.answerer import AnsweringAgent
from loadtest.bench_register import write_register_inf
from loadtest.harness import Cluster, NodeProcess, free_port, run_sipp, write_users_csv
from loadtest.sipclient import SipClient, sdp_offer
from store import master as ms
from tests.test_front import front_pid, wait_until
from tests.test_node import request as sip_request
from tests.test_node import sip_exchange
from tests.test_proxy import invite
from tests.test_web import PASSWORD, basic, login, token
from web import create_app
from web.push import Pusher

SETTINGS = {"heartbeat": 0.2, "alone_wait": 0.5, "sync_timeout": 3.0}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One node with users ``user0``..``user5`` and ``911``; an answering agent holds
    ``user1`` and ``911``."""
    work = str(tmp_path_factory.mktemp("drain"))
    rows = write_users_csv(os.path.join(work, "users.csv"), 6)
    rows += write_users_csv(os.path.join(work, "numbers.csv"), 1, "91", 1)
    cluster = Cluster(work, n=1, settings=SETTINGS)
    cluster.provision(os.path.join(work, "users.csv"))
    cluster.provision(os.path.join(work, "numbers.csv"))
    cluster.start()
    agent = None
    try:
        assert cluster.wait_synced(15)
        node = cluster.nodes[0]
        node.rows = dict(rows)
        agent = AnsweringAgent(ring=0.05, t1=0.25)
        agent.start()
        users = [("user1", node.rows["user1"]), ("911", node.rows["911"])]
        assert agent.register([(node.address, node.port)], users, node.domain) == 2
        yield cluster, node
    finally:
        if agent is not None:
            agent.stop()
        cluster.stop()


def client(node, user):
    return SipClient(
        (node.address, node.port), user, node.rows[user], node.domain, t1=0.25, timeout=8.0
    )


def sipsak_register(node, user) -> str:
    out = subprocess.run(
        [
            "sipsak",
            "-U",
            "-s",
            f"sip:{user}@{node.address}:{node.port}",
            "-u",
            user,
            "-a",
            node.rows[user],
            "-i",
            "-x",
            "120",
            "-vv",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout + out.stderr


def drain(cluster, node, on: bool, **args) -> dict:
    return cluster.control(node, "drain", on=on, **args)


def test_drain_refuses_new_calls_and_registers_but_not_dialogs_nor_emergencies(lab):
    cluster, node = lab
    caller = client(node, "user2")
    try:
        resp, call = caller.invite(f"sip:user1@{node.domain}")
        assert resp.status == 200 and call is not None
        assert drain(cluster, node, True) == {"draining": True, "retry_after": 30}
        status = cluster.control(node, "status")
        assert status["draining"] is True and status["pending_server"] >= 0

        out = sipsak_register(node, "user3")
        assert "503 Draining" in out and "Retry-After: 30" in out, out
        resp = client(node, "user4").register()
        assert (resp.status, resp.get("retry-after")) == (503, "30")
        refused, none = caller.invite(f"sip:user1@{node.domain}")
        assert (refused.status, refused.get("retry-after"), none) == (503, "30", None)

        hold = call.request(
            "INVITE",
            sdp_offer(caller.local[0], 40000, "sendonly"),
            [("Content-Type", "application/sdp")],
        )
        assert hold.status == 200  # a re-INVITE (hold) goes on
        assert call.request("BYE").status == 200  # the call in progress ends
        resp, sos = caller.invite(f"sip:911@{node.domain}")
        assert resp.status == 200 and sos is not None  # never refused by a drain
        assert sos.request("BYE").status == 200
        assert cluster.control(node, "status")["drain_refused"] >= 3
        deadline = time.monotonic() + 5
        while not (status := cluster.control(node, "status"))["drained"]:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        assert status["pending_server"] == status["pending_client"] == 0

        assert drain(cluster, node, False)["draining"] is False
        assert "completed successful" in sipsak_register(node, "user3")
        resp, call = caller.invite(f"sip:user1@{node.domain}")
        assert resp.status == 200
        assert call.request("BYE").status == 200
        assert cluster.control(node, "status")["draining"] is False
    finally:
        drain(cluster, node, False)
        caller.close()


def test_sipp_registrations_fail_while_draining_and_succeed_after(lab):
    cluster, node = lab
    rows = [(f"user{k}", node.rows[f"user{k}"]) for k in range(3, 6)]  # not the callee
    inf = os.path.join(node.dir, "drain-register.csv")
    write_register_inf(inf, rows, node.domain)

    def sipp():
        return run_sipp(
            "register_auth.xml",
            f"{node.address}:{node.port}",
            node.dir,
            inf=inf,
            calls=len(rows),
            rate=100,
            timeout=30,
        )

    try:
        drain(cluster, node, True)
        res = sipp()
        assert (res.successful, res.failed) == (0, len(rows)), res.stderr
    finally:
        drain(cluster, node, False)
    res = sipp()
    assert (res.successful, res.failed) == (len(rows), 0), res.stderr


def test_a_drain_with_retry_after_is_told_to_phones(lab):
    cluster, node = lab
    try:
        assert drain(cluster, node, True, retry_after=120)["retry_after"] == 120
        resp = client(node, "user5").register()
        assert (resp.status, resp.get("retry-after")) == (503, "120")
    finally:
        drain(cluster, node, False)


@pytest.mark.parametrize(
    "args",
    [
        {"on": "yes"},
        {"on": 1},
        {},
        {"on": True, "retry_after": 0},
        {"on": True, "retry_after": 10**9},
        {"on": True, "retry_after": True},
        {"on": True, "retry_after": "30"},
    ],
)
def test_bad_drain_requests_are_refused_and_change_nothing(lab, args):
    cluster, node = lab
    with pytest.raises(BusError, match=r"drain needs|retry_after"):
        cluster.control(node, "drain", **args)
    assert cluster.control(node, "status")["draining"] is False


def test_an_unknown_key_cannot_drain_the_node(lab):
    cluster, node = lab
    public, secret = generate_keypair()
    stranger = Bus(public, secret, "stranger")
    member = cluster.members[node.id]
    try:
        with pytest.raises(BusError):
            request(stranger, member.control, member.public_key, {"cmd": "drain", "on": True}, 1.0)
    finally:
        stranger.close()
    assert cluster.control(node, "status")["draining"] is False
    assert client(node, "user5").register().status == 200


@pytest.fixture
def dashboard(lab, tmp_path):
    """The dashboard with a master bus whose key the node takes (never started: no pushes)."""
    cluster, node = lab
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    member = cluster.members[node.id]
    ms.save_node(node.id, f"{node.address}:{node.port}", member.control, member.public_key)
    ms.save_node("ghost", "127.0.0.1:9", "tcp://127.0.0.1:9", "k" * 40)
    pusher = Pusher(cluster.client_public, cluster.client_secret)
    try:
        yield create_app({"SECRET_KEY": "test-key"}, pusher), cluster, node
    finally:
        drain(cluster, node, False)
        pusher.bus.close()
        ms.close_master_store()


def test_api_drains_and_undrains_a_real_node(dashboard):
    app, _cluster, node = dashboard
    c = app.test_client()
    url = f"/api/nodes/{node.id}/drain"
    r = c.post(url, json={"on": True}, headers=basic())
    assert r.status_code == 200 and r.json == {"node": node.id, "draining": True, "retry_after": 30}
    assert client(node, "user5").register().status == 503
    r = c.post(url, json={"on": False}, headers=basic())
    assert r.status_code == 200 and r.json["draining"] is False
    assert client(node, "user5").register().status == 200


def test_api_drain_refuses_strangers_bad_bodies_and_unknown_or_dead_nodes(dashboard):
    app, cluster, node = dashboard
    c = app.test_client()
    url = f"/api/nodes/{node.id}/drain"
    for headers in ({}, basic("wrong"), basic(user="nobody")):
        r = c.post(url, json={"on": True}, headers=headers)
        assert r.status_code == 401 and "draining" not in r.get_data(as_text=True)
    for body in ({"on": "yes"}, {"on": 1}, {}, [True], "x" * 100_000):
        r = c.post(url, json=body, headers=basic())
        assert r.status_code == 400 and "on" in r.json["error"], body
    r = c.post("/api/nodes/nodeX/drain", json={"on": True}, headers=basic())
    assert r.status_code == 400 and "no node" in r.json["error"]
    r = c.post("/api/nodes/ghost/drain", json={"on": True}, headers=basic())
    assert r.status_code == 400 and r.json["error"].startswith("ghost:")
    assert cluster.control(node, "status")["draining"] is False


def test_nodes_page_drain_button_needs_csrf_and_shows_the_state(dashboard):
    app, cluster, node = dashboard
    c = app.test_client()
    assert c.post(f"/nodes/{node.id}/drain", data={"on": "1"}).status_code == 400  # no session
    page = c.get("/login").get_data(as_text=True)
    r = c.post(f"/nodes/{node.id}/drain", data={"csrf_token": token(page), "on": "1"})
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    login(c)
    assert c.post(f"/nodes/{node.id}/drain", data={"on": "1"}).status_code == 400
    assert cluster.control(node, "status")["draining"] is False
    page = c.get("/").get_data(as_text=True)
    assert f'id="drain-{node.id}" type="submit">Drain<' in page
    r = c.post(
        f"/nodes/{node.id}/drain",
        data={"csrf_token": token(page), "on": "1"},
        follow_redirects=True,
    )
    page = r.get_data(as_text=True)
    assert f"{node.id} drains" in page and re.search(
        r"draining, \d+ pending|drained \(empty\)", page
    )
    assert f'id="drain-{node.id}" type="submit">Undrain<' in page
    assert cluster.control(node, "status")["draining"] is True
    r = c.post(
        f"/nodes/{node.id}/drain",
        data={"csrf_token": token(page), "on": "0"},
        follow_redirects=True,
    )
    assert "takes new calls and REGISTERs again" in r.get_data(as_text=True)
    assert cluster.control(node, "status")["draining"] is False


def test_the_challenge_front_passes_registers_on_while_the_node_drains(tmp_path):
    """With ``challenge_front`` a REGISTER without credentials is answered by the front:
    while the node drains the front passes it on, so it gets the node's 503 too."""
    me = Member("node1", *[f"tcp://127.0.0.1:{free_port()}" for _ in range(3)], *generate_keypair())
    public, secret = generate_keypair()
    n = NodeProcess(
        str(tmp_path),
        front=True,
        extra=cluster_toml(me, [me], control_keys=[public], alone_wait=0.5),
    )
    n.start()
    bus = Bus(public, secret, "test")
    try:
        assert wait_until(lambda: front_pid(n) is not None, 10), n.log_tail()
        assert wait_until(lambda: "answering challenges" in n.log_tail(50), 15), n.log_tail()
        ask = {"cmd": "drain", "on": True}
        assert request(bus, me.control, me.public_key, ask, 2.0)["draining"] is True
        # The front hears of the drain by a datagram from the node: at once, but not
        # before the control answer.
        answers: list = []
        assert wait_until(
            lambda: (
                answers.append(sip_exchange(n, sip_request("REGISTER"), 0.5))
                or (answers[-1] or "").startswith("SIP/2.0 503 Draining")
            ),
            5,
        ), answers[-1:]
        assert "Retry-After: 30" in answers[-1]
        ask["on"] = False
        assert request(bus, me.control, me.public_key, ask, 2.0)["draining"] is False
        assert wait_until(
            lambda: (sip_exchange(n, sip_request("REGISTER"), 0.5) or "").startswith("SIP/2.0 401"),
            5,
        )
    finally:
        bus.close()
        n.stop()


def test_a_flood_on_a_drained_node_gets_503s_and_leaves_no_state(lab):
    """A bounded flood of new INVITEs (unauthenticated, forged callers) while draining:
    every answer is a stateless 503, no transaction is left behind, control still answers."""
    cluster, node = lab
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1.0)
    port = sock.getsockname()[1]
    try:
        drain(cluster, node, True)
        before = cluster.control(node, "status")["transactions"]
        for _ in range(300):
            text = invite(f"sip:user1@{node.domain}").replace("PORT", str(port))
            sock.sendto(text.encode(), (node.address, node.port))
        answers = []
        while len(answers) < 300:
            try:
                answers.append(sock.recv(65535).decode())
            except TimeoutError:
                break
        assert answers and all(a.startswith("SIP/2.0 503 Draining") for a in answers)
        status = cluster.control(node, "status")
        assert status["transactions"] <= before and status["drained"], status
    finally:
        drain(cluster, node, False)
        sock.close()


def test_api_lists_a_nodes_calls_and_refuses_strangers_bad_limits_and_unknown_nodes(dashboard):
    app, _cluster, node = dashboard
    c = app.test_client()
    url = f"/api/nodes/{node.id}/calls"
    r = c.get(url, headers=basic())
    assert r.status_code == 200 and r.json["node"] == node.id
    assert r.json["total"] == len(r.json["calls"]) == 0
    for headers in ({}, basic("wrong")):
        assert c.get(url, headers=headers).status_code == 401
    for limit in ("0", "1001", "x", "-5", "9" * 400):
        r = c.get(f"{url}?limit={limit}", headers=basic())
        assert r.status_code == 400 and "limit" in r.json["error"], limit
    r = c.get("/api/nodes/nodeX/calls", headers=basic())
    assert r.status_code == 400 and "no node" in r.json["error"]
    r = c.get("/api/nodes/ghost/calls", headers=basic())
    assert r.status_code == 400 and r.json["error"].startswith("ghost:")
