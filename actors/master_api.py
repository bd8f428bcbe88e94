"""One JSON request to the configuration master's API, from a command on a node's host.

``run.py join`` and ``run.py user ... --master`` both ask the master this way: a bounded
answer, a JSON object or a clear error naming why (refused with the master's own reason,
unreachable, too large, not JSON).
"""

import json
import urllib.error
import urllib.request

MAX_REPLY = 1024 * 1024
"""Largest answer read from the master (bytes); a larger one is refused."""


class MasterError(Exception):
    """The master could not be asked, or refused (the message says why)."""


def ask_master(
    url: str,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    refused: str = "the master refused",
    error: type[Exception] = MasterError,
) -> dict:
    """``method`` ``url + path`` with ``body``; the master's answer, a JSON object.

    Any failure raises ``error`` with a message for a person: ``refused`` and the HTTP code
    with the master's ``error`` field when it said no, otherwise what went wrong."""
    req = urllib.request.Request(
        url.rstrip("/") + path, data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read(MAX_REPLY + 1)
    except urllib.error.HTTPError as e:
        try:
            reason = json.loads(e.read(4096)).get("error", "")
        except (ValueError, AttributeError):
            reason = ""
        raise error(f"{refused} ({e.code}): {reason or e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise error(f"cannot reach the master at {url}: {getattr(e, 'reason', e)}") from None
    if len(data) > MAX_REPLY:
        raise error("the master's answer is too large")
    try:
        reply = json.loads(data)
    except ValueError:
        raise error("the master's answer is not JSON") from None
    if not isinstance(reply, dict):
        raise error("the master's answer is not a JSON object")
    return reply
