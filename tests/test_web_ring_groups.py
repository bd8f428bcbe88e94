"""Ring groups and call limits on the dashboard (web.ring_groups, store.ring_groups): the
JSON API and the page, each change a configuration version carrying the plan; hostile
requests (unauthenticated, forged without CSRF, looping, oversized, malformed) refused."""

import json
import re

import pytest

from store import dialplan as dp
from store import master as ms
from store import ring_groups as rg
from store.db import StoreError
from tests.test_audit import rows
from tests.test_web import PASSWORD, Poked, basic, login
from web import create_app

GW = {"name": "carrier", "host": "localhost", "port": 5080}
SALES = {
    "name": "sales",
    "numbers": ["300", "+15551230300"],
    "members": ["alice", "bob"],
    "strategy": "sequential",
    "ring_timeout": 15,
    "fallback": "sip:vm@vm.example.test",
}


@pytest.fixture
def app(tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    yield create_app({"SECRET_KEY": "test-key", "LOGIN_FAILURES": 3}, Poked())
    ms.close_master_store()


def api(client, method, path, body=None, headers=None, raw=None):
    return client.open(
        f"/api/dialplan{path}",
        method=method,
        data=raw if raw is not None else (json.dumps(body) if body is not None else None),
        content_type="application/json",
        headers=basic() if headers is None else headers,
    )


def token(html: str, prefix: str = "") -> str:
    return re.search(rf'name="{prefix}csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def test_groups_and_limits_through_the_api_are_pushed(app):
    c = app.test_client()
    assert api(c, "POST", "/gateways", GW).status_code == 200
    assert api(c, "POST", "/groups", SALES).status_code == 200
    assert (
        api(
            c, "POST", "/groups", {"name": "all", "numbers": ["400"], "members": ["sales", "carol"]}
        ).status_code
        == 200
    )
    version = api(c, "PUT", "/limits", {"user": 2, "gateways": {"carrier": 10}}).get_json()[
        "version"
    ]
    pushed = ms.config_for(version)["dialplan"]
    assert [g["name"] for g in pushed["groups"]] == ["sales", "all"]
    assert pushed["limits"] == {"user": 2, "gateways": {"carrier": 10}}
    assert api(c, "GET", "/groups").get_json()["groups"][0] == SALES
    assert api(c, "GET", "/limits").get_json()["limits"]["user"] == 2
    assert api(c, "GET", "/calls").get_json() == {"nodes": {}}  # no bus in this test
    r = api(c, "DELETE", "/groups/sales")
    assert r.status_code == 400 and "has sales as a member" in r.get_json()["error"]
    assert api(c, "DELETE", "/groups/all").status_code == 200
    assert api(c, "DELETE", "/groups/all").status_code == 404
    assert app.extensions["pusher"].count == 5


def test_numbers_of_groups_users_and_user_names_never_clash(app):
    rg.save_group(SALES)
    with pytest.raises(StoreError, match="extension or DID"):
        ms.save_user("300", "a-password-of-300")
    ms.save_user("301", "a-password-of-301")
    with pytest.raises(StoreError, match="301 is the name of a user"):
        rg.save_group({**SALES, "name": "x", "numbers": ["301"]})
    with pytest.raises(StoreError, match="already group sales's"):
        rg.save_group({**SALES, "name": "x", "numbers": ["300"]})
    dp.save_user_policy("alice", {"numbers": ["400"]})
    with pytest.raises(StoreError, match="already alice's"):
        rg.save_group({**SALES, "name": "y", "numbers": ["400"]})


@pytest.mark.parametrize(
    "body, message",
    [
        ({**SALES, "members": ["sales"]}, "contains itself"),
        ({**SALES, "fallback": "300"}, "loop"),
        ({**SALES, "members": [f"u{k}" for k in range(33)]}, "members must be"),
        ({**SALES, "ring_timeout": -5}, "ring_timeout"),
        ({**SALES, "fallback": "sip:vm@<evil>"}, "fallback"),
        ({**SALES, "name": "<script>"}, "name must be"),
        ({"numbers": ["300"]}, "with a name"),
        (["a list"], "with a name"),
    ],
)
def test_bad_groups_get_400_with_the_reason(app, body, message):
    r = api(app.test_client(), "POST", "/groups", body)
    assert r.status_code == 400 and message in r.get_json()["error"]
    assert rg.get_groups() == []


def test_hostile_api_requests(app):
    c = app.test_client()
    for method, path in (
        ("GET", "/groups"),
        ("POST", "/groups"),
        ("DELETE", "/groups/x"),
        ("GET", "/limits"),
        ("PUT", "/limits"),
        ("GET", "/calls"),
    ):
        assert api(c, method, path, {}, headers={}).status_code == 401, (method, path)
    r = api(c, "PUT", "/limits", {"gateways": {"nowhere": 1}})
    assert r.status_code == 400 and "no gateway named 'nowhere'" in r.get_json()["error"]
    for bad in ({"user": -1}, {"user": 10**12}, {"user": "1"}, ["a list"], {"x": 1}):
        assert api(c, "PUT", "/limits", bad).status_code == 400, bad
    assert api(c, "PUT", "/limits", raw=b"not json").status_code == 400
    r = api(c, "POST", "/groups", raw=b"{" + b" " * (dp.MAX_DOCUMENT + 8192) + b"}")
    assert r.status_code == 413
    assert rg.get_limits() == {} and rg.get_groups() == []


def test_the_page_needs_login_and_csrf(app):
    c = app.test_client()
    r = c.get("/dialplan/groups")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    login(c)
    r = c.post("/dialplan/groups", data={"group-body": json.dumps(SALES)})
    assert r.status_code == 400 and rg.get_groups() == []  # no CSRF token
    page = c.get("/dialplan/groups").get_data(as_text=True)
    r = c.post(
        "/dialplan/groups",
        data={"group-body": json.dumps(SALES), "group-csrf_token": token(page, "group-")},
    )
    assert r.status_code == 302 and rg.get_groups() == [SALES]
    r = c.post(
        "/dialplan/groups",
        data={
            "group-body": json.dumps({**SALES, "members": []}),
            "group-csrf_token": token(page, "group-"),
        },
    )
    assert r.status_code == 400 and "members must be" in r.get_data(as_text=True)
    r = c.post(
        "/dialplan/groups",
        data={"limits-body": '{"user": 3}', "limits-csrf_token": token(page, "limits-")},
    )
    assert r.status_code == 302 and rg.get_limits() == {"user": 3}
    shown = c.get("/dialplan/groups").get_data(as_text=True)
    assert "<td>300, +15551230300</td><td>sequential</td>" in shown
    assert c.post("/dialplan/groups/sales/delete").status_code == 400
    r = c.post("/dialplan/groups/sales/delete", data={"csrf_token": token(shown)})
    assert r.status_code == 302 and rg.get_groups() == []


def test_changes_are_audited_as_dial_plan_changes(app):
    c = app.test_client()
    assert api(c, "POST", "/groups", SALES).status_code == 200
    assert api(c, "PUT", "/limits", {"user": -1}).status_code == 400
    refused, added = rows(action="dial plan changed")
    assert added["ok"] and added["after"]["groups"] == [SALES]
    assert not refused["ok"] and "0-100000" in refused["result"]
