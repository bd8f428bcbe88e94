"""Calls with the telephone network through a real node process, SIPp standing as the
trusted carrier, as a phone and as a gateway: an inbound call from the carrier to a DID
reaches the user's phone with the carrier's identity; a phone's forged identity is replaced
by its account's; the carrier cannot relay to a gateway (trunk to trunk) nor be
impersonated by a request from another address; dialling an extension works."""

import os
import socket
import time

import pytest

from loadtest.bench_call import register_contact
from loadtest.harness import free_port, run_sipp
from loadtest.sipclient import Dialog, sdp_offer
from tests.test_gateways import Gateway, client, wait_for
from tests.test_proxy import start_node

CARRIER_IP = "127.0.18.7"  # the trusted carrier's source address
DID = "+15551230201"


def plan_toml(gateway_port: int) -> str:
    return f"""
[dialplan]
probe_interval = 0

[[dialplan.trusted]]
name = "carrier"
address = "{CARRIER_IP}"

[[dialplan.gateways]]
name = "a"
host = "127.0.0.1"
port = {gateway_port}

[[dialplan.rules]]
pattern = "9."
strip = 1
gateways = ["a"]

[dialplan.users.user0]
numbers = ["201", "{DID}"]
caller_id = "{DID}"

[dialplan.users.user1]
numbers = ["202", "+15551230202"]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("trunks"))
    gw_port, phone_port = free_port(), free_port()
    gateway = Gateway(gw_port, work, "a")
    node = start_node(work, extra=plan_toml(gw_port), t1=0.05, users=4)
    phone = None
    try:
        # the phone registers from its port, then answers there
        assert register_contact(node, "user0", dict(node.rows)["user0"], phone_port, work)
        phone = Gateway(phone_port, work, "phone0")
        yield node, phone, gateway
    finally:
        node.stop()
        if phone is not None:
            phone.stop()
        gateway.stop()


def carrier_call(node, callee: str, header: str):
    """One call from the carrier (SIPp at ``CARRIER_IP``, no credentials) to ``callee``."""
    inf = os.path.join(node.work, f"carrier-{time.monotonic_ns()}.csv")
    with open(inf, "w") as f:
        f.write(f"SEQUENTIAL\n+15557770000;carrier.example;{callee}@{node.domain};{header}\n")
    return run_sipp(
        "uac_carrier_call.xml",
        f"{node.address}:{node.port}",
        node.work,
        inf=inf,
        calls=1,
        local_ip=CARRIER_IP,
        timeout=20,
    )


def send_from(ip: str, node, text: str, timeout: float = 3.0) -> str | None:
    """Send one request over UDP from ``ip`` (``{PORT}`` and ``{IP}`` filled in); return the
    first final response, None if none came in ``timeout``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind((ip, 0))
        port = s.getsockname()[1]
        s.sendto(
            text.replace("{PORT}", str(port)).replace("{IP}", ip).encode(),
            (node.address, node.port),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(65535).decode()
            except TimeoutError:
                return None
            if not data.startswith("SIP/2.0 1"):
                return data
    return None


def raw_invite(to: str, frm: str, via_host: str = "{IP}") -> str:
    return (
        f"INVITE {to} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via_host}:{{PORT}};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
        f"From: <{frm}>;tag=f1\r\nTo: <{to}>\r\nCall-ID: {os.urandom(8).hex()}\r\n"
        "CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:c@{IP}:{PORT}>\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def test_an_inbound_call_from_the_carrier_to_a_did_reaches_the_users_phone(lab):
    node, phone, _ = lab
    before = len(phone.invites())
    pai = "P-Asserted-Identity: <tel:+15557770000>"  # no ';': SIPp splits fields on it
    res = carrier_call(node, DID, pai)
    assert res.successful == 1, (res, node.log_tail())
    invite = wait_for(lambda: phone.invites()[before:], 5)[0]
    assert pai in invite  # a trusted peer's identity is kept


def test_a_forged_identity_from_a_phone_is_replaced(lab):
    node, phone, _ = lab
    before = len(phone.invites())
    c = client(node, "user1")
    try:
        call_id, tag = os.urandom(8).hex() + "@127.0.0.1", os.urandom(4).hex()
        callee = f"sip:201@{node.domain}"  # user0's extension
        resp = c.request(
            "INVITE",
            callee,
            [
                ("Contact", f"<sip:user1@{c.local[0]}:{c.local[1]}>"),
                ("P-Asserted-Identity", f"<sip:{DID}@{node.domain};user=phone>"),
                ("P-Preferred-Identity", "<sip:ceo@example.test>"),
                ("Content-Type", "application/sdp"),
            ],
            to=f"<{callee}>",
            call_id=call_id,
            from_tag=tag,
            body=sdp_offer(c.local[0], 40000),
        )
        assert resp.status == 200
        dialog = Dialog.from_2xx(c, resp, callee, call_id, tag)
        dialog.ack(resp.cseq[0])
        assert dialog.bye().status == 200
    finally:
        c.close()
    invite = wait_for(lambda: phone.invites()[before:], 5)[0]
    lines = invite.splitlines()
    assert [line for line in lines if line.lower().startswith("p-asserted-identity")] == [
        f"P-Asserted-Identity: <sip:+15551230202@{node.domain};user=phone>"
    ]  # user1's DID
    assert not [line for line in lines if line.lower().startswith("p-preferred-identity")]


@pytest.mark.parametrize("number", ["95551234", "+15559876543"])
def test_the_carrier_cannot_relay_to_a_gateway(lab, number):
    node, _, gateway = lab
    before = len(gateway.invites())
    answer = send_from(
        CARRIER_IP,
        node,
        raw_invite(f"sip:{number}@{node.domain}", f"sip:+15557770000@{node.domain}"),
    )
    assert answer is not None and answer.startswith("SIP/2.0 403 No Trunk-To-Trunk Relay"), answer
    assert gateway.invites()[before:] == []


def test_the_carriers_address_claimed_from_elsewhere_is_challenged(lab):
    node, phone, _ = lab
    before = len(phone.invites())
    answer = send_from(
        "127.0.0.1",
        node,
        raw_invite(
            f"sip:{DID}@{node.domain}", f"sip:+15557770000@{node.domain}", via_host=CARRIER_IP
        ),
    )
    assert answer is not None and answer.startswith("SIP/2.0 407"), answer
    assert phone.invites()[before:] == []


def test_the_carrier_reaches_an_emergency_number(lab):
    # Nothing trusted peers add refuses an emergency call (no emergency gateway here: the
    # call is routed as a user of that number, and nobody has it).
    node, _, _ = lab
    answer = send_from(
        CARRIER_IP, node, raw_invite(f"sip:911@{node.domain}", "sip:+15557770000@carrier.example")
    )
    assert answer is not None and not answer.startswith(("SIP/2.0 403", "SIP/2.0 407")), answer
