"""Which flows a node keeps alive: those of the bindings it owns.

A phone behind NAT (or an RFC 5626 outbound phone) is reached over the flow its
REGISTER came on (``sipcore.nat``); that flow lives as long as the NAT's
pinhole or the TCP/TLS connection does, and NATs drop an idle UDP mapping
after 30 s or so. Only the node that holds the flow can refresh it: the
binding's origin (its primary, where the REGISTER arrived), or a node that
took the origin's address over (``sipcore.takeover``). Every other node
leaves it alone, so a cluster of N nodes sends one keepalive per flow, not N.

What is sent (``KEEPALIVE``) is the RFC 5626 §3.5.1 double CRLF, on every
transport: on TCP and TLS it is the standard keepalive; on UDP a 4-byte
datagram refreshes the NAT's mapping as well as an OPTIONS or a STUN request
would, costs the phone nothing (a SIP stack discards a datagram holding only
white space) and needs no answer. It does not test that the phone is alive:
the binding's expiry does that.
"""

from collections.abc import Collection, Iterable

from .location import Binding
from .proxy import binding_target

KEEPALIVE = b"\r\n\r\n"
"""The keepalive sent on a flow (RFC 5626 §3.5.1 "double CRLF")."""


def keepalive_flows(
    bindings: Iterable[Binding],
    owners: Collection[str],
    now: float,
    nat_handling: str = "auto",
    limit: int = 100_000,
) -> set[tuple[str, str, int]]:
    """The flows ``(transport, host, port)`` to keep alive: of the live bindings whose
    origin is in ``owners`` and that are reached over their flow (``binding_target``
    gives a destination), each once, ``limit`` at most."""
    flows: set[tuple[str, str, int]] = set()
    for b in bindings:
        if b.deleted or b.expires_at <= now or b.origin not in owners or not b.received:
            continue
        dest = binding_target(b, nat_handling).dest
        if dest is not None:
            flows.add(dest)
            if len(flows) >= limit:
                break
    return flows
