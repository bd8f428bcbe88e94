"""Header names, list splitting and the structured headers: Via and CSeq."""

import re
from dataclasses import dataclass, field

from .errors import SipParseError
from .uri import format_params, parse_params, split_hostport, split_quoted

COMPACT = {
    "v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact",
    "l": "Content-Length", "c": "Content-Type", "k": "Supported",
    "s": "Subject", "e": "Content-Encoding", "o": "Event", "u": "Allow-Events",
    "r": "Refer-To", "b": "Referred-By", "x": "Session-Expires",
}

_KNOWN = [
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards",
    "Expires", "Min-Expires", "Content-Length", "Content-Type", "Route",
    "Record-Route", "Path", "Supported", "Require", "Proxy-Require",
    "Unsupported", "Allow", "Authorization", "Proxy-Authorization",
    "WWW-Authenticate", "Proxy-Authenticate", "User-Agent", "Server", "Date",
    "Retry-After", "Accept", "Event", "Subject", "Content-Encoding",
    "Allow-Events", "Refer-To", "Referred-By", "Session-Expires", "Timestamp",
    "Warning", "Organization", "Priority", "Reason", "Service-Route",
]

#: lower-case name or compact letter -> canonical spelling
CANONICAL = {n.lower(): n for n in _KNOWN}
CANONICAL.update(COMPACT)

#: headers whose values may be comma-separated lists (RFC 3261 §7.3.1)
LIST_HEADERS = frozenset({
    "via", "contact", "route", "record-route", "path", "supported", "require",
    "proxy-require", "unsupported", "allow", "accept", "allow-events",
    "service-route", "warning",
})


def canonical_name(name: str) -> str:
    """Return the canonical spelling of a header name, expanding compact forms."""
    return CANONICAL.get(name.lower(), name)


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value outside quotes and ``<>``."""
    if "," not in value:
        return [value.strip()]
    return [p.strip() for p in split_quoted(value, ",")]


_VIA = re.compile(r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+([^;\s]+(?:\s*:\s*\d+)?)\s*(.*)\Z",
                  re.S)


@dataclass
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;params``."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        """The ``branch`` parameter."""
        return self.params.get("branch")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"


def parse_via(value: str) -> Via:
    """Parse one Via value; raise ``SipParseError`` when malformed."""
    m = _VIA.match(value)
    if not m:
        raise SipParseError("malformed Via")
    transport, hostport, rest = m.groups()
    host, port = split_hostport(hostport.replace(" ", "").replace("\t", ""))
    rest = rest.strip()
    if rest and not rest.startswith(";"):
        raise SipParseError("malformed Via parameters")
    return Via(transport.upper(), host, port, parse_params(rest))


def parse_cseq(value: str) -> tuple[int, str]:
    """Parse ``CSeq: number METHOD``; the number must fit 31 bits (§8.1.1.5)."""
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit():
        raise SipParseError("malformed CSeq")
    num = int(parts[0])
    if num >= 2 ** 31:
        raise SipParseError("CSeq number too large")
    return num, parts[1]


def parse_int(value: str, name: str, maximum: int = 2 ** 32 - 1) -> int:
    """Parse a non-negative integer header such as Expires or Max-Forwards."""
    value = value.strip()
    if not value.isdigit() or not value.isascii():
        raise SipParseError(f"malformed {name}")
    n = int(value)
    if n > maximum:
        raise SipParseError(f"{name} out of range")
    return n


def parse_header_params(value: str) -> tuple[str, dict[str, str | None]]:
    """Split ``token;params`` (e.g. a Supported or Event value)."""
    head, _, rest = value.partition(";")
    return head.strip(), parse_params(rest)
