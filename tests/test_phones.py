"""Real softphones (PJSUA2, Debian's baresip and linphonec) through ``run.py lab``.

For UDP, TCP and TLS, every phone calls every phone: the caller registered on node1, the
callee on node2 (over TCP and TLS node1 reaches the callee's connection through node2,
``sipcore.flow_relay``), the call through the cluster (the caller's INVITE challenged with 407 and sent again with its
credentials, the callee answering 200 at once, the ACK), held 3 s with RTP flowing phone
to phone (each phone's own count of what it received), ended with a BYE the caller
sees answered 200 (PJSUA2's call state, baresip's SIP trace, linphonec's log).
The cells of one transport run in three rounds of three calls at once (each phone in one
call per round), and the suite prints the table phone x phone x transport at the end.
A phone registered on a node that is then killed is called through the survivor; a phone
that does not trust the lab CA is refused, with the reason in the node's log.

Each phone is a child process (``tests.phones``); every wait is on one of its output
lines, bounded. A phone whose program is missing is skipped, or fails under ``$CI``.
"""

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from actors.lab_certs import lab_ca, node_cert
from loadtest.harness import ROOT, free_port
from tests.conftest import _in_ci
from tests.phones import (
    BaresipPhone,
    LinphonePhone,
    PjsuaPhone,
    Softphone,
    baresip,
    final_status,
    linphone,
    pjsua,
)

DOMAIN = "example.test"
PHONES = ("pjsua2", "baresip", "linphone")
TRANSPORTS = ("udp", "tcp", "tls")
HOLD = 3.0
"""Seconds each call is held with RTP flowing."""
CALL_LIMIT = 40.0
"""Seconds one cell (call, hold, hang-up) may take in all."""

KNOWN_BAD: dict[tuple[str, str, str], str] = {}
"""(transport, caller, callee) cells that fail by a phone's own bug, with the reason; the
test expects them to fail."""

RESULTS: dict[tuple[str, str, str], str] = {}
_USERS = itertools.count()


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


def _need_phones() -> None:
    _need("pjsua2", _have_pjsua2())
    _need("baresip", shutil.which("baresip") is not None)
    _need("linphonec", shutil.which("linphonec") is not None)


def table() -> str:
    """The interop table: one row per transport and caller, one column per callee."""
    width = max(len(r) for r in (*RESULTS.values(), "linphone")) + 2
    lines = [
        f"Interop: caller on node1 -> callee on node2, held {HOLD:.0f} s with RTP both ways, BYE",
        "transport  caller    " + "".join(f"{c:<{width}}" for c in PHONES),
    ]
    for transport in TRANSPORTS:
        for caller in PHONES:
            row = [RESULTS.get((transport, caller, callee), "not run") for callee in PHONES]
            lines.append(f"{transport:<10} {caller:<9} " + "".join(f"{r:<{width}}" for r in row))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, request):
    """A two-node ``run.py lab`` on a random loopback block: its node addresses, CA,
    data folder and a certificate (signed by the lab CA) for the phones' own TLS side."""
    base = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.10"
    folder = tmp_path_factory.mktemp("phones-lab")
    data = str(folder / "lab")
    out_path = folder / "lab.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, "run.py"),
                "lab",
                "--data",
                data,
                "--base",
                base,
                "--nodes",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops it" not in out_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.1)
        ca = (os.path.join(data, "ca", "ca.pem"), os.path.join(data, "ca", "ca.key"))
        phone_cert = node_cert(str(folder), ca, "phone", "127.0.0.1", DOMAIN)
        prefix = base.rsplit(".", 1)[0]
        yield SimpleNamespace(
            proc=proc,
            data=data,
            ca=ca[0],
            out=out_path,
            nodes=[f"{prefix}.11", f"{prefix}.12"],
            cert=(phone_cert.cert, phone_cert.key),
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if RESULTS:
            # Past pytest's capture of the teardown, so the table shows on every run.
            plugins = request.config.pluginmanager
            reporter = plugins.get_plugin("terminalreporter")
            capture = plugins.get_plugin("capturemanager")
            if reporter is not None and capture is not None:
                with capture.global_and_fixture_disabled():
                    reporter.write_line("\n" + table())


def start_phone(
    lab, kind: str, transport: str, node: str, folder: str, outbound: bool = False
) -> Softphone:
    """A new ``kind`` phone for a new lab user, registering with ``node`` over
    ``transport`` (not waited for); baresip as an RFC 5626 outbound flow with
    ``outbound``."""
    i = next(_USERS)
    user, password = f"load{i}", f"load{i}-secret"
    proxy = f"{node}:{5061 if transport == 'tls' else 5060}"
    name = f"{kind}-{user}-{transport}"
    cert = lab.cert if transport == "tls" else ("", "")
    if kind == "pjsua2":
        return PjsuaPhone(
            pjsua(
                name,
                user,
                password,
                DOMAIN,
                proxy,
                transport,
                free_port(),
                free_port(),
                ca=lab.ca,
                cert=cert,
            ),
            user,
            transport,
        )
    home = os.path.join(folder, name)
    port = free_port()
    if kind == "baresip":
        ctrl = free_port()
        while ctrl in (port, port + 1):  # baresip takes TLS on port + 1
            ctrl = free_port()
        return BaresipPhone(
            baresip(
                name,
                home,
                user,
                password,
                DOMAIN,
                proxy,
                transport,
                port,
                free_port(),
                ctrl,
                ca=lab.ca,
                cert=cert,
                outbound=outbound,
            ),
            user,
            transport,
        )
    return LinphonePhone(
        linphone(
            name,
            home,
            user,
            password,
            DOMAIN,
            proxy,
            transport,
            port,
            free_port(),
            ca=lab.ca,
            cert=cert,
        ),
        user,
        transport,
        os.path.join(home, "log"),
    )


def call(caller: Softphone, callee: Softphone) -> None:
    """One cell: ``caller`` calls ``callee``, both see the call up, it is held HOLD s with
    RTP received by both, the caller hangs up and the callee sees the BYE."""
    caller.dial(f"sip:{callee.user}@{DOMAIN}")
    callee.wait_established()
    caller.wait_established()
    held = time.monotonic() + HOLD
    for p in (caller, callee):
        p.start_media()
    for p in (caller, callee):
        got = p.rtp_received(timeout=HOLD + 5)
        assert got is None or got > 0, f"{p.kind} received no RTP: {p.phone.lines[-1]}"
    for p in (caller, callee):
        p.phone.no_line(
            "EVENT CALL_CLOSED", "CALL DISCONNECTED", " ended (", within=held - time.monotonic()
        )
    caller.hang_up()
    callee.wait_ended()
    for p in (caller, callee):
        if p.rtp_received(0) is None:
            assert p.rtp_after_call() > 0, f"{p.kind} received no RTP"


def run_cell(transport: str, caller: Softphone, callee: Softphone, broken: dict) -> None:
    """Run one cell and record its result (never raises)."""
    cell = (transport, caller.kind, callee.kind)
    reason = broken.get(caller) or broken.get(callee)
    if reason is None:
        try:
            call(caller, callee)
            RESULTS[cell] = "pass"
            return
        except AssertionError as e:
            reason = str(e).splitlines()[0][:160]
        for p in (caller, callee):  # leave the phones idle for the next round
            try:
                p.hang_up()
            except AssertionError:
                pass
    RESULTS[cell] = "FAIL"
    broken.setdefault("why", {})[cell] = reason


def test_the_byes_answer_is_read_from_a_phones_sip_trace():
    """What the BYE check reads: the final response whose CSeq names BYE, not a
    provisional one, not another method's, not the BYE request itself."""
    trace = [
        "\x1b[36;1m#",
        "UDP 127.0.0.1:5060 -> 127.0.0.1:4000",
        "SIP/2.0 200 OK\r",
        "CSeq: 2 INVITE\r",
        "BYE sip:bob@127.0.0.1:4002 SIP/2.0\r",
        "CSeq: 3 BYE\r",
        "SIP/2.0 100 Trying",
        "CSeq: 3 BYE",
        "2026-01-01 belle-sip-message-"
        "Message received: SIP/2.0 481 Call/Transaction Does Not Exist",
        "Via: SIP/2.0/UDP 127.0.0.1:4000",
        "cseq: 3 bye",
        "SIP/2.0 200 OK",
        "CSeq: 3 BYE",
    ]
    assert final_status(trace, "BYE") == 481
    assert final_status(trace[:8], "BYE") is None
    assert final_status(trace[:4], "INVITE") == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_phone_calls_every_phone_through_the_lab(lab, transport, tmp_path):
    _need_phones()
    callers = {k: start_phone(lab, k, transport, lab.nodes[0], str(tmp_path)) for k in PHONES}
    callees = {k: start_phone(lab, k, transport, lab.nodes[1], str(tmp_path)) for k in PHONES}
    broken: dict = {}
    try:
        for p in (*callers.values(), *callees.values()):
            try:
                p.wait_registered()
            except AssertionError as e:
                broken[p] = f"{p.kind} did not register: {str(e).splitlines()[0]}"
        for r in range(len(PHONES)):
            threads = [
                threading.Thread(
                    target=run_cell,
                    args=(
                        transport,
                        callers[PHONES[i]],
                        callees[PHONES[(i + r) % len(PHONES)]],
                        broken,
                    ),
                )
                for i in range(len(PHONES))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(CALL_LIMIT)
                assert not t.is_alive(), "a call did not end within its limit"
    finally:
        for p in (*callers.values(), *callees.values()):
            p.stop()
    why = broken.get("why", {})
    unexpected = {c: why[c] for c in why if c not in KNOWN_BAD}
    fixed = [c for c in KNOWN_BAD if c[0] == transport and RESULTS.get(c) == "pass"]
    assert not unexpected, (
        json.dumps({" ".join(c): r for c, r in unexpected.items()}, indent=1) + "\n" + table()
    )
    assert not fixed, f"known-bad cells now pass, update KNOWN_BAD: {fixed}"


def test_pjsua2_udp_and_pjsua2_tcp_call_each_other(lab, tmp_path):
    """Legs of different transports (double Record-Route, RFC 5658), each phone on another
    node: the call completes both ways, each phone's requests on its own transport."""
    _need("pjsua2", _have_pjsua2())
    udp = start_phone(lab, "pjsua2", "udp", lab.nodes[0], str(tmp_path))
    tcp = start_phone(lab, "pjsua2", "tcp", lab.nodes[1], str(tmp_path))
    try:
        udp.wait_registered()
        tcp.wait_registered()
        call(udp, tcp)
        call(tcp, udp)
    finally:
        udp.stop()
        tcp.stop()


def test_an_outbound_baresip_is_confirmed_and_called_over_its_flow(lab, tmp_path):
    """baresip registers an RFC 5626 flow over TCP (``sipnat=outbound``): the node's 200
    says ``Require: outbound`` (without it baresip never pings its flow), and a call
    from a phone on the other node reaches it over that flow."""
    _need("baresip", shutil.which("baresip") is not None)
    flow = start_phone(lab, "baresip", "tcp", lab.nodes[0], str(tmp_path), outbound=True)
    caller = start_phone(lab, "baresip", "udp", lab.nodes[1], str(tmp_path))
    try:
        flow.wait_registered()
        caller.wait_registered()
        trace = "\n".join(flow.phone.lines)
        assert "reg-id=1" in trace and "\nRequire: outbound" in trace, trace[-3000:]
        call(caller, flow)
    finally:
        flow.stop()
        caller.stop()


def test_a_phone_that_does_not_trust_the_lab_ca_is_refused_with_a_clear_log_line(lab, tmp_path):
    """linphonec given another CA than the lab's aborts the handshake with an alert (PJSUA2
    checks after the handshake and just closes, and sipsak does not check): it is not
    registered, and the node's log says why and what to do."""
    _need("linphonec", shutil.which("linphonec") is not None)
    other_ca = lab_ca(str(tmp_path / "other-ca"))[0]
    home = str(tmp_path / "linphone-untrusting")
    phone = linphone(
        "linphone-untrusting",
        home,
        "alice",
        "alice-secret",
        DOMAIN,
        f"{lab.nodes[0]}:5061",
        "tls",
        free_port(),
        free_port(),
        ca=other_ca,
    )
    log_path = os.path.join(lab.data, "node1", "node.log")
    try:
        deadline = time.monotonic() + 15
        while True:
            with open(log_path) as f:
                log = f.read()
            if "does not trust this node's certificate" in log:
                break
            assert time.monotonic() < deadline, log[-3000:]
            time.sleep(0.1)
        phone.send("status register")
        assert not phone.wait_for("registered").startswith("registered, identity=")
    finally:
        phone.stop()
    with open(os.path.join(home, "log"), errors="replace") as f:
        assert "SSL handshake failed" in f.read()


def test_a_phone_on_a_killed_node_is_called_through_the_survivor(lab, tmp_path):
    """The callee registered on node2; node2 is killed (SIGKILL); the caller on node1 still
    reaches it, since node1 holds node2's registrations. Runs last: node2 is restarted."""
    _need("pjsua2", _have_pjsua2())
    caller = start_phone(lab, "pjsua2", "udp", lab.nodes[0], str(tmp_path))
    callee = start_phone(lab, "pjsua2", "udp", lab.nodes[1], str(tmp_path))
    try:
        caller.wait_registered()
        callee.wait_registered()
        call(caller, callee)  # node1 has node2's binding by now
        status = subprocess.run(
            [sys.executable, os.path.join(ROOT, "run.py"), "lab", "status", "--data", lab.data],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        node2 = json.loads(status.stdout)["nodes"][1]
        os.kill(node2["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "node2 died" not in lab.out.read_text():
            assert time.monotonic() < deadline, lab.out.read_text()[-2000:]
            time.sleep(0.1)
        call(caller, callee)
    finally:
        caller.stop()
        callee.stop()
        subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "run.py"),
                "lab",
                "restart",
                "node2",
                "--data",
                lab.data,
            ],
            capture_output=True,
            timeout=60,
            cwd=ROOT,
        )
