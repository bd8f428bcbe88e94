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

    def __init__(self, user: str, password: str):
        self.user, self.password = user, password
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(3.0)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.call_id = os.urandom(6).hex()
        self.cseq = 0

    def register(self, node, auth: str = "") -> bytes:
        self.cseq += 1
        return (f"REGISTER sip:example.test SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
                f"From: <sip:{self.user}@example.test>;tag=t{self.cseq}\r\n"
                f"To: <sip:{self.user}@example.test>\r\nCall-ID: {self.call_id}\r\n"
                f"CSeq: {self.cseq} REGISTER\r\n"
                f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>\r\n"
                f"{auth}Max-Forwards: 70\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n").encode()

    def send(self, node, data: bytes) -> str:
        self.sock.sendto(data, (node.address, node.port))
        return self.sock.recv(65535).decode()

    def authorization(self, answer: str, password: str | None = None, nc: int = 1) -> str:
        nonce = answer.split('nonce="', 1)[1].split('"', 1)[0]
        creds = Credentials(self.user, "example.test", nonce, "sip:example.test", "", "MD5",
                            "auth", f"{nc:08x}", "c0ffee")
        resp = expected_response(creds, "REGISTER",
                                 ha1(self.user, "example.test", password or self.password))
        return (f'Authorization: Digest username="{self.user}",realm="example.test",'
                f'nonce="{nonce}",uri="sip:example.test",response="{resp}",algorithm=MD5,'
                f'cnonce="c0ffee",qop=auth,nc={nc:08x}\r\n')

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
    out = node.run_cli("user", "import", users_csv(str(tmp_path / "u.csv"),
                                                    [("alice", PASSWORD), ("bob", "pw-bob")]))
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
    out = subprocess.run([svcrack_path(), "-u", "alice", "-d", str(tmp_path / "dict.txt"),
                          "--maximumtime=3", f"udp://{lone_node.address}:{lone_node.port}"],
                         capture_output=True, text=True, timeout=120)
    assert PASSWORD not in out.stdout + out.stderr, out.stdout + out.stderr
    with open(lone_node.log_path) as f:
        assert "banned source 127.0.0.1" in f.read()
    # Even the right password from the banned source is refused, unchecked.
    phone = Phone("alice", PASSWORD)
    answer = phone.send(lone_node, phone.register(lone_node))
    answer = phone.send(lone_node, phone.register(lone_node, phone.authorization(answer)))
    assert answer.startswith("SIP/2.0 403"), answer


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
    c = Cluster(str(tmp_path), n=2, settings={"heartbeat": 0.2},
                auth="max_failures = 5\nban_time = 600")
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
        assert guesser.send(one, guesser.register(one, guesser.authorization(challenge))) \
            .startswith("SIP/2.0 401")
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
