"""Separate hosts for tests: Linux network namespaces joined by veth pairs to a bridge.

``Network(["node1", "node2", "phones"])`` makes one namespace per host, each
with loopback up and one veth interface whose other end is a port of a
bridge in the root namespace. The bridge holds the subnet's ``.1``, so the
test process itself (control requests, OPTIONS pings) reaches every host
without entering a namespace; hosts get ``.11``, ``.12``... in order.

Names carry the test process's pid (namespaces ``tandem-PID-HOST``, bridge
``tbPID``, veth ends ``tvPIDxN``) and the ``/24`` is one no route of the
root namespace uses yet, so parallel runs never collide. ``close()``
removes everything (killing what still runs in the namespaces); it is safe
to call twice. ``sweep()`` removes what runs of a dead pid left behind.

Commands run in a host through ``Host.prefix`` (``ip netns exec NAME``).
``Host.link(False)`` takes the host's cable out (its bridge port down);
``Host.block(addresses)`` drops its traffic to those addresses (blackhole
routes in the host), which splits a cluster while both sides stay
reachable from the test and the phones. ``behind_nat`` adds a host behind a
NAT router host.
"""

import os
import re
import signal
import subprocess

import pytest

NS_PREFIX = "tandem-"
BRIDGE_PREFIX = "tb"
VETH_PREFIX = "tv"


class NamespacesUnavailable(Exception):
    """The kernel (or the lack of privileges or of ``ip``) refuses network namespaces."""


def ip(
    *args: str, netns: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (in ``netns`` when given); raise ``RuntimeError`` on failure."""
    cmd = ["ip", *(("-n", netns) if netns else ()), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and out.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL every process still running in namespace ``ns``."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
    for pid in out.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def sweep() -> list[str]:
    """Remove namespaces, bridges and veths of this module left by dead test runs.

    Only names of this module's own prefixes whose pid is no longer running
    are touched. Returns the names removed.
    """
    removed = []
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=30
    ).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(re.escape(NS_PREFIX) + r"(\d+)-.+", name)
        if m and not _alive(int(m.group(1))):
            _kill_namespace_processes(name)
            ip("netns", "del", name, check=False)
            removed.append(name)
    links = ip("-o", "link", "show", check=False).stdout
    for name in re.findall(r"^\d+: ([^:@]+)", links, re.M):
        m = re.fullmatch(rf"(?:{BRIDGE_PREFIX}(\d+)|{VETH_PREFIX}(\d+)x\d+)", name)
        if m and not _alive(int(m.group(1) or m.group(2))):
            ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def _free_subnet(pid: int) -> str:
    """A ``10.a.b`` prefix of a /24 that no route of the root namespace covers."""
    routes = ip("-4", "route", "show", "table", "all", check=False).stdout
    used = set(re.findall(r"\b10\.(\d+)\.(\d+)\.\d+", routes))
    for k in range(1000):
        a, b = 100 + (pid + k) % 100, (pid // 100 + k) % 256
        if (str(a), str(b)) not in used:
            return f"10.{a}.{b}"
    raise RuntimeError("no free 10.x.y.0/24 subnet")


class Host:
    """One host: a namespace with one address on the test network."""

    def __init__(self, network: "Network", name: str, index: int):
        self.name = name
        self.ns = f"{NS_PREFIX}{network.pid}-{name}"
        self.address = f"{network.subnet}.{10 + index}"
        self.veth = f"{VETH_PREFIX}{network.pid}x{index}"
        self.prefix = ["ip", "netns", "exec", self.ns]
        """Prepend to a command to run it in this host."""
        self._blocked: list[str] = []

    def link(self, up: bool) -> None:
        """Plug (``True``) or unplug (``False``) the host's cable: its bridge port."""
        ip("link", "set", self.veth, "up" if up else "down")

    def block(self, addresses: list[str]) -> None:
        """Drop every packet this host sends to ``addresses`` (a one-way cut each)."""
        for a in addresses:
            ip("route", "add", "blackhole", f"{a}/32", netns=self.ns)
            self._blocked.append(a)

    def unblock(self) -> None:
        """Remove every ``block``."""
        while self._blocked:
            ip("route", "del", "blackhole", f"{self._blocked.pop()}/32", netns=self.ns, check=False)


class Network:
    """Hosts named ``names`` on one bridged /24; ``close()`` removes them all.

    Raises ``NamespacesUnavailable`` when a namespace cannot be made at all.
    """

    def __init__(self, names: list[str]):
        self.pid = os.getpid()
        self.bridge = f"{BRIDGE_PREFIX}{self.pid}"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        sweep()
        self.subnet = _free_subnet(self.pid)
        probe = f"{NS_PREFIX}{self.pid}-probe"
        try:
            made = subprocess.run(
                ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30
            )
        except FileNotFoundError as exc:
            raise NamespacesUnavailable(f"no ip command: {exc}") from None
        if made.returncode:
            raise NamespacesUnavailable(made.stderr.strip() or "ip netns add failed")
        ip("netns", "del", probe, check=False)
        try:
            self._build(names)
        except BaseException:
            self.close()
            raise

    def _build(self, names: list[str]) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for index, name in enumerate(names, start=1):
            host = Host(self, name, index)
            self.hosts[name] = host
            ip("netns", "add", host.ns)
            self._namespaces.append(host.ns)
            ip("link", "set", "lo", "up", netns=host.ns)
            ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
            ip("link", "set", host.veth, "master", self.bridge)
            ip("link", "set", host.veth, "up")
            ip("addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.ns)
            ip("link", "set", "eth0", "up", netns=host.ns)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def close(self) -> None:
        """Kill what runs in the hosts and remove namespaces, veths and the bridge."""
        for ns in self._namespaces:
            _kill_namespace_processes(ns)
            ip("netns", "del", ns, check=False)
        self._namespaces.clear()
        for host in self.hosts.values():
            ip("link", "del", host.veth, check=False)
        ip("link", "del", self.bridge, check=False)


def network_or_skip(names: list[str]) -> "Network":
    """A ``Network`` of hosts ``names``; where the kernel refuses namespaces the test is
    skipped, and failed when CI is set (CI must run it)."""
    from tests.conftest import _in_ci

    try:
        return Network(names)
    except NamespacesUnavailable as exc:
        if _in_ci():
            pytest.fail(f"network namespaces are required when CI is set: {exc}", pytrace=False)
        pytest.skip(f"the kernel refuses network namespaces here: {exc}")


def behind_nat(net: Network, router: str, name: str) -> list[str]:
    """A host ``name`` on 192.168.77.2/24 behind the host ``router`` of ``net``, which
    masquerades it (iptables MASQUERADE on its ``eth0``); the command prefix that runs
    in it. Removed with the network (``close``)."""
    nat = net[router]
    ns = f"{NS_PREFIX}{net.pid}-{name}"
    inner = f"{VETH_PREFIX}{net.pid}x99"
    ip("netns", "add", ns)
    net._namespaces.append(ns)
    ip("link", "set", "lo", "up", netns=ns)
    ip("link", "add", inner, "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("link", "set", inner, "netns", nat.ns)
    ip("addr", "add", "192.168.77.1/24", "dev", inner, netns=nat.ns)
    ip("link", "set", inner, "up", netns=nat.ns)
    ip("addr", "add", "192.168.77.2/24", "dev", "eth0", netns=ns)
    ip("link", "set", "eth0", "up", netns=ns)
    ip("route", "add", "default", "via", "192.168.77.1", netns=ns)
    for cmd in (
        ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE"],
    ):
        subprocess.run([*nat.prefix, *cmd], check=True, capture_output=True, timeout=30)
    return ["ip", "netns", "exec", ns]
