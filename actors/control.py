"""The node's control endpoint: JSON requests over a CurveZMQ ROUTER socket.

The configuration master (and the tests' convergence check) sends
``[CONTROL_REQUEST, {"cmd": name, ...}]`` from a DEALER (see
``actors.bus.request``) and gets ``[CONTROL_REPLY, {"ok": true, "result":
...}]`` or ``{"ok": false, "error": text}``. Only keys allowed on the
``control`` ZAP domain get through: the node's own, its peers' and the
``[cluster] control_keys``.

Commands (``help`` and ``ping`` built in) are plain callables taking the
request dict and returning a JSON-ready result; the dict's ``"from"`` is
set to the client's ZAP name (whatever the client wrote there), so a
handler can tell the master from a peer; ``attach_replicator``
registers ``status`` and ``digest``, and the node may add more with
``handle``. One greenlet owns the socket and answers requests one at a time.

Requests and replies carry ``"pv"`` (``sipcore.protocol``): a request of a
newer protocol version than this release reads gets an error reply naming
both versions (counted in ``newer_protocol``), one without it is version 1;
each reply's ``pv`` tells the client what this node speaks.
"""

import logging
from collections.abc import Callable
from typing import Any

import gevent
import zmq.green as zmq

from sipcore.protocol import PROTOCOL_VERSION, NewerProtocol, ProtocolError, check_version

from .bus import (
    CONTROL_DOMAIN,
    CONTROL_REPLY,
    CONTROL_REQUEST,
    Bus,
    BusError,
    pack,
    recv_from,
    send,
    unpack,
)

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 1.0
"""Seconds a reply may wait for a slow client before it is dropped."""


class ControlServer:
    """Answers control requests on ``endpoint`` with the registered handlers."""

    def __init__(self, bus: Bus, endpoint: str, handlers: dict | None = None):
        self.bus = bus
        self.endpoint = endpoint
        self.handlers: dict[str, Callable[[dict], Any]] = {"help": self._help, "ping": self._ping}
        self.handlers.update(handlers or {})
        self.greenlet = None
        self.sock = None
        self.stats = {"requests": 0, "errors": 0, "newer_protocol": 0, "unknown_commands": 0}

    def handle(self, cmd: str, fn) -> None:
        """Register ``fn(request: dict) -> result`` for ``cmd``."""
        self.handlers[cmd] = fn

    def extend(self, cmd: str, more: Callable[[dict, dict], object]) -> None:
        """Complete the answer (a dict) of ``cmd``'s handler: ``more(request, answer)``
        adds to it (each part of the node adds its own to ``status``)."""
        inner = self.handlers[cmd]

        def handler(request: dict) -> dict:
            out = inner(request)
            more(request, out)
            return out

        handler.__doc__ = inner.__doc__
        self.handlers[cmd] = handler

    def _help(self, _request: dict) -> dict:
        """Every command with the first line of its handler's docstring."""
        return {
            cmd: ((fn.__doc__ or "").strip().splitlines() or [""])[0]
            for cmd, fn in sorted(self.handlers.items())
        }

    def _ping(self, _request: dict) -> dict:
        """This server's name and request counts (a liveness check)."""
        return {"name": self.bus.name, **self.stats}

    def start(self, on_failure=None) -> None:
        """Bind the socket and start answering; ``on_failure(greenlet)`` if the loop dies."""
        self.bus.start()
        self.sock = self.bus.server(zmq.ROUTER, self.endpoint, CONTROL_DOMAIN, hwm=100)
        greenlet = self.greenlet = gevent.spawn(self._run)
        if on_failure is not None:
            greenlet.link_exception(on_failure)
        log.info("control endpoint on %s", self.endpoint)

    def stop(self) -> None:
        """Stop answering and close the socket."""
        if self.greenlet is not None:
            self.greenlet.kill(block=True, timeout=1)
            self.greenlet = None
        if self.sock is not None:
            self.bus.close_socket(self.sock)
            self.sock = None

    def _run(self) -> None:
        sock = self.sock
        while True:
            frames, user = recv_from(sock)
            if len(frames) != 3 or frames[1] != CONTROL_REQUEST:
                log.warning("dropped a malformed control message from %s", user or "?")
                continue
            reply = self.answer(frames[2], user)
            try:
                send(sock, [frames[0], CONTROL_REPLY, pack(reply)], timeout=REPLY_TIMEOUT)
            except BusError as e:
                log.info("control reply to %s dropped: %s", user or "?", e)

    def answer(self, body: bytes, user: str = "") -> dict:
        """The reply to one request body."""
        self.stats["requests"] += 1
        try:
            request = unpack(body)
            try:
                check_version(request)
            except NewerProtocol as e:
                self.stats["newer_protocol"] += 1
                raise BusError(str(e)) from None
            except ProtocolError as e:
                raise BusError(str(e)) from None
            request["from"] = user
            cmd = request.get("cmd")
            fn = self.handlers.get(cmd) if isinstance(cmd, str) else None
            if fn is None:
                self.stats["unknown_commands"] += 1
                known = ", ".join(sorted(self.handlers))
                raise BusError(f"unknown command {cmd!r}; known: {known}")
            result = fn(request)
        except BusError as e:
            self.stats["errors"] += 1
            return {"pv": PROTOCOL_VERSION, "ok": False, "error": str(e)}
        except Exception:
            self.stats["errors"] += 1
            log.exception("control command from %s failed", user or "?")
            return {"pv": PROTOCOL_VERSION, "ok": False, "error": "internal error"}
        log.debug("control %s from %s", cmd, user or "?")
        return {"pv": PROTOCOL_VERSION, "ok": True, "result": result}
