"""Bindings and the in-memory location table, with expiry and the merge rule.

The table holds live bindings and tombstones (deleted bindings kept until
they would have expired, so a late or replayed update cannot revive them).
It is pure: every method that depends on time takes ``now``.
"""

import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(slots=True)
class Binding:
    """One registration: an address of record bound to a contact."""

    aor: str
    """Canonical address of record, ``sip:user@domain``."""
    key: str
    """Binding identity within the AOR: ``+sip.instance`` (and reg-id) or the canonical contact."""
    contact: str
    """The Contact URI as the phone sent it."""
    expires_at: float
    """Absolute expiry time (unix seconds)."""
    call_id: str
    """Call-ID of the REGISTER that made this version."""
    cseq: int
    """CSeq number of that REGISTER."""
    q: float | None = None
    """Contact preference, ``None`` when not given."""
    path: list[str] = field(default_factory=list)
    """Path header values (RFC 3327), in order, to turn into Route headers."""
    instance: str | None = None
    """``+sip.instance`` value (RFC 5626), quotes removed."""
    reg_id: int | None = None
    """``reg-id`` (RFC 5626)."""
    received: str | None = None
    """Where the REGISTER came from, ``transport:host:port``."""
    user_agent: str | None = None
    """User-Agent of the phone."""
    origin: str = ""
    """Id of the node that is primary for this binding."""
    epoch: int = 0
    """Epoch of the origin node when it made this version."""
    seq: int = 0
    """Sequence number of this version on the origin node."""
    updated_at: float = 0.0
    """When the origin node made this version."""
    deleted: bool = False
    """A tombstone: the binding was removed; kept until ``expires_at``."""

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "Binding":
        """Build from a store record (``path`` may be JSON text or a list)."""
        p = rec.get("path")
        if isinstance(p, str):
            p = json.loads(p) if p and p != "[]" else []
        elif p is None:
            p = []
        g = rec.get
        return cls(
            rec["aor"],
            rec["key"],
            rec["contact"],
            rec["expires_at"],
            rec["call_id"],
            rec["cseq"],
            g("q"),
            p,
            g("instance"),
            g("reg_id"),
            g("received"),
            g("user_agent"),
            g("origin", ""),
            g("epoch", 0),
            g("seq", 0),
            g("updated_at", 0.0),
            bool(g("deleted")),
        )

    def version(self) -> tuple[Any, ...]:
        """The order in which versions of one binding supersede each other.

        Within one Call-ID the CSeq decides (see ``is_newer``); otherwise the
        update time, then the origin node id, its epoch and sequence number
        break ties, so every node picks the same winner.
        """
        return (self.updated_at, self.origin, self.epoch, self.seq)


def is_newer(new: Binding, old: Binding | None) -> bool:
    """Whether ``new`` should replace ``old`` (the replication merge rule)."""
    if old is None:
        return True
    if new.call_id == old.call_id and new.cseq != old.cseq:
        return new.cseq > old.cseq
    return new.version() > old.version()


class Location:
    """Address of record -> key -> Binding, with an expiry heap."""

    def __init__(self) -> None:
        self.table: dict[str, dict[str, Binding]] = {}
        self._heap: list[tuple[float, str, str]] = []

    def __len__(self) -> int:
        return sum(len(v) for v in self.table.values())

    def get(self, aor: str) -> dict[str, Binding]:
        """Every binding of ``aor`` (tombstones included), keyed by binding key."""
        return self.table.get(aor) or {}

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings of ``aor``, highest q first."""
        found = [b for b in self.get(aor).values() if not b.deleted and b.expires_at > now]
        found.sort(key=lambda b: -(b.q if b.q is not None else 1.0))
        return found

    def put(self, b: Binding) -> Binding | None:
        """Store ``b`` unconditionally; return the binding it replaced."""
        per = self.table.get(b.aor)
        if per is None:
            per = self.table[b.aor] = {}
        old = per.get(b.key)
        per[b.key] = b
        if old is None or old.expires_at != b.expires_at:
            heapq.heappush(self._heap, (b.expires_at, b.aor, b.key))
        return old

    def load(self, bindings: Iterable[Binding]) -> int:
        """Fill the table at start-up (one heap build instead of a push each); return the count."""
        table = self.table
        heap = self._heap
        n = 0
        for b in bindings:
            per = table.get(b.aor)
            if per is None:
                per = table[b.aor] = {}
            per[b.key] = b
            heap.append((b.expires_at, b.aor, b.key))
            n += 1
        heapq.heapify(heap)
        return n

    def merge(self, b: Binding) -> bool:
        """Apply a replicated version if it is newer; return whether it was."""
        if is_newer(b, self.get(b.aor).get(b.key)):
            self.put(b)
            return True
        return False

    def restore(self, aor: str, key: str, old: Binding | None) -> None:
        """Put back ``old`` (or drop the key) after a failed commit."""
        if old is None:
            per = self.table.get(aor)
            if per is not None:
                per.pop(key, None)
                if not per:
                    del self.table[aor]
        else:
            self.put(old)

    def next_expiry(self) -> float | None:
        """The earliest expiry time in the heap, if any."""
        return self._heap[0][0] if self._heap else None

    def expire(self, now: float) -> list[Binding]:
        """Drop bindings and tombstones whose time has come; return them."""
        gone = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            exp, aor, key = heapq.heappop(heap)
            per = self.table.get(aor)
            b = per.get(key) if per else None
            if per is None or b is None or b.expires_at != exp:
                continue
            del per[key]
            if not per:
                del self.table[aor]
            gone.append(b)
        return gone

    def all(self) -> list[Binding]:
        """Every binding and tombstone."""
        return [b for per in self.table.values() for b in per.values()]

    def live_count(self, now: float) -> int:
        """How many bindings are live."""
        return sum(
            1
            for per in self.table.values()
            for b in per.values()
            if not b.deleted and b.expires_at > now
        )


def tombstone(b: Binding, **changes: Any) -> Binding:
    """A deleted version of ``b`` that keeps its expiry time."""
    return replace(b, deleted=True, **changes)


class Sequencer:
    """Stamps this node's binding changes with (epoch, sequence number).

    The epoch changes at each start of the node; numbers have no holes
    within an epoch, so peers can detect lost updates.
    """

    def __init__(self, epoch: int, seq: int = 0):
        self.epoch = epoch
        self.seq = seq

    def next(self) -> tuple[int, int]:
        """The stamp for the next change."""
        self.seq += 1
        return self.epoch, self.seq

    def peek(self) -> int:
        """The last number handed out."""
        return self.seq

    def rewind(self, seq: int) -> None:
        """Take back numbers handed out after ``seq`` (their changes were not committed)."""
        self.seq = seq
