"""Join-made clusters for tests: a real master and nodes made by ``run.py node join``.

``Master`` writes a master configuration, runs ``run.py master init`` (keeping
the join token it prints) and ``run.py master``, and talks to its API as the
admin and to the nodes' control endpoints with the master's own key.
``JoinedNode`` runs ``run.py node join`` and then ``run.py node`` from the
configuration the join wrote. Both take a command prefix (``ip netns exec
HOST``) to run on another host of ``tests.netns``.
"""

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import dns.message
import dns.query

from actors.bus import Bus, BusError, request
from actors.lab import options_ping
from loadtest.harness import ROOT, free_port
from store.files import write_private

READY = 20.0
"""Bound on a process answering (seconds)."""


def run_py(
    *args: str, timeout: float = 60.0, prefix: tuple = (), root: str = ROOT
) -> subprocess.CompletedProcess:
    """Run ``run.py ARGS`` of the tree ``root`` (under ``prefix``) to completion."""
    return subprocess.run(
        [*prefix, sys.executable, os.path.join(root, "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=root,
    )


def bus_ports(address: str) -> int:
    """The first of three consecutive ports free on ``address``."""
    for _ in range(100):
        base = free_port(address)
        try:
            for port in (base + 1, base + 2):
                with socket.socket() as s:
                    s.bind((address, port))
        except OSError:
            continue
        return base
    raise RuntimeError("no three free ports")


def wait(cond, timeout: float, step: float = 0.05):
    """Poll ``cond`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not (value := cond()) and time.monotonic() < deadline:
        time.sleep(step)
    return value


class Proc:
    """One ``run.py`` process (under ``prefix``) with its output in a log file.

    ``root`` is the source tree whose ``run.py`` runs (set it to another release's
    tree between a ``stop`` and a ``start`` to upgrade the process)."""

    def __init__(self, args: list[str], log_path: str, prefix: tuple = (), root: str = ROOT):
        self.args, self.log_path, self.prefix, self.proc = args, log_path, prefix, None
        self.root = root

    def start(self) -> "Proc":
        """Start the process, its output appended to its log."""
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, os.path.join(self.root, "run.py"), *self.args],
                stdout=logf,
                stderr=logf,
                cwd=self.root,
            )
        return self

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the process and wait for it (SIGKILL after 10 s)."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the process's output."""
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])


class JoinedNode(Proc):
    """A node made by ``run.py node join`` (its configuration is the join's)."""

    def __init__(
        self, work: str, name: str, address: str = "127.0.0.1", prefix: tuple = (), root: str = ROOT
    ):
        """On loopback ``address`` with free ports; with ``prefix`` (another host),
        on the standard ports (SIP 5060, bus 7001-7003); ``root``: the release's tree."""
        self.id = name
        self.dir = os.path.join(work, name)
        self.address = address
        self.port = 5060 if prefix else free_port(address)
        self.bus_port = 7001 if prefix else bus_ports(address)
        self.config = os.path.join(self.dir, "node.toml")
        self.control = f"tcp://{address}:{self.bus_port + 2}"
        self.domain = "example.test"
        os.makedirs(self.dir, exist_ok=True)
        super().__init__(
            ["node", "--config", self.config], os.path.join(self.dir, "out.log"), prefix, root
        )

    def join(self, url: str, token: str, *extra: str) -> subprocess.CompletedProcess:
        """``run.py node join`` on this node's host (``extra``: more options)."""
        return run_py(
            "node",
            "join",
            "--master",
            url,
            "--token",
            token,
            "--address",
            self.address,
            "--data",
            self.dir,
            "--port",
            str(self.port),
            "--bus-port",
            str(self.bus_port),
            *extra,
            prefix=self.prefix,
            root=self.root,
        )

    def public_key(self) -> str:
        """The public key ``node join`` made."""
        with open(os.path.join(self.dir, "bus.public")) as f:
            return f.read().strip()

    def start(self) -> "JoinedNode":
        """Run the node and wait (bounded) until it answers OPTIONS."""
        super().start()
        if (
            not wait(lambda: not self.alive() or options_ping(self.address, self.port, 0.2), READY)
            or not self.alive()
        ):
            raise RuntimeError(f"node in {self.dir} not up: {self.log_tail()}")
        return self


class Master:
    """The master process, the nodes that joined it, and a control client with its key."""

    def __init__(self, work: str, address: str = "127.0.0.1", prefix: tuple = (), root: str = ROOT):
        """``root``: the tree of the release the master runs (``self.master.root``)."""
        self.work = work
        self.port = 8080 if prefix else free_port(address)
        self.url = f"http://{address}:{self.port}"
        self.address = address
        self.dns_port = 5353 if prefix else free_port(address)
        """Where the master serves the cluster's zone (``[master] dns``)."""
        self.data = os.path.join(work, "master")
        self.config = os.path.join(work, "master.toml")
        write_private(
            self.config,
            f'[master]\nlisten = "{address}:{self.port}"\n'
            f'data_dir = "{self.data}"\ndomain = "example.test"\n'
            "push_interval = 0.3\njoin_token_ttl = 600\n"
            f'dns = "{address}:{self.dns_port}"\n',
        )
        self.master = Proc(
            ["master", "--config", self.config], os.path.join(work, "master.log"), prefix, root
        )
        self.bus: Bus | None = None
        self.nodes: dict[str, JoinedNode] = {}
        self.first_token = ""

    def init_and_start(self) -> "Master":
        """``init``, then ``start``."""
        return self.init().start()

    def init(self) -> "Master":
        """``run.py master init``, keeping the join token it prints."""
        init = run_py(
            "master",
            "init",
            "--config",
            self.config,
            prefix=self.master.prefix,
            root=self.master.root,
        )
        if init.returncode:
            raise RuntimeError(f"master init failed: {init.stderr}")
        self.first_token = token_of(init.stdout)
        return self

    def start(self) -> "Master":
        """Run the master until it answers its login page (bounded)."""
        self.master.start()

        def ready():
            try:
                with urllib.request.urlopen(self.url + "/login", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        if not wait(ready, READY):
            raise RuntimeError(f"master not up: {self.master.log_tail()}")
        return self

    def token(self) -> str:
        """A new join token from ``run.py master token``."""
        out = run_py(
            "master",
            "token",
            "--config",
            self.config,
            prefix=self.master.prefix,
            root=self.master.root,
        )
        if out.returncode:
            raise RuntimeError(f"master token failed: {out.stderr}")
        return token_of(out.stdout)

    def secret(self, name: str) -> str:
        """A file of the master's data folder (its key pair, the admin password...)."""
        with open(os.path.join(self.data, name)) as f:
            return f.read().strip()

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """A JSON API call as the admin; its JSON answer."""
        auth = base64.b64encode(f"admin:{self.secret('admin-password')}".encode()).decode()
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body else None,
            headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def ask(self, node: JoinedNode, cmd: str, timeout: float = 2.0, **args) -> dict:
        """A control request to ``node`` with the master's key; ``BusError`` unanswered."""
        if self.bus is None:
            self.bus = Bus(self.secret("master.public"), self.secret("master.secret"), "test")
        return request(self.bus, node.control, node.public_key(), {"cmd": cmd, **args}, timeout)

    def status(self, node: JoinedNode) -> dict | None:
        """``node``'s brief status, or None when it does not answer."""
        try:
            return self.ask(node, "status", brief=True)
        except BusError:
            return None

    def holds(self, node: JoinedNode, user: str) -> bool:
        """Whether ``node`` holds a binding of ``user``."""
        try:
            found = self.ask(node, "bindings", user=f"sip:{user}@")
        except BusError:
            return False
        return any(b["aor"].startswith(f"sip:{user}@") for b in found["bindings"])

    def lookup(self, name: str, rdtype: str = "A") -> list[str]:
        """The records of ``name`` the master's DNS serves (empty when none)."""
        reply = dns.query.udp(
            dns.message.make_query(name, rdtype), self.address, port=self.dns_port, timeout=2
        )
        return sorted(r.to_text() for rrset in reply.answer for r in rrset)

    def digests(self, timeout: float = 2.0) -> dict:
        """``{node id: digest summary or None}`` of every node that joined."""
        out = {}
        for name, node in self.nodes.items():
            try:
                out[name] = self.ask(node, "digest", timeout)
            except BusError:
                out[name] = None
        return out

    def converged(self) -> dict | None:
        """The digests when every node is synced with the same digest, else None."""
        got = self.digests()
        values = list(got.values())
        if (
            all(v is not None and v["state"] == "synced" for v in values)
            and len({v["digest"] for v in values}) == 1
        ):
            return got
        return None

    def close(self) -> None:
        """Stop every node and the master."""
        for node in self.nodes.values():
            node.stop()
        self.master.stop()
        if self.bus is not None:
            self.bus.close()


def token_of(output: str) -> str:
    """The join token in a command's output (``--token T``)."""
    found = re.search(r"--token (\S+)", output)
    assert found, output
    return found.group(1)
