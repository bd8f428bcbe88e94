"""The Contact-or-flow rules of sipcore.nat and binding_target (RFC 3261 §16.5, RFC 5626)."""

import os
import socket
import subprocess

import gevent
import pytest

from loadtest.harness import NodeProcess
from sipcore.digest import Credentials, expected_response, ha1
from sipcore.location import Binding
from sipcore.nat import is_outbound, nat_detected, use_flow
from sipcore.proxy import ProxySettings, binding_target


@pytest.mark.parametrize(
    "contact, source, nat",
    [
        ("192.168.1.20", "203.0.113.7", True),  # RFC 1918 behind a NAT
        ("10.1.2.3", "198.51.100.1", True),
        ("172.31.0.9", "198.51.100.1", True),
        ("100.64.3.3", "198.51.100.1", True),  # RFC 6598 carrier-grade NAT
        ("fd00::5", "2001:db8::1", True),  # IPv6 unique local
        ("[fd00::5]", "2001:db8::1", True),
        ("169.254.7.7", "198.51.100.1", True),
        ("127.0.0.1", "203.0.113.7", True),  # loopback named from another host
        ("192.168.1.20", "192.168.1.20", False),  # same private network, reached directly
        ("127.0.4.9", "127.0.4.1", False),  # loopback from loopback: same host
        ("198.51.100.9", "203.0.113.7", False),  # a third party registered another device
        ("172.32.0.1", "198.51.100.1", False),  # just outside 172.16/12
        ("phone.example.net", "203.0.113.7", False),  # a name: RFC 3263 finds it
    ],
)
def test_nat_detected(contact, source, nat):
    assert nat_detected(contact, source) is nat


def test_outbound_needs_instance_and_reg_id():
    assert is_outbound("<urn:uuid:1>", 1)
    assert not is_outbound("<urn:uuid:1>", None)
    assert not is_outbound(None, None)


def test_modes():
    assert use_flow("always", "udp", "198.51.100.9", "203.0.113.7", False)
    assert not use_flow("never", "udp", "192.168.1.20", "203.0.113.7", False)
    assert use_flow("never", "udp", "198.51.100.9", "203.0.113.7", True)  # outbound: always
    assert not use_flow("auto", "udp", "203.0.113.7", "203.0.113.7", False)
    # a TCP connection from the Contact's own address reaches that device
    assert use_flow("auto", "tcp", "203.0.113.7", "203.0.113.7", False)
    assert not use_flow("auto", "tcp", "198.51.100.9", "203.0.113.7", False)


def _binding(contact, received, instance=None, reg_id=None):
    return Binding(
        "sip:bob@example.test", contact, contact, 0, "c", 1, None, [], instance, reg_id, received
    )


def test_udp_contact_on_another_port_is_the_target():
    """A phone sending from 40000 and listening on 5062 is called on 5062 (was its source)."""
    t = binding_target(_binding("sip:bob@127.0.4.2:5062", "udp:127.0.4.2:40000"))
    assert t.dest is None and t.uri == "sip:bob@127.0.4.2:5062"


def test_third_party_registration_is_called_on_its_contact():
    t = binding_target(_binding("sip:bob@198.51.100.9:5070", "udp:203.0.113.7:5060"))
    assert t.dest is None


def test_private_contact_goes_to_the_source():
    t = binding_target(_binding("sip:bob@192.168.1.20:5060", "udp:203.0.113.7:31000"))
    assert t.dest == ("udp", "203.0.113.7", 31000)
    t = binding_target(_binding("sip:bob@192.168.1.20:5060", "udp:203.0.113.7:31000"), "never")
    assert t.dest is None


def test_outbound_flow_and_its_limits():
    b = _binding("sip:bob@198.51.100.9:5070;ob", "udp:203.0.113.7:5060", "<urn:uuid:1>", 1)
    assert binding_target(b, "never").dest == ("udp", "203.0.113.7", 5060)
    # a flow never changes the transport nor carries a sips request
    b = _binding(
        "sip:bob@198.51.100.9:5070;transport=tcp", "udp:203.0.113.7:5060", "<urn:uuid:1>", 1
    )
    assert binding_target(b).dest is None
    b = _binding("sips:bob@198.51.100.9:5070", "tcp:203.0.113.7:5060", "<urn:uuid:1>", 1)
    assert binding_target(b).dest is None


def test_always_keeps_the_old_behaviour():
    t = binding_target(_binding("sip:bob@198.51.100.9:5070", "udp:203.0.113.7:5060"), "always")
    assert t.dest == ("udp", "203.0.113.7", 5060)


def test_settings_refuse_an_unknown_mode():
    with pytest.raises(ValueError, match="nat_handling"):
        ProxySettings("example.test", "127.0.0.1", 5060, nat_handling="sometimes")


# -- a real node: the Contact is called, not the REGISTER's source ------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node on 127.0.0.2 (not the kernel's default source) with users alice, bob and carol
    (password ``pw``)."""
    n = NodeProcess(str(tmp_path_factory.mktemp("nat")), address="127.0.0.2")
    for user in ("alice", "bob", "carol"):
        out = n.run_cli("user", "add", user, "--password", "pw")
        assert out.returncode == 0, out.stderr
    n.start()
    yield n
    n.stop()


def _udp(timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.bind(("127.0.0.1", 0))
    return s


def _answer_busy(listener: socket.socket) -> str:
    """Wait (bounded by the socket's timeout) for an INVITE, answer 486; return the INVITE."""
    while True:
        data, src = listener.recvfrom(65535)
        text = data.decode()
        if text.startswith("INVITE "):
            break
    head = text.split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [
        h
        for h in head[1:]
        if h.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")
    ]
    keep = [h + ";tag=busy" if h.lower().startswith("to:") else h for h in keep]
    listener.sendto(
        (
            "SIP/2.0 486 Busy Here\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
        ).encode(),
        src,
    )
    return text


def _call(node, user: str) -> str:
    """INVITE ``user`` from a stranger; the first final response's status line."""
    with _udp(40) as s:
        port = s.getsockname()[1]
        to = f"sip:{user}@{node.domain}"
        s.sendto(
            (
                f"INVITE {to} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
                f"From: <sip:stranger@other.test>;tag=f1\r\nTo: <{to}>\r\n"
                f"Call-ID: {os.urandom(8).hex()}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
                f"Contact: <sip:x@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            (node.address, node.port),
        )
        while True:
            text = s.recv(65535).decode()
            if not text.startswith("SIP/2.0 1"):
                return text.split("\r\n", 1)[0]


def test_sipsak_registering_another_listener_gets_it_called(node):
    """sipsak -C binds a contact that is not sipsak: the call reaches that contact."""
    with _udp() as device:
        contact = f"sip:alice@127.0.0.1:{device.getsockname()[1]}"
        reg = subprocess.run(
            [
                "sipsak",
                "-U",
                "-C",
                contact,
                "-s",
                f"sip:alice@{node.address}:{node.port}",
                "-u",
                "alice",
                "-a",
                "pw",
                "-x",
                "600",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert reg.returncode == 0, reg.stdout + reg.stderr
        result = gevent.spawn(_call, node, "alice")
        invite = _answer_busy(device)
        assert invite.startswith(f"INVITE {contact} SIP/2.0")
        assert result.get(timeout=10) == "SIP/2.0 486 Busy Here"


def _register(node, sender: socket.socket, user: str, contact: str, via_port: int) -> None:
    """Register ``contact`` for ``user`` from ``sender`` (Via names ``via_port``, with rport)."""
    call_id = os.urandom(8).hex()

    def send(cseq: int, auth: str = "") -> str:
        branch = f"z9hG4bK{cseq}{call_id}"
        sender.sendto(
            (
                f"REGISTER sip:{node.domain} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{via_port};rport;branch={branch}\r\n"
                f"From: <sip:{user}@{node.domain}>;tag=r\r\n"
                f"To: <sip:{user}@{node.domain}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n"
                f"Contact: <{contact}>\r\nExpires: 600\r\n{auth}"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            (node.address, node.port),
        )
        return sender.recv(65535).decode()

    challenge = send(1)
    assert challenge.startswith("SIP/2.0 401"), challenge
    nonce = challenge.split('nonce="', 1)[1].split('"', 1)[0]
    creds = Credentials(
        username=user,
        realm=node.domain,
        nonce=nonce,
        uri=f"sip:{node.domain}",
        response="",
        algorithm="MD5",
        qop="auth",
        nc="00000001",
        cnonce="c0ffee",
    )
    response = expected_response(creds, "REGISTER", ha1(user, node.domain, "pw"))
    ok = send(
        2,
        f'Authorization: Digest username="{user}",realm="{node.domain}",'
        f'nonce="{nonce}",uri="sip:{node.domain}",response="{response}",'
        'algorithm=MD5,qop=auth,nc=00000001,cnonce="c0ffee"\r\n',
    )
    assert ok.startswith("SIP/2.0 200"), ok


def test_phone_sending_from_another_port_is_called_where_it_listens(node):
    """A REGISTER sent from one port with a Contact on another: the call goes to the Contact."""
    with _udp() as sender, _udp() as listener:
        listen = listener.getsockname()[1]
        assert sender.getsockname()[1] != listen
        _register(node, sender, "bob", f"sip:bob@127.0.0.1:{listen}", listen)
        result = gevent.spawn(_call, node, "bob")
        _answer_busy(listener)
        assert result.get(timeout=10) == "SIP/2.0 486 Busy Here"


def test_udp_call_to_a_tcp_contact_double_record_routes_from_the_node_address(node):
    """The INVITE leaves over TCP from the node's own address, with two Record-Routes
    (RFC 5658): the TCP one facing the callee on top, the caller's UDP one below."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        contact = f"sip:carol@127.0.0.1:{server.getsockname()[1]};transport=tcp"
        with _udp() as sender:
            _register(node, sender, "carol", contact, sender.getsockname()[1])
        result = gevent.spawn(_call, node, "carol")
        conn, peer = server.accept()
        with conn:
            assert peer[0] == node.address
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65535)
                assert chunk, "connection closed before the INVITE"
                data += chunk
        result.kill()
    invite = data.decode()
    assert invite.startswith(f"INVITE {contact} SIP/2.0")
    routes = [
        line.split(":", 1)[1].strip()
        for line in invite.split("\r\n")
        if line.lower().startswith("record-route:")
    ]
    here = f"{node.address}:{node.port}"
    joined = ", ".join(routes)
    token = joined.rsplit(";dlg=", 1)[-1].rstrip(">")
    assert joined == (f"<sip:{here};transport=tcp;lr;dlg={token}>, <sip:{here};lr;dlg={token}>")
