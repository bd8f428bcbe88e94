"""Reaching a phone over a connection that another node of the cluster holds.

A phone registered over TCP or TLS is reached over the connection its REGISTER
came on (its flow: an RFC 5626 outbound registration, or NAT handling, see
``sipcore.nat``), and real phones write that connection's own port in their
Contact (PJSUA2's contact rewriting, linphone's rport fix-up): only the node
that holds the connection can reach them. Bindings replicate, connections do
not, so another node that routes a request to such a binding sends it to the
binding's origin node instead, with a Route naming that node which carries
the flow, the binding's expiry and a MAC under the cluster's secret over the
three and the Request-URI (the binding's Contact). The origin node checks the
MAC and the expiry and sends the request over its connection, without
challenging it again (the first node did, or let it through as any call to a
user of the domain) and whatever its From. A Route whose MAC does not match,
or whose binding has expired, is no relay: the request is handled as any
other (challenged, or refused as a relay by 403). Both nodes Record-Route, so
the dialog's requests take the same two hops.

The MAC does not bind the request itself: whoever reads a relay Route on the
way between two nodes can send that phone other requests through its node
until the binding expires (what any caller from outside the domain may do,
but with a From of the domain). Keep the nodes' SIP traffic on a network of
their own, or over TLS (a TLS flow is relayed over TLS).
"""

import hmac
from collections.abc import Callable, Mapping

FLOW_PARAM = "flow"
"""Route parameter: the flow, as a binding keeps it (``tcp:1.2.3.4:5678``)."""
EXPIRES_PARAM = "fexp"
"""Route parameter: the binding's absolute expiry (whole seconds, wall clock)."""
MAC_PARAM = "fmac"
"""Route parameter: the MAC over the flow, the expiry and the Request-URI."""


def flow_key(secret: bytes) -> bytes:
    """The key of the relay MACs, derived from the cluster's secret."""
    return hmac.digest(secret, b"flow-relay", "sha256")


def flow_mac(key: bytes, flow: str, expires: int, ruri: str) -> str:
    """The MAC (96 bits, hex) that lets the node holding ``flow`` send a request
    for ``ruri`` over it until ``expires``."""
    return hmac.digest(key, f"{flow}\0{expires}\0{ruri}".encode(), "sha256")[:12].hex()


def relay_route(key: bytes, hop: str, transport: str, flow: str, expires: float, ruri: str) -> str:
    """The Route value that takes a request for ``ruri`` to the node at ``hop``
    (``host:port``) over ``transport``, which sends it over ``flow``."""
    exp = int(expires)
    return (
        f"<sip:{hop};transport={transport};lr;{FLOW_PARAM}={flow};{EXPIRES_PARAM}={exp};"
        f"{MAC_PARAM}={flow_mac(key, flow, exp, ruri)}>"
    )


def relayed_flow(
    key: bytes,
    params: Mapping[str, str | None],
    ruri: str,
    wall: float,
    parse_flow: Callable[[str], tuple[str, str, int] | None],
) -> tuple[str, str, int] | None:
    """The destination of a relay Route's flow (its URI ``params``, for a request
    whose Request-URI is ``ruri``), or None when it is no relay, its MAC does not
    match or its binding has expired at ``wall``."""
    flow, exp, mac = params.get(FLOW_PARAM), params.get(EXPIRES_PARAM), params.get(MAC_PARAM)
    if not flow or not mac or not exp or not exp.isdigit() or int(exp) <= wall:
        return None
    if not hmac.compare_digest(mac, flow_mac(key, flow, int(exp), ruri)):
        return None
    dest = parse_flow(flow)
    return dest if dest is not None and dest[0] != "udp" else None
