"""Hostile tests of authentication against real node processes: guessing, replay, bans."""

import os
import socket
import subprocess
import sys
import time

import pytest

from loadtest.harness import Cluster, NodeProcess
from sipcore.digest import Credentials, expected_response, ha1

PASSWORD = "Secret-Pw-49"


def svcrack_path() -> str:
    return os.path.join(os.path.dirname(sys.executable), "sipvicious_svcrack")


class Phone:
    """A UDP phone registering one user, by hand, so answers can be captured and replayed."""

    def __init__(self, user: str, password: str, address: str = "127.0.0.1"):
        self.user, self.password = user, password
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(3.0)
        self.sock.bind((address, 0))
        self.port = self.sock.getsockname()[1]
        self.call_id = os.urandom(6).hex()
        self.cseq = 0

    def register(self, node, auth: str = "") -> bytes:
        self.cseq += 1
        return (
            f"REGISTER sip:example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.sock.getsockname()[0]}:{self.port};branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
            f"From: <sip:{self.user}@example.test>;tag=t{self.cseq}\r\n"
            f"To: <sip:{self.user}@example.test>\r\nCall-ID: {self.call_id}\r\n"
            f"CSeq: {self.cseq} REGISTER\r\n"
            f"Contact: <sip:{self.user}@{self.sock.getsockname()[0]}:{self.port}>\r\n"
            f"{auth}Max-Forwards: 70\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    def send(self, node, data: bytes) -> str:
        self.sock.sendto(data, (node.address, node.port))
        return self.sock.recv(65535).decode()

    def authorization(self, answer: str, password: str | None = None, nc: int = 1) -> str:
        nonce = answer.split('nonce="', 1)[1].split('"', 1)[0]
        creds = Credentials(
            self.user,
            "example.test",
            nonce,
            "sip:example.test",
            "",
            "MD5",
            "auth",
            f"{nc:08x}",
            "c0ffee",
        )
        resp = expected_response(
            creds, "REGISTER", ha1(self.user, "example.test", password or self.password)
        )
        return (
            f'Authorization: Digest username="{self.user}",realm="example.test",'
            f'nonce="{nonce}",uri="sip:example.test",response="{resp}",algorithm=MD5,'
            f'cnonce="c0ffee",qop=auth,nc={nc:08x}\r\n'
        )

    def login(self, node) -> tuple[str, str]:
        """Register on ``node`` as a phone does (following stale=true once);
        returns (the final answer, the Authorization it sent)."""
        answer = self.send(node, self.register(node))
        for _ in range(2):
            assert answer.startswith("SIP/2.0 401"), answer
            auth = self.authorization(answer)
            answer = self.send(node, self.register(node, auth))
            if not answer.startswith("SIP/2.0 401"):
                return answer, auth
            assert "stale=true" in answer, answer
        raise AssertionError(answer)


def users_csv(path: str, rows) -> str:
    with open(path, "w") as f:
        f.write("username,password\n" + "".join(f"{u},{p}\n" for u, p in rows))
    return path


@pytest.fixture
def lone_node(tmp_path):
    node = NodeProcess(str(tmp_path), auth="max_failures = 10\nban_time = 600")
    out = node.run_cli(
        "user",
        "import",
        users_csv(str(tmp_path / "u.csv"), [("alice", PASSWORD), ("bob", "pw-bob")]),
    )
    assert out.returncode == 0, out.stderr
    node.start()
    yield node
    node.stop()


def test_svcrack_does_not_find_the_password_at_its_50th_word(lone_node, tmp_path):
    """svcrack with the password as its 50th word: the wrong answers ban the
    source at the 10th, and the right password then gets 403, unchecked."""
    words = [f"guess{i:03d}" for i in range(120)]
    words[49] = PASSWORD
    (tmp_path / "dict.txt").write_text("\n".join(words) + "\n")
    out = subprocess.run(
        [
            svcrack_path(),
            "-u",
            "alice",
            "-d",
            str(tmp_path / "dict.txt"),
            "--maximumtime=3",
            f"udp://{lone_node.address}:{lone_node.port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert PASSWORD not in out.stdout + out.stderr, out.stdout + out.stderr
    with open(lone_node.log_path) as f:
        assert "banned source 127.0.0.1" in f.read()
    # Even the right password from the banned source is refused, unchecked.
    phone = Phone("alice", PASSWORD)
    answer = phone.send(lone_node, phone.register(lone_node))
    answer = phone.send(lone_node, phone.register(lone_node, phone.authorization(answer)))
    assert answer.startswith("SIP/2.0 403"), answer


@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "OPTIONS"])
def test_svwar_finds_no_user(lone_node, tmp_path, method):
    """svwar with a dictionary holding the node's users (alice registered, bob not)
    among names that are no user: every name gets the answer a made-up user gets, so
    it finds nothing."""
    phone = Phone("alice", PASSWORD)
    answer, _ = phone.login(lone_node)
    assert answer.startswith("SIP/2.0 200"), answer
    words = ["alice", "bob", "carol", "dave", "admin", "100", "1000", "2001", "operator"]
    (tmp_path / "users.txt").write_text("\n".join(words) + "\n")
    out = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "sipvicious_svwar"),
            "-d",
            str(tmp_path / "users.txt"),
            "-m",
            method,
            "--domain",
            "example.test",
            "--maximumtime=10",
            # Without it svwar stops at once, seeing a made-up user challenged: an
            # attacker forces the scan.
            "--force",
            f"udp://{lone_node.address}:{lone_node.port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = out.stdout + out.stderr
    assert "found nothing" in said, said
    assert "Extension" not in said and "alice" not in out.stdout, said


def test_guesses_on_one_nonce_never_confirm_the_password(lone_node):
    """One nonce, one guess: after a wrong answer even the right one fails."""
    phone = Phone("bob", "pw-bob")
    challenge = phone.send(lone_node, phone.register(lone_node))
    wrong = phone.send(lone_node, phone.register(lone_node, phone.authorization(challenge, "x")))
    assert wrong.startswith("SIP/2.0 401") and "stale" not in wrong
    right = phone.send(lone_node, phone.register(lone_node, phone.authorization(challenge, nc=2)))
    assert right.startswith("SIP/2.0 401"), right


def test_replayed_register_refused_after_a_restart(lone_node):
    phone = Phone("bob", "pw-bob")
    answer, captured = phone.login(lone_node)
    assert answer.startswith("SIP/2.0 200"), answer
    lone_node.stop()
    lone_node.start()
    attacker = Phone("bob", "unknown")
    replay = attacker.send(lone_node, attacker.register(lone_node, captured))
    assert replay.startswith("SIP/2.0 401") and "stale=true" in replay, replay


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(
        str(tmp_path), n=2, settings={"heartbeat": 0.2}, auth="max_failures = 5\nban_time = 600"
    )
    c.provision(users_csv(str(tmp_path / "u.csv"), [("alice", PASSWORD), ("bob", "pw-bob")]))
    c.start()
    assert c.wait_synced(20.0)
    yield c
    c.stop()


def test_replay_on_the_other_node_refused_and_a_moving_phone_registers(cluster):
    """A captured Authorization from node 1 gets 401 stale=true on node 2; an
    honest phone moving to node 2 registers with one more round trip."""
    one, two = cluster.nodes
    phone = Phone("bob", "pw-bob")
    answer, captured = phone.login(one)
    assert answer.startswith("SIP/2.0 200"), answer
    attacker = Phone("bob", "unknown")
    replay = attacker.send(two, attacker.register(two, captured))
    assert replay.startswith("SIP/2.0 401") and "stale=true" in replay, replay
    # The phone fails over with its cached credentials (nc=2 on node 1's nonce).
    cached = phone.authorization(captured.replace("Authorization: ", "WWW-Authenticate: "), nc=2)
    answer = phone.send(two, phone.register(two, cached))
    assert answer.startswith("SIP/2.0 401") and "stale=true" in answer, answer
    answer = phone.send(two, phone.register(two, phone.authorization(answer)))
    assert answer.startswith("SIP/2.0 200"), answer


def test_a_ban_made_on_one_node_holds_on_the_other_and_lifts_everywhere(cluster):
    one, two = cluster.nodes
    guesser = Phone("alice", "nope")
    for _ in range(5):
        challenge = guesser.send(one, guesser.register(one))
        assert guesser.send(
            one, guesser.register(one, guesser.authorization(challenge))
        ).startswith("SIP/2.0 401")
    deadline = time.monotonic() + 5.0
    while not cluster.control(two, "bans") and time.monotonic() < deadline:
        time.sleep(0.05)
    bans = cluster.control(two, "bans")
    assert [(b["kind"], b["key"], b["origin"]) for b in bans] == [("source", "127.0.0.1", "node1")]
    honest = Phone("alice", PASSWORD)
    challenge = honest.send(two, honest.register(two))
    answer = honest.send(two, honest.register(two, honest.authorization(challenge)))
    assert answer.startswith("SIP/2.0 403"), answer
    assert cluster.control(two, "unban", kind="source", key="127.0.0.1") is True
    deadline = time.monotonic() + 5.0
    while cluster.control(one, "bans") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster.control(one, "bans") == []
    answer, _ = honest.login(one)
    assert answer.startswith("SIP/2.0 200"), answer


# -- flooding and exhaustion ---------------------------------------------------

LIMITS = (
    "udp_rate = 50\nudp_burst = 100\ntcp_max_connections = 200\ntcp_max_per_source = 20\n"
    "tcp_idle_timeout = 1.0\ntcp_header_timeout = 1.0\nmax_message_size = 4000\n"
    "log_rate = 5"
)


@pytest.fixture
def limited_node(tmp_path):
    node = NodeProcess(str(tmp_path), limits=LIMITS)
    out = node.run_cli("user", "import", users_csv(str(tmp_path / "u.csv"), [("bob", "pw-bob")]))
    assert out.returncode == 0, out.stderr
    node.start()
    yield node
    node.stop()


def options(port: int) -> bytes:
    return (
        f"OPTIONS sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
        f"From: <sip:x@example.test>;tag=1\r\nTo: <sip:example.test>\r\n"
        f"Call-ID: {os.urandom(6).hex()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_udp_flood_is_limited_per_source_and_others_still_register(limited_node):
    """5,000 garbage datagrams from one source: a bounded part reaches the
    parser and the log, and a phone on another address registers meanwhile."""
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.3", 0))
    flooder = flood.getsockname()[1]
    with open(limited_node.log_path) as f:
        f.seek(0, 2)
        log_start = f.tell()
    for i in range(5000):
        flood.sendto(
            b"GARBAGE %d\r\n\r\n" % i if i % 2 else options(flooder),
            (limited_node.address, limited_node.port),
        )
    phone = Phone("bob", "pw-bob")
    answer, _ = phone.login(limited_node)
    assert answer.startswith("SIP/2.0 200"), answer
    flood.settimeout(0.5)
    answered = 0
    try:
        while answered < 5000:
            flood.recv(65535)
            answered += 1
    except TimeoutError:
        pass
    flood.close()
    assert 0 < answered <= 200, answered
    with open(limited_node.log_path) as f:
        f.seek(log_start)
        logged = f.read()
    assert logged.count("\n") < 60, logged[-2000:]


def tcp_connect(node) -> socket.socket:
    s = socket.create_connection((node.address, node.port), timeout=3.0)
    return s


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_tcp_connections_capped_per_source_idle_and_slow_ones_closed(limited_node):
    held = [tcp_connect(limited_node) for _ in range(20)]
    extra = tcp_connect(limited_node)
    assert closed_within(extra, 2.0), "the 21st connection of a source is closed at once"
    # Slow header: a message started and never finished is cut after tcp_header_timeout.
    held[0].sendall(b"OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1")
    started = time.monotonic()
    assert closed_within(held[0], 3.0)
    assert time.monotonic() - started < 2.5
    # Idle connections go after tcp_idle_timeout; then the source may connect again.
    assert all(closed_within(s, 3.0) for s in held[1:])
    again = tcp_connect(limited_node)
    again.sendall(options(again.getsockname()[1]).replace(b"UDP", b"TCP"))
    again.settimeout(3.0)
    assert again.recv(65535).startswith(b"SIP/2.0 200")
    for s in (*held, extra, again):
        s.close()


def test_oversized_tcp_message_gets_513_and_the_connection_closes(limited_node):
    s = tcp_connect(limited_node)
    body = b"x" * 10_000
    s.sendall(
        options(s.getsockname()[1])
        .replace(b"UDP", b"TCP")
        .replace(b"Content-Length: 0", b"Content-Length: %d" % len(body))
        + body
    )
    s.settimeout(3.0)
    assert s.recv(65535).startswith(b"SIP/2.0 513")
    assert closed_within(s, 3.0)
    s.close()


@pytest.mark.parametrize(
    "length",
    [
        b"Content-Length: 1x",
        b"Content-Length: 0\r\nl: 5",
        b"Content-Length: -3",
        b"Content-Length: 99999999999999",
    ],
)
def test_a_tcp_framing_error_gets_400_and_the_connection_closes(limited_node, length):
    s = tcp_connect(limited_node)
    request = options(s.getsockname()[1]).replace(b"UDP", b"TCP")
    s.sendall(request.replace(b"Content-Length: 0", length))
    s.settimeout(3.0)
    answer = s.recv(65535)
    assert answer.startswith(b"SIP/2.0 400 "), answer
    call_id = next(line for line in request.split(b"\r\n") if line.startswith(b"Call-ID"))
    assert call_id in answer
    assert closed_within(s, 3.0)
    s.close()


def test_a_tcp_framing_error_without_a_readable_request_closes_silently(limited_node):
    s = tcp_connect(limited_node)
    s.sendall(b"GARBAGE\r\nContent-Length: x\r\n\r\n")
    s.settimeout(3.0)
    assert s.recv(65535) == b"", "nothing a response could be matched to"
    s.close()


@pytest.mark.parametrize("host", ["example.test", "EXAMPLE.test"])
def test_usual_and_general_register_paths_apply_the_same_rules(lone_node, host):
    """The usual REGISTER (read from its text) and one the general parser
    reads (an upper-case Request-URI host) get the same answers: 400 for a
    digest uri naming another resource, 401 then 403 once the source is banned."""
    phone = Phone("bob", "pw-bob", address="127.0.0.5" if host.islower() else "127.0.0.6")

    def send(auth=""):
        data = phone.register(lone_node, auth).replace(
            b"REGISTER sip:example.test", f"REGISTER sip:{host}".encode()
        )
        return phone.send(lone_node, data)

    challenge = send()
    assert challenge.startswith("SIP/2.0 401"), challenge
    wrong_uri = phone.authorization(challenge).replace(
        'uri="sip:example.test"', 'uri="sip:bob@example.test"'
    )
    answer = send(wrong_uri)
    assert answer.startswith("SIP/2.0 400") and "uri does not match" in answer, answer
    for _ in range(10):
        answer = send(phone.authorization(send(), "guess"))
        assert answer.startswith("SIP/2.0 401"), answer
    answer = send(phone.authorization(send()))
    assert answer.startswith("SIP/2.0 403"), answer


def test_banned_source_gets_silence_with_ban_response_drop(tmp_path):
    node = NodeProcess(str(tmp_path), auth='max_failures = 2\nban_response = "drop"')
    out = node.run_cli("user", "import", users_csv(str(tmp_path / "u.csv"), [("bob", "pw-bob")]))
    assert out.returncode == 0, out.stderr
    node.start()
    try:
        phone = Phone("bob", "pw-bob")
        for _ in range(2):
            challenge = phone.send(node, phone.register(node))
            assert phone.send(
                node, phone.register(node, phone.authorization(challenge, "x"))
            ).startswith("SIP/2.0 401")
        challenge = phone.send(node, phone.register(node))
        assert challenge.startswith("SIP/2.0 401"), "a REGISTER without credentials is challenged"
        phone.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            phone.send(node, phone.register(node, phone.authorization(challenge)))
        # The ban is of the address: a phone on another one registers.
        other = Phone("bob", "pw-bob", address="127.0.0.7")
        answer, _ = other.login(node)
        assert answer.startswith("SIP/2.0 200"), answer
    finally:
        node.stop()


def test_idle_tcp_connections_filling_the_cap_leave_real_clients_served(tmp_path):
    """Idle connections from two addresses fill the total cap; a real client
    still connects (the idlest connection makes room) and is answered."""
    node = NodeProcess(str(tmp_path), limits="tcp_max_connections = 30\ntcp_max_per_source = 20")
    node.start()
    held = []
    try:
        for address, count in (("127.0.0.8", 20), ("127.0.0.9", 10)):
            for _ in range(count):
                held.append(
                    socket.create_connection(
                        (node.address, node.port), timeout=3.0, source_address=(address, 0)
                    )
                )
        # An answer on the last one shows the node has accepted them all (in order).
        last = held[-1]
        last.sendall(options(last.getsockname()[1]).replace(b"UDP", b"TCP"))
        assert last.recv(65535).startswith(b"SIP/2.0 200")
        for attempt in range(3):
            client = socket.create_connection(
                (node.address, node.port), timeout=3.0, source_address=("127.0.0.11", 0)
            )
            client.sendall(options(client.getsockname()[1]).replace(b"UDP", b"TCP"))
            client.settimeout(3.0)
            assert client.recv(65535).startswith(b"SIP/2.0 200"), attempt
            client.close()
        assert sum(closed_within(s, 0.05) for s in held) >= 1
    finally:
        for s in held:
            s.close()
        node.stop()
