"""Emergency calls in a real ``run.py lab`` cluster: the dial plan set on the master's JSON
API reaches every node; with the master SIGKILLed, and then with the phone's own node
SIGKILLed, a call to 911 from a phone with a wrong password still reaches the emergency
gateway (a SIPp UAS) with the caller's callback number, through any node; a number that is
not an emergency number, with the same wrong password, goes nowhere. The master shows each
node's view of the gateways' health, and, back, marks the emergency call's record."""

import base64
import json
import os
import signal
import urllib.request

from loadtest.harness import free_port
from loadtest.sipclient import SipClient, SipClientError
from tests.test_gateways import Gateway, wait_for
from tests.test_lab import lab, lab_status, node_ip, run_py  # noqa: F401 (lab: the fixture)

CALLBACK = "+15550911"


def api(base: str, password: str, method: str, path: str, body=None) -> dict:
    req = urllib.request.Request(
        f"http://{base}:8080{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def call(address: str, user: str, password: str, number: str) -> int:
    """Call ``number`` through the node at ``address``; hang up a 2xx; the final status
    (407 when the credentials were refused)."""
    c = SipClient((address, 5060), user, password, "example.test", t1=0.1, timeout=15.0)
    try:
        resp, dialog = c.invite(f"sip:{number}@example.test")
        if dialog is not None:
            assert dialog.bye().status == 200
        return resp.status
    except SipClientError as e:
        assert "credentials refused: 407" in str(e), e
        return 407
    finally:
        c.close()


def emergency_call(address: str, work: str, psap: Gateway) -> str:
    """911 from alice with a wrong password through ``address``: the INVITE the PSAP got."""
    before = len(psap.invites())
    c = SipClient((address, 5060), "alice", "wrong-password", "example.test", t1=0.1, timeout=15.0)
    try:
        resp, dialog = c.invite("sip:911@example.test")
        assert resp.status == 200, resp.status
        assert dialog.bye().status == 200
    finally:
        c.close()
    return wait_for(lambda: psap.invites()[before:], 5)[0]


def test_emergency_calls_survive_the_master_and_the_phones_node(lab, tmp_path):  # noqa: F811
    _proc, data, base, _out = lab
    with open(os.path.join(data, "master", "admin-password")) as f:
        password = f.read().strip()
    work = str(tmp_path)
    psap = Gateway(free_port(), work, "psap")
    carrier = Gateway(free_port(), work, "carrier")
    try:
        plan = {
            "gateways": [
                {"name": "carrier", "host": "127.0.0.1", "port": carrier.uas.port},
                {"name": "psap", "host": "127.0.0.1", "port": psap.uas.port, "emergency": True},
                {"name": "gone", "host": "127.0.0.1", "port": free_port()},
            ],
            "rules": [
                {"pattern": "9.", "strip": 1, "gateways": ["carrier"], "permission": "local"}
            ],
            "users": {"alice": {"permissions": ["local"], "emergency_callback": CALLBACK}},
            "probe_interval": 1.0,
        }
        version = api(base, password, "PUT", "/api/dialplan", plan)["version"]
        assert wait_for(
            lambda: all(
                v >= version for v in api(base, password, "GET", "/api/config")["nodes"].values()
            ),
            20,
        )

        def health():
            views = api(base, password, "GET", "/api/dialplan/health")["nodes"]
            gateways = [v.get("gateways", {}) for v in views.values()]
            return sorted(views) == ["node1", "node2"] and all(
                g.get("psap", {}).get("state") == "up"
                and g["psap"]["misses"] == 0
                and g.get("carrier", {}).get("state") == "up"
                and g.get("gone", {}).get("state") == "down"
                for g in gateways
            )

        assert wait_for(health, 15), api(base, password, "GET", "/api/dialplan/health")
        os.kill(lab_status(data)["master"]["pid"], signal.SIGKILL)
        n1, n2 = node_ip(base, 1), node_ip(base, 2)
        phone = SipClient((n1, 5060), "alice", "alice-secret", "example.test", t1=0.1)
        try:
            assert phone.register().status == 200
        finally:
            phone.close()

        invite = emergency_call(n1, work, psap)
        assert f"P-Asserted-Identity: <sip:{CALLBACK}@example.test;user=phone>" in invite
        assert call(n1, "alice", "wrong-password", "95551234") == 407
        assert call(n1, "alice", "alice-secret", "95551234") == 200
        assert len(carrier.invites()) == 1

        os.kill(lab_status(data)["nodes"][0]["pid"], signal.SIGKILL)
        invite = emergency_call(n2, work, psap)
        assert "INVITE sip:911@127.0.0.1" in invite
        assert f"P-Asserted-Identity: <sip:{CALLBACK}@example.test;user=phone>" in invite
        assert call(n2, "alice", "wrong-password", "95551234") == 407
        assert len(carrier.invites()) == 1
        assert call(n2, "alice", "alice-secret", "95551234") == 200
        assert len(carrier.invites()) == 2

        # The master, back, collects node2's call records: the emergency call is marked.
        assert run_py("lab", "restart", "master", "--data", data).returncode == 0

        def records():
            try:
                found = api(base, password, "GET", "/api/cdrs?callee=911")["cdrs"]
            except OSError:
                return None
            return [c for c in found if "node2" in c["nodes"]]

        found = wait_for(records, 30)
        assert found and all(c["emergency"] for c in found), found
        others = wait_for(
            lambda: api(base, password, "GET", "/api/cdrs?callee=95551234")["cdrs"], 10
        )
        assert others and not any(c["emergency"] for c in others), others
    finally:
        psap.stop()
        carrier.stop()
