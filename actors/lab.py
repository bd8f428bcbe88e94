"""``run.py lab``: a ready cluster on loopback, with demo users.

Writes one configuration file per node under the lab's data folder,
provisions the demo users (and those of ``--users``) in every node's
database, starts each node as its own process, waits until each answers
OPTIONS, prints what a phone needs, and stops the nodes on Ctrl-C or
SIGTERM.
"""

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

from sipcore.zone import cluster_zone
from store.models import close_store, init_store
from store.users import add_user, import_users_csv

from .bus import Bus, BusError, request
from .dnsserver import DnsServer
from .keys import Member, cluster_toml, load_or_create_keypair

log = logging.getLogger(__name__)

DOMAIN = "example.test"
DNS_ADDRESS = "127.0.0.10"
DEMO_USERS = [("alice", "alice-secret"), ("bob", "bob-secret"),
              ("carol", "carol-secret"), ("dave", "dave-secret")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def node_address(k: int) -> str:
    """Loopback address of lab node ``k`` (1-based): 127.0.0.(10+k)."""
    return f"127.0.0.{10 + k}"


def lab_members(data: str, n: int) -> list[Member]:
    """The lab's nodes with their bus endpoints and key pairs (kept under ``data``)."""
    members = []
    for k in range(1, n + 1):
        node_dir = os.path.join(data, f"node{k}")
        os.makedirs(node_dir, exist_ok=True)
        public, secret = load_or_create_keypair(os.path.join(node_dir, "bus"))
        ip = node_address(k)
        members.append(Member(f"node{k}", f"tcp://{ip}:7001", f"tcp://{ip}:7002",
                              f"tcp://{ip}:7003", public, secret))
    return members


def write_node_config(data: str, k: int, secret: str, members: list[Member],
                      lab_key: str) -> str:
    """Write lab node ``k``'s configuration; return its path."""
    node_dir = os.path.join(data, f"node{k}")
    os.makedirs(node_dir, exist_ok=True)
    path = os.path.join(node_dir, "node.toml")
    text = f"""[node]
id = "node{k}"
data_dir = "{node_dir}"
log_level = "INFO"

[sip]
address = "{node_address(k)}"
port = 5060
domain = "{DOMAIN}"

[auth]
secret = "{secret}"

[database]
url = "sqlite:///{node_dir}/tandem.db"

"""
    if len(members) > 1:
        text += cluster_toml(members[k - 1], members, control_keys=[lab_key])
    with open(path, "w") as f:
        f.write(text)
    return path


def options_ping(address: str, port: int = 5060, timeout: float = 0.5) -> bytes | None:
    """Send one OPTIONS over UDP; return the response bytes, or None after ``timeout``."""
    branch = "z9hG4bK" + secrets.token_hex(8)
    msg = (f"OPTIONS sip:{address}:{port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:9;branch={branch};rport\r\n"
           f"From: <sip:probe@{DOMAIN}>;tag=1\r\nTo: <sip:{address}>\r\n"
           f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
           "Content-Length: 0\r\n\r\n").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(msg, (address, port))
            return s.recv(65535)
        except OSError:
            return None


def _secret(data: str) -> str:
    path = os.path.join(data, "auth.secret")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(secrets.token_hex(32))
    with open(path) as f:
        return f.read().strip()


def run_lab(args) -> int:
    """Start the lab and block until interrupted."""
    data = os.path.abspath(args.data)
    os.makedirs(data, exist_ok=True)
    secret = _secret(data)
    members = lab_members(data, args.nodes)
    lab_public, lab_secret = load_or_create_keypair(os.path.join(data, "lab"))
    procs = []
    stopping = []
    dns = None

    def stop(*_):
        stopping.append(True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for k in range(1, args.nodes + 1):
            cfg = write_node_config(data, k, secret, members, lab_public)
            init_store(f"sqlite:///{data}/node{k}/tandem.db")
            for name, pw in DEMO_USERS:
                add_user(name, DOMAIN, pw, replace=True)
            if args.users:
                import_users_csv(args.users, DOMAIN)
            close_store()
            logf = open(os.path.join(data, f"node{k}", "node.log"), "ab")
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "run.py"), "node", "--config", cfg],
                stdout=logf, stderr=logf, cwd=ROOT))
        for k, proc in enumerate(procs, 1):
            if not _wait_ready(proc, node_address(k)):
                log.error("node%d did not start; see %s", k,
                          os.path.join(data, f"node{k}", "node.log"))
                return 1
        dns = _start_dns(args.nodes)
        states = _states(members, lab_public, lab_secret)
        _banner(data, args.nodes, dns, states)
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        return 0
    finally:
        if dns is not None:
            dns.stop()
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_ready(proc, address: str, limit: float = 15.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        answer = options_ping(address)
        if answer is not None and answer.startswith(b"SIP/2.0 200"):
            return True
    return False


def _start_dns(n: int):
    """Serve the lab's zone (SRV weights 50:50...) on 127.0.0.10, port 53 or 5353."""
    zone = cluster_zone(DOMAIN, [(f"node{k}", node_address(k), 5060, 50) for k in range(1, n + 1)])
    for port in (53, 5353):
        server = DnsServer(zone, DOMAIN, DNS_ADDRESS, port)
        try:
            server.start()
            return server
        except OSError as e:
            log.warning("lab DNS cannot use %s:%d: %s", DNS_ADDRESS, port, e)
    return None


def _states(members: list[Member], public: str, secret: str, limit: float = 15.0) -> dict:
    """Each node's replication state, waiting (bounded) until all are synced."""
    if len(members) < 2:
        return {}
    bus = Bus(public, secret)
    deadline = time.monotonic() + limit
    states: dict = {}
    try:
        while True:
            for m in members:
                try:
                    states[m.id] = request(bus, m.control, m.public_key, {"cmd": "status"})["state"]
                except BusError as e:
                    states[m.id] = f"no answer ({e})"
            if all(v == "synced" for v in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(0.2)
    finally:
        bus.close()


def _banner(data: str, n: int, dns, states: dict) -> None:
    lines = ["", "Tandem lab is running. Ctrl-C stops it.", ""]
    for k in range(1, n + 1):
        state = f", {states[f'node{k}']}" if f"node{k}" in states else ""
        lines.append(f"  node{k}: sip:{node_address(k)}:5060 (UDP and TCP){state}, "
                     f"log {data}/node{k}/node.log")
    if dns is not None:
        lines += ["", f"  DNS for {DOMAIN} (NAPTR, SRV, A) on {DNS_ADDRESS} port {dns.port}: "
                  f"dig @{DNS_ADDRESS} -p {dns.port} _sip._udp.{DOMAIN} SRV"]
    others = ", ".join(node_address(k) for k in range(2, n + 1))
    lines += ["", f"Point a phone at: registrar/proxy {node_address(1)} port 5060, "
              f"domain {DOMAIN}" + (f" (or any other node: {others})" if others else ""),
              "Users (username / password):"]
    lines += [f"  {u} / {p}" for u, p in DEMO_USERS]
    lines += ["", f"Try: sipsak -U -s sip:alice@{node_address(1)} -u alice -a alice-secret -x 120 -vv",
              ""]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
