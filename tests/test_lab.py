"""``run.py lab`` as a person uses it: started, a node killed, the rest serving, the node restarted.

Each test runs a real lab (real node processes, the built-in DNS) on its own
loopback block chosen at random, so it cannot collide with another lab.
"""

import json
import os
import random
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time

import dns.message
import dns.query
import pytest

from actors.lab_control import MAX_LINE, socket_path
from loadtest.harness import ROOT, options_ping


def wait_for(predicate, limit: float, step: float = 0.1):
    """Poll ``predicate`` until it returns a true value or ``limit`` seconds pass."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def run_py(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def lab(tmp_path):
    """A running two-node lab: (process, data dir, base address, stdout path)."""
    base = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.10"
    data = str(tmp_path / "lab")
    out_path = tmp_path / "lab.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "run.py"), "lab", "--data", data, "--base", base],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        ready = wait_for(lambda: "Ctrl-C stops it" in out_path.read_text(), 60)
        assert ready, out_path.read_text()
        yield proc, data, base, out_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def node_ip(base: str, k: int) -> str:
    parts = base.split(".")
    return ".".join(parts[:3] + [str(int(parts[3]) + k)])


def lab_status(data: str) -> dict:
    out = run_py("lab", "status", "--data", data)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def answers_options(address: str) -> bool:
    reply = options_ping(address, timeout=1.0)
    return reply is not None and reply.startswith(b"SIP/2.0 200")


def test_a_killed_node_is_reported_and_the_rest_serves_until_it_is_restarted(lab):
    proc, data, base, out_path = lab
    node1, node2 = node_ip(base, 1), node_ip(base, 2)
    pid2 = lab_status(data)["nodes"][1]["pid"]
    os.kill(pid2, signal.SIGKILL)

    assert wait_for(
        lambda: (
            "node2" in out_path.read_text() and "died: killed by SIGKILL" in out_path.read_text()
        ),
        10,
    ), out_path.read_text()
    assert proc.poll() is None, "the lab exited when one node died"
    assert answers_options(node1)
    assert not answers_options(node2)
    zone = lab_status(data)["dns"]
    host, port = zone.rsplit(":", 1)
    reply = dns.query.udp(
        dns.message.make_query("_sip._udp.example.test", "SRV"), host, port=int(port), timeout=2
    )
    assert len(reply.answer[0]) == 2, "the DNS still serves both SRV records"
    register = subprocess.run(
        [
            "sipsak",
            "-U",
            "-s",
            f"sip:alice@{node1}",
            "-u",
            "alice",
            "-a",
            "alice-secret",
            "-x",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert register.returncode == 0, register.stdout + register.stderr
    state = lab_status(data)["nodes"][1]
    assert (state["running"], state["deaths"], state["last_exit"]) == (
        False,
        1,
        "killed by SIGKILL",
    )

    restarted = run_py("lab", "restart", "node2", "--data", data)
    assert restarted.returncode == 0, restarted.stderr
    assert json.loads(restarted.stdout)["running"] is True
    assert answers_options(node2)
    assert "node2" in out_path.read_text().split("died:")[-1]
    assert "is back and answering" in out_path.read_text()
    assert out_path.read_text().count("died:") == 1, "a restart asked for is no death"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert not answers_options(node1)


def sipsak_register(address: str, user: str, password: str) -> bool:
    reg = subprocess.run(
        ["sipsak", "-U", "-s", f"sip:{user}@{address}", "-u", user, "-a", password, "-x", "60"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return reg.returncode == 0


def test_the_master_provisions_every_node_and_its_death_stops_no_node(lab):
    import base64
    import urllib.request

    proc, data, base, out_path = lab
    with open(os.path.join(data, "master", "admin-password")) as f:
        password = f.read().strip()
    text = out_path.read_text()
    assert f"http://{base}:8080, admin / {password}" in text
    request = urllib.request.Request(
        f"http://{base}:8080/api/users",
        method="POST",
        data=json.dumps({"username": "lab-zed", "password": "zed-pw"}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 201
    for k in (1, 2):
        assert wait_for(lambda k=k: sipsak_register(node_ip(base, k), "lab-zed", "zed-pw"), 10)
    os.kill(lab_status(data)["master"]["pid"], signal.SIGKILL)
    assert wait_for(
        lambda: (
            "master" in out_path.read_text() and "died: killed by SIGKILL" in out_path.read_text()
        ),
        10,
    )
    assert proc.poll() is None
    for k in (1, 2):
        assert sipsak_register(node_ip(base, k), "lab-zed", "zed-pw")
        assert sipsak_register(node_ip(base, k), "alice", "alice-secret")
    restarted = run_py("lab", "restart", "master", "--data", data)
    assert restarted.returncode == 0, restarted.stderr
    assert lab_status(data)["master"]["running"] is True
    restart = urllib.request.Request(
        f"http://{base}:8080/api/nodes/node2/restart",
        method="POST",
        headers={"Authorization": request.headers["Authorization"]},
    )
    with urllib.request.urlopen(restart, timeout=60) as r:
        assert json.loads(r.read())["state"]["restarts"] == 1
    assert lab_status(data)["nodes"][1]["restarts"] == 1
    assert answers_options(node_ip(base, 2))
    weights = urllib.request.Request(
        f"http://{base}:8080/api/dns",
        method="POST",
        data=json.dumps({"weights": {"node1": 80, "node2": 20}}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": request.headers["Authorization"],
        },
    )
    with urllib.request.urlopen(weights, timeout=10) as r:
        assert r.status == 200
    host, port = lab_status(data)["dns"].rsplit(":", 1)

    def served_weights():
        reply = dns.query.udp(
            dns.message.make_query("_sip._udp.example.test", "SRV"), host, port=int(port), timeout=2
        )
        return sorted(r.weight for r in reply.answer[0])

    assert wait_for(lambda: served_weights() == [20, 80], 5), served_weights()
    removal = urllib.request.Request(
        f"http://{base}:8080/api/nodes/node2",
        method="DELETE",
        headers={"Authorization": request.headers["Authorization"]},
    )
    with urllib.request.urlopen(removal, timeout=10) as r:
        assert r.status == 200
    assert wait_for(lambda: served_weights() == [80], 5), "the lab's DNS follows a removal"


def test_the_lab_serves_tls_with_its_ca_and_the_dns_names_it(lab):
    """Each node takes TLS on 5061 with a certificate the lab CA (printed for phones)
    signed for its address and the domain; the DNS serves _sips._tcp SRV records and a
    SIPS+D2T NAPTR; a real client (sipsak) registers over TLS checking the node."""
    _proc, data, base, out_path = lab
    ca = os.path.join(data, "ca", "ca.pem")
    assert f"lab CA {ca}" in out_path.read_text()
    for k in (1, 2):
        ctx = ssl.create_default_context(cafile=ca)
        for name in (node_ip(base, k), "example.test", f"node{k}.example.test"):
            with (
                socket.create_connection((node_ip(base, k), 5061), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname=name) as tls,
            ):
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
    host, port = lab_status(data)["dns"].rsplit(":", 1)

    def ask(name: str, rdtype: str):
        reply = dns.query.udp(dns.message.make_query(name, rdtype), host, port=int(port), timeout=2)
        return list(reply.answer[0]) if reply.answer else []

    assert sorted((r.port, r.target.to_text()) for r in ask("_sips._tcp.example.test", "SRV")) == [
        (5061, "node1.example.test."),
        (5061, "node2.example.test."),
    ]
    assert {r.port for r in ask("_sip._tcp.example.test", "SRV")} == {5060}
    assert (b"SIPS+D2T", "_sips._tcp.example.test.") in {
        (r.service, r.replacement.to_text()) for r in ask("example.test", "NAPTR")
    }
    reg = subprocess.run(
        [
            "sipsak",
            "-U",
            "-s",
            f"sip:alice@{node_ip(base, 2)}:5061",
            "-E",
            "tls",
            "--tls-ca-cert",
            ca,
            "-u",
            "alice",
            "-a",
            "alice-secret",
            "-i",
            "-x",
            "60",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "completed successful" in reg.stdout, reg.stdout + reg.stderr


def test_lab_files_are_private(lab):
    _proc, data, _base, _out = lab
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    for name in (
        "auth.secret",
        "lab.secret",
        "lab.sock",
        "node1/node.toml",
        "ca/ca.key",
        "node1/tls.key",
        "node2/tls.key",
        "master/master.db",
        "master/admin-password",
        "master/master.secret",
        "node1/bus.secret",
        "node1/tandem.db",
        "node2/node.toml",
    ):
        mode = stat.S_IMODE(os.stat(os.path.join(data, name)).st_mode)
        assert mode & 0o077 == 0, f"{name} has mode {mode:04o}"


def test_control_socket_refuses_what_it_does_not_know(lab):
    _proc, data, _base, _out = lab
    bad = run_py("lab", "restart", "node9", "--data", data)
    assert bad.returncode == 1 and "no node 'node9'" in bad.stderr
    for line, expected in (
        (b"shutdown\n", "unknown request"),
        (b"x" * (MAX_LINE + 10) + b"\n", "longer than"),
        (b"\xff\xfe\n", "not ASCII"),
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(socket_path(data))
            s.sendall(line)
            reply = s.recv(4096)
        assert expected in json.loads(reply)["error"]
    assert lab_status(data)["nodes"][0]["running"] is True


def test_lab_tools_without_a_running_lab_say_so(tmp_path):
    out = run_py("lab", "status", "--data", str(tmp_path))
    assert out.returncode == 1 and "no lab is running" in out.stderr
    out = run_py("lab", "restart", "--data", str(tmp_path))
    assert out.returncode == 2 and "needs a node id" in out.stderr


def test_version():
    out = run_py("--version")
    assert out.returncode == 0 and out.stdout.startswith("run.py ")
