"""The ``bindings`` control command: a page of the node's live registrations.

The dashboard merges these pages from every node into its registrations
page. A request may filter by user (``"user"``: a substring of the address
of record) and pages with ``"offset"`` and ``"limit"`` (at most
:data:`MAX_PAGE`). Each binding comes with its primary node (``origin``).
"""

import time

from .bus import BusError

MAX_PAGE = 1000
"""Most bindings one answer holds."""

FIELDS = ("aor", "contact", "expires_at", "user_agent", "received", "origin")
"""What each listed binding carries."""


def bindings_page(location, request: dict, now: float | None = None) -> dict:
    """The live bindings of ``location`` matching ``request``, sorted by AOR and contact."""
    user, offset, limit = request.get("user", ""), request.get("offset", 0), \
        request.get("limit", 100)
    if not isinstance(user, str) or len(user) > 256:
        raise BusError("user must be a string of at most 256 characters")
    for name, value in (("offset", offset), ("limit", limit)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BusError(f"{name} must be a non-negative integer")
    now = time.time() if now is None else now
    live = [b for aor, per in location.table.items() if user in aor
            for b in per.values() if not b.deleted and b.expires_at > now]
    live.sort(key=lambda b: (b.aor, b.contact))
    page = live[offset:offset + min(limit, MAX_PAGE)]
    return {"total": len(live),
            "bindings": [{f: getattr(b, f) for f in FIELDS} for b in page]}


def attach_registrations(node) -> None:
    """Serve ``bindings`` on the node's control endpoint, if it has one."""
    control = node.replicator.control if node.replicator is not None else None
    if control is None:
        return

    def bindings(request: dict) -> dict:
        """A page of live bindings (user filter, offset, limit) with their primary node."""
        return bindings_page(node.location, request)

    control.handle("bindings", bindings)
