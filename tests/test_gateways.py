"""Calls to numbers through real node processes, with SIPp UASs standing as gateways: the
dial plan's digits, failover from a dead gateway, permissions, gateway health by OPTIONS,
and emergency calls that reach the emergency gateway with the caller's callback number
whatever the credentials (and nothing else does)."""

import os
import time

import gevent
import pytest

from actors.dns import Resolver
from actors.dnsserver import DnsServer
from actors.gateways import GatewayProber
from loadtest.bench_call import Uas
from loadtest.harness import free_port
from loadtest.sipclient import SipClient, SipClientError
from sipcore.dialing import Dialing
from sipcore.dialplan import parse_dialplan
from tests.test_proxy import start_node

CALLER_ID = "+15550100"
CALLBACK = "+15550911"


def dialplan_toml(ports: dict, probe_interval: float = 0, probe_misses: int = 2) -> str:
    """A ``[dialplan]`` with gateways ``dead``, ``a`` and ``psap`` on ``ports`` (127.0.0.1)."""
    return f"""
[dialplan]
probe_interval = {probe_interval}
probe_misses = {probe_misses}
default_callback = "+15550000"

[[dialplan.gateways]]
name = "dead"
host = "127.0.0.1"
port = {ports["dead"]}

[[dialplan.gateways]]
name = "a"
host = "127.0.0.1"
port = {ports["a"]}
prefix = "0"

[[dialplan.gateways]]
name = "psap"
host = "127.0.0.1"
port = {ports["psap"]}
emergency = true

[[dialplan.rules]]
pattern = "9."
strip = 1
gateways = ["dead", "a"]
permission = "local"

[[dialplan.rules]]
pattern = "1xxxxxxxxxx"
prepend = "+"
gateways = ["a"]
permission = "longdistance"

[dialplan.users.user0]
permissions = ["local", "longdistance"]
caller_id = "{CALLER_ID}"
emergency_callback = "{CALLBACK}"

[dialplan.users.user1]
permissions = []
"""


class Gateway:
    """A SIPp UAS that answers calls (and OPTIONS), keeping every message it got."""

    def __init__(self, port: int, work: str, name: str):
        self.log = os.path.join(work, f"gw-{name}-{port}.log")
        self.uas = Uas(
            "uas_answer.xml", port, work, args=("-aa", "-trace_msg", "-message_file", self.log)
        )

    def invites(self) -> list[str]:
        """The INVITEs it received so far, as text."""
        try:
            with open(self.log, errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        return [
            m
            for m in text.split("----------------------------------------------")
            if "received" in m and "\nINVITE " in m
        ]

    def stop(self) -> None:
        self.uas.stop()


def wait_for(predicate, timeout: float):
    """``predicate()`` once truthy, polled every 50 ms; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        gevent.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("gateways"))
    ports = {"dead": free_port(), "a": free_port(), "psap": free_port()}
    gw_a = Gateway(ports["a"], work, "a")
    psap = Gateway(ports["psap"], work, "psap")
    node = start_node(work, extra=dialplan_toml(ports), t1=0.05, users=10)
    try:
        yield node, gw_a, psap
    finally:
        node.stop()
        gw_a.stop()
        psap.stop()


def client(node, user, password=None):
    return SipClient(
        (node.address, node.port),
        user,
        password if password is not None else dict(node.rows)[user],
        node.domain,
        t1=0.05,
        timeout=15.0,
    )


def place(node, user, number, password=None):
    """Call ``number`` as ``user``; hang up a 2xx; return the final status."""
    c = client(node, user, password)
    try:
        resp, dialog = c.invite(f"sip:{number}@{node.domain}")
        if dialog is not None:
            assert dialog.bye().status == 200
        return resp.status
    finally:
        c.close()


def test_a_number_reaches_the_second_gateway_after_the_first_times_out(lab):
    node, gw_a, _ = lab
    before = len(gw_a.invites())
    started = time.monotonic()
    assert place(node, "user0", "95551234") == 200
    took = time.monotonic() - started
    invite = wait_for(lambda: gw_a.invites()[before:], 5)[0]
    assert "INVITE sip:05551234@127.0.0.1" in invite
    assert f"P-Asserted-Identity: <sip:{CALLER_ID}@{node.domain};user=phone>" in invite
    assert took >= 64 * 0.05 * 0.9, took  # Timer B of the dead gateway ran out first


def test_long_distance_digits_and_permission(lab):
    node, gw_a, _ = lab
    before = len(gw_a.invites())
    assert place(node, "user0", "15551234567") == 200
    assert "INVITE sip:0+15551234567@127.0.0.1" in wait_for(lambda: gw_a.invites()[before:], 5)[0]
    assert place(node, "user1", "15551234567") == 403
    assert place(node, "user0", "5551234") == 404


def test_non_emergency_number_with_failed_credentials_is_refused(lab):
    node, gw_a, _ = lab
    before = len(gw_a.invites())
    with pytest.raises(SipClientError, match="407"):
        place(node, "user0", "15551234567", password="wrong")
    gevent.sleep(0.3)
    assert gw_a.invites()[before:] == []


def test_emergency_call_with_a_wrong_password_reaches_the_emergency_gateway(lab):
    node, gw_a, psap = lab
    before, before_a = len(psap.invites()), len(gw_a.invites())
    assert place(node, "user0", "911", password="wrong") == 200
    invite = wait_for(lambda: psap.invites()[before:], 5)[0]
    assert "INVITE sip:911@127.0.0.1" in invite
    assert f"P-Asserted-Identity: <sip:{CALLBACK}@{node.domain};user=phone>" in invite
    assert gw_a.invites()[before_a:] == []
    assert wait_for(lambda: "emergency call" in node.log_tail(200), 5)


def test_gateway_health_marks_the_dead_one_down_and_up_again(tmp_path):
    work = str(tmp_path)
    ports = {"dead": free_port(), "a": free_port(), "psap": free_port()}
    gw_a = Gateway(ports["a"], work, "a")
    node = start_node(work, extra=dialplan_toml(ports, probe_interval=0.2), users=2)
    revived = None
    try:
        assert wait_for(lambda: "gateway dead missed 2 probes: down" in node.log_tail(200), 10), (
            node.log_tail()
        )
        assert "gateway a missed" not in node.log_tail(200)
        started = time.monotonic()
        assert place(node, "user0", "95551234") == 200
        # Straight to the second gateway: not Timer B (32 s at the default T1) of the first.
        assert time.monotonic() - started < 3.0
        revived = Gateway(ports["dead"], work, "dead")
        assert wait_for(lambda: "gateway dead answers again: up" in node.log_tail(200), 10), (
            node.log_tail()
        )
    finally:
        node.stop()
        gw_a.stop()
        if revived is not None:
            revived.stop()


ZONE = """\
$ORIGIN other.test.
$TTL 60
@ IN SOA ns.other.test. hostmaster.other.test. 1 3600 600 86400 60
@ IN NS ns.other.test.
ns IN A 127.0.0.1
dead IN A 127.0.0.1
live IN A 127.0.0.1
_sip._udp.trunk IN SRV 10 0 {dead} dead.other.test.
_sip._udp.trunk IN SRV 20 0 {live} live.other.test.
_sip._udp.gone IN SRV 10 0 {dead} dead.other.test.
"""


def test_the_prober_over_udp_tcp_and_srv(tmp_path):
    """OPTIONS probes against SIPp: over UDP, over TCP, and a DNS name whose first SRV
    target is dead and second alive (up); a name whose only target is dead is down after
    ``probe_misses`` probes, and up again once it answers."""
    work = str(tmp_path)
    dead, live, tcp = free_port(), free_port(), free_port()
    dns = DnsServer(ZONE.format(dead=dead, live=live), "other.test")
    dns.start()
    uas = Gateway(live, work, "live")
    uas_tcp = Uas("uas_answer.xml", tcp, work, transport="t1", args=("-aa",))
    revived = None
    try:
        plan = parse_dialplan(
            {
                "gateways": [
                    {"name": "udp", "host": "127.0.0.1", "port": live},
                    {"name": "tcp", "host": "127.0.0.1", "port": tcp, "transport": "tcp"},
                    {"name": "trunk", "host": "trunk.other.test"},
                    {"name": "gone", "host": "gone.other.test"},
                ],
                "probe_misses": 2,
            }
        )
        dialing = Dialing(plan, lambda u: False, "example.test")
        prober = GatewayProber(
            dialing, Resolver(["127.0.0.1"], dns.port), "127.0.0.1", "example.test"
        )
        gws = plan.gateways
        assert wait_for(lambda: prober.probe(gws["tcp"], 1.0), 5)  # SIPp's TCP listener up
        assert prober.probe(gws["udp"], 1.0)
        assert prober.probe(gws["trunk"], 1.0)
        assert ("_sip._udp.trunk.other.test", "SRV") in dns.queries
        assert not prober.probe(gws["gone"], 0.3) and "gone" not in dialing.down
        assert not prober.probe(gws["gone"], 0.3) and "gone" in dialing.down
        health = prober.health()
        assert health["gateways"]["gone"] == {"state": "down", "misses": 2, "emergency": False}
        assert health["gateways"]["trunk"]["state"] == "up"
        assert health["probes"]["answers"] == 3 and health["probes"]["probes"] >= 5
        revived = Gateway(dead, work, "revived")
        assert wait_for(lambda: prober.probe(gws["gone"], 0.5), 5)
        assert "gone" not in dialing.down
    finally:
        for u in (uas, revived):
            if u is not None:
                u.stop()
        uas_tcp.stop()
        dns.stop()


def test_a_gateway_named_by_dns_is_reached_through_its_srv_records(tmp_path):
    work = str(tmp_path)
    dead, live = free_port(), free_port()
    dns = DnsServer(ZONE.format(dead=dead, live=live), "other.test")
    dns.start()
    gw = Gateway(live, work, "trunk")
    plan = f"""
[dns]
servers = ["127.0.0.1"]
port = {dns.port}

[dialplan]
probe_interval = 0

[[dialplan.gateways]]
name = "trunk"
host = "trunk.other.test"

[[dialplan.rules]]
pattern = "+."
gateways = ["trunk"]
"""
    node = start_node(work, extra=plan, t1=0.05, users=2)
    try:
        assert place(node, "user0", "+4930123456") == 200
        invite = wait_for(gw.invites, 5)[0]
        assert "INVITE sip:+4930123456@trunk.other.test" in invite
        assert ("_sip._udp.trunk.other.test", "SRV") in dns.queries
        assert "trying the next target" in node.log_tail(200)  # the dead SRV target first
    finally:
        node.stop()
        gw.stop()
        dns.stop()
