"""Draining a node for maintenance: the ``drain`` control command and its SIP gate.

While a node drains it answers every new dialog-creating request (an
INVITE, SUBSCRIBE or REFER without a To tag) and every REGISTER with
``503 Draining`` and a ``Retry-After``, so that phones move to another SRV
target, and keeps forwarding what belongs to calls in progress: in-dialog
requests (BYE, re-INVITE, ACK), CANCELs and responses. A call to one of
``[sip] emergency_numbers`` is never refused (issue 17). The node's
``status`` says ``draining`` and counts the proxy's pending transactions,
so an operator (or the master) sees when the node is empty: ``drained``
once no transaction waits for a final response (those answered only wait
out their timers) and, with ``actors.dialogs`` attached, once the calls it
owns (its dialog records) are over.
"""

import logging

from sipcore.proxy import DIALOG_METHODS

from .bus import BusError

log = logging.getLogger(__name__)

RETRY_AFTER = 30
"""Default seconds a drained node asks phones to wait (``Retry-After``)."""

MAX_RETRY_AFTER = 3600
"""Longest ``retry_after`` a ``drain`` request may ask for."""


class Drain:
    """Whether the node drains, and which requests that refuses.

    ``is_emergency(uri)`` is the proxy settings' emergency test. Set only by
    the control greenlet, read by the transport's: a bool and an int, so no
    lock is needed under gevent.
    """

    def __init__(self, is_emergency):
        self.on = False
        self.retry_after = RETRY_AFTER
        self.is_emergency = is_emergency
        self.refused = 0

    def refuses(self, req) -> bool:
        """Whether ``req`` must get 503 now: a REGISTER or a new dialog, not an emergency call."""
        if not self.on:
            return False
        method = req.method
        if method == "REGISTER":
            return True
        return method in DIALOG_METHODS and req.to.tag is None and not self.is_emergency(req.ruri)

    def set(self, request: dict) -> dict:
        """Apply ``{"on": bool, "retry_after": seconds}``; the drain state after it."""
        on = request.get("on")
        retry = request.get("retry_after", RETRY_AFTER)
        if not isinstance(on, bool):
            raise BusError('drain needs "on": true or false')
        if (
            not isinstance(retry, int)
            or isinstance(retry, bool)
            or not 1 <= retry <= MAX_RETRY_AFTER
        ):
            raise BusError(f'"retry_after" must be whole seconds from 1 to {MAX_RETRY_AFTER}')
        if on != self.on:
            log.warning(
                "%s: %s",
                request.get("from") or "control",
                f"draining, new calls and REGISTERs get 503 (Retry-After {retry})"
                if on
                else "drain ended, taking new calls and REGISTERs again",
            )
        self.on, self.retry_after = on, retry
        return {"draining": on, "retry_after": retry}


def attach_drain(node) -> None:
    """Give ``node`` its ``Drain`` (``node.drain``) and serve ``drain`` and a
    ``status`` that adds ``draining`` and the pending transactions."""
    drain = node.drain = Drain(node.proxy.core.settings.is_emergency)
    control = node.replicator.control if node.replicator is not None else None
    if control is None:
        return

    def status(_request: dict, out: dict) -> None:
        layer = node.proxy.core.layer
        pending = layer.unanswered()
        out.update(
            draining=drain.on,
            pending_server=pending["server"],
            pending_client=pending["client"],
            transactions=layer.stats()["server"] + layer.stats()["client"],
            drained=drain.on and not pending["server"] and not pending["client"],
            drain_refused=drain.refused,
        )

    def set_drain(request: dict) -> dict:
        """Drain the node or end it: {"on": bool, "retry_after": seconds (default 30)}."""
        result = drain.set(request)
        node.tell_front()
        return result

    control.extend("status", status)
    control.handle("drain", set_drain)
