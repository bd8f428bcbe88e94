"""A node with its challenge front (``sip.challenge_front``): real processes on loopback."""

import os
import signal
import time

import pytest

from actors.bus import generate_keypair
from actors.config import NodeConfig, Peer
from actors.front import ChallengeFront
from actors.transport import unwrap, wrap
from loadtest.harness import NodeProcess, free_port, options_ping, write_users_csv
from tests.test_digest import answer
from tests.test_node import register, request, sip_exchange
from tests.test_proxy import call, phone

USERS = 1000


def front_pid(node) -> int | None:
    """The pid of the node's challenge front, if it runs."""
    pid = node.proc.pid
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(c) for c in f.read().split()]
    except OSError:
        return None
    return kids[0] if kids else None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(check, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


@pytest.fixture
def node(tmp_path):
    n = NodeProcess(str(tmp_path), front=True)
    n.rows = write_users_csv(os.path.join(n.dir, "users.csv"), USERS)
    out = n.run_cli("user", "import", os.path.join(n.dir, "users.csv"))
    assert out.returncode == 0, out.stderr
    n.work = n.dir
    n.start()
    assert wait_until(lambda: front_pid(n) is not None, 10), n.log_tail()
    yield n
    if n.proc.poll() is None:
        n.signal(signal.SIGCONT)
    n.stop()


def challenged_by_front(node, timeout: float = 5.0) -> bool:
    """Whether a REGISTER without credentials gets its 401 while the node
    itself is stopped, i.e. from the front alone."""

    def attempt():
        node.signal(signal.SIGSTOP)
        try:
            answer = sip_exchange(node, request("REGISTER"), timeout=0.5)
        finally:
            node.signal(signal.SIGCONT)
        return answer is not None and answer.startswith("SIP/2.0 401")

    return wait_until(attempt, timeout, step=0.2)


def test_frame_round_trip_and_partial_frames():
    buf = bytearray(wrap("127.0.0.1", 5060, b"REGISTER a") + wrap("::1", 1, b"x\ny"))
    tail = wrap("10.0.0.1", 7, b"later")
    buf += tail[:5]
    assert unwrap(buf) == [("127.0.0.1", 5060, b"REGISTER a"), ("::1", 1, b"x\ny")]
    assert bytes(buf) == tail[:5]
    buf += tail[5:]
    assert unwrap(buf) == [("10.0.0.1", 7, b"later")] and not buf
    with pytest.raises(ValueError):
        unwrap(bytearray(b"\x00\x00\x00\x03abc"))
    with pytest.raises(ValueError):
        unwrap(bytearray(b"\xff\xff\xff\xff"))


def test_registrations_with_the_front(node):
    res = register(node, node.rows, rate=500)
    assert (res.successful, res.failed, res.retransmissions) == (USERS, 0, 0), res.stderr
    assert challenged_by_front(node), "the front answers challenges itself"
    bad = sip_exchange(node, request("REGISTER", drop=("From",)))
    assert bad is not None and bad.startswith("SIP/2.0 400") and "From" in bad.split("\r\n")[0], (
        "what the front cannot answer reaches the node"
    )
    assert node.stop() == 0
    with open(node.log_path) as f:
        log = f.read()
    stopped = [line for line in log.splitlines() if "challenge front stopped" in line]
    assert stopped and "'challenged': 0," not in stopped[0], log[-2000:]


def test_the_kernel_hands_credentials_to_the_node_itself(node):
    """With the front stopped, the node still answers an authenticated
    REGISTER and an OPTIONS: the kernel gives it those directly, while a
    REGISTER without credentials waits for the front."""
    challenge = sip_exchange(node, request("REGISTER"))
    assert challenge is not None and challenge.startswith("SIP/2.0 401"), challenge
    www = next(
        line.split(":", 1)[1].strip()
        for line in challenge.split("\r\n")
        if line.startswith("WWW-Authenticate:") and "algorithm=MD5" in line
    )
    user, password = node.rows[0]
    creds = answer(www, user, password, uri="sip:example.test")
    pid = front_pid(node)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert sip_exchange(node, request("OPTIONS")).startswith("SIP/2.0 200")
        ok = sip_exchange(
            node,
            request(
                "REGISTER",
                extra=(f"\r\nContact: <sip:{user}@127.0.0.1:5999>\r\nAuthorization: {creds}"),
            ),
        )
        assert ok is not None and ok.startswith("SIP/2.0 200"), ok
        assert "<sip:user0@127.0.0.1:5999>;expires=" in ok
        assert sip_exchange(node, request("REGISTER"), timeout=0.5) is None
    finally:
        os.kill(pid, signal.SIGCONT)


def test_the_node_takes_the_port_when_the_front_dies(node):
    pid = front_pid(node)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid), 5)
    res = register(node, node.rows[:300], rate=300)
    assert (res.successful, res.failed) == (300, 0), res.stderr
    assert options_ping(node.address, node.port, 1.0)
    assert wait_until(lambda: "challenge front exited" in node.log_tail(2000), 5)


def test_the_front_exits_with_the_node(node):
    pid = front_pid(node)
    node.kill()
    assert wait_until(lambda: not alive(pid), 5), "an orphaned front must not hold the port"


def test_calls_through_a_node_with_the_front(node):
    """Requests to and responses from phones all reach the node's proxy through the front."""
    uas = phone(node, "user0", "uas_answer.xml")
    try:
        res = call(node, "user0", calls=200, rate=100)
    finally:
        stats = uas.stop()
    assert (res.successful, res.failed) == (200, 0), res.stderr
    assert stats["SuccessfulCall(C)"] == "200"


def test_a_syncing_node_answers_503_through_the_front(tmp_path):
    """Until the node is synced the front answers nothing: the node's 503 gets through."""
    from actors.keys import Member, cluster_toml, generate_keypair

    me, ghost = (
        Member(name, *[f"tcp://127.0.0.1:{free_port()}" for _ in range(3)], *generate_keypair())
        for name in ("node1", "node2")
    )
    # node2 never starts: node1 syncs "alone" only after alone_wait.
    n = NodeProcess(
        str(tmp_path),
        front=True,
        extra=cluster_toml(me, [me, ghost], alone_wait=4.0, heartbeat=0.2),
    )
    n.front = False  # start() must not wait for the front: it cannot answer yet
    n.start()
    try:
        assert wait_until(lambda: front_pid(n) is not None, 10), n.log_tail()
        answer = sip_exchange(n, request("REGISTER"))
        assert answer is not None and answer.startswith("SIP/2.0 503"), answer
        assert "Retry-After" in answer
        assert wait_until(lambda: "answering challenges" in n.log_tail(50), 15), n.log_tail()
        answer = sip_exchange(n, request("REGISTER"))
        assert answer is not None and answer.startswith("SIP/2.0 401"), answer
    finally:
        n.stop()


def test_the_front_answers_from_no_peer_list_so_pushed_peers_need_not_reach_it():
    """The front knows the peers of its configuration file only (it starts with the
    node, and the master's pushes reach the node), and that is right because it never
    answers from them: it only challenges, and the Contacts (checked against every
    node's address, which the node follows from the pushes: ``actors.membership``) are
    the node's to refuse, after the credentials, as the node itself does. So a
    REGISTER without credentials whose Contact names a node the file lists (since
    removed, its address perhaps a phone's now) or one added since gets the 401."""
    peer = Peer(
        "node2",
        "tcp://192.0.2.2:7001",
        "tcp://192.0.2.2:7002",
        generate_keypair()[0],
        "192.0.2.2:5060",
    )
    cfg = NodeConfig(
        id="node1", domain="example.test", address="127.0.0.1", port=5060, peers=[peer]
    )
    front = ChallengeFront(cfg, b"s" * 32, os.getpid())
    front.synced_until = float("inf")
    sent = []
    for host in ("192.0.2.2", "192.0.2.3"):
        data = request("REGISTER", extra=f"\r\nContact: <sip:user0@{host}:5060>")
        front.handle(
            data.replace("PORT", "5070").encode(),
            "127.0.0.1",
            5070,
            lambda out, dest: sent.append((out.split(b"\r\n")[0], dest)),
        )
    assert sent == [(b"SIP/2.0 401 Unauthorized", ("127.0.0.1", 5070))] * 2, sent
    assert front.pending == [] and front.stats["challenged"] == 2
