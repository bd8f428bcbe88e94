"""The registrations page and ``/api/registrations``: nodes' pages merged exactly,
filters, keyset paging, the load split and its chart, and hostile queries.

Three in-process nodes are real control servers (CurveZMQ) answering the
``bindings`` command over real location tables; the dashboard asks them
through the master's real bus.
"""

import re
import time
import xml.etree.ElementTree as ET

import pytest

from actors.bus import CONTROL_DOMAIN, Bus, BusError, generate_keypair
from actors.control import ControlServer
from actors.registrations import bindings_page
from sipcore.location import Binding, Location
from store import master as ms
from tests.test_web import PASSWORD, basic, login
from web import create_app
from web.charts import split_chart
from web.cluster import balance_index, merge


def binding(
    user: str, origin: str, n: int = 0, ttl: float = 600.0, now: float | None = None, **kw
) -> Binding:
    """A binding expiring ``ttl`` s after ``now`` (the time of the call: a time taken when
    the module is imported is long past when a whole suite reaches these tests)."""
    expires = (time.time() if now is None else now) + ttl
    return Binding(
        f"sip:{user}@example.test",
        f"sip:{user}@10.0.0.{n}:5060",
        f"sip:{user}@10.0.0.{n}:5060",
        expires,
        f"c-{user}-{n}",
        1,
        origin=origin,
        user_agent=kw.get("ua", "phone/1"),
        received=f"udp:10.0.0.{n}:5060",
    )


class MasterBus:
    """What the app needs of the pusher: its bus (pokes are counted)."""

    def __init__(self, bus):
        self.bus, self.pokes = bus, 0

    def poke(self):
        self.pokes += 1


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """Three nodes (node1..node3) with their own tables, registered on the master (given
    5 s to answer: a loaded machine makes the first CurveZMQ handshakes slow)."""
    monkeypatch.setattr("web.cluster.ASK_TIMEOUT", 5.0)
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    master_pub, master_sec = generate_keypair()
    master = Bus(master_pub, master_sec, "master")
    nodes, made = {}, []
    for k in (1, 2, 3):
        pub, sec = generate_keypair()
        bus = Bus(pub, sec, f"node{k}")
        bus.allow(CONTROL_DOMAIN, {master_pub: "master"})
        location = Location()
        control = ControlServer(
            bus, "tcp://127.0.0.1:*", {"bindings": lambda r, loc=location: bindings_page(loc, r)}
        )
        control.start()
        made.append((bus, control))
        ms.save_node(f"node{k}", f"127.0.0.1:{5060 + k}", control.sock.last_endpoint.decode(), pub)
        nodes[f"node{k}"] = location
    app = create_app({"SECRET_KEY": "k"}, MasterBus(master))
    yield app, nodes
    for bus, control in made:
        control.stop()
        bus.close()
    master.close()
    ms.close_master_store()


def everywhere(nodes, b: Binding, on=("node1", "node2", "node3")) -> None:
    for node_id in on:
        nodes[node_id].put(b)


def test_node_page_filters_pages_by_key_and_counts_by_primary():
    loc, now = Location(), time.time()
    for k in range(10):
        loc.put(binding(f"u{k}", "node1" if k < 7 else "node2", k, now=now))
    loc.put(binding("gone", "node2", ttl=-1, now=now))
    first = bindings_page(loc, {"limit": 4}, now)
    assert [b["aor"] for b in first["bindings"]] == [f"sip:u{k}@example.test" for k in range(4)]
    assert first["total"] == 10 and first["by_origin"] == {"node1": 7, "node2": 3}
    last = first["bindings"][-1]
    rest = bindings_page(loc, {"after": [last["aor"], last["key"]], "limit": 100}, now)
    assert [b["aor"] for b in rest["bindings"]] == [f"sip:u{k}@example.test" for k in range(4, 10)]
    only = bindings_page(loc, {"origin": "node2", "user": "u8"}, now)
    assert only["total"] == 1 and only["bindings"][0]["origin"] == "node2"
    for bad in (
        {"limit": -1},
        {"limit": True},
        {"after": "x"},
        {"after": ["a", 1]},
        {"user": "x" * 5000},
        {"origin": 3},
        {"after": ["a", "b", "c"]},
    ):
        with pytest.raises(BusError):
            bindings_page(loc, bad, now)


def test_merge_is_exact_across_pages_and_takes_each_primarys_own_count():
    a = {
        "total": 3,
        "by_origin": {"node1": 2, "node2": 1},
        "bindings": [
            {"aor": "sip:a@x", "key": "1"},
            {"aor": "sip:b@x", "key": "1"},
            {"aor": "sip:c@x", "key": "1"},
        ],
    }
    b = {
        "total": 2,
        "by_origin": {"node1": 1, "node2": 1},
        "bindings": [{"aor": "sip:b@x", "key": "1"}, {"aor": "sip:c@x", "key": "1"}],
    }
    found = merge({"node1": a, "node2": b, "node3": {"error": "no reply"}}, 2)
    assert [r["aor"] for r in found["bindings"]] == ["sip:a@x", "sip:b@x"] and found["more"]
    assert found["bindings"][1]["present_on"] == ["node1", "node2"]
    assert found["by_primary"] == {"node1": 2, "node2": 1}  # each primary's own count
    assert found["errors"] == {"node3": "no reply"} and found["total"] == 3
    assert balance_index({"node1": 10}) == 1.0
    assert balance_index({"node1": 5, "node2": 5, "node3": 5}) == pytest.approx(3.0)
    assert balance_index({}) == 0.0


def test_split_chart_is_valid_svg_with_escaped_names():
    svg = str(split_chart({"node1": 3, "<b>&": 1}))
    root = ET.fromstring(svg)
    assert len(root.findall("{http://www.w3.org/2000/svg}rect")) == 2 and "<b>" not in svg
    assert "75.0%" in svg and str(split_chart({})) == ""


def test_page_and_api_merge_every_node_with_paging_and_filters(cluster):
    app, nodes = cluster
    for k in range(12):
        everywhere(nodes, binding(f"user{k:02d}", f"node{k % 3 + 1}", k))
    nodes["node1"].put(binding("lonely", "node1", 99, ua="<script>x</script>"))
    c = app.test_client()
    found = c.get("/api/registrations?limit=5", headers=basic()).json
    assert found["bindings"][0]["aor"] == "sip:lonely@example.test"
    assert found["bindings"][0]["present_on"] == ["node1"]
    assert all(r["present_on"] == ["node1", "node2", "node3"] for r in found["bindings"][1:])
    assert found["by_primary"] == {"node1": 5, "node2": 4, "node3": 4} and found["total"] == 13
    assert 2.9 < found["balance_index"] <= 3.0 and found["errors"] == {}
    seen = [r["aor"] for r in found["bindings"]]
    while found["next"]:
        found = c.get(
            "/api/registrations", query_string={"limit": 5, "after": found["next"]}, headers=basic()
        ).json
        seen += [r["aor"] for r in found["bindings"]]
    assert len(seen) == 13 == len(set(seen)) and seen == sorted(seen)
    only = c.get("/api/registrations?node=node2&user=user0", headers=basic()).json
    assert [r["aor"] for r in only["bindings"]] == [
        "sip:user01@example.test",
        "sip:user04@example.test",
        "sip:user07@example.test",
    ]
    login(c)
    page = c.get("/registrations?limit=5").get_data(as_text=True)
    assert 'id="split-chart"' in page and 'id="next-page"' in page
    assert "&lt;script&gt;" in page and "<script>x" not in page
    assert "Expires in" in page and re.search(r"<td>(5\d\d|600) s</td>", page)
    page = c.get("/registrations?node=node3").get_data(as_text=True)
    assert "sip:user02@example.test" in page and "sip:user01@example.test" not in page


def test_a_dead_node_is_named_and_the_rest_is_shown(cluster):
    app, nodes = cluster
    everywhere(nodes, binding("amy", "node1"))
    ms.save_node("node4", "127.0.0.1:5099", "tcp://127.0.0.1:9", generate_keypair()[0])
    found = app.test_client().get("/api/registrations", headers=basic()).json
    assert "node4" in found["errors"] and found["bindings"][0]["aor"] == "sip:amy@example.test"


def test_registrations_need_login_and_refuse_bad_filters(cluster):
    app, _ = cluster
    c = app.test_client()
    assert c.get("/api/registrations").status_code == 401
    r = c.get("/registrations")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    for query in (
        "limit=0",
        "limit=100000000000000000000",
        "limit=-3",
        "limit=abc",
        "node=nobody",
        "user=" + "x" * 65,
        "after=nospace",
        "after=" + "a " * 3000,
    ):
        r = c.get(f"/api/registrations?{query}", headers=basic())
        assert r.status_code == 400 and "error" in r.json, query
    login(c)
    r = c.get("/registrations?limit=99999999999999999999999", follow_redirects=True)
    assert r.status_code == 200 and "Filter not used" in r.get_data(as_text=True)
    far = c.get("/api/registrations?after=sip:zzzz%20zzz", headers=basic()).json
    assert far["bindings"] == [] and far["next"] is None


def test_api_without_a_bus_says_so(tmp_path):
    from tests.test_web import Poked

    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    try:
        c = create_app({"SECRET_KEY": "k"}, Poked()).test_client()
        assert c.get("/api/registrations", headers=basic()).status_code == 503
        login(c)
        assert c.get("/registrations").status_code == 200
    finally:
        ms.close_master_store()
