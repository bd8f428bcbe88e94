"""Failover time, measured: a node's host dies, how long until its phones can be
called and can call.

Three nodes on hosts (network namespaces, ``tests/netns.py``) with floating
addresses (``[cluster] takeover``), a NAT router host (iptables MASQUERADE)
and a host behind it for the phones. For each phone (PJSUA2, baresip,
linphonec) and transport, the phone registers through node1's address over
that transport with the failover settings of the README's table; node1's
host dies (its cable out, its process SIGKILLed); then, at once and side by
side:

- *reachable*: a stranger calls the phone through node2 (an INVITE each
  second, each waiting 1.5 s) until the phone answers 200;
- *calls out*: the phone calls a PJSUA2 callee registered on node3 (again
  each 2 s) until the call is confirmed.

It prints one line per phone and transport with both times (seconds from the
death), then brings node1 back for the next. Run as root::

    .venv/bin/python -m loadtest.bench_failover [--phones pjsua2 baresip linphone]
        [--transports udp tcp tls]

Over TLS every node's certificate (signed by a CA made for the run) names every
floating address, since a phone reconnects to its dead node's address, now
held by a survivor.
"""

import argparse
import os
import shutil
import socket
import tempfile
import threading
import time

from actors.lab_certs import lab_ca, node_cert
from loadtest.harness import Cluster, write_users_csv
from store.files import make_private_dir
from tests.netns import Network, behind_nat, ip
from tests.phones import (
    BaresipPhone,
    LinphonePhone,
    PjsuaPhone,
    Softphone,
    baresip,
    linphone,
    pjsua,
)

SETTINGS = {
    "heartbeat": 0.2,
    "suspect_after": 1.0,
    "dead_after": 3.0,
    "alone_wait": 2.0,
    "sync_timeout": 3.0,
    "takeover": True,
    "takeover_interface": "eth0",
    "takeover_lifetime": 6,
}
"""The cluster's settings: a peer is dead 3 s after its last heartbeat."""
NAT_SETTINGS = "[nat]\nkeepalive_interval = 5\nflow_timer = 10"
"""The nodes ping the flows they own every 5 s; outbound phones ping theirs every 10 s."""
PHONE_SETTINGS = (60, 5, 15)
"""The phones' (registration expiry, retry after a failed registration, UDP keepalive), s."""
GIVE_UP = 90.0
"""Seconds after which a phone counts as never recovered."""
PHONES = ("pjsua2", "baresip", "linphone")
DOMAIN = "example.test"
PHONE_ADDRESS = "192.168.77.2"
"""The phones' host's address behind the NAT (``tests.netns.behind_nat``)."""


class NatLab:
    """Three nodes on floating addresses; ``phone_prefix`` runs a command behind the NAT."""

    def __init__(self, work: str, users: int = 4):
        self.net = Network(["node1", "node2", "node3", "nat"])
        self.cluster: Cluster | None = None
        floating = [f"{self.net.subnet}.{100 + k}" for k in (1, 2, 3)]
        try:
            # Each node's certificate names every floating address: a TLS phone whose
            # node died reconnects to that address, now held by a survivor.
            self.ca = lab_ca(os.path.join(work, "ca"))
            certs = [
                node_cert(
                    make_private_dir(os.path.join(work, f"cert{k}")),
                    self.ca,
                    f"node{k}",
                    floating[k - 1],
                    DOMAIN,
                    also=tuple(floating),
                )
                for k in (1, 2, 3)
            ]
            self.phone_prefix = behind_nat(self.net, "nat", "phone")
            net = self.net
            # baresip is driven over TCP (ctrl_tcp) on the phones' host: reached through
            # the NAT router, which forwards what comes from outside untranslated.
            ip(
                "route",
                "replace",
                f"{PHONE_ADDRESS.rpartition('.')[0]}.0/24",
                "via",
                net["nat"].address,
            )
            self.routed = True
            hosts = [(net[f"node{k}"].address, tuple(net[f"node{k}"].prefix)) for k in (1, 2, 3)]
            self.cluster = Cluster(
                work,
                domain=DOMAIN,
                settings=SETTINGS,
                hosts=hosts,
                sip_addresses=floating,
                extra=NAT_SETTINGS,
                sip_lines=[
                    f'tls_port = 5061\ntls_cert = "{c.cert}"\ntls_key = "{c.key}"' for c in certs
                ],
            )
            self.users = write_users_csv(os.path.join(work, "users.csv"), users)
            self.cluster.provision(os.path.join(work, "users.csv"))
            self.cluster.start()
            if not self.cluster.wait_synced(20.0):
                raise RuntimeError("cluster not synced")
        except BaseException:
            self.close()
            raise
        self.nodes = self.cluster.nodes
        self.bridge = f"{net.subnet}.1"

    def addresses(self, name: str) -> str:
        """``ip addr`` of host ``name``'s ``eth0``."""
        return ip("-4", "-o", "addr", "show", "dev", "eth0", netns=self.net[name].ns).stdout

    def kill(self, k: int) -> float:
        """Node k's host dies: cable out, process SIGKILLed; the monotonic time of it."""
        self.net[f"node{k}"].link(False)
        self.nodes[k - 1].proc.kill()
        return time.monotonic()

    def revive(self, *ks: int) -> None:
        """The hosts of nodes ``ks`` come back and their nodes start; the cluster
        converges."""
        for k in ks:
            self.net[f"node{k}"].link(True)
            self.nodes[k - 1].start()
        assert self.cluster is not None
        if not self.cluster.wait_converged(30)[0]:
            raise RuntimeError(f"nodes {ks} did not converge")

    def close(self) -> None:
        """Stop the nodes, remove the hosts (and the route to the phones' network)."""
        if self.cluster is not None:
            self.cluster.stop()
        if getattr(self, "routed", False):
            ip("route", "del", f"{PHONE_ADDRESS.rpartition('.')[0]}.0/24", check=False)
        self.net.close()


def call(address: str, source: str, user: str, domain: str, timeout: float = 5.0) -> str:
    """INVITE ``user`` through the node at ``address`` (UDP 5060) from a stranger on
    ``source``; the first final response's status line, "" when none came in ``timeout``.

    A caller who gives up hangs up: an INVITE still ringing at ``timeout`` is
    cancelled. Left ringing, it keeps the phone busy (linphonec answers every later
    call 486 until its own 30 s ringing timeout), which a measure would count as the
    phone unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind((source, 0))
        port = s.getsockname()[1]
        to = f"sip:{user}@{domain}"
        head = (
            f"Via: SIP/2.0/UDP {source}:{port};branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
            f"From: <sip:stranger@other.test>;tag=f1\r\nTo: <{to}>\r\n"
            f"Call-ID: {os.urandom(8).hex()}\r\n"
        )
        s.sendto(
            (
                f"INVITE {to} SIP/2.0\r\n{head}CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
                f"Contact: <sip:x@{source}:{port}>\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            (address, 5060),
        )
        final = _final(s)
        if final is not None:
            return final.split("\r\n", 1)[0]
        s.sendto(
            (
                f"CANCEL {to} SIP/2.0\r\n{head}CSeq: 1 CANCEL\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            (address, 5060),
        )
        s.settimeout(2.0)
        final = _final(s, "INVITE")
        if final is None:
            return ""
        if final.startswith("SIP/2.0 2"):
            return final.split("\r\n", 1)[0]
        tag = next(
            (
                line.split(":", 1)[1].strip()
                for line in final.split("\r\n")
                if line.lower().startswith(("to:", "t:"))
            ),
            f"<{to}>",
        )
        s.sendto(
            (
                f"ACK {to} SIP/2.0\r\n{head.replace(f'To: <{to}>', f'To: {tag}')}"
                "CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            (address, 5060),
        )
        return ""


def _final(s: socket.socket, method: str = "") -> str | None:
    """The next final response read from ``s`` (of CSeq method ``method`` if given),
    None when the socket's timeout passes first."""
    try:
        while True:
            text = s.recv(65535).decode()
            if text.startswith("SIP/2.0 1"):
                continue
            cseq = next(
                (line for line in text.split("\r\n") if line.lower().startswith("cseq:")), ""
            )
            if not method or cseq.endswith(f" {method}"):
                return text
    except TimeoutError:
        return None


def start_phone(
    lab: NatLab, kind: str, transport: str, work: str, account: tuple[str, str]
) -> Softphone:
    """Phone ``kind`` behind the NAT, registering ``account`` (user, password) through
    node1's address over ``transport`` with the failover settings ``PHONE_SETTINGS``."""
    user, password = account
    port = 5061 if transport == "tls" else 5060
    domain, proxy = lab.nodes[0].domain, f"{lab.nodes[0].address}:{port}"
    prefix, name = tuple(lab.phone_prefix), f"phone-{kind}-{transport}"
    folder = os.path.join(work, name)
    ca = lab.ca[0] if transport == "tls" else ""
    if kind == "pjsua2":
        return PjsuaPhone(
            pjsua(
                name,
                user,
                password,
                domain,
                proxy,
                transport,
                5060,
                4000,
                ca=ca,
                bind=PHONE_ADDRESS,
                prefix=prefix,
                failover=PHONE_SETTINGS,
            ),
            user,
            transport,
        )
    if kind == "baresip":
        return BaresipPhone(
            baresip(
                name,
                folder,
                user,
                password,
                domain,
                proxy,
                transport,
                5060,
                4000,
                5090,
                ca=ca,
                bind=PHONE_ADDRESS,
                prefix=prefix,
                expires=PHONE_SETTINGS[0],
                outbound=transport != "udp",
            ),
            user,
            transport,
        )
    return LinphonePhone(
        linphone(
            name,
            folder,
            user,
            password,
            domain,
            proxy,
            transport,
            5060,
            4000,
            ca=ca,
            bind=PHONE_ADDRESS,
            prefix=prefix,
            expires=PHONE_SETTINGS[0],
        ),
        user,
        transport,
        os.path.join(folder, "log"),
    )


def measure(
    lab: NatLab, kind: str, transport: str, work: str, run: int = 0
) -> tuple[float | None, float | None]:
    """Seconds from node1's death to the phone reachable and to its first call out
    (None: not within ``GIVE_UP``). Run ``run`` has users of its own: a binding an
    earlier run's phone left would take a share of the calls to the phone."""
    node1, node2, node3 = lab.nodes
    user = lab.users[2 * run][0]
    callee, callee_pw = lab.users[2 * run + 1]
    domain = node1.domain
    answerer = pjsua(
        "callee",
        callee,
        callee_pw,
        domain,
        f"{node3.address}:5060",
        "udp",
        5070,
        4100,
        bind=lab.bridge,
    )
    phone = start_phone(lab, kind, transport, work, lab.users[2 * run])
    try:
        answerer.wait_for("REGISTERED 200", timeout=20)
        phone.wait_registered(20)
        assert lab.cluster is not None and lab.cluster.wait_converged(10)[0]
        died = lab.kill(1)
        reached: list[float] = []

        def reach() -> None:
            while time.monotonic() - died < GIVE_UP:
                if call(node2.address, lab.bridge, user, domain, 1.5).startswith("SIP/2.0 200"):
                    reached.append(time.monotonic() - died)
                    return
                time.sleep(max(0.0, 1.0 - (time.monotonic() - died) % 1.0))

        prober = threading.Thread(target=reach, daemon=True)
        prober.start()
        called = None
        while called is None and time.monotonic() - died < GIVE_UP:
            if phone.try_call(f"sip:{callee}@{domain}", 4.0):
                called = time.monotonic() - died
            else:
                time.sleep(1.0)
        prober.join(GIVE_UP)
        return (reached[0] if reached else None), called
    finally:
        phone.stop()
        answerer.stop()
        lab.revive(1)


def main(argv: list[str] | None = None) -> None:
    """Measure each transport and print the table's lines."""
    parser = argparse.ArgumentParser(
        prog="loadtest.bench_failover",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--phones", nargs="+", default=list(PHONES), choices=PHONES)
    parser.add_argument(
        "--transports", nargs="+", default=["udp", "tcp", "tls"], choices=("udp", "tcp", "tls")
    )
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-failover-")
    lab = NatLab(work, users=2 * len(args.phones) * len(args.transports))
    try:
        expiry, retry, keepalive = PHONE_SETTINGS
        print(
            f"phones: expiry {expiry} s, retry {retry} s, UDP keepalive {keepalive} s; "
            f"cluster: dead_after {SETTINGS['dead_after']} s"
        )
        print("phone     transport  reachable_s  first_call_out_s")
        runs = [(kind, transport) for kind in args.phones for transport in args.transports]
        for run, (kind, transport) in enumerate(runs):
            reached, called = measure(lab, kind, transport, work, run)
            show = [f"{v:.1f}" if v is not None else f">{GIVE_UP:.0f}" for v in (reached, called)]
            print(f"{kind:9} {transport:9}  {show[0]:>11}  {show[1]:>16}", flush=True)
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
