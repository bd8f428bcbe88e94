"""What a node takes at most: the ``[limits]`` settings, with their one set of defaults.

``NodeConfig`` takes its ``[limits]`` defaults from ``Limits``; the
transport, the challenge front and the admission control read them from
the ``Limits`` a configuration makes (``Limits.from_config``).
"""

import mmap
import os
import time
from dataclasses import dataclass, field, fields

from sipcore.emergency import EmergencyNumbers
from sipcore.overload import OverloadSettings
from sipcore.ratelimit import SharedSourceLimiter, SourceLimiter
from store.files import PRIVATE_FILE

#: buckets of a shared limiter (a source's slot is a hash of its address)
SHARED_SLOTS = 1 << 16


def emergency_numbers(cfg) -> EmergencyNumbers:
    """The emergency numbers of a node's configuration (``[sip] emergency_numbers`` and
    ``outside_line_prefix``): what every defence and the dialing ask."""
    return EmergencyNumbers(frozenset(cfg.emergency_numbers), cfg.outside_line_prefix)


@dataclass(frozen=True)
class Limits:
    """What a transport takes at most (the ``[limits]`` settings)."""

    udp_rate: float = 200.0
    """Datagrams per second one source may send (token bucket; 0: no limit)."""
    udp_burst: int = 400
    """Datagrams one source may send at once above ``udp_rate``."""
    tcp_max_connections: int = 2000
    """TCP and TLS connections at once (a new one past it closes the one silent the longest)."""
    tcp_max_per_source: int = 32
    """Connections from one IP address at once."""
    tcp_idle_timeout: float = 300.0
    """Seconds a TCP connection may stay silent (a CRLF keep-alive counts) before it is closed."""
    tcp_header_timeout: float = 10.0
    """Seconds a message may take from its first byte to its last over TCP."""
    max_message_size: int = 65535
    """Largest SIP message taken (bytes); a larger one over TCP gets 513, then
    the connection closes."""
    log_rate: float = 20.0
    """Lines per second and per kind of event about bad input (the rest are counted, not logged)."""
    overload_delay: float = OverloadSettings.delay
    """Seconds a new request may have waited to be read before the node sheds it (0: never)."""
    overload_interval: float = OverloadSettings.interval
    """Seconds every message must have waited over ``overload_delay`` before the node
    counts as overloaded."""
    overload_response: str = OverloadSettings.response
    """What a shed request gets: ``"503"`` (with Retry-After) or ``"drop"``."""
    overload_retry_after: int = OverloadSettings.retry_after
    """Retry-After seconds of the overload 503 (spread up to twice that)."""
    emergency_numbers: EmergencyNumbers = field(default_factory=EmergencyNumbers)
    """The INVITEs no limit drops (``[sip] emergency_numbers`` and ``outside_line_prefix``)."""

    @classmethod
    def from_config(cls, cfg) -> "Limits":
        """The limits a node's configuration sets."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls)}
        values["emergency_numbers"] = emergency_numbers(cfg)
        return cls(**values)

    def limiter(self, shared: str | None = None) -> SourceLimiter | SharedSourceLimiter | None:
        """The per-source UDP limiter, None when off. With ``shared``, its buckets live
        in that file (created 0600), which the node and its challenge front both map:
        one budget per source for the two processes."""
        if self.udp_rate <= 0:
            return None
        if shared is None:
            return SourceLimiter(self.udp_rate, self.udp_burst)
        size = SharedSourceLimiter.size(SHARED_SLOTS)
        fd = os.open(shared, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
            buffer = memoryview(mmap.mmap(fd, size))
        finally:
            os.close(fd)
        return SharedSourceLimiter(buffer, self.udp_rate, self.udp_burst)

    def over_rate(
        self, limiter: SourceLimiter | SharedSourceLimiter | None, ip: str, data: bytes
    ) -> bool:
        """Whether the datagram ``data`` from ``ip`` is over its source's rate
        (``limiter``; None: no limit) and is dropped unread; an emergency INVITE never
        is. The node's transport and the challenge front both ask it."""
        return (
            limiter is not None
            and not limiter.allow(ip, time.monotonic())
            and not self.emergency_numbers.invite(data)
        )

    def overload(self) -> OverloadSettings:
        """The admission control's settings."""
        return OverloadSettings(
            delay=self.overload_delay,
            interval=self.overload_interval,
            response=self.overload_response,
            retry_after=self.overload_retry_after,
        )


#: a transport's limits when none are given: no per-source UDP limit, no shedding
NO_LIMITS = Limits(udp_rate=0.0, overload_delay=0.0)


def shared_buckets(cfg) -> str | None:
    """The file of the per-source buckets a node shares with its challenge front (None
    without a front)."""
    return os.path.join(cfg.data_dir, "buckets") if cfg.challenge_front else None


#: the ``[limits]`` settings a configuration file may give (every field but the emergency numbers)
SETTINGS = tuple(f.name for f in fields(Limits) if f.name != "emergency_numbers")
