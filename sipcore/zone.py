"""DNS zone text for a SIP cluster, in BIND master-file format.

:func:`cluster_zone` builds the zone that lets phones and other proxies
find the cluster by RFC 3263: NAPTR records at the domain name point at the
``_sip._udp`` and ``_sip._tcp`` SRV names (and, when nodes take TLS,
``_sips._tcp`` through a SIPS+D2T NAPTR), whose records share one priority
and split the load by weight between the nodes' A (or AAAA) records. The
same text is served by the lab DNS server (``actors/dnsserver.py``), by the
master's (``web/zone_server.py``) and can be exported to BIND unchanged.
"""

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_WEIGHT = 50
"""SRV weight of a node that names none (so two nodes split 50:50)."""

SRV_PRIORITY = 10
"""SRV priority shared by all nodes: they are peers, not backups."""

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class ZoneNode:
    """One cluster node as it appears in the zone."""

    name: str
    """Host label (``node1``) or absolute name (``node1.example.com.``)."""
    ip: str
    """IPv4 address (A record) or IPv6 address (AAAA record)."""
    port: int
    """SIP port, for UDP and TCP alike."""
    weight: int = DEFAULT_WEIGHT
    """SRV weight, 0 to 65535."""
    tls_port: int = 0
    """SIP over TLS port (``_sips._tcp``), 0 when the node takes no TLS."""

    def fqdn(self, domain: str) -> str:
        """The node's absolute host name under ``domain``."""
        if self.name.endswith("."):
            return self.name.lower()
        return f"{self.name.lower()}.{domain}."


def _check_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    labels = domain.split(".")
    if not domain or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"invalid domain name: {domain!r}")
    return domain


def _check_node(entry: Sequence[Any]) -> ZoneNode:
    if len(entry) not in (3, 4, 5):
        raise ValueError(f"node must be (name, ip, port[, weight[, tls_port]]): {entry!r}")
    node = ZoneNode(*entry)
    labels = node.name.rstrip(".").split(".")
    if not node.name or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"invalid node name: {node.name!r}")
    try:
        ipaddress.ip_address(node.ip)
    except ValueError:
        raise ValueError(f"invalid node address: {node.ip!r}") from None
    if not 0 < int(node.port) < 65536:
        raise ValueError(f"invalid SIP port: {node.port!r}")
    weight = DEFAULT_WEIGHT if node.weight is None else int(node.weight)
    if not 0 <= weight < 65536:
        raise ValueError(f"invalid SRV weight: {node.weight!r}")
    tls_port = int(node.tls_port or 0)
    if not 0 <= tls_port < 65536:
        raise ValueError(f"invalid TLS port: {node.tls_port!r}")
    return ZoneNode(node.name, node.ip, int(node.port), weight, tls_port)


def srv_names(domain: str, tls: bool = False) -> dict[str, str]:
    """The absolute SRV owner names of ``domain``, keyed by NAPTR service, in the
    order of preference (SIPS+D2T last, with ``tls``)."""
    domain = _check_domain(domain)
    names = {"SIP+D2U": f"_sip._udp.{domain}.", "SIP+D2T": f"_sip._tcp.{domain}."}
    if tls:
        names["SIPS+D2T"] = f"_sips._tcp.{domain}."
    return names


def cluster_zone(
    domain: str,
    nodes: Iterable[Sequence[Any]],
    ttl: int = 60,
    *,
    serial: int = 1,
    nameserver: str | None = None,
    hostmaster: str | None = None,
) -> str:
    """Zone text (BIND master-file format) for the SIP ``domain``.

    ``nodes`` holds ``(name, ip, sip_port, weight, tls_port)`` tuples (the
    weight may be left out or ``None`` for :data:`DEFAULT_WEIGHT`, the TLS
    port left out or 0 for a node without TLS). The zone has an SOA
    (``serial`` as given, negative TTL equal to ``ttl``), an NS record
    (``nameserver``, by default the first node), an A or AAAA record per
    node whose name lies inside the domain, SRV records at ``_sip._udp``
    and ``_sip._tcp`` with priority :data:`SRV_PRIORITY` and each node's
    weight, and NAPTR records for SIP+D2U (preferred) and SIP+D2T pointing
    at those SRV names. Each node with a TLS port has an SRV record at
    ``_sips._tcp`` on that port (same priority and weight), and the zone a
    SIPS+D2T NAPTR after the others when any node has one (RFC 3263 §4.1: a
    client that wants TLS picks it; a ``sips`` URI only it). Raises
    ``ValueError`` on an invalid domain, node name, address, port, TLS port or
    weight.
    """
    domain = _check_domain(domain)
    entries = [_check_node(entry) for entry in nodes]
    ttl = int(ttl)
    if ttl < 0:
        raise ValueError(f"invalid TTL: {ttl}")
    if nameserver is None:
        nameserver = entries[0].fqdn(domain) if entries else f"ns.{domain}."
    if hostmaster is None:
        hostmaster = f"hostmaster.{domain}."
    lines = [
        f"$ORIGIN {domain}.",
        f"$TTL {ttl}",
        f"@ IN SOA {nameserver} {hostmaster} {int(serial)} 3600 600 86400 {ttl}",
        f"@ IN NS {nameserver}",
    ]
    names = srv_names(domain, tls=any(node.tls_port for node in entries))
    for preference, (service, owner) in enumerate(names.items(), 1):
        lines.append(f'@ IN NAPTR 10 {preference * 10} "s" "{service}" "" {owner}')
    for node in entries:
        if not node.fqdn(domain).endswith(f".{domain}."):
            continue
        rtype = "AAAA" if ipaddress.ip_address(node.ip).version == 6 else "A"
        lines.append(f"{node.fqdn(domain)} IN {rtype} {node.ip}")
    for service, owner in names.items():
        for node in entries:
            port = node.tls_port if service == "SIPS+D2T" else node.port
            if not port:
                continue
            lines.append(f"{owner} IN SRV {SRV_PRIORITY} {node.weight} {port} {node.fqdn(domain)}")
    return "\n".join(lines) + "\n"
