"""A carrier's inbound call in a real ``run.py lab`` cluster: trusted peers and users'
numbers set on the master's JSON API reach every node; a phone registered on node 1 is
reached through node 2 by a call from the trusted carrier (SIPp) to the user's DID, with
the carrier's identity; the carrier cannot relay through node 2 to a gateway."""

import os
import time
from types import SimpleNamespace

from loadtest.bench_call import register_contact
from loadtest.harness import free_port
from tests.test_gateways import Gateway, wait_for
from tests.test_gateways_cluster import api
from tests.test_lab import lab, node_ip  # noqa: F401 (lab: the fixture)
from tests.test_trunks import CARRIER_IP, DID, carrier_call, raw_invite, send_from


def test_a_did_is_reached_through_any_node_from_the_trusted_carrier(lab, tmp_path):  # noqa: F811
    _proc, data, base, _out = lab
    with open(os.path.join(data, "master", "admin-password")) as f:
        password = f.read().strip()
    work = str(tmp_path)
    gateway = Gateway(free_port(), work, "gw")
    phone = None
    try:
        plan = {
            "gateways": [{"name": "gw", "host": "127.0.0.1", "port": gateway.uas.port}],
            "rules": [{"pattern": "9.", "strip": 1, "gateways": ["gw"]}],
            "trusted": [{"name": "carrier", "address": CARRIER_IP}],
            "users": {"alice": {"numbers": ["201", DID], "caller_id": DID}},
            "probe_interval": 0,
        }
        version = api(base, password, "PUT", "/api/dialplan", plan)["version"]
        assert wait_for(
            lambda: all(
                v >= version for v in api(base, password, "GET", "/api/config")["nodes"].values()
            ),
            20,
        )
        n1, n2 = node_ip(base, 1), node_ip(base, 2)
        node1 = SimpleNamespace(address=n1, port=5060, domain="example.test", work=work)
        node2 = SimpleNamespace(address=n2, port=5060, domain="example.test", work=work)
        phone_port = free_port()
        assert register_contact(node1, "alice", "alice-secret", phone_port, work)
        phone = Gateway(phone_port, work, "alice")
        pai = "P-Asserted-Identity: <tel:+15557770000>"
        deadline = time.monotonic() + 20  # until node 2 has the replicated binding
        while not phone.invites() and time.monotonic() < deadline:
            res = carrier_call(node2, DID, pai)
        invite = wait_for(lambda: phone.invites(), 5)
        assert invite and pai in invite[0], (res, invite)
        assert res.successful == 1, res

        answer = send_from(
            CARRIER_IP,
            node2,
            raw_invite("sip:95551234@example.test", "sip:+15557770000@example.test"),
        )
        assert answer is not None and answer.startswith("SIP/2.0 403"), answer
        assert gateway.invites() == []
    finally:
        gateway.stop()
        if phone is not None:
            phone.stop()
