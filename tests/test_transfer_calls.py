"""Transfers through a real node process, SIPp standing as the trusted carrier, the
transferring phone, its colleague and a gateway: the phone blind-transfers the carrier's
inbound call (REFER, answered 407 then accepted) to a colleague and to a national number,
and the carrier, which cannot authenticate, completes the new call with the token the
Refer-To carried; a transfer to an international number is refused before it reaches the
carrier; an INVITE with a forged token is refused."""

import os
import threading

import pytest

from loadtest.bench_call import Uas, register_contact
from loadtest.harness import free_port, run_sipp
from tests.phones import pjsua
from tests.test_gateways import Gateway, wait_for
from tests.test_proxy import start_node
from tests.test_trunks import raw_invite, send_from

CARRIER_IP = "127.0.18.9"  # the trusted carrier's source address
DID = "+15551230301"  # user0's number, which the carrier calls
SOFTPHONE_DID = "+15551230303"  # user2's number: a PJSUA2 softphone
CALLER = "+15557770000"


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
pattern = "900."
strip = 1
gateways = ["a"]
permission = "international"

[[dialplan.rules]]
pattern = "9."
strip = 1
gateways = ["a"]
permission = "local"

[dialplan.users.user0]
permissions = ["local"]
numbers = ["201", "{DID}"]
caller_id = "{DID}"

[dialplan.users.user1]
numbers = ["202"]

[dialplan.users.user2]
permissions = ["local"]
numbers = ["203", "{SOFTPHONE_DID}"]
"""


#: The transferring phone: it answers the carrier's call, then REFERs it (its From the
#: DID the carrier called), answers the 407, and expects EXPECT. After a 202 the carrier
#: hangs up; after a refusal the phone does.
PHONE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="transferring phone">
  <recv request="INVITE" crlf="true" rrs="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="remote"/>
    </action>
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_Record-Route:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:user0@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user0 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0

    ]]>
  </send>
  <recv request="ACK"/>
  REFER_1
  <recv response="407" auth="true"/>
  REFER_2
  <recv response="EXPECT"/>
  ENDING
</scenario>
"""
REFER = """<send retrans="500">
    <![CDATA[

      REFER [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      [routes]
      From: <sip:DID@DOMAIN>;tag=[pid]SIPpTag01[call_number]
      To: [$remote]
      Call-ID: [call_id]
      CSeq: CSEQ REFER
      Contact: <sip:user0@[local_ip]:[local_port];transport=[transport]>
      Refer-To: <TARGET>
      Referred-By: <sip:ceo@example.invalid>
      AUTH
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>"""
HANGUP_BY_CARRIER = """<recv request="BYE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>"""
HANGUP_BY_PHONE = """<send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      [routes]
      From: <sip:DID@DOMAIN>;tag=[pid]SIPpTag01[call_number]
      To: [$remote]
      Call-ID: [call_id]
      CSeq: 3 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>"""


def phone_scenario(node, target: str, expect: int) -> str:
    """Write the phone's scenario for a transfer to ``target`` expecting ``expect``."""
    password = dict(node.rows)["user0"]

    def refer(cseq: int, auth: str) -> str:
        return REFER.replace("CSEQ", str(cseq)).replace("AUTH", auth).replace("TARGET", target)

    text = (
        PHONE.replace("REFER_1", refer(1, ""))
        .replace("REFER_2", refer(2, f"[authentication username=user0 password={password}]"))
        .replace("EXPECT", str(expect))
        .replace("ENDING", HANGUP_BY_CARRIER if expect == 202 else HANGUP_BY_PHONE)
        .replace("DID", DID)
        .replace("DOMAIN", node.domain)
    )
    path = os.path.join(node.work, f"phone-{target.split('@')[0][4:]}-{expect}.xml")
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("transfer"))
    gw_port, phone_port, colleague_port = free_port(), free_port(), free_port()
    gateway = Gateway(gw_port, work, "a")
    node = start_node(work, extra=plan_toml(gw_port), t1=0.05, users=4)
    colleague = None
    try:
        rows = dict(node.rows)
        assert register_contact(node, "user0", rows["user0"], phone_port, work)
        assert register_contact(node, "user1", rows["user1"], colleague_port, work)
        colleague = Gateway(colleague_port, work, "colleague")
        yield node, phone_port, colleague, gateway
    finally:
        node.stop()
        if colleague is not None:
            colleague.stop()
        gateway.stop()


def carrier_call(node, callee: str, port: int, log: str):
    """The carrier's call to ``callee`` (a number of the domain), which the phone
    transfers or hangs up; SIPp's result."""
    inf = os.path.join(node.work, f"carrier-{os.urandom(4).hex()}.csv")
    with open(inf, "w") as f:
        f.write(f"SEQUENTIAL\n{CALLER};carrier.example;{callee}@{node.domain}\n")
    return run_sipp(
        "uac_carrier_transfer.xml",
        f"{node.address}:{node.port}",
        node.work,
        inf=inf,
        calls=1,
        local_ip=CARRIER_IP,
        local_port=port,
        timeout=25,
        extra=("-trace_msg", "-message_file", log),
    )


def transfer(node, phone_port: int, target: str, expect: int):
    """The carrier calls the DID; the phone answers and transfers to ``target``. Return
    the carrier's SIPp result and the phone's statistics."""
    log = os.path.join(node.work, f"phone-{os.urandom(4).hex()}.log")
    carrier_port = free_port(CARRIER_IP)
    # SIPp's digest-uri is remote_ip:remote_port unless told: the REFER's Request-URI is
    # the carrier's Contact.
    phone = Uas(
        phone_scenario(node, target, expect),
        phone_port,
        node.work,
        calls=1,
        args=(
            "-trace_msg",
            "-message_file",
            log,
            "-auth_uri",
            f"{CALLER}@{CARRIER_IP}:{carrier_port};transport=UDP",
        ),
    )
    try:
        res = carrier_call(node, DID, carrier_port, log + ".carrier")
        return res, phone.wait(10)
    finally:
        phone.stop()


def test_a_blind_transfer_of_an_inbound_call_to_a_colleague_completes(lab):
    node, phone_port, colleague, _ = lab
    before = len(colleague.invites())
    res, phone = transfer(node, phone_port, f"sip:202@{node.domain}", 202)
    assert res.successful == 1, (res, node.log_tail())
    assert phone.get("SuccessfulCall(C)") == "1", phone
    invite = wait_for(lambda: colleague.invites()[before:], 5)[0]
    assert "X-Tandem-Transfer" not in invite  # the token never leaves the cluster
    assert f"Referred-By: <sip:user0@{node.domain}>" in invite


def test_a_blind_transfer_to_a_national_number_goes_out_as_the_transferor(lab):
    node, phone_port, _, gateway = lab
    before = len(gateway.invites())
    res, phone = transfer(node, phone_port, f"sip:95551234@{node.domain}", 202)
    assert res.successful == 1, (res, node.log_tail())
    assert phone.get("SuccessfulCall(C)") == "1", phone
    invite = wait_for(lambda: gateway.invites()[before:], 5)[0]
    assert "INVITE sip:5551234@" in invite
    assert f"P-Asserted-Identity: <sip:{DID}@{node.domain};user=phone>" in invite


def test_a_transfer_to_an_international_number_is_refused(lab):
    node, phone_port, _, gateway = lab
    before = len(gateway.invites())
    res, phone = transfer(node, phone_port, f"sip:9004420794601@{node.domain}", 403)
    assert res.successful == 1, (res, node.log_tail())  # the carrier saw no REFER, a BYE
    assert phone.get("SuccessfulCall(C)") == "1", phone  # the phone got its 403
    assert gateway.invites()[before:] == []


def test_a_forged_token_is_refused(lab):
    node, _, colleague, gateway = lab
    before = len(gateway.invites()), len(colleague.invites())
    for uri in (f"sip:95551234@{node.domain}", f"sip:202@{node.domain}"):
        text = raw_invite(uri, f"sip:{CALLER}@carrier.example").replace(
            "Content-Length: 0",
            f"X-Tandem-Transfer: 9999999999.dXNlcjA.{'A' * 22}\r\nContent-Length: 0",
        )
        answer = send_from(CARRIER_IP, node, text)
        assert answer is not None and answer.startswith("SIP/2.0 403 Transfer Refused"), answer
    assert (len(gateway.invites()), len(colleague.invites())) == before


def test_a_softphone_transfers_the_carriers_call_to_a_colleague(lab):
    # PJSUA2 answers the carrier's call and transfers it (a REFER it authenticates
    # itself after the 407); the carrier completes the call to user1's extension.
    node, _, colleague, _ = lab
    before = len(colleague.invites())
    phone = pjsua(
        "pjsua-xfer",
        "user2",
        dict(node.rows)["user2"],
        node.domain,
        f"{node.address}:{node.port}",
        "udp",
        free_port(),
        free_port(),
    )
    result: list = []
    try:
        assert phone.wait_for("REGISTERED").endswith(" 200"), phone.lines[-10:]
        log = os.path.join(node.work, f"carrier-pjsua-{os.urandom(4).hex()}.log")
        carrier = threading.Thread(
            target=lambda: result.append(
                carrier_call(node, SOFTPHONE_DID, free_port(CARRIER_IP), log)
            )
        )
        carrier.start()
        phone.wait_for("INCOMING")
        phone.wait_for("CALL CONFIRMED")
        phone.send(f"xfer sip:202@{node.domain}")
        phone.wait_for("XFER 100")  # the REFER went out
        # the carrier accepted it (no NOTIFY from SIPp: PJSUA2 prints no final status)
        # and hangs up the first call
        phone.wait_for("CALL DISCONNECTED")
        carrier.join(30)
        assert result and result[0].successful == 1, (result, node.log_tail())
    finally:
        phone.stop()
    invite = wait_for(lambda: colleague.invites()[before:], 5)[0]
    assert "X-Tandem-Transfer" not in invite
    assert f"Referred-By: <sip:user2@{node.domain}>" in invite
