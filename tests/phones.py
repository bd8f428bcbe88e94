"""Real softphones for the interop tests: each runs as a child process whose output lines
are events to wait for (with a bound), and whose stdin takes commands.

``Phone`` wraps one process. ``pjsua`` is run as ``python -m tests.phones pjsua ...``: a
PJSUA2 user agent (null audio device) that prints ``REGISTERED <code>``,
``INCOMING``, ``CALL <state> <code>``, ``XFER <code>`` (a transfer's REFER or NOTIFY
status) and reads ``call URI``, ``xfer URI`` (a blind transfer of the active call: a
REFER), ``hangup``, ``quit`` and ``rtp`` (answered ``RTP <packets received>`` on the
confirmed call, or ``RTP none``).
``baresip`` is Debian's program with a generated configuration, driven through its
ctrl_tcp module.
"""

import abc
import argparse
import json
import os
import queue
import re
import select
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STATUS = re.compile(r"SIP/2\.0 (\d{3}) ")
_REQUEST = re.compile(r"[A-Z]+ \S+ SIP/2\.0$")
_CSEQ = re.compile(r"^CSeq:\s*\d+\s+([A-Za-z]+)", re.IGNORECASE)


def final_status(lines: list[str], method: str) -> int | None:
    """The status code of the first final response to ``method`` in a phone's trace of
    the SIP messages it saw (one line per start or header line, as baresip's ``-s`` and
    linphonec's log write them), or None when there is none yet."""
    status = None
    for raw in lines:
        line = _ANSI.sub("", raw).strip()
        if (found := _STATUS.search(line)) is not None:
            status = int(found.group(1))
        elif _REQUEST.search(line):
            status = None
        elif (cseq := _CSEQ.match(line)) is not None:
            if status is not None and status >= 200 and cseq.group(1).upper() == method:
                return status
            status = None
    return None


class Phone:
    """One softphone process: ``send`` a command line, ``wait_for`` an output line."""

    def __init__(
        self, name: str, argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None
    ):
        self.name = name
        self.lines: list[str] = []
        self._ctrl: socket.socket | None = None
        self._queue: queue.Queue = queue.Queue()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    ctrl: tuple | None = None
    """baresip's ctrl_tcp address, where commands go instead of stdin."""

    def send(self, command: str) -> None:
        """Write one command line to the phone's stdin (for baresip, ``/cmd params`` as a
        ctrl_tcp netstring)."""
        if self.ctrl is not None:
            cmd, _, params = command.lstrip("/").partition(" ")
            body = json.dumps({"command": cmd, "params": params, "token": cmd}).encode()
            self._ctrl_socket().sendall(b"%d:%s," % (len(body), body))
            return
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def _ctrl_socket(self) -> socket.socket:
        """The connection to baresip's ctrl_tcp (made once: call it when baresip is ready,
        before the events wanted); its events come out as ``EVENT <type> <text>`` lines."""
        if self._ctrl is None:
            self._ctrl = socket.create_connection(self.ctrl, timeout=5)
            threading.Thread(target=self._read_ctrl, args=(self._ctrl,), daemon=True).start()
        return self._ctrl

    def _read_ctrl(self, sock: socket.socket) -> None:
        buf = b""
        sock.settimeout(None)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b":" in buf:
                size, _, rest = buf.partition(b":")
                if not size.isdigit() or len(rest) < int(size) + 1:
                    break
                body, buf = rest[: int(size)], rest[int(size) + 1 :]
                msg = json.loads(body)
                if msg.get("event"):
                    self._queue.put(f"EVENT {msg.get('type')} {msg.get('param', '')}")
                elif msg.get("response"):
                    for line in str(msg.get("data", "")).splitlines() or [""]:
                        self._queue.put(f"RESPONSE {msg.get('token')} {line}")

    def wait_for(self, *needles: str, timeout: float = 15.0) -> str:
        """The first output line (from now on) holding any of ``needles``; AssertionError
        with the phone's output after ``timeout`` seconds or when it exits."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.0, left)) if left > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                tail = "\n".join(self.lines[-40:])
                raise AssertionError(f"{self.name}: none of {needles} within {timeout}s:\n{tail}")
            self.lines.append(line)
            if any(n in line for n in needles):
                return line

    def no_line(self, *needles: str, within: float) -> None:
        """AssertionError if an output line holding any of ``needles`` comes in the next
        ``within`` seconds (a call that must stay up meanwhile, say)."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                return
            if line is None:
                raise AssertionError(f"{self.name} exited:\n" + "\n".join(self.lines[-20:]))
            self.lines.append(line)
            assert not any(n in line for n in needles), f"{self.name}: {line}"

    def final_status(self, method: str, since: int, timeout: float = 10.0) -> int:
        """The status of the first final response to ``method`` the phone traced in its
        output lines from ``since`` on (waited for, bounded; AssertionError without)."""
        deadline = time.monotonic() + timeout
        while (found := final_status(self.lines[since:], method)) is None:
            left = deadline - time.monotonic()
            try:
                self.wait_for("CSeq", timeout=max(0.0, left))
            except AssertionError:
                raise AssertionError(
                    f"{self.name}: no final response to {method} within {timeout}s"
                ) from None
        return found

    def rtp_received(self, timeout: float = 10.0) -> int:
        """Packets a PJSUA2 phone received on its confirmed call, asked until some came
        or ``timeout`` passed (0 then)."""
        deadline = time.monotonic() + timeout
        while True:
            self.send("rtp")
            line = self.wait_for("RTP ", timeout=max(1.0, deadline - time.monotonic()))
            count = line.rsplit(" ", 1)[1]
            if (count.isdigit() and int(count) > 0) or time.monotonic() > deadline:
                return int(count) if count.isdigit() else 0

    def stop(self) -> None:
        """End the process (quit, then SIGKILL after 5 s)."""
        if self.proc.poll() is None:
            try:
                self.send("/quit" if self.ctrl else "quit")
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._ctrl is not None:
            self._ctrl.close()
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)


def call_and_hang_up(
    caller: Phone, callee: Phone, uri: str, hang_up: Phone, rtp: bool = False
) -> None:
    """``caller`` (a PJSUA2 phone) calls ``uri``, which rings ``callee``; once both
    confirm the call (and, with ``rtp``, both received RTP) ``hang_up`` ends it,
    its BYE answered 200, and the other side sees the call end."""
    caller.send(f"call {uri}")
    callee.wait_for("INCOMING")
    caller.wait_for("CALL CONFIRMED")
    callee.wait_for("CALL CONFIRMED")
    if rtp:
        assert caller.rtp_received() > 0 and callee.rtp_received() > 0
    other = callee if hang_up is caller else caller
    hang_up.send("hangup")
    assert hang_up.wait_for("CALL DISCONNECTED").endswith(" 200")
    other.wait_for("CALL DISCONNECTED")


def pjsua(
    name: str,
    user: str,
    password: str,
    domain: str,
    proxy: str,
    transport: str,
    port: int,
    rtp_port: int,
    ca: str = "",
    cert: tuple[str, str] = ("", ""),
    bind: str = "127.0.0.1",
    prefix: tuple = (),
    failover: tuple[int, int, int] = (0, 0, 0),
) -> Phone:
    """A PJSUA2 phone registering ``user`` through ``proxy`` (``host:port``) over
    ``transport`` only, listening on ``bind``:``port``, RTP from ``rtp_port``; over
    TLS it checks the proxy's certificate against the PEM file ``ca`` and takes the
    connections a node opens to it with ``cert`` (certificate and key files). It runs
    under the command ``prefix`` (``ip netns exec HOST``) when given. ``failover`` is
    (registration expiry, retry interval after a failed registration, UDP keepalive
    interval) in seconds, 0 for PJSUA2's default of each (300, 300, 15)."""
    return Phone(
        name,
        [
            *prefix,
            sys.executable,
            "-m",
            "tests.phones",
            "pjsua",
            "--user",
            user,
            "--password",
            password,
            "--domain",
            domain,
            "--proxy",
            proxy,
            "--transport",
            transport,
            "--port",
            str(port),
            "--rtp-port",
            str(rtp_port),
            "--ca",
            ca,
            "--cert",
            cert[0],
            "--key",
            cert[1],
            "--bind",
            bind,
            "--expires",
            str(failover[0]),
            "--retry",
            str(failover[1]),
            "--keepalive",
            str(failover[2]),
        ],
        cwd=ROOT,
    )


def baresip(
    name: str,
    folder: str,
    user: str,
    password: str,
    domain: str,
    proxy: str,
    transport: str,
    port: int,
    rtp_port: int,
    ctrl_port: int,
    ca: str = "",
    cert: tuple[str, str] = ("", ""),
    bind: str = "127.0.0.1",
    prefix: tuple = (),
    expires: int = 600,
    outbound: bool = False,
) -> Phone:
    """Debian's baresip with a configuration in ``folder`` (made here): ``user`` registered
    through ``proxy`` over ``transport`` every ``expires`` seconds (as an RFC 5626 outbound
    flow with ``outbound``: keepalives, and a new registration when the flow fails), SIP on
    ``bind``:``port`` (TLS on the port after it, with ``cert``, certificate and key, for
    the connections a node opens; the proxy's certificate checked against ``ca``:
    ``sip_cafile``), a sine wave for its microphone, a file for its speaker, calls
    answered at once; driven through its ctrl_tcp module on ``ctrl_port``, which must
    not be ``port + 1`` (``Phone.send`` writes ``/command params``), on 127.0.0.1, or on
    ``bind`` when it runs under the command ``prefix`` (``ip netns exec HOST``), whose
    loopback the caller cannot reach."""
    os.makedirs(folder, exist_ok=True)
    tls = ""
    if ca:
        tls += f"sip_cafile {ca}\n"
    if cert[0]:
        pem = os.path.join(folder, "sip.pem")
        with open(cert[0]) as c, open(cert[1]) as k, open(pem, "w") as f:
            f.write(c.read() + k.read())
        os.chmod(pem, 0o600)
        tls += f"sip_certificate {pem}\n"
    ctrl = (bind if prefix else "127.0.0.1", ctrl_port)
    with open(os.path.join(folder, "config"), "w") as f:
        f.write(f"""poll_method poll
net_interface {bind}
sip_listen {bind}:{port}
sip_transports {transport}
audio_player aufile,{os.path.join(folder, "heard.wav")}
audio_source ausine,440
ausrc_srate 48000
ausrc_channels 2
auplay_channels 2
auplay_srate 48000
audio_alert aufile,{os.path.join(folder, "alert.wav")}
rtp_ports {rtp_port}-{rtp_port + 9}
ctrl_tcp_listen {ctrl[0]}:{ctrl[1]}
{tls}module_path /usr/lib/baresip/modules
module stdio.so
module g711.so
module ausine.so
module aufile.so
module_tmp uuid.so
module_app account.so
module_app menu.so
module_app ctrl_tcp.so
""")
    with open(os.path.join(folder, "accounts"), "w") as f:
        f.write(
            f"<sip:{user}@{domain};transport={transport}>;auth_pass={password};"
            f'outbound="sip:{proxy};transport={transport}";regint={expires};'
            f"{'sipnat=outbound;' if outbound else ''}"
            "answermode=auto;audio_codecs=PCMU,PCMA\n"
        )
    # stdbuf: baresip writes through stdio, block-buffered on a pipe
    # -s: its SIP trace, where the BYE's answer shows (tests.phones.final_status)
    phone = Phone(name, [*prefix, "stdbuf", "-oL", "baresip", "-s", "-f", folder], cwd=folder)
    phone.ctrl = ctrl
    return phone


def linphone(
    name: str,
    folder: str,
    user: str,
    password: str,
    domain: str,
    proxy: str,
    transport: str,
    port: int,
    rtp_port: int,
    ca: str = "",
    cert: tuple[str, str] = ("", ""),
    bind: str = "127.0.0.1",
    prefix: tuple = (),
    expires: int = 600,
) -> Phone:
    """Debian's linphonec with a configuration in ``folder`` (made here): ``user``
    registered through ``proxy`` over ``transport`` only every ``expires`` seconds (SIP
    on ``bind``:``port``, RTP on ``rtp_port``; under the command ``prefix`` when given),
    calls answered at once (``-a``), over TLS the proxy checked against the
    PEM file ``ca`` and ``cert`` (certificate and key) shown to a node that connects to
    it; driven on stdin (``call URI``, ``terminate``), its log (level 6, RTP
    statistics included) in ``folder``/log.

    The ``[storage] uri`` is what makes it work at all: without it linphonec 5.1 opens its
    message database under ``~/.local/share/linphone``, and when that folder is missing (a
    fresh home, as in CI) the core stays in LinphoneGlobalStartup and never opens a SIP
    transport: its REGISTER dies in belle-sip with "No listening point matching for
    [udp://...]" and nothing reaches the node."""
    os.makedirs(folder, exist_ok=True)
    ports = {"udp": 0, "tcp": 0, "tls": 0}
    ports[transport] = port
    with open(os.path.join(folder, "rc"), "w") as f:
        f.write(f"""[sip]
sip_port={ports["udp"]}
sip_tcp_port={ports["tcp"]}
sip_tls_port={ports["tls"]}
bind_address={bind}
default_proxy=0
register_only_when_network_is_up=0
auto_net_state_mon=0
use_ipv6=0
ipv6_migration_done=1
root_ca={ca}
verify_server_certs=1
verify_server_cn=1
client_cert_chain={cert[0]}
client_cert_key={cert[1]}
[rtp]
audio_rtp_port={rtp_port}
nortp_timeout=30
[storage]
uri={os.path.join(folder, "linphone.db")}
[misc]
user_certificates_path={folder}
[proxy_0]
reg_proxy=<sip:{proxy};transport={transport}>
reg_route=<sip:{proxy};transport={transport};lr>
reg_identity=<sip:{user}@{domain}>
reg_expires={expires}
reg_sendregister=1
publish=0
[auth_info_0]
username={user}
passwd={password}
realm={domain}
domain={domain}
""")
    return Phone(
        name,
        [
            *prefix,
            "stdbuf",
            "-oL",
            "linphonec",
            "-c",
            os.path.join(folder, "rc"),
            "-a",
            "-d",
            "6",
            "-l",
            os.path.join(folder, "log"),
        ],
        cwd=folder,
        env={"HOME": folder},
    )


LINPHONE_SOUND = "/usr/share/sounds/linphone/hello8000.wav"
"""What linphonec plays into a call (``play``): with no sound card it sends no RTP else."""

_BARESIP_RATE = re.compile(r"audio=(\d+)/(\d+)")
_LINPHONE_RECEIVED = re.compile(r"ortp-message-received\s+(\d+) packets")


class Softphone(abc.ABC):
    """One phone of the interop suite, whatever its program: the steps of a call, each
    waiting (bounded) on the phone's own output. ``kind`` names the program."""

    kind = ""
    established = ""
    """What the phone prints when a call is up."""
    ended: tuple[str, ...] = ()
    """What it prints when a call ends or fails."""
    hangup_command = ""
    """What ends the phone's call (or gives up its attempt)."""

    def __init__(self, phone: Phone, user: str, transport: str):
        self.phone, self.user, self.transport = phone, user, transport

    def try_call(self, uri: str, timeout: float) -> bool:
        """Call ``uri``: True when the call was up within ``timeout`` seconds; the call,
        or the attempt, is ended either way (without waiting for the BYE's answer).

        The phone's word that the attempt ended is awaited (a few seconds at most): left
        in its output, it would end the next attempt's wait at once, and that attempt's
        hang-up would cut the next call before its challenge was even answered."""
        self.dial(uri)
        try:
            line = self.phone.wait_for(self.established, *self.ended, timeout=timeout)
        except AssertionError:
            line = ""
        self.phone.send(self.hangup_command)
        if not any(end in line for end in self.ended):
            try:
                self.phone.wait_for(*self.ended, timeout=5.0)
            except AssertionError:
                pass
        return self.established in line

    @abc.abstractmethod
    def wait_registered(self, timeout: float = 20.0) -> None:
        """Until the phone says its REGISTER got a 200 (AssertionError else)."""

    @abc.abstractmethod
    def dial(self, uri: str) -> None:
        """Call ``uri``."""

    @abc.abstractmethod
    def wait_established(self) -> None:
        """Until the call is up on this phone (a callee answers at once)."""

    def start_media(self) -> None:  # noqa: B027 (most phones need nothing)
        """Whatever the phone needs to send audio once the call is up."""

    @abc.abstractmethod
    def rtp_received(self, timeout: float) -> int | None:
        """RTP packets (or bits per second) received on the call, asked until some came or
        ``timeout`` passed; None when the phone tells it only after the call."""

    @abc.abstractmethod
    def hang_up(self) -> None:
        """Send the BYE and wait until the call is over here."""

    @abc.abstractmethod
    def wait_ended(self) -> None:
        """Until the call, ended by the other side, is over here."""

    def rtp_after_call(self) -> int:
        """For a phone that tells RTP only after the call: the packets it received (the
        others told it during the call: 0)."""
        return 0

    def stop(self) -> None:
        """End the phone's process."""
        self.phone.stop()


class PjsuaPhone(Softphone):
    kind = "pjsua2"
    established = "CALL CONFIRMED"
    ended = ("CALL DISCONNECTED",)
    hangup_command = "hangup"

    def wait_registered(self, timeout: float = 20.0) -> None:
        line = self.phone.wait_for("REGISTERED", timeout=timeout)
        assert line.endswith("REGISTERED 200"), self.phone.lines[-20:]

    def dial(self, uri: str) -> None:
        self.phone.send(f"call {uri}")

    def wait_established(self) -> None:
        self.phone.wait_for(self.established)

    def rtp_received(self, timeout: float) -> int | None:
        return self.phone.rtp_received(timeout)

    def hang_up(self) -> None:
        self.phone.send("hangup")
        line = self.phone.wait_for("CALL DISCONNECTED")
        assert line.endswith(" 200"), f"the BYE was answered {line}"

    def wait_ended(self) -> None:
        self.phone.wait_for("CALL DISCONNECTED")


class BaresipPhone(Softphone):
    kind = "baresip"
    established = "EVENT CALL_ESTABLISHED"
    ended = ("EVENT CALL_CLOSED",)
    hangup_command = "/hangup"

    def wait_registered(self, timeout: float = 20.0) -> None:
        # {reg-id/transport/family}: reg-id is 0, or 1 for an RFC 5626 outbound flow
        line = self.phone.wait_for(f"/{self.transport.upper()}/v4}}", timeout=timeout)
        assert " 200 OK " in line, self.phone.lines[-20:]
        self.phone.send("/reginfo")  # opens the ctrl_tcp connection its events come on

    def dial(self, uri: str) -> None:
        self.phone.send(f"/dial {uri}")

    def wait_established(self) -> None:
        self.phone.wait_for(self.established)

    def rtp_received(self, timeout: float) -> int | None:
        """baresip's status line, ``audio=<tx>/<rx> (bit/s)``, once both are above 0."""
        deadline = time.monotonic() + timeout
        rate = 0
        while rate == 0 and time.monotonic() < deadline:
            found = _BARESIP_RATE.search(
                self.phone.wait_for("audio=", timeout=max(0.5, deadline - time.monotonic()))
            )
            if found:
                rate = min(int(found.group(1)), int(found.group(2)))
        return rate

    def hang_up(self) -> None:
        """``/hangup``; the call closes at once here, the BYE's answer comes after (in
        the SIP trace, ``-s``)."""
        since = len(self.phone.lines)
        self.phone.send("/hangup")
        self.phone.wait_for("EVENT CALL_CLOSED")
        status = self.phone.final_status("BYE", since)
        assert status == 200, f"the BYE was answered {status}"

    def wait_ended(self) -> None:
        self.phone.wait_for("EVENT CALL_CLOSED")


class LinphonePhone(Softphone):
    kind = "linphone"
    established = " connected."
    ended = (" ended (", " error", "failed")
    hangup_command = "terminate"

    def __init__(self, phone: Phone, user: str, transport: str, log: str):
        super().__init__(phone, user, transport)
        self.log = log
        self.log_offset = 0

    def wait_registered(self, timeout: float = 20.0) -> None:
        """linphonec prints no registration event: ``status register`` is asked."""
        deadline = time.monotonic() + timeout
        while True:
            self.phone.send("status register")
            line = self.phone.wait_for("registered", timeout=5)
            if line.startswith("registered, identity="):
                return
            assert time.monotonic() < deadline, self.phone.lines[-20:]
            time.sleep(0.3)  # the next look, bounded by the deadline

    def dial(self, uri: str) -> None:
        self.phone.send(f"call {uri}")

    def wait_established(self) -> None:
        self.phone.wait_for(self.established)
        self.log_offset = os.path.getsize(self.log)

    def start_media(self) -> None:
        self.phone.send(f"play {LINPHONE_SOUND}")

    def rtp_received(self, timeout: float) -> int | None:
        return None

    def hang_up(self) -> None:
        """``terminate``, then the BYE's answer as linphonec's log shows the message."""
        self.phone.send("terminate")
        self.phone.wait_for(" ended (")
        deadline = time.monotonic() + 10
        while (status := final_status(self._log_lines(), "BYE")) is None:
            assert time.monotonic() < deadline, "no final response to the BYE within 10 s"
            time.sleep(0.1)
        assert status == 200, f"the BYE was answered {status}"

    def _log_lines(self) -> list[str]:
        """linphonec's log lines since the call was established."""
        with open(self.log, errors="replace") as f:
            f.seek(self.log_offset)
            return f.read().splitlines()

    def wait_ended(self) -> None:
        self.phone.wait_for(" ended (")

    def rtp_after_call(self) -> int:
        """The audio session's received packets, from the RTP statistics linphone logs
        when the call's streams stop (waited for, bounded)."""
        deadline = time.monotonic() + 10
        while True:
            found = _LINPHONE_RECEIVED.findall("\n".join(self._log_lines()))
            if found or time.monotonic() > deadline:
                return max(map(int, found)) if found else 0
            time.sleep(0.1)


def _run_pjsua(args) -> None:
    import pjsua2 as pj

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 1
    cfg.logConfig.consoleLevel = 1
    cfg.medConfig.noVad = True  # the null device's silence is still sent: RTP to count
    cfg.medConfig.sndAutoCloseTime = -1  # one device clock for every call, never reopened
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = args.port
    tcfg.boundAddress = args.bind
    kind = {
        "udp": pj.PJSIP_TRANSPORT_UDP,
        "tcp": pj.PJSIP_TRANSPORT_TCP,
        "tls": pj.PJSIP_TRANSPORT_TLS,
    }[args.transport]
    if args.ca:
        tcfg.tlsConfig.CaListFile = args.ca
        tcfg.tlsConfig.verifyServer = True
    if args.cert:
        tcfg.tlsConfig.certFile = args.cert
        tcfg.tlsConfig.privKeyFile = args.key
    ep.transportCreate(kind, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    calls: list = []

    class Call(pj.Call):
        def onCallState(self, prm):
            info = self.getInfo()
            say(f"CALL {info.stateText} {info.lastStatusCode}")

        def onCallMediaState(self, prm):
            # The null device's silence into the call and the call to it, so the stream
            # has frames to send whichever side offered.
            devices = ep.audDevManager()
            for i, media in enumerate(self.getInfo().media):
                if (
                    media.type == pj.PJMEDIA_TYPE_AUDIO
                    and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE
                ):
                    audio = self.getAudioMedia(i)
                    devices.getCaptureDevMedia().startTransmit(audio)
                    audio.startTransmit(devices.getPlaybackDevMedia())

        def onCallTransferStatus(self, prm):
            say(f"XFER {prm.statusCode}")

    class Account(pj.Account):
        def onRegState(self, prm):
            say(f"REGISTERED {prm.code}")

        def onIncomingCall(self, prm):
            call = Call(self, prm.callId)
            calls.append(call)
            say("INCOMING")
            op = pj.CallOpParam()
            op.statusCode = 200
            call.answer(op)

    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{args.user}@{args.domain}"
    suffix = "" if args.transport == "udp" else f";transport={args.transport}"
    acfg.regConfig.registrarUri = f"sip:{args.proxy}{suffix}"
    acfg.sipConfig.proxies.append(f"sip:{args.proxy}{suffix};lr")
    acfg.mediaConfig.transportConfig.port = args.rtp_port
    acfg.mediaConfig.transportConfig.portRange = 10
    acfg.mediaConfig.transportConfig.boundAddress = args.bind
    acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", args.user, 0, args.password))
    if args.expires:
        acfg.regConfig.timeoutSec = args.expires
    if args.retry:
        acfg.regConfig.retryIntervalSec = acfg.regConfig.firstRetryIntervalSec = args.retry
    if args.keepalive:
        acfg.natConfig.udpKaIntervalSec = args.keepalive
    acc = Account()
    acc.create(acfg)
    try:
        while True:
            ep.libHandleEvents(20)
            ready, _, _ = select.select([sys.stdin], [], [], 0)
            if not ready:
                continue
            line = sys.stdin.readline()
            if not line or line.strip() == "quit":
                break
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "call":
                call = Call(acc)
                calls.append(call)
                call.makeCall(arg, pj.CallOpParam(True))
            elif cmd == "rtp":
                for call in calls:
                    if call.isActive() and call.getInfo().state == pj.PJSIP_INV_STATE_CONFIRMED:
                        say(f"RTP {call.getStreamStat(0).rtcp.rxStat.pkt}")
                        break
                else:
                    say("RTP none")
            elif cmd == "xfer":
                for call in calls:
                    if call.isActive():
                        call.xfer(arg, pj.CallOpParam(True))
                        break
            elif cmd == "hangup":
                for call in calls:
                    if call.isActive():
                        call.hangup(pj.CallOpParam(True))
    finally:
        calls.clear()
        acc.shutdown()
        ep.libDestroy()


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.phones pjsua ...``: run one PJSUA2 phone on stdin/stdout."""
    parser = argparse.ArgumentParser(prog="tests.phones")
    sub = parser.add_subparsers(dest="phone", required=True)
    p = sub.add_parser("pjsua")
    for opt in ("--user", "--password", "--domain", "--proxy"):
        p.add_argument(opt, required=True)
    p.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp")
    p.add_argument(
        "--ca", default="", help="PEM file of the CA the proxy's TLS certificate is checked against"
    )
    p.add_argument(
        "--cert",
        default="",
        help="PEM certificate for the TLS connections the proxy opens to the phone",
    )
    p.add_argument("--key", default="", help="its private key")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rtp-port", type=int, default=4000)
    p.add_argument("--bind", default="127.0.0.1", help="the address it listens on")
    p.add_argument("--expires", type=int, default=0, help="registration expiry (s)")
    p.add_argument(
        "--retry", type=int, default=0, help="seconds before registering again after a failure"
    )
    p.add_argument("--keepalive", type=int, default=0, help="UDP keepalive interval (s)")
    args = parser.parse_args(argv)
    _run_pjsua(args)


if __name__ == "__main__":
    main()
