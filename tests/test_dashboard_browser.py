"""End to end in a real headless Chromium: the master process and two node processes.

``run.py master init`` makes the master's keys and admin; two nodes trust
its key; ``run.py master`` serves the dashboard (gevent's WSGI server). The
browser signs in, adds a user, sees both nodes take the new configuration;
sipsak registers the user on both nodes; the registrations page shows it
with its primary node. A second run restarts a node's registrar from the
Services page and pushes SHA-256 from the Settings page. Screenshots of each page go to ``screenshots/``
under the test's temporary folder (its path is printed on failure).
"""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from loadtest.harness import ROOT, Cluster, free_port
from store.files import write_private
from tests.conftest import _in_ci
from tests.test_front import wait_until
from tests.test_node import request, sip_exchange

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def run_master(*args, config):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"), "master", *args, "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture
def master(tmp_path):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if _in_ci():
            pytest.fail(
                "Debian's chromium and chromium-driver are required when CI is set", pytrace=False
            )
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/test.sh installs them)")
    port = free_port()
    config = str(tmp_path / "master.toml")
    head = (
        f'[master]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{tmp_path}/data"\n'
        f'domain = "example.test"\npush_interval = 0.5\n'
    )
    write_private(config, head)
    init = run_master("init", config=config)
    assert init.returncode == 0, init.stderr
    public = (tmp_path / "data" / "master.public").read_text().strip()
    password = (tmp_path / "data" / "admin-password").read_text().strip()
    assert password in init.stdout and password not in init.stderr
    cluster = Cluster(str(tmp_path), 2, settings={"master_key": public, "alone_wait": 1.0})
    nodes = "".join(
        f'\n[[nodes]]\nid = "{m.id}"\nsip = "{n.address}:{n.port}"\n'
        f'control = "{m.control}"\npublic_key = "{m.public_key}"\n'
        for m, n in zip(cluster.members.values(), cluster.nodes, strict=True)
    )
    write_private(config, head + nodes)
    with open(tmp_path / "master.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "run.py"), "master", "--config", config],
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
    try:
        cluster.start()
        yield {
            "url": f"http://127.0.0.1:{port}",
            "password": password,
            "cluster": cluster,
            "log": tmp_path / "master.log",
            "shots": tmp_path / "screenshots",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        cluster.stop()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
    )
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def page_with(driver, url: str, text: str, timeout: float = 10.0) -> bool:
    """Reload ``url`` until its body shows ``text``; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        driver.get(url)
        if text in driver.find_element(By.TAG_NAME, "body").text:
            return True
        time.sleep(0.2)
    return False


def test_sign_in_add_a_user_and_see_it_registered_on_both_nodes(master, browser):
    url, shots, cluster = master["url"], master["shots"], master["cluster"]
    shots.mkdir()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            browser.get(url + "/login")
            break
        except Exception:  # the master still starting
            time.sleep(0.2)
    browser.find_element(By.ID, "username").send_keys("admin")
    browser.find_element(By.ID, "password").send_keys("wrong")
    browser.find_element(By.ID, "login").click()
    # The answer is a new page: wait (bounded) for it rather than read the old one.
    WebDriverWait(browser, 10).until(lambda d: "Wrong admin name or password." in d.page_source)
    browser.find_element(By.ID, "username").clear()
    browser.find_element(By.ID, "username").send_keys("admin")
    browser.find_element(By.ID, "password").send_keys(master["password"])
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 10).until(lambda d: "Nodes of example.test" in d.page_source)
    browser.save_screenshot(str(shots / "nodes.png"))
    browser.get(url + "/users")
    browser.find_element(By.ID, "new-username").send_keys("webuser")
    browser.find_element(By.ID, "new-password").send_keys("web-pw-1")
    browser.find_element(By.ID, "add-user").click()
    WebDriverWait(browser, 10).until(lambda d: "User webuser saved" in d.page_source)
    browser.save_screenshot(str(shots / "users.png"))
    assert page_with(browser, url + "/", "1 (current)"), master["log"].read_text()[-2000:]
    body = browser.find_element(By.TAG_NAME, "body").text
    assert body.count("1 (current)") == 2 and "(behind)" not in body
    assert body.count("alive") == 2
    browser.save_screenshot(str(shots / "nodes-current.png"))
    for node in cluster.nodes:
        reg = subprocess.run(
            [
                "sipsak",
                "-U",
                "-s",
                f"sip:webuser@{node.address}:{node.port}",
                "-u",
                "webuser",
                "-a",
                "web-pw-1",
                "-i",
                "-x",
                "120",
                "-v",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "completed successful" in reg.stdout, reg.stdout + node.log_tail()
    assert page_with(browser, url + "/registrations?user=webuser", "node1, node2")
    rows = browser.find_elements(By.CSS_SELECTOR, "#registrations tr")
    assert len(rows) >= 3, browser.page_source
    assert "sip:webuser@example.test" in rows[1].text
    browser.save_screenshot(str(shots / "registrations.png"))
    assert master["password"] not in browser.page_source
    assert master["password"] not in master["log"].read_text()


def offered(node) -> list[str]:
    """The algorithms of the node's 401 to a new REGISTER without credentials."""
    return re.findall(r"algorithm=([A-Z0-9-]+)", sip_exchange(node, request("REGISTER")) or "")


def sign_in(browser, master) -> None:
    browser.get(master["url"] + "/login")
    browser.find_element(By.ID, "username").send_keys("admin")
    browser.find_element(By.ID, "password").send_keys(master["password"])
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 10).until(lambda d: "Nodes of example.test" in d.page_source)


def test_restart_a_service_and_push_settings_from_the_browser(master, browser):
    """Through a real ``run.py master`` and two nodes no lab runs: the Services page's
    Restart button restarts node1's registrar (its count rises, it still registers), and
    the Settings page's SHA-256 reaches the nodes' next 401 without a restart."""
    cluster, url = master["cluster"], master["url"]
    node = cluster.nodes[0]
    assert cluster.wait_synced(30)
    sign_in(browser, master)
    browser.find_element(By.ID, f"services-{node.id}").click()
    WebDriverWait(browser, 10).until(lambda d: f"Services of {node.id}" in d.page_source)
    browser.find_element(By.ID, "restart-registrar").click()
    WebDriverWait(browser, 10).until(
        lambda d: f"registrar on {node.id}: running (restarts: 1)" in d.page_source
    )
    assert cluster.control(node, "services")["registrar"]["restarts"] == 1
    browser.save_screenshot(str(master["shots"] / "services.png"))
    challenge = sip_exchange(node, request("REGISTER")) or ""
    assert challenge.startswith("SIP/2.0 401"), challenge  # the registrar answers
    assert "algorithm=SHA-256" not in challenge

    browser.get(url + "/settings")
    browser.find_element(By.ID, "algorithm-SHA-256").click()
    Select(browser.find_element(By.ID, "preferred")).select_by_visible_text("SHA-256")
    browser.find_element(By.ID, "save-settings").click()
    WebDriverWait(browser, 10).until(lambda d: "Settings saved: configuration" in d.page_source)
    browser.save_screenshot(str(master["shots"] / "settings.png"))
    for n in cluster.nodes:
        assert wait_until(lambda n=n: offered(n) == ["SHA-256", "MD5"], 10), offered(n)
    assert page_with(browser, url + "/", "alive")
