"""Real softphones (PJSUA2, baresip) register with a real node over UDP and TCP,
call each other through it and hang up with BYE.

Each phone is a child process (``tests.phones``); every wait is on one of its output
lines, bounded. A phone whose program is missing is skipped, or fails under ``$CI``.
"""

import shutil

import pytest

from loadtest.harness import NodeProcess, free_port
from tests.conftest import _in_ci
from tests.phones import baresip, call_and_hang_up, pjsua

USERS = ("alice", "bob", "carol", "dave", "erin", "frank")


def _need(what: str, present: bool) -> None:
    if present:
        return
    if _in_ci():
        pytest.fail(f"{what} is required when CI is set", pytrace=False)
    pytest.skip(f"{what} not installed")


def _have_pjsua2() -> bool:
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node on 127.0.0.3 with USERS (password ``<user>-pw``), default settings."""
    n = NodeProcess(str(tmp_path_factory.mktemp("phones")), address="127.0.0.3")
    for user in USERS:
        out = n.run_cli("user", "add", user, "--password", f"{user}-pw")
        assert out.returncode == 0, out.stderr
    n.start()
    yield n
    n.stop()


@pytest.fixture
def phones():
    """Phones started by a test, stopped after it."""
    started: list = []
    yield started
    for p in started:
        p.stop()


def _pjsua(node, phones, user: str, transport: str):
    p = pjsua(f"pjsua-{user}-{transport}", user, f"{user}-pw", node.domain,
              f"{node.address}:{node.port}", transport, free_port(), free_port())
    phones.append(p)
    p.wait_for("REGISTERED 200", "REGISTERED 4", "REGISTERED 5")
    assert p.lines[-1].endswith("REGISTERED 200"), p.lines[-20:]
    return p


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_pjsua2_calls_pjsua2_and_hangs_up(node, phones, transport):
    """Two PJSUA2 phones with only one transport each: 407, 180/200, ACK and BYE all over
    it (a TCP-only phone cannot send an ACK or BYE over UDP)."""
    _need("pjsua2", _have_pjsua2())
    caller = _pjsua(node, phones, "alice", transport)
    callee = _pjsua(node, phones, "bob", transport)
    call_and_hang_up(caller, callee, f"sip:bob@{node.domain}", caller, rtp=True)


def test_pjsua2_udp_calls_pjsua2_tcp(node, phones):
    """Legs of different transports (double Record-Route): the call completes both ways."""
    _need("pjsua2", _have_pjsua2())
    udp = _pjsua(node, phones, "carol", "udp")
    tcp = _pjsua(node, phones, "dave", "tcp")
    for caller, callee, user in ((udp, tcp, "dave"), (tcp, udp, "carol")):
        call_and_hang_up(caller, callee, f"sip:{user}@{node.domain}", callee)


def _baresip(node, phones, tmp_path, user: str, transport: str):
    _need("baresip", shutil.which("baresip") is not None)
    p = baresip(f"baresip-{user}-{transport}", str(tmp_path / f"baresip-{user}"), user,
                f"{user}-pw", node.domain, f"{node.address}:{node.port}", transport,
                free_port(), free_port(), free_port())
    phones.append(p)
    line = p.wait_for(f"{user}@{node.domain}: {{0/{transport.upper()}/v4}}")
    assert " 200 OK " in line, p.lines[-20:]
    p.send("/reginfo")  # opens the ctrl_tcp connection its events come on
    return p


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_baresip_calls_baresip_and_hangs_up(node, phones, tmp_path, transport):
    """Debian's baresip registers with the default (MD5) challenges, calls another through
    the node (it answers at once) and hangs up; the callee sees the BYE."""
    caller = _baresip(node, phones, tmp_path, "erin", transport)
    callee = _baresip(node, phones, tmp_path, "frank", transport)
    caller.send(f"/dial sip:frank@{node.domain}")
    caller.wait_for("EVENT CALL_ESTABLISHED")
    callee.wait_for("EVENT CALL_ESTABLISHED")
    caller.send("/hangup")
    caller.wait_for("EVENT CALL_CLOSED")
    assert "reset by peer" in callee.wait_for("EVENT CALL_CLOSED")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_baresip_and_pjsua2_call_each_other(node, phones, tmp_path, transport):
    _need("pjsua2", _have_pjsua2())
    bare = _baresip(node, phones, tmp_path, "erin", transport)
    pj = _pjsua(node, phones, "alice", transport)
    bare.send(f"/dial sip:alice@{node.domain}")
    pj.wait_for("INCOMING")
    bare.wait_for("EVENT CALL_ESTABLISHED")
    pj.wait_for("CALL CONFIRMED")
    assert pj.rtp_received() > 0  # baresip's sine wave, phone to phone
    pj.send("hangup")
    assert pj.wait_for("CALL DISCONNECTED").endswith(" 200")
    assert "reset by peer" in bare.wait_for("EVENT CALL_CLOSED")
    pj.send(f"call sip:erin@{node.domain}")
    bare.wait_for("EVENT CALL_ESTABLISHED")
    pj.wait_for("CALL CONFIRMED")
    bare.send("/hangup")
    bare.wait_for("EVENT CALL_CLOSED")
    pj.wait_for("CALL DISCONNECTED")
