"""Concurrent-call limits per user and per gateway (sans-IO).

The limits are settings of the dial plan (its ``limits`` table)::

    limits = {"user": 4, "gateway": 30, "users": {"alice": 1}, "gateways": {"a": 10}}

``user`` and ``gateway`` are the defaults (0: no limit), ``users`` and
``gateways`` the exceptions by name (0 there: no limit for that one).

``CallCounts`` counts the calls in progress **on this node** (the one whose
proxy handled the INVITE): each node keeps its own counts, so a cluster of
N nodes lets up to N times a limit through when calls are spread over them.
A call is counted from its INVITE until the proxy sees it end: a final
failure, a CANCEL, or a BYE (``sipcore.forking`` feeds it its call events).
It counts against its caller and its callee when they are users of the
domain (a ring group's call against its caller; a member at their limit is
not rung), and against the first gateway it is offered to. A new call past a
user's limit gets ``486 Busy Here``; a gateway at its limit is skipped like
a gateway that is down, and a call whose every gateway is full gets ``503``.
A call to an emergency number is counted but never refused.

A call whose end the node never saw (a BYE that went through another node,
or was lost) would hold its place for ever: a call is forgotten after
``max_age`` seconds (4 h by default), and at most ``max_calls`` calls are
kept (the oldest forgotten first).
"""

from dataclasses import dataclass, field
from typing import Any

from .errors import SipError

MAX_LIMIT = 100_000


class LimitsError(ValueError):
    """A ``limits`` table that cannot be used."""


@dataclass(frozen=True)
class Limits:
    """Concurrent calls allowed per user and per gateway (0: no limit)."""

    user: int = 0
    gateway: int = 0
    users: dict[str, int] = field(default_factory=dict)
    gateways: dict[str, int] = field(default_factory=dict)

    def of_user(self, name: str) -> int:
        """The limit of user ``name`` (0: none)."""
        return self.users.get(name, self.user)

    def of_gateway(self, name: str) -> int:
        """The limit of gateway ``name`` (0: none)."""
        return self.gateways.get(name, self.gateway)


def _count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LIMIT:
        raise LimitsError(f"{where} must be 0-{MAX_LIMIT} calls, not {value!r}")
    return value


def parse_limits(doc: Any, gateways: Any = ()) -> Limits:
    """The plan's ``limits`` table; ``gateways`` holds the plan's gateway names (a limit
    for another is refused)."""
    if doc is None:
        return Limits()
    if not isinstance(doc, dict):
        raise LimitsError("dialplan.limits must be a table")
    unknown = sorted(set(doc) - {"user", "gateway", "users", "gateways"})
    if unknown:
        raise LimitsError(f"dialplan.limits: unknown setting {unknown[0]}")
    tables = {}
    for key, cap in (("users", 100_000), ("gateways", 200)):
        table = doc.get(key, {})
        if not isinstance(table, dict) or len(table) > cap:
            raise LimitsError(f"dialplan.limits.{key} must be a table of at most {cap}")
        for name in table:
            if not isinstance(name, str) or not 0 < len(name) <= 128:
                raise LimitsError(f"dialplan.limits.{key}: bad name {name!r}")
            if key == "gateways" and name not in gateways:
                raise LimitsError(f"dialplan.limits.gateways: no gateway named {name!r}")
        tables[key] = {n: _count(v, f"dialplan.limits.{key}.{n}") for n, v in table.items()}
    return Limits(
        _count(doc.get("user", 0), "dialplan.limits.user"),
        _count(doc.get("gateway", 0), "dialplan.limits.gateway"),
        tables["users"],
        tables["gateways"],
    )


@dataclass(slots=True)
class _Call:
    users: tuple[str, ...]
    gateway: str | None
    since: float


class CallCounts:
    """The calls in progress on this node, counted per user and per gateway."""

    def __init__(self, max_calls: int = 100_000, max_age: float = 4 * 3600.0):
        self.max_calls = max_calls
        self.max_age = max_age
        self._calls: dict[str, _Call] = {}
        self.users: dict[str, int] = {}
        """Calls in progress per user (only users with one or more)."""
        self.gateways: dict[str, int] = {}
        """Calls in progress per gateway (only gateways with one or more)."""
        self.stats = {"refused_user": 0, "refused_gateway": 0, "forgotten": 0}

    def __len__(self) -> int:
        return len(self._calls)

    def busy_gateways(self, limits: Limits) -> frozenset[str]:
        """The gateways at their limit (skipped for a new call)."""
        return frozenset(n for n, c in self.gateways.items() if 0 < limits.of_gateway(n) <= c)

    def full(self, user: str, limits: Limits) -> bool:
        """Whether ``user`` is at their limit."""
        cap = limits.of_user(user)
        return bool(cap) and self.users.get(user, 0) >= cap

    def check(self, users: tuple[str, ...], limits: Limits) -> None:
        """``SipError(486)`` when one of ``users`` is at their limit."""
        for user in users:
            if self.full(user, limits):
                self.stats["refused_user"] += 1
                raise SipError(486, "Busy Here (Call Limit Reached)")

    def gateways_full(self) -> None:
        """Note a call refused because every gateway of its route was full."""
        self.stats["refused_gateway"] += 1

    def add(self, call_id: str, users: tuple[str, ...], gateway: str | None, now: float) -> None:
        """Count call ``call_id`` (once: an INVITE seen again changes nothing)."""
        self.sweep(now)
        if call_id in self._calls:
            return
        while len(self._calls) >= self.max_calls:
            self._forget(next(iter(self._calls)))
        users = tuple(dict.fromkeys(users))
        self._calls[call_id] = _Call(users, gateway, now)
        for user in users:
            self.users[user] = self.users.get(user, 0) + 1
        if gateway is not None:
            self.gateways[gateway] = self.gateways.get(gateway, 0) + 1

    def end(self, call_id: str) -> None:
        """Call ``call_id`` ended (failed, cancelled or hung up); unknown ones are ignored."""
        call = self._calls.pop(call_id, None)
        if call is None:
            return
        for user in call.users:
            _down(self.users, user)
        if call.gateway is not None:
            _down(self.gateways, call.gateway)

    def sweep(self, now: float) -> None:
        """Forget the calls older than ``max_age`` (their end went unseen)."""
        calls = self._calls
        while calls:
            call_id, call = next(iter(calls.items()))
            if now - call.since < self.max_age:
                break
            self._forget(call_id)

    def _forget(self, call_id: str) -> None:
        self.stats["forgotten"] += 1
        self.end(call_id)

    def snapshot(self) -> dict[str, Any]:
        """What the master shows: calls per user and per gateway, and the totals."""
        return {
            "calls": len(self._calls),
            "users": dict(self.users),
            "gateways": dict(self.gateways),
            "stats": dict(self.stats),
        }


def _down(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
