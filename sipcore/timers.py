"""Transaction states, timer values, a cheap deadline queue and what each timer does.

RFC 3261 §17 and table 4; ``transaction.TransactionLayer`` mixes in
``TimerHandlers`` and re-exports ``State``.

Every transaction timer has one of a handful of durations: T1 doubled a
few times, T2, T4, 32 s and 64*T1. ``TimerQueues`` keeps one FIFO per
duration: as long as ``now`` never goes backwards, entries appended to a
FIFO are already in deadline order, so arming a timer is one
``deque.append`` and firing it one ``popleft`` -- no heap, no
cancellation. A timer that no longer applies is recognised when it fires
(by the state of its transaction) and ignored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from operator import itemgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .transaction import Transaction

#: a timer queue entry: deadline, owner, which timer
Entry = tuple[float, Any, "Timer"]

_INF = float("inf")
_BY_DEADLINE = itemgetter(0)


class State(Enum):
    """Transaction states of RFC 3261 §17 (plus Accepted from RFC 6026)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


_CALLING = State.CALLING
_TRYING = State.TRYING
_PROCEEDING = State.PROCEEDING
_COMPLETED = State.COMPLETED
_CONFIRMED = State.CONFIRMED
_ACCEPTED = State.ACCEPTED


class Timer(IntEnum):
    """Timer kinds, as stored in queue entries (RFC 3261 §17 and RFC 6026 §8.4)."""

    A = 0
    B = 1
    D = 2
    E = 3
    F = 4
    G = 5
    H = 6
    I = 7  # noqa: E741 -- the RFC's name
    J = 8
    K = 9
    M = 10
    CANCEL = 11
    """64*T1 after a CANCEL was sent without a final response to the INVITE (§9.1)."""
    L = 12
    """RFC 6026 §8.7: how long an INVITE server transaction stays Accepted after its 2xx."""


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """The base timer values of RFC 3261 §17 (seconds).

    Every other timer derives from them: B, F, H, J, L and M are ``64*t1``;
    D is ``d`` (at least 32 s) on unreliable transports; I and K are
    ``t4``. On reliable transports A, E and G are never armed and D, I, J
    and K are zero.
    """

    t1: float = 0.5
    """Round-trip time estimate: first retransmission interval."""
    t2: float = 4.0
    """Cap on the retransmission interval of non-INVITE requests and INVITE final responses."""
    t4: float = 5.0
    """Longest time a message may stay in the network."""
    d: float = 32.0
    """Timer D: how long an INVITE client transaction absorbs retransmitted finals."""

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 > 0 and self.d > 0):
            raise ValueError("need t1 > 0, t2 >= t1, t4 > 0 and d > 0")

    @property
    def timeout(self) -> float:
        """``64*T1``: timers B, F, H, J, L and M."""
        return 64 * self.t1


class TimerQueues:
    """Deadlines grouped in one FIFO per duration.

    Entries are ``(deadline, owner, kind)`` tuples. ``now`` values passed
    to ``add`` should not decrease; if they do, an entry may fire a little
    late, never early.
    """

    __slots__ = ("_queues", "_next")

    def __init__(self) -> None:
        self._queues: dict[float, deque[Entry]] = {}
        self._next = _INF

    def add(self, now: float, duration: float, owner: object, kind: Timer) -> None:
        """Arm timer ``kind`` of ``owner`` to fire ``duration`` seconds after ``now``."""
        q = self._queues.get(duration)
        if q is None:
            q = self._queues[duration] = deque()
        deadline = now + duration
        q.append((deadline, owner, kind))
        if deadline < self._next:
            self._next = deadline

    def next_deadline(self) -> float | None:
        """The earliest deadline armed, or None when nothing is armed."""
        return None if self._next == _INF else self._next

    def pop_due(self, now: float) -> list[Entry]:
        """Remove and return every entry whose deadline is ``<= now``, earliest first."""
        if now < self._next:
            return []
        due: list[Entry] = []
        sources = 0
        nxt = _INF
        for q in self._queues.values():
            if q and q[0][0] <= now:
                sources += 1
                popleft = q.popleft
                while q and q[0][0] <= now:
                    due.append(popleft())
            if q and q[0][0] < nxt:
                nxt = q[0][0]
        self._next = nxt
        if sources > 1:
            due.sort(key=_BY_DEADLINE)
        return due

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())


class TimerHandlers:
    """The timer half of the transaction state machines (a mixin).

    The host class provides ``_timers`` (a ``TimerQueues``), ``_out`` (the
    list of ``(bytes, destination)`` to send), ``_t2``, and the methods
    ``_terminate(tx)`` and ``_timeout_tx(tx, timer)``. A timer whose
    transaction has left the state that armed it does nothing.
    """

    __slots__ = ()
    _timers: TimerQueues
    _out: list[tuple[bytes, Any]]
    _t2: float
    _terminate: Callable[[Transaction], None]
    _timeout_tx: Callable[[Transaction, Timer], None]

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``: retransmissions, timeouts, terminations."""
        fire = _FIRE
        for _, tx, kind in self._timers.pop_due(now):
            fire[kind](self, tx, now)

    def _retransmit(self, tx: Transaction, now: float, kind: Timer, interval: float) -> None:
        tx._interval = interval
        data = tx._data
        if data is not None:  # always set while a retransmitting state lasts
            self._out.append((data, tx.destination))
        self._timers.add(now, interval, tx, kind)

    def _on_a(self, tx: Transaction, now: float) -> None:
        if tx.state is _CALLING:
            self._retransmit(tx, now, Timer.A, tx._interval * 2)

    def _on_b(self, tx: Transaction, now: float) -> None:
        if tx.state is _CALLING:
            self._timeout_tx(tx, Timer.B)

    def _on_e(self, tx: Transaction, now: float) -> None:
        state = tx.state
        if state is _TRYING:
            self._retransmit(tx, now, Timer.E, min(tx._interval * 2, self._t2))
        elif state is _PROCEEDING:
            self._retransmit(tx, now, Timer.E, self._t2)

    def _on_f(self, tx: Transaction, now: float) -> None:
        if tx.state is _TRYING or tx.state is _PROCEEDING:
            self._timeout_tx(tx, Timer.F)

    def _on_g(self, tx: Transaction, now: float) -> None:
        if tx.state is _COMPLETED:
            self._retransmit(tx, now, Timer.G, min(tx._interval * 2, self._t2))

    def _on_h(self, tx: Transaction, now: float) -> None:
        if tx.state is _COMPLETED:
            self._timeout_tx(tx, Timer.H)

    def _on_i(self, tx: Transaction, now: float) -> None:
        if tx.state is _CONFIRMED:
            self._terminate(tx)

    def _on_completed_end(self, tx: Transaction, now: float) -> None:
        if tx.state is _COMPLETED:
            self._terminate(tx)

    def _on_m(self, tx: Transaction, now: float) -> None:
        if tx.state is _ACCEPTED:
            self._terminate(tx)

    def _on_cancel(self, tx: Transaction, now: float) -> None:
        if tx.state is _PROCEEDING:
            self._timeout_tx(tx, Timer.CANCEL)


_H = TimerHandlers
#: what each timer does when it fires: D, J and K all end a Completed transaction, L and M
#: an Accepted one
HANDLERS = {
    Timer.A: _H._on_a,
    Timer.B: _H._on_b,
    Timer.D: _H._on_completed_end,
    Timer.E: _H._on_e,
    Timer.F: _H._on_f,
    Timer.G: _H._on_g,
    Timer.H: _H._on_h,
    Timer.I: _H._on_i,
    Timer.J: _H._on_completed_end,
    Timer.K: _H._on_completed_end,
    Timer.M: _H._on_m,
    Timer.CANCEL: _H._on_cancel,
    Timer.L: _H._on_m,
}
# The same table indexed by the timer's value: firing is one tuple index.
_FIRE = tuple(HANDLERS[t] for t in Timer)
