"""The node's gateways: its dial plan in the proxy, and their health by OPTIONS probes.

``attach_dialing(node)`` gives the node's proxy a ``sipcore.dialing.Dialing``
made of the last dial plan the master pushed (kept in the node's store, so a
node restarted while the master is down routes as before) or else of its own
``[dialplan]`` section, and starts a ``GatewayProber``. The configuration
push applies a new plan with ``apply_dialplan`` (``actors.config_sync``).

The prober sends each gateway an OPTIONS every ``probe_interval`` seconds
from a socket of its own (UDP, or a TCP connection for a TCP gateway; a
TLS gateway is not probed and counts as up) and waits up to the interval
for any answer: a gateway that missed ``probe_misses`` probes in a row is
marked down (WARNING) and left out of routes until it answers again (INFO).
A DNS name is resolved per RFC 3263 before each probe; its targets are
probed in order until one answers (a gateway is up while any of them is).
Every probe is bounded in time, so a silent gateway costs the prober its
wait, never the proxy.
"""

import logging
import os
import socket
import time

import gevent

from sipcore.dialing import Dialing, probe_request
from sipcore.dialplan import DialPlan, DialPlanError, Gateway, parse_dialplan
from sipcore.errors import SipError
from sipcore.message import Response, parse_message
from store.models import get_state, set_state

log = logging.getLogger(__name__)

STATE_KEY = "dialplan"
"""Node state key of the last dial plan document the master pushed."""
_MAX_ANSWER = 65535
_MAX_TARGETS = 4
"""Targets of one gateway probed at most in one round."""


class GatewayProber:
    """Probes every gateway of ``dialing``'s plan and keeps ``dialing.down`` in step."""

    def __init__(self, dialing: Dialing, resolver, address: str, domain: str):
        self.dialing = dialing
        self.resolver = resolver
        self.address = address
        self.domain = domain
        self.misses: dict[str, int] = {}
        self.stats = {"probes": 0, "answers": 0}

    def health(self) -> dict:
        """Each gateway's state (``up`` or ``down``, probes missed in a row), the
        probes' counts and the dial plan's (calls routed, refused, emergency)."""
        plan = self.dialing.plan
        gateways = {
            name: {
                "state": "down" if name in self.dialing.down else "up",
                "misses": self.misses.get(name, 0),
                "emergency": gw.emergency,
            }
            for name, gw in plan.gateways.items()
        }
        return {"gateways": gateways, "probes": dict(self.stats), "calls": dict(self.dialing.stats)}

    def run(self) -> None:
        """Probe every gateway at the plan's interval, all of them at once, forever."""
        while True:
            plan = self.dialing.plan
            interval = plan.probe_interval
            if interval <= 0 or not plan.gateways:
                self.dialing.down.clear()
                gevent.sleep(1.0)
                continue
            started = time.monotonic()
            probes = [gevent.spawn(self.probe, gw, interval) for gw in plan.gateways.values()]
            gevent.joinall(probes, timeout=interval + 1.0)
            for g in probes:
                g.kill(block=False)
            for name in list(self.misses):
                if name not in plan.gateways:
                    del self.misses[name]
            self.dialing.down.intersection_update(plan.gateways)
            gevent.sleep(max(0.0, started + interval - time.monotonic()))

    def probe(self, gateway: Gateway, timeout: float) -> bool:
        """One OPTIONS to ``gateway``; record its answer (or silence) and return it."""
        answered = False
        try:
            answered = self._ask(gateway, timeout)
        except (OSError, gevent.Timeout):
            answered = False
        self.record(gateway, answered)
        return answered

    def record(self, gateway: Gateway, answered: bool) -> None:
        """Count an answer or a miss of ``gateway``; mark it down or up when that changes."""
        name = gateway.name
        down = self.dialing.down
        self.stats["probes"] += 1
        if answered:
            self.stats["answers"] += 1
            self.misses[name] = 0
            if name in down:
                down.discard(name)
                log.info("gateway %s answers again: up", name)
            return
        self.misses[name] = self.misses.get(name, 0) + 1
        if self.misses[name] >= self.dialing.plan.probe_misses and name not in down:
            down.add(name)
            log.warning(
                "gateway %s missed %d probes: down, left out of routes", name, self.misses[name]
            )

    def _ask(self, gateway: Gateway, timeout: float) -> bool:
        """Whether one of the gateway's first targets (RFC 3263 order) answers, the
        timeout shared between them."""
        if gateway.transport == "tls":
            return True
        targets = self.resolver.resolve(gateway.host, gateway.port, gateway.transport, "sip")
        targets = [t for t in targets if t.transport in ("udp", "tcp")][:_MAX_TARGETS]
        for target in targets:
            try:
                if self._ask_target(gateway, target, timeout / len(targets)):
                    return True
            except (OSError, gevent.Timeout):
                continue
        return False

    def _ask_target(self, gateway: Gateway, target, timeout: float) -> bool:
        call_id = f"{os.urandom(8).hex()}@{self.address}"
        branch = "z9hG4bK" + os.urandom(8).hex()
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        kind = socket.SOCK_DGRAM if target.transport == "udp" else socket.SOCK_STREAM
        with gevent.Timeout(timeout), socket.socket(family, kind) as sock:
            sock.bind((self.address, 0))
            port = sock.getsockname()[1]
            data = probe_request(
                gateway, self.address, port, target.transport, self.domain, call_id, branch
            )
            if kind == socket.SOCK_DGRAM:
                sock.sendto(data, (target.host, target.port))
            else:
                sock.connect((target.host, target.port))
                sock.sendall(data)
            while True:
                got = sock.recv(_MAX_ANSWER)
                if not got:
                    return False
                if is_probe_answer(got, call_id):
                    return True


def is_probe_answer(data: bytes, call_id: str) -> bool:
    """Whether ``data`` is a response to the probe with ``call_id`` (any status: the
    gateway is alive even when it refuses OPTIONS)."""
    try:
        msg = parse_message(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n", stream=False)
    except SipError:
        return False
    return isinstance(msg, Response) and msg.call_id == call_id


def load_dialplan(cfg) -> DialPlan:
    """The plan the node starts with: the master's last push, else ``[dialplan]``."""
    pushed = get_state(STATE_KEY)
    if pushed is not None:
        try:
            return parse_dialplan(pushed)
        except DialPlanError as e:
            log.error("stored dial plan from the master unusable (%s); using [dialplan]", e)
    return parse_dialplan(cfg.dialplan or None)


def apply_dialplan(node, doc) -> None:
    """Take a dial plan document pushed by the master: checked (``DialPlanError``,
    changing nothing), kept in the store, then routing with it. None (a rollback to
    before the master's first plan): the plan of the node's ``[dialplan]`` again."""
    plan = parse_dialplan(doc if doc is not None else (node.cfg.dialplan or None))
    set_state(STATE_KEY, doc)
    dialing = getattr(node, "dialing", None)
    if dialing is not None:
        dialing.plan = plan
    log.info(
        "dial plan applied: %d gateways, %d rules, %d users",
        len(plan.gateways),
        len(plan.rules),
        len(plan.users),
    )


def attach_dialing(node) -> Dialing:
    """Route numbers of the node's proxy through its dial plan; probe its gateways."""
    cfg = node.cfg
    users = node.users
    dialing = node.dialing = Dialing(load_dialplan(cfg), lambda u: u in users.users, cfg.domain)
    node.proxy.core.dialing = dialing
    prober = node.gateway_prober = GatewayProber(
        dialing, node.proxy.resolver, cfg.address, cfg.domain
    )
    node.group.spawn(prober.run).link_exception(node.actor_died)
    sync = getattr(node, "config_sync", None)
    if sync is not None:
        sync.on_dialplan = lambda doc: apply_dialplan(node, doc)
    control = node.replicator.control if node.replicator is not None else None
    if control is not None:
        control.handle("gateways", lambda _request: prober.health())

        def calls(_request: dict) -> dict:
            """Calls in progress on this node per user and per gateway (the limits' counts)."""
            return dialing.calls.snapshot()

        control.handle("call_counts", calls)
    return dialing
