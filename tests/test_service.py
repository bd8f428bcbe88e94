"""Running as a service: the systemd units, the log file and SIGHUP on a real node."""

import configparser
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from loadtest.bench_register import write_register_inf
from loadtest.harness import ROOT, NodeProcess, run_sipp, write_users_csv
from store.files import write_private
from tests.conftest import _in_ci

UNITS = {
    "node": os.path.join(ROOT, "conf", "tandem-node.service"),
    "master": os.path.join(ROOT, "conf", "tandem-master.service"),
}


def unit(path: str) -> configparser.ConfigParser:
    """The unit file read as INI (later values of a repeated key win)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_runs_as_tandem_with_a_private_state_directory_and_restarts_on_failure(name):
    service = unit(UNITS[name])["Service"]
    assert service["User"] == service["Group"] == "tandem"
    assert service["Restart"] == "on-failure"
    assert service["StateDirectoryMode"] == "0700" and service["StateDirectory"]
    assert service["UMask"] == "0077"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert f"run.py {name} --config /etc/tandem/{name}.toml" in service["ExecStart"]


def test_node_unit_may_bind_5060_and_nothing_more():
    service = unit(UNITS["node"])["Service"]
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    families = service["RestrictAddressFamilies"].split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_verify_accepts_the_unit(name, tmp_path):
    if shutil.which("systemd-analyze") is None:
        if _in_ci():
            pytest.fail(
                "systemd-analyze (Debian's systemd) is required when CI is set", pytrace=False
            )
        pytest.skip("systemd-analyze is not installed (scripts/test.sh installs systemd)")
    # verify wants ExecStart's program to exist: point /opt/tandem at this tree.
    with open(UNITS[name]) as f:
        text = (
            f.read()
            .replace("/opt/tandem/.venv/bin/python", sys.executable)
            .replace("/opt/tandem/", ROOT + "/")
        )
    path = tmp_path / os.path.basename(UNITS[name])
    path.write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    # Unknown keys and bad values are only warnings (exit status 0) naming the file.
    warnings = [line for line in out.stderr.splitlines() if path.name in line]
    assert out.returncode == 0 and not warnings, out.stderr


def wait(cond, timeout: float, step: float = 0.05):
    """Poll ``cond`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not (value := cond()) and time.monotonic() < deadline:
        time.sleep(step)
    return value


def text_of(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


@pytest.fixture
def logging_node(tmp_path):
    """A node logging to ``logs/node.log`` under its folder (not yet there)."""
    node = NodeProcess(
        str(tmp_path), address="127.0.0.1", log_file=str(tmp_path / "node1" / "logs" / "node.log")
    )
    with open(node.config) as f:
        node.toml = f.read()
    node.rows = write_users_csv(os.path.join(str(tmp_path), "users.csv"), 2)
    assert node.run_cli("user", "import", os.path.join(str(tmp_path), "users.csv")).returncode == 0
    node.start()
    yield node
    node.stop()


def register(node, user: str, password: str) -> bool:
    inf = os.path.join(node.dir, f"reg-{time.monotonic_ns()}.csv")
    write_register_inf(inf, [(user, password)], node.domain)
    res = run_sipp(
        "register_auth.xml",
        f"{node.address}:{node.port}",
        node.dir,
        inf=inf,
        calls=1,
        rate=10,
        timeout=10,
    )
    return res.successful == 1


def test_log_file_is_private_and_reopened_on_sighup(logging_node):
    node = logging_node
    assert wait(lambda: "node1 INFO" in text_of(node.log_file), 10.0), text_of(node.log_path)
    assert stat.S_IMODE(os.stat(node.log_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(node.log_file)).st_mode) == 0o700
    assert "node1 INFO" not in text_of(node.log_path), "logged to stderr despite log_file"

    rotated = node.log_file + ".1"
    os.rename(node.log_file, rotated)
    node.signal(signal.SIGHUP)
    assert wait(lambda: "SIGHUP: log file reopened" in text_of(node.log_file), 10.0), text_of(
        rotated
    )[-2000:]
    assert stat.S_IMODE(os.stat(node.log_file).st_mode) == 0o600
    assert "SIGHUP" not in text_of(rotated)
    assert node.proc.poll() is None


def test_sighup_applies_the_log_level_and_a_changed_password_at_once(logging_node):
    node = logging_node
    user, old = node.rows[0]
    assert register(node, user, old)
    write_private(node.config, node.toml.replace('log_level = "INFO"', 'log_level = "DEBUG"'))
    assert node.run_cli("user", "add", user, "--password", "changed-pw").returncode == 0
    node.signal(signal.SIGHUP)
    assert wait(lambda: "log level DEBUG" in text_of(node.log_file), 10.0), text_of(node.log_file)[
        -2000:
    ]
    assert register(node, user, "changed-pw")
    assert not register(node, user, old)


def test_a_log_file_others_could_read_is_made_private(tmp_path):
    log_file = tmp_path / "node1" / "open.log"
    log_file.parent.mkdir()
    log_file.write_text("from before\n")
    log_file.chmod(0o644)
    node = NodeProcess(str(tmp_path), address="127.0.0.1", log_file=str(log_file))
    node.start()
    try:
        assert stat.S_IMODE(os.stat(log_file).st_mode) == 0o600
        assert text_of(str(log_file)).startswith("from before\n")
    finally:
        node.stop()


def test_sighup_with_a_broken_configuration_keeps_the_node_running(logging_node):
    node = logging_node
    write_private(node.config, node.toml.replace("[sip]", "[sip\n"))
    node.signal(signal.SIGHUP)
    assert wait(lambda: "configuration not reloaded" in text_of(node.log_file), 10.0), text_of(
        node.log_file
    )[-2000:]
    assert node.proc.poll() is None
    user, password = node.rows[1]
    assert register(node, user, password)


def children(pid: int) -> set[int]:
    """Child pids of ``pid``."""
    out: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out |= {int(p) for p in f.read().split()}
    return out


def test_sighup_reaches_the_challenge_front_which_reopens_the_log_too(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the challenge front needs Linux")
    log_file = str(tmp_path / "node1" / "private.log")
    node = NodeProcess(str(tmp_path), address="127.0.0.1", front=True, log_file=log_file)
    node.start()
    try:
        [front] = children(node.proc.pid)
        os.rename(log_file, log_file + ".1")
        node.signal(signal.SIGHUP)
        assert wait(lambda: "SIGHUP: log file reopened" in text_of(log_file), 10.0)
        node.stop()
        # The front logs its end into the reopened file, not the rotated one.
        assert wait(lambda: "challenge front stopped" in text_of(log_file), 10.0), text_of(
            log_file + ".1"
        )[-2000:]
        assert not os.path.exists(f"/proc/{front}") or node.proc.poll() is not None
    finally:
        node.stop()
