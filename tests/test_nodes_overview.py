"""The Nodes page, ``/api/nodes`` and ``/metrics`` (issue 12) on two real nodes: health,
uptime, configuration version, bindings, REGISTER and call rates over the last minute,
replication lag from each peer, requests by method and responses by code. ``/metrics``
is read with a strict parser of Prometheus's text format (prometheus_client is not
installed). The rates' arithmetic and the health words are also tried on made-up answers
with a fake clock; a dead node is shown dead; hostile and unauthenticated calls."""

import math
import os
import re
import socket
import time

import pytest

from loadtest.harness import Cluster, write_users_csv
from loadtest.sipclient import SipClient, SipClientError
from store import master as ms
from tests.test_web import PASSWORD, basic, login
from web import cluster, create_app
from web.push import Pusher
from web.rates import WINDOW, Rates, RateSampler

SETTINGS = {"heartbeat": 0.2, "alone_wait": 0.5, "sync_timeout": 3.0}


# -- the exposition format, strictly ------------------------------------------------------
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{({LABEL}(?:,{LABEL})*)?\}})? (\S+)$")
HELP = re.compile(rf"^# HELP ({NAME}) (.*)$")
TYPE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")


def parse_exposition(text: str) -> dict[str, list[tuple[dict, float]]]:
    """``{metric: [(labels, value)]}``; AssertionError on any line out of the format, a
    sample before its TYPE, a TYPE given twice or a value that is not a number."""
    assert text.endswith("\n")
    typed: dict[str, str] = {}
    out: dict[str, list[tuple[dict, float]]] = {}
    for line in text.splitlines():
        if m := TYPE.match(line):
            assert m.group(1) not in typed, line
            typed[m.group(1)] = m.group(2)
            out[m.group(1)] = []
            continue
        if HELP.match(line):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample: {line!r}"
        name = m.group(1)
        assert name in typed, f"sample before its TYPE: {line!r}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        value = float(m.group(3))
        assert not math.isnan(value), line
        out[name].append((labels, value))
    return out


def value(metrics, name, **labels) -> float:
    found = [v for ls, v in metrics[name] if all(ls.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, metrics[name])
    return found[0]


# -- without nodes ------------------------------------------------------------------------
def status(started=100.0, registers=0, calls=0, state="synced", peers=None):
    return {
        "started_at": started,
        "requests": {"REGISTER": registers},
        "call_attempts": calls,
        "state": state,
        "peers": peers or {},
    }


def test_rates_over_the_last_minute_with_a_fake_clock():
    now = [1000.0]
    rates = Rates(clock=lambda: now[0])
    assert rates.of("n1")["register_rate"] is None
    rates.record({"n1": status(registers=10, calls=1), "n2": {"error": "no answer"}})
    now[0] += 30
    rates.record({"n1": status(registers=70, calls=4)})
    assert rates.of("n1") == {"register_rate": 2.0, "call_rate": 0.1, "window": 30.0}
    now[0] += 40  # the first sample leaves the window
    rates.record({"n1": status(registers=150, calls=4)})
    assert rates.of("n1") == {"register_rate": 2.0, "call_rate": 0.0, "window": 40.0}
    now[0] += 5
    rates.record({"n1": status(started=200.0, registers=3)})  # a new process
    assert rates.of("n1")["register_rate"] is None
    now[0] += WINDOW * 2
    assert rates.of("n1")["register_rate"] is None  # nothing within the last minute
    rates.forget({"n2"})
    assert "n1" not in rates.samples


def test_rates_ignore_answers_without_counters_and_bound_their_samples():
    rates = Rates(clock=lambda: 5.0)
    rates.record({"n1": {"state": "synced"}, "n2": "junk", "n3": {"requests": "x"}})
    assert rates.samples == {}
    for _ in range(1000):
        rates.record({"n1": status()})
    assert len(rates.samples["n1"]) <= 64


def test_health_words():
    states = {
        "a": status(peers={"b": {"liveness": "alive"}, "c": {"liveness": "suspected"}}),
        "b": status(state="syncing"),
        "c": status(),
        "d": {"error": "no answer"},
        "e": status(state="degraded"),
    }
    assert cluster.health(states) == {
        "a": "alive",
        "b": "syncing",
        "c": "suspected",
        "d": "dead",
        "e": "degraded",
    }


# -- two real nodes -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def two(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("overview"))
    rows = write_users_csv(os.path.join(work, "users.csv"), 4)
    c = Cluster(work, n=2, settings=SETTINGS)
    c.provision(os.path.join(work, "users.csv"))
    c.start()
    try:
        assert c.wait_synced(20)
        for node in c.nodes:
            node.rows = dict(rows)
        yield c
    finally:
        c.stop()


@pytest.fixture
def dashboard(two, tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    for node in two.nodes:
        m = two.members[node.id]
        ms.save_node(node.id, f"{node.address}:{node.port}", m.control, m.public_key)
    ms.save_node("ghost", "127.0.0.1:9", "tcp://127.0.0.1:9", "k" * 40)
    pusher = Pusher(two.client_public, two.client_secret)
    try:
        yield create_app({"SECRET_KEY": "test-key"}, pusher), two
    finally:
        pusher.bus.close()
        ms.close_master_store()


def register(node, user, expires=3600) -> int:
    c = SipClient(
        (node.address, node.port), user, node.rows[user], node.domain, t1=0.25, timeout=5.0
    )
    try:
        return c.register(expires).status
    finally:
        c.close()


def test_api_nodes_shows_health_rates_bindings_and_lag_per_peer(dashboard):
    app, two = dashboard
    first, second = two.nodes
    c = app.test_client()
    before = {n["node_id"]: n for n in c.get("/api/nodes", headers=basic()).json["nodes"]}
    assert before[first.id]["health"] == "alive" and before[first.id]["uptime"] > 0
    assert before["ghost"]["health"] == "dead" and before["ghost"]["uptime"] is None
    assert before[first.id]["config_current"] is True
    for user in ("user1", "user2", "user3"):
        assert register(first, user) == 200
    deadline = time.monotonic() + 10
    while first.id not in (two.control(second, "status").get("peer_lag_ms") or {}):
        assert time.monotonic() < deadline, "node2 holds no lag from node1"
        time.sleep(0.05)
    time.sleep(0.2)  # the rates need a span between samples
    now = {n["node_id"]: n for n in c.get("/api/nodes", headers=basic()).json["nodes"]}
    row = now[first.id]
    assert row["register_rate"] > 0 and 0 < row["window"] <= WINDOW, row
    assert row["bindings"] >= 3 and now[second.id]["bindings"] >= 3
    assert now[second.id]["replication_lag_ms"][first.id] >= 0
    assert now[second.id]["register_rate"] == 0.0

    page = login(c) and c.get("/").get_data(as_text=True)
    assert page.count('class="state">alive') == 2 and 'class="state">dead' in page
    assert f"{first.id}: " in page  # the lag from node1, on node2's row


def test_metrics_parse_and_count_by_method_and_code(dashboard):
    app, two = dashboard
    first, second = two.nodes
    c = app.test_client()
    m = parse_exposition(c.get("/metrics", headers=basic()).get_data(as_text=True))
    registers = value(m, "tandem_node_requests_total", node=first.id, method="REGISTER")
    oks = value(m, "tandem_node_responses_total", node=first.id, code="200")
    challenges = value(m, "tandem_node_responses_total", node=first.id, code="401")
    assert register(first, "user0") == 200
    c2 = SipClient(
        (first.address, first.port), "user0", "wrong", first.domain, t1=0.25, timeout=5.0
    )
    try:
        with pytest.raises(SipClientError, match="401"):
            c2.register()
    finally:
        c2.close()
    m = parse_exposition(c.get("/metrics", headers=basic()).get_data(as_text=True))
    assert value(m, "tandem_node_requests_total", node=first.id, method="REGISTER") >= registers + 3
    assert value(m, "tandem_node_responses_total", node=first.id, code="200") >= oks + 1
    assert value(m, "tandem_node_responses_total", node=first.id, code="401") >= challenges + 2
    assert value(m, "tandem_node_health", node=first.id, state="alive") == 1
    assert value(m, "tandem_node_health", node="ghost", state="dead") == 1
    assert value(m, "tandem_node_up", node="ghost") == 0
    assert value(m, "tandem_node_uptime_seconds", node=first.id) > 0
    assert value(m, "tandem_node_calls_total", node=first.id) >= 0
    assert value(m, "tandem_node_synced", node=second.id) == 1
    assert value(m, "tandem_node_bindings", node=second.id) >= 1
    assert value(m, "tandem_node_replication_lag_ms", node=second.id, peer=first.id) >= 0
    assert not any(ls.get("node") == "ghost" for ls, _ in m["tandem_node_requests_total"])


def test_a_hostile_method_is_counted_as_other(dashboard):
    app, two = dashboard
    first = two.nodes[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.bind((first.address, 0))
        port = s.getsockname()[1]
        for k in range(5):
            method = f"XMETHOD{k}"
            s.sendto(
                (
                    f"{method} sip:{first.domain} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {first.address}:{port};branch=z9hG4bK-x{k}\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:a@{first.domain}>;tag=1\r\n"
                    f"To: <sip:b@{first.domain}>\r\nCall-ID: x{k}\r\nCSeq: 1 {method}\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode(),
                (first.address, first.port),
            )
            s.recvfrom(65535)
    m = parse_exposition(app.test_client().get("/metrics", headers=basic()).get_data(as_text=True))
    assert value(m, "tandem_node_requests_total", node=first.id, method="other") >= 5
    assert not any(
        ls.get("method", "").startswith("XMETHOD") for ls, _ in m["tandem_node_requests_total"]
    )


def test_parser_refuses_bad_lines():
    for bad in (
        "x 1\n",
        '# TYPE x gauge\nx{a="1} 1\n',
        "# TYPE x gauge\nx one\n",
        "# TYPE x gauge\n# TYPE x gauge\n",
        "# TYPE x gauge\nx 1",
    ):
        with pytest.raises((AssertionError, ValueError)):
            parse_exposition(bad)


def test_nodes_and_metrics_need_an_admin(dashboard):
    app, _two = dashboard
    c = app.test_client()
    assert c.get("/api/nodes").status_code == 401
    assert c.get("/metrics", headers=basic("wrong")).status_code == 401
    assert c.get("/").status_code == 302


def test_the_sampler_feeds_rates_from_brief_status_answers(dashboard):
    app, two = dashboard
    first = two.nodes[0]
    pusher = app.extensions["pusher"]
    rates = Rates()
    sampler = RateSampler(pusher.bus, rates, every=0.1)
    with app.app_context():
        sampler.sample()
        assert register(first, "user2") == 200
        time.sleep(0.05)
        sampler.sample()
    got = rates.of(first.id)
    assert got["register_rate"] > 0 and got["window"] > 0, got
    assert "ghost" not in rates.samples  # no answer, no sample
    ms.remove_node(first.id)
    with app.app_context():
        sampler.sample()
    assert first.id not in rates.samples  # a removed node is forgotten
