"""One real node process on loopback, driven by SIPp, sipsak and raw sockets."""

import os
import signal
import socket
import sqlite3
import subprocess
import time

import pytest

from loadtest.bench_register import write_register_inf
from loadtest.harness import NodeProcess, free_port, options_ping, run_sipp, write_users_csv
from loadtest.report import format_rows, percentile, sipp_row
from sipcore.digest import Credentials, expected_response, ha1

USERS = 2000


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("node"))
    n = NodeProcess(work, extra="[registrar]\nmin_expires = 60\n")
    rows = write_users_csv(os.path.join(work, "users.csv"), USERS)
    out = n.run_cli("user", "import", os.path.join(work, "users.csv"))
    assert out.returncode == 0, out.stderr
    n.rows = rows
    n.work = work
    n.start()
    yield n
    n.stop()


def live_bindings(node) -> dict:
    """Live bindings per AOR, read from the node's SQLite file."""
    path = node.database.removeprefix("sqlite:///")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT aor, contact FROM bindings WHERE deleted = 0 AND expires_at > ?", (time.time(),)
        ).fetchall()
    finally:
        con.close()
    out: dict = {}
    for aor, contact in rows:
        out.setdefault(aor, []).append(contact)
    return out


def register(
    node, rows, expires=3600, transport="u1", port=None, scenario="register_auth.xml", rate=500
):
    inf = os.path.join(node.work, f"inf-{time.monotonic_ns()}.csv")
    write_register_inf(inf, rows, node.domain, expires)
    return run_sipp(
        scenario,
        f"{node.address}:{node.port}",
        node.work,
        inf=inf,
        calls=len(rows),
        rate=rate,
        transport=transport,
        local_port=port,
        timeout=90,
    )


def sip_exchange(node, text: str, timeout: float = 2.0) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.sendto(text.replace("PORT", str(port)).encode(), (node.address, node.port))
        try:
            return s.recv(65535).decode()
        except TimeoutError:
            return None


def request(method="OPTIONS", drop=(), extra="", uri="sip:example.test"):
    headers = [
        "Via: SIP/2.0/UDP 127.0.0.1:PORT;branch=z9hG4bK" + os.urandom(6).hex(),
        "From: <sip:user0@example.test>;tag=abc",
        "To: <sip:user0@example.test>",
        "Call-ID: " + os.urandom(8).hex(),
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
    ]
    headers = [h for h in headers if h.split(":")[0] not in drop]
    return (
        f"{method} {uri} SIP/2.0\r\n"
        + "\r\n".join(headers)
        + extra
        + "\r\nContent-Length: 0\r\n\r\n"
    )


def test_sipp_registers_2000_users_with_digest(node):
    res = register(node, node.rows, port=free_port())
    assert (res.successful, res.failed) == (USERS, 0), res.stderr
    found = live_bindings(node)
    assert len(found) == USERS
    assert all(len(v) == 1 for v in found.values())


def test_a_sipp_run_reports_its_response_times_in_the_locust_reports_columns(node):
    """``run_sipp(rtt=True)`` keeps one response time per registration (its ``rtd``, the
    401 round included), and ``sipp_row`` sets them in ``loadtest/report.py``'s columns."""
    rows = node.rows[:300]
    inf = os.path.join(node.work, f"inf-{time.monotonic_ns()}.csv")
    write_register_inf(inf, rows, node.domain, 3600)
    res = run_sipp(
        "register_auth.xml",
        f"{node.address}:{node.port}",
        node.work,
        inf=inf,
        calls=len(rows),
        rate=300,
        timeout=60,
        rtt=True,
    )
    assert (res.successful, res.failed) == (300, 0), res.stderr
    assert len(res.rtt_ms) == 300 and all(0 <= ms < 5000 for ms in res.rtt_ms)
    row = sipp_row("REGISTER register", res)
    assert (row.count, row.failures) == (300, 0) and 0 < row.rate <= 310
    assert row.median_ms <= row.p95_ms <= max(res.rtt_ms)
    table = format_rows([row])
    assert table[0].split() == [
        "kind",
        "count",
        "failed",
        "per",
        "s",
        "median",
        "ms",
        "p95",
        "ms",
    ] and table[1].startswith("REGISTER register        300")
    assert not [f for f in os.listdir(node.work) if f.endswith("_rtt.csv")]
    assert percentile([], 0.95) == 0 and percentile([3, 1, 2, 4], 0.5) == 2
    assert percentile(list(range(1, 101)), 0.95) == 95


def test_query_lists_every_binding(node):
    res = register(node, node.rows, scenario="register_query.xml", rate=1000)
    assert (res.successful, res.failed) == (USERS, 0), res.stderr


def test_refresh_from_same_contact_keeps_one_binding(node):
    rows = node.rows[:200]
    port = free_port()
    assert register(node, rows, port=port).failed == 0
    before = live_bindings(node)
    res = register(node, rows, port=port, expires=1800)
    assert (res.successful, res.failed) == (200, 0)
    after = live_bindings(node)
    for user, _ in rows:
        aor = f"sip:{user}@example.test"
        assert len(after[aor]) == len(before[aor])


def test_unregister_removes_bindings(node):
    rows = node.rows[1000:1500]
    port = free_port()
    assert register(node, rows, port=port).failed == 0
    res = register(node, rows, port=port, expires=0)
    assert (res.successful, res.failed) == (500, 0)
    found = live_bindings(node)
    for user, _ in rows:
        contacts = found.get(f"sip:{user}@example.test", [])
        assert not any(f":{port};" in c or c.endswith(f":{port}") for c in contacts)


def test_register_over_tcp(node):
    res = register(node, node.rows[:100], transport="t1", rate=200)
    assert (res.successful, res.failed) == (100, 0), res.stderr


def test_sipsak_options_and_register(node):
    target = f"sip:{node.address}:{node.port}"
    opt = subprocess.run(["sipsak", "-s", target], capture_output=True, text=True, timeout=20)
    assert opt.returncode == 0, opt.stdout + opt.stderr
    user, pw = node.rows[-1]
    reg = subprocess.run(
        [
            "sipsak",
            "-U",
            "-s",
            f"sip:{user}@{node.address}:{node.port}",
            "-u",
            user,
            "-a",
            pw,
            "-i",
            "-x",
            "120",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert reg.returncode == 0, reg.stdout + reg.stderr
    assert "completed successful" in reg.stdout


@pytest.mark.parametrize("missing", ["CSeq", "Call-ID", "From", "To", "Via"])
def test_missing_header_gets_400_naming_it(node, missing):
    answer = sip_exchange(node, request(drop=(missing,)))
    assert answer.startswith(f"SIP/2.0 400 missing {missing} header")


def test_garbage_gets_nothing_and_node_lives(node):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (
            b"\x00\xff" * 200,
            b"INVITE\r\n\r\n",
            b"SIP/2.0 999\r\n\r\n",
            os.urandom(1400),
        ):
            s.sendto(junk, (node.address, node.port))
    assert options_ping(node.address, node.port, 2.0).startswith(b"SIP/2.0 200")


def test_negative_content_length_is_400(node):
    answer = sip_exchange(node, request().replace("Content-Length: 0", "Content-Length: -5"))
    assert answer.startswith("SIP/2.0 400")


def test_unsupported_method_gets_405_with_allow(node):
    answer = sip_exchange(node, request("PUBLISH"))
    assert answer.startswith("SIP/2.0 405")
    assert "\r\nAllow: " in answer


def test_interval_too_brief(node):
    user, pw = node.rows[5]
    res = register(node, [(user, pw)], expires=10)
    assert res.failed == 1


class Phone:
    """One UDP socket sending SIPp-shaped REGISTERs, the shape the node's quick path takes."""

    def __init__(self, node, user: str):
        self.node = node
        self.user = user
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(3.0)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.call_id = os.urandom(6).hex() + "@127.0.0.1"
        self.cseq = 0

    def nonce(self) -> str:
        answer = self.send(self.register())
        assert answer.startswith("SIP/2.0 401"), answer
        return answer.split('nonce="', 1)[1].split('"', 1)[0]

    def credentials(self, nonce: str, password: str, nc: int = 1, user: str | None = None) -> str:
        user = user or self.user
        creds = Credentials(
            username=user,
            realm="example.test",
            nonce=nonce,
            uri="sip:example.test",
            response="",
            algorithm="MD5",
            qop="auth",
            nc=f"{nc:08x}",
            cnonce="0a4f113b",
        )
        response = expected_response(creds, "REGISTER", ha1(user, "example.test", password))
        return (
            f'Authorization: Digest username="{user}",realm="example.test",'
            f'cnonce="0a4f113b",nc={nc:08x},qop=auth,uri="sip:example.test",'
            f'nonce="{nonce}",response="{response}",algorithm=MD5\r\n'
        )

    def register(self, auth: str = "", expires: int = 3600) -> bytes:
        self.cseq += 1
        return (
            f"REGISTER sip:example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
            f"From: <sip:{self.user}@example.test>;tag=t{self.cseq}\r\n"
            f"To: <sip:{self.user}@example.test>\r\nCall-ID: {self.call_id}\r\n"
            f"CSeq: {self.cseq} REGISTER\r\n"
            f"Contact: <sip:{self.user}@127.0.0.1:{self.port};transport=UDP>\r\n"
            f"{auth}Max-Forwards: 70\r\nExpires: {expires}\r\nUser-Agent: SIPp\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    def send(self, data: bytes) -> str:
        self.sock.sendto(data, (self.node.address, self.node.port))
        return self.sock.recv(65535).decode()


def test_wrong_answer_uses_up_the_nonce(node):
    """After a wrong password its nonce takes nothing more, not even the right
    password: the next try needs a fresh challenge."""
    user, pw = node.rows[7]
    phone = Phone(node, user)
    nonce = phone.nonce()
    assert phone.send(phone.register(phone.credentials(nonce, "wrong"))).startswith("SIP/2.0 401")
    assert phone.send(phone.register(phone.credentials(nonce, pw, nc=2))).startswith("SIP/2.0 401")
    nonce = phone.nonce()
    assert phone.send(phone.register(phone.credentials(nonce, pw))).startswith("SIP/2.0 200")
    # The same nonce-count again, in a new transaction: a replay.
    assert phone.send(phone.register(phone.credentials(nonce, pw))).startswith("SIP/2.0 401")
    assert phone.send(phone.register(phone.credentials(nonce, pw, nc=2))).startswith("SIP/2.0 200")


def test_accepted_credentials_of_another_user_get_403(node):
    (user, _), (other, other_pw) = node.rows[8], node.rows[9]
    phone = Phone(node, user)
    nonce = phone.nonce()
    answer = phone.send(phone.register(phone.credentials(nonce, other_pw, user=other)))
    assert answer.startswith("SIP/2.0 403"), answer


def test_too_brief_after_accepted_credentials_gets_423(node):
    user, pw = node.rows[10]
    phone = Phone(node, user)
    nonce = phone.nonce()
    answer = phone.send(phone.register(phone.credentials(nonce, pw), expires=10))
    assert answer.startswith("SIP/2.0 423") and "\r\nMin-Expires: 60\r\n" in answer, answer
    assert phone.send(phone.register(phone.credentials(nonce, pw, nc=2))).startswith("SIP/2.0 200")


def test_malformed_credentials_get_400_and_the_batch_goes_on(node):
    """A usual REGISTER whose Authorization cannot be read gets 400; the
    REGISTERs around it, in the same batch, get their answers."""
    (user, _pw), (other, other_pw) = node.rows[12], node.rows[13]
    phone, neighbour = Phone(node, user), Phone(node, other)
    bad = phone.register('Authorization: Digest username="x", realm="example.test", nc=zz\r\n')
    good = neighbour.register(neighbour.credentials(neighbour.nonce(), other_pw))
    neighbour.sock.sendto(good, (node.address, node.port))
    phone.sock.sendto(bad, (node.address, node.port))
    neighbour.sock.sendto(neighbour.register(), (node.address, node.port))
    assert phone.sock.recv(65535).decode().startswith("SIP/2.0 400 Bad Digest Credentials")
    # A REGISTER without credentials is answered at once, not in a batch:
    # the two answers may come in either order.
    answers = sorted(neighbour.sock.recv(65535).decode()[:11] for _ in range(2))
    assert answers == ["SIP/2.0 200", "SIP/2.0 401"]


def test_retransmission_gets_the_same_200(node):
    user, pw = node.rows[11]
    phone = Phone(node, user)
    data = phone.register(phone.credentials(phone.nonce(), pw))
    first = phone.send(data)
    assert first.startswith("SIP/2.0 200")
    assert phone.send(data) == first


def test_sigkill_loses_no_answered_binding(tmp_path):
    n = NodeProcess(str(tmp_path))
    rows = write_users_csv(str(tmp_path / "users.csv"), 1000)
    assert n.run_cli("user", "import", str(tmp_path / "users.csv")).returncode == 0
    n.work = str(tmp_path)
    n.start()
    try:
        res = register(n, rows, rate=2000)
        assert (res.successful, res.failed) == (1000, 0)
        n.kill()
        assert len(live_bindings(n)) == 1000
        n.start()
        res = register(n, rows, scenario="register_query.xml", rate=1000)
        assert (res.successful, res.failed) == (1000, 0), res.stderr
    finally:
        n.stop()


def test_sigterm_stops_cleanly(tmp_path):
    n = NodeProcess(str(tmp_path)).start()
    n.proc.send_signal(signal.SIGTERM)
    assert n.proc.wait(timeout=10) == 0


def test_each_registration_change_logs_one_info_line(node):
    """Issue 14: user, Call-ID, source and contact count for a REGISTER that adds or
    removes a contact; a plain refresh stays out of the INFO log."""
    rows = node.rows[1600:1603]
    port = free_port()
    with open(node.log_path, "rb") as f:
        start = len(f.read())

    def lines(user):
        deadline = time.monotonic() + 5
        while True:
            with open(node.log_path, errors="replace") as f:
                f.seek(start)
                found = [ln for ln in f if f"registration of sip:{user}@example.test " in ln]
            if len(found) >= 2 or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    assert register(node, rows, port=port).failed == 0
    assert register(node, rows, port=port).failed == 0  # refreshes: not at INFO
    assert register(node, rows, port=port, expires=0).failed == 0
    for user, _ in rows:
        got = lines(user)
        assert len(got) == 2, got
        assert all(
            " INFO " in ln and f"from udp:127.0.0.1:{port}: " in ln and "(Call-ID " in ln
            for ln in got
        )
        # Earlier tests of this module may have left the user another contact.
        before = int(got[0].rsplit(": ", 1)[1].split()[0]) - 1
        assert (
            got[0].rstrip().endswith(f"{before + 1} contacts now, 1 added, 0 removed, 0 refreshed")
        )
        assert got[1].rstrip().endswith(f"{before} contacts now, 0 added, 1 removed, 0 refreshed")
