"""A node's services through the master (issue 12), on a node that no lab runs: state,
uptime and restart count; restart, stop and start of the registrar and the transport with
the node serving REGISTER afterwards; refusals (replicator, resolver stop, proxy stop while
emergency numbers exist, an unknown service or action); unauthenticated and CSRF-less
requests change nothing."""

import os

import pytest

from actors.bus import Bus, BusError, generate_keypair, request
from loadtest.harness import Cluster, write_users_csv
from loadtest.sipclient import SipClient
from store import master as ms
from tests.test_node import request as sip_request
from tests.test_front import wait_until
from tests.test_node import sip_exchange
from tests.test_web import PASSWORD, basic, login, token
from web import create_app
from web.push import Pusher

SETTINGS = {"heartbeat": 0.2, "alone_wait": 0.5, "sync_timeout": 3.0}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One node run by the test harness (not ``run.py lab``) with users user0..user2."""
    work = str(tmp_path_factory.mktemp("services"))
    rows = write_users_csv(os.path.join(work, "users.csv"), 3)
    cluster = Cluster(work, n=1, settings=SETTINGS)
    cluster.provision(os.path.join(work, "users.csv"))
    cluster.start()
    try:
        assert cluster.wait_synced(15)
        node = cluster.nodes[0]
        node.rows = dict(rows)
        yield cluster, node
    finally:
        cluster.stop()


@pytest.fixture
def dashboard(lab, tmp_path):
    """The master app (no lab data) with a bus the node's control endpoint takes."""
    cluster, node = lab
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    member = cluster.members[node.id]
    ms.save_node(node.id, f"{node.address}:{node.port}", member.control, member.public_key)
    pusher = Pusher(cluster.client_public, cluster.client_secret)
    try:
        yield create_app({"SECRET_KEY": "test-key"}, pusher), cluster, node
    finally:
        for name in ("registrar", "transport"):
            cluster.control(node, "service", timeout=10, name=name, action="start")
        pusher.bus.close()
        ms.close_master_store()


def register(node, user="user1") -> int:
    c = SipClient(
        (node.address, node.port), user, node.rows[user], node.domain, t1=0.25, timeout=5.0
    )
    try:
        status = c.register().status
        if status == 200:
            c.register(expires=0)  # each client is a new contact: do not pile them up
        return status
    finally:
        c.close()


def test_restart_of_the_registrar_through_the_api_counts_and_the_node_still_registers(dashboard):
    app, _cluster, node = dashboard
    c = app.test_client()
    before = c.get(f"/api/nodes/{node.id}/services", headers=basic()).json["services"]
    assert set(before) == {"transport", "registrar", "proxy", "replicator", "dns", "front"}
    assert before["registrar"]["state"] == "running" and before["registrar"]["uptime"] >= 0
    assert before["front"]["state"] == "not configured"
    assert register(node) == 200

    r = c.post(f"/api/nodes/{node.id}/services/registrar/restart", headers=basic())
    assert r.status_code == 200, r.json
    assert r.json["state"] == "running"
    assert r.json["restarts"] == before["registrar"]["restarts"] + 1
    assert register(node) == 200
    after = c.get(f"/api/nodes/{node.id}/services", headers=basic()).json["services"]
    assert after["registrar"]["restarts"] == before["registrar"]["restarts"] + 1
    assert after["registrar"]["uptime"] < before["registrar"]["uptime"] + 1


def test_a_stopped_registrar_answers_503_until_started(dashboard):
    app, _cluster, node = dashboard
    c = app.test_client()
    r = c.post(f"/api/nodes/{node.id}/services/registrar/stop", headers=basic())
    assert r.status_code == 200 and r.json["state"] == "stopped" and r.json["uptime"] is None
    assert register(node, "user2") == 503
    r = c.post(f"/api/nodes/{node.id}/services/registrar/start", headers=basic())
    assert r.json["state"] == "running"
    assert register(node, "user2") == 200


def test_a_restarted_transport_serves_register_again(dashboard):
    app, _cluster, node = dashboard
    c = app.test_client()
    r = c.post(f"/api/nodes/{node.id}/services/transport/restart", headers=basic())
    assert r.status_code == 200 and r.json["restarts"] >= 1, r.json
    assert register(node) == 200


@pytest.mark.parametrize(
    "name,action,reason",
    [
        ("replicator", "restart", "control channel"),
        ("replicator", "stop", "control channel"),
        ("dns", "stop", "resolver"),
        ("proxy", "stop", "emergency numbers"),
        ("front", "restart", "challenge_front is off"),
        ("nosuch", "restart", "unknown service"),
        ("x" * 500, "stop", "unknown service"),
    ],
)
def test_refused_actions_say_why_and_change_nothing(dashboard, name, action, reason):
    app, _cluster, node = dashboard
    c = app.test_client()
    before = c.get(f"/api/nodes/{node.id}/services", headers=basic()).json["services"]
    r = c.post(f"/api/nodes/{node.id}/services/{name}/{action}", headers=basic())
    assert r.status_code == 400 and reason in r.json["error"], r.json
    assert (
        c.get(f"/api/nodes/{node.id}/services", headers=basic()).json["services"].keys()
        == before.keys()
    )
    assert register(node) == 200


def test_the_resolver_restarts(dashboard):
    app, _cluster, node = dashboard
    r = app.test_client().post(f"/api/nodes/{node.id}/services/dns/restart", headers=basic())
    assert r.status_code == 200 and r.json["state"] == "running"


def test_bad_commands_on_the_control_channel_are_refused(lab):
    cluster, node = lab
    for args in (
        {},
        {"name": "registrar"},
        {"name": "registrar", "action": "kill"},
        {"name": ["registrar"], "action": "stop"},
    ):
        with pytest.raises(BusError, match="unknown"):
            cluster.control(node, "service", **args)
    assert cluster.control(node, "services")["registrar"]["state"] == "running"


def test_unknown_node_action_and_unauthenticated_calls(dashboard):
    app, cluster, node = dashboard
    c = app.test_client()
    assert (
        c.post(f"/api/nodes/{node.id}/services/registrar/kill", headers=basic()).status_code == 404
    )
    r = c.post("/api/nodes/ghost/services/registrar/restart", headers=basic())
    assert r.status_code == 400 and "no node" in r.json["error"]
    for method, path in (
        ("get", f"/api/nodes/{node.id}/services"),
        ("post", f"/api/nodes/{node.id}/services/registrar/stop"),
    ):
        assert getattr(c, method)(path).status_code == 401
        assert getattr(c, method)(path, headers=basic("wrong")).status_code == 401
    assert c.get(f"/nodes/{node.id}/services").status_code == 302
    r = c.post(f"/nodes/{node.id}/services/registrar/stop")
    assert r.status_code in (302, 400)  # CSRF refused before the login
    assert cluster.control(node, "services")["registrar"]["state"] == "running"
    assert register(node) == 200


def test_the_page_shows_the_services_and_its_buttons_act_with_csrf_only(dashboard):
    app, cluster, node = dashboard
    c = app.test_client()
    login(c)
    page = c.get(f"/nodes/{node.id}/services").get_data(as_text=True)
    assert 'id="restart-registrar"' in page and "running" in page
    before = cluster.control(node, "services")["registrar"]["restarts"]
    r = c.post(f"/nodes/{node.id}/services/registrar/restart")
    assert r.status_code == 400  # no CSRF token
    r = c.post(f"/nodes/{node.id}/services/registrar/restart", data={"csrf_token": "forged"})
    assert r.status_code == 400
    assert cluster.control(node, "services")["registrar"]["restarts"] == before
    r = c.post(
        f"/nodes/{node.id}/services/registrar/restart",
        data={"csrf_token": token(page)},
        follow_redirects=True,
    )
    assert f"registrar on {node.id}: running (restarts: {before + 1})" in r.get_data(as_text=True)
    r = c.post(
        f"/nodes/{node.id}/services/replicator/stop",
        data={"csrf_token": token(page)},
        follow_redirects=True,
    )
    assert "failed" in r.get_data(as_text=True) and "control channel" in r.get_data(as_text=True)
    assert register(node) == 200
    assert c.get("/nodes/ghost/services").status_code == 502


def test_a_restarted_proxy_answers_again(dashboard):
    app, _cluster, node = dashboard
    r = app.test_client().post(f"/api/nodes/{node.id}/services/proxy/restart", headers=basic())
    assert r.status_code == 200 and r.json["state"] == "running" and r.json["restarts"] >= 1
    answer = sip_exchange(node, sip_request("MESSAGE", uri=f"sip:user2@{node.domain}"))
    assert answer is not None and answer.startswith("SIP/2.0 407"), answer  # the proxy asks


def test_an_unknown_key_cannot_act_on_services(lab):
    cluster, node = lab
    public, secret = generate_keypair()
    stranger = Bus(public, secret, "stranger")
    member = cluster.members[node.id]
    try:
        with pytest.raises(BusError):
            request(
                stranger,
                member.control,
                member.public_key,
                {"cmd": "service", "name": "registrar", "action": "stop"},
                1.0,
            )
    finally:
        stranger.close()
    assert cluster.control(node, "services")["registrar"]["state"] == "running"
    assert register(node) == 200


@pytest.fixture(scope="module")
def fronted(tmp_path_factory):
    """One harness node with a challenge front and no emergency numbers (so its proxy may
    be stopped)."""
    work = str(tmp_path_factory.mktemp("services-front"))
    rows = write_users_csv(os.path.join(work, "users.csv"), 2)
    cluster = Cluster(work, n=1, settings=SETTINGS)
    node = cluster.nodes[0]
    with open(node.config) as f:
        text = f.read()
    with open(node.config, "w") as f:
        f.write(
            text.replace(
                "challenge_front = false", "challenge_front = true\nemergency_numbers = []"
            )
        )
    node.front = True
    cluster.provision(os.path.join(work, "users.csv"))
    cluster.start()
    try:
        assert cluster.wait_synced(15)
        node.rows = dict(rows)
        yield cluster, node
    finally:
        cluster.stop()


def test_front_restart_and_proxy_stop_on_a_node_with_a_front(fronted):
    cluster, node = fronted
    services = cluster.control(node, "services")
    assert services["front"]["state"] == "running"
    front = cluster.control(node, "service", timeout=10, name="front", action="restart")
    assert front["state"] == "running" and front["restarts"] == 1
    assert wait_until(lambda: register(node) == 200, 10)  # the new front challenges again

    stopped = cluster.control(node, "service", timeout=10, name="proxy", action="stop")
    assert stopped["state"] == "stopped"
    try:
        answer = sip_exchange(node, sip_request("MESSAGE", uri=f"sip:user1@{node.domain}"))
        assert answer is not None and answer.startswith("SIP/2.0 503 Proxy Stopped"), answer
        assert register(node) == 200  # the registrar still serves
        ping = sip_exchange(node, sip_request("OPTIONS"))  # the node itself still answers
        assert ping is not None and ping.startswith("SIP/2.0 200"), ping
    finally:
        started = cluster.control(node, "service", timeout=10, name="proxy", action="start")
    assert started["state"] == "running"
    answer = sip_exchange(node, sip_request("MESSAGE", uri=f"sip:user1@{node.domain}"))
    assert answer is not None and answer.startswith("SIP/2.0 407"), answer
