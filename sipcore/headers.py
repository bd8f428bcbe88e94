"""Header names, list splitting and the structured headers: Via and CSeq."""

import re
from dataclasses import dataclass, field

from .errors import SipParseError
from .grammar import TOKEN, TOKEN_CHARS
from .uri import (
    _SMALL_CACHE_MAX,
    _remember,
    check_host,
    check_port,
    format_params,
    parse_number,
    parse_params,
    split_quoted,
)

COMPACT = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
}

_KNOWN = [
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Max-Forwards",
    "Expires",
    "Min-Expires",
    "Content-Length",
    "Content-Type",
    "Route",
    "Record-Route",
    "Path",
    "Supported",
    "Require",
    "Proxy-Require",
    "Unsupported",
    "Allow",
    "Authorization",
    "Proxy-Authorization",
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "User-Agent",
    "Server",
    "Date",
    "Retry-After",
    "Accept",
    "Event",
    "Subject",
    "Content-Encoding",
    "Allow-Events",
    "Refer-To",
    "Referred-By",
    "Session-Expires",
    "Timestamp",
    "Warning",
    "Organization",
    "Priority",
    "Reason",
    "Service-Route",
]

#: lower-case name or compact letter -> canonical spelling
CANONICAL = {n.lower(): n for n in _KNOWN}
CANONICAL.update(COMPACT)

#: headers whose values may be comma-separated lists (RFC 3261 §7.3.1)
LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "path",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "allow",
        "accept",
        "allow-events",
        "service-route",
        "warning",
    }
)


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value outside quotes and ``<>``."""
    if "," not in value:
        return [value.strip()]
    return [p.strip() for p in split_quoted(value, ",")]


#: ``SIP/2.0/transport sent-by params``, case-insensitive as ABNF strings are (RFC 5234);
#: the transport is a token (TLS-SCTP, WSS...)
_VIA = re.compile(
    rf"\s*SIP\s*/\s*2\.0\s*/\s*({TOKEN})\s+"
    r"(\[[^\]]*\]|[^;:\s\[]+)(?:\s*:\s*([0-9]+))?\s*(.*)\Z",
    re.S | re.I,
)


@dataclass(slots=True)
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

    @property
    def received(self) -> str | None:
        """The ``received`` parameter (§18.2.1), if any."""
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The ``rport`` value filled in by a server (RFC 3581), or None.

        ``"rport" in via.params`` tells whether the client asked for it.
        """
        v = self.params.get("rport")
        if not v:
            return None
        n = parse_number(v, "Via rport", 65535)
        if n == 0:
            raise SipParseError("Via rport out of range")
        return n

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"


#: ``(transport, host, port)`` by the text of a Via before its first ``;``:
#: a client sends the same sent-by with a new branch in every request.
_SENT_BY_CACHE: dict[str, tuple[str, str, int | None]] = {}
#: parsed CSeq values by their text (at most ``_CSEQ_TEXT_MAX`` characters)
_CSEQ_CACHE: dict[str, tuple[int, str]] = {}
_CSEQ_TEXT_MAX = 40


def parse_via(value: str) -> Via:
    """Parse one Via value; raise ``SipParseError`` when malformed.

    Every call returns a new ``Via`` with its own ``params``, which
    callers may change (``received``, ``rport``); the sent-by part is
    looked up by its text and only the parameters are parsed (``_parse_via``
    parses it all): 11% of the instructions of parsing an INVITE and reading
    its views (``loadtest/count_shortcuts.py``).
    """
    head, semi, rest = value.partition(";")
    sent_by = _SENT_BY_CACHE.get(head)
    if sent_by is None:
        sent_by = _sent_by(head)
        if sent_by is None:
            return _parse_via(value)
        _remember(_SENT_BY_CACHE, head, sent_by)
    transport, host, port = sent_by
    if not semi:
        return Via(transport, host, port, {})
    try:
        # _parse_via reads ";" + rest, trailing whitespace stripped: the same
        # pieces, less an empty first one, and each piece is stripped anyway.
        params = _via_params(rest)
    except SipParseError as err:
        raise SipParseError(f"malformed Via: {err.reason}") from None
    return Via(transport, host, port, params)


#: an empty parameter: nothing but whitespace between two ``;``, or after the last
_EMPTY_PARAM = re.compile(r";\s*(?:;|\Z)")


def _via_params(text: str) -> dict[str, str | None]:
    """The parameters of a Via, ``text`` being what follows their first ``;``.

    An empty parameter (``;;``, a ``;`` at the end) makes the Via malformed:
    RFC 4475 §3.1.2.1 says such a request gets 400.
    """
    # One search, of the text behind a ";" of its own: the empty first parameter counts too.
    if _EMPTY_PARAM.search(";" + text) and any(not p.strip() for p in split_quoted(text, ";")):
        raise SipParseError("empty parameter")
    return parse_params(text)


def _sent_by(head: str) -> tuple[str, str, int | None] | None:
    """``(transport, host, port)`` of a Via's text before its first ``;``, or None.

    None unless ``head`` is a valid sent-by with nothing after it: then
    ``_VIA`` matches ``head + ";..."`` with the same groups (no group of
    the sent-by can take a ``;``) and the parameters from the ``;`` on.
    Anything else is left to ``_parse_via`` and its error messages.
    """
    m = _VIA.match(head)
    if m is None or m.group(4):
        return None
    transport, host, port_text, _ = m.groups()
    try:
        check_host(host)
        port = check_port(port_text) if port_text else None
    except SipParseError:
        return None
    return transport.upper(), host, port


def _parse_via(value: str) -> Via:
    """Parse one Via value from scratch; raise ``SipParseError`` when malformed."""
    m = _VIA.match(value)
    if not m:
        raise SipParseError("malformed Via")
    transport, host, port_text, rest = m.groups()
    try:
        check_host(host)
        port = check_port(port_text) if port_text else None
        rest = rest.strip()
        if rest and rest[0] != ";":
            raise SipParseError("junk after sent-by")
        params = _via_params(rest[1:]) if rest else {}
    except SipParseError as err:
        raise SipParseError(f"malformed Via: {err.reason}") from None
    return Via(transport.upper(), host, port, params)


def parse_cseq(value: str) -> tuple[int, str]:
    """Parse ``CSeq: number METHOD``; the number must fit 31 bits (§8.1.1.5).

    Results are cached by text (they are immutable); errors are raised anew.
    """
    found = _CSEQ_CACHE.get(value)
    if found is not None:
        return found
    found = _parse_cseq(value)
    if len(value) <= _CSEQ_TEXT_MAX:
        _remember(_CSEQ_CACHE, value, found, _SMALL_CACHE_MAX)
    return found


def _parse_cseq(value: str) -> tuple[int, str]:
    """Parse a CSeq value from scratch; raise ``SipParseError`` when malformed."""
    parts = value.split()
    if (
        len(parts) != 2
        or not parts[0].isdigit()
        or not parts[0].isascii()
        or parts[1].strip(TOKEN_CHARS)
    ):
        raise SipParseError("malformed CSeq")
    num = parts[0]
    if len(num) > 10:
        num = num.lstrip("0") or "0"
        if len(num) > 10:
            raise SipParseError("CSeq number too large")
    n = int(num)
    if n >= 2**31:
        raise SipParseError("CSeq number too large")
    return n, parts[1]


def parse_int(value: str, name: str, maximum: int = 2**32 - 1) -> int:
    """Parse a non-negative integer header such as Expires or Max-Forwards."""
    return parse_number(value.strip(), name, maximum)
