"""The dial plan: which gateways a dialled number goes to, and who may dial it (sans-IO).

A ``DialPlan`` is built once from its document (the node's ``[dialplan]``
TOML section or the master's push, the same shape) by ``parse_dialplan``:

- gateways: ``name``, ``host`` (an address, or a DNS name that the proxy
  resolves per RFC 3263), optional ``port`` and ``transport``, an optional
  outbound ``prefix`` put before every number sent to it, and ``emergency``
  (the gateway takes emergency calls);
- rules, in order, the first that matches wins: ``pattern`` as PBX
  administrators write them, ``strip`` leading digits to remove and
  ``prepend`` digits to add, ``gateways`` (names, tried in order) and the
  ``permission`` a caller needs (empty: any authenticated user);
- users: per user ``permissions``, ``caller_id`` (the identity sent on
  outgoing calls, one of the user's numbers when the user has any),
  ``emergency_callback`` (sent to emergency services) and ``numbers``, the
  extensions and DIDs that are aliases of the user (``201``,
  ``+15551230201``): a call to one reaches the user's phones;
- trusted: the carriers and gateways trusted by source address
  (``sipcore.trusted``);
- groups: ring groups, numbers that ring several users
  (``sipcore.ring_groups``); limits: concurrent calls per user and per
  gateway (``sipcore.call_limits``).

Patterns: digits, ``+``, ``*`` and ``#`` stand for themselves; ``x`` (or
``X``) for any digit, ``N`` for 2-9, ``Z`` for 1-9, ``[1-5]``/``[27]`` for
a class; a final ``.`` for a tail of one or more digits. ``9.`` takes
every number starting with 9 (and more), ``1xxxxxxxxxx`` eleven digits
starting with 1, ``+.`` every number in international form.

Lookup cost: rules are grouped by their literal prefix (the characters
before the first wildcard), so a number consults only the groups of its own
prefixes (at most its length plus one), and within each only rules of that
prefix; with 1,000 rules a lookup tests a handful of them, not 1,000.
"""

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from .call_limits import Limits, LimitsError, parse_limits
from .ring_groups import RingGroupError, RingGroups, parse_groups
from .trusted import TrustedError, TrustedPeers, parse_trusted

#: what a dialled number may look like: optional +, then digits (and * or #)
_NUMBER = re.compile(r"\+?[0-9*#]+")
_LITERAL = frozenset("0123456789+*#")
_CLASSES = {"x": "[0-9]", "X": "[0-9]", "N": "[2-9]", "Z": "[1-9]"}
_CLASS = re.compile(r"\[([0-9](?:-[0-9])?)+\]")
_TRANSPORTS = ("udp", "tcp", "tls")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PERMISSION = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
#: limits on what a plan may hold (a push is checked against them before it is taken)
MAX_RULES = 5000
MAX_GATEWAYS = 200
MAX_USERS = 100_000
MAX_PATTERN = 64
MAX_LOCATIONS = 1000
MAX_NUMBERS = 32
"""Extensions and DIDs one user may own."""


class DialPlanError(ValueError):
    """A dial plan document that cannot be used; the message names the faulty entry."""


def is_number(user: str) -> bool:
    """Whether a Request-URI user part is a dialled number (``+``, digits, ``*``, ``#``)."""
    return _NUMBER.fullmatch(user) is not None


@dataclass(frozen=True, slots=True)
class Gateway:
    """A SIP trunk towards the telephone network."""

    name: str
    """How rules name it."""
    host: str
    """An IP address, or a DNS name resolved per RFC 3263 (NAPTR, SRV, A)."""
    port: int | None = None
    """Its port; None lets RFC 3263 find it (5060 for an address)."""
    transport: str | None = None
    """``udp``, ``tcp`` or ``tls``; None lets RFC 3263 choose."""
    prefix: str = ""
    """Digits put before every number sent to it (a carrier's access code)."""
    emergency: bool = False
    """Whether it takes emergency calls."""

    def uri(self, number: str | None) -> str:
        """The Request-URI of a call to ``number`` through this gateway (None: the
        gateway itself, as an OPTIONS probe names it)."""
        port = f":{self.port}" if self.port else ""
        transport = f";transport={self.transport}" if self.transport else ""
        user = "" if number is None else f"{self.prefix}{number}@"
        return f"sip:{user}{self.host}{port}{transport}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of the dial plan."""

    index: int
    """Its place in the plan (0 first); the lowest matching index wins."""
    pattern: str
    """As the administrator wrote it."""
    gateways: tuple[str, ...]
    """Names of the gateways to try, in order."""
    strip: int = 0
    """Leading characters of the dialled number removed."""
    prepend: str = ""
    """Digits put before what is left."""
    permission: str = ""
    """What a caller needs (empty: any authenticated user of the domain)."""

    def rewrite(self, number: str) -> str:
        """The number sent on, after ``strip`` and ``prepend``."""
        return self.prepend + number[self.strip :]


@dataclass(frozen=True, slots=True)
class UserPolicy:
    """What one user may dial and how the user is presented."""

    permissions: frozenset[str] = frozenset()
    caller_id: str = ""
    """The number presented on outgoing calls (empty: the user name)."""
    emergency_callback: str = ""
    """The number emergency services call back (empty: ``caller_id``, then the plan's default)."""
    numbers: tuple[str, ...] = ()
    """The user's extensions and DIDs: calls to them reach the user."""

    @property
    def presented(self) -> str:
        """The number the user's calls present: the caller ID, else the first DID (a
        number in ``+`` form; an extension means nothing outside), else empty (the user
        name is presented)."""
        return self.caller_id or next((n for n in self.numbers if n[0] == "+"), "")


NO_POLICY = UserPolicy()


@dataclass(frozen=True, slots=True)
class Location:
    """A network (a building, a floor) and the emergency callback number of calls from it,
    with the place's ``name`` and civic ``address`` (told to those notified of a call)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    callback: str
    name: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class Match:
    """Where a dialled number goes."""

    rule: Rule
    number: str
    """The number after the rule's strip and prepend."""
    gateways: tuple[Gateway, ...]
    """The rule's gateways, in order."""


@dataclass
class DialPlan:
    """Gateways, ordered rules and user policies, compiled for fast lookup."""

    gateways: dict[str, Gateway] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    users: dict[str, UserPolicy] = field(default_factory=dict)
    default_callback: str = ""
    """The emergency callback number of a caller without one of their own."""
    probe_interval: float = 10.0
    """Seconds between OPTIONS probes of each gateway (0: no probes, all count as up)."""
    probe_misses: int = 3
    """Probes in a row without an answer that mark a gateway down."""
    locations: list[Location] = field(default_factory=list)
    """Callback numbers by the caller's network, the most specific first."""
    trusted: TrustedPeers = field(default_factory=TrustedPeers)
    """Carriers and gateways trusted by source address: never challenged, never relayed."""
    ring_groups: RingGroups = field(default_factory=RingGroups)
    """Numbers that ring several users (``sipcore.ring_groups``)."""
    limits: Limits = field(default_factory=Limits)
    """Concurrent calls per user and per gateway (``sipcore.call_limits``)."""
    _by_prefix: dict[str, list[tuple[Rule, re.Pattern[str]]]] = field(
        default_factory=dict, init=False, repr=False
    )
    _owners: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name, policy in self.users.items():
            for number in policy.numbers:
                self._owners.setdefault(number, name)
        for rule in self.rules:
            literal, regex = compile_pattern(rule.pattern)
            self._by_prefix.setdefault(literal, []).append((rule, regex))

    @property
    def emergency_gateways(self) -> tuple[Gateway, ...]:
        """The gateways that take emergency calls, in the order they were listed."""
        return tuple(g for g in self.gateways.values() if g.emergency)

    def match(self, number: str) -> Match | None:
        """The first rule (in plan order) whose pattern takes ``number``, or None."""
        best: tuple[Rule, re.Pattern[str]] | None = None
        groups = self._by_prefix
        for end in range(len(number) + 1):
            group = groups.get(number[:end])
            if group is None:
                continue
            for rule, regex in group:
                if best is not None and rule.index > best[0].index:
                    break
                if regex.fullmatch(number):
                    best = (rule, regex)
                    break
        if best is None:
            return None
        rule = best[0]
        return Match(rule, rule.rewrite(number), tuple(self.gateways[n] for n in rule.gateways))

    def owner(self, number: str) -> str | None:
        """The user whose extension or DID ``number`` is, or None."""
        return self._owners.get(number)

    def policy(self, user: str) -> UserPolicy:
        """The policy of ``user`` (none: no permission, no caller ID)."""
        return self.users.get(user, NO_POLICY)

    def callback(self, user: str | None, source: str | None = None) -> str:
        """The emergency callback number for ``user`` (None: an unknown caller) calling
        from address ``source``: the user's own, else that of the location the source
        is in, else the user's caller ID, else the plan's default."""
        policy = self.users.get(user, NO_POLICY) if user else NO_POLICY
        return (
            policy.emergency_callback
            or self.location_callback(source)
            or policy.caller_id
            or self.default_callback
        )

    def location_callback(self, source: str | None) -> str:
        """The callback number of the most specific location holding ``source``, or ""."""
        loc = self.location(source)
        return loc.callback if loc is not None else ""

    def location(self, source: str | None) -> Location | None:
        """The most specific location holding the address ``source``, or None."""
        if not source or not self.locations:
            return None
        try:
            address = ipaddress.ip_address(source.strip("[]"))
        except ValueError:
            return None
        for loc in self.locations:
            if address.version == loc.network.version and address in loc.network:
                return loc
        return None


def compile_pattern(pattern: str) -> tuple[str, re.Pattern[str]]:
    """``(literal prefix, regular expression)`` of a dial pattern; ``DialPlanError``
    saying what is wrong with one that cannot be compiled."""
    if not isinstance(pattern, str) or not pattern:
        raise DialPlanError("pattern must be a non-empty string")
    if len(pattern) > MAX_PATTERN:
        raise DialPlanError(f"pattern {pattern[:20]!r}... is longer than {MAX_PATTERN}")
    parts: list[str] = []
    literal = ""
    wild = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == ".":
            if i != len(pattern) - 1:
                raise DialPlanError(f"pattern {pattern!r}: '.' (the tail) must come last")
            if i == 0:
                raise DialPlanError(
                    f"pattern {pattern!r}: a tail alone would take every "
                    "number; write at least one digit or wildcard before it"
                )
            parts.append("[0-9*#]+")
        elif c in _LITERAL:
            parts.append(re.escape(c))
            if not wild:
                literal += c
        elif c in _CLASSES:
            parts.append(_CLASSES[c])
            wild = True
        elif c == "[":
            m = _CLASS.match(pattern, i)
            if m is None:
                raise DialPlanError(
                    f"pattern {pattern!r}: bad class at position {i + 1} "
                    "(write e.g. [2-9] or [147])"
                )
            parts.append(m.group(0))
            wild = True
            i = m.end()
            continue
        else:
            raise DialPlanError(
                f"pattern {pattern!r}: {c!r} at position {i + 1} is not a "
                "digit, +, *, #, x, N, Z, [class] or a final '.'"
            )
        i += 1
    return literal, re.compile("".join(parts))


# -- the document --------------------------------------------------------------------
def _fail(where: str, what: str) -> DialPlanError:
    return DialPlanError(f"{where}: {what}")


def _str(
    body: dict[str, Any],
    key: str,
    where: str,
    default: str = "",
    regex: re.Pattern[str] | None = None,
) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise _fail(where, f"{key} must be a string, not {value!r}")
    if value and regex is not None and not regex.fullmatch(value):
        raise _fail(where, f"{key} {value!r} is not valid")
    return value


def _number(body: dict[str, Any], key: str, where: str) -> str:
    value = _str(body, key, where)
    if value and not is_number(value):
        raise _fail(where, f"{key} must be a number (+, digits), not {value!r}")
    return value


def _keys(body: Any, allowed: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _fail(where, "must be a table")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _fail(where, f"unknown setting {unknown[0]}")
    return body


_GATEWAY_KEYS = frozenset({"name", "host", "port", "transport", "prefix", "emergency"})
_RULE_KEYS = frozenset({"pattern", "strip", "prepend", "gateways", "permission"})
_USER_KEYS = frozenset({"permissions", "caller_id", "emergency_callback", "numbers"})
_PLAN_KEYS = frozenset(
    {
        "gateways",
        "rules",
        "users",
        "default_callback",
        "probe_interval",
        "probe_misses",
        "locations",
        "trusted",
        "groups",
        "limits",
    }
)
_LOCATION_KEYS = frozenset({"network", "callback", "name", "address"})
_PLACE = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
"""A location's name or civic address: printable, one line, at most 200 characters."""


def parse_gateway(body: Any, where: str) -> Gateway:
    """One gateway table; ``DialPlanError`` naming ``where`` when it is wrong."""
    body = _keys(body, _GATEWAY_KEYS, where)
    name = _str(body, "name", where, regex=_NAME)
    if not name:
        raise _fail(where, "name is required")
    host = _str(body, "host", where, regex=_HOST)
    if not host:
        raise _fail(where, "host is required")
    port = body.get("port")
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536
    ):
        raise _fail(where, f"port must be 1-65535, not {port!r}")
    transport = body.get("transport")
    if transport is not None and transport not in _TRANSPORTS:
        raise _fail(where, f"transport must be one of {', '.join(_TRANSPORTS)}, not {transport!r}")
    prefix = _str(body, "prefix", where)
    if prefix and not re.fullmatch(r"[0-9*#+]{1,16}", prefix):
        raise _fail(where, f"prefix must be up to 16 digits, not {prefix!r}")
    emergency = body.get("emergency", False)
    if not isinstance(emergency, bool):
        raise _fail(where, f"emergency must be true or false, not {emergency!r}")
    return Gateway(name, host, port, transport, prefix, emergency)


def parse_rule(body: Any, index: int, gateways: dict[str, Gateway], where: str) -> Rule:
    """One rule table, its gateways checked against ``gateways``."""
    body = _keys(body, _RULE_KEYS, where)
    pattern = body.get("pattern")
    try:
        compile_pattern(pattern)
    except DialPlanError as e:
        raise _fail(where, str(e)) from None
    strip = body.get("strip", 0)
    if not isinstance(strip, int) or isinstance(strip, bool) or not 0 <= strip <= MAX_PATTERN:
        raise _fail(where, f"strip must be 0-{MAX_PATTERN}, not {strip!r}")
    prepend = _str(body, "prepend", where)
    if prepend and not re.fullmatch(r"[0-9*#+]{1,16}", prepend):
        raise _fail(where, f"prepend must be up to 16 digits, not {prepend!r}")
    names = body.get("gateways")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _fail(where, "gateways must be a non-empty list of gateway names")
    for n in names:
        if n not in gateways:
            raise _fail(where, f"no gateway named {n!r}")
    permission = _str(body, "permission", where, regex=_PERMISSION)
    return Rule(index, pattern, tuple(names), strip, prepend, permission)


def parse_user(body: Any, where: str) -> UserPolicy:
    """One user's policy table."""
    body = _keys(body, _USER_KEYS, where)
    perms = body.get("permissions", [])
    if not isinstance(perms, list) or not all(
        isinstance(p, str) and _PERMISSION.fullmatch(p) for p in perms
    ):
        raise _fail(where, "permissions must be a list of names (lower case, e.g. local)")
    numbers = body.get("numbers", [])
    if (
        not isinstance(numbers, list)
        or len(numbers) > MAX_NUMBERS
        or not all(isinstance(n, str) and len(n) <= MAX_PATTERN and is_number(n) for n in numbers)
    ):
        raise _fail(
            where,
            f"numbers must be a list of at most {MAX_NUMBERS} numbers "
            '(+, digits), e.g. ["201", "+15551230201"]',
        )
    if len(set(numbers)) != len(numbers):
        raise _fail(where, "numbers lists a number twice")
    caller_id = _number(body, "caller_id", where)
    if caller_id and numbers and caller_id not in numbers:
        # The identity a user's calls present is a number the user owns.
        raise _fail(where, f"caller_id {caller_id!r} is not one of the user's numbers")
    return UserPolicy(
        frozenset(perms), caller_id, _number(body, "emergency_callback", where), tuple(numbers)
    )


def parse_location(body: Any, where: str) -> Location:
    """One location table: ``network`` (``10.1.0.0/16``), its ``callback`` number and
    optional ``name`` and civic ``address``."""
    body = _keys(body, _LOCATION_KEYS, where)
    text = _str(body, "network", where)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _fail(
            where, f"network must be an address block such as 10.1.0.0/16, not {text!r}"
        ) from None
    callback = _number(body, "callback", where)
    if not callback:
        raise _fail(where, "callback is required")
    return Location(
        network,
        callback,
        _str(body, "name", where, regex=_PLACE),
        _str(body, "address", where, regex=_PLACE),
    )


def parse_dialplan(doc: Any) -> DialPlan:
    """A ``DialPlan`` from its document (``{"gateways": [...], "rules": [...],
    "users": {name: {...}}, ...}``); ``DialPlanError`` naming the first faulty entry."""
    if doc is None:
        return DialPlan()
    doc = _keys(doc, _PLAN_KEYS, "dialplan")
    raw_gateways = doc.get("gateways", [])
    raw_rules = doc.get("rules", [])
    raw_users = doc.get("users", {})
    if not isinstance(raw_gateways, list) or len(raw_gateways) > MAX_GATEWAYS:
        raise _fail("dialplan.gateways", f"must be a list of at most {MAX_GATEWAYS}")
    if not isinstance(raw_rules, list) or len(raw_rules) > MAX_RULES:
        raise _fail("dialplan.rules", f"must be a list of at most {MAX_RULES}")
    if not isinstance(raw_users, dict) or len(raw_users) > MAX_USERS:
        raise _fail("dialplan.users", f"must be a table of at most {MAX_USERS}")
    gateways: dict[str, Gateway] = {}
    for k, body in enumerate(raw_gateways):
        gw = parse_gateway(body, f"dialplan.gateways[{k}]")
        if gw.name in gateways:
            raise _fail(f"dialplan.gateways[{k}]", f"a second gateway named {gw.name!r}")
        gateways[gw.name] = gw
    rules = [
        parse_rule(body, k, gateways, f"dialplan.rules[{k}]") for k, body in enumerate(raw_rules)
    ]
    users = {}
    for name, body in raw_users.items():
        if not isinstance(name, str) or not name or len(name) > 128:
            raise _fail("dialplan.users", f"bad user name {name!r}")
        users[name] = parse_user(body, f"dialplan.users.{name}")
    owners: dict[str, str] = {}
    for name, policy in users.items():
        for number in policy.numbers:
            if owners.setdefault(number, name) != name:
                raise _fail(
                    f"dialplan.users.{name}", f"number {number} is already {owners[number]}'s"
                )
    for name, policy in users.items():
        # A caller ID presents a number the user owns; never one that is another user's.
        if owners.get(policy.caller_id, name) != name:
            raise _fail(
                f"dialplan.users.{name}",
                f"caller_id {policy.caller_id} is {owners[policy.caller_id]}'s number",
            )
    interval = doc.get("probe_interval", 10.0)
    if (
        not isinstance(interval, int | float)
        or isinstance(interval, bool)
        or not (interval == 0 or 0.05 <= interval <= 3600)
    ):
        raise _fail("dialplan", f"probe_interval must be 0 or 0.05-3600 s, not {interval!r}")
    misses = doc.get("probe_misses", 3)
    if not isinstance(misses, int) or isinstance(misses, bool) or not 1 <= misses <= 100:
        raise _fail("dialplan", f"probe_misses must be 1-100, not {misses!r}")
    raw_locations = doc.get("locations", [])
    if not isinstance(raw_locations, list) or len(raw_locations) > MAX_LOCATIONS:
        raise _fail("dialplan.locations", f"must be a list of at most {MAX_LOCATIONS}")
    locations = sorted(
        (parse_location(body, f"dialplan.locations[{k}]") for k, body in enumerate(raw_locations)),
        key=lambda loc: -loc.network.prefixlen,
    )
    try:
        trusted = parse_trusted(doc.get("trusted"))
    except TrustedError as e:
        raise DialPlanError(str(e)) from None
    try:
        ring_groups = parse_groups(doc.get("groups"), owners)
        limits = parse_limits(doc.get("limits"), gateways)
    except (RingGroupError, LimitsError) as e:
        raise DialPlanError(str(e)) from None
    return DialPlan(
        gateways,
        rules,
        users,
        _number(doc, "default_callback", "dialplan"),
        float(interval),
        misses,
        locations,
        trusted,
        ring_groups=ring_groups,
        limits=limits,
    )
