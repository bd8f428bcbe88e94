"""SIP requests and responses: parsing, validation and serialisation (RFC 3261 §7, §20, §25).

Parsing is lazy: ``parse_message`` only splits the start line and the
header fields; structured values (Via, CSeq, Contact...) are parsed when
first asked for and cached until a header changes. Headers keep their
order and their raw text, so a proxy forwards what it did not touch
byte for byte; the fields are indexed by key as they are read
(``Headers``), so that looking one up does not scan them.
"""

from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any

from .errors import SipError, SipParseError
from .grammar import DIGITS, is_token
from .headers import CANONICAL, LIST_HEADERS, Via, parse_cseq, parse_via, split_list
from .uri import (
    NameAddr,
    SipUri,
    UnsupportedScheme,
    parse_name_addr,
    parse_number,
    parse_uri,
)

REQUIRED = ("via", "from", "to", "call-id", "cseq")
#: headers a request may carry once only (RFC 4475 §3.3.8); Content-Length is checked when parsing
SINGLE = ("from", "to", "call-id", "cseq", "max-forwards")
_REQUIRED = frozenset(REQUIRED)  # for one superset test in the common case
#: the methods of RFC 3261 and its extensions: the usual request line's, the traffic counters' kinds
METHODS = frozenset(
    (
        "REGISTER",
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "MESSAGE",
        "INFO",
        "PRACK",
        "UPDATE",
        "REFER",
    )
)
#: header name as written (canonical, lower-case or compact) -> (lookup key, canonical spelling)
_NAMES = {low: (canon.lower(), canon) for low, canon in CANONICAL.items()}
_NAMES.update({canon: (canon.lower(), canon) for canon in CANONICAL.values()})

REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


#: one header field: ``[key, name, value]``
Field = list[str]


class Headers(list[Field]):
    """The header fields of a parsed message, ``[key, name, value]`` lists, with an index by key.

    ``first`` maps each key to its first field and ``repeated`` holds the
    keys of more than one field. The parser builds them as it reads the
    fields, ``reindex`` when they are next needed after a change: every
    change to the list itself (insert, delete, replace, sort...) drops them,
    so code may edit the list directly. A field's value may be changed in
    place (``field[2] = ...``): the index holds the fields.
    """

    __slots__ = ("first", "repeated")
    first: dict[str, Field] | None
    repeated: set[str] | frozenset[str]

    def __getattr__(self, name: str) -> None:
        # Only for a slot never set: a list made into Headers and not indexed yet.
        if name == "first" or name == "repeated":
            return None
        raise AttributeError(f"'Headers' object has no attribute {name!r}")

    def reindex(self) -> dict[str, Field]:
        """Build ``first`` and ``repeated`` from the fields; return ``first``."""
        first: dict[str, Field] = {}
        repeated = set()
        for h in self:
            key = h[0]
            if key in first:
                repeated.add(key)
            else:
                first[key] = h
        self.first = first
        self.repeated = repeated
        return first


#: ``repeated`` when no key repeats
_NO_KEYS: frozenset[str] = frozenset()


def _dropping_index(name: str) -> Callable[..., Any]:
    """``list``'s method ``name``, made to drop the ``Headers`` index first."""
    method = getattr(list, name)

    def change(self: Headers, *args: Any, **kwargs: Any) -> Any:
        # ``repeated`` is read only after ``first``, which reindexes when None.
        self.first = None
        return method(self, *args, **kwargs)

    change.__name__ = change.__qualname__ = name
    change.__doc__ = method.__doc__
    return change


for _name in (
    "__setitem__",
    "__delitem__",
    "__iadd__",
    "__imul__",
    "append",
    "extend",
    "insert",
    "pop",
    "remove",
    "clear",
    "sort",
    "reverse",
):
    setattr(Headers, _name, _dropping_index(_name))
del _name


#: what ``Message._single`` gives when the fields must be scanned
_SCAN = object()


class Message:
    """Common part of requests and responses.

    ``headers`` is a list of ``[key, name, value]`` where ``key`` is the
    lower-case canonical name used for lookups and ``name`` the spelling
    written on the wire; a parsed message's is a ``Headers``, indexed by key.
    """

    __slots__ = ("headers", "body", "_cache")
    #: the request or status line, which ``Request`` and ``Response`` write
    start_line: Callable[[], str]

    def __init__(self, headers: list[Field] | None = None, body: bytes = b""):
        self.headers = headers if headers is not None else []
        self.body = body
        self._cache: dict[str, Any] = {}

    # -- raw header access -------------------------------------------------
    # A parsed message's fields are ``Headers``, found through their index;
    # fields given as a plain list are scanned.
    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return self._get(name.lower())

    def _get(self, key: str) -> str | None:
        """``get`` for a lower-case ``key``."""
        headers = self.headers
        if type(headers) is Headers:
            first = headers.first
            if first is None:
                first = headers.reindex()
            f = first.get(key)
            return None if f is None else f[2]
        for h in headers:
            if h[0] == key:
                return h[2]
        return None

    def _single(self, key: str) -> Any:
        """The one field of lower-case ``key`` (None when there is none), or
        ``_SCAN`` when the fields must be scanned: ``key`` is repeated, or
        the fields are a plain list, not indexed ``Headers``."""
        headers = self.headers
        if type(headers) is Headers:
            first = headers.first
            if first is None:
                first = headers.reindex()
            if key not in headers.repeated:
                return first.get(key)
        return _SCAN

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, with comma-separated lists split."""
        key = name.lower()
        h = self._single(key)
        if h is not _SCAN:
            if h is None:
                return []
            value = h[2]
            if key not in LIST_HEADERS:
                return [value]
            if "," in value:
                return [v for v in split_list(value) if v]
            # split_list's answer for a single value, without the calls.
            value = value.strip()
            return [value] if value else []
        out: list[str] = []
        split = key in LIST_HEADERS
        for h in self.headers:
            if h[0] == key:
                if split:
                    out.extend(v for v in split_list(h[2]) if v)
                else:
                    out.append(h[2])
        return out

    def raw_values(self, name: str) -> list[str]:
        """Every header line's value for ``name``, unsplit."""
        key = name.lower()
        h = self._single(key)
        if h is not _SCAN:
            return [] if h is None else [h[2]]
        return [h[2] for h in self.headers if h[0] == key]

    def set_top_via(self, text: str, parsed: Via) -> None:
        """Write ``text`` over the topmost Via value; ``parsed`` is its parsed view.

        Whoever writes a Via holds it parsed already, so the view is kept and
        nobody parses back what was written; the list of every Via is dropped.
        """
        for h in self.headers:
            if h[0] == "via":
                v = h[2]
                h[2] = ", ".join([text, *split_list(v)[1:]]) if "," in v else text
                break
        cache = self._cache
        cache.pop("vias", None)
        cache["top_via"] = parsed

    def _invalidate(self, key: str) -> None:
        """Forget the parsed views that depend on header ``key``."""
        for c in _VIEWS.get(key, ()):
            self._cache.pop(c, None)

    def add(self, name: str, value: str) -> None:
        """Append a header field."""
        key = _key(name)
        self._invalidate(key)
        self.headers.append([key, _display(name), value])

    def prepend(self, name: str, value: str) -> None:
        """Insert a header field before any other of the same name (or at the top)."""
        key = _key(name)
        self._invalidate(key)
        for i, h in enumerate(self.headers):
            if h[0] == key:
                self.headers.insert(i, [key, _display(name), value])
                return
        self.headers.insert(0, [key, _display(name), value])

    def set(self, name: str, value: str) -> None:
        """Replace every field ``name`` with one holding ``value``."""
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        """Drop every field ``name``."""
        key = _key(name)
        self._invalidate(key)
        self.headers = Headers([h for h in self.headers if h[0] != key])

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first value of a list header (e.g. the top Via or Route)."""
        key = _key(name)
        for i, h in enumerate(self.headers):
            if h[0] == key:
                self._invalidate(key)
                values = split_list(h[2])
                if len(values) == 1:
                    del self.headers[i]
                else:
                    h[2] = ", ".join(values[1:])
                return values[0]
        return None

    # -- structured, cached views -------------------------------------------
    @property
    def call_id(self) -> str:
        """The Call-ID value ('' when missing)."""
        return (self._get("call-id") or "").strip()

    @property
    def cseq(self) -> tuple[int, str]:
        """``(number, method)`` from CSeq."""
        c = self._cache.get("cseq")
        if c is None:
            c = self._cache["cseq"] = parse_cseq(self._get("cseq") or "")
        return c

    @property
    def vias(self) -> list[Via]:
        """Every Via, topmost first."""
        c = self._cache.get("vias")
        if c is None:
            c = self._cache["vias"] = [parse_via(v) for v in self.get_all("via")]
        return c

    @property
    def top_via(self) -> Via:
        """The topmost Via (only it is parsed, unless every Via was asked for)."""
        c = self._cache.get("top_via")
        if c is None:
            vias = self._cache.get("vias")
            if vias is not None:
                if not vias:
                    raise SipParseError("missing Via")
                c = vias[0]
            else:
                first = self._get("via")
                if first is None:
                    raise SipParseError("missing Via")
                c = parse_via(split_list(first)[0] if "," in first else first)
            self._cache["top_via"] = c
        return c

    @property
    def from_(self) -> NameAddr:
        """The From address."""
        c = self._cache.get("from")
        if c is None:
            c = self._cache["from"] = self._address_header("from", "From")
        return c

    @property
    def to(self) -> NameAddr:
        """The To address."""
        c = self._cache.get("to")
        if c is None:
            c = self._cache["to"] = self._address_header("to", "To")
        return c

    @property
    def contacts(self) -> list[NameAddr] | str:
        """Contact addresses, or the string ``"*"`` for a wildcard Contact."""
        c = self._cache.get("contacts")
        if c is None:
            values = self.get_all("contact")
            if "*" in values:
                if len(values) != 1:
                    raise SipParseError("wildcard Contact mixed with others")
                c = "*"
            else:
                c = [_address(v, "Contact") for v in values]
            self._cache["contacts"] = c
        return c

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards, or None when absent."""
        v = self._get("max-forwards")
        return None if v is None else parse_number(v.strip(), "Max-Forwards", 255)

    @property
    def expires(self) -> int | None:
        """The Expires header, or None."""
        v = self._get("expires")
        return None if v is None else parse_number(v.strip(), "Expires", 2**32 - 1)

    def _address_header(self, key: str, name: str) -> NameAddr:
        """Header ``key`` (From or To) parsed; a 400 naming ``name`` when missing or malformed."""
        value = self._get(key)
        if value is None:
            raise SipParseError(f"missing {name} header")
        return _address(value, name)

    def _required(self, key: str) -> str:
        v = self._get(key)
        if v is None:
            raise SipParseError(f"missing {CANONICAL.get(key, key)} header")
        return v

    # -- serialisation -------------------------------------------------------
    def encode(self) -> bytes:
        """Serialise with a Content-Length that matches the body."""
        lines = [self.start_line()]
        for key, name, value in self.headers:
            if key != "content-length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body

    __bytes__ = encode


class Request(Message):
    """A SIP request."""

    __slots__ = ("method", "_uri")

    def __init__(
        self, method: str, uri: str, headers: list[Field] | None = None, body: bytes = b""
    ):
        # Message.__init__ inlined: a request is built for every datagram.
        self.headers = headers if headers is not None else []
        self.body = body
        self._cache = {}
        self.method = method
        self._uri = uri

    @property
    def uri(self) -> str:
        """The Request-URI as text; setting it drops the parsed ``ruri``."""
        return self._uri

    @uri.setter
    def uri(self, value: str) -> None:
        self._uri = value
        self._cache.pop("ruri", None)

    def start_line(self) -> str:
        """``METHOD uri SIP/2.0``."""
        return f"{self.method} {self._uri} SIP/2.0"

    @property
    def ruri(self) -> SipUri:
        """The parsed Request-URI (``416`` for an unknown scheme, else ``400``)."""
        c = self._cache.get("ruri")
        if c is None:
            try:
                c = self._cache["ruri"] = parse_uri(self._uri)
            except UnsupportedScheme:
                raise
            except SipError as err:
                raise SipParseError(f"bad Request-URI: {err.reason}") from None
        return c

    def validate(self) -> None:
        """Check what every request must satisfy (§8.2, §16.3); raise ``SipError``.

        The error's ``request`` is set, for ``error_response(err.request, err)``.
        """
        try:
            self._validate()
        except SipError as err:
            if err.request is None:
                err.request = self
            raise

    def _validate(self) -> None:
        headers = self.headers
        present: dict[str, Any]
        if type(headers) is Headers:
            first = headers.first
            present = first if first is not None else headers.reindex()
            repeated = headers.repeated
        else:
            keys = [h[0] for h in headers]
            present = dict.fromkeys(keys)
            repeated = (
                {key for key in keys if keys.count(key) > 1}
                if len(present) != len(keys)
                else _NO_KEYS
            )
        if not present.keys() >= _REQUIRED:
            for key in REQUIRED:
                if key not in present:
                    raise SipParseError(f"missing {CANONICAL[key]} header")
        if repeated:  # some header is repeated: is it a single one?
            for key in SINGLE:
                if key in repeated:
                    raise SipParseError(f"more than one {CANONICAL[key]} header")
        if not self.call_id:
            raise SipParseError("empty Call-ID")
        _, method = self.cseq
        if method != self.method:
            raise SipParseError("CSeq method does not match the request method")
        # Each property parses its header and raises when it is malformed.
        self.max_forwards  # noqa: B018
        self.top_via  # noqa: B018
        self.from_  # noqa: B018
        self.to  # noqa: B018
        if self.ruri.headers:
            raise SipParseError("headers in the Request-URI")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("status", "reason")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: list[Field] | None = None,
        body: bytes = b"",
    ):
        # Message.__init__ inlined: a response is built for every request answered.
        self.headers = headers if headers is not None else []
        self.body = body
        self._cache = {}
        self.status = status
        self.reason = reason if reason is not None else REASONS.get(status, "Unknown")

    def start_line(self) -> str:
        """``SIP/2.0 code reason``."""
        return f"SIP/2.0 {self.status} {self.reason}"

    def validate(self) -> None:
        """Check a response enough to route it: Via, CSeq, Call-ID, From, To."""
        for key in REQUIRED:
            self._required(key)
        self.cseq  # noqa: B018 - parsed to raise when malformed
        self.top_via  # noqa: B018

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


#: header key -> cached views built from it
_VIEWS = {
    "via": ("vias", "top_via"),
    "from": ("from",),
    "to": ("to",),
    "contact": ("contacts",),
    "cseq": ("cseq",),
}


def _address(value: str, name: str) -> NameAddr:
    try:
        return parse_name_addr(value)
    except SipError as err:
        raise SipParseError(f"bad {name} header: {err.reason}") from None


def _key(name: str) -> str:
    c = CANONICAL.get(name.lower())
    return c.lower() if c else name.lower()


def _display(name: str) -> str:
    return CANONICAL.get(name.lower(), name)


def parse_message(data: bytes, stream: bool = False) -> Request | Response:
    """Parse one message from ``data``.

    Over UDP (``stream=False``) a missing Content-Length means the rest of
    the datagram is the body; extra bytes after Content-Length are dropped
    (§18.3). Raises ``SipError`` (never anything else) for anything
    malformed; a request's error carries in ``request`` the request with
    every header line that could be read, for ``error_response``.
    """
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # CRLFs before the start line (§7.5)
    end = data.find(b"\r\n\r\n")
    complete = True
    if end >= 0:
        sep = 4
    elif data.endswith(b"\r\n"):
        end, sep = len(data) - 2, 2
    else:
        end, sep, complete = len(data), 0, False
    text = data[:end].decode("utf-8", "surrogateescape")
    if not text:
        raise SipParseError("empty message")
    lines = text.split("\r\n")
    # A CR, LF or NUL left after the split is bare; lines holding one are skipped.
    # Joining the lines and searching is quicker than counting CRs and LFs in ``text``.
    joined = "".join(lines)
    dirty = "\r" in joined or "\n" in joined or "\x00" in joined
    # The fields are read first: a start line error may carry a request to answer.
    headers = None if dirty else _plain_fields(lines)
    problem: SipError | None = None
    if headers is None:
        headers, problem = _parse_headers(lines, dirty)
    msg = _start_line(lines[0], headers)
    if problem is None:
        if dirty and _has_ctl(lines[0]):
            problem = SipParseError("control character in the start line")
        elif not complete:
            problem = SipParseError("no empty line after the header section")
        else:
            try:
                _set_body(msg, data[end + sep :], stream)
            except SipError as err:
                problem = err
    if problem is not None:
        problem.request = msg if isinstance(msg, Request) else None
        raise problem
    return msg


def _has_ctl(line: str) -> bool:
    return "\r" in line or "\n" in line or "\x00" in line


#: the header names (as keys) whose quoted strings may hold a NUL
_NUL_QUOTABLE = frozenset(("from", "f", "to", "t"))


def _bare_ctl(line: str) -> bool:
    """Whether a header line holds a bare CR or LF, or a NUL that may not be there.

    A From or To display name may quote a NUL (RFC 3261 §25.1 quoted-pair,
    RFC 4475 §3.1.1.2), which the address parser reads; nothing keeps those
    names. A NUL anywhere else is refused: a quoted string of another header
    may be kept (a Contact's ``+sip.instance`` is a binding's key, a Path or
    User-Agent is stored with it), and a store may refuse a NUL.
    """
    if "\r" in line or "\n" in line:
        return True
    if "\x00" not in line:
        return False
    if line.partition(":")[0].strip().lower() not in _NUL_QUOTABLE:
        return True
    quoted = False
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == "\\" and quoted:
            i += 2  # a quoted-pair, whatever it quotes
            continue
        if c == '"':
            quoted = not quoted
        elif c == "\x00":
            return True
        i += 1
    return False


def _parse_headers(lines: list[str], dirty: bool) -> tuple[Headers, SipParseError | None]:
    """Every readable header field of ``lines`` (after the start line), and the first problem.

    A bad line is skipped rather than ending the parse, so that the error
    response to a malformed request still copies its Via, From, To,
    Call-ID and CSeq. ``dirty`` says some line holds a CR, LF or NUL.
    ``_plain_fields`` reads the usual lines the same way, quicker.
    """
    fields: list[Field] = []
    problem = None
    last = None
    names = _NAMES
    append = fields.append
    for line in islice(lines, 1, None):
        if not line or (dirty and _bare_ctl(line)):
            problem = problem or SipParseError("control character in a header line")
            last = None
            continue
        if line[0] in " \t":
            if last is None:
                problem = problem or SipParseError("folded line without a header")
                continue
            v = line.strip()
            if v:
                last[2] = f"{last[2]} {v}" if last[2] else v
            continue
        raw, colon, value = line.partition(":")
        if not colon or not raw:
            problem = problem or SipParseError("header line without a colon")
            last = None
            continue
        # The usual name, written as known and with no space before the colon,
        # is found at once; anything else is stripped and lower-cased first.
        known = names.get(raw)
        if known is None:
            raw = raw.rstrip()
            known = names.get(raw) or names.get(raw.lower())
            if known is None:
                if not is_token(raw):
                    problem = problem or SipParseError(f"bad header name {raw[:40]!r}")
                    last = None
                    continue
                known = (raw.lower(), raw)
        last = [known[0], known[1], value.strip()]
        append(last)
    return Headers(fields), problem


def _plain_fields(lines: list[str]) -> Headers | None:
    """The indexed fields of header lines that all read ``Name: value``, or None.

    This saves 11% of the instructions of parsing an INVITE and reading its
    views (``loadtest/count_shortcuts.py``).

    None when some line is anything else (folded, without ``": "``, with a
    name that is not a token...): ``_parse_headers`` must read the lines
    its own way. ``lines`` hold no CR, LF or NUL. A name that is a token
    holds no colon, so the first ``": "`` of its line is its first colon
    and the value is what ``_parse_headers`` strips after that colon.
    """
    get = _NAMES.get
    fields: list[Field] = []
    append = fields.append
    first: dict[str, Field] = {}
    setdefault = first.setdefault
    for line in islice(lines, 1, None):
        raw, sep, value = line.partition(": ")
        known = get(raw)
        if known is None or not sep:
            if not sep or not is_token(raw):
                return None
            # What _parse_headers finds for a name it does not know as written.
            low = raw.lower()
            known = get(low) or (low, raw)
        key, name = known
        h = [key, name, value.strip()]
        append(h)
        setdefault(key, h)
    headers = Headers(fields)
    # The index is kept unless some key repeats: reindex then finds which.
    if len(first) == len(fields):
        headers.first = first
        headers.repeated = _NO_KEYS
    return headers


def _set_body(msg: Message, body: bytes, stream: bool) -> None:
    headers = msg.headers
    assert isinstance(headers, Headers)  # msg is what the parser made
    first = headers.first
    if first is None:
        first = headers.reindex()
    h = first.get("content-length")
    if h is None:
        msg.body = b"" if stream else body
        return
    v = h[2]
    # "0" is what nearly every request without a body says.
    clen = 0 if v == "0" else parse_number(v, "Content-Length", 2**32 - 1)
    if "content-length" in headers.repeated:
        # Only now: a malformed first value is the error, as reading the fields in order finds.
        raise SipParseError("more than one Content-Length header")
    if len(body) < clen:
        raise SipParseError("body shorter than Content-Length")
    msg.body = body[:clen]


def _start_line(first: str, headers: list[Field]) -> Request | Response:
    """The message the start line ``first`` begins, holding ``headers``; raise ``SipError``.

    The usual request line skips ``_start_line_general``'s checks: 1.2% of the
    instructions of parsing an INVITE and reading its views (``loadtest/count_shortcuts.py``).
    """
    parts = first.split(" ")
    if len(parts) == 3 and parts[0] in METHODS and parts[2] == "SIP/2.0":
        # The usual request line, whose method is a token: _start_line_general's request.
        return Request(parts[0], parts[1], headers)
    return _start_line_general(first, headers)


def _start_line_general(first: str, headers: list[Field]) -> Request | Response:
    """``_start_line`` for any start line."""
    if first.startswith("SIP/"):
        parts = first.split(" ", 2)
        if parts[0] != "SIP/2.0":
            raise SipParseError("unsupported SIP version in response")
        if len(parts) < 2 or len(parts[1]) != 3 or parts[1].strip(DIGITS):
            raise SipParseError("malformed status line")
        status = int(parts[1])
        if not 100 <= status <= 699:
            raise SipParseError("status code out of range")
        return Response(status, parts[2] if len(parts) > 2 else "", headers)
    parts = first.split(" ")
    if len(parts) != 3:
        # Extra whitespace (RFC 4475 §3.1.2.8-10) gets a 400 if method and version are there.
        words = first.split()
        err: SipError = SipParseError("malformed request line")
        if len(words) >= 3 and is_token(words[0]) and words[-1] == "SIP/2.0":
            err = SipParseError(
                "whitespace in Request-URI"
                if len(words) > 3
                else "extra whitespace in request line"
            )
            err.request = Request(words[0], " ".join(words[1:-1]), headers)
        raise err
    method, uri, version = parts
    if not is_token(method):
        raise SipParseError("malformed method")
    req = Request(method, uri, headers)
    if version != "SIP/2.0":
        if not version.upper().startswith("SIP/"):
            raise SipParseError("malformed request line")  # not SIP: drop, never answer
        unsupported = SipError(505, "Version Not Supported")
        unsupported.request = req
        raise unsupported
    return req


def make_response(
    req: Request,
    status: int,
    reason: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    to_tag: str | None = None,
) -> Response:
    """Build a response to ``req`` per §8.2.6: copy Via, From, To, Call-ID, CSeq.

    ``to_tag`` is added to To when it has none and the status is above 100.
    Works from raw header text, so a partly malformed request still gets
    its error response.
    """
    # A field is [key, name, value]: a slice copies it.
    out = [h[:] for h in req.headers if h[0] in _COPIED]
    if to_tag and status > 100:
        first = True
        for h in out:
            if h[0] == "to":
                if not _has_tag(req, h[2], first):
                    h[2] = f"{h[2]};tag={to_tag}"
                first = False
    for name, value in headers:
        # _NAMES holds the usual spellings with the key and display name they get.
        known = _NAMES.get(name) or (_key(name), _display(name))
        out.append([known[0], known[1], value])
    return Response(status, reason, out, body)


#: the header keys a response copies from its request (§8.2.6.2)
_COPIED = frozenset(("via", "from", "to", "call-id", "cseq"))


def _has_tag(req: Request, value: str, first: bool) -> bool:
    """Whether To ``value`` has a tag parameter (not a ``tag`` inside its URI).

    ``first`` says ``value`` is the request's first To, whose parsed form is cached.
    """
    try:
        addr = req.to if first else _address(value, "To")
        return addr.params.get("tag") is not None
    except SipError:
        return ";tag=" in value.replace(" ", "").replace("\t", "").lower()


def error_response(req: Request, err: SipError, to_tag: str | None = None) -> Response:
    """The response a request gets for ``err``."""
    return make_response(req, err.status, err.reason, err.headers, to_tag=to_tag)


def response_bytes(
    req: Request,
    status: int,
    reason: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    to_tag: str | None = None,
) -> bytes:
    """``make_response(req, status, reason, headers, body, to_tag).encode()``, built directly.

    For a response that is only sent: the wire lines are written straight
    into one list, with no ``Response`` nor header lists on the way. The
    bytes are the same for every request, malformed ones included.
    """
    if reason is None:
        reason = REASONS.get(status, "Unknown")
    lines = [f"SIP/2.0 {status} {reason}"]
    append = lines.append
    copied = _COPIED
    tag = to_tag if status > 100 else None
    first = True
    for key, name, value in req.headers:
        if key in copied:
            # The To tag rule of make_response, asked in the same order (``req.to`` is cached).
            if key == "to" and tag:
                if not _has_tag(req, value, first):
                    value = f"{value};tag={tag}"
                first = False
            append(f"{name}: {value}")
    names = _NAMES
    for name, value in headers:
        known = names.get(name) or (_key(name), _display(name))
        # encode() writes its own Content-Length in place of any given one.
        if known[0] != "content-length":
            append(f"{known[1]}: {value}")
    append(f"Content-Length: {len(body)}\r\n\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body


def error_response_bytes(req: Request, err: SipError, to_tag: str | None = None) -> bytes:
    """``error_response(req, err, to_tag).encode()``, built by ``response_bytes``."""
    return response_bytes(req, err.status, err.reason, err.headers, to_tag=to_tag)


class StreamFramer:
    """Cut a byte stream (TCP) into messages by Content-Length (§18.3).

    ``feed`` returns complete messages as bytes and ``PING`` for each
    double-CRLF keep-alive (RFC 5626 §3.5.1); CRLFs before a start line are
    otherwise skipped. Raises ``SipParseError`` when the stream cannot be
    framed (the connection should then be closed): a header section over
    ``max_header`` bytes, a body over ``max_body``, a malformed or repeated
    Content-Length.
    """

    PING = b"\r\n\r\n"

    def __init__(self, max_header: int = 65536, max_body: int = 1 << 20):
        self.buf = bytearray()
        self.max_header = max_header
        self.max_body = max_body
        self._scan = 0  # where to resume looking for the end of the headers

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every message now complete."""
        buf = self.buf
        buf += data
        out = []
        while buf:
            if buf[0] in b"\r\n":
                if buf.startswith(b"\r\n\r\n"):
                    out.append(self.PING)
                    del buf[:4]
                    continue
                if len(buf) < 4 and b"\r\n\r\n".startswith(buf):
                    break  # the start of a keep-alive or of a message's CRLF
                del buf[: 2 if buf.startswith(b"\r\n") else 1]
                self._scan = 0
                continue
            end = buf.find(b"\r\n\r\n", self._scan)
            if end < 0:
                if len(buf) > self.max_header:
                    raise SipParseError("header section too large")
                self._scan = max(0, len(buf) - 3)
                break
            if end > self.max_header:
                raise SipParseError("header section too large")
            self._scan = end
            clen = _content_length(bytes(buf[:end]))
            if clen > self.max_body:
                raise SipParseError("body too large")
            total = end + 4 + clen
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._scan = 0
        return out


def _content_length(head: bytes) -> int:
    """The Content-Length of a header section (0 when absent), folded lines joined."""
    clen = None
    lines = head.split(b"\r\n")
    for i in range(1, len(lines)):
        line = lines[i]
        if line[:1] in (b" ", b"\t"):
            continue
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            j = i + 1
            while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
                value += b" " + lines[j]
                j += 1
            value = value.strip()
            if clen is not None:
                raise SipParseError("more than one Content-Length header")
            if not value.isdigit():
                raise SipParseError("malformed Content-Length")
            if len(value.lstrip(b"0")) > 10:
                raise SipParseError("Content-Length out of range")
            clen = int(value)
    return clen or 0
