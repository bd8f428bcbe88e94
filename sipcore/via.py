"""What a transport does to Via on receipt and where a response goes (RFC 3261 §18, RFC 3581)."""

from .errors import SipParseError
from .headers import split_list
from .message import Message, Request

DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061, "SCTP": 5060}


def stamp_via(req: Request, transport: str, ip: str, port: int) -> tuple[str, str, int]:
    """Add ``received``/``rport`` to the top Via (§18.2.1, RFC 3581 §4).

    Returns the destination for responses (§18.2.2, RFC 3581 §4):
    ``(transport, host, port)``. Over TCP the response goes back over the
    connection the request came in on, named by the source address.
    """
    via = req.top_via
    host = via.host[1:-1] if via.host.startswith("[") else via.host
    params = via.params
    changed = False
    if "rport" in params:
        params["rport"] = str(port)
        params["received"] = ip
        changed = True
    elif host != ip:
        params["received"] = ip
        changed = True
    if changed:
        _replace_top_via(req, str(via))
    if transport != "udp":
        return (transport, ip, port)
    if "rport" in params:
        return ("udp", ip, port)
    target = params.get("received") or host
    return ("udp", target, via.port or DEFAULT_PORTS.get(via.transport, 5060))


def _replace_top_via(msg: Message, value: str) -> None:
    top = msg.top_via
    for h in msg.headers:
        if h[0] == "via":
            v = h[2]
            if "," in v:
                rest = split_list(v)[1:]
                h[2] = ", ".join([value, *rest])
            else:
                h[2] = value
            break
    msg._cache.pop("vias", None)
    msg._cache["top_via"] = top


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
