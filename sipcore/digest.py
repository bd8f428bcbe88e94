"""Digest authentication (RFC 2617, RFC 7616, RFC 8760 for SHA-256).

Sans-IO: the caller passes ``now`` (seconds, any monotonic-enough clock that
all nodes sharing the secret agree on, normally the wall clock) and a
``lookup`` for stored credentials; nothing here reads a clock or a socket.

Credentials are stored as HA1 digests only (``ha1()``), one per algorithm.
Nonces are stateless: a timestamp, a random salt, the tag of the node and
boot epoch that made them (``origin_tag``) and an HMAC over the three with
the cluster's secret, so any node holding the secret can tell a genuine
nonce from a forged one, and its own from another node's (or from its own
before a restart). Only nonce-counts are kept, in a bounded table, to refuse
replays; a nonce that saw a wrong answer is used up there too, so every
guess of a password costs a fresh challenge.
"""

import hashlib
import hmac
import os
import random
import re
from binascii import b2a_base64
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .errors import SipParseError
from .grammar import HEXDIG, LWS_CHARS, TOKEN, is_token

if TYPE_CHECKING:
    from .authguard import AuthGuard

#: algorithm name -> hash constructor (RFC 7616 §3.2, RFC 8760)
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}

#: upper-cased algorithm token -> canonical spelling
_ALGORITHMS = {
    "MD5": "MD5",
    "MD5-SESS": "MD5-sess",
    "SHA-256": "SHA-256",
    "SHA-256-SESS": "SHA-256-sess",
}


_REQUIRED = ("username", "realm", "nonce", "uri", "response")
#: how hashed text taken from a message is encoded: back to the bytes sent, which
#: are what the client hashed (a byte that is not UTF-8 is a surrogate here)
_WIRE = "surrogateescape"
_KEY_STRIP = LWS_CHARS + ","
#: standard base64 alphabet -> URL-safe one (RFC 4648 §5)
_URLSAFE = bytes.maketrans(b"+/", b"-_")
#: SHA-256 block size, the length of an HMAC key pad (RFC 2104)
_HMAC_BLOCK = 64
#: how many nonce salts ``NonceFactory`` draws at a time
_SALT_BATCH = 64
#: characters of a nonce: issue time, salt, origin tag, HMAC
NONCE_LENGTH = 12 + 12 + 8 + 24
#: the nonce-count a used-up nonce is given: above any 8-hex-digit count
_USED_UP = 1 << 32

# The fast path of ``_params`` goes by a parameter list's shape: its text with
# every quoted string emptied, e.g. ' username="",realm="",nc=00000001'. A
# shape is plain when it lists ``name=value`` pieces, the name a token and the
# value an emptied quoted string or a run of characters other than white space,
# commas, quotes and backslashes, with a comma between any two (the lookahead)
# and spaces or extra commas around them. ``_params_slow`` reads any list of
# plain shape without backslashes alike, whatever its quoted strings hold, so
# what a shape says can be kept and used again.
#
# A text matches these patterns in one way at most (an absent value is not an
# empty run), so that a failing match does not try many ways first.
_SHAPE_PARAM = (
    rf"({TOKEN})[ \t\r\n]*="
    r'(?:[ \t\r\n]*(?:("")|([^ \t\r\n,"\\]+)))?'
)
_SHAPE_PARAM_RE = re.compile(_SHAPE_PARAM)
_SHAPE_RE = re.compile(rf"(?:[ \t\r\n,]*{_SHAPE_PARAM}[ \t\r\n]*(?=,|\Z))*[ \t\r\n,]*")
#: shape -> ``_shape(shape)``: a kind of client sends one shape every time
_SHAPES: dict[str, tuple[Any, ...]] = {}
#: how many shapes are kept (the table is emptied when full), and the
#: longest shape the fast path reads
_SHAPES_MAX = 256
_SHAPE_TEXT_MAX = 300
#: the quoted strings ``Authenticator._plan`` gets from a header value, in order
_PLAN_FIELDS = ("username", "realm", "nonce", "uri", "response", "cnonce")
#: how many HA2 values an ``Authenticator`` keeps per algorithm (the table is
#: emptied when full): a registrar sees few request URIs
_HA2S_MAX = 256


def ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """Return the hex HA1 ``H(username:realm:password)`` to store for a user.

    ``algorithm`` is ``"MD5"`` or ``"SHA-256"`` (the -sess variants derive
    their HA1 per session from this one, see ``expected_response``).
    Raises ``ValueError`` for any other algorithm.
    """
    h = _HASHES.get(algorithm)
    if h is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return h(f"{username}:{realm}:{password}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Credentials:
    """The parameters of one ``Digest`` Authorization header value."""

    username: str
    """User name, unquoted (``username*`` of RFC 7616 decoded)."""
    realm: str
    """Realm the client answers, unquoted."""
    nonce: str
    """Server nonce the client answers, as sent."""
    uri: str
    """The ``uri`` parameter (digest-uri), unquoted, not checked here."""
    response: str
    """The client's hex response, lower-cased."""
    algorithm: str = "MD5"
    """Canonical algorithm: ``MD5``, ``MD5-sess``, ``SHA-256``, ``SHA-256-sess``
    or, unknown, as sent. ``MD5`` when absent."""
    qop: str | None = None
    """``auth``, ``auth-int`` (lower-cased), or None (RFC 2069 compatibility)."""
    nc: str | None = None
    """Nonce-count as sent (8 hex digits); present whenever ``qop`` is."""
    cnonce: str | None = None
    """Client nonce; present whenever ``qop`` is."""
    opaque: str | None = None
    """Opaque value echoed from the challenge, if any."""


def _bad(detail: str) -> SipParseError:
    return SipParseError(f"Bad Digest Credentials ({detail})")


def _quoted(s: str, j: int) -> tuple[str, int]:
    """Read a quoted-string whose opening quote is at ``j - 1``.

    Return the unescaped content and the index just past the closing quote.
    """
    end = s.find('"', j)
    if end < 0:
        raise _bad("unterminated quoted string")
    slash = s.find("\\", j, end)
    if slash < 0:
        return s[j:end], end + 1
    out = []
    n = len(s)
    while j < n:
        c = s[j]
        if c == "\\":
            if j + 1 >= n:
                break
            out.append(s[j + 1])
            j += 2
        elif c == '"':
            return "".join(out), j + 1
        else:
            out.append(c)
            j += 1
    raise _bad("unterminated quoted string")


def _shape(shape: str) -> tuple[Any, ...]:
    """What a parameter list's shape says, or ``()`` when it is not plain.

    Returns the lower-cased names of the quoted strings, in order, and a
    dict of the other parameters. A repeated name makes a shape not plain.
    """
    if not _SHAPE_RE.fullmatch(shape):
        return ()
    found = _SHAPE_PARAM_RE.findall(shape)
    quoted = []
    others = {}
    for name, emptied, value in found:
        if emptied:
            quoted.append(name.lower())
        else:
            others[name.lower()] = value
    if len(others.keys() | quoted) != len(found):
        return ()
    return tuple(quoted), others


def _known_shape(shape: str) -> tuple[Any, ...]:
    """``_shape(shape)``, kept in ``_SHAPES``; ``()`` for a long shape."""
    known = _SHAPES.get(shape)
    if known is None:
        # Long shapes are left to the scanner: they are not kept, and the
        # regular expressions would take time to fail on some of them.
        if len(shape) > _SHAPE_TEXT_MAX:
            return ()
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        known = _SHAPES[shape] = _shape(shape)
    return known


def _params(s: str, i: int) -> dict[str, str]:
    """Parse ``k=v, k="v", ...`` from ``s[i:]`` into a dict of lower-case keys.

    A list without backslashes whose shape (see ``_SHAPE_RE``) is plain is
    put together from its quoted strings and what its shape says, kept by
    shape; anything else goes through the character scanner
    ``_params_slow``. Both ways give the same result or the same error.
    """
    text = s[i:]
    pieces = text.split('"')
    if "\\" in text or len(pieces) % 2 == 0:
        return _params_slow(s, i)
    shape = '""'.join(pieces[::2])
    known = _SHAPES.get(shape)
    if known is None:
        known = _known_shape(shape)
    if not known:
        return _params_slow(s, i)
    quoted, others = known
    params = dict(zip(quoted, pieces[1::2], strict=False))
    params.update(others)
    return params


def _params_slow(s: str, i: int) -> dict[str, str]:
    """Scan ``k=v, k="v", ...`` from ``s[i:]`` character by character."""
    params: dict[str, str] = {}
    n = len(s)
    while i < n:
        eq = s.find("=", i)
        if eq < 0:
            if s[i:].strip(_KEY_STRIP):
                raise _bad("parameter without value")
            break
        key = s[i:eq].strip(_KEY_STRIP).lower()
        if not is_token(key):
            raise _bad("malformed parameter name")
        j = eq + 1
        while j < n and s[j] in LWS_CHARS:
            j += 1
        if j < n and s[j] == '"':
            value, j = _quoted(s, j + 1)
            comma = s.find(",", j)
            if comma < 0:
                comma = n
            if s[j:comma].strip(LWS_CHARS):
                raise _bad("junk after quoted string")
            i = comma + 1
        else:
            comma = s.find(",", j)
            if comma < 0:
                comma = n
            value = s[j:comma].strip(LWS_CHARS)
            i = comma + 1
        if key in params:
            raise _bad("duplicate parameter")
        params[key] = value
    return params


def _ext_value(value: str) -> str:
    """Decode an RFC 5987 ext-value (``UTF-8''Mu%C3%A4fasa``)."""
    parts = value.split("'", 2)
    if len(parts) != 3:
        raise _bad("malformed username*")
    charset = parts[0].lower() or "utf-8"
    if charset not in ("utf-8", "iso-8859-1"):
        raise _bad("unsupported charset in username*")
    try:
        return unquote(parts[2], encoding=charset, errors="strict")
    except UnicodeDecodeError:
        raise _bad("malformed username*") from None


def parse_credentials(value: str) -> Credentials:
    """Parse an Authorization or Proxy-Authorization header value.

    Accepts ``Digest k=v, k="v", ...`` with any case for the scheme and the
    keys, spaces around ``=`` and ``,``, quoted strings with backslash
    escapes, and unknown parameters (ignored). Raises ``SipParseError``
    (400) when the scheme is not Digest, a required parameter (username,
    realm, nonce, uri, response) is missing, a parameter is repeated,
    ``qop`` comes without ``nc``/``cnonce`` or ``nc`` is not 8 hex digits.
    """
    s = value.lstrip(LWS_CHARS)
    if s[:6].lower() != "digest" or (len(s) > 6 and s[6] not in LWS_CHARS):
        raise _bad("not Digest")
    p = _params(s, 6)
    if "username*" in p:
        if "username" in p:
            raise _bad("both username and username*")
        p["username"] = _ext_value(p["username*"])
    for key in _REQUIRED:
        if key not in p:
            raise _bad(f"missing {key}")
    algorithm = p.get("algorithm")
    if algorithm is None:
        algorithm = "MD5"
    else:
        algorithm = _ALGORITHMS.get(algorithm.upper(), algorithm)
    qop = p.get("qop")
    nc = p.get("nc")
    cnonce = p.get("cnonce")
    if qop is not None:
        qop = qop.lower()
        if nc is None or cnonce is None:
            raise _bad("qop without nc or cnonce")
        if len(nc) != 8 or nc.strip(HEXDIG):
            raise _bad("malformed nc")
    return Credentials(
        p["username"],
        p["realm"],
        p["nonce"],
        p["uri"],
        p["response"].lower(),
        algorithm,
        qop,
        nc,
        cnonce,
        p.get("opaque"),
    )


def expected_response(
    creds: Credentials, method: str, ha1_hex: str, body: bytes = b""
) -> str | None:
    """Return the hex response a client knowing ``ha1_hex`` must send.

    Covers qop ``auth`` (RFC 2617 §3.2.2.1), qop absent (RFC 2069
    compatibility), ``auth-int`` (HA2 over ``H(body)``, the message body)
    and the ``-sess`` algorithms, whose session HA1 is
    ``H(ha1_hex:nonce:cnonce)``. ``ha1_hex`` must be lower-case hex as
    ``ha1()`` returns. Returns None when the response cannot be computed: an
    unknown algorithm or qop, or a ``-sess`` algorithm without qop (no
    cnonce). ``Authenticator`` offers only ``qop="auth"`` and refuses
    ``auth-int`` answers.
    """
    algorithm = creds.algorithm
    h = _HASHES.get(algorithm)
    sess = False
    if h is None:
        if not algorithm.endswith("-sess"):
            return None
        h = _HASHES.get(algorithm[:-5])
        if h is None:
            return None
        sess = True
    qop = creds.qop
    if qop is None:
        if sess:
            return None
        ha2 = h(f"{method}:{creds.uri}".encode("utf-8", _WIRE)).hexdigest()
        return h(f"{ha1_hex}:{creds.nonce}:{ha2}".encode("utf-8", _WIRE)).hexdigest()
    if qop == "auth":
        ha2 = h(f"{method}:{creds.uri}".encode("utf-8", _WIRE)).hexdigest()
    elif qop == "auth-int":
        ha2 = h(f"{method}:{creds.uri}:{h(body).hexdigest()}".encode("utf-8", _WIRE)).hexdigest()
    else:
        return None
    if sess:
        ha1_hex = h(f"{ha1_hex}:{creds.nonce}:{creds.cnonce}".encode("utf-8", _WIRE)).hexdigest()
    return h(
        f"{ha1_hex}:{creds.nonce}:{creds.nc}:{creds.cnonce}:{qop}:{ha2}".encode("utf-8", _WIRE)
    ).hexdigest()


def _b64url(data: bytes) -> bytes:
    """``base64.urlsafe_b64encode(data)``, without its Python-level wrappers."""
    return b2a_base64(data, newline=False).translate(_URLSAFE)


def origin_tag(node_id: str, epoch: int) -> str:
    """The 8 base64url characters naming one node's one boot epoch in its nonces."""
    return _b64url(hashlib.sha256(f"{node_id}:{epoch}".encode()).digest()[:6]).decode()


class NonceFactory:
    """Makes and verifies stateless nonces.

    A nonce is ``NONCE_LENGTH`` (56) URL-safe characters: the issue time in
    milliseconds (12 hex digits), a random salt (12 base64url characters),
    the ``origin`` tag (8 base64url characters, ``origin_tag`` of the node
    and its boot epoch) and a truncated HMAC-SHA256 of those 32 characters
    under ``secret`` (24 base64url characters). Every node that holds
    ``secret`` can verify a nonce another made, so the secret should be
    shared across the cluster; ``check`` tells a genuine nonce of another
    origin (``"foreign"``), which the node did not count uses of, from a
    forged one (``"invalid"``).
    """

    __slots__ = ("_inner", "_outer", "lifetime", "max_skew", "_rng", "_salts", "origin", "_origin")

    def __init__(
        self,
        secret: bytes,
        lifetime: float = 300.0,
        max_skew: float = 5.0,
        origin: str = "AAAAAAAA",
    ):
        """``lifetime``: seconds a nonce stays fresh; ``max_skew``: seconds a
        nonce may seem to come from the future (clock skew between nodes);
        ``origin``: this node's ``origin_tag``."""
        if not secret:
            raise ValueError("nonce secret must not be empty")
        if len(origin) != 8 or not origin.isascii():
            raise ValueError("nonce origin must be 8 ASCII characters (origin_tag)")
        self.origin = origin
        self._origin = origin.encode()
        # HMAC (RFC 2104) keyed once: the hash states after the key's inner
        # and outer pads are copied per MAC. Measured (loadtest/bench_hmac.py,
        # pinned to one core): 1.4-1.7 us per MAC against 2.8-2.9 us for the standard
        # library's one-shot hmac.digest, which keys anew each call; two MACs
        # per authenticated REGISTER (make and check the nonce) save about 2.7 us
        # of its ~80 us of CPU, 3%.
        key = bytes(secret)
        if len(key) > _HMAC_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_HMAC_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self.lifetime = lifetime
        self.max_skew = max_skew
        # The salt only makes nonces of one millisecond differ (the HMAC
        # makes them unforgeable), so a seeded generator serves, without a
        # system call per challenge.
        self._rng = random.Random(os.urandom(16))
        self._salts: Iterator[bytes] = iter(())

    def _salt(self) -> bytes:
        """The base64url salt of a new nonce, the first of a new batch.

        Salts are drawn and encoded ``_SALT_BATCH`` at a time, which costs
        less than one at a time: 9 random bytes are 12 base64 characters,
        so the encoding of a batch is the encodings of its salts end to end.
        """
        text = _b64url(self._rng.getrandbits(72 * _SALT_BATCH).to_bytes(9 * _SALT_BATCH, "big"))
        salts = iter([text[i : i + 12] for i in range(0, 12 * _SALT_BATCH, 12)])
        self._salts = salts
        return next(salts)

    def _mac(self, prefix: bytes) -> bytes:
        """The base64url HMAC part of a nonce that starts with ``prefix``."""
        inner = self._inner.copy()
        inner.update(prefix)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return b2a_base64(outer.digest()[:18], newline=False).translate(_URLSAFE)

    def make(self, now: float) -> str:
        """Return a fresh nonce issued at ``now``."""
        salt = next(self._salts, None)
        if salt is None:
            salt = self._salt()
        prefix = b"%012x" % int(now * 1000) + salt + self._origin
        return (prefix + self._mac(prefix)).decode()

    def _check(self, nonce: str, now: float) -> tuple[str, float]:
        """Return (status as ``check``, the nonce's expiry time or 0.0)."""
        if len(nonce) != NONCE_LENGTH or not nonce.isascii():
            return "invalid", 0.0
        raw = nonce.encode()
        if not hmac.compare_digest(self._mac(raw[:32]), raw[32:]):
            return "invalid", 0.0
        if raw[24:32] != self._origin:
            return "foreign", 0.0
        issued = int(nonce[:12], 16) / 1000.0
        expires_at = issued + self.lifetime
        if now > expires_at or issued - now > self.max_skew:
            return "stale", expires_at
        return "ok", expires_at

    def check(self, nonce: str, now: float) -> str:
        """Return ``"ok"``, ``"stale"`` (genuine but older than ``lifetime``,
        or from further in the future than ``max_skew``), ``"foreign"``
        (genuine, made by another node or by this one before a restart) or
        ``"invalid"`` (malformed, tampered with, or made with another
        secret)."""
        return self._check(nonce, now)[0]


class NonceCounts:
    """Highest nonce-count seen per nonce, to refuse replays (RFC 7616 §3.4).

    Memory is bounded by ``max_entries``: expired entries are dropped first,
    then the oldest ones. Whenever a live entry is dropped, every nonce not
    in the table that expires no later than it is refused from then on, so
    eviction can cost a client one more challenge but never lets a replay
    through.
    """

    __slots__ = ("max_entries", "_table", "_order", "_floor")

    def __init__(self, max_entries: int = 100_000):
        """Keep at most ``max_entries`` nonces."""
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._table: dict[str, list[float]] = {}
        self._order: deque[str] = deque()
        self._floor = float("-inf")

    def __len__(self) -> int:
        """Number of nonces tracked."""
        return len(self._table)

    def accept(self, nonce: str, nc: int, now: float, expires_at: float) -> bool:
        """Record nonce-count ``nc`` for ``nonce``; False when it is a replay.

        A count not greater than the highest seen for the nonce is refused;
        so is a nonce already expired at ``now`` or one that may have been
        evicted. ``expires_at`` is when the nonce stops being fresh.
        """
        table = self._table
        entry = table.get(nonce)
        if entry is not None:
            if nc <= entry[0]:
                return False
            entry[0] = nc
            return True
        if nc < 1 or expires_at <= now or expires_at <= self._floor:
            return False
        order = self._order
        # The conditions under which ``_sweep`` would drop anything.
        if (order and table[order[0]][1] <= now) or len(table) >= self.max_entries:
            self._sweep(now)
        table[nonce] = [nc, expires_at]
        order.append(nonce)
        return True

    def use_up(self, nonce: str, now: float, expires_at: float) -> None:
        """Refuse every later count of ``nonce`` (a wrong answer was given to it)."""
        entry = self._table.get(nonce)
        if entry is not None:
            entry[0] = _USED_UP
        elif self.accept(nonce, 1, now, expires_at):
            self._table[nonce][0] = _USED_UP

    def used_up(self, nonce: str) -> bool:
        """Whether ``use_up`` was called for ``nonce`` (and it is still tracked)."""
        entry = self._table.get(nonce)
        return entry is not None and entry[0] == _USED_UP

    def _sweep(self, now: float) -> None:
        table, order = self._table, self._order
        while order and table[order[0]][1] <= now:
            del table[order.popleft()]
        while len(table) >= self.max_entries:
            expires_at = table.pop(order.popleft())[1]
            if expires_at > self._floor:
                self._floor = expires_at


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of ``Authenticator.authenticate``.

    A wrong password and an unknown user give equal results, so that users
    cannot be enumerated (the challenges differ only by their nonce).
    """

    ok: bool
    """True when the credentials are valid."""
    username: str | None
    """The authenticated user when ``ok``, else None."""
    challenges: list[str]
    """WWW-Authenticate / Proxy-Authenticate values to send when not ``ok``
    (SHA-256 first, then MD5); empty when ``ok``."""
    stale: bool
    """True when the response was right but the nonce had expired."""
    reason: str
    """Short cause, for logs and counters: ``ok``, ``missing`` (no
    credentials for our realm), ``unsupported`` (algorithm or qop, or no
    qop while it is required), ``nonce`` (not ours), ``stale``,
    ``foreign`` (a nonce of another node or of an earlier boot, answered
    rightly: ``stale`` is set), ``denied`` (wrong password or unknown user,
    never told apart), ``used`` (a nonce used up by a wrong answer),
    ``replay`` (nonce-count reused) or ``banned`` (the source or the user
    is banned by the guard: no password was checked and ``challenges`` is
    empty, the caller answers 403 or nothing)."""


_new_object = object.__new__
_set_ok = vars(AuthResult)["ok"].__set__
_set_username = vars(AuthResult)["username"].__set__
_set_challenges = vars(AuthResult)["challenges"].__set__
_set_stale = vars(AuthResult)["stale"].__set__
_set_reason = vars(AuthResult)["reason"].__set__


def _success(username: str) -> AuthResult:
    """``AuthResult(True, username, [], False, "ok")``, made for less.

    The frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``; setting the slots through their descriptors
    costs about half as much, on the path of every accepted request.
    """
    result = _new_object(AuthResult)
    _set_ok(result, True)
    _set_username(result, username)
    _set_challenges(result, [])
    _set_stale(result, False)
    _set_reason(result, "ok")
    return result


#: what ``authenticate`` returns while the guard refuses a source or user
BANNED = AuthResult(False, None, [], False, "banned")


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


class Authenticator:
    """Digest authentication of requests for one realm.

    ``lookup(username)`` returns the user's stored HA1 per algorithm, e.g.
    ``{"MD5": "...", "SHA-256": "..."}`` (lower-case hex, as ``ha1()``
    gives), or None for an unknown user. A user without an HA1 for the
    algorithm the client chose is treated as unknown. ``secret`` keys the
    nonces (share it across the nodes of a cluster). ``algorithms`` are the
    ones offered, among ``"MD5"`` and ``"SHA-256"``, in the server's order of
    preference (RFC 8760 §2.4): many phones read only the first challenge
    and know only MD5, so a node may put MD5 first. The matching ``-sess``
    variants are accepted too.

    ``origin`` is the node's ``origin_tag`` (its id and boot epoch): a nonce
    of another origin answered rightly gets a stale challenge, so a phone
    that moves to another node, or finds its node restarted, answers again
    at once, and a captured answer never counts anywhere else. With
    ``require_qop`` (the default) credentials without qop (RFC 2069, which
    cannot be protected against replay) are refused. ``guard`` (an
    ``sipcore.authguard.AuthGuard``) counts wrong answers and refuses banned
    sources and users before any password check. ``server_uris`` (lower
    case) are digest-uris taken whatever the Request-URI: the names of this
    server itself (``sip:domain``, ``sip:address:port``...), which SIPp and
    some phones answer with instead of the Request-URI; any other must be
    the Request-URI.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        lookup: Callable[[str], Mapping[str, str] | None],
        nonce_lifetime: float = 300.0,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        max_nonces: int = 100_000,
        origin: str = "AAAAAAAA",
        require_qop: bool = True,
        guard: "AuthGuard | None" = None,
        server_uris: frozenset[str] = frozenset(),
    ):
        """Build an authenticator; ``max_nonces`` bounds the replay table."""
        self.realm = realm
        self.lookup = lookup
        self.nonces = NonceFactory(secret, nonce_lifetime, origin=origin)
        self.counts = NonceCounts(max_nonces)
        self.require_qop = require_qop
        self.guard = guard
        self.server_uris = server_uris
        self.set_algorithms(algorithms)

    def set_algorithms(self, algorithms: tuple[str, ...]) -> None:
        """Offer and accept ``algorithms`` (in order of preference) from now on: the
        next challenge offers them, credentials of any other are refused. Nonces and
        their counts stay (a nonce names no algorithm)."""
        for a in algorithms:
            if a not in _HASHES:
                raise ValueError(f"unsupported digest algorithm {a!r}")
        if not algorithms:
            raise ValueError("no digest algorithm configured")
        realm = self.realm
        offered = list(dict.fromkeys(algorithms))
        self.algorithms = tuple(offered)
        self._accepted = {}
        for a in offered:
            self._accepted[a] = a
            self._accepted[a + "-sess"] = a
        rank = {a: i for i, a in enumerate(offered)}
        self._rank = {name: rank[base] for name, base in self._accepted.items()}
        dummy_password = os.urandom(16).hex()
        self._dummy = {a: ha1("", realm, dummy_password, a) for a in offered}
        head = f'Digest realm="{_quote(realm)}", nonce="'
        # A challenge value is the nonce joined between the texts of a pair.
        self._fresh_parts = [(head, f'", algorithm={a}, qop="auth"') for a in offered]
        self._stale_parts = [(head, rest + ", stale=true") for head, rest in self._fresh_parts]
        #: header value shape -> ``_plan(shape)``
        self._plans: dict[str, tuple[Any, ...]] = {}
        #: per algorithm, ``method:uri`` -> its hex HA2
        self._ha2s: dict[str, dict[str, str]] = {a: {} for a in offered}

    def challenge(self, now: float, stale: bool = False) -> list[str]:
        """Return fresh challenge values, one per algorithm, in the order of
        ``algorithms``."""
        nonce = self.nonces.make(now)
        return list(map(nonce.join, self._stale_parts if stale else self._fresh_parts))

    def _fail(self, now: float, reason: str, stale: bool = False) -> AuthResult:
        return AuthResult(False, None, self.challenge(now, stale), stale, reason)

    def _pick(self, header_values: list[str]) -> Credentials | None:
        best = None
        best_rank = len(self.algorithms)
        unsupported = None
        for value in header_values:
            s = value.lstrip(LWS_CHARS)
            if s[:6].lower() != "digest":
                continue
            creds = parse_credentials(s)
            if creds.realm != self.realm:
                continue
            rank = self._rank.get(creds.algorithm)
            if rank is None:
                unsupported = creds
            elif rank < best_rank:
                best, best_rank = creds, rank
        return best or unsupported

    def _plan(self, shape: str) -> tuple[Any, ...]:
        """How ``authenticate`` reads a header value of ``shape`` by itself.

        ``shape`` is the whole value with every quoted string emptied (see
        ``_SHAPE_RE``). A plan is made only for a shape that
        ``parse_credentials`` reads, whatever its quoted strings hold, as
        Digest credentials with qop ``auth``, a well-formed nc, an algorithm
        offered here (not ``-sess``), and username, realm, nonce, uri,
        response and cnonce as quoted strings. It holds the number of pieces
        the value splits into at quotes, a getter of those six quoted
        strings from the pieces, the algorithm, its hash, its HA2 cache, and
        nc as sent and as a number. Returns ``()`` for any other shape.
        """
        s = shape.lstrip(LWS_CHARS)
        if s[:6].lower() != "digest" or len(s) <= 6 or s[6] not in LWS_CHARS:
            return ()
        known = _known_shape(s[6:])
        if not known:
            return ()
        quoted, others = known
        if "algorithm" in quoted or "username*" in quoted or "username*" in others:
            return ()
        algorithm = others.get("algorithm", "MD5")
        algorithm = _ALGORITHMS.get(algorithm.upper(), algorithm)
        qop = others.get("qop", "")
        nc = others.get("nc", "")
        # An algorithm offered here is its own base; a -sess one is not.
        if (
            self._accepted.get(algorithm) != algorithm
            or qop.lower() != "auth"
            or len(nc) != 8
            or nc.strip(HEXDIG)
            or not set(_PLAN_FIELDS).issubset(quoted)
        ):
            return ()
        where = [2 * quoted.index(name) + 1 for name in _PLAN_FIELDS]
        return (
            2 * len(quoted) + 1,
            itemgetter(*where),
            algorithm,
            _HASHES[algorithm],
            self._ha2s[algorithm],
            nc,
            int(nc, 16),
        )

    def authenticate(
        self,
        method: str,
        header_values: list[str],
        now: float,
        uri: str | None = None,
        source: str | None = None,
    ) -> AuthResult:
        """Check a request's Authorization (or Proxy-Authorization) values.

        Picks the credentials for our realm (the strongest algorithm if
        several); values of other schemes or realms are ignored. Raises
        ``SipParseError`` (400) when a Digest value is malformed, or when
        ``uri`` (the Request-URI as text) is given and the digest-uri is
        not it (RFC 2617 §3.2.2.5). ``source`` is the sender's address, for
        the guard. Without usable credentials, with a nonce not ours, a
        wrong response, a used-up nonce or a replayed nonce-count, returns
        ``ok=False`` with fresh challenges; ``stale`` is set only when the
        response was right for an expired nonce or one of another origin. A
        wrong response uses its nonce up. While the guard bans the source
        or the user, returns ``BANNED`` without checking anything more.
        Credentials without qop (RFC 2069) are accepted, while the nonce is
        fresh, only without ``require_qop``: they cannot be protected
        against replay within its lifetime.

        Nothing changes (no count, no use) before a ``SipParseError``, so a
        caller may give a request that raised to another path.

        A single value of our realm whose shape has a plan (see ``_plan``),
        the usual case, is read and checked here; anything else goes
        through ``_authenticate_slow``. Both give the same result.
        """
        if len(header_values) != 1:
            return self._authenticate_slow(method, header_values, now, uri, source)
        value = header_values[0]
        pieces = value.split('"')
        shape = '""'.join(pieces[::2])
        plans = self._plans
        plan = plans.get(shape)
        if plan is None:
            if len(shape) > _SHAPE_TEXT_MAX:
                return self._authenticate_slow(method, header_values, now, uri, source)
            if len(plans) >= _SHAPES_MAX:
                plans.clear()
            plan = plans[shape] = self._plan(shape)
        # A value whose last quoted string is unterminated has the shape of
        # that value cut before it; the count of pieces tells them apart.
        if not plan or len(pieces) != plan[0] or "\\" in value:
            return self._authenticate_slow(method, header_values, now, uri, source)
        _, fields, base, h, ha2s, nc, count = plan
        username, realm, nonce, digest_uri, response, cnonce = fields(pieces)
        if realm != self.realm:
            return self._authenticate_slow(method, header_values, now, uri, source)
        if uri is not None and digest_uri != uri:
            self._check_uri(digest_uri, uri)
        status, expires_at = self.nonces._check(nonce, now)
        if status == "invalid":
            return self._fail(now, "nonce")
        guard = self.guard
        if guard is not None and guard.refused(source, username, now):
            return BANNED
        counts = self.counts
        if status == "ok" and counts.used_up(nonce):
            if guard is not None:
                guard.failed(source, username, now)
            return self._fail(now, "used")
        stored = self.lookup(username)
        user_ha1 = stored.get(base) if stored is not None else None
        a2 = f"{method}:{digest_uri}"
        ha2 = ha2s.get(a2)
        if ha2 is None:
            if len(ha2s) >= _HA2S_MAX:
                ha2s.clear()
            ha2 = ha2s[a2] = h(a2.encode("utf-8", _WIRE)).hexdigest()
        key = self._dummy[base] if user_ha1 is None else user_ha1
        expected = h(f"{key}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode("utf-8", _WIRE)).hexdigest()
        response = response.lower()
        if not response.isascii():
            response = ""
        if not hmac.compare_digest(expected, response) or user_ha1 is None:
            return self._denied(nonce, status, expires_at, source, username, now)
        if status != "ok":
            return self._fail(now, status, stale=True)
        if not counts.accept(nonce, count, now, expires_at):
            return self._fail(now, "replay")
        if guard is not None:
            guard.succeeded(source, username, now)
        return _success(username)

    def _denied(
        self,
        nonce: str,
        status: str,
        expires_at: float,
        source: str | None,
        username: str,
        now: float,
    ) -> AuthResult:
        """A wrong answer: its nonce is used up, the guard counts it."""
        if status == "ok":
            self.counts.use_up(nonce, now, expires_at)
        if self.guard is not None:
            self.guard.failed(source, username, now)
        return self._fail(now, "denied")

    def _authenticate_slow(
        self,
        method: str,
        header_values: list[str],
        now: float,
        uri: str | None = None,
        source: str | None = None,
    ) -> AuthResult:
        """``authenticate`` for any values, through ``parse_credentials``."""
        creds = self._pick(header_values) if header_values else None
        if creds is None:
            return self._fail(now, "missing")
        if uri is not None and creds.uri != uri:
            self._check_uri(creds.uri, uri)
        base = self._accepted.get(creds.algorithm)
        qop = creds.qop
        if base is None or (qop != "auth" if qop is not None or self.require_qop else False):
            return self._fail(now, "unsupported")
        status, expires_at = self.nonces._check(creds.nonce, now)
        if status == "invalid":
            return self._fail(now, "nonce")
        guard = self.guard
        if guard is not None and guard.refused(source, creds.username, now):
            return BANNED
        if status == "ok" and self.counts.used_up(creds.nonce):
            if guard is not None:
                guard.failed(source, creds.username, now)
            return self._fail(now, "used")
        stored = self.lookup(creds.username)
        user_ha1 = stored.get(base) if stored is not None else None
        if user_ha1 is None:
            expected = expected_response(creds, method, self._dummy[base])
        else:
            expected = expected_response(creds, method, user_ha1)
        response = creds.response
        if not response.isascii():
            response = ""
        matches = hmac.compare_digest(expected or "", response)
        if user_ha1 is None or not matches:
            return self._denied(creds.nonce, status, expires_at, source, creds.username, now)
        if status != "ok":
            return self._fail(now, status, stale=True)
        if qop is not None and not self.counts.accept(
            creds.nonce, int(creds.nc or "0", 16), now, expires_at
        ):
            return self._fail(now, "replay")
        if guard is not None:
            guard.succeeded(source, creds.username, now)
        return AuthResult(True, creds.username, [], False, "ok")

    def _check_uri(self, digest_uri: str, request_uri: str) -> None:
        """Raise ``SipParseError`` (400) unless the digest-uri is the Request-URI
        (but for the case of its letters) or one of ``server_uris``."""
        digest_uri = digest_uri.lower()
        if digest_uri != request_uri.lower() and digest_uri not in self.server_uris:
            raise _bad("uri does not match the Request-URI")
