"""The node's call log: one line per call event the proxy reports.

A call's end (BYE, a failure with its status, a CANCEL) is logged at INFO
with the Call-ID, the caller, the callee and the source address: a failure
is an ordinary outcome of a call (busy, no answer), not a WARNING. The
steps before (attempt, ringing, answer) are logged at DEBUG. Events come
from ``ProxyCore.take_call_events`` with the node's wall clock.
"""

import logging

from sipcore.call_events import BYE, CANCEL, FAILURE, FINISHING, LOST, CallEvent

log = logging.getLogger(__name__)

_WORDS = {
    BYE: "ended (BYE)",
    CANCEL: "cancelled by the caller",
    FAILURE: "failed",
    LOST: "ended by this node (its node failed, an end was gone)",
}


class CallLog:
    """Writes the log lines of the call events of one node's proxy; counts them by kind."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def record(self, events: list[CallEvent], wall: float) -> None:
        """Log ``events`` (all seen at ``wall``, seconds since the epoch)."""
        for ev in events:
            self.counts[ev.kind] = self.counts.get(ev.kind, 0) + 1
            status = f" {ev.status}" if ev.status is not None else ""
            if ev.kind in FINISHING:
                log.info(
                    "call %s from %s to %s (source %s): %s%s",
                    ev.call_id,
                    ev.caller,
                    ev.callee,
                    ev.source,
                    _WORDS[ev.kind],
                    status,
                )
            elif log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "call %s from %s to %s (source %s): %s%s at %.3f",
                    ev.call_id,
                    ev.caller,
                    ev.callee,
                    ev.source,
                    ev.kind,
                    status,
                    wall,
                )
