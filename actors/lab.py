"""``run.py lab``: a ready cluster on loopback, with demo users.

Writes one configuration file per node under the lab's data folder (0700,
its secrets 0600), makes a lab CA and a TLS certificate per node (kept across
restarts, see ``actors.lab_certs``) for each node's TLS listener on 5061,
provisions the demo users (and those of ``--users``) in every node's
database, starts each node as its own process, waits until each answers
OPTIONS, prints what a phone needs, and then watches the nodes:
a node that dies is reported at once (how it died, how long it had run) and
the others, the DNS and the lab go on serving, since showing a failover is
what the lab is for. ``run.py lab status`` and ``run.py lab restart NODE``
talk to the running lab over its control socket (see ``actors.lab_control``).
Ctrl-C or SIGTERM stops everything.
"""

import ipaddress
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import gevent
import peewee

from sipcore.zone import cluster_zone
from store.files import check_private, make_private_dir, write_private, InsecureFileError
from store.db import StoreError
from store.models import close_store, init_store
from store.users import add_user, add_users, import_users_csv

from .bus import Bus, BusError, request
from .dnsserver import DnsServer
from .keys import Member, cluster_toml, load_or_create_keypair
from .lab_certs import LabCertError, NodeCert, lab_ca, node_cert
from .lab_control import LabControlError, LabControlServer
from .lab_master import LabMaster
from .watched import WatchedProcess

log = logging.getLogger(__name__)

DOMAIN = "example.test"
BASE_ADDRESS = "127.0.0.10"
"""The lab's first loopback address: DNS here, node k on the k-th after it."""
TLS_PORT = 5061
"""Every lab node's SIP over TLS port (RFC 3261 §26.2's default for sips)."""
DEMO_USERS = [
    ("alice", "alice-secret"),
    ("bob", "bob-secret"),
    ("carol", "carol-secret"),
    ("dave", "dave-secret"),
]
LOAD_USERS = 200
"""Load-test users the lab provisions: ``load0``.. with password ``load<i>-secret``
(what ``loadtest/locustfile.py`` uses by default)."""
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_LIMIT = 15.0
"""Seconds a node may take to answer OPTIONS after it is started."""
WATCH_INTERVAL = 0.2
"""Seconds between two looks at the node processes."""
WEIGHTS_EVERY = 5
"""Looks between two reads of the master's nodes and SRV weights (the DNS follows them)."""


def load_users(n: int = LOAD_USERS) -> list[tuple[str, str]]:
    """The lab's load-test users: (``load<i>``, ``load<i>-secret``) for i below ``n``."""
    return [(f"load{i}", f"load{i}-secret") for i in range(n)]


def node_address(k: int, base: str = BASE_ADDRESS) -> str:
    """Loopback address of lab node ``k`` (1-based): the k-th address after ``base``."""
    return str(ipaddress.IPv4Address(base) + k)


def lab_members(data: str, n: int, base: str = BASE_ADDRESS) -> list[Member]:
    """The lab's nodes with their bus endpoints and key pairs (kept under ``data``)."""
    members = []
    for k in range(1, n + 1):
        node_dir = make_private_dir(os.path.join(data, f"node{k}"))
        public, secret = load_or_create_keypair(os.path.join(node_dir, "bus"))
        ip = node_address(k, base)
        members.append(
            Member(
                f"node{k}",
                f"tcp://{ip}:7001",
                f"tcp://{ip}:7002",
                f"tcp://{ip}:7003",
                public,
                secret,
                sip=f"{ip}:5060",
            )
        )
    return members


def write_node_config(
    data: str,
    k: int,
    secret: str,
    members: list[Member],
    lab_key: str,
    base: str = BASE_ADDRESS,
    master_key: str = "",
    tls: NodeCert | None = None,
) -> str:
    """Write lab node ``k``'s configuration (mode 0600); return its path. With
    ``tls`` the node listens for TLS on TLS_PORT with that certificate. It sets no
    ``tls_ca``: the connections a node opens go to phones' TLS Contacts, whose
    certificates are their own (self-signed), never the lab CA's."""
    node_dir = make_private_dir(os.path.join(data, f"node{k}"))
    tls_lines = (
        f'tls_port = {TLS_PORT}\ntls_cert = "{tls.cert}"\ntls_key = "{tls.key}"\n' if tls else ""
    )
    text = f"""[node]
id = "node{k}"
data_dir = "{node_dir}"
log_level = "INFO"

[sip]
address = "{node_address(k, base)}"
port = 5060
domain = "{DOMAIN}"
{tls_lines}
[auth]
secret = "{secret}"

[database]
url = "sqlite:///{node_dir}/tandem.db"

"""
    if len(members) > 1:
        extra = {"master_key": master_key} if master_key else {}
        text += cluster_toml(members[k - 1], members, control_keys=[lab_key], **extra)
    return write_private(os.path.join(node_dir, "node.toml"), text)


def options_ping(address: str, port: int = 5060, timeout: float = 0.5) -> bytes | None:
    """Send one OPTIONS over UDP; return the response bytes, or None after ``timeout``."""
    branch = "z9hG4bK" + secrets.token_hex(8)
    msg = (
        f"OPTIONS sip:{address}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch={branch};rport\r\n"
        f"From: <sip:probe@{DOMAIN}>;tag=1\r\nTo: <sip:{address}>\r\n"
        f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(msg, (address, port))
            return s.recv(65535)
        except OSError:
            return None


def _private_secret(path: str) -> str:
    """The hex secret kept in ``path`` (made first if missing), its mode tightened to 0600."""
    if not os.path.exists(path):
        write_private(path, secrets.token_hex(32))
    try:
        check_private(path, "lab secret")
    except InsecureFileError:
        log.warning("%s was readable by others; its mode is now 0600", path)
        os.chmod(path, 0o600)
    with open(path) as f:
        return f.read().strip()


def describe_exit(code: int) -> str:
    """How a process with return code ``code`` ended, in words."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class LabNode(WatchedProcess):
    """One node process of the lab."""

    k: int
    address: str
    config: str
    log_path: str
    proc: subprocess.Popen | None = None
    started: float = 0.0
    deaths: int = 0
    restarts: int = 0
    last_exit: str = ""
    reported: bool = field(default=False, repr=False)

    id: str = field(init=False)
    """The node id, ``node<k>``."""

    where: str = field(init=False)
    """The node's SIP address."""

    def __post_init__(self) -> None:
        self.id = f"node{self.k}"
        self.where = f"{self.address}:5060"

    def start(self) -> None:
        """Start the node process, its output appended to its log."""
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "run.py"), "node", "--config", self.config],
                stdout=logf,
                stderr=logf,
                cwd=ROOT,
            )
        self.started = time.monotonic()
        self.reported = False

    def wait_ready(self, limit: float = READY_LIMIT) -> bool:
        """Wait (bounded) until the node answers OPTIONS with 200."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.alive():
            answer = options_ping(self.address)
            if answer is not None and answer.startswith(b"SIP/2.0 200"):
                return True
        return False


class Lab:
    """The lab's nodes, DNS and control socket, from set-up to Ctrl-C."""

    def __init__(
        self, data: str, n: int, users_csv: str | None = None, base: str = BASE_ADDRESS, out=None
    ):
        self.data = make_private_dir(os.path.abspath(data))
        self.n = n
        self.users_csv = users_csv
        self.base = base
        self.out = out or sys.stdout
        self.nodes: list[LabNode] = []
        self.members: list[Member] = []
        self.lab_public = self.lab_secret = ""
        self.dns: DnsServer | None = None
        self.master = LabMaster(self.data, base, DOMAIN, ROOT)
        self.zone_nodes: list[tuple[str, str, int, int, int]] = []
        """The master's nodes as the DNS serves them (``store.master.zone_nodes``)."""
        self.serial = 1
        self.control = LabControlServer(self.data, self.status, self.restart)
        self.stopping = False
        self.ca = ""

    def say(self, text: str) -> None:
        """One message to the person watching the lab's terminal."""
        self.out.write(text + "\n")
        self.out.flush()

    def setup(self) -> None:
        """Keys, configurations and users for every node."""
        secret = _private_secret(os.path.join(self.data, "auth.secret"))
        self.members = lab_members(self.data, self.n, self.base)
        self.lab_public, self.lab_secret = load_or_create_keypair(os.path.join(self.data, "lab"))
        master_key = self.master.public_key()
        ca = lab_ca(os.path.join(self.data, "ca"))
        self.ca = ca[0]
        for k in range(1, self.n + 1):
            tls = node_cert(
                os.path.join(self.data, f"node{k}"),
                ca,
                f"node{k}",
                node_address(k, self.base),
                DOMAIN,
            )
            cfg = write_node_config(
                self.data, k, secret, self.members, self.lab_public, self.base, master_key, tls
            )
            init_store(f"sqlite:///{self.data}/node{k}/tandem.db")
            try:
                for name, pw in DEMO_USERS:
                    add_user(name, DOMAIN, pw, replace=True)
                add_users(load_users(), DOMAIN)
                if self.users_csv:
                    import_users_csv(self.users_csv, DOMAIN)
            finally:
                close_store()
            self.nodes.append(
                LabNode(
                    k,
                    node_address(k, self.base),
                    cfg,
                    os.path.join(self.data, f"node{k}", "node.log"),
                )
            )
        self.master.setup(
            self.members,
            {n.id: f"{n.address}:5060" for n in self.nodes},
            DEMO_USERS + load_users(),
            self.users_csv,
        )

    def watched(self) -> list:
        """The processes the lab watches and restarts: the nodes and the master."""
        return [*self.nodes, self.master]

    def start(self) -> bool:
        """Start every node and wait until each answers; False (logged) if one does not."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            if not node.wait_ready():
                log.error("%s did not start; see %s", node.id, node.log_path)
                return False
        self.master.start()
        if not self.master.wait_ready():
            log.error(
                "the master did not start; see %s (the nodes go on serving)", self.master.log_path
            )
        self.dns = self._start_dns()
        self.control.start()
        return True

    def _start_dns(self) -> DnsServer | None:
        """Serve the lab's zone (SRV weights 50:50...) on the base address, port 53 or 5353."""
        zone = self._zone()
        for port in (53, 5353):
            server = DnsServer(zone, DOMAIN, self.base, port)
            try:
                server.start()
                return server
            except OSError as e:
                log.warning("lab DNS cannot use %s:%d: %s", self.base, port, e)
        return None

    def _zone(
        self, nodes: list[tuple[str, str, int, int, int]] | None = None, serial: int = 1
    ) -> str:
        """The lab's zone over UDP, TCP and TLS: the master's nodes with their SRV
        weights, or every lab node at weight 50 until the master's are read. Every
        lab node takes TLS on TLS_PORT, known here before the master's first poll
        reports it (``web.push``)."""
        nodes = nodes or [(n.id, n.address, 5060, 50, TLS_PORT) for n in self.nodes]
        return cluster_zone(DOMAIN, [(*node[:4], TLS_PORT) for node in nodes], serial=serial)

    def _follow_master(self) -> None:
        """Serve the master's nodes and SRV weights once they change (a weight set on
        the DNS page, a node removed); the master may be down."""
        try:
            nodes = self.master.zone_nodes()
        except (StoreError, peewee.PeeweeException) as e:  # locked or missing: next time
            log.debug("cannot read the master's nodes: %s", e)
            return
        if nodes and nodes != self.zone_nodes and self.dns is not None:
            self.serial += 1
            self.dns.update_zone(self._zone(nodes, self.serial))
            log.info(
                "DNS zone now %s", ", ".join(f"{n[0]} {n[1]}:{n[2]} weight {n[3]}" for n in nodes)
            )
        self.zone_nodes = nodes

    def watch(self) -> None:
        """Report each node's death once, until Ctrl-C or SIGTERM; never exits on a death."""
        looks = 0
        while not self.stopping:
            looks += 1
            if looks % WEIGHTS_EVERY == 0:
                self._follow_master()
            for node in self.watched():
                if node.proc is not None and not node.alive() and not node.reported:
                    self._report_death(node)
            gevent.sleep(WATCH_INTERVAL)

    def _report_death(self, node) -> None:
        assert node.proc is not None
        node.reported = True
        node.deaths += 1
        node.last_exit = describe_exit(node.proc.returncode)
        ran = time.monotonic() - node.started
        others = [n.id for n in self.nodes if n.alive()]
        if others:
            one = len(others) == 1
            serving = (
                f"{', '.join(others)} go{'es' if one else ''} on serving, "
                f"and phones move to {'it' if one else 'them'}"
            )
        else:
            serving = "no node is left serving"
        log.error("%s died (%s) after %.0f s; %s", node.id, node.last_exit, ran, serving)
        self.say(
            f"\n!! {node.id} ({node.address}) died: {node.last_exit}, after {ran:.0f} s; "
            f"{serving}.\n"
            f"   Its log: {node.log_path}\n"
            f"   Bring it back: bash scripts/lab.sh restart {node.id} --data {self.data}\n"
        )

    def status(self) -> dict:
        """Every node's process state (the control socket's ``status``)."""
        return {
            "nodes": [n.status() for n in self.nodes],
            "master": self.master.status(),
            "dns": f"{self.base}:{self.dns.port}" if self.dns else None,
        }

    def restart(self, node_id: str) -> dict:
        """Stop (if running) and start node ``node_id``; wait until it answers OPTIONS."""
        node = next((n for n in self.watched() if n.id == node_id), None)
        if node is None:
            known = ", ".join(n.id for n in self.watched())
            raise LabControlError(f"no node {node_id!r} in this lab; known: {known}")
        if node.alive():
            node.reported = True  # a stop asked for is not a death to report
        node.stop()
        node.start()
        node.restarts += 1
        if not node.wait_ready():
            raise LabControlError(f"{node.id} was started but does not answer; see {node.log_path}")
        log.info("%s restarted", node.id)
        self.say(f"\n** {node.id} ({node.address}) is back and answering.\n")
        return node.status()

    def stop(self) -> None:
        """Stop the control socket, the DNS and every node."""
        self.control.stop()
        if self.dns is not None:
            self.dns.stop()
        for node in self.watched():
            if node.alive():
                assert node.proc is not None
                node.proc.terminate()
        for node in self.watched():
            node.stop()

    def replication_states(self, limit: float = 15.0) -> dict:
        """Each node's replication state, waiting (bounded) until all are synced."""
        if len(self.members) < 2:
            return {}
        bus = Bus(self.lab_public, self.lab_secret)
        deadline = time.monotonic() + limit
        states: dict = {}
        try:
            while True:
                for m in self.members:
                    try:
                        states[m.id] = request(bus, m.control, m.public_key, {"cmd": "status"})[
                            "state"
                        ]
                    except BusError as e:
                        states[m.id] = f"no answer ({e})"
                if all(v == "synced" for v in states.values()) or time.monotonic() > deadline:
                    return states
                gevent.sleep(0.2)
        finally:
            bus.close()

    def banner(self, states: dict) -> str:
        """What a person needs to use the lab."""
        lines = ["", "Tandem lab is running. Ctrl-C stops it.", ""]
        for node in self.nodes:
            state = f", {states[node.id]}" if node.id in states else ""
            lines.append(
                f"  {node.id}: sip:{node.address}:5060 (UDP and TCP), "
                f"sips:{node.address}:{TLS_PORT} (TLS){state}, log {node.log_path}"
            )
        if self.dns is not None:
            lines += [
                "",
                f"  DNS for {DOMAIN} (NAPTR, SRV, A) on {self.base} port "
                f"{self.dns.port}: dig @{self.base} -p {self.dns.port} "
                f"_sip._udp.{DOMAIN} SRV (and _sip._tcp, _sips._tcp)",
            ]
        first = self.nodes[0].address
        others = ", ".join(n.address for n in self.nodes[1:])
        lines += [
            "",
            f"Point a phone at: registrar/proxy {first} port 5060, "
            f"domain {DOMAIN}" + (f" (or any other node: {others})" if others else ""),
            f"TLS: port {TLS_PORT}; phones check the nodes' certificates against the "
            f"lab CA {self.ca}",
            f"  (e.g. baresip: sip_cafile {self.ca}; a node's certificate names its "
            f"address, {DOMAIN} and node<k>.{DOMAIN})",
            "Users (username / password):",
        ]
        lines += [f"  {u} / {p}" for u, p in DEMO_USERS]
        lines += [
            f"  load0 .. load{LOAD_USERS - 1} / load<i>-secret (for Locust: "
            f"locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 30s --csv out)"
        ]
        if self.master.alive():
            lines += [
                "",
                f"Dashboard (configuration master): {self.master.url}, "
                f"admin / {self.master.password()}",
                f"  (password kept in {self.master.dir}/admin-password, mode 0600; "
                "users added there reach every node)",
            ]
        lines += [
            "",
            f"Try: sipsak -U -s sip:alice@{first} -u alice -a alice-secret -x 120 -vv",
            f"Kill a node to see failover; the lab reports it and keeps serving. "
            f"State: bash scripts/lab.sh status --data {self.data}",
            "",
        ]
        return "\n".join(lines)


def run_lab(args) -> int:
    """Start the lab and block until interrupted."""
    lab = Lab(args.data, args.nodes, args.users, args.base)

    def stop(*_):
        lab.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        try:
            lab.setup()
        except (LabCertError, InsecureFileError) as e:
            log.error("the lab cannot start: %s", e)
            return 1
        if not lab.start():
            return 1
        lab.say(lab.banner(lab.replication_states()))
        lab.watch()
        return 0
    finally:
        lab.stop()
