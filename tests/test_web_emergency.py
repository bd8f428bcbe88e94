"""The dashboard learns of an emergency call at once: a real node routes 911 to a SIPp
emergency gateway; the master's call-event collector's next round raises the ``emergency
call`` alarm there and then (not at the alarms' next check), the webhook gets it and every
page shows the red banner, escaped; an ordinary call raises nothing."""

import os

import pytest

from actors.bus import Bus
from loadtest.harness import Cluster, free_port, write_users_csv
from loadtest.sipclient import SipClient
from store import alarms as store
from store import cdrs
from store import master as ms
from tests.test_alarms import Webhook
from tests.test_cdr_cluster import collect_until
from tests.test_gateways import Gateway, wait_for
from tests.test_master_push import SETTINGS, wait_serving
from tests.test_web import PASSWORD, Poked, login
from web import create_app
from web.alarms import AlarmChecker, AlarmSettings
from web.cdr_collector import CdrCollector


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("web-emergency"))
    psap = Gateway(free_port(), work, "psap")
    plan = f"""
[dialplan]
probe_interval = 0

[[dialplan.gateways]]
name = "psap"
host = "127.0.0.1"
port = {psap.uas.port}
emergency = true
"""
    cluster = Cluster(work, 1, settings=SETTINGS, extra=plan)
    users = os.path.join(work, "users.csv")
    rows = dict(write_users_csv(users, 5))
    cluster.provision(users)
    cluster.start()
    hook = Webhook()
    try:
        node = cluster.nodes[0]
        assert wait_serving(cluster, node, 30.0), node.log_tail()
        ms.init_master_store(f"sqlite:///{work}/master.db")
        ms.setup("example.test")
        ms.add_admin("admin", PASSWORD)
        for m in cluster.members.values():
            ms.save_node(m.id, "", m.control, m.public_key)
        bus = Bus(cluster.client_public, cluster.client_secret, "master")
        # check_every is long: only the collector's call can raise the alarm in time.
        checker = AlarmChecker(AlarmSettings.of({"webhook": hook.url, "check_every": 3600}))
        checker.start()
        yield node, rows, CdrCollector(bus, on_emergency=checker.emergency_now), hook
        checker.stop()
        bus.close()
        ms.close_master_store()
    finally:
        hook.stop()
        cluster.stop()
        psap.stop()


def dial(node, rows, number: str) -> int:
    c = SipClient(
        (node.address, node.port), "user1", rows["user1"], "example.test", t1=0.1, timeout=10.0
    )
    try:
        resp, dialog = c.invite(f"sip:{number}@example.test")
        if dialog is not None:
            assert dialog.bye().status == 200
        return resp.status
    finally:
        c.close()


def emergency_alarms() -> list[dict]:
    return store.open_of_kind("emergency call", 10)


def test_an_emergency_call_raises_the_alarm_and_the_banner_at_once(site):
    node, rows, collector, hook = site
    assert dial(node, rows, "911") == 200
    assert collect_until(collector, lambda: collector.stats["emergency"] >= 1)
    alarms = wait_for(emergency_alarms, 5)
    assert alarms and "emergency call from sip:user1@example.test" in alarms[0]["text"]
    assert wait_for(lambda: [b for b in hook.bodies if b["alarm"] == "emergency call"], 10)
    app = create_app({"SECRET_KEY": "k"}, Poked())
    c = app.test_client()
    assert "EMERGENCY CALL" not in c.get("/login").get_data(as_text=True)  # not signed in
    login(c)
    page = c.get("/alarms").get_data(as_text=True)
    assert 'class="emergency-banner"' in page and "sip:user1@example.test" in page


def test_an_ordinary_call_raises_nothing_and_the_banner_is_escaped(site):
    node, rows, collector, _hook = site
    before = collector.stats["emergency"]
    seen = len(emergency_alarms())
    assert dial(node, rows, "user2") in (404, 480)
    collect_until(collector, lambda: False, timeout=1.0)
    assert collector.stats["emergency"] == before and len(emergency_alarms()) == seen
    # A caller that reads as markup is shown as text.
    cdrs.store_events(
        "node9",
        [
            {
                "seq": 1,
                "at": 1000.0,
                "kind": "attempt",
                "call_id": "x1",
                "caller": "sip:<script>alert(1)</script>@x",
                "callee": "sip:112@example.test",
                "source": "udp:10.0.0.1:5060",
                "status": None,
            },
            {
                "seq": 2,
                "at": 1000.0,
                "kind": "emergency",
                "call_id": "x1",
                "caller": "sip:<script>alert(1)</script>@x",
                "callee": "sip:112@example.test",
                "source": "udp:10.0.0.1:5060",
                "status": None,
            },
        ],
    )
    collector.on_emergency()
    assert wait_for(lambda: len(emergency_alarms()) > seen, 5)
    c = create_app({"SECRET_KEY": "k"}, Poked()).test_client()
    login(c)
    page = c.get("/calls").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
