"""SIP, SIPS and tel URIs, name-addr values and header parameters (RFC 3261 §19, §20, §25)."""

import re
from collections.abc import Mapping
from itertools import product
from typing import Any, NamedTuple, NoReturn, TypeVar
from urllib.parse import unquote

from .errors import SipParseError
from .grammar import ALPHANUM, DIGITS, HEXDIG, HOST_MARKS, MARK, SEPARATOR_CLASS, alnum_class

SCHEMES = ("sip", "sips", "tel")


class Params(dict[str, str | None]):
    """Parsed parameters, read-only: they live in parses shared process-wide.

    A dict (so reading costs what a dict's does, and copies and pickles work)
    whose every method that would change it raises ``TypeError``.
    """

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("parsed parameters are read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[type["Params"], tuple[dict[str, str | None]]]:
        return (Params, (dict(self),))


#: the parameters of a URI or name-addr that has none
NO_PARAMS = Params()


def read_only(params: dict[str, str | None]) -> Mapping[str, str | None]:
    """Parsed parameters made read-only, to keep in a shared parse."""
    return Params(params) if params else NO_PARAMS


#: characters of a URI scheme after its first letter (RFC 3986 §3.1)
_SCHEME_CHARS = ALPHANUM + "+-."
#: characters of a host name or IPv4 address (RFC 3261 §25.1)
_HOST_CHARS = ALPHANUM + HOST_MARKS
#: characters inside an IPv6 reference's brackets
_IPV6_CHARS = HEXDIG + ":."
#: characters of a tel URI number, global or local (RFC 3966 §3)
_TEL_CHARS = HEXDIG + "+-.()*#"
#: user characters besides alphanum: ``unreserved``, ``user-unreserved`` but
#: ``?`` (no headers) and ``%`` of ``escaped``
_USER_MARKS = MARK + "&=+$,;/%"


def only(text: str, chars: str) -> bool:
    """True when ``text`` is not empty and every character is in ``chars``.

    ``str.strip`` removes characters from both ends until one outside
    ``chars`` stops it, so the result is empty only when all of them are
    in ``chars``; this runs at C speed, unlike a loop over a set.
    """
    return bool(text) and not text.strip(chars)


def parse_number(value: str, name: str, maximum: int) -> int:
    """Parse a decimal number (ASCII digits only) no larger than ``maximum``.

    Leading zeros are allowed (``0068``); very long strings are refused
    before ``int()`` sees them, which would raise ``ValueError`` past 4300
    digits. Short texts are cached: Max-Forwards, Expires and
    Content-Length repeat the same few values in every message.
    """
    n = _NUMBER_CACHE.get(value)
    if n is None:
        if not value.isdigit() or not value.isascii():
            raise SipParseError(f"malformed {name}")
        if len(value) <= _NUMBER_TEXT_MAX:
            n = _remember(_NUMBER_CACHE, value, int(value), _SMALL_CACHE_MAX)
        else:
            digits = (value.lstrip("0") or "0") if len(value) > 20 else value
            if len(digits) > 20:
                raise SipParseError(f"{name} out of range")
            n = int(digits)
    # The bound is checked on every call: only the text's value is cached.
    if n > maximum:
        raise SipParseError(f"{name} out of range")
    return n


def split_quoted(value: str, sep: str) -> list[str]:
    """Split ``value`` on ``sep`` outside quoted strings and ``<...>``.

    Backslash escapes inside quoted strings are honoured; empty pieces are
    kept so callers can reject them. The scan jumps with ``str.find`` to
    the next quote or ``<`` and looks for separators only before it; once
    neither is left, the rest is split at once.
    """
    if '"' not in value and "<" not in value:
        return value.split(sep)
    parts = []
    start = i = 0
    n = len(value)
    q = a = -1
    while True:
        # The next quote and "<" at or after i (n when there is none).
        if q < i:
            q = value.find('"', i)
            if q < 0:
                q = n
        if a < i:
            a = value.find("<", i)
            if a < 0:
                a = n
        if q == n and a == n:
            rest = value[i:].split(sep)
            rest[0] = value[start:i] + rest[0]
            parts += rest
            return parts
        s = value.find(sep, i, min(q, a))
        if s >= 0:
            parts.append(value[start:s])
            start = i = s + 1
        elif q < a:
            e = _quoted_end(value, q)
            if e < 0:
                raise SipParseError("unterminated quoted string")
            i = e + 1
        else:
            g = value.find(">", a)
            if g < 0:
                parts.append(value[start:])
                return parts
            i = g + 1


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
    pieces = split_quoted(text, ";") if '"' in text or "<" in text else text.split(";")
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        name, eq, val = piece.partition("=")
        name = name.strip().lower()
        if not name:
            raise SipParseError("empty parameter name")
        params[name] = val.strip() if eq else None
    return params


def format_params(params: Mapping[str, str | None]) -> str:
    """Serialise parameters as ``;name=value`` pieces."""
    text = ""
    for k, v in params.items():
        text = f"{text};{k}" if v is None else f"{text};{k}={v}"
    return text


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` with IPv6 references in brackets."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError("unterminated IPv6 reference")
        host = text[: end + 1]
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise SipParseError("bad host")
        port_text = rest[1:] if rest else ""
        colon = rest
    else:
        host, colon, port_text = text.partition(":")
    check_host(host)
    if not colon:
        return host, None
    return host, check_port(port_text)


def check_host(host: str) -> None:
    """Raise ``SipParseError`` unless ``host`` is a host name, IPv4 address or ``[IPv6]``."""
    if not host:
        raise SipParseError("missing host")
    if host[0] == "[":
        inner = host[1:-1]
        if host[-1] != "]" or not inner or inner.strip(_IPV6_CHARS) or ":" not in inner:
            raise SipParseError(f"bad IPv6 reference {host[:60]!r}")
    elif host.strip(_HOST_CHARS):
        raise SipParseError(f"bad host {host[:60]!r}")


def check_port(text: str) -> int:
    """Parse a port number, 1 to 65535."""
    if not text.isdigit() or not text.isascii() or len(text) > 5 or not 0 < int(text) < 65536:
        raise SipParseError(f"bad port {text[:20]!r}")
    return int(text)


class SipUri(NamedTuple):
    """A parsed URI; ``tel`` URIs keep the number in ``user`` and no host.

    Immutable, parameters included: parses are cached and shared process-wide,
    so one stray write would corrupt every later parse of the same text. A
    named tuple rather than a frozen dataclass, which is made four times slower
    (4.1 against 0.9 µs): counted with cachegrind (``loadtest/profile_register.py``),
    immutability costs an authenticated REGISTER 1.5% more instructions as a named
    tuple and 3.8% as a frozen dataclass.
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Mapping[str, str | None] = NO_PARAMS
    headers: str = ""

    def __str__(self) -> str:
        params = format_params(self.params) if self.params else ""
        if self.scheme == "tel":
            return f"tel:{self.user}{params}"
        user = self.user
        if user is None:
            userinfo = ""
        elif self.password is None:
            userinfo = user + "@"
        else:
            userinfo = user + ":" + self.password + "@"
        port = "" if self.port is None else f":{self.port}"
        headers = "?" + self.headers if self.headers else ""
        return f"{self.scheme}:{userinfo}{self.host}{port}{params}{headers}"

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
        """A form for comparing contacts: case-folded scheme and host, escapes resolved.

        An escape stays one (upper-cased) where resolving it would give a
        control character, a byte that is not UTF-8 or a ``%``: the form is
        a binding's key, kept in the store (which may refuse a NUL), and two
        users differing only there stay apart (RFC 4475 §3.1.1.4).
        """
        user = self.user
        if user is None:
            user = ""
        else:
            # unquote returns its argument when there is no "%"; the test saves the call.
            if "%" in user:
                user = unquote(user, errors="surrogateescape").translate(_KEPT_ESCAPED)
            user += "@"
        out = f"{self.scheme.lower()}:{user}{self.host.lower()}"
        if self.port is not None:
            out += f":{self.port}"
        params = self.params
        if params:
            for k in _CANONICAL_PARAMS:
                v = params.get(k)
                if v is not None:
                    out += f";{k}={v.lower()}"
        return out


#: what ``canonical`` writes escaped in a user part: control characters, ``%``, and the
#: surrogates ``unquote`` gives for bytes that are not UTF-8
_KEPT_ESCAPED = {c: f"%{c:02X}" for c in [*range(0x20), 0x25, 0x7F]}
_KEPT_ESCAPED.update({0xDC80 + b: f"%{0x80 + b:02X}" for b in range(0x80)})

#: URI parameters that take part in comparing contacts, in the order ``canonical`` writes them
_CANONICAL_PARAMS = ("transport", "user", "maddr", "ttl", "method")

#: parsed values by their text; REGISTERs and calls repeat the same From,
#: To, Contact and Request-URI texts, so most parses are found here. The
#: values are shared: callers treat them as read-only.
_URI_CACHE: dict[str, "SipUri"] = {}
_ADDR_CACHE: dict[str, "NameAddr"] = {}
_CACHE_MAX = 20_000
#: numbers by their text (at most ``_NUMBER_TEXT_MAX`` characters)
_NUMBER_CACHE: dict[str, int] = {}
_NUMBER_TEXT_MAX = 10
#: size of the caches of small values that take few distinct texts
_SMALL_CACHE_MAX = 1024


def parse_uri(text: str) -> "SipUri":
    """Parse a SIP, SIPS or tel URI (cached by text; the result is read-only).

    Raises ``SipParseError`` when malformed, ``UnsupportedScheme`` (416)
    for an unknown scheme.
    """
    found = _URI_CACHE.get(text)
    return found if found is not None else _remember(_URI_CACHE, text, _parse_uri(text))


_V = TypeVar("_V")


def _remember(cache: dict[str, _V], text: str, value: _V, limit: int | None = None) -> _V:
    """Keep ``value`` as the parse of ``text`` (the cache is emptied when full).

    ``limit`` is the cache's size, ``_CACHE_MAX`` by default.
    """
    if len(cache) >= (_CACHE_MAX if limit is None else limit):
        cache.clear()
    cache[text] = value
    return value


#: the common form of a SIP or SIPS URI (five groups: scheme, user, host,
#: port, parameters), which ``_sip_uri`` reads: no password, no headers, a
#: host name, IPv4 address or IPv6 reference. Every class is ASCII without
#: whitespace (so ``strip`` would change nothing) and without ``@`` (so an
#: ``@`` is the one ending the user, where ``_parse_uri_general`` splits),
#: ``?`` (no headers) or ``<``, ``>`` and quotes (so in a name-addr the
#: first ``>`` ends the URI, as there). The host and port classes hold no
#: ``;``, so the parameters start at the first ``;`` after the user. The user
#: and host are possessive (``++``): neither class holds what follows it, so
#: backtracking could find no other match. The scheme is spelled out letter
#: by letter: IGNORECASE would also take ``ſ`` and ``İ`` for ``s`` and ``i``.
_SIP_URI_PATTERN = (
    r"([sS][iI][pP][sS]?):"
    rf"(?:({alnum_class(_USER_MARKS)}++)@)?"
    rf"({alnum_class(HOST_MARKS)}++|\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\])"
    r"(?::([0-9]{1,5}))?"
    r"(?:;([!#-;=A-~]*+))?"
)
_SIMPLE_SIP_URI = re.compile(_SIP_URI_PATTERN)
#: the user class of ``_SIP_URI_PATTERN``
_USER_CHARS = ALPHANUM + _USER_MARKS
#: every spelling of the schemes of ``_SIP_URI_PATTERN``, to its lower-case one
_SIP_SCHEMES = {
    "".join(letters): scheme
    for scheme in ("sip", "sips")
    for letters in product(*zip(scheme, scheme.upper(), strict=True))
}
#: ``(host, port, params)`` of a URI of the common form by its host part,
#: the text after the ``@`` ending the user (after the scheme without a
#: user): every user of a domain, or of a client's address, shares it. The
#: ``params`` are shared too: a parsed URI is read-only.
_HOST_PART_CACHE: dict[str, tuple[str, int | None, Mapping[str, str | None]]] = {}
#: ``"display" <uri>`` and its header parameters (three groups: the quoted
#: display name, the URI's text, the parameters after the ``;``). The display
#: name holds no quote or backslash, so its first quote after the opening
#: one closes it, where ``_quoted_end`` finds the end, and only spaces and
#: tabs stand between it and the ``<``: the general path finds that ``<``
#: and the first ``>`` after it. Nothing may stand between ``>`` and ``;``;
#: the parameters are printable ASCII without quotes or ``<``, so
#: ``parse_params`` reads them as it reads the general path's text, which
#: only adds an empty piece before the ``;``.
_DISPLAY_NAME_ADDR = re.compile(r'("[^"\\]*+")[ \t]*+<([^>]*+)>(?:;([!#-;=-~]*+))?')


def _sip_uri(text: str) -> SipUri | None:
    """The ``SipUri`` of a URI of the common form (``_SIMPLE_SIP_URI``), or None.

    None for any other text, and for a port out of range, whose error is
    left to ``_parse_uri_general``. The pattern leaves host and brackets as
    ``check_host`` wants them. It is matched only for a host part not seen
    before: the pattern is a scheme, an optional user ending at the first
    ``@``, then the host part's own pattern, so a host part matched once
    matches after any scheme and user, and only those are left to check.
    For an INVITE whose URIs are new to the caches this saves 31% of the
    instructions of parsing it and reading its views (``loadtest/count_shortcuts.py``)
    (0.2% when they are cached).
    """
    written, _, rest = text.partition(":")
    scheme = _SIP_SCHEMES.get(written)
    if scheme is None:
        return None
    user: str | None
    user, at, host_part = rest.partition("@")
    if not at:
        user, host_part = None, rest
    known = _HOST_PART_CACHE.get(host_part)
    if known is None:
        m = _SIMPLE_SIP_URI.fullmatch(text)
        if m is None:
            return None
        host, digits, ptext = m.group(3, 4, 5)
        port = None
        if digits is not None:
            port = int(digits)
            if not 0 < port < 65536:
                return None
        known = (host, port, read_only(parse_params(ptext)) if ptext else NO_PARAMS)
        if len(_HOST_PART_CACHE) >= _CACHE_MAX:
            _HOST_PART_CACHE.clear()
        _HOST_PART_CACHE[host_part] = known
    elif (
        user is not None
        and not (user.isalnum() and user.isascii())
        and (not user or user.strip(_USER_CHARS))
    ):
        # Letters and digits alone (most users) need no look at the other user characters.
        return None
    host, port, params = known
    return SipUri(scheme, user, None, host, port, params, "")


def _parse_uri(text: str) -> SipUri:
    """Parse a SIP, SIPS or tel URI; raise ``SipParseError`` when malformed.

    An unknown scheme raises ``SipError`` 416 through ``UnsupportedScheme``.
    The result or error is that of ``_parse_uri_general``; URIs of the
    common form (``_SIMPLE_SIP_URI``) take a shorter way to the same ``SipUri``.
    """
    uri = _sip_uri(text)
    return uri if uri is not None else _parse_uri_general(text)


def _parse_uri_general(text: str) -> SipUri:
    """Parse any URI as ``_parse_uri`` does, without its shortcut for the common form."""
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or not scheme or not rest:
        raise SipParseError(f"bad URI {text[:60]!r}")
    if scheme not in SCHEMES:
        if not (scheme[0].isascii() and scheme[0].isalpha()) or scheme.strip(_SCHEME_CHARS):
            raise SipParseError(f"bad URI {text[:60]!r}")
        raise UnsupportedScheme(scheme)
    if " " in rest or "\t" in rest:
        raise SipParseError("whitespace in URI")
    if scheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise SipParseError("empty tel URI")
        if number.strip(_TEL_CHARS):
            raise SipParseError(f"bad tel number {number[:40]!r}")
        return SipUri("tel", user=number, params=read_only(parse_params(ptext)))
    user = password = None
    # user and password cannot hold an unescaped "@" but may hold ";" and
    # "?" (RFC 3261 §25.1 user-unreserved), so the first "@" ends them.
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, sep, pw = userinfo.partition(":")
        if sep:
            password = pw
        if not user:
            raise SipParseError("empty user part")
    rest, _, headers = rest.partition("?")
    hostport, _, ptext = rest.partition(";")
    host, port = split_hostport(hostport)
    return SipUri(scheme, user, password, host, port, read_only(parse_params(ptext)), headers)


class UnsupportedScheme(SipParseError):
    """A URI scheme the node does not handle (``416``)."""

    def __init__(self, scheme: str):
        super().__init__(f"unsupported URI scheme {scheme[:40]!r}")
        self.status = 416
        self.reason = "Unsupported URI Scheme"
        self.scheme = scheme
        self.args = (f"416 unsupported URI scheme {scheme[:40]!r}",)


#: a character that may not appear in an unquoted display name (RFC 3261 §25.1 separators)
_SEPARATOR = re.compile(SEPARATOR_CLASS)


class NameAddr(NamedTuple):
    """A ``name-addr`` or ``addr-spec`` with its header parameters (From, To, Contact, Route).

    Immutable like ``SipUri``, and for the same reason.
    """

    uri: SipUri
    display: str | None = None
    params: Mapping[str, str | None] = NO_PARAMS

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter, if any."""
        return self.params.get("tag")

    @property
    def name(self) -> str | None:
        """The display name with its quotes and escapes resolved, or None."""
        return None if self.display is None else unquote_string(self.display)

    @property
    def q(self) -> float | None:
        """The Contact ``q`` parameter (0 to 1, three decimals at most), or None."""
        v = self.params.get("q")
        if v is None:
            return None
        whole, _, frac = v.partition(".")
        if (
            whole not in ("0", "1")
            or len(frac) > 3
            or (frac and not only(frac, DIGITS))
            or (whole == "1" and frac.strip("0"))
        ):
            raise SipParseError(f"bad Contact q value {v[:20]!r}")
        return float(v)

    @property
    def expires(self) -> int | None:
        """The Contact ``expires`` parameter in seconds (at most 2**32-1), or None."""
        v = self.params.get("expires")
        return None if v is None else parse_number(v, "Contact expires", 2**32 - 1)

    @property
    def instance(self) -> str | None:
        """The ``+sip.instance`` URN (RFC 5626) without quotes and ``<>``, or None."""
        v = self.params.get("+sip.instance")
        if v is None:
            return None
        v = unquote_string(v)
        if v.startswith("<") and v.endswith(">"):
            v = v[1:-1]
        return v

    @property
    def reg_id(self) -> int | None:
        """The ``reg-id`` parameter (RFC 5626: 1 to 2**31-1), or None."""
        v = self.params.get("reg-id")
        if v is None:
            return None
        n = parse_number(v, "reg-id", 2**31 - 1)
        if n == 0:
            raise SipParseError("reg-id out of range")
        return n

    def __str__(self) -> str:
        name = f"{self.display} " if self.display else ""
        return f"{name}<{self.uri}>{format_params(self.params)}"


def parse_name_addr(text: str) -> "NameAddr":
    """Parse a name-addr or addr-spec with parameters (cached by text; read-only result).

    The result equals ``_parse_name_addr(text)``; its ``uri`` may be shared
    with others, as ``parse_uri`` results are (a To and a From naming the
    same URI share it).
    """
    found = _ADDR_CACHE.get(text)
    if found is None:
        found = _parse_name_addr(text)
        # _remember, written out: a name-addr is parsed three times per REGISTER.
        if len(_ADDR_CACHE) >= _CACHE_MAX:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[text] = found
    return found


def _parse_name_addr(text: str) -> NameAddr:
    """Parse ``["Display"] <uri>;params`` or ``uri;params`` (RFC 3261 §20.10).

    A URI of a scheme other than sip, sips or tel is a ``400`` here: ``416``
    is only for the Request-URI (§8.2.2.1). The result or error is that of
    ``_parse_name_addr_general``; a ``<uri>`` of the common form, with or
    without a quoted display name, takes a shorter way to the same ``NameAddr``:
    4.6% of the instructions of parsing an INVITE and reading its views
    (7.2% when its URIs are new to the caches) (``loadtest/count_shortcuts.py``).
    """
    head, gt, after = text.partition(">")
    if gt and head[:1] == "<" and (not after or after[0] == ";"):
        # What the general path finds for a text starting with "<": no
        # display name, the URI up to the first ">", and parse_params of
        # what follows (less its ";", and with the trailing whitespace the
        # general path strips first: the pieces are the same, stripped).
        uri = _common_uri(head[1:])
        if uri is not None:
            if not after:
                return NameAddr(uri, None, NO_PARAMS)
            tag = after[5:]
            if after[:5] == ";tag=" and tag.isalnum() and tag.isascii():
                # A From's usual parameters: one tag, of letters and digits.
                return NameAddr(uri, None, Params({"tag": tag}))
            return NameAddr(uri, None, read_only(parse_params(after[1:])))
    elif head[:1] == '"':
        m = _DISPLAY_NAME_ADDR.fullmatch(text)
        if m is not None:
            display, uri_text, ptext = m.groups()
            uri = _common_uri(uri_text)
            if uri is not None:
                params = read_only(parse_params(ptext)) if ptext else NO_PARAMS
                return NameAddr(uri, display, params)
    return _parse_name_addr_general(text)


def _common_uri(text: str) -> SipUri | None:
    """``parse_uri(text)`` as the general path calls it, for a URI cached or of the common form.

    None for any other text: the general path then parses it.
    """
    uri = _URI_CACHE.get(text)
    if uri is None:
        uri = _sip_uri(text)
        if uri is not None:
            # _remember, written out: this runs for each From, To and Contact.
            if len(_URI_CACHE) >= _CACHE_MAX:
                _URI_CACHE.clear()
            _URI_CACHE[text] = uri
    return uri


def _parse_name_addr_general(text: str) -> NameAddr:
    """Parse any name-addr or addr-spec as ``_parse_name_addr`` does, without its shortcut."""
    text = text.strip()
    if not text:
        raise SipParseError("empty address")
    display: str | None
    try:
        if text[0] == '"':
            e = _quoted_end(text, 0)
            if e < 0:
                raise SipParseError("unterminated quoted string")
            lt = text.find("<", e + 1)
            if lt < 0 or text[e + 1 : lt].strip():
                raise SipParseError("bad display name")
            display = text[: e + 1]
        else:
            lt = text.find("<")
            if lt < 0:
                # addr-spec form: parameters after the URI belong to the header (§20).
                head, _, ptext = text.partition(";")
                if "?" in head:
                    raise SipParseError("a URI with headers must be enclosed in <>")
                return NameAddr(parse_uri(head), None, read_only(parse_params(ptext)))
            display = text[:lt].rstrip() or None
            if display and _SEPARATOR.search(display):
                raise SipParseError("display name with separators must be quoted")
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError("unterminated <URI>")
        uri = parse_uri(text[lt + 1 : gt])
        after = text[gt + 1 :].lstrip()
        if after and after[0] != ";":
            raise SipParseError("junk after <URI>")
        return NameAddr(uri, display, read_only(parse_params(after)))
    except UnsupportedScheme as err:
        raise SipParseError(f"unsupported URI scheme {err.scheme[:40]!r}") from None


def _quoted_end(text: str, start: int) -> int:
    """Index of the quote closing the quoted-string opened at ``start``, or -1."""
    i = start + 1
    while True:
        q = text.find('"', i)
        if q < 0:
            return -1
        b = text.find("\\", i, q)
        if b < 0:
            return q
        i = b + 2
