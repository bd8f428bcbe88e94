"""Ring groups and call limits through a real node process, SIPp standing as phones, as a
gateway, as an emergency gateway and as a voicemail server: a ring group rings two phones and
the second answers (all at once, and in turn); a sequential group falls to its fallback when
nobody answers; a user's limit gives 486 and a gateway's 503, both freed by the BYE; an
emergency call passes a full limit."""

import os

import pytest

from loadtest.bench_call import Uas, register_contact
from loadtest.harness import free_port
from tests.test_gateways import Gateway, client, wait_for
from tests.test_proxy import start_node


class Phone:
    """A user's phone: registered from its own port, then a SIPp UAS there that keeps
    every message it got (``scenario``: answers, or rings until cancelled)."""

    def __init__(self, node, user: str, scenario: str):
        port = free_port()
        self.log = os.path.join(node.work, f"phone-{user}-{port}.log")
        assert register_contact(node, user, dict(node.rows)[user], port, node.work)
        self.uas = Uas(scenario, port, node.work, args=("-trace_msg", "-message_file", self.log))

    def received(self, method: str) -> int:
        """How many ``method`` requests it received so far."""
        try:
            with open(self.log, errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return 0
        return sum(
            1
            for m in text.split("----------------------------------------------")
            if "received" in m and f"\n{method} sip:" in m
        )

    def stop(self) -> None:
        self.uas.stop()


def plan_toml(ports: dict) -> str:
    return f"""
[dialplan]
probe_interval = 0

[[dialplan.gateways]]
name = "a"
host = "127.0.0.1"
port = {ports["a"]}

[[dialplan.gateways]]
name = "psap"
host = "127.0.0.1"
port = {ports["psap"]}
emergency = true

[[dialplan.rules]]
pattern = "9."
strip = 1
gateways = ["a"]

[[dialplan.groups]]
name = "sales"
numbers = ["300", "+15551230300"]
members = ["user1", "user2"]
ring_timeout = 10

[[dialplan.groups]]
name = "support"
numbers = ["301"]
strategy = "sequential"
members = ["user3", "user4"]
ring_timeout = 1
fallback = "sip:voicemail@127.0.0.1:{ports["vm"]}"

[[dialplan.groups]]
name = "turns"
numbers = ["302"]
strategy = "sequential"
members = ["user1", "user2"]
ring_timeout = 1

[dialplan.limits]
users = {{user6 = 1}}
gateways = {{a = 1}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("pbx"))
    ports = {"a": free_port(), "psap": free_port(), "vm": free_port()}
    servers = {name: Gateway(port, work, name) for name, port in ports.items()}
    node = start_node(work, extra=plan_toml(ports), t1=0.05, users=10)
    phones = {}
    try:
        phones = {
            "user1": Phone(node, "user1", "uas_ring_cancel.xml"),
            "user2": Phone(node, "user2", "uas_answer.xml"),
            "user3": Phone(node, "user3", "uas_ring_cancel.xml"),
            "user4": Phone(node, "user4", "uas_ring_cancel.xml"),
            "user7": Phone(node, "user7", "uas_answer.xml"),
        }
        yield node, servers, phones
    finally:
        node.stop()
        for p in [*servers.values(), *phones.values()]:
            p.stop()


def test_a_ring_group_rings_two_phones_and_the_second_answers(lab):
    node, _, phones = lab
    c = client(node, "user0")
    try:
        resp, dialog = c.invite(f"sip:+15551230300@{node.domain}")
        assert resp.status == 200 and dialog is not None
        assert phones["user1"].received("INVITE") == 1  # it rang too ...
        assert wait_for(lambda: phones["user1"].received("CANCEL") == 1, 5)  # ... and stopped
        assert phones["user2"].received("INVITE") == 1
        assert dialog.bye().status == 200
    finally:
        c.close()


def test_a_sequential_group_rings_the_first_for_its_timeout_then_the_second_answers(lab):
    node, _, phones = lab
    before = {
        u: (phones[u].received("INVITE"), phones[u].received("CANCEL")) for u in ("user1", "user2")
    }
    c = client(node, "user0")
    try:
        resp, dialog = c.invite(f"sip:302@{node.domain}")
        assert resp.status == 200 and dialog is not None
        assert dialog.bye().status == 200
    finally:
        c.close()
    assert phones["user1"].received("INVITE") == before["user1"][0] + 1
    assert wait_for(lambda: phones["user1"].received("CANCEL") == before["user1"][1] + 1, 5)
    assert phones["user2"].received("INVITE") == before["user2"][0] + 1


def test_a_sequential_group_falls_to_its_fallback_when_nobody_answers(lab):
    node, servers, phones = lab
    before = len(servers["vm"].invites())
    c = client(node, "user0")
    try:
        resp, dialog = c.invite(f"sip:301@{node.domain}")
        assert resp.status == 200 and dialog is not None
        assert dialog.bye().status == 200
    finally:
        c.close()
    # user3 rang, then user4, each cancelled after a second; then the voicemail answered
    assert [phones[u].received("CANCEL") for u in ("user3", "user4")] == [1, 1]
    assert "INVITE sip:voicemail@127.0.0.1" in servers["vm"].invites()[before:][0]


def test_the_user_limit_gives_486_and_frees_up_after_bye(lab):
    node, _, phones = lab
    answered = phones["user7"].received("INVITE")
    c = client(node, "user6")
    try:
        resp, first = c.invite(f"sip:user7@{node.domain}")
        assert resp.status == 200 and first is not None
        resp, second = c.invite(f"sip:user7@{node.domain}")
        assert resp.status == 486 and second is None
        assert phones["user7"].received("INVITE") == answered + 1  # refused by the node
        assert first.bye().status == 200
        resp, third = c.invite(f"sip:user7@{node.domain}")
        assert resp.status == 200 and third is not None
        assert third.bye().status == 200
    finally:
        c.close()


def test_the_gateway_limit_gives_503_and_frees_up_after_bye(lab):
    node, servers, _ = lab
    before = len(servers["a"].invites())
    one, two = client(node, "user8"), client(node, "user9")
    try:
        resp, first = one.invite(f"sip:95551234@{node.domain}")
        assert resp.status == 200 and first is not None
        resp, second = two.invite(f"sip:95551235@{node.domain}")
        assert resp.status == 503 and second is None
        assert len(servers["a"].invites()) == before + 1  # never offered to the gateway
        assert first.bye().status == 200
        resp, third = two.invite(f"sip:95551235@{node.domain}")
        assert resp.status == 200 and third is not None
        assert third.bye().status == 200
    finally:
        one.close()
        two.close()


def test_an_emergency_call_passes_a_full_limit(lab):
    node, servers, _ = lab
    c = client(node, "user6")
    try:
        resp, held = c.invite(f"sip:user7@{node.domain}")
        assert resp.status == 200 and held is not None
        assert c.invite(f"sip:user7@{node.domain}")[0].status == 486  # at the limit
        before = len(servers["psap"].invites())
        resp, emergency = c.invite(f"sip:911@{node.domain}")
        assert resp.status == 200 and emergency is not None
        assert len(servers["psap"].invites()) == before + 1
        assert emergency.bye().status == 200
        assert held.bye().status == 200
    finally:
        c.close()
