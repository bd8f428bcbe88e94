"""Ring groups and call limits set on the master reach the nodes of a real ``run.py lab``
cluster: a ring group's number rings bob's phone (a SIPp UAS) through a node, the master
shows the node's calls in progress per user (the ``calls`` control command), and alice's
limit of one call holds until her BYE."""

import os
from types import SimpleNamespace

from loadtest.bench_call import register_contact
from loadtest.harness import free_port
from loadtest.sipclient import SipClient
from tests.test_gateways import Gateway, wait_for
from tests.test_gateways_cluster import api
from tests.test_lab import lab, node_ip  # noqa: F401 (lab: the fixture)


def test_groups_and_limits_from_the_master_hold_on_a_node(lab, tmp_path):  # noqa: F811
    _proc, data, base, _out = lab
    with open(os.path.join(data, "master", "admin-password")) as f:
        password = f.read().strip()
    work = str(tmp_path)
    carrier = Gateway(free_port(), work, "carrier")
    phone_port = free_port()
    n1 = node_ip(base, 1)
    bob = None
    try:
        plan = {
            "gateways": [{"name": "carrier", "host": "127.0.0.1", "port": carrier.uas.port}],
            "rules": [{"pattern": "9.", "strip": 1, "gateways": ["carrier"]}],
            "users": {},
            "probe_interval": 0,
            "groups": [
                {
                    "name": "sales",
                    "numbers": ["300"],
                    "members": ["bob", "carol"],
                    "ring_timeout": 10,
                }
            ],
            "limits": {"users": {"alice": 1}},
        }
        version = api(base, password, "PUT", "/api/dialplan", plan)["version"]
        assert wait_for(
            lambda: all(
                v >= version for v in api(base, password, "GET", "/api/config")["nodes"].values()
            ),
            20,
        )
        node = SimpleNamespace(address=n1, port=5060, domain="example.test")
        assert register_contact(node, "bob", "bob-secret", phone_port, work)
        bob = Gateway(phone_port, work, "bob")
        alice = SipClient((n1, 5060), "alice", "alice-secret", "example.test", t1=0.1, timeout=15.0)
        try:
            resp, dialog = alice.invite("sip:300@example.test")
            assert resp.status == 200 and dialog is not None
            assert "INVITE sip:bob@127.0.0.1" in wait_for(bob.invites, 5)[0]
            calls = api(base, password, "GET", "/api/dialplan/calls")["nodes"]
            assert calls["node1"]["users"] == {"alice": 1}, calls
            assert alice.invite("sip:95551234@example.test")[0].status == 486
            assert carrier.invites() == []
            assert dialog.bye().status == 200
            assert wait_for(
                lambda: (
                    api(base, password, "GET", "/api/dialplan/calls")["nodes"]["node1"]["users"]
                    == {}
                ),
                5,
            )
            resp, dialog = alice.invite("sip:95551234@example.test")
            assert resp.status == 200 and dialog is not None
            assert dialog.bye().status == 200
        finally:
            alice.close()
    finally:
        carrier.stop()
        if bob is not None:
            bob.stop()
