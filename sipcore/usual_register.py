"""The usual REGISTER, read from its text without the general parser.

Nearly every REGISTER a registrar gets has one shape: the one SIPp and
phones send. For such a request parsing and validating it in full costs
more than all the registrar's own work, so ``scan`` recognises it, line by
line, with strict regular expressions for the fields a response copies,
and keeps only what answering it needs, each value as the general parser
reads it. What it recognises is a subset of what is valid:

- the request line ``REGISTER sip:host[:port] SIP/2.0``, host one of the
  domain's names (lower case), nothing after the empty line ending the
  header, only ASCII, no folded line, no bare CR or LF, no NUL;
- one Via line holding one ``SIP/2.0/UDP host[:port]`` value, parameter
  names in lower case, each once, no ``received``, ``rport`` without value;
- From and To as ``<sip:user@host>`` (or ``sips``), with an optional quoted
  display name of printable characters; From may have a ``tag``, To
  nothing after ``>``;
- ``CSeq: n REGISTER``, a Call-ID of visible characters, Max-Forwards from
  0 to 255, Content-Length 0;
- no Require, Proxy-Require or Proxy-Authorization, and at most one line
  of each header looked at here (Authorization, Contact, Expires, Path,
  Supported, User-Agent among them); any other header with a token for its name
  (its value is not looked at).

Anything else gets ``None``, and the general path answers it. It is the
shortcut of the one REGISTER path (``sipcore.register``), which answers a
``UsualRegister`` with the very bytes the general parser's request gets;
``tests/test_usual_register.py`` holds the two to the same answers.
"""

import re
from collections.abc import Container, Iterable
from itertools import islice

from .errors import SipParseError
from .grammar import MARK, TOKEN, TOKEN_CLASS, alnum_class
from .headers import CANONICAL
from .message import Request, parse_message
from .transaction import Key, unique_branch
from .via import DEFAULT_PORTS, stamp_via

_PORT = r"[1-9][0-9]{0,4}"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
_START = re.compile(rf"REGISTER sip:({_HOST})(?::({_PORT}))? SIP/2\.0")
_VIA = re.compile(
    rf"SIP/2\.0/UDP ({_HOST})(?::({_PORT}))?"
    rf"((?:;[a-z0-9-]+(?:={TOKEN})?)*)"
)
_ADDRESS = (
    rf'(?:"[ !#-\[\]-~]*" *)?<sips?:({alnum_class(MARK + "&=+$,")}+)'
    rf"@({_HOST})>"
)
_FROM = re.compile(rf"{_ADDRESS}(?:;tag={TOKEN})?")
_TO = re.compile(_ADDRESS)
_CALL_ID = re.compile(r"[!-~]+")
_CSEQ = re.compile(r"([0-9]{1,9}) REGISTER")
_MAX_FORWARDS = re.compile(r"0|[1-9][0-9]?|1[0-9]{2}|2[0-4][0-9]|25[0-5]")
_ZERO = re.compile("0")
#: a branch with the magic cookie and something after it (a bare cookie is no unique
#: id: ``server_key`` keys it by the RFC 2543 rules, so this path leaves it alone)
_BRANCH_VALUE = rf"(z9hG4bK{TOKEN_CLASS}+)"
#: a Via with only a branch (with the magic cookie) and a valueless rport
_VIA_USUAL = re.compile(
    rf"SIP/2\.0/UDP ({_HOST})(?::({_PORT}))?"
    rf"(?:;branch={_BRANCH_VALUE};rport|(;rport);branch={_BRANCH_VALUE})"
)
_PARAM_NAME = re.compile(r";([a-z0-9-]+)")
_RPORT = re.compile(r";rport(?=;|\Z)")
_BRANCH = re.compile(r";branch=([^;]*)")
#: a header name (the general parser refuses a line with any other)
_TOKEN = re.compile(TOKEN)

_COPIED = {"via", "from", "to", "call-id", "cseq"}
#: the spelling a response copies each with
_DISPLAY = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}
_REFUSED = {"require", "proxy-require", "proxy-authorization"}
#: the headers read by the registrar besides those checked here
_KEPT = ("authorization", "contact", "expires", "path", "supported", "user-agent")
#: the form each header's value must have, when present (Via, To and CSeq
#: are read further after this check)
_CHECKED = (
    ("from", _FROM),
    ("call-id", _CALL_ID),
    ("max-forwards", _MAX_FORWARDS),
    ("content-length", _ZERO),
)
#: header name as written -> its lower-case canonical name, for the names
#: looked at here (the others, whatever their case, are let be)
_KEYS = {
    spelling: canon.lower()
    for low, canon in CANONICAL.items()
    if canon.lower() in _COPIED | _REFUSED | {*_KEPT, *dict(_CHECKED)}
    for spelling in (low, canon, low.upper())
}


class UsualRegister:
    """A usual REGISTER (see the module's text), as ``scan`` read it.

    ``fields`` holds every header looked at here, by lower-case canonical
    name, each value as the general parser reads it (the top Via stamped
    as ``stamp_via`` stamps it); ``copied`` the lines a response copies, in
    the request's order, To at ``to_at``; ``dest`` the (host, port) a
    response goes to; ``key`` the ``server_key`` (None without the magic
    cookie); ``user`` and ``to_host`` the parts of the To URI; ``uri`` the
    Request-URI as written.
    """

    __slots__ = (
        "data",
        "ip",
        "port",
        "dest",
        "key",
        "copied",
        "to_at",
        "user",
        "to_host",
        "call_id",
        "cseq",
        "fields",
        "uri",
    )
    data: bytes
    ip: str
    port: int
    dest: tuple[str, int]
    key: Key | None
    copied: list[str]
    to_at: int
    user: str
    to_host: str
    call_id: str
    cseq: int
    fields: dict[str, str]
    uri: str

    def response(
        self, status: int, reason: str, headers: Iterable[tuple[str, str]], to_tag: str
    ) -> bytes:
        """What ``response_bytes(request, status, reason, headers, to_tag=to_tag)``
        writes for the parsed request: the copied fields, To with ``to_tag``,
        then ``headers`` (canonical names, no Content-Length)."""
        copied = self.copied
        at = self.to_at
        lines = [
            f"SIP/2.0 {status} {reason}",
            *copied[:at],
            f"{copied[at]};tag={to_tag}",
            *copied[at + 1 :],
        ]
        lines.extend(map("%s: %s".__mod__, headers))
        lines.append("Content-Length: 0\r\n\r\n")
        return "\r\n".join(lines).encode()

    def request(self) -> tuple[Request, tuple[str, str, int]]:
        """The general path's request and destination: ``parse_message``,
        ``validate`` and ``stamp_via`` of the datagram."""
        req = parse_message(self.data)
        req.validate()
        if not isinstance(req, Request):
            raise SipParseError("a usual REGISTER that parses as a response")
        return req, stamp_via(req, "udp", self.ip, self.port)


def scan(data: bytes, ip: str, port: int, domains: Container[str]) -> UsualRegister | None:
    """The usual REGISTER ``data`` from ``ip:port`` (UDP), or None when the
    general path must read it. ``domains``: the host names a REGISTER may
    be for (``RegistrarRules.domains``)."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 != len(data) or not data.isascii():
        return None
    text = data[:end].decode("ascii")
    lines = text.split("\r\n")
    # A bare CR or LF (split leaves them in lines) or a NUL is for the
    # general path; other control characters are read as it reads them.
    joined = "".join(lines)
    if "\r" in joined or "\n" in joined or "\x00" in joined:
        return None
    m = _START.fullmatch(lines[0])
    if m is None or m.group(1) not in domains or not _port_ok(m.group(2)):
        return None
    found = {}
    keys = _KEYS
    for line in islice(lines, 1, None):
        name, colon, value = line.partition(":")
        key = keys.get(name)
        if key is None or not colon:
            # A folded line starts with a blank: its "name" is no token.
            if not colon or _TOKEN.fullmatch(name) is None:
                return None
            key = keys.get(name.lower())
            if key is None:
                continue
        if key in found:
            return None
        found[key] = value.strip()
    present = found.keys()
    if not present >= _COPIED or not present.isdisjoint(_REFUSED):
        return None
    for key, pattern in _CHECKED:
        checked = found.get(key)
        if checked is not None and pattern.fullmatch(checked) is None:
            return None
    usual = UsualRegister()
    via = _stamp(usual, found["via"], ip, port)
    to = _TO.fullmatch(found["to"])
    cseq = _CSEQ.fullmatch(found["cseq"])
    if via is None or to is None or cseq is None:
        return None
    usual.user, usual.to_host = to.groups()
    usual.cseq = int(cseq.group(1))
    usual.call_id = found["call-id"]
    found["via"] = via
    # The response copies these in the request's order.
    copied: list[str] = []
    for key in found:
        display = _DISPLAY.get(key)
        if display is not None:
            if key == "to":
                usual.to_at = len(copied)
            copied.append(f"{display}: {found[key]}")
    usual.copied = copied
    usual.fields = found
    usual.data, usual.ip, usual.port = data, ip, port
    usual.uri = lines[0][9:-8]
    return usual


def _port_ok(text: str | None) -> bool:
    return text is None or int(text) < 65536


def _stamp(usual: UsualRegister, value: str, ip: str, port: int) -> str | None:
    """The top Via ``value`` with ``received``/``rport`` as ``stamp_via``
    writes it; sets ``usual``'s destination and transaction key as
    ``stamp_via`` and ``server_key`` find them. None for a Via not of the
    recognised form."""
    m = _VIA_USUAL.fullmatch(value)
    if m is not None:
        # branch and rport alone, in either order: what nearly every UA sends.
        host, via_port, branch, first, after = m.groups()
        if via_port is not None:
            via_port = int(via_port)
            if via_port > 65535:
                return None
        usual.dest = (ip, port)
        usual.key = (branch or after, host.lower(), via_port, "REGISTER")
        if first is None:
            return f"{value}={port};received={ip}"
        return f"{value[: m.start(4)]};rport={port}{value[m.end(4) :]};received={ip}"
    m = _VIA.fullmatch(value)
    if m is None:
        return None
    host, via_port, params = m.groups()
    names = _PARAM_NAME.findall(params)
    if len(set(names)) != len(names) or "received" in names or "rport=" in params:
        return None
    if via_port is not None:
        via_port = int(via_port)
        if via_port > 65535:
            return None
    rport = "rport" in names
    if rport or host != ip:
        # stamp_via writes the Via anew from its parts: the same text, as
        # the form is strict, with rport's value filled in and received
        # added last.
        if rport:
            value = _RPORT.sub(f";rport={port}", value, 1)
        value = f"{value};received={ip}"
    if rport:
        usual.dest = (ip, port)
    else:
        usual.dest = (ip, via_port or DEFAULT_PORTS["UDP"])
    branch = _BRANCH.search(params)
    # Without a unique branch (no magic cookie, or the bare cookie) the
    # transaction key is made of other fields: the general path finds it.
    if branch is None or not unique_branch(branch.group(1)):
        usual.key = None
    else:
        usual.key = (branch.group(1), host.lower(), via_port, "REGISTER")
    return value
