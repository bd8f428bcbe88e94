"""Call transfers (REFER, RFC 3515; Replaces, RFC 3891; Referred-By, RFC 3892) without toll fraud.

A phone that transfers a call sends a ``REFER`` whose ``Refer-To`` names the
target; the other party (the transferee, often a carrier, which cannot answer
a ``407``) then sends a new ``INVITE`` to that target. The proxy core
(``sipcore.forking``) asks a ``Transfers``:

- ``accept(req, transferor, ...)`` on a ``REFER``, the transferor being the
  authenticated user who sends it (None for a trusted peer or a stranger).
  The target must be one the transferor could call: a user, extension or DID
  of our domain; a number of the dial plan only with the rule's permission
  (``Dialing.permit``); another domain only when it is no gateway
  (``Dialing.is_gateway``); an emergency number always. Anything else is
  ``403 Transfer Refused (...)``, naming why. Without a transferor a dial-plan
  number is refused too: a stranger's REFER must not make our phone dial the
  telephone network. An accepted REFER of a transferor to our domain gets
  ``?X-Tandem-Transfer=<token>`` added to its Refer-To URI (so the transferee
  copies it into its INVITE, RFC 3261 §19.1.5) and its ``Referred-By`` set to
  the transferor (what the phone claimed there proves nothing).
- ``redeem(req, ...)`` on a new ``INVITE``: with an ``X-Tandem-Transfer``
  header, it returns the transferor the token names, and the INVITE is routed
  as if the transferor called (its permissions; a gateway presents the
  transferor's caller ID), the header removed. A token that is forged,
  expired, made for another target or already used is ``403``.

The token is ``<expiry>.<transferor, base64url>.<MAC>``: a MAC under the
cluster's secret over the transferor, the target (the Request-URI user of
our domain) and the expiry (``LIFETIME`` seconds after the REFER, wall
clock), so any node verifies it. It is single use on each node: a node keeps
the MACs it redeemed until they expire (at most ``MAX_SEEN``, the oldest
forgotten first). Across nodes the set is not shared: a token replayed to
another node within its lifetime is accepted there once more, to the same
target with the same permissions.

An INVITE with ``Replaces`` (attended transfer) needs nothing more: from a
phone it is authenticated like any call, from a trusted carrier it reaches
our users, and with a token it is the transferor's.
"""

import base64
import binascii
import hmac
import logging
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from .errors import SipError
from .message import Request
from .uri import NameAddr, SipUri, parse_name_addr

if TYPE_CHECKING:
    from .dialing import Dialing
    from .proxy import ProxySettings

TOKEN_HEADER = "X-Tandem-Transfer"
"""The header (and Refer-To URI header) carrying a transfer token."""
LIFETIME = 60
"""Seconds a token stays valid after the REFER."""
MAX_SEEN = 10000
"""Redeemed tokens a node remembers (against replay) at most."""
MAX_TOKEN = 200
"""Longest token read: anything longer is refused unparsed."""
_KEY = TOKEN_HEADER.lower()

log = logging.getLogger(__name__)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aor(user: str, domain: str) -> str:
    """``<sip:user@domain>``, the user part escaped as a URI needs it."""
    return f"<sip:{quote(user, safe='+-_.!~*()&=$,;?/')}@{domain}>"


def _refused(reason: str) -> SipError:
    return SipError(403, f"Transfer Refused ({reason})")


class Transfers:
    """Transfer tokens made and redeemed under the cluster's ``secret``; see the module."""

    def __init__(self, secret: bytes, lifetime: int = LIFETIME, max_seen: int = MAX_SEEN):
        self._key = hmac.digest(secret, b"transfer", "sha256")
        self.lifetime = lifetime
        self.max_seen = max_seen
        self._seen: dict[str, int] = {}
        """MAC -> expiry of the tokens redeemed here, oldest first."""
        self.stats = {
            "accepted": 0,
            "refused": 0,
            "redeemed": 0,
            "forged": 0,
            "expired": 0,
            "replayed": 0,
        }

    # -- tokens ----------------------------------------------------------------
    def _mac(self, transferor: str, target: str, expiry: int) -> str:
        msg = f"{transferor}\0{target}\0{expiry}".encode()
        return _b64(hmac.digest(self._key, msg, "sha256")[:16])

    def token(self, transferor: str, target: str, wall: float) -> str:
        """A token letting whoever holds it call ``target`` (a user or number of our
        domain) as ``transferor`` until ``LIFETIME`` seconds after ``wall``."""
        expiry = int(wall) + self.lifetime
        return f"{expiry}.{_b64(transferor.encode())}.{self._mac(transferor, target, expiry)}"

    def verify(self, token: str, target: str, wall: float) -> str:
        """The transferor of a valid, unused ``token`` for ``target`` (then used), else
        ``SipError`` 403."""
        parts = token.split(".") if len(token) <= MAX_TOKEN else []
        try:
            expiry_text, who, mac = parts
            transferor = _unb64(who).decode()
            expiry = int(expiry_text)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            self.stats["forged"] += 1
            raise _refused("Bad Token") from None
        if not hmac.compare_digest(mac, self._mac(transferor, target, expiry)):
            self.stats["forged"] += 1
            raise _refused("Bad Token")
        if expiry < wall:
            self.stats["expired"] += 1
            raise _refused("Token Expired")
        seen = self._seen
        while seen:  # expiries grow with insertion: prune the front
            first = next(iter(seen))
            if seen[first] >= wall and len(seen) < self.max_seen:
                break
            del seen[first]
        if mac in seen:
            self.stats["replayed"] += 1
            raise _refused("Token Already Used")
        seen[mac] = expiry
        self.stats["redeemed"] += 1
        return transferor

    # -- requests ----------------------------------------------------------------
    def accept(
        self,
        req: Request,
        transferor: str | None,
        settings: "ProxySettings",
        dialing: "Dialing | None",
        wall: float,
    ) -> None:
        """Check a REFER's target against ``transferor``'s permissions (see the module);
        add the token and Referred-By when it is accepted, raise ``SipError`` if not."""
        values = req.get_all("refer-to")
        if len(values) != 1:
            raise SipError(400, "A REFER Needs Exactly One Refer-To")
        try:
            addr = parse_name_addr(values[0])
        except SipError:
            raise SipError(400, "Bad Refer-To") from None
        try:
            target = check_target(addr.uri, transferor, settings, dialing)
        except SipError as err:
            self.stats["refused"] += 1
            log.info(
                "transfer by %s (call %s) to %s refused: %s",
                transferor or "a peer",
                req.call_id,
                str(addr.uri)[:100],
                err.reason,
            )
            raise
        self.stats["accepted"] += 1
        if transferor is None:
            return
        req.set("Referred-By", _aor(transferor, settings.domain))
        if target is not None:
            req.set("Refer-To", with_token(addr, self.token(transferor, target, wall)))

    def redeem(self, req: Request, settings: "ProxySettings", wall: float) -> str | None:
        """The transferor of a new INVITE carrying a transfer token (the header then
        removed), None without one; ``SipError`` 403 for a bad token."""
        values = req.raw_values(_KEY)
        if not values:
            return None
        req.remove(_KEY)
        ruri = req.ruri
        if (
            len(values) != 1
            or req.method != "INVITE"
            or not ruri.user
            or not settings.is_local(ruri)
        ):
            self.stats["forged"] += 1
            raise _refused("Bad Token")
        try:
            transferor = self.verify(values[0].strip(), unquote(ruri.user), wall)
        except SipError as err:
            log.info(
                "transferred call %s to %s refused: %s", req.call_id, str(ruri)[:100], err.reason
            )  # never the token: it is a credential while it lasts
            raise
        log.info("transferred call %s to %s made as %s's", req.call_id, str(ruri)[:100], transferor)
        req.set("Referred-By", _aor(transferor, settings.domain))
        return transferor


def check_target(
    uri: SipUri, transferor: str | None, settings: "ProxySettings", dialing: "Dialing | None"
) -> str | None:
    """The user or number of our domain that ``transferor`` (None: not authenticated)
    may transfer to at ``uri``, None for a target elsewhere it may reach; ``SipError``
    403 naming why for one it may not."""
    if uri.scheme not in ("sip", "sips"):
        raise _refused("Target Must Be A SIP URI")
    if settings.emergency and settings.is_emergency(uri):
        return None  # never refused, and routed without a token
    if not settings.is_local(uri):
        if dialing is not None and dialing.is_gateway(uri):
            raise _refused("Gateways Only Through The Dial Plan")
        return None
    if not uri.user:
        raise _refused("Target Needs A User")
    user = unquote(uri.user)
    if dialing is not None and dialing.alias(user) is None and dialing.takes(user):
        if transferor is None:
            raise _refused("Only A User Of The Domain May Transfer To A Number")
        try:
            dialing.permit(user, transferor)
        except SipError as err:
            raise _refused(err.reason) from None
    return user


def with_token(addr: NameAddr, token: str) -> str:
    """The Refer-To value ``addr`` with ``token`` as its URI's transfer header (any
    such header it held replaced)."""
    kept = [
        h for h in addr.uri.headers.split("&") if h and unquote(h.partition("=")[0]).lower() != _KEY
    ]
    kept.append(f"{TOKEN_HEADER}={token}")
    return str(NameAddr(addr.uri._replace(headers="&".join(kept)), addr.display, addr.params))
