"""Emergency, the legal minimum, with real processes: a phone in a mapped subnet dials
``9911`` (outside-line prefix 9); the node sends it to the emergency gateway (a SIPp UAS)
as 911 with that location's callback number, and tells a real HTTP webhook receiver and a
real local SMTP receiver at once: the caller, the location's name and civic address, the
callback number. A phone outside every mapped subnet gets the default callback and an
"unknown location" notice; a dressed-up number (``9-911``) with a wrong password goes
nowhere and tells no one; a webhook that fails is retried, bounded, and never holds up the
call."""

import email
import email.policy

import gevent
import pytest
from gevent.server import StreamServer

from actors.config import ConfigError, parse_config
from actors.emergency_notify import EmergencyNotifier, source_host
from actors.notify import Channels, post_json
from loadtest.harness import free_port
from loadtest.sipclient import SipClient, SipClientError
from sipcore.call_events import CallEvent
from sipcore.dialplan import parse_dialplan
from tests.test_alarms import SmtpReceiver, Webhook
from tests.test_gateways import Gateway, wait_for
from tests.test_proxy import start_node

CALLBACK = "+15551234"
DEFAULT = "+15550000"


def plan_toml(psap_port: int) -> str:
    return f"""
[dialplan]
probe_interval = 0
default_callback = "{DEFAULT}"

[[dialplan.locations]]
network = "127.0.0.1/32"
callback = "{CALLBACK}"
name = "HQ floor 2"
address = "1 Main St, Springfield, floor 2"

[[dialplan.gateways]]
name = "psap"
host = "127.0.0.1"
port = {psap_port}
emergency = true

[dialplan.users.user0]
permissions = []
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("emergency"))
    psap = Gateway(free_port(), work, "psap")
    hook, smtp = Webhook(), SmtpReceiver()
    extra = (
        plan_toml(psap.uas.port)
        + f"""
[emergency]
webhook = "{hook.url}"
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
smtp_to = ["security@example.test"]
"""
    )
    node = start_node(work, extra=extra, t1=0.05, users=5, sip='outside_line_prefix = "9"\n')
    try:
        yield node, psap, hook, smtp
    finally:
        node.stop()
        psap.stop()
        hook.stop()
        smtp.stop()


def dial(node, number: str, password: str | None = None, local_ip: str = "127.0.0.1") -> int:
    """``number`` from user0 at ``local_ip``; hang up a 2xx; the final status (407: the
    credentials were refused)."""
    c = SipClient(
        (node.address, node.port),
        "user0",
        password if password is not None else dict(node.rows)["user0"],
        node.domain,
        local_ip=local_ip,
        t1=0.05,
        timeout=15.0,
    )
    try:
        resp, dialog = c.invite(f"sip:{number}@{node.domain}")
        if dialog is not None:
            assert dialog.bye().status == 200
        return resp.status
    except SipClientError as e:
        assert "credentials refused: 407" in str(e), e
        return 407
    finally:
        c.close()


def text_of(message: str) -> str:
    """The text of an e-mail as the SMTP receiver got it."""
    mail = email.message_from_string(message, policy=email.policy.default)
    return mail.get_body().get_content()


def test_9911_from_a_mapped_subnet_reaches_the_gateway_and_notifies(site):
    node, psap, hook, smtp = site
    assert dial(node, "9911") == 200
    invite = wait_for(lambda: psap.invites(), 5)[-1]
    assert f"INVITE sip:911@127.0.0.1:{psap.uas.port}" in invite
    assert f"P-Asserted-Identity: <sip:{CALLBACK}@{node.domain};user=phone>" in invite
    body = wait_for(lambda: hook.bodies, 10)[-1]
    assert body["event"] == "emergency call" and body["caller"] == f"sip:user0@{node.domain}"
    assert body["callee"] == f"sip:9911@{node.domain}" and body["callback"] == CALLBACK
    assert body["location"] == {
        "network": "127.0.0.1/32",
        "name": "HQ floor 2",
        "address": "1 Main St, Springfield, floor 2",
    }
    assert "HQ floor 2, 1 Main St" in body["text"] and body["node"] == "node1"
    mail = email.message_from_string(
        wait_for(lambda: smtp.messages, 10)[-1], policy=email.policy.default
    )
    assert mail["To"] == "security@example.test"
    assert "EMERGENCY CALL from sip:user0@" in mail["Subject"]
    assert "1 Main St, Springfield" in text_of(mail.as_string())


def test_an_unmapped_source_gets_the_default_callback_and_an_unknown_location(site):
    node, psap, hook, smtp = site
    before, mails = len(hook.bodies), len(smtp.messages)
    assert dial(node, "911", password="wrong", local_ip="127.0.0.2") == 200
    invite = wait_for(lambda: psap.invites(), 5)[-1]
    assert f"P-Asserted-Identity: <sip:{DEFAULT}@{node.domain};user=phone>" in invite
    body = wait_for(lambda: hook.bodies[before:], 10)[-1]
    assert body["location"] is None and body["source"] == "127.0.0.2"
    assert "unknown location" in body["text"] and body["callback"] == DEFAULT
    assert "unknown location" in text_of(wait_for(lambda: smtp.messages[mails:], 10)[-1])


def test_a_dressed_up_number_goes_nowhere_and_tells_no_one(site):
    node, psap, hook, smtp = site
    calls, notices, mails = len(psap.invites()), len(hook.bodies), len(smtp.messages)
    for number in ("9-911", "99110", "9110"):
        assert dial(node, number, password="wrong") == 407, number
    gevent.sleep(0.5)  # what a wrong notice would need to arrive: none may
    assert (len(psap.invites()), len(hook.bodies), len(smtp.messages)) == (calls, notices, mails)


def test_a_failing_webhook_is_retried_bounded_and_keeps_no_secret(monkeypatch, caplog):
    down = Webhook(status=500)
    monkeypatch.setattr("actors.emergency_notify.RETRY_AFTER", 0.05)
    try:
        channels = Channels(
            webhook=down.url,
            smtp_host="127.0.0.1",
            smtp_port=1,
            smtp_to=["x@y"],
            smtp_password="hunter2",
        )
        notifier = EmergencyNotifier(
            channels, lambda: parse_dialplan(None), "node1", "example.test"
        )
        ev = CallEvent(
            "emergency", "c1", "sip:amy@example.test", "sip:911@example.test", "udp:[::1]:5060"
        )
        notifier.add([ev, CallEvent("attempt", "c1", "a", "b", "udp:1.2.3.4:5")], 1000.0)
        assert len(notifier.queued) == 1 and notifier.queued[0]["source"] == "::1"
        assert not notifier.deliver(notifier.queued.popleft())
        assert len(down.bodies) == 3 and notifier.stats["failed"] == 1
        assert "given up" in caplog.text and "hunter2" not in caplog.text
        for _ in range(1100):  # a flood of emergency events: the queue stays bounded
            notifier.add([ev], 1000.0)
        assert len(notifier.queued) == 1000 and notifier.stats["dropped"] == 100
    finally:
        down.stop()
    assert source_host("tcp:10.1.2.3:5060") == "10.1.2.3"


@pytest.mark.parametrize(
    "body, error",
    [
        ({"webhook": "file:///etc/passwd"}, "http"),
        ({"smtp_host": "mail"}, "smtp_to"),
        ({"smtp_password": "x"}, "unknown setting"),
        ({"smtp_port": 0}, "smtp_port"),
        ({"smtp_to": "a@b"}, "smtp_to"),
        ({"webhooks": "x"}, "unknown setting"),
    ],
)
def test_the_emergency_section_is_checked(body, error):
    with pytest.raises(ConfigError, match=error):
        parse_config({"node": {"id": "n1"}, "sip": {"domain": "example.test"}, "emergency": body})


def test_a_webhook_answering_garbage_or_nothing_fails_cleanly():
    def garbage(sock, _address):
        sock.recv(65535)
        sock.sendall(b"\x00\xffnot http at all\r\n\r\n")
        sock.close()

    server = StreamServer(("127.0.0.1", 0), garbage)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        assert post_json(url, {"x": 1}, "test", timeout=2.0) is False
        assert post_json(f"http://127.0.0.1:{free_port()}/", {"x": 1}, "test", timeout=2.0) is False
    finally:
        server.stop()


def test_a_notice_that_cannot_be_made_never_stops_the_proxy(caplog):
    def broken_plan():
        raise RuntimeError("no plan")

    notifier = EmergencyNotifier(
        Channels(webhook="http://127.0.0.1:1/"), broken_plan, "node1", "example.test"
    )
    notifier.add(
        [
            CallEvent(
                "emergency",
                "c2",
                "sip:amy@example.test",
                "sip:911@example.test",
                "udp:10.0.0.1:5060",
            )
        ],
        1000.0,
    )
    assert not notifier.queued and notifier.stats["failed"] == 1
    assert "not made" in caplog.text
