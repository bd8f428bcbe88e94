"""SIP, SIPS and tel URIs, name-addr values and header parameters (RFC 3261 §19, §20, §25)."""

from dataclasses import dataclass, field
from urllib.parse import unquote

from .errors import SipParseError

SCHEMES = ("sip", "sips", "tel")


def split_quoted(value: str, sep: str) -> list[str]:
    """Split ``value`` on ``sep`` outside quoted strings and ``<...>``.

    Backslash escapes inside quoted strings are honoured; empty pieces are
    kept so callers can reject them.
    """
    if '"' not in value and "<" not in value:
        return value.split(sep)
    parts = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == sep and not angle:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise SipParseError("unterminated quoted string")
    parts.append(value[start:])
    return parts


def unquote_string(value: str) -> str:
    """Return the content of a quoted-string with its escapes resolved."""
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        if "\\" not in inner:
            return inner
        out = []
        i = 0
        while i < len(inner):
            if inner[i] == "\\" and i + 1 < len(inner):
                i += 1
            out.append(inner[i])
            i += 1
        return "".join(out)
    return value


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``;name=value;flag`` pieces (leading ``;`` optional).

    Names are lower-cased; a parameter without ``=`` maps to ``None``;
    quoted values keep their quotes so they serialise unchanged.
    """
    params: dict[str, str | None] = {}
    if not text:
        return params
    for piece in split_quoted(text, ";"):
        piece = piece.strip()
        if not piece:
            continue
        name, eq, val = piece.partition("=")
        name = name.strip().lower()
        if not name:
            raise SipParseError("empty parameter name")
        params[name] = val.strip() if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    """Serialise parameters as ``;name=value`` pieces."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` with IPv6 references in brackets."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError("unterminated IPv6 reference")
        host = text[: end + 1]
        rest = text[end + 1:]
        if rest and not rest.startswith(":"):
            raise SipParseError("bad host")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise SipParseError("missing host")
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise SipParseError(f"bad port {port_text!r}")
        port = int(port_text)
    return host, port


@dataclass
class SipUri:
    """A parsed URI; ``tel`` URIs keep the number in ``user`` and no host."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers:
            out.append("?" + self.headers)
        return "".join(out)

    @property
    def host_bare(self) -> str:
        """The host without IPv6 brackets, lower-cased."""
        h = self.host.lower()
        return h[1:-1] if h.startswith("[") else h

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased, if any."""
        t = self.params.get("transport")
        return t.lower() if t else None

    def aor(self) -> str:
        """The address of record: ``scheme:user@host`` in canonical form."""
        if self.scheme == "tel":
            return "tel:" + unquote(self.user or "").replace("-", "").replace(".", "")
        user = unquote(self.user) if self.user else ""
        return f"sip:{user}@{self.host.lower()}" if user else f"sip:{self.host.lower()}"

    def canonical(self) -> str:
        """A form for comparing contacts: case-folded scheme and host, escapes resolved."""
        out = [self.scheme.lower(), ":"]
        if self.user is not None:
            out.append(unquote(self.user) + "@")
        out.append(self.host.lower())
        if self.port is not None:
            out.append(f":{self.port}")
        for k in ("transport", "user", "maddr", "ttl", "method"):
            v = self.params.get(k)
            if v is not None:
                out.append(f";{k}={v.lower()}")
        return "".join(out)


def parse_uri(text: str) -> SipUri:
    """Parse a SIP, SIPS or tel URI; raise ``SipParseError`` when malformed.

    An unknown scheme raises ``SipError`` 416 through ``UnsupportedScheme``.
    """
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or not scheme or not rest:
        raise SipParseError(f"bad URI {text[:60]!r}")
    if scheme not in SCHEMES:
        raise UnsupportedScheme(scheme)
    if " " in rest or "\t" in rest:
        raise SipParseError("whitespace in URI")
    if scheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise SipParseError("empty tel URI")
        return SipUri("tel", user=number, params=parse_params(ptext))
    user = password = None
    at = rest.rfind("@", 0, _first(rest, "?"))
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        user, sep, pw = userinfo.partition(":")
        if sep:
            password = pw
        if not user:
            raise SipParseError("empty user part")
    rest, _, headers = rest.partition("?")
    hostport, _, ptext = rest.partition(";")
    host, port = split_hostport(hostport)
    return SipUri(scheme, user, password, host, port, parse_params(ptext), headers)


def _first(text: str, ch: str) -> int:
    i = text.find(ch)
    return len(text) if i < 0 else i


class UnsupportedScheme(SipParseError):
    """A URI scheme the node does not handle (``416``)."""

    def __init__(self, scheme: str):
        super().__init__(f"unsupported URI scheme {scheme!r}")
        self.status = 416
        self.reason = "Unsupported URI Scheme"


@dataclass
class NameAddr:
    """A ``name-addr`` or ``addr-spec`` with its header parameters (From, To, Contact, Route)."""

    uri: SipUri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter, if any."""
        return self.params.get("tag")

    def __str__(self) -> str:
        name = f"{self.display} " if self.display else ""
        return f"{name}<{self.uri}>{format_params(self.params)}"


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``["Display"] <uri>;params`` or ``uri;params`` (RFC 3261 §20.10)."""
    text = text.strip()
    if not text:
        raise SipParseError("empty address")
    lt = _find_unquoted(text, "<")
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError("unterminated <URI>")
        display = text[:lt].strip() or None
        if display and display[0] == '"' and (len(display) < 2 or display[-1] != '"'):
            raise SipParseError("bad display name")
        uri = parse_uri(text[lt + 1:gt])
        params = parse_params(text[gt + 1:].lstrip())
        if text[gt + 1:].strip() and not text[gt + 1:].lstrip().startswith(";"):
            raise SipParseError("junk after <URI>")
        return NameAddr(uri, display, params)
    # addr-spec form: parameters after the URI belong to the header (§20).
    head, _, ptext = text.partition(";")
    return NameAddr(parse_uri(head), None, parse_params(ptext))


def _find_unquoted(text: str, ch: str) -> int:
    if '"' not in text:
        return text.find(ch)
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ch:
            return i
        i += 1
    return -1
