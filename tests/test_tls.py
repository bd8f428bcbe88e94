"""SIP over TLS (RFC 3261 §26.2) against a real node process: a self-signed
certificate made here with openssl, Python ``ssl`` phones registering and
calling each other over TLS, and hostile peers on the TLS port."""

import os
import re
import socket
import ssl
import subprocess
import time

import pytest

from actors.config import ConfigError, load_config
from loadtest.harness import NodeProcess, free_port, write_users_csv
from sipcore.digest import Credentials, expected_response, ha1
from tests.conftest import _in_ci
from tests.phones import call_and_hang_up, pjsua

HEADER_TIMEOUT = 1.0


def make_cert(folder: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (0600), made by openssl."""
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    os.chmod(key, 0o600)
    return cert, key


def tls_node(work: str, cert: str, key: str, ca: str = "") -> NodeProcess:
    """A node (not started) with TLS on a free port and ten users; ``ca`` is its
    ``tls_ca``."""
    node = NodeProcess(work, limits=f"udp_rate = 0\ntcp_header_timeout = {HEADER_TIMEOUT}")
    node.tls_port = free_port(node.address)
    with open(node.config) as f:
        text = f.read()
    with open(node.config, "w") as f:
        f.write(
            text.replace(
                "[sip]\n",
                f"[sip]\ntls_port = {node.tls_port}\n"
                f'tls_cert = "{cert}"\ntls_key = "{key}"\n' + (f'tls_ca = "{ca}"\n' if ca else ""),
                1,
            )
        )
    node.rows = write_users_csv(os.path.join(work, "users.csv"), 10)
    out = node.run_cli("user", "import", os.path.join(work, "users.csv"))
    assert out.returncode == 0, out.stderr
    return node


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_cert(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def node(tmp_path_factory, certs):
    n = tls_node(str(tmp_path_factory.mktemp("tls")), *certs).start()
    yield n
    n.stop()


class TlsPhone:
    """A phone over one TLS connection to the node, verifying the node's certificate
    (with no ``cafile``, not connected: ``attach`` gives it a connection later)."""

    def __init__(self, node, user: str, cafile: str | None):
        self.user, self.password = user, dict(node.rows)[user]
        self.buf = b""
        self.call_id = os.urandom(6).hex()
        self.cseq = 0
        if cafile is not None:
            ctx = ssl.create_default_context(cafile=cafile)
            raw = socket.create_connection((node.address, node.tls_port), timeout=5)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.attach(ctx.wrap_socket(raw, server_hostname=node.address))

    def attach(self, sock) -> None:
        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]

    def close(self) -> None:
        self.sock.close()

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def read(self, timeout: float = 5.0) -> str:
        """The next whole message on the connection (framed by Content-Length)."""
        deadline = time.monotonic() + timeout
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                length = re.search(rb"(?im)^content-length:\s*(\d+)", self.buf[:end])
                total = end + 4 + (int(length.group(1)) if length else 0)
                if len(self.buf) >= total:
                    msg, self.buf = self.buf[:total], self.buf[total:]
                    return msg.decode()
            left = deadline - time.monotonic()
            assert left > 0, f"no whole message within {timeout}s: {self.buf!r}"
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            assert data, "the node closed the connection"
            self.buf += data

    def final(self) -> str:
        """The next message that is not a provisional response."""
        while True:
            msg = self.read()
            if not msg.startswith("SIP/2.0 1"):
                return msg

    def via(self) -> str:
        return f"Via: SIP/2.0/TLS {self.host}:{self.port};branch=z9hG4bK{os.urandom(6).hex()}"

    def contact(self) -> str:
        return f"<sip:{self.user}@{self.host}:{self.port};transport=tls>"

    def auth(self, challenge: str, method: str, uri: str) -> str:
        """The Authorization or Proxy-Authorization answering ``challenge``."""
        nonce = challenge.split('nonce="', 1)[1].split('"', 1)[0]
        creds = Credentials(
            self.user, "example.test", nonce, uri, "", "MD5", "auth", "00000001", "c0ffee"
        )
        resp = expected_response(creds, method, ha1(self.user, "example.test", self.password))
        name = "Proxy-Authorization" if challenge.startswith("SIP/2.0 407") else "Authorization"
        return (
            f'{name}: Digest username="{self.user}",realm="example.test",nonce="{nonce}",'
            f'uri="{uri}",response="{resp}",algorithm=MD5,cnonce="c0ffee",qop=auth,'
            f"nc=00000001\r\n"
        )

    def register(self) -> str:
        """REGISTER over the connection, answering the challenge; the final answer."""
        answer = ""
        for _ in range(2):
            self.cseq += 1
            auth = self.auth(answer, "REGISTER", "sip:example.test") if answer else ""
            self.send(
                f"REGISTER sip:example.test SIP/2.0\r\n{self.via()}\r\n"
                f"From: <sip:{self.user}@example.test>;tag=r{self.cseq}\r\n"
                f"To: <sip:{self.user}@example.test>\r\nCall-ID: {self.call_id}\r\n"
                f"CSeq: {self.cseq} REGISTER\r\nContact: {self.contact()}\r\n{auth}"
                f"Max-Forwards: 70\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
            )
            answer = self.final()
            if not answer.startswith("SIP/2.0 401"):
                return answer
        return answer


def header(msg: str, name: str) -> list[str]:
    return re.findall(rf"(?im)^{name}:\s*(.*?)\r$", msg)


def need_pjsua2() -> None:
    """Skip without the pjsua2 module, or fail when ``$CI`` is set (as tests/test_phones)."""
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        if _in_ci():
            pytest.fail("pjsua2 is required when CI is set", pytrace=False)
        pytest.skip("pjsua2 not installed")


def test_a_phone_registers_over_tls(node, certs):
    phone = TlsPhone(node, "user0", certs[0])
    try:
        answer = phone.register()
        assert answer.startswith("SIP/2.0 200"), answer
        assert f"{phone.host}:{phone.port};transport=tls" in answer
        assert header(answer, "Via")[0].startswith("SIP/2.0/TLS")
    finally:
        phone.close()


def test_a_call_between_two_tls_phones(node, certs):
    """user2 calls user1, both on TLS: the INVITE reaches user1 over its own TLS
    connection with our Via over TLS and a Record-Route naming the TLS port; ACK
    and BYE follow the Record-Route over TLS."""
    callee, caller = TlsPhone(node, "user1", certs[0]), TlsPhone(node, "user2", certs[0])
    try:
        assert callee.register().startswith("SIP/2.0 200")
        assert caller.register().startswith("SIP/2.0 200")
        ruri, call_id = "sip:user1@example.test", os.urandom(6).hex()
        sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"

        def invite(cseq: int, auth: str = "") -> str:
            return (
                f"INVITE {ruri} SIP/2.0\r\n{caller.via()}\r\n"
                f"From: <sip:user2@example.test>;tag=c1\r\nTo: <{ruri}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: {caller.contact()}\r\n"
                f"{auth}Max-Forwards: 70\r\nContent-Type: application/sdp\r\n"
                f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
            )

        caller.send(invite(1))
        challenge = caller.final()
        assert challenge.startswith("SIP/2.0 407"), challenge
        caller.send(
            f"ACK {ruri} SIP/2.0\r\n{header(challenge, 'Via')[0].join(['Via: ', ''])}\r\n"
            f"From: <sip:user2@example.test>;tag=c1\r\nTo: {header(challenge, 'To')[0]}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n"
        )
        caller.send(invite(2, caller.auth(challenge, "INVITE", ruri)))

        got = callee.read()
        assert got.startswith("INVITE sip:user1@"), got
        vias = header(got, "Via")
        assert vias[0].startswith(f"SIP/2.0/TLS {node.address}:{node.tls_port};"), vias
        rr = header(got, "Record-Route")
        assert len(rr) == 1 and f"{node.address}:{node.tls_port};transport=tls;lr" in rr[0], rr
        callee.send(
            "SIP/2.0 200 OK\r\n"
            + "".join(f"Via: {v}\r\n" for v in vias)
            + f"Record-Route: {rr[0]}\r\nFrom: {header(got, 'From')[0]}\r\n"
            f"To: {header(got, 'To')[0]};tag=b1\r\nCall-ID: {call_id}\r\n"
            f"CSeq: 2 INVITE\r\nContact: {callee.contact()}\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
        )
        ok = caller.final()
        assert ok.startswith("SIP/2.0 200"), ok
        route = header(ok, "Record-Route")[0]
        for method, cseq in (("ACK", 2), ("BYE", 3)):
            caller.send(
                f"{method} {callee.contact()[1:-1]} SIP/2.0\r\n{caller.via()}\r\n"
                f"Route: {route}\r\nFrom: <sip:user2@example.test>;tag=c1\r\n"
                f"To: <{ruri}>;tag=b1\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
                f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
            got = callee.read()
            assert got.startswith(f"{method} "), got
            assert header(got, "Via")[0].startswith("SIP/2.0/TLS"), got
        callee.send(
            "SIP/2.0 200 OK\r\n"
            + "".join(f"Via: {v}\r\n" for v in header(got, "Via"))
            + f"From: {header(got, 'From')[0]}\r\nTo: {header(got, 'To')[0]}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
        )
        bye_ok = caller.final()
        assert bye_ok.startswith("SIP/2.0 200") and "3 BYE" in bye_ok, bye_ok
    finally:
        caller.close()
        callee.close()


def register_udp(node, phone: "TlsPhone", contact: str) -> str:
    """REGISTER ``contact`` for ``phone``'s user over UDP (answering the challenge)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        answer = ""
        for cseq in (1, 2):
            auth = phone.auth(answer, "REGISTER", "sip:example.test") if answer else ""
            s.sendto(
                (
                    f"REGISTER sip:example.test SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKu{cseq}{phone.call_id}\r\n"
                    f"From: <sip:{phone.user}@example.test>;tag=u{cseq}\r\n"
                    f"To: <sip:{phone.user}@example.test>\r\nCall-ID: u{phone.call_id}\r\n"
                    f"CSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\n{auth}"
                    f"Max-Forwards: 70\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                (node.address, node.port),
            )
            answer = s.recv(65535).decode()
            if not answer.startswith("SIP/2.0 401"):
                break
        return answer


def test_a_sips_contact_is_reached_over_a_tls_connection_the_node_opens(node, certs):
    """A phone registers (over UDP) a sips Contact where it listens for TLS: a sips
    INVITE for it makes the node connect there over TLS (never UDP)."""
    message_to_sips_contact(node, certs[0], certs, "user3", "user4")


def message_to_sips_contact(
    node,
    cafile: str,
    served: tuple[str, str],
    callee_user: str,
    caller_user: str,
    refused: bool = False,
) -> str:
    """``callee_user`` registers a sips Contact where it takes TLS with the certificate
    ``served``; ``caller_user`` (over TLS, checking the node against ``cafile``) sends
    it a MESSAGE that must arrive over a TLS connection the node opens (``refused``:
    whose handshake the node must abort). Returns the caller's final answer."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*served)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(10)
    port = listener.getsockname()[1]
    caller = TlsPhone(node, caller_user, cafile)
    callee = TlsPhone(node, callee_user, None)
    try:
        answer = register_udp(node, callee, f"sips:{callee_user}@127.0.0.1:{port}")
        assert answer.startswith("SIP/2.0 200"), answer
        assert caller.register().startswith("SIP/2.0 200")
        ruri = f"sips:{callee_user}@example.test"
        caller.send(
            f"MESSAGE {ruri} SIP/2.0\r\n{caller.via()}\r\n"
            f"From: <sips:{caller_user}@example.test>;tag=m1\r\nTo: <{ruri}>\r\n"
            f"Call-ID: m{caller.call_id}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
            f"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        )
        challenge = caller.final()
        assert challenge.startswith("SIP/2.0 407"), challenge
        caller.send(
            f"MESSAGE {ruri} SIP/2.0\r\n{caller.via()}\r\n"
            f"From: <sips:{caller_user}@example.test>;tag=m1\r\nTo: <{ruri}>\r\n"
            f"Call-ID: m{caller.call_id}\r\nCSeq: 2 MESSAGE\r\nMax-Forwards: 70\r\n"
            f"{caller.auth(challenge, 'MESSAGE', ruri)}"
            f"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        )
        raw, _ = listener.accept()
        if refused:
            with pytest.raises(ssl.SSLError):
                server_ctx.wrap_socket(raw, server_side=True)
            raw.close()
            return caller.final()
        callee.attach(server_ctx.wrap_socket(raw, server_side=True))
        got = callee.read()
        assert got.startswith(f"MESSAGE sips:{callee_user}@127.0.0.1:{port} "), got
        vias = header(got, "Via")
        assert vias[0].startswith(f"SIP/2.0/TLS {node.address}:"), vias
        callee.send(
            "SIP/2.0 200 OK\r\n"
            + "".join(f"Via: {v}\r\n" for v in vias)
            + f"From: {header(got, 'From')[0]}\r\nTo: {header(got, 'To')[0]};tag=x\r\n"
            f"Call-ID: {header(got, 'Call-ID')[0]}\r\nCSeq: 2 MESSAGE\r\n"
            f"Content-Length: 0\r\n\r\n"
        )
        ok = caller.final()
        assert ok.startswith("SIP/2.0 200"), ok
        callee.close()
        return ok
    finally:
        caller.close()
        listener.close()


def test_sipsak_registers_over_tls(node, certs):
    """A real client: sipsak's usrloc test over TLS, checking the node's certificate
    (it reads the first record after the handshake as the answer, so this also shows
    the node sends no TLS 1.3 session tickets)."""
    user = "user5"
    reg = subprocess.run(
        [
            "sipsak",
            "-U",
            "-s",
            f"sip:{user}@{node.address}:{node.tls_port}",
            "-E",
            "tls",
            "--tls-ca-cert",
            certs[0],
            "-u",
            user,
            "-a",
            dict(node.rows)[user],
            "-i",
            "-x",
            "120",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "completed successful" in reg.stdout, reg.stdout + reg.stderr + node.log_tail()


def test_pjsua2_calls_pjsua2_over_tls(node, certs):
    """Two PJSUA2 phones with only a TLS transport, checking the node's certificate:
    407, 200, ACK, RTP both ways and BYE, the dialog's requests over TLS."""
    need_pjsua2()
    started = []
    try:
        for user in ("user6", "user7"):
            p = pjsua(
                f"pjsua-{user}-tls",
                user,
                dict(node.rows)[user],
                node.domain,
                f"{node.address}:{node.tls_port}",
                "tls",
                free_port(),
                free_port(),
                ca=certs[0],
            )
            started.append(p)
            p.wait_for("REGISTERED 200", "REGISTERED 4", "REGISTERED 5", "REGISTERED 1")
            assert p.lines[-1].endswith("REGISTERED 200"), p.lines[-20:]
        caller, callee = started
        call_and_hang_up(caller, callee, f"sip:user7@{node.domain}", caller, rtp=True)
    finally:
        for p in started:
            p.stop()


def test_pjsua2_udp_and_pjsua2_tls_call_each_other(node, certs):
    """Legs of different transports, UDP and TLS (double Record-Route, RFC 5658): the
    call completes both ways, each phone's requests of the dialog on its own transport."""
    need_pjsua2()
    started = []
    try:
        for user, transport, port in (("user8", "udp", node.port), ("user9", "tls", node.tls_port)):
            p = pjsua(
                f"pjsua-{user}-{transport}",
                user,
                dict(node.rows)[user],
                node.domain,
                f"{node.address}:{port}",
                transport,
                free_port(),
                free_port(),
                ca=certs[0],
            )
            started.append(p)
            p.wait_for("REGISTERED 200", "REGISTERED 4", "REGISTERED 5", "REGISTERED 1")
            assert p.lines[-1].endswith("REGISTERED 200"), p.lines[-20:]
        udp, tls = started
        for caller, callee, user in ((udp, tls, "user9"), (tls, udp, "user8")):
            call_and_hang_up(caller, callee, f"sip:{user}@{node.domain}", callee)
    finally:
        for p in started:
            p.stop()


def test_with_tls_ca_the_node_checks_the_certificates_it_is_shown(tmp_path, certs):
    """With ``tls_ca``, a sips Contact whose certificate that CA did not sign is not
    reached (the reason in the node's log, an error answer to the caller); one whose
    certificate it signed is."""
    trusted = make_cert(str(tmp_path))
    checking = tls_node(str(tmp_path / "w"), *certs, ca=trusted[0]).start()
    try:
        answer = message_to_sips_contact(checking, certs[0], certs, "user1", "user2", refused=True)
        assert answer.startswith("SIP/2.0 5"), answer
        assert "certificate verify failed" in checking.log_tail(200), checking.log_tail()
        message_to_sips_contact(checking, certs[0], trusted, "user3", "user4")
    finally:
        checking.stop()


def test_plaintext_on_the_tls_port_is_dropped_and_tls_still_works(node, certs):
    with socket.create_connection((node.address, node.tls_port), timeout=5) as s:
        s.sendall(
            b"OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;"
            b"branch=z9hG4bKplain\r\nContent-Length: 0\r\n\r\n"
        )
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        # The node closes the connection (a reset, as it leaves the bytes unread):
        # no SIP answer in clear text.
        assert data == b"", data
    deadline = time.monotonic() + 5
    while "did not speak TLS: plain SIP sent to the TLS port?" not in node.log_tail(200):
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.05)
    test_a_phone_registers_over_tls(node, certs)


def test_a_silent_handshake_is_closed_after_the_header_timeout(node):
    with socket.create_connection((node.address, node.tls_port), timeout=5) as s:
        started = time.monotonic()
        assert s.recv(1) == b""
        waited = time.monotonic() - started
    assert HEADER_TIMEOUT * 0.8 <= waited < HEADER_TIMEOUT + 3, waited


def test_a_key_others_can_read_is_refused(tmp_path):
    cert, key = make_cert(str(tmp_path))
    node = tls_node(str(tmp_path / "w"), cert, key)
    os.chmod(key, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_config(node.config)
    with pytest.raises(RuntimeError, match="chmod 600"):
        node.start(ready_timeout=15)
    os.chmod(key, 0o600)
    assert load_config(node.config).tls_port == node.tls_port


def test_silent_handshakes_count_against_the_per_source_cap(node, certs):
    """Hostile: connections that never finish their handshake hold a slot each; past
    ``tcp_max_per_source`` (32) the next is kept for emergency calls only, so it is closed
    by the handshake timeout too, and once the held ones time out a phone from that
    address registers again."""
    held = [socket.create_connection((node.address, node.tls_port), timeout=5) for _ in range(32)]
    try:
        with socket.create_connection((node.address, node.tls_port), timeout=5) as extra:
            try:
                assert extra.recv(1) == b""
            except ConnectionResetError:
                pass
        deadline = time.monotonic() + 5
        while "tcp connection from 127.0.0.1 over its cap (32 from it)" not in node.log_tail(400):
            assert time.monotonic() < deadline, node.log_tail()
            time.sleep(0.05)
        for s in held:
            assert s.recv(1) == b""  # closed by the handshake timeout
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            test_a_phone_registers_over_tls(node, certs)
            break
        except (AssertionError, OSError):
            # the node may not have counted the last closes yet
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_an_oversized_message_over_tls_gets_513_and_the_connection_closes(node, certs):
    """Hostile: TCP's size limit holds over TLS."""
    phone = TlsPhone(node, "user0", certs[0])
    try:
        try:
            phone.send(
                f"OPTIONS sip:example.test SIP/2.0\r\n{phone.via()}\r\n"
                f"From: <sip:user0@example.test>;tag=o\r\nTo: <sip:example.test>\r\n"
                f"Call-ID: big{phone.call_id}\r\nCSeq: 1 OPTIONS\r\n"
                f"Max-Forwards: 70\r\nContent-Length: 70000\r\n\r\n" + "x" * 70000
            )
        except OSError:
            pass  # the node answered and closed before the last bytes were written
        answer = phone.read()
        assert answer.startswith("SIP/2.0 513"), answer
        with pytest.raises(AssertionError, match="closed the connection"):
            phone.read()
    finally:
        phone.close()


@pytest.mark.parametrize(
    "lines, error",
    [
        ("tls_port = 5061\n", "sip.tls_cert must name a PEM file"),
        ('tls_port = PORT\ntls_cert = "CERT"\ntls_key = "KEY"\n', "other than sip.port"),
        (
            'tls_port = 5061\ntls_cert = "CERT"\ntls_key = "CERT"\n',
            "not a PEM certificate and its key",
        ),
        ('tls_port = 5061\ntls_cert = "CERT"\ntls_key = "KEY"\ntls_ca = "KEY"\n', "sip.tls_ca"),
    ],
)
def test_tls_settings_are_checked(tmp_path, certs, lines, error):
    node = NodeProcess(str(tmp_path))
    cert_copy = str(tmp_path / "c.pem")
    with open(certs[0]) as f, open(cert_copy, "w") as out:
        out.write(f.read())
    os.chmod(cert_copy, 0o600)
    lines = lines.replace("PORT", str(node.port)).replace("CERT", cert_copy)
    lines = lines.replace("KEY", certs[1])
    with open(node.config) as f:
        text = f.read()
    with open(node.config, "w") as f:
        f.write(text.replace("[sip]\n", "[sip]\n" + lines, 1))
    with pytest.raises(ConfigError, match=error):
        load_config(node.config)


def test_a_sips_contact_that_never_handshakes_fails_the_branch_in_bounded_time(node, certs):
    """Hostile: the far end takes the TCP connection and says nothing; the node gives
    up on the handshake after its connect timeout, the caller gets a 5xx, and another
    request is served meanwhile."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    caller = TlsPhone(node, "user2", certs[0])
    callee = TlsPhone(node, "user1", None)
    try:
        assert register_udp(node, callee, f"sips:user1@127.0.0.1:{port}").startswith("SIP/2.0 200")
        assert caller.register().startswith("SIP/2.0 200")
        ruri = "sips:user1@example.test"
        message = (
            f"MESSAGE {ruri} SIP/2.0\r\n{caller.via()}\r\n"
            f"From: <sips:user2@example.test>;tag=s1\r\nTo: <{ruri}>\r\n"
            f"Call-ID: s{caller.call_id}\r\nCSeq: CSEQ MESSAGE\r\nMax-Forwards: 70\r\n"
            f"AUTHContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        )
        caller.send(message.replace("CSEQ", "1").replace("AUTH", ""))
        challenge = caller.final()
        assert challenge.startswith("SIP/2.0 407"), challenge
        started = time.monotonic()
        caller.send(
            message.replace("CSEQ", "2").replace("AUTH", caller.auth(challenge, "MESSAGE", ruri))
        )
        listener.settimeout(5)
        silent, _ = listener.accept()
        other = TlsPhone(node, "user0", certs[0])
        assert other.register().startswith("SIP/2.0 200")  # served meanwhile
        other.close()
        answer = caller.final()
        assert answer.startswith("SIP/2.0 5"), answer
        assert time.monotonic() - started < 10
        silent.close()
    finally:
        caller.close()
        listener.close()
