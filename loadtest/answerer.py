"""An answering user agent: the far end of load-test calls, on one UDP socket.

It registers users of the domain with its own address as their contact
(each through a :class:`SipClient`, so a refresh keeps the same Call-ID),
and answers what the proxy brings: an INVITE gets ``180 Ringing`` at once
and ``200 OK`` with an SDP answer after ``ring`` seconds, the 200 sent again
(Timer G's doubling, §13.3.1.4) until its ACK comes or 32 s pass; a
re-INVITE gets 200 at once; BYE 200; CANCEL 200 and the INVITE 487 if it is
not answered yet (200 alone if it is, 481 if it is unknown); OPTIONS 200;
anything else 501. A retransmitted request
gets the last response again. What it keeps per call is bounded.
"""

import logging
import os
import time
from collections import OrderedDict

import gevent
import gevent.pool
from gevent import socket
from gevent.queue import Queue

from loadtest.sipclient import SipClient, SipClientError, sdp_offer
from sipcore.errors import SipError
from sipcore.message import Request, make_response, parse_message

log = logging.getLogger(__name__)

MAX_REMEMBERED = 10000
"""Transactions (by branch and method) whose last response is kept for retransmissions."""
MAX_QUEUED = 1000
"""Responses to the agent's own REGISTERs waiting to be read; more are dropped."""
ACK_WAIT = 32.0
"""Seconds a 200 to an INVITE is sent again while its ACK is missing (64·T1)."""


class AnsweringAgent:
    """Answers every call for the users it registered; counts what it answered.

    Its REGISTERs go out one at a time from its own socket (:meth:`register`
    is called from one greenlet), their responses handed over by a queue.
    """

    def __init__(
        self, local_ip: str = "127.0.0.1", ring: float = 0.05, t1: float = 0.5, timeout: float = 8.0
    ):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((local_ip, 0))
        self.local = self.sock.getsockname()
        self.ring = ring
        self.t1 = t1
        self.timeout = timeout
        self.phones: list[SipClient] = []
        self.nodes: list[tuple[str, int]] = []
        self.answered = 0
        self.ended = 0
        self._last: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._unacked: dict[tuple[str, int], gevent.Greenlet] = {}
        self._responses: Queue = Queue(MAX_QUEUED)
        self._pending: dict[str, tuple[Request, str]] = {}
        self._group = gevent.pool.Group()
        self._loop: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start answering."""
        self._loop = gevent.spawn(self._serve)

    def unregister(self) -> int:
        """Remove the agent's contacts (Expires 0); return how many got a 2xx."""
        return self.register(self.nodes, [], "", 0) if self.phones else 0

    def stop(self) -> None:
        """Stop answering and close every socket."""
        if self._loop is not None:
            self._loop.kill()
        self._group.kill()
        for phone in self.phones:
            phone.close()
        self.sock.close()

    def register(
        self,
        nodes: list[tuple[str, int]],
        users: list[tuple[str, str]],
        domain: str,
        expires: int = 300,
    ) -> int:
        """Register (or refresh) ``users`` with this agent as their contact; return how many
        got a 2xx. A node that does not answer is put last, and the user tried at the next
        one, as a phone does; failures are logged with their status."""
        if not self.phones:
            # Registered from this socket: the proxy sends calls back over the REGISTER's flow.
            self.phones = [
                SipClient(
                    nodes[0],
                    u,
                    pw,
                    domain,
                    timeout=self.timeout,
                    shared=(self.sock, self._responses),
                )
                for u, pw in users
            ]
        self.nodes = list(nodes)
        ok = 0
        for phone in self.phones:
            for _ in self.nodes:
                phone.server = self.nodes[0]
                try:
                    resp = phone.register(expires)
                    break
                except SipClientError as e:
                    log.warning(
                        "answerer: REGISTER %s at %s failed: %s", phone.user, phone.server, e
                    )
                    self.nodes.append(self.nodes.pop(0))
            else:
                continue
            if resp.status < 300:
                ok += 1
            else:
                log.warning("answerer: REGISTER %s got %d %s", phone.user, resp.status, resp.reason)
        return ok

    def _serve(self) -> None:
        while True:
            try:
                raw, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            try:
                msg = parse_message(raw)
            except SipError:
                continue
            if not isinstance(msg, Request):
                if not self._responses.full():
                    self._responses.put_nowait(raw)
            else:
                try:
                    self._handle(msg, addr)
                except SipError as e:
                    log.info("answerer: dropped a malformed %s: %s", msg.method, e)

    def _handle(self, req: Request, addr) -> None:
        branch = req.top_via.branch or ""
        method = req.method
        last = self._last.get((branch, method))
        if last is not None:
            self.sock.sendto(last, addr)
            return
        if method == "ACK":
            waiter = self._unacked.pop((req.call_id, req.cseq[0]), None)
            if waiter is not None:
                waiter.kill(block=False)
        elif method == "INVITE" and req.to.tag is None:
            tag = os.urandom(4).hex()
            self._send(req, addr, 180, tag)
            self._pending[branch] = (req, tag)
            self._group.spawn(self._answer, req, addr, branch, tag)
        elif method == "INVITE":
            self._send(req, addr, 200, None, self._sdp())
        elif method == "BYE":
            self.ended += 1
            self._send(req, addr, 200)
        elif method == "CANCEL":
            pending = self._pending.pop(branch, None)
            if pending is not None:
                self._send(req, addr, 200)
                self._send(pending[0], addr, 487, pending[1])
            elif (branch, "INVITE") in self._last:
                self._send(req, addr, 200)  # answered already: the CANCEL changes nothing
            else:
                self._send(req, addr, 481)  # no such transaction (§9.2)
        elif method == "OPTIONS":
            self._send(req, addr, 200)
        else:
            self._send(req, addr, 501)

    def _answer(self, req: Request, addr, branch: str, tag: str) -> None:
        gevent.sleep(self.ring)
        if self._pending.pop(branch, None) is None:
            return
        data = self._send(req, addr, 200, tag, self._sdp())
        self.answered += 1
        key = (req.call_id, req.cseq[0])
        self._unacked[key] = self._group.spawn(self._resend_until_ack, data, addr, key)

    def _resend_until_ack(self, data: bytes, addr, key) -> None:
        deadline = time.monotonic() + ACK_WAIT
        interval = self.t1
        try:
            while time.monotonic() + interval < deadline:
                gevent.sleep(interval)
                self.sock.sendto(data, addr)
                interval = min(interval * 2, 4.0)
            log.warning("answerer: no ACK for the 200 of call %s", key[0])
        finally:
            self._unacked.pop(key, None)

    def _sdp(self) -> bytes:
        return sdp_offer(self.local[0], 40002)

    def _send(
        self, req: Request, addr, status: int, tag: str | None = None, body: bytes = b""
    ) -> bytes:
        headers = [("Contact", f"<sip:answer@{self.local[0]}:{self.local[1]}>")]
        if req.method == "INVITE" and 100 < status < 300:
            # The dialog's route set (§12.1.1): the proxies that Record-Routed stay on its path.
            headers += [("Record-Route", rr) for rr in req.raw_values("record-route")]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        data = make_response(req, status, headers=headers, body=body, to_tag=tag).encode()
        self.sock.sendto(data, addr)
        self._last[(req.top_via.branch or "", req.method)] = data
        while len(self._last) > MAX_REMEMBERED:
            self._last.popitem(last=False)
        return data
