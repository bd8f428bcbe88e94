"""Ring groups: a number (extension or DID) that rings several users, then a fallback (sans-IO).

A group is one entry of the dial plan's ``groups`` list:

- ``name``; ``numbers``, the extensions and DIDs that reach it (never a
  user's number, never another group's);
- ``strategy``: ``simultaneous`` rings every member's phones at once,
  ``sequential`` rings each member in turn, ``ring_timeout`` seconds each;
- ``members``: user names, or names of other groups (their members are
  taken in place, in order; a group that contains itself, directly or
  through others, is refused); at most ``MAX_MEMBERS`` users once expanded;
- ``ring_timeout`` (1-300 s, 20 by default): how long a simultaneous group
  rings in all, how long each member of a sequential one rings;
- ``fallback``: where the call goes when nobody answered in time (empty:
  nowhere, the caller gets ``480``): a user name, a number (a user's
  extension or DID, else dialled out through the plan's rules, with no
  permission asked: the administrator chose it), or a SIP URI such as a
  voicemail server's. It may not be a group's number (that would loop).

``ring_plan`` turns a group into the proxy's branch groups (tried one after
the other, ``sipcore.forking``) and the ring timeout of each: the forking
proxy cancels a group's branches when its time is up and starts the next.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import SipError
from .proxy import BranchTarget
from .uri import parse_uri

STRATEGIES = ("simultaneous", "sequential")
MAX_GROUPS = 1000
MAX_MEMBERS = 32
"""Users one group rings, once nested groups are expanded."""
MAX_NUMBERS = 32
DEFAULT_RING_TIMEOUT = 20.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NUMBER = re.compile(r"\+?[0-9*#]{1,64}")
_KEYS = frozenset({"name", "numbers", "strategy", "members", "ring_timeout", "fallback"})


class RingGroupError(ValueError):
    """A ``groups`` entry that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class RingGroup:
    """One ring group, its members expanded to users."""

    name: str
    numbers: tuple[str, ...]
    """Extensions and DIDs that reach the group."""
    strategy: str
    """``simultaneous`` or ``sequential``."""
    members: tuple[str, ...]
    """User names, in ringing order, nested groups expanded."""
    ring_timeout: float = DEFAULT_RING_TIMEOUT
    """Seconds the group rings (simultaneous), or each member rings (sequential)."""
    fallback: str = ""
    """A user name, a number or a SIP URI; empty: none."""


@dataclass(frozen=True)
class RingGroups:
    """The plan's ring groups, by name and by number."""

    by_name: dict[str, RingGroup] = field(default_factory=dict)
    by_number: dict[str, RingGroup] = field(default_factory=dict)

    def get(self, number: str) -> RingGroup | None:
        """The group ``number`` reaches, or None."""
        return self.by_number.get(number)


def _fail(where: str, what: str) -> RingGroupError:
    return RingGroupError(f"{where}: {what}")


def _raw_group(body: Any, where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _fail(where, "must be a table")
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise _fail(where, f"unknown setting {unknown[0]}")
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _fail(where, f"name must be letters, digits, '.', '_' or '-', not {name!r}")
    numbers = body.get("numbers", [])
    if (
        not isinstance(numbers, list)
        or not 0 < len(numbers) <= MAX_NUMBERS
        or not all(isinstance(n, str) and _NUMBER.fullmatch(n) for n in numbers)
    ):
        raise _fail(where, f"numbers must be a list of 1-{MAX_NUMBERS} numbers (+, digits)")
    strategy = body.get("strategy", "simultaneous")
    if strategy not in STRATEGIES:
        raise _fail(where, f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    members = body.get("members")
    if (
        not isinstance(members, list)
        or not 0 < len(members) <= MAX_MEMBERS
        or not all(isinstance(m, str) and 0 < len(m) <= 128 for m in members)
    ):
        raise _fail(where, f"members must be a list of 1-{MAX_MEMBERS} user or group names")
    timeout = body.get("ring_timeout", DEFAULT_RING_TIMEOUT)
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not (1 <= timeout <= 300)
    ):
        raise _fail(where, f"ring_timeout must be 1-300 s, not {timeout!r}")
    fallback = body.get("fallback", "")
    if not isinstance(fallback, str) or len(fallback) > 256:
        raise _fail(where, "fallback must be a user name, a number or a SIP URI")
    if ":" in fallback:
        try:
            uri = parse_uri(fallback)
        except SipError:
            raise _fail(where, f"fallback {fallback[:64]!r} is not a SIP URI") from None
        if uri.scheme not in ("sip", "sips"):
            raise _fail(where, "fallback must be a sip: or sips: URI")
    return {
        "name": name,
        "numbers": tuple(numbers),
        "strategy": strategy,
        "members": tuple(members),
        "ring_timeout": float(timeout),
        "fallback": fallback,
    }


def _expand(name: str, raw: dict[str, dict[str, Any]], trail: tuple[str, ...]) -> list[str]:
    """The users of group ``name``, nested groups taken in place; a cycle is refused."""
    users: list[str] = []
    for member in raw[name]["members"]:
        if member in raw:
            if member in trail:
                raise _fail(
                    f"dialplan.groups.{trail[0]}",
                    f"contains itself ({' > '.join((*trail, member))})",
                )
            users.extend(_expand(member, raw, (*trail, member)))
        else:
            users.append(member)
        if len(users) > MAX_MEMBERS * MAX_MEMBERS:
            break  # a wide nesting: refused below without expanding it further
    return users


def parse_groups(doc: Any, owners: dict[str, str]) -> RingGroups:
    """The ``groups`` list of a plan document; ``owners`` maps the users' numbers to
    their users (a group may not take one). ``RingGroupError`` names the faulty group."""
    if doc is None:
        return RingGroups()
    if not isinstance(doc, list) or len(doc) > MAX_GROUPS:
        raise _fail("dialplan.groups", f"must be a list of at most {MAX_GROUPS}")
    raw: dict[str, dict[str, Any]] = {}
    numbers: dict[str, str] = {}
    for k, body in enumerate(doc):
        group = _raw_group(body, f"dialplan.groups[{k}]")
        name = group["name"]
        if name in raw:
            raise _fail(f"dialplan.groups[{k}]", f"a second group named {name!r}")
        for number in group["numbers"]:
            if number in owners:
                raise _fail(
                    f"dialplan.groups.{name}", f"number {number} is already {owners[number]}'s"
                )
            if numbers.setdefault(number, name) != name:
                raise _fail(
                    f"dialplan.groups.{name}",
                    f"number {number} is already group {numbers[number]}'s",
                )
        raw[name] = group
    by_name = {}
    for name, group in raw.items():
        users = list(dict.fromkeys(_expand(name, raw, (name,))))
        if len(users) > MAX_MEMBERS:
            raise _fail(
                f"dialplan.groups.{name}",
                f"rings more than {MAX_MEMBERS} users once nested groups are expanded",
            )
        fallback = group["fallback"]
        if fallback in numbers or fallback in raw:
            raise _fail(
                f"dialplan.groups.{name}",
                f"fallback {fallback!r} is a group: it would ring in a loop",
            )
        by_name[name] = RingGroup(
            name, group["numbers"], group["strategy"], tuple(users), group["ring_timeout"], fallback
        )
    return RingGroups(by_name, {n: by_name[g] for n, g in numbers.items()})


def ring_plan(
    group: RingGroup,
    phones: Callable[[str], list[BranchTarget]],
    fallback: list[list[BranchTarget]],
    max_branches: int,
) -> tuple[list[list[BranchTarget]], list[float | None]]:
    """The branch groups of a call to ``group`` and the ring timeout of each (None: no
    timeout of ours, only Timer C): ``phones(user)`` gives a member's phones (none:
    the member is skipped), ``fallback`` the fallback's branch groups. At most
    ``max_branches`` phones ring at once."""
    groups: list[list[BranchTarget]] = []
    if group.strategy == "simultaneous":
        everyone = [t for user in group.members for t in phones(user)][:max_branches]
        if everyone:
            groups.append(everyone)
    else:
        groups.extend(ringing for user in group.members if (ringing := phones(user)[:max_branches]))
    timeouts: list[float | None] = [group.ring_timeout] * len(groups)
    groups.extend(fallback)
    timeouts.extend([None] * len(fallback))
    return groups, timeouts


def fallback_kind(group: RingGroup, owner: Callable[[str], str | None]) -> tuple[str, str]:
    """What ``group``'s fallback is: ``("uri", uri)``, ``("user", name)`` (a user, or
    the owner of a user's number) or ``("number", number)`` to dial out;
    ``("", "")`` when it has none."""
    target = group.fallback
    if not target:
        return "", ""
    if ":" in target:
        return "uri", target
    if _NUMBER.fullmatch(target):
        user = owner(target)
        return ("user", user) if user is not None else ("number", target)
    return "user", target
