"""Keepalives on the flows this node owns (``[nat] keepalive_interval``).

Every ``keepalive_interval`` seconds the node sends ``sipcore.keepalive.KEEPALIVE``
on each flow of the bindings it owns (``keepalive_flows``): its own, and those
of the nodes whose address it took over (``owners``, which
``actors.takeover`` changes). A TCP or TLS flow gets it only over a
connection that is open (a closed one is the phone's to open again); a UDP
flow gets a datagram from the address the phone registered to
(``Transport.keepalive``), so that its NAT's pinhole stays open.
"""

import logging
import time

import gevent

from sipcore.keepalive import KEEPALIVE, keepalive_flows

log = logging.getLogger(__name__)

MAX_FLOWS = 200_000
"""Flows kept alive per round at most (a round's work stays bounded)."""


class Keepalive:
    """Sends the keepalives of the flows that the node owns."""

    def __init__(
        self,
        node_id: str,
        location,
        transport,
        interval: float,
        nat_handling: str = "auto",
        clock=time.time,
    ):
        self.owners: set[str] = {node_id}
        """Node ids whose bindings' flows this node keeps alive."""
        self.location = location
        self.transport = transport
        self.interval = interval
        self.nat_handling = nat_handling
        self.clock = clock
        self.sent = 0
        """Keepalives sent so far."""

    def round(self) -> int:
        """Send one keepalive on each owned flow; the number sent."""
        flows = keepalive_flows(
            self.location.all(), self.owners, self.clock(), self.nat_handling, MAX_FLOWS
        )
        sent = 0
        for i, dest in enumerate(flows):
            if self.transport.keepalive(dest, KEEPALIVE):
                sent += 1
            if i % 1000 == 999:
                gevent.sleep(0)  # SIP traffic goes on between batches
        self.sent += sent
        return sent

    def run(self) -> None:
        """Send a round every ``interval`` seconds, forever."""
        while True:
            gevent.sleep(self.interval)
            try:
                self.round()
            except Exception:
                log.exception("keepalive round failed")


def attach_keepalive(node) -> Keepalive | None:
    """Give ``node`` its ``Keepalive`` (``node.keepalive``) and start it when
    ``[nat] keepalive_interval`` is above 0."""
    cfg = node.cfg
    node.keepalive = None
    if cfg.keepalive_interval <= 0:
        return None
    keepalive = node.keepalive = Keepalive(
        cfg.id, node.location, node.transport, cfg.keepalive_interval, cfg.nat_handling
    )
    node.group.spawn(keepalive.run).link_exception(node.actor_died)
    log.info("keepalives every %.0f s on the flows this node owns", cfg.keepalive_interval)
    return keepalive
