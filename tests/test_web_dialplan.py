"""The dial plan on the dashboard (web.dialplan, store.dialplan): the JSON API and the page,
each change a configuration version that carries the plan; hostile requests refused."""

import json

import pytest

from store import dialplan as dp
from store import master as ms
from tests.test_web import PASSWORD, Poked, basic, login, token
from web import create_app


@pytest.fixture
def app(tmp_path):
    """The dashboard on a fresh master store, with an admin and a counting pusher."""
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    yield create_app({"SECRET_KEY": "test-key", "LOGIN_FAILURES": 3}, Poked())
    ms.close_master_store()


GW = {"name": "carrier", "host": "localhost", "port": 5080, "transport": "udp"}
PSAP = {"name": "psap", "host": "127.0.0.9", "emergency": True}
RULE = {"pattern": "9.", "strip": 1, "gateways": ["carrier"], "permission": "local"}


def api(client, method, path, body=None, headers=None, raw=None):
    return client.open(
        f"/api/dialplan{path}",
        method=method,
        data=raw if raw is not None else (json.dumps(body) if body is not None else None),
        content_type="application/json",
        headers=basic() if headers is None else headers,
    )


def test_gateways_rules_users_and_the_tester_through_the_api(app):
    c = app.test_client()
    poked = app.extensions["pusher"]
    assert api(c, "POST", "/gateways", GW).status_code == 200
    assert api(c, "POST", "/gateways", PSAP).status_code == 200
    assert api(c, "POST", "/rules", {"rule": RULE}).status_code == 200
    r = api(
        c,
        "POST",
        "/rules",
        {
            "rule": {
                "pattern": "9011.",
                "strip": 4,
                "prepend": "+",
                "gateways": ["carrier"],
                "permission": "international",
            },
            "position": 0,
        },
    )
    assert r.status_code == 200
    assert (
        api(
            c,
            "PUT",
            "/users/alice",
            {"permissions": ["local"], "caller_id": "+15550001", "emergency_callback": "+15550911"},
        ).status_code
        == 200
    )
    assert (
        api(
            c,
            "PUT",
            "/settings",
            {
                "default_callback": "+15550000",
                "locations": [{"network": "10.1.0.0/16", "callback": "+15551000"}],
            },
        ).status_code
        == 200
    )
    r = api(c, "PUT", "/settings", {"locations": [{"network": "10.1.0.0/99", "callback": "1"}]})
    assert r.status_code == 400 and "locations[0]: network" in r.get_json()["error"]
    assert api(c, "PUT", "/settings", {"secret": 1}).status_code == 400
    got = api(c, "GET", "/which?number=9011441234").get_json()
    assert got["rule"]["index"] == 0 and got["sent"] == "+441234"
    assert got["gateways"] == [
        {"name": "carrier", "uri": "sip:+441234@localhost:5080;transport=udp"}
    ]
    assert api(c, "GET", "/which?number=95551234").get_json()["rule"]["pattern"] == "9."
    assert api(c, "GET", "/which?number=5551234").get_json()["rule"] is None
    assert api(c, "POST", "/rules/1/move", {"to": 0}).status_code == 200
    assert api(c, "GET", "/which?number=9011441234").get_json()["rule"]["pattern"] == "9."
    version = api(c, "DELETE", "/rules/0").get_json()["version"]
    assert poked.count == 8
    pushed = ms.config_for(version)["dialplan"]
    assert [r["pattern"] for r in pushed["rules"]] == ["9011."]
    assert pushed["users"]["alice"]["emergency_callback"] == "+15550911"
    assert api(c, "DELETE", "/rules/7").status_code == 404
    assert api(c, "GET", "").get_json()["plan"] == pushed


def test_before_any_plan_no_version_carries_one(app):
    assert "dialplan" not in ms.config_for(ms.new_version("x"))


def test_hostile_api_requests(app):
    c = app.test_client()
    for method, path in (
        ("GET", ""),
        ("PUT", ""),
        ("POST", "/gateways"),
        ("GET", "/which"),
        ("DELETE", "/rules/0"),
        ("GET", "/health"),
    ):
        r = api(c, method, path, {}, headers={})
        assert r.status_code == 401, (method, path)
    assert api(c, "POST", "/gateways", GW).status_code == 200
    r = api(c, "POST", "/rules", {"rule": {**RULE, "pattern": "9.x"}})
    assert r.status_code == 400 and "'.' (the tail) must come last" in r.get_json()["error"]
    r = api(c, "POST", "/rules", {"rule": {**RULE, "gateways": ["nowhere"]}})
    assert r.status_code == 400 and "no gateway named 'nowhere'" in r.get_json()["error"]
    r = api(c, "POST", "/gateways", {"name": "x", "host": "h>;evil"})
    assert r.status_code == 400
    r = api(c, "PUT", "", raw=b"{" + b" " * (dp.MAX_DOCUMENT + 8192) + b"}")
    assert r.status_code == 413
    assert api(c, "PUT", "", raw=b"not json").status_code == 400
    assert api(c, "PUT", "", ["a list"]).status_code == 400
    assert api(c, "GET", "/which?number=1;drop").status_code == 400
    assert api(c, "POST", "/rules", {"rule": RULE}).status_code == 200
    r = api(c, "DELETE", "/gateways/carrier")
    assert r.status_code == 400 and "no gateway named 'carrier'" in r.get_json()["error"]
    assert dp.get_dialplan()["gateways"] == [GW]
    for path in ("", "/which?number=1", "/health"):
        r = api(c, "GET", path, headers=basic("wrong"))  # 429 once the login limiter bans
        assert r.status_code in (401, 429) and "plan" not in r.get_json()


def test_the_page_needs_login_and_csrf_and_shows_the_tester(app):
    c = app.test_client()
    r = c.get("/dialplan")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    login(c)
    doc = {
        "gateways": [GW],
        "rules": [RULE],
        "users": {},
        "locations": [{"network": "10.1.0.0/16", "callback": "+15551000"}],
    }
    r = c.post("/dialplan", data={"plan": json.dumps(doc)})
    assert r.status_code == 400 and dp.get_dialplan()["rules"] == []
    page = c.get("/dialplan").get_data(as_text=True)
    r = c.post("/dialplan", data={"plan": json.dumps(doc), "csrf_token": token(page)})
    assert r.status_code == 302 and dp.get_dialplan()["rules"] == [RULE]
    bad = c.post(
        "/dialplan",
        data={
            "plan": json.dumps({**doc, "rules": [{**RULE, "pattern": "9q"}]}),
            "csrf_token": token(page),
        },
    )
    assert bad.status_code == 400 and "is not a digit" in bad.get_data(as_text=True)
    shown = c.get("/dialplan?number=95551234").get_data(as_text=True)
    assert "Rule 0 (9., needs local): sends 5551234 to carrier" in shown
    assert "<td>10.1.0.0/16</td><td>+15551000</td>" in shown
    assert c.post("/dialplan/rules/0/delete").status_code == 400
    r = c.post("/dialplan/rules/0/delete", data={"csrf_token": token(page)})
    assert r.status_code == 302 and dp.get_dialplan()["rules"] == []
