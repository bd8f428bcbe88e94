"""Where a request for a registered contact goes: the Contact, or the flow the REGISTER came on.

RFC 3261 §16.5 makes a binding's Contact the target. The source of the
REGISTER (its ``received`` and ``rport``) is used instead only

- for an RFC 5626 outbound registration: the Contact carries both
  ``+sip.instance`` and ``reg-id`` (§6 of RFC 5626; the ``;ob`` URI parameter
  phones also write says the same and is not needed to decide), whatever
  ``nat_handling`` says, since the phone asked for the flow;
- when NAT handling applies (``[sip] nat_handling``):

  ``"never"``
      the Contact, always (outbound flows aside).
  ``"always"``
      the source, always.
  ``"auto"`` (the default)
      the source when ``nat_detected`` says the Contact cannot be reached
      from here, else the Contact. Over TCP, also when the Contact names
      the address the connection came from: the connection reaches that
      device whatever port it listens on (or if it listens on none, as a
      phone behind a firewall); when it has closed, the Contact is tried
      next (``ProxyCore``).

In every case the source is used only when the Contact's transport is the
one the REGISTER came on, a ``sips:`` Contact's being TLS (a flow cannot
change a request's transport or security); a binding with a Path follows
its Path.

``nat_detected`` is Kamailio nathelper's ``nat_uac_test`` with flag 1 (the
Contact holds an RFC 1918 or RFC 6598 address) narrowed, plus a loopback
rule, decided from what a binding keeps (the Contact and the source):

1. the Contact's host is a private address -- RFC 1918 (10/8, 172.16/12,
   192.168/16), RFC 6598 (100.64/10), IPv6 unique local (fc00::/7) or
   link local (169.254/16, fe80::/10) -- and is not the source address
   (a phone on the same private network as the node is reached directly);
2. the Contact's host is a loopback address and the source is not (the
   phone named its own host, which is not ours).

Not NAT: a Contact naming another public or loopback address than the
source (a third party registering on a device's behalf, ``sipsak -C``), a
Contact port other than the source port (a phone sending from one port and
listening on another: nathelper's flags 16 and 128 would call it NAT and
make it unreachable), or a host name. The Via test of nathelper's flag 2 is
not made, since a binding does not keep the REGISTER's Via; a phone behind
NAT that writes its private address in Via writes it in its Contact too,
which rule 1 catches.
"""

import ipaddress
from ipaddress import IPv4Address, IPv6Address

#: the values of ``[sip] nat_handling``
NAT_HANDLING = ("auto", "always", "never")

_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


def _address(host: str) -> IPv4Address | IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def nat_detected(contact_host: str, source_host: str) -> bool:
    """Whether a Contact naming ``contact_host``, registered from ``source_host``, sits
    behind a NAT (the module's rules 1 and 2)."""
    contact = _address(contact_host)
    if contact is None:
        return False
    source = _address(source_host)
    if contact.is_loopback:
        return source is None or not source.is_loopback
    if contact == source:
        return False
    return any(contact in net for net in _PRIVATE if net.version == contact.version)


def is_outbound(instance: str | None, reg_id: int | None) -> bool:
    """Whether a binding is an RFC 5626 outbound registration (instance and reg-id)."""
    return bool(instance) and reg_id is not None


def use_flow(
    mode: str, transport: str, contact_host: str, source_host: str, outbound: bool
) -> bool:
    """Whether to send to the REGISTER's source rather than to the Contact (``mode`` is one
    of ``NAT_HANDLING``; the caller checked that ``transport`` is the Contact's too)."""
    if outbound or mode == "always":
        return True
    if mode == "never":
        return False
    if transport != "udp" and _address(contact_host) == _address(source_host):
        return _address(contact_host) is not None
    return nat_detected(contact_host, source_host)
