"""RFC 3263 server location over real DNS, for the proxy.

:class:`Resolver` drives the sans-IO :class:`sipcore.rfc3263.Locator` with
dnspython: each phase's queries (NAPTR, then SRV, then A/AAAA) run in
parallel greenlets, answers are kept in a TTL-bounded cache, and the whole
resolution is bounded by one ``timeout``. dnspython blocks only the calling
greenlet once the process has called ``gevent.monkey.patch_all()`` (the
node's entry point does; this module never patches).

The proxy calls :meth:`Resolver.resolve` from the greenlet that handles the
request (never from an actor's inbox loop, since it may wait on the
network) and tries the targets in the order given, moving to the next on a
transport error, a timeout or a 503.
"""

import logging
import random
import time
from collections.abc import Callable, Iterable

import dns.exception
import dns.name
import dns.resolver
import gevent
from gevent import monkey

from sipcore.rfc3263 import SUPPORTED_TRANSPORTS, Locator, Naptr, Query, Srv, Target

logger = logging.getLogger(__name__)

NEGATIVE_TTL_CAP = 30.0
"""Longest time, in seconds, a negative answer (NXDOMAIN, NODATA) is kept."""

MAX_TTL = 86400.0
"""Longest time, in seconds, a positive answer is kept."""


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _naptr(rdata) -> Naptr:
    return Naptr(
        rdata.order,
        rdata.preference,
        rdata.flags.decode("ascii", "replace"),
        rdata.service.decode("ascii", "replace"),
        rdata.regexp.decode("ascii", "replace"),
        _text(rdata.replacement),
    )


def _srv(rdata) -> Srv:
    return Srv(rdata.priority, rdata.weight, rdata.port, _text(rdata.target))


_CONVERT = {
    "NAPTR": _naptr,
    "SRV": _srv,
    "A": lambda rdata: rdata.address,
    "AAAA": lambda rdata: rdata.address,
}


class Resolver:
    """Finds the SIP servers for a URI (RFC 3263) with a caching resolver.

    ``nameservers`` are IP addresses queried on ``port``; ``None`` reads the
    system configuration (``/etc/resolv.conf``). ``timeout`` bounds one
    whole :meth:`resolve` call, in seconds; one attempt at one server gets
    a third of it, so a lost datagram or a dead first server leaves time
    for a retry. ``rng``, a ``random.Random``-like object, orders SRV
    records by weight. Keyword options: ``clock`` (monotonic seconds, for
    the cache), ``supported`` transports, address ``families`` in order of
    preference, ``max_entries`` in the cache.
    """

    def __init__(
        self,
        nameservers: list[str] | None = None,
        port: int = 53,
        timeout: float = 2.0,
        rng=None,
        *,
        clock: Callable[[], float] = time.monotonic,
        supported: Iterable[str] = SUPPORTED_TRANSPORTS,
        families: Iterable[str] = ("A", "AAAA"),
        max_entries: int = 10000,
    ):
        if nameservers is None:
            try:
                self._resolver = dns.resolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:
                logger.warning("dns: no system resolver configuration (%s); using 127.0.0.1", exc)
                self._resolver = dns.resolver.Resolver(configure=False)
                self._resolver.nameservers = ["127.0.0.1"]
        else:
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = list(nameservers)
        self._resolver.port = port
        self._resolver.timeout = max(0.1, timeout / 3)
        self._resolver.lifetime = timeout
        self.timeout = timeout
        """Upper bound of one :meth:`resolve` call, in seconds."""
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._supported = tuple(supported)
        self._families = tuple(families)
        self._max_entries = max_entries
        self._cache: dict[tuple[str, str], tuple[float, tuple]] = {}
        if not monkey.is_module_patched("socket"):
            logger.warning("dns: socket is not monkey-patched; lookups will block every greenlet")

    @property
    def nameservers(self) -> list[str]:
        """The name servers queried, in order."""
        return [str(server) for server in self._resolver.nameservers]

    def resolve(
        self,
        uri_host: str,
        port: int | None = None,
        transport: str | None = None,
        scheme: str = "sip",
    ) -> list[Target]:
        """The targets for a SIP URI, in the order to try them.

        ``uri_host``, ``port`` (``None`` if the URI has none),
        ``transport`` (the URI's transport parameter or ``None``) and
        ``scheme`` (``"sip"`` or ``"sips"``) come from the URI. Never
        raises for DNS trouble: NXDOMAIN, a timeout or a dead server give
        fewer targets or ``[]``, with a log line.
        """
        try:
            locator = Locator(
                uri_host,
                port,
                transport,
                scheme,
                supported=self._supported,
                families=self._families,
                rng=self._rng,
            )
        except ValueError as exc:
            logger.warning("dns: cannot resolve %s: %s", uri_host, exc)
            return []
        deadline = time.monotonic() + self.timeout
        while not locator.done:
            pending = locator.pending()
            answers = self._run(pending, deadline)
            for query in pending:
                locator.feed(query, answers.get(query, ()))
        targets = locator.targets
        if targets:
            logger.debug("dns: %s:%s;transport=%s -> %s", uri_host, port, transport, targets)
        else:
            logger.info(
                "dns: no target for %s:%s;transport=%s (%s)",
                uri_host,
                port,
                transport,
                locator.reason,
            )
        return targets

    def lookup(self, name: str, rdtype: str, timeout: float | None = None) -> tuple:
        """One cached lookup of ``rdtype`` (NAPTR, SRV, A or AAAA) at
        ``name``: :class:`Naptr` or :class:`Srv` values or address strings,
        ``()`` for no data or a failure. Raises ``ValueError`` for another
        ``rdtype``."""
        if rdtype.upper() not in _CONVERT:
            raise ValueError(f"unsupported record type: {rdtype}")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        return self._lookup(Query(name.rstrip(".").lower(), rdtype.upper()), deadline)

    def _run(self, queries: tuple[Query, ...], deadline: float) -> dict[Query, tuple]:
        answers = {}
        jobs = {}
        for query in queries:
            cached = self._cached(query)
            if cached is not None:
                answers[query] = cached
            else:
                jobs[query] = gevent.spawn(self._lookup, query, deadline)
        if jobs:
            grace = max(0.0, deadline - time.monotonic()) + 0.5
            gevent.joinall(list(jobs.values()), timeout=grace)
        for query, job in jobs.items():
            if job.successful():
                answers[query] = job.value
            else:
                job.kill(block=False)
                logger.warning("dns: %s %s abandoned", query.name, query.rdtype)
        return answers

    def _cached(self, query: Query) -> tuple | None:
        entry = self._cache.get((query.name, query.rdtype))
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._cache[(query.name, query.rdtype)]
            return None
        return entry[1]

    def _store(self, query: Query, ttl: float, records: tuple) -> None:
        if ttl <= 0:
            return
        now = self._clock()
        if len(self._cache) >= self._max_entries:
            for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
                del self._cache[key]
            while len(self._cache) >= self._max_entries:
                del self._cache[next(iter(self._cache))]
        self._cache[(query.name, query.rdtype)] = (now + ttl, records)

    def _lookup(self, query: Query, deadline: float) -> tuple:
        cached = self._cached(query)
        if cached is not None:
            return cached
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            logger.warning("dns: %s %s skipped, time is up", query.name, query.rdtype)
            return ()
        timer = gevent.Timeout(remaining)
        timer.start()
        try:
            answer = self._resolver.resolve(
                dns.name.from_text(query.name),
                query.rdtype,
                search=False,
                raise_on_no_answer=False,
                lifetime=remaining,
            )
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            logger.warning("dns: %s %s: timeout", query.name, query.rdtype)
            return ()
        except dns.resolver.NXDOMAIN as exc:
            logger.info("dns: %s %s: NXDOMAIN", query.name, query.rdtype)
            self._store(query, _negative_ttl(exc), ())
            return ()
        except dns.exception.Timeout:
            logger.warning("dns: %s %s: timeout", query.name, query.rdtype)
            return ()
        except dns.resolver.NoNameservers as exc:
            logger.warning("dns: %s %s: no server answered: %s", query.name, query.rdtype, exc)
            return ()
        except Exception as exc:
            logger.warning(
                "dns: %s %s failed: %s", query.name, query.rdtype, exc or type(exc).__name__
            )
            return ()
        finally:
            timer.close()
        ttl = float(answer.chaining_result.minimum_ttl)
        if answer.rrset is None:
            self._store(query, min(ttl, NEGATIVE_TTL_CAP), ())
            return ()
        records = tuple(_CONVERT[query.rdtype](rdata) for rdata in answer.rrset)
        self._store(query, min(ttl, MAX_TTL), records)
        return records


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> float:
    """Negative TTL of an NXDOMAIN (RFC 2308), capped."""
    ttl = NEGATIVE_TTL_CAP
    for response in exc.responses().values():
        try:
            ttl = min(ttl, response.resolve_chaining().minimum_ttl)
        except (dns.exception.DNSException, AttributeError):
            continue
    return ttl
