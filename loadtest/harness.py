"""Real processes on loopback: Tandem nodes and SIPp runs, for tests and benchmarks.

``NodeProcess`` writes a node configuration into a folder, provisions
users, starts ``run.py node`` and waits (bounded) until it answers OPTIONS.
``run_sipp`` runs one SIPp scenario to completion (bounded by a global
timeout) and returns its final statistics.
"""

import csv
import glob
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from actors.lab import options_ping
from store.files import write_private

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIPP_DIR = os.path.join(ROOT, "loadtest", "sipp")


def free_port(address: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``address``.

    Taken below the kernel's range of ephemeral ports (32768 and up), so a
    node started later does not find its port taken by another process's
    outgoing connection.
    """
    for _ in range(200):
        port = random.randint(20000, 32000)
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u,
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t,
        ):
            try:
                u.bind((address, port))
                t.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def write_users_csv(path: str, n: int, prefix: str = "user", start: int = 0) -> list:
    """Write ``n`` users ``prefix<i>`` with password ``pw<i>``; return the rows."""
    rows = [(f"{prefix}{i}", f"pw{i}") for i in range(start, start + n)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["username", "password"])
        w.writerows(rows)
    return rows


class NodeProcess:
    """One ``run.py node`` process with its own folder, database and port.

    ``auth`` adds lines to its ``[auth]`` section, ``sip_lines`` to its ``[sip]``
    section (TLS), ``limits`` is its
    ``[limits]`` section: by default the per-source UDP rate limit is off,
    since a load test sends everything from one address, and so is the
    shedding of new requests under overload (``overload_delay``), since on a
    machine shared with other tests a node reads late for reasons not its
    own; the tests and benchmarks of overload give their own ``limits``.
    """

    def __init__(
        self,
        workdir: str,
        node_id: str = "node1",
        address: str = "127.0.0.1",
        port: int | None = None,
        domain: str = "example.test",
        database: str | None = None,
        extra: str = "",
        secret: str = "00" * 32,
        front: bool = False,
        auth: str = "",
        limits: str = "udp_rate = 0\noverload_delay = 0",
        prefix: tuple = (),
        log_file: str = "",
        root: str = ROOT,
        sip_lines: str = "",
    ):
        self.prefix = list(prefix)
        self.root = root
        """The source tree whose ``run.py`` runs (another checkout, for a before/after run)."""
        """Command prefix the node runs under (``ip netns exec NAME`` for another host)."""
        self.dir = os.path.join(workdir, node_id)
        os.makedirs(self.dir, exist_ok=True)
        self.id = node_id
        self.address = address
        self.port = port or free_port(address)
        self.domain = domain
        self.database = database or f"sqlite:///{self.dir}/tandem.db"
        self.config = os.path.join(self.dir, "node.toml")
        self.log_path = os.path.join(self.dir, "node.log")
        """The process's stdout and stderr."""
        self.log_file = log_file
        """``[node] log_file``, where the node logs instead, if set."""
        self.proc = None
        self.front = front
        write_private(
            self.config,
            f"""[node]
id = "{node_id}"
data_dir = "{self.dir}"
log_level = "INFO"
{f'log_file = "{log_file}"' if log_file else ""}

[sip]
address = "{address}"
port = {self.port}
domain = "{domain}"
challenge_front = {"true" if front else "false"}
{sip_lines}

[auth]
secret = "{secret}"
{auth}

[limits]
{limits}

[database]
url = "{self.database}"
{extra}
""",
        )

    def run_cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run ``run.py ARGS --config this-node`` (e.g. user import) to completion."""
        cmd = [
            sys.executable,
            os.path.join(self.root, "run.py"),
            *args[:1],
            "--config",
            self.config,
            *args[1:],
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)

    def start(self, ready_timeout: float = 20.0) -> "NodeProcess":
        """Start the process and wait until it answers OPTIONS (and, with a
        challenge front, until the front answers challenges)."""
        logged = self.log_file or self.log_path
        log_start = os.path.getsize(logged) if os.path.exists(logged) else 0
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    os.path.join(self.root, "run.py"),
                    "node",
                    "--config",
                    self.config,
                ],
                stdout=logf,
                stderr=logf,
                cwd=self.root,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.id} exited: {self.log_tail()}")
            if options_ping(self.address, self.port, 0.2) and (
                not self.front or self._logged_since(log_start, "answering challenges")
            ):
                return self
        raise RuntimeError(f"{self.id} not ready after {ready_timeout}s: {self.log_tail()}")

    def _logged_since(self, offset: int, text: str) -> bool:
        try:
            with open(self.log_file or self.log_path, "rb") as f:
                f.seek(offset)
                return text.encode() in f.read()
        except FileNotFoundError:
            return False

    def log_tail(self, n: int = 30) -> str:
        """The last lines of the node's log (its ``log_file`` if it has one)."""
        try:
            with open(self.log_file or self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process and wait for it; SIGKILL after ``timeout``."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def signal(self, sig: int) -> None:
        """Send ``sig`` (e.g. SIGSTOP/SIGCONT)."""
        self.proc.send_signal(sig)


@dataclass
class SippResult:
    """What one SIPp run did."""

    returncode: int
    successful: int
    failed: int
    retransmissions: int
    elapsed: float
    stats: dict
    stderr: str
    cpu: float = 0.0
    """CPU seconds (user and system) SIPp used."""
    rtt_ms: list[float] = field(default_factory=list)
    """With ``rtt``: every response time the scenario measured (``rtd``), in ms."""


def write_inf(path: str, rows: list[tuple]) -> None:
    """Write a SIPp injection file (SEQUENTIAL, ``;``-separated)."""
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for r in rows:
            f.write(";".join(str(x) for x in r) + "\n")


#: SIPp socket buffers of 4 MB: a node answers a whole group commit at once,
#: and one SIPp socket stands for thousands of phones, each with its own buffer.
SIPP_BUFFERS = ("-buff_size", "4194304")


def run_sipp(
    scenario: str,
    target: str,
    workdir: str,
    inf: str | None = None,
    calls: int = 1,
    rate: int = 10,
    limit: int = 200,
    transport: str = "u1",
    local_ip: str = "127.0.0.1",
    local_port: int | None = None,
    timeout: float = 120.0,
    extra: tuple = (),
    prefix: tuple = (),
    rtt: bool = False,
) -> SippResult:
    """Run SIPp until ``calls`` calls are done (or ``timeout``); return its statistics.

    ``prefix`` runs it under a command such as ``ip netns exec HOST`` (then
    give ``local_port``: this process cannot probe another host's ports).
    ``rtt`` keeps every response time the scenario measures (``-trace_rtt``:
    its ``rtd`` marks, from the call's start) in the result's ``rtt_ms``.
    """
    os.makedirs(workdir, exist_ok=True)
    stf = os.path.join(workdir, f"sipp-{os.getpid()}-{time.monotonic_ns()}.csv")
    sf = scenario if os.path.isabs(scenario) else os.path.join(SIPP_DIR, scenario)
    cmd = [
        *prefix,
        "sipp",
        "-sf",
        sf,
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-l",
        str(limit),
        "-t",
        transport,
        "-i",
        local_ip,
        "-p",
        str(local_port or free_port(local_ip)),
        "-nostdin",
        "-bg",
        "-trace_stat",
        "-stf",
        stf,
        "-fd",
        "1",
        "-timeout",
        f"{int(timeout)}s",
        "-timeout_error",
        "-max_retrans",
        "5",
        "-recv_timeout",
        "10s",
        *extra,
    ]
    if inf:
        cmd += ["-inf", inf]
    if rtt:
        cmd += ["-trace_rtt", "-rtt_freq", "1"]
    cmd.append(target)
    before = set(glob.glob(os.path.join(workdir, "*_rtt.csv")))
    t0 = time.monotonic()
    cpu0 = _children_cpu()
    proc = subprocess.run(
        [c for c in cmd if c != "-bg"],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        cwd=workdir,
    )
    elapsed = time.monotonic() - t0
    cpu = _children_cpu() - cpu0
    stats = _last_stats(stf)
    rtts = []
    for path in sorted(set(glob.glob(os.path.join(workdir, "*_rtt.csv"))) - before):
        rtts += _rtts(path)
        os.remove(path)
    return SippResult(
        proc.returncode,
        int(stats.get("SuccessfulCall(C)", 0) or 0),
        int(stats.get("FailedCall(C)", 0) or 0),
        int(stats.get("Retransmissions(C)", 0) or 0),
        elapsed,
        stats,
        proc.stderr[-3000:],
        cpu,
        rtts,
    )


def _rtts(path: str) -> list[float]:
    """The response times (ms) of a SIPp ``-trace_rtt`` file (``date_ms;rtt_ms;rtd_no``)."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            parts = line.strip().split(";")
            try:
                out.append(float(parts[1]))
            except (IndexError, ValueError):
                continue  # its header line
    return out


def _children_cpu() -> float:
    """CPU seconds of the waited-for children of this process (SIPp runs one at a time)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _last_stats(path: str) -> dict:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _keys_on_host(prefix: str, command_prefix: tuple) -> tuple[str, str]:
    """Run ``run.py keys --out PREFIX`` under ``command_prefix``; return the pair it wrote."""
    from actors.keys import read_keypair

    out = subprocess.run(
        [*command_prefix, sys.executable, os.path.join(ROOT, "run.py"), "keys", "--out", prefix],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    if out.returncode:
        raise RuntimeError(f"run.py keys --out {prefix} failed: {out.stderr}")
    return read_keypair(prefix)


class Cluster:
    """``n`` nodes that replicate to each other, and a control client.

    Each node gets its own CurveZMQ key pair, PUB, snapshot and control
    endpoints, and every other node as a peer; ``settings`` adds
    ``[cluster]`` keys (``heartbeat``, ``dead_after``...). The client key
    used for control requests is in every node's ``control_keys``. ``limits``
    replaces every node's ``[limits]`` section (``NodeProcess``'s default otherwise).

    By default every node is on loopback ``address`` with free ports. With
    ``hosts``, a list of ``(address, command prefix)`` one per node, node k
    runs under its prefix (e.g. ``ip netns exec HOST``) on its own address
    with the standard ports: SIP on 5060, bus, snapshot and control on
    7001-7003, and makes its key pair there with ``run.py keys --out``, as
    an administrator would on each server. ``sip_addresses`` (one per host) puts
    SIP on other addresses than the bus (floating ones, ``[cluster] takeover``).
    ``sip_lines`` go into every node's ``[sip]`` section, or, a list, one per node.
    """

    def __init__(
        self,
        workdir: str,
        n: int = 3,
        domain: str = "example.test",
        settings: dict | None = None,
        address: str = "127.0.0.1",
        extra: str = "",
        auth: str = "",
        hosts: list[tuple[str, tuple]] | None = None,
        limits: str | None = None,
        sip_addresses: list[str] | None = None,
        sip_lines: str | list[str] = "",
    ):
        from actors.keys import Member, cluster_toml, generate_keypair

        self.client_public, self.client_secret = generate_keypair()
        if hosts is not None:
            n = len(hosts)
        members = []
        for k in range(1, n + 1):
            if hosts is None:
                ends = [f"tcp://{address}:{free_port(address)}" for _ in range(3)]
                keys = generate_keypair()
                sip = f"{address}:{free_port(address)}"
            else:
                ends = [f"tcp://{hosts[k - 1][0]}:{port}" for port in (7001, 7002, 7003)]
                keys = _keys_on_host(os.path.join(workdir, f"node{k}", "bus"), hosts[k - 1][1])
                sip = f"{(sip_addresses or [h for h, _ in hosts])[k - 1]}:5060"
            members.append(Member(f"node{k}", *ends, *keys, sip=sip))
        self.members = {m.id: m for m in members}
        self.nodes = []
        for k, m in enumerate(members):
            text = (
                extra
                + "\n"
                + cluster_toml(m, members, control_keys=[self.client_public], **(settings or {}))
            )
            host, port = m.sip.rsplit(":", 1)
            self.nodes.append(
                NodeProcess(
                    workdir,
                    m.id,
                    host,
                    int(port),
                    domain=domain,
                    extra=text,
                    auth=auth,
                    sip_lines=(sip_lines if isinstance(sip_lines, str) else sip_lines[k]),
                    prefix=hosts[k][1] if hosts else (),
                    **({"limits": limits} if limits is not None else {}),
                )
            )
        self._bus = None

    def provision(self, users_csv: str) -> None:
        """Import the users of ``users_csv`` into every node's database."""
        for node in self.nodes:
            out = node.run_cli("user", "import", users_csv)
            if out.returncode:
                raise RuntimeError(f"user import on {node.id} failed: {out.stderr}")

    def start(self, ready_timeout: float = 20.0) -> "Cluster":
        """Start every node (each waits until it answers OPTIONS)."""
        for node in self.nodes:
            node.start(ready_timeout)
        return self

    def stop(self) -> None:
        """Stop every node (SIGCONT first, in case one is stopped) and the client."""
        for node in self.nodes:
            if node.proc and node.proc.poll() is None:
                node.signal(signal.SIGCONT)
            node.stop()
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    def control(self, node: NodeProcess, cmd: str, timeout: float = 2.0, **args) -> dict:
        """Send ``{"cmd": cmd, **args}`` to ``node``'s control endpoint; return the result.

        Raises ``actors.bus.BusError`` when it does not answer within ``timeout``.
        """
        from actors.bus import Bus, request

        if self._bus is None:
            self._bus = Bus(self.client_public, self.client_secret, "harness")
        m = self.members[node.id]
        return request(self._bus, m.control, m.public_key, {"cmd": cmd, **args}, timeout)

    def digests(self, nodes=None, timeout: float = 2.0) -> dict:
        """``{node id: digest summary}``; ``None`` for a node that does not answer."""
        from actors.bus import BusError

        out = {}
        for node in nodes or self.nodes:
            try:
                out[node.id] = self.control(node, "digest", timeout)
            except BusError:
                out[node.id] = None
        return out

    def wait_converged(self, timeout: float, nodes=None, step: float = 0.05) -> tuple[bool, dict]:
        """Poll until every node is synced with the same digest, or ``timeout``.

        Returns ``(converged, last digests)``.
        """
        deadline = time.monotonic() + timeout
        while True:
            got = self.digests(nodes, timeout=max(0.2, min(2.0, deadline - time.monotonic())))
            values = list(got.values())
            if (
                all(v is not None and v["state"] == "synced" for v in values)
                and len({v["digest"] for v in values}) == 1
            ):
                return True, got
            if time.monotonic() >= deadline:
                return False, got
            time.sleep(step)

    def wait_synced(self, timeout: float, step: float = 0.05) -> bool:
        """Poll until every running node reports ``synced``."""
        from actors.bus import BusError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(self.control(n, "status", 1.0)["state"] == "synced" for n in self.nodes):
                    return True
            except BusError:
                pass
            time.sleep(step)
        return False
