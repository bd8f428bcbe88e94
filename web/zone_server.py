"""The master's own DNS server (``[master] dns``): the cluster's zone, following its nodes.

The zone is the one the DNS page shows and exports (``web.dns.zone_text``:
NAPTR, SRV with each node's weight, A or AAAA), served by
``actors.dnsserver.DnsServer`` on ``[master] dns`` (``address:port``,
UDP and TCP). A greenlet makes the zone text anew every ``interval``
seconds and serves it when it changed, so a node that joins is in it, and
one removed is out of it, within that time; its serial is the newest
configuration version. Point the domain's delegation (or a resolver's
forwarding) at it, or keep exporting the zone to BIND instead.
"""

import logging


from actors.dnsserver import DnsServer
from store import master as ms

from .periodic import Periodic

from .dns import zone_text

log = logging.getLogger(__name__)

INTERVAL = 1.0
"""Seconds between two looks at the node table."""


class ZoneServer(Periodic):
    """Serves the cluster's zone on ``listen`` and keeps it in step with the nodes."""

    what = "updating the served zone"
    wait_first = True

    def __init__(self, listen: str, interval: float = INTERVAL):
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"[master] dns must be address:port, not {listen!r}")
        self.host, self.port = host.strip("[]"), int(port)
        super().__init__(interval)
        self.server: DnsServer | None = None

    def start(self) -> None:
        """Bind (``OSError`` if the port is taken) and start following the nodes."""
        server = DnsServer(zone_text(), ms.domain(), self.host, self.port)
        try:
            server.start()
        except OSError as e:
            raise OSError(
                e.errno, f"[master] dns {self.host}:{self.port}: {e.strerror or e}"
            ) from None
        self.server = server
        super().start()

    def round(self) -> None:
        """Serve the nodes' zone when it changed."""
        server = self.server
        assert server is not None
        text = zone_text()
        if text != server.zone_text:
            server.update_zone(text)

    def stop(self) -> None:
        """Stop following and close the sockets."""
        super().stop()
        if self.server is not None:
            self.server.stop()
            self.server = None
