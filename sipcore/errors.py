"""Errors that know the SIP response they should produce."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .message import Request


class SipError(Exception):
    """A request that cannot be handled, with the response it must get.

    ``status`` and ``reason`` form the status line; ``headers`` lists extra
    header fields for the response, e.g. ``[("Retry-After", "5")]``.
    ``request`` is set by the parser to the partly parsed request, when
    there is enough of one to answer.
    """

    request: Request | None = None

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or []


class SipParseError(SipError):
    """A malformed message: a request gets ``400`` with ``reason``."""

    def __init__(self, reason: str):
        super().__init__(400, reason)
