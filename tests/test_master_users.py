"""Users through the master, with real node processes: ``run.py user add|import
--master`` (the command talks to the master's HTTP API, which pushes to every node), and
a disabled user refused on every node at once but for emergency numbers."""

import os
import time

import gevent
import pytest
from gevent.pywsgi import WSGIServer

from actors.bus import generate_keypair
from loadtest.harness import Cluster, free_port
from loadtest.sipclient import SipClient, SipClientError
from sipcore.message import Request, parse_message
from store import master as ms
from tests.test_master_push import SETTINGS, registered, wait_acked
from tests.test_web import basic
from web import create_app
from web.push import Pusher

ADMIN_PW = "admin-pw-cli"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("master-users"))
    public, secret = generate_keypair()
    cluster = Cluster(work, 2, settings={**SETTINGS, "master_key": public})
    cluster.start()
    assert cluster.wait_synced(30)
    ms.init_master_store(f"sqlite:///{work}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", ADMIN_PW)
    for m in cluster.members.values():
        ms.save_node(m.id, "", m.control, m.public_key)
    pusher = Pusher(public, secret, interval=0.2)
    pusher.start()
    app = create_app({"SECRET_KEY": "k"}, pusher)
    port = free_port()
    server = WSGIServer(("127.0.0.1", port), app, log=None)
    server.start()
    admin_file = os.path.join(work, "admin")
    with open(os.open(admin_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(f"admin:{ADMIN_PW}\n")
    try:
        yield cluster, app, f"http://127.0.0.1:{port}", admin_file, work
    finally:
        server.stop(timeout=1)
        pusher.stop()
        ms.close_master_store()
        cluster.stop()


def cli(node, url, admin_file, *args):
    return node.run_cli("user", *args, "--master", url, "--admin-file", admin_file)


def test_user_add_through_the_master_registers_on_every_node_within_a_second(setup):
    cluster, _, url, admin_file, _ = setup
    out = cli(cluster.nodes[0], url, admin_file, "add", "viacli", "--password", "viacli-pw")
    assert out.returncode == 0, out.stderr
    done = time.monotonic()
    version = ms.current_version()
    assert wait_acked(version, 1.0), ms.list_nodes()
    assert time.monotonic() - done < 1.0
    for node in cluster.nodes:
        assert registered(node, "viacli", "viacli-pw"), node.log_tail()


def test_user_import_through_the_master_with_progress_or_a_named_bad_line(setup):
    cluster, _, url, admin_file, work = setup
    good = os.path.join(work, "staff.csv")
    with open(good, "w") as f:
        f.write("username,password\n" + "".join(f"staff{k},pw{k}\n" for k in range(300)))
    out = cli(cluster.nodes[1], url, admin_file, "import", good)
    assert out.returncode == 0 and "300 users imported on the master" in out.stderr, out.stderr
    assert wait_acked(ms.current_version(), 5.0)
    assert registered(cluster.nodes[1], "staff299", "pw299")
    before = ms.count_users()
    bad = os.path.join(work, "bad.csv")
    with open(bad, "w") as f:
        f.write("username,password\nfine,pw\nnot fine,pw\n")
    out = cli(cluster.nodes[1], url, admin_file, "import", bad)
    assert out.returncode == 2 and "bad.csv line 3" in out.stderr, out.stderr
    assert ms.count_users() == before


def test_credentials_must_be_private_and_right(setup):
    cluster, _, url, admin_file, work = setup
    node = cluster.nodes[0]
    loose = os.path.join(work, "loose")
    with open(loose, "w") as f:
        f.write(f"admin:{ADMIN_PW}\n")
    os.chmod(loose, 0o644)
    out = cli(node, url, loose, "add", "nope", "--password", "x")
    assert out.returncode == 2 and "chmod 600" in out.stderr
    wrong = os.path.join(work, "wrong")
    with open(os.open(wrong, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write("admin:not-the-password\n")
    out = cli(node, url, wrong, "add", "nope", "--password", "x")
    assert out.returncode == 2 and "401" in out.stderr and ADMIN_PW not in out.stderr
    out = node.run_cli("user", "add", "nope", "--password", "x", "--master", url)
    assert out.returncode == 2 and "admin" in out.stderr
    out = cli(node, "ftp://127.0.0.1/", admin_file, "add", "nope", "--password", "x")
    assert out.returncode == 2 and "http" in out.stderr
    out = cli(node, f"http://127.0.0.1:{free_port()}", admin_file, "add", "nope", "--password", "x")
    assert out.returncode == 2 and "cannot reach the master" in out.stderr
    assert ms.SipUser.get_or_none(ms.SipUser.username == "nope") is None


def invites(sock, wait: float) -> list[Request]:
    got = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            msg = parse_message(sock.recv(65535))
        except TimeoutError:
            break
        if isinstance(msg, Request) and msg.method == "INVITE":
            got.append(msg)
    return got


def quietly(fn, *args):
    """``fn(*args)``, its failure (no final answer: nobody picks up) left out."""
    try:
        return fn(*args)
    except SipClientError:
        return None


def test_a_disabled_user_is_refused_on_every_node_but_may_call_emergency(setup):
    cluster, app, _, _, _ = setup
    c = app.test_client()
    for name in ("dis", "911"):
        assert (
            c.post(
                "/api/users",
                json={"username": name, "password": f"{name}-pw"},
                headers=basic(ADMIN_PW),
            ).status_code
            == 201
        )
    assert wait_acked(ms.current_version(), 5.0)
    one, two = cluster.nodes
    sos = SipClient((one.address, one.port), "911", "911-pw", "example.test", t1=0.25, timeout=5.0)
    try:
        assert sos.register().status == 200
        assert registered(two, "dis", "dis-pw")
        r = c.patch("/api/users/dis", json={"enabled": False}, headers=basic(ADMIN_PW))
        assert r.status_code == 200
        start = time.monotonic()
        assert wait_acked(r.json["version"], 1.0) and time.monotonic() - start < 1.0
        for node in cluster.nodes:
            assert not registered(node, "dis", "dis-pw"), node.id
        caller = SipClient(
            (two.address, two.port), "dis", "dis-pw", "example.test", t1=0.25, timeout=3.0
        )
        try:
            with pytest.raises(SipClientError, match=r"credentials refused|403"):
                caller.invite("sip:viacli@example.test")
            call = gevent.spawn(quietly, caller.invite, "sip:911@example.test")
            got = invites(sos.sock, 2.5)
            call.kill()
            assert got and got[0].uri.startswith("sip:911@127.0.0.1"), got
        finally:
            caller.close()
        assert (
            c.patch("/api/users/dis", json={"enabled": True}, headers=basic(ADMIN_PW)).status_code
            == 200
        )
        start = time.monotonic()
        assert wait_acked(ms.current_version(), 5.0)
        assert time.monotonic() - start < 1.0, time.monotonic() - start
        assert registered(one, "dis", "dis-pw")
    finally:
        sos.close()
