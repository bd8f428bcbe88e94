"""Built-in floating address takeover (``[cluster] takeover``).

Each node serves SIP on a floating address of its own (its ``[sip] address``,
put on ``takeover_interface`` as a /32 when the node starts). Every
heartbeat this actor asks ``sipcore.takeover.to_hold`` which peers' addresses
the node must hold, from the replicator's liveness of each peer, and:

- takes a dead peer's address: ``ip addr replace ADDR/32 dev IF valid_lft L
  preferred_lft L`` (``takeover_lifetime``), a gratuitous ARP (``arping -U``)
  so that the neighbours (the NAT router in front of the phones) send to this
  host at once, and listens on it (``Transport.add_address``); the dead
  node's UDP flows then leave from that address (their NAT pinholes are open
  to it) and get their keepalives from here (``actors.keepalive``);
- renews each held address's lifetime: a holder cut off from the quorum stops
  renewing, and the kernel removes the address when its lifetime runs out
  even if the node hangs;
- gives an address back (``ip addr del``) when its owner is alive again or
  the quorum is lost.

A node that dies while its host stays up leaves its own address on the host:
run it under systemd with ``Restart=always`` (``conf/tandem-node.service``).
"""

import logging
import subprocess
import time

import gevent

from sipcore.uri import split_hostport
from sipcore.takeover import to_hold, udp_sources


log = logging.getLogger(__name__)


def run_ip(args: list[str]) -> bool:
    """Run a command (``ip``, ``arping``) with a bound; False when it fails."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("%s failed: %s", " ".join(args), e)
        return False
    if out.returncode:
        log.warning("%s failed: %s", " ".join(args), out.stderr.strip()[:200])
        return False
    return True


def has_arping() -> bool:
    """Whether ``arping`` (iputils) is installed."""
    return run_ip(["sh", "-c", "command -v arping >/dev/null"])


class Takeover:
    """Holds the floating addresses of the dead peers this node must hold."""

    def __init__(self, node, run=run_ip, arping: bool = True):
        cfg = node.cfg
        self.node = node
        self.id = cfg.id
        self.interface = cfg.takeover_interface
        self.lifetime = cfg.takeover_lifetime
        self.run = run
        self.arping = arping
        self.held: dict[str, str] = {}
        """Peer id -> its address, for each address held."""
        self.taken = 0
        """Takeovers so far."""

    def claim_own(self) -> None:
        """Put the node's own address on the interface (permanent) and announce it."""
        address = self.node.cfg.address
        self.run(["ip", "addr", "replace", f"{address}/32", "dev", self.interface])
        self._announce(address)

    def _announce(self, address: str) -> None:
        if self.arping:
            self.run(
                ["arping", "-q", "-U", "-c", "1", "-I", self.interface, "-s", address, address]
            )

    def _addresses(self) -> dict[str, str]:
        peers = self.node.replicator.peers
        return {pid: split_hostport(p.sip)[0] for pid, p in peers.items() if p.sip}

    def tick(self) -> None:
        """Take, renew and give back addresses by the peers' liveness now."""
        replicator = self.node.replicator
        states = {pid: p.liveness.state for pid, p in replicator.core.peers.items()}
        addresses = self._addresses()
        wanted = to_hold(self.id, [self.id, *addresses], states) & set(addresses)
        for pid in [p for p in self.held if p not in wanted or addresses.get(p) != self.held[p]]:
            self._give_back(pid)
        for pid in wanted:
            address = addresses[pid]
            lft = str(int(self.lifetime))
            if not self.run(
                [
                    "ip",
                    "addr",
                    "replace",
                    f"{address}/32",
                    "dev",
                    self.interface,
                    "valid_lft",
                    lft,
                    "preferred_lft",
                    lft,
                ]
            ):
                continue
            if pid not in self.held:
                try:
                    self.node.transport.add_address(address)
                except OSError as e:
                    log.error("cannot listen on %s taken from %s: %s", address, pid, e)
                    self.run(["ip", "addr", "del", f"{address}/32", "dev", self.interface])
                    continue
                self.held[pid] = address
                self.taken += 1
                self._announce(address)
                log.warning(
                    "took over %s's address %s (%s is %s)",
                    pid,
                    address,
                    pid,
                    states.get(pid, "unknown"),
                )
            self._route(pid, address)
        keepalive = self.node.keepalive
        if keepalive is not None:
            keepalive.owners = {self.id, *self.held}

    def _route(self, pid: str, address: str) -> None:
        """Send to ``pid``'s UDP flows from its address (their pinholes are open to it)."""
        sources = udp_sources(self.node.location.all(), pid, time.time())
        self.node.transport.route_from(sources, address)

    def _give_back(self, pid: str) -> None:
        address = self.held.pop(pid)
        self.node.transport.remove_address(address)
        self.run(["ip", "addr", "del", f"{address}/32", "dev", self.interface])
        log.warning("gave %s's address %s back", pid, address)

    def release(self) -> None:
        """Give every held address back, and the node's own (the node stops: a
        survivor takes it over)."""
        for pid in list(self.held):
            self._give_back(pid)
        self.run(["ip", "addr", "del", f"{self.node.cfg.address}/32", "dev", self.interface])

    def run_forever(self) -> None:
        """Tick every heartbeat, after the peers had ``dead_after`` to be heard from."""
        cfg = self.node.cfg
        gevent.sleep(cfg.dead_after)
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("takeover tick failed")
            gevent.sleep(max(0.2, cfg.heartbeat))

    def status(self) -> dict:
        """The addresses held for dead peers (peer id -> address)."""
        return dict(self.held)


def attach_takeover(node) -> Takeover | None:
    """With ``[cluster] takeover``: claim the node's own address (before the transport
    binds it) and give ``node`` its ``Takeover`` (``node.takeover``), started by
    ``start_takeover``."""
    node.takeover = None
    cfg = node.cfg
    if not cfg.takeover:
        return None
    takeover = node.takeover = Takeover(node, arping=has_arping())
    if len(cfg.peers) < 2:
        log.warning(
            "takeover needs 3 nodes or more: with %d, no address is ever taken over "
            "(a quorum is a strict majority)",
            len(cfg.peers) + 1,
        )
    if not takeover.arping:
        log.warning("arping not installed: neighbours learn a taken address slowly")
    takeover.claim_own()
    return takeover


def start_takeover(node) -> None:
    """Start the takeover loop and add ``takeover`` to the node's ``status``."""
    takeover = node.takeover
    if takeover is None:
        return
    node.group.spawn(takeover.run_forever).link_exception(node.actor_died)
    control = node.replicator.control if node.replicator is not None else None
    if control is not None:
        control.extend("status", lambda _r, out: out.update(taken_over=takeover.status()))
