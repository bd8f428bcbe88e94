"""Admission control (``sipcore.overload``) on a fake clock, and a node past its capacity.

The unit part feeds ``Admission.verdict`` requests with the delay each
waited. The node part floods a real node with new INVITEs from many
addresses, stops it for a second so that it finds far more waiting than
it can take, and checks that it sheds some with 503 and Retry-After while
a phone that registered before keeps registering and an emergency INVITE
from a new address is routed.
"""

import os
import signal
import socket
import threading
import time

from loadtest.harness import Cluster, NodeProcess, write_users_csv
from loadtest.sipclient import SipClient, SipClientError
from sipcore.message import parse_message
from sipcore.overload import (
    ABSORB,
    ADMIT,
    MAX_SHARE,
    SHED,
    Admission,
    OverloadSettings,
    quick_shed,
    shed_response,
)
from sipcore.via import stamp_via

SETTINGS = OverloadSettings(delay=0.1, interval=0.05, max_branches=1000)
RESPONSE = b"SIP/2.0 200 OK\r\n\r\n"


def request(method="INVITE", to="sip:bob@example.test", branch=None, to_tag="", extra=""):
    """A request's bytes (``to_tag``: inside a dialog)."""
    branch = branch or "z9hG4bK" + os.urandom(6).hex()
    tag = f";tag={to_tag}" if to_tag else ""
    return (
        f"{method} {to} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch={branch};rport\r\n"
        f"From: <sip:alice@example.test>;tag=f1\r\nTo: <{to}>{tag}\r\nCall-ID: c1\r\n"
        f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def overloaded(adm: Admission, now: float = 10.0) -> float:
    """Make ``adm`` see a standing queue until it sheds all it may (19 in 20 new requests)."""
    while adm.share < MAX_SHARE:
        adm.verdict(RESPONSE, "10.0.0.9", 0.5, now)
        now += SETTINGS.interval
    # Up to the one in twenty that gets through: the next ones are shed.
    assert ADMIT in [adm.verdict(request(), "10.0.0.9", 0.5, now - 0.01) for _ in range(20)]
    while adm.verdict(request(), "10.0.0.9", 0.5, now - 0.01) == SHED:
        pass
    return now


def test_a_burst_sheds_little_and_briefly():
    adm = Admission(SETTINGS)
    now = 1.0
    # A 300 ms pause: what waited meanwhile is read within the next interval.
    for i in range(100):
        adm.verdict(request(), "10.0.0.1", 0.3 - i * 0.003, now + i * 0.0005)
    shed = adm.stats["shed"]
    for k in range(1, 10):
        for i in range(50):
            adm.verdict(request(), "10.0.0.1", 0.002, now + k * 0.05 + i * 0.001)
    assert adm.share == 0.0
    assert adm.stats["shed"] - shed <= 10, adm.stats


def test_a_node_that_empties_its_socket_sheds_nothing_however_late_it_reads():
    """Late reads with the socket emptied in each interval: the node's process was not
    run (a busy machine), not behind its own work."""
    adm = Admission(SETTINGS)
    now = 1.0
    for _ in range(10):
        adm.verdict(request(), "10.0.0.1", 0.4, now)
        adm.drained()
        now += SETTINGS.interval
    assert adm.share == 0.0 and adm.stats["shed"] == 0


def test_the_share_shed_follows_the_standing_queue():
    adm = Admission(SETTINGS)
    now = 1.0
    for _ in range(4):
        adm.verdict(RESPONSE, "10.0.0.1", 0.2, now)
        now += SETTINGS.interval
    assert 0.4 <= adm.share <= 0.6, adm.share
    share = adm.share
    verdicts = [adm.verdict(request(), "10.0.0.1", 0.2, now - 0.01) for _ in range(1000)]
    assert abs(verdicts.count(SHED) - 1000 * share) <= 1
    # The queue drained: the share comes down as fast.
    for _ in range(4):
        adm.verdict(RESPONSE, "10.0.0.1", 0.0, now)
        now += SETTINGS.interval
    assert adm.share == 0.0
    assert adm.verdict(request(), "10.0.0.1", 0.0, now) == ADMIT


def test_a_standing_queue_sheds_new_work_only():
    adm = Admission(SETTINGS, emergency_numbers={"911"})
    now = overloaded(adm)
    for method in ("INVITE", "REGISTER", "OPTIONS", "MESSAGE", "SUBSCRIBE"):
        assert adm.verdict(request(method), "10.0.0.1", 0.5, now) == SHED, method
    assert adm.verdict(request("INVITE", to_tag="t9"), "10.0.0.1", 0.5, now) == ADMIT
    for method in ("ACK", "BYE", "CANCEL", "PRACK", "UPDATE", "INFO"):
        assert adm.verdict(request(method), "10.0.0.1", 0.5, now) == ADMIT, method
    assert adm.verdict(b"SIP/2.0 180 Ringing\r\n\r\n", "10.0.0.1", 0.5, now) == ADMIT
    for to in ("sip:911@example.test", "tel:911", "sip:911@far.test;user=phone"):
        assert adm.verdict(request(to=to), "10.0.0.1", 5.0, now) == ADMIT, to
    assert adm.verdict(request(to="sip:9110@example.test"), "10.0.0.1", 0.5, now) == SHED


def test_retransmissions_follow_the_first_verdict():
    adm = Admission(SETTINGS)
    taken = request(branch="z9hG4bKtaken")
    assert adm.verdict(taken, "10.0.0.1", 0.0, 1.0) == ADMIT
    now = overloaded(adm)
    # The transaction that holds it absorbs the retransmission.
    assert adm.verdict(taken, "10.0.0.1", 0.5, now) == ADMIT
    shed = request(branch="z9hG4bKshed")
    assert adm.verdict(shed, "10.0.0.1", 0.5, now) == SHED
    assert adm.verdict(shed, "10.0.0.1", 0.5, now + 0.5) == SHED
    # The ACK of the shed INVITE's 503 (same branch) has no transaction to go to.
    assert adm.verdict(request("ACK", branch="z9hG4bKshed"), "10.0.0.1", 0.0, now) == ABSORB
    assert adm.verdict(request("ACK", branch="z9hG4bKother"), "10.0.0.1", 0.0, now) == ADMIT
    # Both generations forgotten after twice the memory.
    later = now + 2 * SETTINGS.memory + 1
    overloaded(adm, later)
    assert adm.verdict(request("ACK", branch="z9hG4bKshed"), "10.0.0.1", 0.5, later) == ADMIT


def test_a_bare_magic_cookie_is_not_remembered_as_a_branch():
    adm = Admission(SETTINGS)
    assert adm.verdict(request(branch="z9hG4bK"), "10.0.0.1", 0.0, 1.0) == ADMIT
    now = overloaded(adm)
    # Another request with the same bare cookie is new work, not a retransmission.
    verdicts = [adm.verdict(request(branch="z9hG4bK"), "10.0.0.1", 0.5, now) for _ in range(20)]
    assert verdicts.count(SHED) >= 18
    assert adm.verdict(request("ACK", branch="z9hG4bK"), "10.0.0.1", 0.0, now) == ADMIT


def test_trusted_sources_have_their_share_and_their_calls_under_way_pass():
    adm = Admission(SETTINGS, trusted=lambda ip: ip == "10.0.0.7")
    now = 1.0
    for _ in range(4):
        adm.verdict(RESPONSE, "10.0.0.1", 0.2, now)
        now += SETTINGS.interval
    now -= 0.01
    assert adm.share >= 0.5 and adm.trusted_share == 0.0
    creds = 'Authorization: Digest username="alice"\r\n'
    proxy = 'Proxy-Authorization: Digest username="alice"\r\n'
    # Credentials from a stranger are unchecked words: shed as the rest.
    stranger = [
        adm.verdict(request("REGISTER", extra=creds), "10.0.0.1", 0.2, now) for _ in range(100)
    ]
    assert abs(stranger.count(SHED) - 100 * adm.share) <= 1
    assert all(adm.verdict(request("REGISTER"), "10.0.0.7", 0.2, now) == ADMIT for _ in range(100))
    assert adm.verdict(request(extra=proxy), "10.0.0.7", 0.35, now) == ADMIT
    assert adm.verdict(request("REGISTER", extra=creds), "10.0.0.7", 0.45, now) == SHED
    # Past twice the bound the trusted share grows too.
    now = overloaded(adm, now + 0.01)
    for _ in range(8):
        adm.verdict(RESPONSE, "10.0.0.1", 0.5, now)
        now += SETTINGS.interval
    assert adm.trusted_share == MAX_SHARE
    verdicts = [adm.verdict(request("REGISTER"), "10.0.0.7", 0.5, now - 0.01) for _ in range(100)]
    assert 94 <= verdicts.count(SHED) <= 96, "never all: a few always get through"


def test_by_default_trusted_work_is_shed_before_its_transactions_retransmit():
    """A proxied transaction waits in the queue twice (request, then the next hop's
    response) and must be answered within T1 (0.5 s): by default a standing queue of
    0.15 s makes the node shed a trusted caller's new work, and it still takes that
    caller's calls under way, whose credentials are shed only past 0.2 s."""
    adm = Admission(OverloadSettings(), trusted=lambda ip: True)
    now = 1.0
    for _ in range(10):
        adm.verdict(RESPONSE, "10.0.0.7", 0.15, now)
        now += adm.settings.interval
    assert adm.share == MAX_SHARE and adm.trusted_share > 0.5
    verdicts = [adm.verdict(request(), "10.0.0.7", 0.15, now) for _ in range(100)]
    assert verdicts.count(SHED) > 50
    # Its calls under way (credentials answering a challenge) still pass, up to 0.2 s.
    proxy = 'Proxy-Authorization: Digest username="alice"\r\n'
    assert adm.verdict(request(extra=proxy), "10.0.0.7", 0.15, now) == ADMIT
    assert adm.verdict(request(extra=proxy), "10.0.0.7", 0.25, now) == SHED


def test_branch_tables_are_bounded():
    adm = Admission(OverloadSettings(delay=0.1, interval=0.2, max_branches=50))
    for i in range(1000):
        adm.verdict(request(branch=f"z9hG4bK{i}"), "10.0.0.1", 0.0, 1.0)
    assert len(adm._admitted) + len(adm._admitted_old) <= 100


def test_the_503_says_when_to_come_back():
    resp = parse_message(shed_response(parse_message(request()), 7, "abc"))
    assert resp.status == 503
    assert resp.get("retry-after") == "7"
    assert resp.to.tag == "abc"
    assert resp.call_id == "c1"


SHAPES = [
    request(),
    request("REGISTER", extra='Authorization: Digest username="a", nonce="n"\r\n'),
    request().replace(b";rport", b""),
    request().replace(b"Via: ", b"v: ").replace(b"To: ", b"t: ").replace(b"Call-ID", b"i"),
    request()
    .replace(b"Via: SIP/2.0/UDP 10.0.0.1:5060;", b"Via: SIP/2.0/UDP 10.0.0.1;")
    .replace(b"From:", b"Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKx\r\nFrom:"),
    request().replace(b"\r\n\r\n", b"\r\n\r\nv=0\r\n").replace(b"Length: 0", b"Length: 5"),
]


def test_the_quick_503_is_the_general_paths_bytes():
    for data in SHAPES:
        for ip, port in (("10.0.0.1", 5060), ("198.51.100.4", 40000)):
            quick = quick_shed(data, ip, port, 7, "abc")
            assert quick is not None, data
            req = parse_message(data)
            req.validate()
            dest = stamp_via(req, "udp", ip, port)
            assert quick == (shed_response(req, 7, "abc"), dest[1:]), data


def test_the_quick_503_leaves_unusual_shapes_to_the_parser():
    folded = request().replace(b"From: <sip:alice", b"From:\r\n <sip:alice")
    two_in_one = request().replace(b";rport\r\n", b";rport, SIP/2.0/UDP 192.0.2.1\r\n")
    tagged = request(to_tag="t1")
    tcp = request().replace(b"/UDP", b"/TCP")
    for data in (folded, two_in_one, tagged, tcp, b"INVITE sip:x SIP/2.0\r\n"):
        assert quick_shed(data, "10.0.0.1", 5060, 7, "abc") is None, data


# -- a real node -----------------------------------------------------------------
FLOOD_SOURCES = 20
FLOOD_SECONDS = 16.0
FLOOD_RATE = 1000
"""New INVITEs per second the flood starts at (the node is also stopped for a second
meanwhile, SIGSTOP); while no 503 has come back the rate grows by half each second, up to
``FLOOD_MAX_RATE``: a node that keeps up with the flood (a fast, quiet machine) and
drains the stopped second's burst rightly sheds nothing, so the flood grows past its
capacity, whatever the machine's speed."""
FLOOD_MAX_RATE = 64_000


def flood(node, stop: threading.Event, replies: list, progress: dict) -> int:
    """New INVITEs without credentials from ``FLOOD_SOURCES`` addresses, each with its own
    branch, at a rate from ``FLOOD_RATE`` growing by half each second until a 503 comes back
    (``progress["rate"]``), until ``stop`` (bounded in count and time); the replies
    that come back are kept (first line and Retry-After), ``progress["sent"]`` counts."""
    socks = []
    for k in range(FLOOD_SOURCES):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((f"127.0.77.{k + 1}", 0))
        s.setblocking(False)
        socks.append(s)
    template = request(to="sip:user1@example.test", branch="z9hG4bKfl%d").replace(
        b"10.0.0.1:5060", b"127.0.77.1:%d" % socks[0].getsockname()[1]
    )
    sent, due, rate, shed = 0, 0.0, FLOOD_RATE, False
    start = last = raised = time.monotonic()
    try:
        while not stop.is_set() and (now := time.monotonic()) - start < FLOOD_SECONDS:
            if not shed and now - raised >= 1.0 and rate < FLOOD_MAX_RATE:
                rate, raised = min(FLOOD_MAX_RATE, rate * 3 // 2), now
            progress["rate"] = rate
            due += (now - last) * rate
            last = now
            while sent < due:
                try:
                    socks[sent % FLOOD_SOURCES].sendto(template % sent, (node.address, node.port))
                except OSError:
                    pass
                sent += 1
            progress["sent"] = sent
            for s in socks:
                while True:
                    try:
                        data = s.recv(65535)
                    except OSError:
                        break
                    progress["replies"] = progress.get("replies", 0) + 1
                    is_503 = data.startswith(b"SIP/2.0 503")
                    # Every 503 is kept (bounded), the rest only while the list is short.
                    if len(replies) < (100_000 if is_503 else 50_000):
                        head = data.split(b"\r\n\r\n")[0].split(b"\r\n")
                        retry = [h for h in head if h.lower().startswith(b"retry-after:")]
                        replies.append((head[0], retry))
                    shed = shed or is_503
            time.sleep(0.001)
    finally:
        for s in socks:
            s.close()
    return sent


def test_a_flooded_node_sheds_new_calls_and_keeps_serving(tmp_path):
    work = str(tmp_path)
    node = NodeProcess(work, limits="udp_rate = 0\noverload_retry_after = 3")
    rows = dict(write_users_csv(os.path.join(work, "users.csv"), 5))
    write_users_csv(os.path.join(work, "numbers.csv"), 1, "91", 1)
    for name in ("users.csv", "numbers.csv"):
        assert node.run_cli("user", "import", os.path.join(work, name)).returncode == 0
    node.start()
    clients = []
    stop = threading.Event()
    try:

        def client(user, password, address="127.0.0.1") -> SipClient:
            c = SipClient(
                (node.address, node.port),
                user,
                password,
                node.domain,
                local_ip=address,
                t1=0.25,
                timeout=8.0,
            )
            clients.append(c)
            return c

        sos = client("911", "pw1")
        assert sos.register().status == 200
        phone = client("user2", rows["user2"])
        assert phone.register().status == 200
        assert client("user1", rows["user1"]).register().status == 200
        replies: list = []
        progress = {"sent": 0}
        flooder = threading.Thread(target=flood, args=(node, stop, replies, progress))
        flooder.start()
        try:
            # A second of the flood waits in the stopped node's socket.
            node.signal(signal.SIGSTOP)
            try:
                deadline = time.monotonic() + 5
                while progress["sent"] < FLOOD_RATE and time.monotonic() < deadline:
                    time.sleep(0.01)
            finally:
                node.signal(signal.SIGCONT)
            deadline = time.monotonic() + 10
            while (
                not any(r[0].startswith(b"SIP/2.0 503") for r in replies[:])
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            shed = [r for r in replies[:] if r[0].startswith(b"SIP/2.0 503")]
            assert shed, (
                f"no 503 in {progress.get('replies')} replies to a flood of "
                f"{progress['sent']} INVITEs (last {progress.get('rate')}/s)"
            )
            # The phone that registered before registers again during the flood, twice.
            registered = sum(registers(phone, 6.0) for _ in range(2))
            # An emergency call from an address the node never saw is routed to 911.
            invite = request(to="sip:911@example.test").replace(
                b"10.0.0.1:5060", b"127.0.78.1:5062"
            )
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.78.1", 5062))
                first = first_response(s, invite, (node.address, node.port), time.monotonic() + 8)
                routed = sos_invite(sos, time.monotonic() + 5)
        finally:
            stop.set()
            flooder.join(timeout=20)
        assert routed, "the emergency INVITE did not reach the 911 phone"
        assert first and not first.startswith(b"SIP/2.0 503"), first
        assert registered == 2, (registered, progress)
        assert all(r[1] and 3 <= int(r[1][0].split(b":")[1]) <= 6 for r in shed), shed[:3]
    finally:
        stop.set()
        for c in clients:
            c.close()
        node.stop()


def registers(phone: SipClient, within: float) -> bool:
    """Whether ``phone`` registers (REGISTER, 401, REGISTER with credentials, 200)
    within ``within`` seconds, trying again after a 503 as a phone does (sooner than
    its Retry-After: the test is bounded)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if phone.register().status == 200:
                return True
        except SipClientError:
            pass
        time.sleep(0.2)
    return False


def first_response(
    sock: socket.socket, invite: bytes, to: tuple[str, int], deadline: float
) -> bytes:
    """Send ``invite`` from ``sock`` as a phone does over UDP, retransmitted at T1 = 0.5 s
    doubling (RFC 3261 Timer A: the flood can fill the node's socket buffer, which drops
    datagrams before any code of the node sees them), until a response comes back or
    ``deadline``; its first line (empty: none)."""
    wait = 0.5
    while (left := deadline - time.monotonic()) > 0:
        sock.sendto(invite, to)
        sock.settimeout(min(wait, left))
        try:
            return sock.recv(65535).split(b"\r\n")[0]
        except TimeoutError:
            wait *= 2
    return b""


def sos_invite(sos: SipClient, deadline: float) -> bool:
    """Whether an INVITE reaches the 911 phone's socket before ``deadline``."""
    while (left := deadline - time.monotonic()) > 0:
        sos.sock.settimeout(left)
        try:
            data = sos.sock.recv(65535)
        except TimeoutError:
            return False
        if data.startswith(b"INVITE "):
            return True
    return False


def test_the_status_answer_counts_what_was_shed_by_method(tmp_path):
    """A backlog of new OPTIONS left in a stopped node's socket is shed; the node's
    ``status`` answer says how many, by method, and the metrics text carries them."""
    cluster = Cluster(
        str(tmp_path),
        n=1,
        settings={"heartbeat": 0.2, "alone_wait": 0.5},
        limits="udp_rate = 0\noverload_delay = 0.01\noverload_retry_after = 3",
    )
    cluster.start()
    node = cluster.nodes[0]
    try:
        before = cluster.control(node, "status")
        assert before["overload"]["shed"] == 0 and before["overload"]["shed_by_method"] == {}
        assert before["refused"]["tcp_framing"] == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.0)
            shed = 0
            # New OPTIONS as fast as this process writes them, until the node sheds
            # (or 10 s): far more than a node reads, whatever the machine.
            deadline = time.monotonic() + 10
            while shed < 20 and time.monotonic() < deadline:
                for _ in range(50):
                    s.sendto(request("OPTIONS"), (node.address, node.port))
                try:
                    while True:
                        shed += s.recv(65535).startswith(b"SIP/2.0 503")
                except (BlockingIOError, InterruptedError):
                    pass
        status = cluster.control(node, "status")["overload"]
        assert status["shed_by_method"].get("OPTIONS", 0) >= max(shed, 1), (shed, status)
        assert set(status["shed_by_method"]) == {"OPTIONS"}
        assert status["shed"] == sum(status["shed_by_method"].values())
        from web.metrics import HELP, _counters

        samples: dict = {name: [] for name in HELP}
        _counters(samples, "node1", cluster.control(node, "status"))
        assert any('method="OPTIONS"' in line for line in samples["tandem_node_shed_total"])
    finally:
        cluster.stop()
