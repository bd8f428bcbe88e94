"""Locust SIP load test: phones that register and call each other through the cluster.

    python run.py lab                                   # in another terminal
    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 30s --csv out

The defaults fit ``run.py lab``. Phones find the nodes as real phones do:
the SRV records of ``_sip._udp.<domain>`` (RFC 3263, weighted per RFC 2782)
at the lab's DNS, ``TANDEM_DNS`` (default ``127.0.0.10``; port 53, then
5353 as the lab falls back to it; ``ADDR:PORT`` names one). A phone whose
node stops answering moves to its next target, as a phone does when a node
dies. ``--host sip://ADDR:PORT`` sends every phone to that one node instead.

Users are ``load0``..``load<N-1>`` with password ``load<i>-secret``, as the
lab provisions them (``TANDEM_LOAD_USERS``, default 200; ``TANDEM_DOMAIN``,
default example.test). The lower half are the phones: ``RegisteringPhone``
registers and refreshes, ``CallingPhone`` registers, then places calls.
The upper half are answered by one :class:`AnsweringAgent` in the Locust
process (registered when the test starts, refreshed every half expiry), so
run it as one process (no ``--processes``/workers: each would register the
same callees). A call is: INVITE, 407, INVITE with credentials, 180, 200,
ACK, a hold re-INVITE (``sendonly``), BYE.

Locust request types (with the name in brackets): REGISTER (register: both
transactions of an authenticated registration), INVITE (setup: INVITE to
200, the 407 round included; ringing: INVITE to the first 180; hold: the
re-INVITE), BYE (hangup). A failure is reported with its SIP status
("486 Busy Here") or "timeout", so Locust's failure table counts them.
"""

import itertools
import logging
import os
import random
import sys
import time
from urllib.parse import urlparse

import gevent
from locust import User, between, events, task

# Locust puts this file's folder on the path, not the repository's root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actors.dns import Resolver
from loadtest.answerer import AnsweringAgent
from loadtest.sipclient import SipClient, SipClientError

log = logging.getLogger(__name__)

DOMAIN = os.environ.get("TANDEM_DOMAIN", "example.test")
LOAD_USERS = int(os.environ.get("TANDEM_LOAD_USERS", "200"))
PHONES = LOAD_USERS // 2
"""``load0``..``load<PHONES-1>`` are phones; the others are answered by the agent."""
SIP_TIMEOUT = float(os.environ.get("TANDEM_SIP_TIMEOUT", "8"))
"""Seconds a phone waits for a final response before it tries its next node."""
CALLEE_EXPIRES = 300
"""Expires of the answering agent's registrations; refreshed at half of it."""

_next_phone = itertools.count()
_agent: AnsweringAgent | None = None
_refresher: gevent.Greenlet | None = None


class SipStatusError(Exception):
    """A final response that is not the one wanted; its text is the status line."""


def dns_servers() -> list[tuple[str, int]]:
    """The DNS servers to ask for the cluster's SRV records (``TANDEM_DNS``)."""
    value = os.environ.get("TANDEM_DNS", "127.0.0.10")
    if ":" in value:
        host, port = value.rsplit(":", 1)
        return [(host, int(port))]
    return [(value, 53), (value, 5353)]


def discover(host: str | None) -> list[tuple[str, int]]:
    """The nodes a phone tries, in its order: ``--host`` if given, else the SRV targets."""
    if host:
        url = urlparse(host)
        return [(url.hostname or "127.0.0.1", url.port or 5060)]
    for address, port in dns_servers():
        targets = Resolver([address], port, timeout=1.0, supported=("udp",)).resolve(
            DOMAIN, transport="udp"
        )
        if targets:
            return [(t.host, t.port) for t in targets]
    raise RuntimeError(
        f"no SIP node found: no SRV answer for _sip._udp.{DOMAIN} from "
        f"{dns_servers()}; is `run.py lab` running? (or set --host, TANDEM_DNS)"
    )


def timed(request_type: str, name: str, call, ok=lambda r: r.status < 300):
    """Run ``call`` and report it to Locust with its time; return its response or None."""
    start = time.perf_counter()
    resp = exc = None
    try:
        resp = call()
        if not ok(resp):
            exc = SipStatusError(f"{resp.status} {resp.reason}")
    except SipClientError as e:
        exc = e
    events.request.fire(
        request_type=request_type,
        name=name,
        response_time=(time.perf_counter() - start) * 1000,
        response_length=len(resp.body) if resp is not None else 0,
        exception=exc,
        context={},
    )
    return resp


@events.test_start.add_listener
def start_answering(environment, **_kw):
    """Register the callees (the upper half of the users) from one answering agent."""
    global _agent, _refresher
    if _agent is not None:
        return
    nodes = discover(environment.host)
    _agent = AnsweringAgent(timeout=SIP_TIMEOUT)
    _agent.start()
    callees = [(f"load{i}", f"load{i}-secret") for i in range(PHONES, LOAD_USERS)]

    def refresh():
        while True:
            _agent.register(nodes, callees, DOMAIN, CALLEE_EXPIRES)
            gevent.sleep(CALLEE_EXPIRES / 2)

    first = _agent.register(nodes, callees, DOMAIN, CALLEE_EXPIRES)
    if first != len(callees):
        environment.events.request.fire(
            request_type="REGISTER",
            name="callees",
            response_time=0,
            response_length=0,
            exception=SipStatusError(
                f"{len(callees) - first} of {len(callees)} callees not registered"
            ),
            context={},
        )
    _refresher = gevent.spawn_later(CALLEE_EXPIRES / 2, refresh)


@events.test_stop.add_listener
def stop_answering(environment, **_kw):
    """Stop the answering agent."""
    global _agent, _refresher
    if _refresher is not None:
        _refresher.kill()
        _refresher = None
    if _agent is not None:
        _agent.unregister()
        _agent.stop()
        _agent = None


class SipPhone(User):
    """A phone: one ``SipClient`` for the next load user, sent to its nodes in SRV order."""

    abstract = True

    def __init__(self, environment):
        super().__init__(environment)
        self.nodes = discover(self.host)
        n = next(_next_phone) % PHONES
        self.client = SipClient(
            self.nodes[0], f"load{n}", f"load{n}-secret", DOMAIN, timeout=SIP_TIMEOUT
        )

    def failover(self) -> None:
        """Move to the next node of the SRV order (after a timeout)."""
        self.nodes.append(self.nodes.pop(0))
        self.client.server = self.nodes[0]

    def register(self) -> None:
        """One authenticated registration or refresh; a timeout moves to the next node."""
        if timed("REGISTER", "register", lambda: self.client.register(120)) is None:
            self.failover()

    def on_start(self):
        """Register when switched on."""
        self.register()

    def on_stop(self):
        """Unregister (a phone switched off) and close the socket.

        Not a Locust request: it runs after the measured time, so a node killed
        during the run would show as failures at its very end.
        """
        try:
            resp = self.client.register(0)
            if resp.status >= 300:
                log.warning("%s: unregister got %d %s", self.client.user, resp.status, resp.reason)
        except SipClientError as e:
            log.warning("%s: unregister failed: %s", self.client.user, e)
        self.client.close()


class RegisteringPhone(SipPhone):
    """A phone that refreshes its registration every few seconds."""

    wait_time = between(0.5, 1.5)

    @task
    def refresh(self):
        """Refresh the binding (same Call-ID, next CSeq)."""
        self.register()


class CallingPhone(SipPhone):
    """A phone that calls an answered user, puts the call on hold, and hangs up."""

    wait_time = between(1.0, 2.0)

    @task
    def call(self):
        """One call: INVITE (407, credentials), 180, 200, ACK, hold re-INVITE, BYE."""
        callee = f"sip:load{random.randrange(PHONES, LOAD_USERS)}@{DOMAIN}"
        start = time.perf_counter()
        rang: list[float] = []

        def ringing(_resp):
            if not rang:
                rang.append(time.perf_counter())

        result = []
        resp = timed(
            "INVITE",
            "setup",
            lambda: result.append(self.client.invite(callee, ringing)) or result[0][0],
        )
        if resp is None:
            self.failover()
            return
        if rang:
            events.request.fire(
                request_type="INVITE",
                name="ringing",
                response_time=(rang[0] - start) * 1000,
                response_length=0,
                exception=None,
                context={},
            )
        dialog = result[0][1]
        if dialog is None:
            return
        gevent.sleep(random.uniform(0.1, 0.5))
        timed("INVITE", "hold", dialog.hold)
        gevent.sleep(random.uniform(0.1, 0.5))
        timed("BYE", "hangup", dialog.bye)
