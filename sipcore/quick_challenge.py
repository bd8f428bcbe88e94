"""The 401 to a plain REGISTER without credentials, written without the general parser.

The challenge front (``actors.front``) answers every REGISTER that carries
no credentials with a 401, and for such a request parsing and validating
it in full costs several times all the rest. ``QuickChallenge`` recognises,
line by line with strict regular expressions, the REGISTERs whose answer
is certain, and writes the 401 straight from their text: the very bytes
that the general path (``parse_message``, ``validate``, ``stamp_via``,
``RegistrarRules.check``, ``challenge_bytes``) writes, to the same
destination. What it recognises is a subset of what is valid:

- the request line ``REGISTER sip:host[:port] SIP/2.0``, host one of the
  domain's names (lower case), nothing after the empty line ending the
  header, only ASCII, no folded line, no empty header value where the
  general path would refuse one;
- one Via line holding one ``SIP/2.0/UDP host[:port]`` value, parameter
  names in lower case, each once, no ``received``, ``rport`` without value;
- From and To as ``<sip:user@host>`` (or ``sips``), with an optional quoted
  display name of printable characters; From may have a ``tag``, To
  nothing after ``>``;
- ``CSeq: n REGISTER``, a Call-ID of visible characters, Max-Forwards from
  0 to 255, Content-Length 0, each at most once;
- no Require, Proxy-Require, Authorization or Proxy-Authorization; any
  other header (a token name, a value of printable characters or tabs).

Anything else gets ``None``, and the general path answers it.
``tests/test_quick_challenge.py`` holds the two to the same bytes.
"""

import re

from .headers import CANONICAL
from .via import DEFAULT_PORTS

_PORT = r"[1-9][0-9]{0,4}"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
_START = re.compile(rf"REGISTER sip:({_HOST})(?::({_PORT}))? SIP/2\.0")
_VIA = re.compile(rf"SIP/2\.0/UDP ({_HOST})(?::({_PORT}))?"
                  r"((?:;[a-z0-9-]+(?:=[A-Za-z0-9.!%*_+`'~-]+)?)*)")
_ADDRESS = (r'(?:"[ !#-\[\]-~]*" *)?<sips?:[A-Za-z0-9_.!~*\'()&=+$,-]+'
            rf"@{_HOST}>")
_FROM = re.compile(rf"{_ADDRESS}(?:;tag=[A-Za-z0-9.!%*_+`'~-]+)?")
_TO = re.compile(_ADDRESS)
_CALL_ID = re.compile(r"[!-~]+")
_CSEQ = re.compile(r"[0-9]{1,9} REGISTER")
_MAX_FORWARDS = re.compile(r"0|[1-9][0-9]?|1[0-9]{2}|2[0-4][0-9]|25[0-5]")
_ZERO = re.compile("0")
#: every header line: a token name, no space before the colon, a value of
#: printable ASCII or tabs (a line that is not matched, say a folded one,
#: makes the count of fields fall short of the count of lines)
_FIELD = re.compile(r"^([A-Za-z0-9!%*_+`'~.-]+):[ \t]*([\t -~]*)\r\n", re.M)

_COPIED = {"via", "from", "to", "call-id", "cseq"}
_REFUSED = {"require", "proxy-require", "authorization", "proxy-authorization"}
#: each header checked besides Via: the form its value must have, and the
#: spelling the 401 copies it with (None: not copied)
_CHECKS = {"from": (_FROM, "From"), "to": (_TO, "To"), "call-id": (_CALL_ID, "Call-ID"),
           "cseq": (_CSEQ, "CSeq"), "max-forwards": (_MAX_FORWARDS, None),
           "content-length": (_ZERO, None)}
#: header name as written -> its lower-case canonical name, for the names
#: the shortcut looks at (the others, whatever their case, are let be)
_KEYS = {spelling: canon.lower()
         for low, canon in CANONICAL.items()
         if canon.lower() in _COPIED | _REFUSED | _CHECKS.keys()
         for spelling in (low, canon, low.upper())}


class QuickChallenge:
    """Writes the 401 for the REGISTERs described in the module's text."""

    def __init__(self, domains):
        """``domains``: the host names a REGISTER may be for (``RegistrarRules.domains``)."""
        self.domains = frozenset(domains)

    def answer(self, data: bytes, ip: str, port: int, challenges, new_tag):
        """``(response bytes, (host, port))`` for the datagram ``data`` from
        ``ip:port``, or None when the general path must answer it.

        ``challenges()`` gives the WWW-Authenticate values and ``new_tag()``
        the To tag; neither is called for a datagram left to the general path.
        """
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 != len(data) or not data.isascii():
            return None
        text = data[:end + 2].decode("ascii")
        first = text.find("\r\n")
        m = _START.fullmatch(text, 0, first)
        if m is None or m.group(1) not in self.domains or not _port_ok(m.group(2)):
            return None
        fields = _FIELD.findall(text, first + 2)
        if len(fields) != text.count("\r\n") - 1:
            return None
        copied = []
        seen = set()
        to_at = dest = None
        keys = _KEYS
        for name, value in fields:
            key = keys.get(name)
            if key is None:
                key = keys.get(name.lower())
                if key is None:
                    continue
            if key in seen and key != "via" or key in _REFUSED:
                return None
            seen.add(key)
            if key == "via":
                if dest is not None:
                    return None
                found = _stamp(value, ip, port)
                if found is None:
                    return None
                value, dest = found
                copied.append(f"Via: {value}")
                continue
            pattern, display = _CHECKS[key]
            if pattern.fullmatch(value) is None:
                return None
            if key == "to":
                to_at = len(copied)
            if display is not None:
                copied.append(f"{display}: {value}")
        if len(seen & _COPIED) != 5:
            return None
        copied[to_at] += f";tag={new_tag()}"
        copied.extend([f"WWW-Authenticate: {c}" for c in challenges()])
        return ("SIP/2.0 401 Unauthorized\r\n" + "\r\n".join(copied)
                + "\r\nContent-Length: 0\r\n\r\n").encode(), dest


def _port_ok(text: str | None) -> bool:
    return text is None or int(text) < 65536


def _stamp(value: str, ip: str, port: int):
    """The top Via ``value`` with ``received``/``rport`` as ``stamp_via``
    writes it, and where the response goes; None for a Via not of the
    recognised form."""
    m = _VIA.fullmatch(value)
    if m is None or not _port_ok(m.group(2)):
        return None
    host, via_port, params = m.groups()
    pieces = params.split(";")[1:]
    names = [p.partition("=")[0] for p in pieces]
    if len(set(names)) != len(names) or "received" in names or "rport=" in params:
        return None
    rport = "rport" in names
    if rport or host != ip:
        # stamp_via writes the Via anew from its parts: the same text here,
        # with rport's value filled in and received added last.
        if rport:
            pieces = [f"rport={port}" if p == "rport" else p for p in pieces]
        value = "".join([f"SIP/2.0/UDP {host}" if via_port is None else f"SIP/2.0/UDP {host}:{via_port}",
                         *(";" + p for p in pieces), f";received={ip}"])
    if rport:
        return value, (ip, port)
    return value, (ip, int(via_port) if via_port else DEFAULT_PORTS["UDP"])
