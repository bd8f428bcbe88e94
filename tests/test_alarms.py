"""Alarms reach a test webhook receiver and a small local SMTP receiver: grouped, repeated,
cleared; with real node processes for the kinds the nodes report (down, degraded,
configuration behind, replication lag, clock skew, ban storm)."""

import json
import logging
import signal
import subprocess
import time

import gevent
import pytest
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer

from store import alarms as store
from store import cdrs
from store import master as ms
from tests.test_web import PASSWORD, Poked, login
from web import cluster as web_cluster
from web import create_app
from web.alarms import AlarmChecker, AlarmSettings, AlarmSettingsError, cert_expiry


class Webhook:
    """An HTTP receiver on loopback that keeps every JSON body POSTed to it."""

    def __init__(self, status: int = 200):
        self.bodies: list[dict] = []
        self.status = status
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def app(self, environ, start_response):
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size)
        if environ["REQUEST_METHOD"] == "POST" and environ["CONTENT_TYPE"] == "application/json":
            self.bodies.append(json.loads(body))
        start_response(f"{self.status} X", [("Content-Type", "text/plain")])
        return [b"ok"]

    def kinds(self, state: str | None = None) -> list[tuple[str, str]]:
        return sorted(
            (b["alarm"], b["subject"]) for b in self.bodies if state is None or b["state"] == state
        )

    def stop(self):
        self.server.stop()


class SmtpReceiver:
    """The smallest SMTP server that takes a message (RFC 5321's commands, no extensions)."""

    def __init__(self):
        self.messages: list[str] = []
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.port = self.server.server_port

    def handle(self, sock, _address):
        f = sock.makefile("rwb")
        f.write(b"220 test ready\r\n")
        f.flush()
        while True:
            line = f.readline(1000)
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"DATA":
                f.write(b"354 go on\r\n")
                f.flush()
                data = []
                while (row := f.readline(10000)) not in (b".\r\n", b""):
                    data.append(row.decode())
                self.messages.append("".join(data))
                f.write(b"250 taken\r\n")
            elif verb == b"QUIT":
                f.write(b"221 bye\r\n")
                f.flush()
                return
            else:
                f.write(b"250 ok\r\n")
            f.flush()

    def stop(self):
        self.server.stop()


@pytest.fixture
def master(tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    yield tmp_path
    ms.close_master_store()


@pytest.fixture
def hook():
    h = Webhook()
    yield h
    h.stop()


def make_cert(path: str, days: int) -> str:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            path + ".key",
            "-out",
            path,
            "-days",
            str(days),
            "-subj",
            "/CN=node.test",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def test_settings_are_checked():
    assert AlarmSettings.of({}).max_skew == 1.0
    for wrong in (
        {"nope": 1},
        {"webhook": "file:///etc/passwd"},
        {"lag_ms": "fast"},
        {"ban_storm": True},
        {"smtp_host": "mail"},
        {"certificates": "x.pem"},
        {"check_every": 0},
        {"max_skew": -1},
    ):
        with pytest.raises(AlarmSettingsError):
            AlarmSettings.of(wrong)
    assert "hunter2" not in repr(AlarmSettings.of({"smtp_password": "hunter2"}))


def test_certificate_expiring_reaches_the_webhook_and_the_mail_then_clears(master, hook):
    smtp = SmtpReceiver()
    try:
        soon = make_cert(str(master / "soon.pem"), 10)
        later = make_cert(str(master / "later.pem"), 400)
        assert 9 * 86400 < cert_expiry(soon) - time.time() < 11 * 86400
        settings = AlarmSettings.of(
            {
                "webhook": hook.url,
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp.port,
                "smtp_to": ["ops@example.test"],
                "dashboard_url": "http://127.0.0.1:8080",
                "certificates": [soon, later, str(master / "missing.pem")],
            }
        )
        checker = AlarmChecker(settings)
        checker.check(time.time())
        assert hook.kinds("raised") == [
            ("certificate expiring", str(master / "missing.pem")),
            ("certificate expiring", soon),
        ]
        body = next(b for b in hook.bodies if b["subject"] == soon)
        assert "ends in 9.9 days" in body["text"] or "ends in 10.0 days" in body["text"]
        assert body["link"] == "http://127.0.0.1:8080/alarms" and body["cluster"] == "example.test"
        assert len(smtp.messages) == 2
        mail = next(m for m in smtp.messages if "soon.pem" in m.split("\r\n\r\n")[0])
        assert "Subject: [tandem example.test] certificate expiring:" in mail
        assert "Details: http://127.0.0.1:8080/alarms" in mail
        checker.check(time.time())  # seen again: counted, no new notice
        assert len(hook.bodies) == 2 and store.search(open_only=True)[0]["count"] == 2
        settings.certificates = [later]
        checker.check(time.time())
        assert hook.kinds("cleared") == hook.kinds("raised")
        assert store.count_open() == 0
    finally:
        smtp.stop()


def call(call_id: str, callee: str, at: float) -> None:
    cdrs.store_events(
        "node1",
        [
            {
                "seq": int(at * 1000) % 10**9,
                "at": at,
                "kind": "attempt",
                "call_id": call_id,
                "caller": "sip:amy@example.test",
                "callee": callee,
                "source": "udp:127.0.0.1:5070",
                "status": None,
            }
        ],
    )


def test_emergency_calls_alarm_once_then_repeat_grouped(master, hook):
    call("old", "sip:911@example.test", 100.0)  # before the first check: not an alarm
    settings = AlarmSettings.of({"webhook": hook.url, "repeat_every": 60})
    checker = AlarmChecker(settings)
    checker.check(1000.0)
    assert hook.bodies == []
    call("c1", "sip:911@example.test", 1001.0)
    call("c2", "sip:bob@example.test", 1002.0)
    checker.check(1005.0)
    assert hook.kinds() == [("emergency call", "sip:911@example.test")]
    assert (
        "emergency call from sip:amy@example.test to sip:911@example.test" in hook.bodies[0]["text"]
    )
    assert hook.bodies[0]["link"].endswith("/calls?callee=sip%3A911%40example.test")
    call("c3", "sip:911@example.test", 1010.0)
    checker.check(1015.0)
    assert len(hook.bodies) == 1  # grouped within repeat_every
    call("c4", "sip:911@example.test", 1070.0)
    checker.check(1075.0)
    assert [b["state"] for b in hook.bodies] == ["raised", "repeated"]
    assert hook.bodies[1]["count"] == 3
    checker.check(1200.0)  # quiet: closes without a notice
    assert store.count_open() == 0 and len(hook.bodies) == 2
    cdrs.store_events(
        "node2",
        [  # a node's own emergency number, marked by the node
            {
                "seq": 1,
                "at": 1300.0,
                "kind": "attempt",
                "call_id": "c5",
                "caller": "sip:amy@x",
                "callee": "sip:999@example.test",
                "source": "udp:127.0.0.1:5070",
                "status": None,
            },
            {
                "seq": 2,
                "at": 1300.0,
                "kind": "emergency",
                "call_id": "c5",
                "caller": "sip:amy@x",
                "callee": "sip:999@example.test",
                "source": "udp:127.0.0.1:5070",
                "status": None,
            },
        ],
    )
    checker.check(1305.0)
    assert hook.kinds("raised")[-1] == ("emergency call", "sip:999@example.test")


def test_a_failing_webhook_is_retried_a_bounded_number_of_times(master, caplog):
    down = Webhook(status=500)
    try:
        settings = AlarmSettings.of(
            {
                "webhook": down.url,
                "certificates": ["/nonexistent.pem"],
                "smtp_host": "127.0.0.1",
                "smtp_port": 1,
                "smtp_to": ["ops@x"],
                "smtp_password": "hunter2",
            }
        )
        checker = AlarmChecker(settings)
        with caplog.at_level(logging.INFO):
            for k in range(store.MAX_ATTEMPTS + 3):
                checker.check(1000.0 + k)
        assert len(down.bodies) == store.MAX_ATTEMPTS
        assert "given up after" in caplog.text and "hunter2" not in caplog.text
    finally:
        down.stop()


def test_a_degraded_node_raises_an_alarm_naming_its_fault(master):
    from web.alarms import node_troubles

    nodes = [{"node_id": "node1", "acked_version": ms.current_version(), "last_error": ""}]
    fault = {"database": {"reason": "disk I/O error", "for": 3.0, "failures": 4}}
    for faults in (fault, {"database": "not a dict"}, "not a dict"):
        states = {"node1": {"state": "degraded", "faults": faults}}
        troubles = node_troubles(AlarmSettings(), nodes, states, {}, time.time())
        assert [(t.kind, t.subject) for t in troubles] == [("node degraded", "node1")]
    assert (
        "database: disk I/O error"
        in node_troubles(
            AlarmSettings(),
            nodes,
            {"node1": {"state": "degraded", "faults": fault}},
            {},
            time.time(),
        )[0].text
    )


def test_alarms_page_and_api_need_an_admin(master):
    store.seen("node down", "node2", "node2 <b>does not answer</b>", "/", 1000.0, 60)
    app = create_app({"SECRET_KEY": "k"}, Poked())
    c = app.test_client()
    assert c.get("/alarms").status_code == 302 and c.get("/api/alarms").status_code == 401
    login(c)
    page = c.get("/alarms").get_data(as_text=True)
    assert "node2 &lt;b&gt;does not answer&lt;/b&gt;" in page and "Alarms (1)" in page
    import base64

    auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
    assert c.get("/api/alarms?open=1", headers=auth).json["alarms"][0]["subject"] == "node2"


SKEWED_CLOCK = "import time\n_real = time.time\ntime.time = lambda: _real() + 5.0\n"


def test_node_alarms_from_real_nodes_reach_the_webhook(tmp_path, hook):
    from actors.bus import generate_keypair
    from loadtest.harness import Cluster
    from tests.test_master_push import registered, wait_acked
    from web.push import Pusher

    skew = tmp_path / "skew"
    skew.mkdir()
    (skew / "sitecustomize.py").write_text(SKEWED_CLOCK)  # node2's host clock is 5 s fast
    public, secret = generate_keypair()
    from loadtest.harness import free_port

    dead_gateway = (
        f"[dialplan]\nprobe_interval = 0.2\nprobe_misses = 2\n"
        f'[[dialplan.gateways]]\nname = "pstn"\nhost = "127.0.0.1"\n'
        f"port = {free_port()}\nemergency = true\n"
    )
    cluster = Cluster(
        str(tmp_path),
        2,
        settings={
            "master_key": public,
            "heartbeat": 0.2,
            "suspect_after": 1.0,
            "dead_after": 3.0,
            "alone_wait": 30.0,
        },
        extra=dead_gateway,
    )
    cluster.nodes[1].prefix = ["env", f"PYTHONPATH={skew}"]
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    for m in cluster.members.values():
        ms.save_node(m.id, "", m.control, m.public_key)
    pusher = Pusher(public, secret, interval=0.2)
    checker = AlarmChecker(
        AlarmSettings.of(
            {
                "webhook": hook.url,
                "ban_storm": 3,
                "dashboard_url": "http://127.0.0.1:8080",
                "behind_after": 0,
            }
        ),
        pusher.bus,
    )
    try:
        cluster.start()
        pusher.start()
        assert cluster.wait_synced(30)
        version = ms.save_user("amy", "amy-pw")
        pusher.poke()
        assert wait_acked(version, 10)
        assert registered(cluster.nodes[0], "amy", "amy-pw")

        def both_probes_failed() -> bool:  # each node's prober marks pstn down on its own
            answers = web_cluster.ask_all(pusher.bus, ms.list_nodes(), {"cmd": "gateways"})
            return all(
                (a.get("gateways") or {}).get("pstn", {}).get("state") == "down"
                for a in answers.values()
            )

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not both_probes_failed():
            gevent.sleep(0.2)
        deadline = time.monotonic() + 10  # heartbeats measure the skew, the lag needs a sample
        while time.monotonic() < deadline and not {
            ("clock skew", "node1-node2"),
            ("replication lag", "node2"),
            ("gateway down", "pstn"),
        } <= set(hook.kinds()):
            checker.check(time.time())
            gevent.sleep(0.2)
        assert ("clock skew", "node1-node2") in hook.kinds("raised")
        assert ("replication lag", "node2") in hook.kinds("raised")
        gateway = next(b for b in hook.bodies if b["alarm"] == "gateway down")
        assert "probes of node1, node2" in gateway["text"] and "emergency" in gateway["text"]
        assert gateway["link"].endswith("/dialplan")
        skewed = next(b for b in hook.bodies if b["alarm"] == "clock skew")
        assert "differ by 5.0" in skewed["text"] and skewed["link"].endswith("/")

        for k in range(3):
            cluster.control(cluster.nodes[0], "ban", kind="source", key=f"192.0.2.{k}", seconds=60)
        checker.check(time.time())
        assert ("ban storm", "node1") in hook.kinds("raised")

        cluster.nodes[1].proc.send_signal(signal.SIGKILL)
        cluster.nodes[1].proc.wait(10)
        version = ms.save_user("bob", "bob-pw")
        pusher.poke()
        assert wait_acked(version, 10, ["node1"])
        checker.check(time.time())
        assert {("node down", "node2"), ("configuration behind", "node2")} <= set(
            hook.kinds("raised")
        )
        deadline = time.monotonic() + 15  # until node1 finds node2 dead: its skew is stale
        while time.monotonic() < deadline and ("clock skew", "node1-node2") not in hook.kinds(
            "cleared"
        ):
            gevent.sleep(0.3)
            checker.check(time.time())
        assert ("clock skew", "node1-node2") in hook.kinds("cleared")

        cluster.nodes[0].proc.send_signal(signal.SIGKILL)
        cluster.nodes[0].proc.wait(10)
        cluster.nodes[1].start()  # alone: syncing for alone_wait, so degraded
        checker.check(time.time())
        assert ("node degraded", "node2") in hook.kinds("raised")
        assert ("node down", "node2") in hook.kinds("cleared")
        assert ("node down", "node1") in hook.kinds("raised")
        assert all(
            b["text"] and b["link"].startswith("http://127.0.0.1:8080/") for b in hook.bodies
        )
    finally:
        pusher.stop()
        ms.close_master_store()
        cluster.stop()


def test_the_example_configuration_has_valid_backup_and_alarm_settings():
    from web.alarms import env_settings
    from web.backups import BackupPlan
    from web.settings import load_settings

    settings = load_settings("conf/master.example.toml")
    assert BackupPlan.of(settings).keep == 7
    alarms = env_settings(settings.alarms, settings.listen)
    assert alarms.dashboard_url == "http://127.0.0.10:8080" and alarms.ban_storm == 20
