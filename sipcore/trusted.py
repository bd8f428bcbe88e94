"""Trusted peers: carriers and gateways recognised by the address their packets come from,
or by the certificate their TLS connection presented.

A trusted peer (the dial plan's ``trusted`` list: ``name`` and ``address``, an
IP address or a network such as ``192.0.2.0/28``; or ``certificate``, the
SHA-256 fingerprint of a TLS client certificate, and/or ``subject``, its
common name, with ``address`` then optional and, when given, required too)
is never challenged: a
carrier cannot answer a ``407``. In exchange it may reach only the domain's
own users and numbers, never a gateway (no trunk-to-trunk relay), and its
``P-Asserted-Identity`` is believed (RFC 3325 §4, its trust domain).

The address checked is the one the packet came from (the ``received`` the
transport wrote into the top Via, ``sipcore.via.stamp_via``), never anything
the request says of itself. A certificate counts only as the node's TLS port
saw it: presented in the handshake and verified against the node's
``tls_peer_ca`` (``actors.transport``), never a claim inside a message.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

MAX_TRUSTED = 200
"""Most trusted peers a plan may list."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEYS = frozenset({"name", "address", "certificate", "subject"})
_HEX = frozenset("0123456789abcdef")


class TrustedError(ValueError):
    """A ``trusted`` entry that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class TrustedPeer:
    """One carrier or gateway trusted by its source address."""

    name: str
    """How the logs and the dashboard name it."""
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    """The addresses its requests come from (None: any, for a peer known by certificate)."""
    fingerprint: str = ""
    """SHA-256 of its TLS certificate (DER), 64 lower-case hex digits; "" if unused."""
    subject: str = ""
    """Common name of its TLS certificate; "" if unused."""

    def presents(self, certificate: tuple[str, str] | None) -> bool:
        """Whether ``certificate`` (fingerprint, common name) is this peer's."""
        if certificate is None:
            return False
        return (not self.fingerprint or certificate[0] == self.fingerprint) and (
            not self.subject or certificate[1] == self.subject
        )


class TrustedPeers:
    """The trusted peers of a plan, looked up by source address."""

    def __init__(self, peers: tuple[TrustedPeer, ...] = ()):
        self.peers = peers
        # One address is the usual entry: a dict answers those without parsing the source.
        by_address = [
            p for p in peers if p.network is not None and not p.fingerprint and not p.subject
        ]
        self._hosts = {
            str(p.network.network_address): p
            for p in by_address
            if p.network is not None and p.network.num_addresses == 1
        }
        self._networks = tuple(
            p for p in by_address if p.network is not None and p.network.num_addresses > 1
        )
        self._certified = tuple(p for p in peers if p.fingerprint or p.subject)

    def __bool__(self) -> bool:
        return bool(self.peers)

    def peer(self, host: str, certificate: tuple[str, str] | None = None) -> TrustedPeer | None:
        """The trusted peer ``host`` (a source address) belongs to, or None;
        ``certificate`` is the (fingerprint, common name) of the verified TLS
        certificate the request's connection presented, None for none."""
        if not self.peers:
            return None
        host = host.strip("[]")
        found = self._hosts.get(host)
        if found is not None or not (self._networks or (certificate and self._certified)):
            return found
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        for p in self._networks:
            if p.network is not None and address in p.network:
                return p
        for p in self._certified:
            if p.presents(certificate) and (p.network is None or address in p.network):
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
            raise TrustedError(
                f"{where}: must be a table of name and address, certificate or subject"
            )
        name, address = body.get("name"), body.get("address")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise TrustedError(f"{where}: name must be letters, digits, '.', '_' or '-'")
        fingerprint, subject = _certificate(where, body)
        network = None
        if address is not None or not (fingerprint or subject):
            try:
                network = ipaddress.ip_network(
                    address if isinstance(address, str) else "", strict=False
                )
            except ValueError:
                raise TrustedError(
                    f"{where}: address must be an IP address or network, not {address!r}"
                ) from None
            if network.prefixlen == 0 and not (fingerprint or subject):
                raise TrustedError(f"{where}: {address} would trust every address")
        peers.append(TrustedPeer(name, network, fingerprint, subject))
    return TrustedPeers(tuple(peers))


def _certificate(where: str, body: dict[str, Any]) -> tuple[str, str]:
    """The (fingerprint, subject) of a ``trusted`` entry, checked ("" where absent)."""
    fingerprint, subject = body.get("certificate", ""), body.get("subject", "")
    if not isinstance(fingerprint, str):
        raise TrustedError(f"{where}: certificate must be a SHA-256 fingerprint")
    fingerprint = fingerprint.replace(":", "").lower()
    if fingerprint and (len(fingerprint) != 64 or set(fingerprint) - _HEX):
        raise TrustedError(
            f"{where}: certificate must be a SHA-256 fingerprint (64 hex digits, ':' allowed)"
        )
    if (
        not isinstance(subject, str)
        or len(subject) > 200
        or (subject and not subject.isprintable())
    ):
        raise TrustedError(f"{where}: subject must be a certificate's common name")
    return fingerprint, subject
