"""Trusted peers: carriers and gateways recognised by the address their packets come from.

A trusted peer (the dial plan's ``trusted`` list: ``name`` and ``address``, an
IP address or a network such as ``192.0.2.0/28``) is never challenged: a
carrier cannot answer a ``407``. In exchange it may reach only the domain's
own users and numbers, never a gateway (no trunk-to-trunk relay), and its
``P-Asserted-Identity`` is believed (RFC 3325 §4, its trust domain).

The address checked is the one the packet came from (the ``received`` the
transport wrote into the top Via, ``sipcore.via.stamp_via``), never anything
the request says of itself.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

MAX_TRUSTED = 200
"""Most trusted peers a plan may list."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEYS = frozenset({"name", "address"})


class TrustedError(ValueError):
    """A ``trusted`` entry that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class TrustedPeer:
    """One carrier or gateway trusted by its source address."""

    name: str
    """How the logs and the dashboard name it."""
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    """The addresses its requests come from."""


class TrustedPeers:
    """The trusted peers of a plan, looked up by source address."""

    def __init__(self, peers: tuple[TrustedPeer, ...] = ()):
        self.peers = peers
        # One address is the usual entry: a dict answers those without parsing the source.
        self._hosts = {str(p.network.network_address): p for p in peers
                       if p.network.num_addresses == 1}
        self._networks = tuple(p for p in peers if p.network.num_addresses > 1)

    def __bool__(self) -> bool:
        return bool(self.peers)

    def peer(self, host: str) -> TrustedPeer | None:
        """The trusted peer ``host`` (a source address) belongs to, or None."""
        if not self.peers:
            return None
        host = host.strip("[]")
        found = self._hosts.get(host)
        if found is not None or not self._networks:
            return found
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        for p in self._networks:
            if address in p.network:
                return p
        return None


def parse_trusted(raw: Any) -> TrustedPeers:
    """The ``trusted`` list of a dial plan document; ``TrustedError`` naming a bad entry."""
    if raw is None:
        return TrustedPeers()
    if not isinstance(raw, list) or len(raw) > MAX_TRUSTED:
        raise TrustedError(f"dialplan.trusted: must be a list of at most {MAX_TRUSTED}")
    peers = []
    for k, body in enumerate(raw):
        where = f"dialplan.trusted[{k}]"
        if not isinstance(body, dict) or set(body) - _KEYS:
            raise TrustedError(f"{where}: must be a table of name and address")
        name, address = body.get("name"), body.get("address")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise TrustedError(f"{where}: name must be letters, digits, '.', '_' or '-'")
        try:
            network = ipaddress.ip_network(address if isinstance(address, str) else "",
                                           strict=False)
        except ValueError:
            raise TrustedError(f"{where}: address must be an IP address or network, "
                               f"not {address!r}") from None
        if network.prefixlen == 0:
            raise TrustedError(f"{where}: {address} would trust every address")
        peers.append(TrustedPeer(name, network))
    return TrustedPeers(tuple(peers))
