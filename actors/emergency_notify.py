"""Notifying designated people of each emergency call, from the node at call time.

Kari's Law wants someone on site told at once when anyone dials the
emergency number, with the caller and where the caller is. The node that
routes the call sends the notice itself (so it goes with the master down):
the proxy actor hands every turn's call events to
:meth:`EmergencyNotifier.add`, which only queues the ``emergency`` ones;
the notifier's own greenlet sends each as a JSON POST to ``webhook`` and an
e-mail to ``smtp_to`` (``actors.notify``, the alarms' sender), so the
proxy never waits on the network.

The notice names the caller, the number dialled, the node, the source
address, the location the source is in (the dial plan's ``locations``:
name, civic address) and the callback number sent to the emergency
services. ``[emergency]`` of the node's configuration::

    webhook = "https://security.example/hook"   # and/or
    smtp_host = "mail.example"                  # smtp_port, smtp_from, smtp_user,
    smtp_to = ["security@example"]              # smtp_starttls

(the SMTP password from ``TANDEM_SMTP_PASSWORD``, never from the file). A
channel that fails is retried ``ATTEMPTS`` times, ``RETRY_AFTER`` seconds
apart; at most ``MAX_QUEUED`` notices wait (more are dropped and counted).
"""

import logging
import time
from collections import deque
from collections.abc import Callable

import gevent
from gevent.event import Event

from sipcore.call_events import EMERGENCY, CallEvent
from sipcore.dialplan import DialPlan

from .notify import Channels, send_notice

log = logging.getLogger(__name__)

MAX_QUEUED = 1000
"""Notices waiting at most."""
ATTEMPTS = 3
"""Times a notice is tried before it is given up (logged at ERROR)."""
RETRY_AFTER = 2.0
"""Seconds between two tries of a notice."""


def source_host(source: str) -> str:
    """The host of a call event's ``transport:host:port`` source."""
    return source.partition(":")[2].rpartition(":")[0].strip("[]")


class EmergencyNotifier:
    """Queues a notice per emergency call event and sends them from its own greenlet.

    ``plan()`` gives the node's current dial plan (its locations and callback numbers)."""

    def __init__(self, channels: Channels, plan: Callable[[], DialPlan], node_id: str, domain: str):
        self.channels = channels
        self.plan = plan
        self.node_id = node_id
        self.domain = domain
        self.queued: deque[dict] = deque()
        self.wake = Event()
        self.stats = {"queued": 0, "sent": 0, "failed": 0, "dropped": 0}

    def add(self, events: list[CallEvent], wall: float) -> None:
        """Queue a notice for each emergency call among ``events`` (seen at ``wall``)."""
        for ev in events:
            if ev.kind != EMERGENCY:
                continue
            if len(self.queued) >= MAX_QUEUED:
                self.stats["dropped"] += 1
                log.error(
                    "emergency notice of call %s dropped: %d waiting", ev.call_id, len(self.queued)
                )
                continue
            try:
                self.queued.append(self.notice(ev, wall))
            except Exception:  # the proxy's loop calls this: a notice must never stop it
                self.stats["failed"] += 1
                log.exception("emergency notice of call %s not made", ev.call_id)
                continue
            self.stats["queued"] += 1
            self.wake.set()

    def notice(self, ev: CallEvent, wall: float) -> dict:
        """What the notice of the emergency call ``ev`` says, JSON-ready."""
        plan = self.plan()
        host = source_host(ev.source)
        rest = ev.caller.partition(":")[2]
        user, _, domain = rest.rpartition("@")
        ours = domain.lower().rstrip(".") == self.domain.lower()
        place = plan.location(host)
        where = (
            (f"{place.name or place.network}" + (f", {place.address}" if place.address else ""))
            if place
            else "unknown location"
        )
        callback = plan.callback(user if ours and user else None, host)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))
        return {
            "event": "emergency call",
            "call_id": ev.call_id,
            "caller": ev.caller,
            "callee": ev.callee,
            "node": self.node_id,
            "cluster": self.domain,
            "source": host,
            "at": wall,
            "location": {
                "network": str(place.network),
                "name": place.name,
                "address": place.address,
            }
            if place
            else None,
            "callback": callback,
            "text": f"EMERGENCY CALL from {ev.caller} to {ev.callee} at {where} "
            f"(address {host}, callback {callback or 'none'}), through "
            f"{self.node_id} at {when}.",
        }

    def run(self) -> None:
        """Send the queued notices, forever (the node's group runs it)."""
        while True:
            self.wake.wait()
            self.wake.clear()
            while self.queued:
                body = self.queued.popleft()
                try:
                    self.deliver(body)
                except Exception:  # a notice must never stop the node that routes calls
                    self.stats["failed"] += 1
                    log.exception("emergency notice of call %s failed", body["call_id"])

    def deliver(self, body: dict) -> bool:
        """Send ``body`` on every channel, tried up to ``ATTEMPTS`` times; whether it went."""
        subject = f"[tandem {self.domain}] EMERGENCY CALL from {body['caller']}"
        for attempt in range(1, ATTEMPTS + 1):
            if send_notice(self.channels, body, subject, body["text"] + "\n", "tandem-node"):
                self.stats["sent"] += 1
                log.warning("emergency notice of call %s sent", body["call_id"])
                return True
            if attempt < ATTEMPTS:
                gevent.sleep(RETRY_AFTER)
        self.stats["failed"] += 1
        log.error(
            "emergency notice of call %s given up after %d attempts", body["call_id"], ATTEMPTS
        )
        return False


def attach_emergency_notify(node) -> None:
    """Give the node's proxy an emergency notifier when ``[emergency]`` names a channel,
    and run it in the node's group."""
    cfg = node.cfg
    if not cfg.emergency_notify:
        return
    notifier = EmergencyNotifier(
        cfg.emergency_notify, lambda: node.dialing.plan, cfg.id, cfg.domain
    )
    node.proxy.notifier = notifier
    node.group.spawn(notifier.run).link_exception(node.actor_died)
