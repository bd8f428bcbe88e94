"""Draining a real node (issues 12 and 17): 503 with Retry-After for new calls and
REGISTERs (sipsak and the load tests' SIP client), calls in progress go on to their
BYE, an emergency call still goes through, and undraining takes everything again.
The control command is tried with bad arguments and with a key the node does not know."""

import os
import subprocess

import pytest

from actors.bus import Bus, BusError, generate_keypair, request
from loadtest.answerer import AnsweringAgent
from loadtest.harness import Cluster, write_users_csv
from loadtest.sipclient import SipClient

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
    return SipClient((node.address, node.port), user, node.rows[user], node.domain, t1=0.25,
                     timeout=8.0)


def sipsak_register(node, user) -> str:
    out = subprocess.run(["sipsak", "-U", "-s", f"sip:{user}@{node.address}:{node.port}",
                          "-u", user, "-a", node.rows[user], "-i", "-x", "120", "-vv"],
                         capture_output=True, text=True, timeout=30)
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

        assert call.request("BYE").status == 200          # the call in progress ends
        resp, sos = caller.invite(f"sip:911@{node.domain}")
        assert resp.status == 200 and sos is not None      # never refused by a drain
        assert sos.request("BYE").status == 200
        assert cluster.control(node, "status")["drain_refused"] >= 3

        assert drain(cluster, node, False)["draining"] is False
        assert "completed successful" in sipsak_register(node, "user3")
        resp, call = caller.invite(f"sip:user1@{node.domain}")
        assert resp.status == 200
        assert call.request("BYE").status == 200
        assert cluster.control(node, "status")["draining"] is False
    finally:
        drain(cluster, node, False)
        caller.close()


def test_a_drain_with_retry_after_is_told_to_phones(lab):
    cluster, node = lab
    try:
        assert drain(cluster, node, True, retry_after=120)["retry_after"] == 120
        resp = client(node, "user5").register()
        assert (resp.status, resp.get("retry-after")) == (503, "120")
    finally:
        drain(cluster, node, False)


@pytest.mark.parametrize("args", [{"on": "yes"}, {"on": 1}, {},
                                  {"on": True, "retry_after": 0},
                                  {"on": True, "retry_after": 10 ** 9},
                                  {"on": True, "retry_after": True},
                                  {"on": True, "retry_after": "30"}])
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
            request(stranger, member.control, member.public_key, {"cmd": "drain", "on": True},
                    1.0)
    finally:
        stranger.close()
    assert cluster.control(node, "status")["draining"] is False
    assert client(node, "user5").register().status == 200
