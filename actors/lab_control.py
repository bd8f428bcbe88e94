"""The running lab's control socket: ``run.py lab status`` and ``run.py lab restart NODE``.

The lab listens on a Unix stream socket, ``<data dir>/lab.sock``, mode 0600
in the lab's 0700 folder, so only the lab's owner can talk to it. A client
sends one line (``status`` or ``restart node2``) and reads one JSON line
back: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": text}``.
Lines are capped at ``MAX_LINE`` bytes and a client that sends nothing for
``IDLE_TIMEOUT`` seconds is dropped, so a stuck or hostile client cannot
hold the lab.
"""

import json
import logging
import os
import socket
from collections.abc import Callable

import gevent
from gevent.server import StreamServer

log = logging.getLogger(__name__)

SOCKET_NAME = "lab.sock"
MAX_LINE = 256
"""Longest request line accepted, in bytes."""
IDLE_TIMEOUT = 5.0
"""Seconds a client may take to send its line."""
REPLY_TIMEOUT = 60.0
"""Seconds a client waits for a reply (a restart waits for the node to answer)."""


class LabControlError(Exception):
    """The lab is not running, or refused or failed the request."""


def socket_path(data: str) -> str:
    """Where the lab whose state is under ``data`` listens."""
    return os.path.join(os.path.abspath(data), SOCKET_NAME)


class LabControlServer:
    """Answers ``status`` and ``restart NODE`` for a running lab.

    ``status()`` returns a JSON-ready value; ``restart(node_id)`` returns one
    or raises ``LabControlError`` with a message for the user.
    """

    def __init__(self, data: str, status: Callable[[], object], restart: Callable[[str], object]):
        self.path = socket_path(data)
        self._status = status
        self._restart = restart
        self._server: StreamServer | None = None

    def start(self) -> None:
        """Listen on the socket (replacing a stale one left by a lab that died)."""
        if os.path.exists(self.path):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old)
        listener.listen(8)
        self._server = StreamServer(listener, self._serve)
        self._server.start()

    def stop(self) -> None:
        """Stop listening and remove the socket."""
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _serve(self, conn: socket.socket, _address) -> None:
        try:
            try:
                reply = self.answer(_read_line(conn, IDLE_TIMEOUT))
            except LabControlError as e:
                reply = {"ok": False, "error": str(e)}
            conn.settimeout(REPLY_TIMEOUT)
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError as e:
            log.info("lab control client dropped: %s", e)
        finally:
            conn.close()

    def answer(self, line: str) -> dict:
        """The reply to one request line."""
        words = line.split()
        try:
            if words == ["status"]:
                return {"ok": True, "result": self._status()}
            if len(words) == 2 and words[0] == "restart":
                return {"ok": True, "result": self._restart(words[1])}
            raise LabControlError(f"unknown request {line[:40]!r}; known: status, restart NODE")
        except LabControlError as e:
            return {"ok": False, "error": str(e)}


def _read_line(conn: socket.socket, timeout: float) -> str:
    """One request line, at most ``MAX_LINE`` bytes, read within ``timeout`` seconds."""
    buf = b""
    with gevent.Timeout(timeout, LabControlError(f"no request within {timeout:g} s")):
        while b"\n" not in buf:
            chunk = conn.recv(MAX_LINE + 1 - len(buf))
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_LINE:
                raise LabControlError(f"request longer than {MAX_LINE} bytes")
    try:
        return buf.partition(b"\n")[0].decode("ascii").strip()
    except UnicodeDecodeError:
        raise LabControlError("request is not ASCII") from None


def ask(data: str, line: str, timeout: float = REPLY_TIMEOUT):
    """Send ``line`` to the lab running under ``data``; return its result.

    Raises ``LabControlError`` when no lab runs there or it refuses.
    """
    path = socket_path(data)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(line.encode("ascii") + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except FileNotFoundError:
            raise LabControlError(f"no lab is running with its data in {data}") from None
        except ConnectionRefusedError:
            raise LabControlError(f"the lab of {data} is not running (stale {path})") from None
        except OSError as e:
            raise LabControlError(f"cannot talk to the lab at {path}: {e}") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        raise LabControlError("the lab sent no answer") from None
    if not answer.get("ok"):
        raise LabControlError(answer.get("error", "refused"))
    return answer["result"]
