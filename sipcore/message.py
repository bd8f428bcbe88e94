"""SIP requests and responses: parsing, validation and serialisation (RFC 3261 §7, §20, §25).

Parsing is lazy: ``parse_message`` only splits the start line and the
header fields; structured values (Via, CSeq, Contact...) are parsed when
first asked for and cached until a header changes. Headers keep their
order and their raw text, so a proxy forwards what it did not touch
byte for byte.
"""

from itertools import islice

from .errors import SipError, SipParseError
from .headers import (CANONICAL, LIST_HEADERS, Via, parse_cseq, parse_int,
                      parse_via, split_list)
from .uri import NameAddr, SipUri, UnsupportedScheme, parse_name_addr, parse_number, parse_uri

REQUIRED = ("via", "from", "to", "call-id", "cseq")
#: headers a request may carry once only (RFC 4475 §3.3.8); Content-Length is checked when parsing
SINGLE = ("from", "to", "call-id", "cseq", "max-forwards")
_REQUIRED = frozenset(REQUIRED)     # for one superset test in the common case
_TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
#: header name as written (canonical, lower-case or compact) -> (lookup key, canonical spelling)
_NAMES = {low: (canon.lower(), canon) for low, canon in CANONICAL.items()}
_NAMES.update({canon: (canon.lower(), canon) for canon in CANONICAL.values()})

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 301: "Moved Permanently",
    302: "Moved Temporarily", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    407: "Proxy Authentication Required", 408: "Request Timeout",
    413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}


class Message:
    """Common part of requests and responses.

    ``headers`` is a list of ``[key, name, value]`` where ``key`` is the
    lower-case canonical name used for lookups and ``name`` the spelling
    written on the wire.
    """

    __slots__ = ("headers", "body", "_cache")

    def __init__(self, headers: list | None = None, body: bytes = b""):
        self.headers = headers if headers is not None else []
        self.body = body
        self._cache: dict = {}

    # -- raw header access -------------------------------------------------
    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        key = name.lower()
        for h in self.headers:
            if h[0] == key:
                return h[2]
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, with comma-separated lists split."""
        key = name.lower()
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
        return [h[2] for h in self.headers if h[0] == key]

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
        self.headers = [h for h in self.headers if h[0] != key]

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
        return (self.get("call-id") or "").strip()

    @property
    def cseq(self) -> tuple[int, str]:
        """``(number, method)`` from CSeq."""
        c = self._cache.get("cseq")
        if c is None:
            c = self._cache["cseq"] = parse_cseq(self.get("cseq") or "")
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
                first = self.get("via")
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
            c = self._cache["from"] = _address(self._required("from"), "From")
        return c

    @property
    def to(self) -> NameAddr:
        """The To address."""
        c = self._cache.get("to")
        if c is None:
            c = self._cache["to"] = _address(self._required("to"), "To")
        return c

    @property
    def contacts(self) -> list[NameAddr] | str:
        """Contact addresses, or the string ``"*"`` for a wildcard Contact."""
        c = self._cache.get("contacts")
        if c is None:
            values = self.get_all("contact")
            if any(v == "*" for v in values):
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
        v = self.get("max-forwards")
        return None if v is None else parse_int(v, "Max-Forwards", 255)

    @property
    def expires(self) -> int | None:
        """The Expires header, or None."""
        v = self.get("expires")
        return None if v is None else parse_int(v, "Expires")

    def _required(self, key: str) -> str:
        v = self.get(key)
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

    def __init__(self, method: str, uri: str, headers=None, body: bytes = b""):
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
        present = {h[0] for h in headers}
        if not present >= _REQUIRED:
            for key in REQUIRED:
                if key not in present:
                    raise SipParseError(f"missing {CANONICAL[key]} header")
        if len(present) != len(headers):        # some header is repeated: is it a single one?
            keys = [h[0] for h in headers]
            for key in SINGLE:
                if keys.count(key) > 1:
                    raise SipParseError(f"more than one {CANONICAL[key]} header")
        if not self.call_id:
            raise SipParseError("empty Call-ID")
        num, method = self.cseq
        if method != self.method:
            raise SipParseError("CSeq method does not match the request method")
        self.max_forwards  # noqa: B018 - raises when malformed
        self.top_via
        self.from_
        self.to
        if self.ruri.headers:
            raise SipParseError("headers in the Request-URI")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str | None = None, headers=None, body: bytes = b""):
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
        self.cseq
        self.top_via

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


#: header key -> cached views built from it
_VIEWS = {"via": ("vias", "top_via"), "from": ("from",), "to": ("to",),
          "contact": ("contacts",), "cseq": ("cseq",)}


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


def _is_token(text: str) -> bool:
    # Letters and digits alone (REGISTER, INVITE...) need no look at the other token characters.
    return bool(text) and ((text.isascii() and text.isalnum()) or not text.strip(_TOKEN))


def parse_message(data: bytes, stream: bool = False) -> Request | Response:
    """Parse one message from ``data``.

    Over UDP (``stream=False``) a missing Content-Length means the rest of
    the datagram is the body; extra bytes after Content-Length are dropped
    (§18.3). Raises ``SipError`` (never anything else) for anything
    malformed; a request's error carries in ``request`` the request with
    every header line that could be read, for ``error_response``.
    """
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")        # CRLFs before the start line (§7.5)
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
    headers: list = []
    try:
        msg = _start_line(lines[0], headers)
    except SipError as err:
        if err.request is not None:
            _parse_headers(lines, headers, dirty)
        raise
    problem = _parse_headers(lines, headers, dirty)
    if problem is None:
        if dirty and _has_ctl(lines[0]):
            problem = SipParseError("control character in the start line")
        elif not complete:
            problem = SipParseError("no empty line after the header section")
        else:
            try:
                _set_body(msg, data[end + sep:], stream)
            except SipError as err:
                problem = err
    if problem is not None:
        problem.request = msg if isinstance(msg, Request) else None
        raise problem
    return msg


def _has_ctl(line: str) -> bool:
    return "\r" in line or "\n" in line or "\x00" in line


def _parse_headers(lines: list[str], headers: list, dirty: bool) -> SipParseError | None:
    """Append every readable header field to ``headers``; return the first problem.

    A bad line is skipped rather than ending the parse, so that the error
    response to a malformed request still copies its Via, From, To,
    Call-ID and CSeq.
    """
    problem = None
    last = None
    names = _NAMES
    append = headers.append
    for line in islice(lines, 1, None):
        if not line or (dirty and _has_ctl(line)):
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
                if not _is_token(raw):
                    problem = problem or SipParseError(f"bad header name {raw[:40]!r}")
                    last = None
                    continue
                known = (raw.lower(), raw)
        last = [known[0], known[1], value.strip()]
        append(last)
    return problem


def _set_body(msg: Message, body: bytes, stream: bool) -> None:
    clen = None
    for h in msg.headers:
        if h[0] == "content-length":
            if clen is not None:
                raise SipParseError("more than one Content-Length header")
            v = h[2]
            # "0" is what nearly every request without a body says.
            clen = 0 if v == "0" else parse_number(v, "Content-Length", 2 ** 32 - 1)
    if clen is None:
        msg.body = b"" if stream else body
    else:
        if len(body) < clen:
            raise SipParseError("body shorter than Content-Length")
        msg.body = body[:clen]


def _start_line(first: str, headers: list) -> Request | Response:
    if first.startswith("SIP/"):
        parts = first.split(" ", 2)
        if parts[0] != "SIP/2.0":
            raise SipParseError("unsupported SIP version in response")
        if len(parts) < 2 or len(parts[1]) != 3 or parts[1].strip("0123456789"):
            raise SipParseError("malformed status line")
        status = int(parts[1])
        if not 100 <= status <= 699:
            raise SipParseError("status code out of range")
        return Response(status, parts[2] if len(parts) > 2 else "", headers)
    parts = first.split(" ")
    if len(parts) != 3:
        # Extra whitespace (RFC 4475 §3.1.2.8-10) gets a 400 if method and version are there.
        words = first.split()
        err = SipParseError("malformed request line")
        if len(words) >= 3 and _is_token(words[0]) and words[-1] == "SIP/2.0":
            err = SipParseError("whitespace in Request-URI" if len(words) > 3
                                else "extra whitespace in request line")
            err.request = Request(words[0], " ".join(words[1:-1]), headers)
        raise err
    method, uri, version = parts
    if not _is_token(method):
        raise SipParseError("malformed method")
    req = Request(method, uri, headers)
    if version != "SIP/2.0":
        if not version.upper().startswith("SIP/"):
            raise SipParseError("malformed request line")    # not SIP: drop, never answer
        err = SipError(505, "Version Not Supported")
        err.request = req
        raise err
    return req


def make_response(req: Request, status: int, reason: str | None = None,
                  headers: list[tuple[str, str]] = (), body: bytes = b"",
                  to_tag: str | None = None) -> Response:
    """Build a response to ``req`` per §8.2.6: copy Via, From, To, Call-ID, CSeq.

    ``to_tag`` is added to To when it has none and the status is above 100.
    Works from raw header text, so a partly malformed request still gets
    its error response.
    """
    out = [[h[0], h[1], h[2]] for h in req.headers if h[0] in _COPIED]
    if to_tag:
        first = True
        for h in out:
            if h[0] == "to":
                if status > 100 and not _has_tag(req, h[2], first):
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
        return addr.tag is not None
    except SipError:
        return ";tag=" in value.replace(" ", "").replace("\t", "").lower()


def error_response(req: Request, err: SipError, to_tag: str | None = None) -> Response:
    """The response a request gets for ``err``."""
    return make_response(req, err.status, err.reason, err.headers, to_tag=to_tag)


def response_bytes(req: Request, status: int, reason: str | None = None,
                   headers: list[tuple[str, str]] = (), body: bytes = b"",
                   to_tag: str | None = None) -> bytes:
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
    first = True
    for h in req.headers:
        key = h[0]
        if key in copied:
            # The To tag rule of make_response, asked in the same order (``req.to`` is cached).
            if key == "to" and to_tag:
                if status > 100 and not _has_tag(req, h[2], first):
                    append(f"{h[1]}: {h[2]};tag={to_tag}")
                else:
                    append(f"{h[1]}: {h[2]}")
                first = False
            else:
                append(f"{h[1]}: {h[2]}")
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
        self._scan = 0          # where to resume looking for the end of the headers

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
                if buf in (b"\r", b"\r\n", b"\r\n\r"):
                    break
                del buf[:2 if buf.startswith(b"\r\n") else 1]
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
