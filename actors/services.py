"""The node's services: state, uptime and restarts, and stop, start, restart on request.

A node runs six services: the SIP ``transport``, the ``registrar``, the
``proxy``, the ``replicator``, the ``dns`` resolver and the challenge
``front`` (a process of its own, when ``[sip] challenge_front`` is on).
The control commands ``services`` (each one's state, uptime and restart
count) and ``service`` (``{"name", "action": "stop"|"start"|"restart"}``)
let the master act on any node, in a lab or not.

What a stop would break is refused with the reason: the replicator carries
the control channel and the cluster's replication, so it is never stopped
or restarted from here (a process restart is the way); the resolver is
only restarted (its cache emptied), since the proxy needs it for every
call to another domain; the proxy is not stopped while emergency numbers
are configured, which must always be routed. While the registrar is
stopped the node answers REGISTER with ``503`` (replicated bindings wait
in its inbox, unbounded, and are merged when it starts again: a stop is
for a short maintenance, not for long); while the proxy is
stopped, every other request but ACK gets ``503`` and responses are
dropped. Everything here runs in the control greenlet, one action at a
time.
"""

import logging
import time

from .bus import BusError
from .dns import Resolver

log = logging.getLogger(__name__)

NAMES = ("transport", "registrar", "proxy", "replicator", "dns", "front")
"""The services of a node, in the order the dashboard shows them."""

ACTIONS = ("stop", "start", "restart")

RUNNING, STOPPED, FAILED, ABSENT = "running", "stopped", "failed", "not configured"

STOP_WAIT = 5.0
"""Seconds a stopping registrar may take to finish its batch before it is killed."""


class ServiceRefused(BusError):
    """An action a service does not allow, with the reason."""


class Services:
    """The node's services: who runs, since when, how often restarted."""

    def __init__(self, node, clock=time.time):
        self.node = node
        self.clock = clock
        now = clock()
        self.started_at = {name: now for name in NAMES}
        self.restarts = dict.fromkeys(NAMES, 0)
        self.stopped: set[str] = set()

    # -- state ----------------------------------------------------------------
    def state(self, name: str) -> str:
        """``running``, ``stopped``, ``failed`` (its greenlet died) or ``not configured``."""
        node = self.node
        if name == "front" and node.front is None:
            return ABSENT
        if name in self.stopped:
            return STOPPED
        if name in ("registrar", "proxy"):
            greenlet = getattr(node, name).greenlet
            if greenlet is None or greenlet.dead:
                return FAILED
        if name == "front" and (node.front.proc is None or node.front.proc.poll() is not None):
            return FAILED
        return RUNNING

    def list(self, _request: dict | None = None) -> dict:
        """Each service's state, uptime (s) and restart count."""
        now = self.clock()
        out = {}
        for name in NAMES:
            state = self.state(name)
            out[name] = {
                "state": state,
                "restarts": self.restarts[name],
                "uptime": round(now - self.started_at[name], 1) if state == RUNNING else None,
            }
        return out

    def down(self, name: str) -> bool:
        """Whether ``name`` was stopped on request (the node's SIP gate asks)."""
        return name in self.stopped

    # -- actions --------------------------------------------------------------
    def act(self, request: dict) -> dict:
        """Stop, start or restart a service: {"name": service, "action": stop|start|restart}."""
        name, action = request.get("name"), request.get("action")
        if name not in NAMES:
            raise BusError(f"unknown service {str(name)[:40]!r}; known: {', '.join(NAMES)}")
        if action not in ACTIONS:
            raise BusError(f"unknown action {str(action)[:40]!r}; known: {', '.join(ACTIONS)}")
        self._check(name, action)
        if action in ("stop", "restart") and name not in self.stopped:
            getattr(self, f"_stop_{name}")()
            self.stopped.add(name)
        if action in ("start", "restart") and name in self.stopped:
            getattr(self, f"_start_{name}")()
            self.stopped.discard(name)
            self.started_at[name] = self.clock()
            if action == "restart":
                self.restarts[name] += 1
        log.warning(
            "%s: service %s %s",
            request.get("from") or "control",
            name,
            {"stop": "stopped", "start": "started", "restart": "restarted"}[action],
        )
        return {"name": name, **self.list()[name]}

    def _check(self, name: str, action: str) -> None:
        node = self.node
        if name == "front" and node.front is None:
            raise ServiceRefused("no challenge front: [sip] challenge_front is off on this node")
        if name == "replicator":
            raise ServiceRefused(
                "the replicator carries the control channel and the cluster's "
                "replication: restart the node's process instead"
            )
        if name == "dns" and action == "stop":
            raise ServiceRefused(
                "the proxy needs the resolver for every call to another "
                "domain: restart it (empties its cache) instead"
            )
        if name == "proxy" and action == "stop" and node.cfg.emergency_numbers:
            raise ServiceRefused(
                "emergency numbers are configured and must always be routed: "
                "restart the proxy instead"
            )

    def _stop_transport(self) -> None:
        self.node.transport.stop()

    def _start_transport(self) -> None:
        self.node.transport.start()

    def _stop_registrar(self) -> None:
        self.node.registrar.stop(STOP_WAIT)

    def _start_registrar(self) -> None:
        self._spawn(self.node.registrar)

    def _stop_proxy(self) -> None:
        greenlet = self.node.proxy.greenlet
        if greenlet is not None:
            greenlet.kill(block=True, timeout=STOP_WAIT)

    def _start_proxy(self) -> None:
        self._spawn(self.node.proxy)

    def _spawn(self, actor) -> None:
        node = self.node
        actor.greenlet = node.group.spawn(actor.run)
        actor.greenlet.link_exception(node.actor_died)

    def _stop_dns(self) -> None:
        """Nothing runs: the resolver is replaced when it starts again."""

    def _start_dns(self) -> None:
        cfg, proxy = self.node.cfg, self.node.proxy
        proxy.resolver = Resolver(cfg.dns_servers or None, cfg.dns_port)

    def _stop_front(self) -> None:
        self.node.front.stop()

    def _start_front(self) -> None:
        self.node.front.start()


def attach_services(node) -> Services:
    """Give ``node`` its ``Services`` (``node.services``) and serve ``services`` and
    ``service`` on its control endpoint, if it has one."""
    services = node.services = Services(node)
    control = node.replicator.control if node.replicator is not None else None
    if control is not None:
        control.handle("services", services.list)
        control.handle("service", services.act)
    return services
