"""Checks a configuration must pass before it becomes a version.

:func:`check_config` runs inside :func:`store.master.new_version`, in the
transaction of the change, so every path that makes a version (a user saved,
the dial plan edited, a node joined, an earlier version restored) is checked
and a refused change leaves nothing behind: no version, nothing pushed. The
message says what is wrong. Checked: the domain is a host name or an
address; every user has both HA1 digests (a user without a password cannot
authenticate); the dial plan compiles; every gateway host that is new since
the previous version resolves (an address, a name in DNS or the hosts file,
or an RFC 3263 SRV name). Hosts already in the previous version are not
resolved again, so a DNS outage never blocks saving a user.
"""

import ipaddress
import socket
from typing import Any

import dns.exception
import dns.resolver
import peewee

from sipcore.dialplan import DialPlanError, parse_dialplan
from store.db import StoreError
from store.users import validate_domain

RESOLVE_TIMEOUT = 2.0
"""Seconds a gateway host's DNS lookups may take in all."""
_SRV_PREFIXES = ("_sip._udp.", "_sip._tcp.", "_sips._tcp.")


class ConfigError(StoreError):
    """A change refused before it became a version (the message says why)."""


def check_config(
    domain: str, dialplan: dict[str, Any] | None, previous_dialplan: dict[str, Any] | None
) -> None:
    """Refuse (``ConfigError``) a configuration that nodes could not serve."""
    try:
        validate_domain(domain)
    except StoreError as e:
        raise ConfigError(f"domain refused: {e}") from None
    _check_users()
    if dialplan is None:
        return
    try:
        plan = parse_dialplan(dialplan)
    except DialPlanError as e:
        raise ConfigError(f"the dial plan does not compile: {e}") from None
    known = _gateway_hosts(previous_dialplan)
    for gateway in plan.gateways.values():
        if gateway.host not in known and not resolves(gateway.host):
            raise ConfigError(
                f"gateway {gateway.name}: host {gateway.host} does not resolve "
                "(no address, no SRV record)"
            )


def _check_users() -> None:
    """Every user has both HA1 digests of the right size."""
    from store.master import SipUser

    bad = (
        SipUser.select(SipUser.username)
        .where(
            (peewee.fn.LENGTH(SipUser.ha1_md5) != 32) | (peewee.fn.LENGTH(SipUser.ha1_sha256) != 64)
        )
        .first()
    )
    if bad is not None:
        raise ConfigError(f"user {bad.username} has no password (no HA1 digest)")


def _gateway_hosts(doc: dict[str, Any] | None) -> set[str]:
    """The gateway hosts of a plan document (none when it has no valid list)."""
    gateways = (doc or {}).get("gateways")
    if not isinstance(gateways, list):
        return set()
    return {g["host"] for g in gateways if isinstance(g, dict) and isinstance(g.get("host"), str)}


def resolves(host: str) -> bool:
    """Whether a gateway host is an address or a name with an address or a SIP SRV record."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    try:
        if socket.getaddrinfo(host, None):
            return True
    except (OSError, UnicodeError):
        pass
    resolver = dns.resolver.Resolver()
    resolver.lifetime = RESOLVE_TIMEOUT / len(_SRV_PREFIXES)
    for prefix in _SRV_PREFIXES:
        try:
            if resolver.resolve(prefix + host, "SRV"):
                return True
        except dns.exception.DNSException:
            continue
    return False
