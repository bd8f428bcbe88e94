"""``run.py user add|import --master URL``: users go to the configuration master.

A node run by a master gets its users only from the master's pushes, so a
user written into the node's own store would be gone at the next push.
With ``--master URL`` (or ``TANDEM_MASTER_URL``) the command asks the
master's API instead (``POST /api/users``, or ``POST /api/users/import``
and then its progress until the import ends); the master pushes the change
to every node at once. The admin's credentials come from a file that only
its owner may read (``--admin-file``: ``name:password`` on its first line,
or a password alone for ``admin``, as the master's own ``admin-password``
file holds it) or from ``TANDEM_MASTER_ADMIN`` (``name:password``); never
from the command line, where other users of the host would see them.
Without a master, the command writes the node's store as before.
"""

import base64
import json
import os
import stat
import time
import urllib.parse

from .master_api import MasterError, ask_master

URL_ENV = "TANDEM_MASTER_URL"
"""Environment variable naming the master's URL."""
ADMIN_ENV = "TANDEM_MASTER_ADMIN"
"""Environment variable holding ``name:password`` of a master admin."""
TIMEOUT = 30.0
"""Seconds one request to the master may take."""
IMPORT_TIMEOUT = 900.0
"""Seconds an import may take on the master before the command gives up waiting."""
MAX_FILE = 8 * 1024 * 1024
"""Largest CSV sent (the master refuses bigger ones)."""


def master_url(given: str | None) -> str:
    """The master's URL from ``--master`` or the environment; "" when there is none."""
    url = (given or os.environ.get(URL_ENV, "")).strip()
    if url and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise MasterError(f"the master's URL must be http:// or https://, not {url[:80]!r}")
    return url.rstrip("/")


def admin_credentials(path: str | None) -> tuple[str, str]:
    """``(name, password)`` of a master admin from ``path`` (0600) or the environment."""
    if path:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise MasterError(f"cannot read the admin file {path}: {e.strerror}") from None
        with os.fdopen(fd, encoding="utf-8") as f:
            if stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o077:
                raise MasterError(f"the admin file {path} may be read by others: chmod 600 {path}")
            text = f.readline(4096).rstrip("\r\n")
    else:
        text = os.environ.get(ADMIN_ENV, "")
        if not text:
            raise MasterError(
                f"a master's admin is needed: --admin-file FILE (mode 0600, "
                f"name:password) or {ADMIN_ENV}=name:password"
            )
        if ":" not in text:
            raise MasterError(f"{ADMIN_ENV} must be name:password")
    name, sep, password = text.partition(":")
    if not sep:
        name, password = "admin", text
    if not name or not password:
        raise MasterError("the admin's name and password must not be empty")
    return name, password


def _ask(
    url: str,
    creds: tuple[str, str],
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "application/json",
) -> dict:
    token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    return ask_master(
        url,
        path,
        method=method,
        body=body,
        timeout=TIMEOUT,
        headers={"Authorization": f"Basic {token}", "Content-Type": content_type},
    )


def add_user(url: str, creds: tuple[str, str], name: str, password: str) -> int:
    """Add a user or change its password on the master; the configuration version made."""
    reply = _ask(
        url,
        creds,
        "POST",
        "/api/users",
        json.dumps({"username": name, "password": password}).encode(),
    )
    return int(reply.get("version", 0))


def import_users(
    url: str, creds: tuple[str, str], path: str, poll: float = 0.2, on_progress=None
) -> dict:
    """Import the CSV at ``path`` on the master and wait until it ends; the finished job
    (its ``error`` names the file and line of a bad row). ``on_progress(job)`` is called
    whenever its phase or count moves."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise MasterError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_FILE:
        raise MasterError(f"{path} is larger than {MAX_FILE // (1024 * 1024)} MiB")
    name = urllib.parse.quote(os.path.basename(path)[:128])
    job = _ask(url, creds, "POST", f"/api/users/import?name={name}", data, "text/csv")
    deadline = time.monotonic() + IMPORT_TIMEOUT
    shown = ""
    while job.get("running"):
        if time.monotonic() > deadline:
            raise MasterError(
                f"import {job.get('id')} still runs on the master after "
                f"{IMPORT_TIMEOUT:.0f} s: see the dashboard"
            )
        time.sleep(poll)
        job = _ask(url, creds, "GET", f"/api/users/import/{int(job['id'])}")
        now = f"{job.get('phase')} {job.get('done')}/{job.get('total')}"
        if now != shown and on_progress is not None:
            on_progress(job)
        shown = now
    return job
