"""Emergency numbers: the one place that says whether a Request-URI dials one (sans-IO).

Every defence that must let emergency calls through (rate limits, admission
control, the TCP caps, the syncing gate, the drain, bans, the challenge) and
the dialing that sends them to the emergency gateways ask an
:class:`EmergencyNumbers`, so they can never disagree about what an
emergency call is.

A configured number (``[sip] emergency_numbers``, 911 and 112 by default) is
an emergency call when dialled alone or behind the outside-line prefix
(``[sip] outside_line_prefix``, e.g. ``9``: 9911 is 911). The test is
exact, so that a number dressed up as one cannot slip past the defences:

- the user part is the digits alone, or the digits and one
  ``;phone-context=`` parameter (RFC 3966 local numbers);
- no suffix (``9110``, ``911#``), no visual separator (``9-911``), no
  ``+``, no percent-encoding, no other user parameter (``911;isub=1``);
- ``sip:``, ``sips:`` (a phone on TLS) and ``tel:`` Request-URIs only.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .uri import SipUri

#: the scheme and user part of an INVITE's Request-URI, from the datagram's first line
_INVITE_USER = re.compile(rb"INVITE (?:(?i:sips?):([^@>\s]+)@|(?i:tel):([^;>\s]+))")


@dataclass(frozen=True)
class EmergencyNumbers:
    """The configured emergency numbers and the outside-line prefix dialled before them."""

    numbers: frozenset[str] = field(default_factory=frozenset)
    """The emergency numbers (``911``, ``112``)."""
    outside_line_prefix: str = ""
    """Digits dialled to get an outside line (``9``); also accepted before a number."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "numbers", frozenset(self.numbers))

    @classmethod
    def of(
        cls, numbers: "EmergencyNumbers | Iterable[str]", outside_line_prefix: str = ""
    ) -> "EmergencyNumbers":
        """``numbers`` as they are, or a collection of numbers made into an instance."""
        if isinstance(numbers, EmergencyNumbers):
            return numbers
        return cls(frozenset(numbers), outside_line_prefix)

    def __bool__(self) -> bool:
        return bool(self.numbers)

    def number(self, user: str | None) -> str | None:
        """The emergency number the Request-URI user part ``user`` dials, or None."""
        if not user or not self.numbers:
            return None
        digits, sep, param = user.partition(";")
        if sep and (
            not param.startswith("phone-context=")
            or ";" in param
            or len(param) == len("phone-context=")
        ):
            return None
        if digits in self.numbers:
            return digits
        prefix = self.outside_line_prefix
        if prefix and digits.startswith(prefix) and digits[len(prefix) :] in self.numbers:
            return digits[len(prefix) :]
        return None

    def of_uri(self, uri: SipUri) -> str | None:
        """The emergency number the parsed Request-URI ``uri`` dials, or None."""
        if uri.scheme not in ("sip", "sips", "tel"):
            return None
        return self.number(uri.user)

    def invite(self, data: bytes) -> bool:
        """Whether the raw message ``data`` is an INVITE to an emergency number, read from
        its request line alone (for the limits that act before parsing)."""
        if not self.numbers or not data.startswith(b"INVITE "):
            return False
        m = _INVITE_USER.match(data)
        if m is None:
            return False
        user = (m.group(1) or m.group(2)).decode("ascii", "replace")
        return self.number(user) is not None
