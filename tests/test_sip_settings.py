"""The master's SIP settings (issue 12): domain aliases, digest algorithms and registrar
expiry, edited on the master (settings page, ``PUT /api/config``), checked there (a bad
value: a clear error, no new version) and applied by a real node without a restart: its
next 401 offers the algorithms, its 200 caps the expiry, a REGISTER for an alias is taken.
A node refuses a bad pushed document by itself too, and keeps good settings across a
restart."""

import re
import time

import pytest

from actors.bus import BusError, generate_keypair
from actors.bus import request as bus_request
from loadtest.harness import Cluster
from loadtest.sipclient import SipClient
from sipcore.sip_settings import DEFAULTS, SettingsError, parse_settings
from store import master as ms
from store.sip_settings import current_settings, save_settings
from tests.test_node import request, sip_exchange
from tests.test_web import PASSWORD, basic, login, token
from web import create_app
from web.push import Pusher

GOOD = {
    **DEFAULTS,
    "aliases": ["Alias.Test", "alias.test", "sip2.example.test"],
    "auth_algorithms": ["SHA-256", "MD5"],
}


def test_a_good_document_is_normalised():
    doc = parse_settings(GOOD, "example.test")
    assert doc["aliases"] == ["alias.test", "sip2.example.test"]
    assert doc["auth_algorithms"] == ["SHA-256", "MD5"]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"aliases": "alias.test"}, "aliases must be a list"),
        ({"aliases": ["bad host!"]}, "is not a host name"),
        ({"aliases": ["example.test"]}, "the domain itself"),
        ({"aliases": ["a.test"] * 33}, "at most 32"),
        ({"aliases": [7]}, "is not a host name"),
        ({"auth_algorithms": []}, "auth_algorithms"),
        ({"auth_algorithms": ["SHA-512"]}, "auth_algorithms"),
        ({"auth_algorithms": ["MD5", "MD5"]}, "auth_algorithms"),
        ({"min_expires": 0}, "min_expires must be whole seconds"),
        ({"max_expires": "3600"}, "max_expires must be whole seconds"),
        ({"default_expires": True}, "default_expires must be whole seconds"),
        ({"max_expires": 10**9}, "max_expires must be whole seconds"),
        ({"min_expires": 600, "default_expires": 300}, "min_expires <= default_expires"),
        ({"colour": "blue"}, "unknown setting"),
    ],
)
def test_bad_documents_say_what_is_wrong(change, message):
    with pytest.raises(SettingsError, match=message):
        parse_settings({**DEFAULTS, **change}, "example.test")
    with pytest.raises(SettingsError, match="missing setting"):
        parse_settings({"aliases": []}, "example.test")
    with pytest.raises(SettingsError, match="JSON object"):
        parse_settings(["x"], "example.test")


# -- the master alone ---------------------------------------------------------------------
@pytest.fixture
def app(tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)

    class Poked:
        count = 0

        def poke(self):
            self.count += 1

    yield create_app({"SECRET_KEY": "test-key"}, Poked())
    ms.close_master_store()


def test_api_config_changes_settings_or_refuses_and_changes_nothing(app):
    c = app.test_client()
    assert c.get("/api/config", headers=basic()).json["settings"] == DEFAULTS
    assert ms.config_for(1).get("settings") is None  # nodes keep their files' values
    r = c.put(
        "/api/config",
        json={"auth_algorithms": ["SHA-256"], "max_expires": 600, "default_expires": 600},
        headers=basic(),
    )
    assert r.status_code == 200 and r.json["settings"]["auth_algorithms"] == ["SHA-256"]
    version = r.json["version"]
    assert app.extensions["pusher"].count == 1
    assert ms.config_for(version)["settings"]["max_expires"] == 600
    for bad in ({"min_expires": -1}, {"aliases": ["<script>"]}, {}, {"nope": 1}, None):
        r = c.put("/api/config", json=bad, headers=basic())
        assert r.status_code == 400 and r.json["error"], bad
    r = c.put("/api/config", data="not json", headers={**basic(), "Content-Type": "text/plain"})
    assert r.status_code == 400
    assert ms.current_version() == version and app.extensions["pusher"].count == 1
    assert current_settings()["max_expires"] == 600
    assert c.put("/api/config", json={"max_expires": 60}).status_code == 401
    assert c.put("/api/config", json={"max_expires": 60}, headers=basic("wrong")).status_code == 401
    assert current_settings()["max_expires"] == 600


def test_settings_page_saves_with_csrf_and_refuses_bad_values(app):
    c = app.test_client()
    assert c.get("/settings").status_code == 302
    login(c)
    page = c.get("/settings").get_data(as_text=True)
    assert 'id="algorithm-SHA-256"' in page and 'value="3600"' in page
    form = {
        "aliases": "alias.test, other.test",
        "algorithm-MD5": "on",
        "algorithm-SHA-256": "on",
        "preferred": "SHA-256",
        "min_expires": "30",
        "default_expires": "300",
        "max_expires": "900",
    }
    assert c.post("/settings", data=form).status_code == 400  # no CSRF token
    assert c.post("/settings", data={**form, "csrf_token": "forged"}).status_code == 400
    assert ms.current_version() == 0
    r = c.post(
        "/settings",
        data={**form, "csrf_token": token(page), "max_expires": "ten"},
        follow_redirects=True,
    )
    assert r.status_code == 400 and "Settings not saved: max_expires" in r.get_data(as_text=True)
    r = c.post(
        "/settings",
        data={**form, "csrf_token": token(page), "algorithm-MD5": "", "algorithm-SHA-256": ""},
    )
    assert r.status_code == 400 and ms.current_version() == 0
    r = c.post("/settings", data={**form, "csrf_token": token(page)}, follow_redirects=True)
    assert "Settings saved: configuration 1." in r.get_data(as_text=True)
    assert current_settings() == {
        "aliases": ["alias.test", "other.test"],
        "auth_algorithms": ["SHA-256", "MD5"],
        "min_expires": 30,
        "max_expires": 900,
        "default_expires": 300,
    }


# -- a real node --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("sipsettings"))
    public, secret = generate_keypair()
    cluster = Cluster(
        work,
        1,
        settings={"heartbeat": 0.2, "alone_wait": 0.5, "sync_timeout": 3.0, "master_key": public},
    )
    cluster.start()
    assert cluster.wait_synced(20)
    ms.init_master_store(f"sqlite:///{work}/master.db")
    ms.setup("example.test")
    for m in cluster.members.values():
        ms.save_node(m.id, "", m.control, m.public_key)
    ms.save_user("zed", "zed-secret-1")
    pusher = Pusher(public, secret, interval=0.2)
    pusher.start()
    pusher.poke()
    try:
        yield cluster, pusher
    finally:
        pusher.stop()
        ms.close_master_store()
        cluster.stop()


def push_and_wait(pusher, version: int, timeout: float = 10.0) -> None:
    pusher.poke()
    deadline = time.monotonic() + timeout
    while min(n["acked_version"] for n in ms.list_nodes()) < version:
        assert time.monotonic() < deadline, ms.list_nodes()
        time.sleep(0.02)


def offered(node, uri="sip:example.test") -> list[str]:
    answer = sip_exchange(node, request("REGISTER", uri=uri))
    assert answer is not None and answer.startswith("SIP/2.0 401"), answer
    return re.findall(r"algorithm=([A-Z0-9-]+)", answer)


def test_algorithms_expiry_and_aliases_changed_on_the_master_apply_without_restart(pushed):
    cluster, pusher = pushed
    node = cluster.nodes[0]
    push_and_wait(pusher, ms.current_version())
    pid = node.proc.pid
    assert offered(node) == ["MD5"]
    answer = sip_exchange(node, request("REGISTER", uri="sip:alias.test"))
    assert answer is not None and not answer.startswith("SIP/2.0 401")  # not ours yet

    version = save_settings(
        {
            "auth_algorithms": ["SHA-256", "MD5"],
            "max_expires": 120,
            "default_expires": 120,
            "aliases": ["alias.test"],
        }
    )
    push_and_wait(pusher, version)
    assert offered(node) == ["SHA-256", "MD5"]  # the next 401 offers it, preferred
    assert offered(node, "sip:alias.test") == ["SHA-256", "MD5"]
    phone = SipClient(
        (node.address, node.port), "zed", "zed-secret-1", "example.test", t1=0.25, timeout=5.0
    )
    try:
        ok = phone.register(3600)
        assert ok.status == 200 and "expires=120" in ok.get("contact"), ok.get("contact")
        phone.register(0)
    finally:
        phone.close()

    version = save_settings({"auth_algorithms": ["SHA-256"]})
    push_and_wait(pusher, version)
    assert offered(node) == ["SHA-256"]
    assert node.proc.pid == pid and node.proc.poll() is None  # no restart


def test_a_node_refuses_bad_settings_in_a_push_by_itself(pushed):
    cluster, pusher = pushed
    node = cluster.nodes[0]
    member = cluster.members[node.id]
    before = offered(node)
    with pytest.raises(BusError, match="settings refused: auth_algorithms"):
        bus_request(
            pusher.bus,
            member.control,
            member.public_key,  # the master's own key
            {
                "cmd": "config",
                "version": 10**6,
                "domain": "example.test",
                "users": [],
                "settings": {**DEFAULTS, "auth_algorithms": ["CRC32"]},
            },
            2.0,
        )
    assert cluster.control(node, "config_version")["version"] < 10**6
    assert offered(node) == before


def test_a_restarted_node_keeps_the_pushed_settings(pushed):
    cluster, pusher = pushed
    node = cluster.nodes[0]
    version = save_settings(
        {"auth_algorithms": ["SHA-256"], "max_expires": 300, "default_expires": 300}
    )
    push_and_wait(pusher, version)
    node.stop()
    node.start()
    assert cluster.wait_synced(20)
    # the version it runs is the master's newest: nothing is pushed again
    assert cluster.control(node, "config_version")["version"] == version
    assert offered(node) == ["SHA-256"]
