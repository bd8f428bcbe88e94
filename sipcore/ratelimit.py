"""Rate limits, sans-IO: per-source token buckets and a per-kind log limiter.

The transport asks ``SourceLimiter.allow(ip, now)`` for every datagram
before it parses it (pike-style), so a flooding address costs one dict
look-up per datagram and cannot crowd out the others. ``LogLimiter`` keeps
a flood of garbage from filling the disk: a few lines per second per kind
of event, the rest counted and summed up in the next line let through.
Both take ``now`` (a monotonic clock) and bound their tables.
"""

import hashlib
import struct


class SourceLimiter:
    """One token bucket per source address: ``rate`` tokens a second, at most ``burst``.

    When the table of sources is full, buckets that have refilled (they are
    as if new) are dropped first; if none has, the table starts over, which
    lets a source's burst through again but never grows memory.
    """

    __slots__ = ("rate", "burst", "max_sources", "_buckets", "dropped")

    def __init__(self, rate: float, burst: int, max_sources: int = 100_000):
        """``rate`` > 0 datagrams per second and per source, ``burst`` >= 1."""
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_sources = max_sources
        #: source -> [tokens, time of the last refill]
        self._buckets: dict[str, list[float]] = {}
        self.dropped = 0

    def __len__(self) -> int:
        """Sources tracked."""
        return len(self._buckets)

    def allow(self, source: str, now: float) -> bool:
        """Take a token from ``source``'s bucket; False (and counted) when it is empty."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._sweep(now)
            self._buckets[source] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            self.dropped += 1
            return False
        bucket[0] = tokens - 1.0
        return True

    def _sweep(self, now: float) -> None:
        full = self.burst / self.rate
        buckets = self._buckets
        for source in [s for s, (_, last) in buckets.items() if now - last >= full]:
            del buckets[source]
        if len(buckets) >= self.max_sources:
            buckets.clear()


class SharedSourceLimiter:
    """``SourceLimiter``'s buckets in a buffer that several processes map (the node and
    its challenge front), so that a source has one budget however the kernel splits
    its datagrams between them.

    The buffer holds ``slots`` fixed records (source key, tokens, last refill); a
    source's slot is chosen by a hash of its address that every process computes
    alike, and a source finding its slot held by another takes it over with a full
    bucket (a collision can give a burst again, never take one away). Two processes
    may update one slot at once and lose a token's worth of bookkeeping: the budget
    is approximate by that much, and memory is fixed.
    """

    RECORD = struct.Struct("<Qdd")

    __slots__ = ("rate", "burst", "buffer", "slots", "dropped")

    def __init__(self, buffer: bytearray | memoryview, rate: float, burst: int):
        """``buffer``: writable (a ``memoryview`` of a shared mapping), a whole
        number of ``RECORD`` sizes (zeros: all empty)."""
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.buffer = buffer
        self.slots = len(buffer) // self.RECORD.size
        if self.slots < 1:
            raise ValueError("buffer too small for one bucket")
        self.dropped = 0

    @classmethod
    def size(cls, slots: int) -> int:
        """Bytes of a buffer of ``slots`` buckets."""
        return slots * cls.RECORD.size

    def allow(self, source: str, now: float) -> bool:
        """Take a token from ``source``'s bucket; False (and counted) when it is empty."""
        key = int.from_bytes(hashlib.blake2b(source.encode(), digest_size=8).digest(), "little")
        key = key or 1
        record = self.RECORD
        offset = (key % self.slots) * record.size
        held, tokens, last = record.unpack_from(self.buffer, offset)
        if held != key:
            record.pack_into(self.buffer, offset, key, self.burst - 1.0, now)
            return True
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        if tokens < 1.0:
            record.pack_into(self.buffer, offset, key, tokens, now)
            self.dropped += 1
            return False
        record.pack_into(self.buffer, offset, key, tokens - 1.0, now)
        return True


class LogLimiter:
    """At most ``rate`` lines a second per kind of event (``burst`` at once)."""

    def __init__(self, rate: float, burst: int = 10, max_kinds: int = 1000):
        """``rate`` 0: no limit."""
        self.rate = rate
        self.burst = burst
        self.max_kinds = max_kinds
        #: kind -> [tokens, last refill, lines suppressed since the last one let through]
        self._kinds: dict[str, list[float]] = {}

    def allow(self, kind: str, now: float) -> int | None:
        """None when a line of ``kind`` must be suppressed now; otherwise the
        number of lines of that kind suppressed since the last one logged."""
        if self.rate <= 0:
            return 0
        entry = self._kinds.get(kind)
        if entry is None:
            if len(self._kinds) >= self.max_kinds:
                self._kinds.clear()
            entry = self._kinds[kind] = [float(self.burst), now, 0]
        tokens = min(float(self.burst), entry[0] + (now - entry[1]) * self.rate)
        entry[1] = now
        if tokens < 1.0:
            entry[0] = tokens
            entry[2] += 1
            return None
        entry[0] = tokens - 1.0
        suppressed, entry[2] = int(entry[2]), 0
        return suppressed
