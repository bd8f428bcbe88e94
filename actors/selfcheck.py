"""The node asks itself, over its own SIP port, whether it serves (``sipcore.selfcheck``).

:func:`self_check` sends the ``OPTIONS``, the ``REGISTER`` query and the test
``INVITE`` from a UDP socket of the node's address to the node's SIP port,
each resent every half second until answered or its time is up, and returns
None when every answer is the healthy one, else the first reason it is not.
"""

import logging
import os
import time

import gevent
from gevent import socket

from sipcore.errors import SipError
from sipcore.message import Response, parse_message
from sipcore.selfcheck import Probe, ack_for, probes, verdict

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 2.0
"""Seconds each request of the self-check waits for its final answer."""
RESEND = 0.5
"""Seconds between resends of an unanswered request (UDP may drop one)."""
_MAX_ANSWER = 65535


def self_check(address: str, port: int, domain: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the node at ``address:port`` serves ``domain``, else why not."""
    token = os.urandom(6).hex()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    dest = (address, port)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))
        for probe in probes(domain, address, sock.getsockname()[1], token):
            answer = _ask(sock, probe, dest, timeout)
            if probe.method == "INVITE" and answer is not None:
                sock.sendto(ack_for(probe, answer.get("to") or ""), dest)
            reason = verdict(probe, None if answer is None else answer.status)
            if reason is not None:
                log.warning("self-check failed: %s", reason)
                return reason
    return None


def _ask(sock, probe: Probe, dest: tuple, timeout: float) -> Response | None:
    """The final answer to ``probe`` (provisional ones are skipped), None if none came."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.sendto(probe.data, dest)
        with gevent.Timeout(min(RESEND, left), False):  # False: the block just ends
            while True:
                answer = _final(sock.recv(_MAX_ANSWER), probe.call_id)
                if answer is not None:
                    return answer


def _final(data: bytes, call_id: str) -> Response | None:
    """``data`` as the final response with ``call_id``, else None."""
    try:
        msg = parse_message(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n", stream=False)
    except SipError:
        return None
    if isinstance(msg, Response) and msg.call_id == call_id and msg.status >= 200:
        return msg
    return None
