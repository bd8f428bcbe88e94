"""RFC 3263 server location as a sans-IO state machine.

Given the parts of a SIP URI, the :class:`Locator` says which DNS lookups to
make, takes their results as plain values and ends with the ordered list of
:class:`Target` to try. It never touches the network, the clock or the
random source of the process: the I/O side (``actors/dns.py``) performs the
lookups and passes a ``random.Random``-like object for SRV weighting.

The machine walks at most three phases, each a batch of independent queries
that the driver may run in any order or all at once::

    step "naptr"    one NAPTR query for the URI host
    step "srv"      SRV queries: the replacements of the usable NAPTRs, or
                    _sips._tcp, _sip._tcp, _sip._udp when there is none,
                    or the one SRV name of an explicit transport
    step "address"  A/AAAA queries for every SRV target, or for the URI
                    host on the explicit or default port
    step "done"     :attr:`Locator.targets` holds the result

Which phase comes first follows RFC 3263 §4.1/§4.2: an IP literal needs no
lookup at all, an explicit port goes straight to "address", an explicit
transport without a port starts at "srv", and anything else at "naptr".
A driver loop looks like this (:func:`locate` is exactly that)::

    loc = Locator(host, port, transport, scheme)
    while not loc.done:
        for query in loc.pending():
            loc.feed(query, lookup(query))
    targets = loc.targets

A failed lookup (NXDOMAIN, no data, timeout) is fed as an empty list.
"""

import ipaddress
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

SUPPORTED_TRANSPORTS = ("udp", "tcp", "tls")
"""Every transport the locator knows, in no particular order."""

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
"""The port used when neither the URI nor an SRV record gives one."""

NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
"""NAPTR service fields understood, with the transport each one means."""

SRV_PREFIXES = {"tls": "_sips._tcp", "tcp": "_sip._tcp", "udp": "_sip._udp"}
"""SRV owner-name prefix per transport (RFC 3263 §4.2)."""

SRV_PREFERENCE = ("tls", "tcp", "udp")
"""Order of the SRV queries made when no usable NAPTR exists."""


@dataclass(frozen=True)
class Target:
    """One place to send a request to, in the order the proxy should try."""

    host: str
    """IP address to connect to (or the URI host when it is a literal)."""
    port: int
    """Port to connect to."""
    transport: str
    """``"udp"``, ``"tcp"`` or ``"tls"``."""
    name: str = ""
    """DNS name the address was found under (SRV target or URI host)."""


@dataclass(frozen=True)
class Query:
    """A DNS lookup the locator wants the driver to make."""

    name: str
    """Owner name, lower case, without the trailing dot."""
    rdtype: str
    """``"NAPTR"``, ``"SRV"``, ``"A"`` or ``"AAAA"``."""


@dataclass(frozen=True)
class Naptr:
    """The fields of a NAPTR record (RFC 3403) that server location uses."""

    order: int
    """Lower orders are used first."""
    preference: int
    """Lower preferences are used first within one order."""
    flags: str
    """``"s"`` means the replacement is an SRV owner name."""
    service: str
    """e.g. ``"SIP+D2U"``."""
    regexp: str
    """Unused by SIP; kept for completeness."""
    replacement: str
    """SRV owner name, without the trailing dot."""


@dataclass(frozen=True)
class Srv:
    """The fields of an SRV record (RFC 2782)."""

    priority: int
    """Lower priorities are used first."""
    weight: int
    """Relative share of traffic within one priority."""
    port: int
    """Port of the service on the target."""
    target: str
    """Host name of the target, without the trailing dot; ``"."`` or
    ``""`` means the service is not offered."""


def is_ip_literal(host: str) -> bool:
    """True when ``host`` is an IPv4 or IPv6 address (brackets allowed)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class _Weighted(Protocol):
    @property
    def priority(self) -> int: ...
    @property
    def weight(self) -> int: ...


_S = TypeVar("_S", bound=_Weighted)


def srv_order(records: Iterable[_S], rng: random.Random) -> list[_S]:
    """Order SRV-like ``records`` as RFC 2782 asks.

    Records need ``priority`` and ``weight`` attributes. Lower priorities
    come first; within one priority the records are drawn one by one, each
    with a chance proportional to its weight: zero-weight records are put
    first before the running sums are computed, so they are picked only
    when ``rng.randint(0, total)`` returns 0 (and in their given order when
    every weight is zero). ``rng`` is a ``random.Random``-like object.
    """
    records = list(records)
    ordered = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        group = [r for r in group if r.weight == 0] + [r for r in group if r.weight != 0]
        while group:
            pick = rng.randint(0, sum(r.weight for r in group))
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    ordered.append(group.pop(index))
                    break
    return ordered


def naptr_order(
    records: Iterable[Naptr], scheme: str = "sip", supported: Iterable[str] = SUPPORTED_TRANSPORTS
) -> list[tuple[str, str]]:
    """Usable NAPTR records as ``(srv_name, transport)``, best first.

    Keeps flag ``"s"`` records whose service is SIP+D2U, SIP+D2T or
    SIPS+D2T (only SIPS+D2T for a sips URI) over a supported transport,
    sorted by order, then preference.
    """
    supported = set(supported)
    usable = []
    for record in records:
        transport = NAPTR_SERVICES.get(record.service.upper())
        if (
            record.flags.lower() != "s"
            or transport is None
            or transport not in supported
            or (scheme == "sips" and transport != "tls")
            or record.replacement in ("", ".")
        ):
            continue
        usable.append(record)
    usable.sort(key=lambda r: (r.order, r.preference))
    return [(_norm(r.replacement), NAPTR_SERVICES[r.service.upper()]) for r in usable]


def srv_name(transport: str, host: str) -> str:
    """The SRV owner name for ``transport`` at ``host``."""
    return f"{SRV_PREFIXES[transport]}.{_norm(host)}"


def uri_transport(transport: str | None, scheme: str) -> str | None:
    """The locator transport for a URI ``transport`` parameter.

    Returns ``None`` when the parameter is absent and ``""`` when it names
    something this locator cannot use (e.g. ``sctp``, or ``udp`` in a sips
    URI). In a sips URI ``transport=tcp`` means TLS.
    """
    if transport is None:
        return None
    value = transport.lower()
    if scheme == "sips":
        return "tls" if value in ("tcp", "tls") else ""
    return value if value in SUPPORTED_TRANSPORTS else ""


def _norm(name: str) -> str:
    return name.strip("[]").rstrip(".").lower()


class Locator:
    """The RFC 3263 state machine for one URI; see the module docstring.

    ``host``, ``port`` (``None`` when absent), ``transport`` (the URI's
    transport parameter or ``None``) and ``scheme`` (``"sip"``/``"sips"``)
    come from the URI. ``is_ip`` overrides the IP-literal detection,
    ``supported`` lists the transports the caller can use, ``families``
    the address lookups to make, in order, and ``rng`` orders SRV records.
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        transport: str | None = None,
        scheme: str = "sip",
        *,
        is_ip: bool | None = None,
        supported: Iterable[str] = SUPPORTED_TRANSPORTS,
        families: Sequence[str] = ("A", "AAAA"),
        rng: random.Random | None = None,
    ):
        scheme = scheme.lower()
        if scheme not in ("sip", "sips"):
            raise ValueError(f"not a SIP URI scheme: {scheme!r}")
        self.scheme = scheme
        """``"sip"`` or ``"sips"``."""
        self.host = _norm(host)
        """URI host, normalised (no brackets, no trailing dot)."""
        self.step = "done"
        """Current phase: ``naptr``, ``srv``, ``address`` or ``done``."""
        self.reason = ""
        """Why :attr:`targets` is empty, when it is."""
        self._supported = {t for t in supported if t in SUPPORTED_TRANSPORTS}
        self._families = tuple(families)
        self._rng = rng if rng is not None else random.Random()
        self._targets: list[Target] = []
        self._pending: dict[Query, None] = {}
        self._answers: dict[Query, tuple[Any, ...]] = {}
        self._srv_plan: list[tuple[Query, str]] = []
        self._address_plan: list[tuple[str, int, str]] = []
        self._fallback = ""
        self._start(
            port, uri_transport(transport, scheme), is_ip_literal(host) if is_ip is None else is_ip
        )

    @property
    def done(self) -> bool:
        """True once no more lookups are needed."""
        return self.step == "done"

    @property
    def targets(self) -> list[Target]:
        """The targets in the order to try; only valid when :attr:`done`."""
        if not self.done:
            raise RuntimeError(f"locator still in step {self.step!r}")
        return list(self._targets)

    def pending(self) -> tuple[Query, ...]:
        """The queries of the current phase that still need an answer."""
        return tuple(self._pending)

    def feed(self, query: Query, records: Iterable[Any] | None) -> None:
        """Give the answer to a pending ``query``.

        ``records`` are :class:`Naptr` for NAPTR, :class:`Srv` for SRV and
        address strings for A/AAAA; ``None`` or empty means no data.
        """
        if query not in self._pending:
            raise ValueError(f"query not pending: {query}")
        del self._pending[query]
        self._answers[query] = tuple(records or ())
        if not self._pending:
            self._advance()

    def _default_transport(self) -> str:
        if self.scheme == "sips":
            return "tls"
        for transport in ("udp", "tcp", "tls"):
            if transport in self._supported:
                return transport
        return "udp"

    def _start(self, port: int | None, transport: str | None, is_ip: bool | None) -> None:
        if transport == "":
            self._finish("transport not supported")
            return
        chosen = transport or self._default_transport()
        if chosen not in self._supported:
            self._finish(f"transport {chosen} not supported")
        elif is_ip:
            self._finish("", [Target(self.host, port or DEFAULT_PORTS[chosen], chosen, self.host)])
        elif port is not None:
            self._address_step([(self.host, port, chosen)])
        elif transport:
            self._fallback = transport
            self._srv_step([(Query(srv_name(transport, self.host), "SRV"), transport)])
        else:
            self.step = "naptr"
            self._pending = {Query(self.host, "NAPTR"): None}

    def _advance(self) -> None:
        if self.step == "naptr":
            self._after_naptr()
        elif self.step == "srv":
            self._after_srv()
        elif self.step == "address":
            self._after_address()

    def _after_naptr(self) -> None:
        records = self._answers[Query(self.host, "NAPTR")]
        usable = naptr_order(records, self.scheme, self._supported)
        if usable:
            self._fallback = usable[0][1]
            plan = [(Query(name, "SRV"), t) for name, t in usable]
        else:
            self._fallback = self._default_transport()
            allowed = ("tls",) if self.scheme == "sips" else SRV_PREFERENCE
            plan = [
                (Query(srv_name(t, self.host), "SRV"), t) for t in allowed if t in self._supported
            ]
        self._srv_step(plan)

    def _srv_step(self, plan: list[tuple[Query, str]]) -> None:
        self.step = "srv"
        self._srv_plan = plan
        self._pending = {query: None for query, _ in plan}
        if not self._pending:
            self._finish("no transport to look up")

    def _after_srv(self) -> None:
        found = False
        plan = []
        for query, transport in self._srv_plan:
            records = self._answers.get(query, ())
            found = found or bool(records)
            for record in srv_order(records, self._rng):
                if _norm(record.target) not in ("", "."):
                    plan.append((_norm(record.target), record.port, transport))
        if not found:
            plan = [(self.host, DEFAULT_PORTS[self._fallback], self._fallback)]
        if not plan:
            self._finish("service not available (SRV target '.')")
        else:
            self._address_step(plan)

    def _address_step(self, plan: list[tuple[str, int, str]]) -> None:
        self.step = "address"
        self._address_plan = plan
        self._pending = {
            Query(name, family): None
            for name, _, _ in plan
            if not is_ip_literal(name)
            for family in self._families
        }
        if not self._pending:
            self._after_address()

    def _after_address(self) -> None:
        targets: list[Target] = []
        for name, port, transport in self._address_plan:
            if is_ip_literal(name):
                addresses = [name]
            else:
                addresses = [
                    address
                    for family in self._families
                    for address in self._answers.get(Query(name, family), ())
                ]
            targets.extend(Target(address, port, transport, name) for address in addresses)
        seen = set()
        unique = []
        for target in targets:
            key = (target.host, target.port, target.transport)
            if key not in seen:
                seen.add(key)
                unique.append(target)
        self._finish("" if unique else "no address found", unique)

    def _finish(self, reason: str, targets: list[Target] | None = None) -> None:
        self.step = "done"
        self.reason = reason
        self._pending = {}
        self._targets = targets or []


def locate(
    host: str,
    port: int | None,
    transport: str | None,
    scheme: str,
    lookup: Callable[[Query], Iterable[Any] | None],
    **options: Any,
) -> list[Target]:
    """Drive a :class:`Locator` with a blocking ``lookup(query)`` callable.

    ``options`` go to :class:`Locator` (``is_ip``, ``supported``,
    ``families``, ``rng``). Returns the targets in the order to try.
    """
    locator = Locator(host, port, transport, scheme, **options)
    while not locator.done:
        for query in locator.pending():
            locator.feed(query, lookup(query))
    return locator.targets
