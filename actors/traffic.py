"""The node's traffic counters: requests by method, responses by code, calls, uptime.

The node counts every request it takes (``request``: the parsed ones and
the usual REGISTERs the registrar takes unparsed) and the transport every
response it sends, by status code (``Transport.sent_codes``); calls are
the proxy's call attempts (``CallLog``). They only grow while the process
lives: the master (``web.rates``) turns two answers a minute apart into
rates, and Prometheus takes them as counters. The challenges a
challenge front sends from its own process are not counted here.

``attach_traffic`` adds them, the node's uptime and its boot time to the
``status`` control command's answer.
"""

import time

from sipcore.call_events import ATTEMPT
from sipcore.message import METHODS

OTHER = "other"
"""The kind a method not in ``METHODS`` (a hostile token) is counted as: the table of
requests by method stays bounded."""


class Traffic:
    """Requests taken, by method."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}

    def request(self, method: str) -> None:
        """Count one request of ``method``."""
        key = method if method in METHODS else OTHER
        self.requests[key] = self.requests.get(key, 0) + 1


def codes(sent: dict[bytes, int]) -> dict[str, int]:
    """The transport's response counts keyed by status code text."""
    return {code.decode("ascii", "replace"): n for code, n in sent.items()}


def attach_traffic(node) -> Traffic:
    """Give ``node`` its ``Traffic`` (``node.traffic``) and add the counters, ``uptime``
    and ``started_at`` to its ``status`` answer."""
    traffic = node.traffic = Traffic()
    control = node.replicator.control if node.replicator is not None else None
    if control is None:
        return traffic

    def status(_request: dict, out: dict) -> None:
        # Requests by method, responses sent by code, call attempts, uptime (s), what the
        # transport's defences refused by kind (``refused``) and admission control's
        # figures (``overload``: requests shed by method; None when it is off).
        admission = node.transport.admission
        out.update(
            started_at=node.started_at,
            uptime=round(time.time() - node.started_at, 1),
            requests=dict(traffic.requests),
            responses=codes(node.transport.sent_codes),
            call_attempts=node.proxy.call_log.counts.get(ATTEMPT, 0),
            refused=dict(node.transport.stats),
            overload=admission.status() if admission is not None else None,
        )

    control.extend("status", status)
    return traffic
