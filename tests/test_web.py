"""The dashboard through Flask's test client: login, CSRF, users, API, hostile input."""

import base64
import io
import re

import pytest

from store import master as ms
from web import MAX_UPLOAD, create_app

PASSWORD = "admin-pw-123"


class Poked:
    """Counts the pusher pokes (the real pusher is tested with real nodes)."""

    def __init__(self):
        self.count = 0

    def poke(self):
        self.count += 1


@pytest.fixture
def app(tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    ms.save_node("node1", "127.0.0.11:5060", "tcp://127.0.0.11:7003", "k" * 40)
    app = create_app({"SECRET_KEY": "test-key", "LOGIN_FAILURES": 3}, Poked())
    yield app
    ms.close_master_store()


def token(html: str) -> str:
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def login(client, password=PASSWORD):
    page = client.get("/login").get_data(as_text=True)
    return client.post(
        "/login", data={"csrf_token": token(page), "username": "admin", "password": password}
    )


def basic(password=PASSWORD, user="admin"):
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def test_pages_need_login(app):
    c = app.test_client()
    for path in ("/", "/users", "/registrations"):
        r = c.get(path)
        assert r.status_code == 302 and "/login" in r.headers["Location"]
    r = c.post("/users", data={"username": "x", "password": "y"})
    assert r.status_code in (302, 400)
    assert ms.count_users() == 0


def test_api_without_credentials_gets_401_and_no_data(app):
    c = app.test_client()
    for method, path in (
        ("get", "/api/users"),
        ("get", "/api/nodes"),
        ("get", "/api/config"),
        ("post", "/api/users"),
        ("delete", "/api/users/x"),
        ("get", "/metrics"),
    ):
        r = getattr(c, method)(path)
        assert r.status_code == 401, path
        assert "node1" not in r.get_data(as_text=True)
    assert c.get("/api/nodes", headers=basic("wrong")).status_code == 401


def test_login_then_add_user_on_the_page(app):
    c = app.test_client()
    r = login(c)
    assert r.status_code == 302
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = c.get("/users").get_data(as_text=True)
    r = c.post(
        "/users",
        data={"csrf_token": token(page), "username": "zed", "password": "zed-pw"},
        follow_redirects=True,
    )
    assert "User zed saved: configuration 1." in r.get_data(as_text=True)
    assert app.extensions["pusher"].count == 1
    assert "zed-pw" not in c.get("/users").get_data(as_text=True)
    assert "(behind)" in c.get("/").get_data(as_text=True)
    assert c.get("/registrations?user=zed").status_code == 200


def test_form_without_csrf_token_is_refused(app):
    c = app.test_client()
    login(c)
    r = c.post("/users", data={"username": "zed", "password": "zed-pw"})
    assert r.status_code == 400
    assert c.post("/login", data={"username": "admin", "password": PASSWORD}).status_code == 400
    assert ms.count_users() == 0


def test_bad_user_gets_a_message_and_nothing_is_written(app):
    c = app.test_client()
    login(c)
    page = c.get("/users").get_data(as_text=True)
    r = c.post("/users", data={"csrf_token": token(page), "username": "a b", "password": "x"})
    assert r.status_code == 400 and "invalid username" in r.get_data(as_text=True)
    assert ms.count_users() == 0 and ms.current_version() == 0


def test_wrong_password_flood_is_stopped(app):
    c = app.test_client()
    for _ in range(3):
        assert login(c, "wrong").status_code == 401
    assert login(c).status_code == 429, "the right password too waits out the window"
    assert c.get("/api/users", headers=basic()).status_code == 429


def test_api_adds_lists_and_deletes_users(app):
    c = app.test_client()
    r = c.post("/api/users", json={"username": "zed", "password": "pw"}, headers=basic())
    assert r.status_code == 201 and r.json == {"username": "zed", "version": 1}
    assert c.get("/api/users", headers=basic()).json["users"][0]["username"] == "zed"
    assert "ha1" not in c.get("/api/users", headers=basic()).get_data(as_text=True)
    assert c.get("/api/config", headers=basic()).json == {
        "version": 1,
        "domain": "example.test",
        "nodes": {"node1": 0},
        "settings": {
            "aliases": [],
            "auth_algorithms": ["MD5"],
            "min_expires": 60,
            "max_expires": 3600,
            "default_expires": 3600,
        },
    }
    assert c.post("/api/users", json=["x"], headers=basic()).status_code == 400
    assert (
        c.post("/api/users", json={"username": "a:b", "password": "p"}, headers=basic()).status_code
        == 400
    )
    assert c.delete("/api/users/zed", headers=basic()).status_code == 200
    assert c.delete("/api/users/zed", headers=basic()).status_code == 404


def test_csv_import_all_or_nothing(app):
    c = app.test_client()
    login(c)
    page = c.get("/users").get_data(as_text=True)
    good = b"username,password\nu1,p1\nu2,p2\n"
    r = c.post(
        "/users/import", data={"csrf_token": token(page), "file": (io.BytesIO(good), "good.csv")}
    )
    assert r.status_code == 303
    assert app.extensions["user_imports"].wait(10)
    assert "2 users imported in" in c.get(r.headers["Location"]).get_data(as_text=True)
    bad = b"username,password\nu3,p3\nu 4,p4\n"
    r = c.post(
        "/users/import", data={"csrf_token": token(page), "file": (io.BytesIO(bad), "bad.csv")}
    )
    assert app.extensions["user_imports"].wait(10)
    assert "bad.csv line 3" in c.get(r.headers["Location"]).get_data(as_text=True)
    assert ms.count_users() == 2


def test_oversized_import_is_refused(app):
    c = app.test_client()
    login(c)
    page = c.get("/users").get_data(as_text=True)
    big = b"username,password\n" + b"u,p\n" * (MAX_UPLOAD // 4 + 1)
    r = c.post(
        "/users/import", data={"csrf_token": token(page), "file": (io.BytesIO(big), "big.csv")}
    )
    assert r.status_code == 413
    assert ms.count_users() == 0


def test_example_settings_parse_and_bad_ones_are_named(tmp_path):
    from web.settings import SettingsError, load_settings

    settings = load_settings("conf/master.example.toml")
    assert settings.listen == "127.0.0.10:8080" and len(settings.nodes) == 2
    assert settings.database_url.endswith("var/master/master.db")
    bad = tmp_path / "bad.toml"
    bad.write_text('[master]\nlisten = "x"\ncolour = "red"\n')
    with pytest.raises(SettingsError, match="colour"):
        load_settings(str(bad))
    bad.write_text('[[nodes]]\nid = "n"\n')
    with pytest.raises(SettingsError, match="lacks"):
        load_settings(str(bad))


def test_restart_is_refused_without_a_lab_unknown_node_or_csrf(app):
    c = app.test_client()
    r = c.post("/api/nodes/node1/restart", headers=basic())
    assert r.status_code == 400 and "lab_data" in r.json["error"]
    r = c.post("/api/nodes/nodeX/restart", headers=basic())
    assert r.status_code == 400 and "no node" in r.json["error"]
    assert c.post("/api/nodes/node1/restart").status_code == 401
    login(c)
    assert c.post("/nodes/node1/restart").status_code == 400
    page = c.get("/").get_data(as_text=True)
    r = c.post("/nodes/node1/restart", data={"csrf_token": token(page)}, follow_redirects=True)
    assert "Restart of node1 failed" in r.get_data(as_text=True)


def test_metrics_without_an_answer_say_the_node_is_down(app):
    text = app.test_client().get("/metrics", headers=basic()).get_data(as_text=True)
    assert 'tandem_node_up{node="node1"} 0' in text
    assert "# TYPE tandem_node_bindings gauge" in text and "tandem_users 0" in text


def test_dns_weights_zone_and_export(app):
    c = app.test_client()
    assert c.get("/dns").status_code == 302 and c.get("/dns/zone").status_code == 302
    assert c.get("/api/dns").status_code == 401
    r = c.get("/api/dns", headers=basic())
    assert r.json["weights"] == {"node1": 50}
    assert "_sip._udp.example.test." in r.json["zone"] and " 50 5060 " in r.json["zone"]
    r = c.post("/api/dns", json={"weights": {"node1": 70}}, headers=basic())
    assert r.status_code == 200 and " 70 5060 " in r.json["zone"]
    for bad in ({"node1": 70000}, {"node1": "x"}, {"nodeX": 1}, {"node1": True}):
        r = c.post("/api/dns", json={"weights": bad}, headers=basic())
        assert r.status_code == 400, bad
    assert c.get("/api/dns", headers=basic()).json["weights"] == {"node1": 70}
    login(c)
    page = c.get("/dns").get_data(as_text=True)
    assert c.post("/dns", data={"weight-node1": "10"}).status_code == 400
    r = c.post(
        "/dns", data={"csrf_token": token(page), "weight-node1": "10"}, follow_redirects=True
    )
    assert "Weights saved" in r.get_data(as_text=True)
    r = c.post(
        "/dns", data={"csrf_token": token(page), "weight-node1": "-3"}, follow_redirects=True
    )
    assert "Weights not changed" in r.get_data(as_text=True)
    export = c.get("/dns/zone")
    assert export.headers["Content-Disposition"].endswith("example.test.zone")
    assert " 10 5060 " in export.get_data(as_text=True)
    assert "_sips" not in export.get_data(as_text=True) and "<td>none</td>" in page
    ms.set_tls_port("node1", 5061)  # as the node reported it (web.push)
    assert "_sips._tcp.example.test. IN SRV 10 10 5061 node1.example.test." in c.get(
        "/dns/zone"
    ).get_data(as_text=True)
    assert '"SIPS+D2T"' in c.get("/api/dns", headers=basic()).json["zone"]
    assert c.get("/api/dns", headers=basic()).json["tls_ports"] == {"node1": 5061}
    assert "<td>5061</td>" in c.get("/dns").get_data(as_text=True)
