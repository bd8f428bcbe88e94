"""The ``bindings`` control command: a page of the node's live registrations.

The dashboard merges these pages from every node into its registrations
page. A request may filter by user (``"user"``: a substring of the address
of record) and by primary node (``"origin"``: its id, exactly), and pages
by key: ``"after"`` (``[aor, key]``, the last binding of the previous page)
and ``"limit"`` (at most :data:`MAX_PAGE`); ``"offset"`` skips more.
Keyset paging is what lets the dashboard merge pages exactly: the first
``limit`` bindings after a key across all nodes are among each node's
first ``limit`` after it. Each binding comes with its primary node
(``origin``); the answer also counts the matching bindings (``total``) and
every live binding by primary node (``by_origin``), for the load split.

One answer walks the whole table once (about 0.1 s at 100,000 bindings);
it yields to the node's other greenlets every :data:`YIELD_EVERY` AORs so
that SIP is not held up meanwhile.
"""

import heapq
import time

import gevent

from .bus import BusError

MAX_PAGE = 1000
"""Most bindings one answer holds."""
MAX_TEXT = 2048
"""Longest filter or cursor text accepted."""
YIELD_EVERY = 10_000
"""AORs walked between two yields to the node's other greenlets."""

FIELDS = ("aor", "key", "contact", "expires_at", "user_agent", "received", "origin")
"""What each listed binding carries."""


def _checked(request: dict) -> tuple[str, str, tuple[str, str] | None, int, int]:
    user, origin, after = request.get("user", ""), request.get("origin", ""), request.get("after")
    offset, limit = request.get("offset", 0), request.get("limit", 100)
    for name, text in (("user", user), ("origin", origin)):
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise BusError(f"{name} must be a string of at most {MAX_TEXT} characters")
    for name, value in (("offset", offset), ("limit", limit)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BusError(f"{name} must be a non-negative integer")
    if after is not None and (
        not isinstance(after, list)
        or len(after) != 2
        or not all(isinstance(x, str) and len(x) <= MAX_TEXT for x in after)
    ):
        raise BusError("after must be [aor, key], two strings")
    return user, origin, (after[0], after[1]) if after else None, offset, min(limit, MAX_PAGE)


def bindings_page(location, request: dict, now: float | None = None) -> dict:
    """The live bindings of ``location`` matching ``request``, sorted by AOR and key."""
    user, origin, after, offset, limit = _checked(request)
    now = time.time() if now is None else now
    after_aor = after[0] if after else ""
    by_origin: dict[str, int] = {}
    total = 0
    aors = []  # those holding a match after the cursor: sorting names is cheaper than rows
    for n, (aor, per) in enumerate(list(location.table.items())):
        if n and n % YIELD_EVERY == 0:
            gevent.sleep(0)
        wanted = user in aor
        listed = after is None or aor > after_aor or aor == after_aor
        hit = False
        for b in per.values():  # no yield inside: ``per`` cannot change meanwhile
            if b.deleted or b.expires_at <= now:
                continue
            by_origin[b.origin] = by_origin.get(b.origin, 0) + 1
            if wanted and (not origin or b.origin == origin):
                total += 1
                hit = hit or (listed and (after is None or aor > after_aor or b.key > after[1]))
        if hit:
            aors.append(aor)
    page = []
    for aor in heapq.nsmallest(offset + limit, aors):  # each of them yields a row at least
        page += sorted(
            (
                b
                for b in location.get(aor).values()
                if not b.deleted
                and b.expires_at > now
                and (not origin or b.origin == origin)
                and (after is None or aor > after_aor or b.key > after[1])
            ),
            key=lambda b: b.key,
        )
    page = page[offset : offset + limit]
    return {
        "total": total,
        "by_origin": by_origin,
        "bindings": [{f: getattr(b, f) for f in FIELDS} for b in page],
    }


def attach_registrations(node) -> None:
    """Serve ``bindings`` on the node's control endpoint, if it has one."""
    control = node.replicator.control if node.replicator is not None else None
    if control is None:
        return

    def bindings(request: dict) -> dict:
        """A page of live bindings (user and primary filters, keyset paging) with counts."""
        return bindings_page(node.location, request)

    control.handle("bindings", bindings)
