"""What a transport does to Via on receipt and where a response goes (RFC 3261 §18, RFC 3581)."""

from ipaddress import ip_address

from .errors import SipParseError
from .message import Message, Request

Dest = tuple[str, str, int]
"""Where a message goes: ``(transport, host, port)``, transport "udp", "tcp" or "tls"."""

DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061, "SCTP": 5060}


def stamp_via(req: Request, transport: str, ip: str, port: int) -> tuple[str, str, int]:
    """Add ``received``/``rport`` to the top Via (§18.2.1, RFC 3581 §4).

    Returns the destination for responses (§18.2.2, RFC 3581 §4):
    ``(transport, host, port)``. Over TCP the response goes back over the
    connection the request came in on, named by the source address. A
    ``received`` the client wrote itself is replaced by the source: a
    response goes where the request came from, never where its sender says
    (which would make the node reflect its answers at any address).
    """
    via = req.top_via
    host = via.host
    if "[" in host:  # parse_via's host holds "[" only as an IPv6 reference's first character
        host = host[1:-1]
    params = via.params
    rport = "rport" in params
    if rport or host != ip or "received" in params:
        if rport:
            params["rport"] = str(port)
        params["received"] = ip
        # str(via) written out (Via.__str__ and format_params): this runs for
        # every request, and the calls and the list comprehension cost more
        # than the formatting itself.
        text = (
            f"SIP/2.0/{via.transport} {via.host}"
            if via.port is None
            else f"SIP/2.0/{via.transport} {via.host}:{via.port}"
        )
        for k, v in params.items():
            text = f"{text};{k}" if v is None else f"{text};{k}={v}"
        req.set_top_via(text, via)
    if transport != "udp":
        return (transport, ip, port)
    if rport:
        return ("udp", ip, port)
    target = params.get("received") or host
    return ("udp", target, via.port or DEFAULT_PORTS.get(via.transport, 5060))


def source_address(req: Request) -> str:
    """The address a received request came from, as ``stamp_via`` left its top Via."""
    via = req.top_via
    host = via.params.get("received") or via.host
    return host[1:-1] if host.startswith("[") else host


def response_destination(msg: Message) -> Dest | None:
    """Where a proxy sends a response it forwards: the (new) top Via (§18.2.2).

    None (the response is dropped) when that Via is malformed, its ``rport``
    is not a port (1 to 65535) or its ``received`` not an IP address: the
    Via comes from the wire, and a port or host a socket cannot take must
    not reach one.
    """
    try:
        via = msg.top_via
        rport = via.rport
    except SipParseError:
        return None
    received = via.params.get("received")
    if received is not None:
        host = received[1:-1] if received.startswith("[") else received
        try:
            ip_address(host)
        except ValueError:
            return None
    else:
        host = via.host[1:-1] if via.host.startswith("[") else via.host
    port = rport or via.port or DEFAULT_PORTS.get(via.transport, 5060)
    return (via.transport.lower(), host, port)
