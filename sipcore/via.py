"""What a transport does to Via on receipt and where a response goes (RFC 3261 §18, RFC 3581)."""

from .errors import SipParseError
from .message import Message, Request

DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061, "SCTP": 5060}


def stamp_via(req: Request, transport: str, ip: str, port: int) -> tuple[str, str, int]:
    """Add ``received``/``rport`` to the top Via (§18.2.1, RFC 3581 §4).

    Returns the destination for responses (§18.2.2, RFC 3581 §4):
    ``(transport, host, port)``. Over TCP the response goes back over the
    connection the request came in on, named by the source address.
    """
    via = req.top_via
    host = via.host
    if "[" in host:         # parse_via's host holds "[" only as an IPv6 reference's first character
        host = host[1:-1]
    params = via.params
    rport = "rport" in params
    # A received the sender wrote itself is overwritten: it would name another source.
    if rport or host != ip or params.get("received", ip) != ip:
        if rport:
            params["rport"] = str(port)
        params["received"] = ip
        # str(via) written out (Via.__str__ and format_params): this runs for
        # every request, and the calls and the list comprehension cost more
        # than the formatting itself.
        text = (f"SIP/2.0/{via.transport} {via.host}" if via.port is None
                else f"SIP/2.0/{via.transport} {via.host}:{via.port}")
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


def response_destination(msg: Message) -> tuple[str, str, int] | None:
    """Where a proxy sends a response it forwards: the (new) top Via (§18.2.2)."""
    try:
        via = msg.top_via
    except SipParseError:
        return None
    transport = via.transport.lower()
    params = via.params
    host = params.get("received") or via.host
    if host.startswith("["):
        host = host[1:-1]
    rport = params.get("rport")
    if rport:
        port = int(rport)
    else:
        port = via.port or DEFAULT_PORTS.get(via.transport, 5060)
    return (transport, host, port)
