"""What a node takes at most: the ``[limits]`` settings, with their one set of defaults.

``NodeConfig`` takes its ``[limits]`` defaults from ``Limits``; the
transport, the challenge front and the admission control read them from
the ``Limits`` a configuration makes (``Limits.from_config``).
"""

from dataclasses import dataclass, fields

from sipcore.overload import OverloadSettings
from sipcore.ratelimit import SourceLimiter


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
    emergency_numbers: frozenset = frozenset()
    """Request-URI users of INVITEs no limit drops (``[sip] emergency_numbers``)."""

    @classmethod
    def from_config(cls, cfg) -> "Limits":
        """The limits a node's configuration sets."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls)}
        values["emergency_numbers"] = frozenset(cfg.emergency_numbers)
        return cls(**values)

    def limiter(self) -> SourceLimiter | None:
        """The per-source UDP limiter, None when off."""
        return SourceLimiter(self.udp_rate, self.udp_burst) if self.udp_rate > 0 else None

    def overload(self) -> OverloadSettings:
        """The admission control's settings."""
        return OverloadSettings(delay=self.overload_delay, interval=self.overload_interval,
                                response=self.overload_response,
                                retry_after=self.overload_retry_after)


#: a transport's limits when none are given: no per-source UDP limit, no shedding
NO_LIMITS = Limits(udp_rate=0.0, overload_delay=0.0)

#: the ``[limits]`` settings a configuration file may give (every field but the emergency numbers)
SETTINGS = tuple(f.name for f in fields(Limits) if f.name != "emergency_numbers")
