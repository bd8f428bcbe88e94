"""Files that hold secrets: written owner-only, and refused when others can read them.

A node's configuration (nonce secret, CurveZMQ secret key), key files and
databases are created mode 0600 in folders of mode 0700. A process reading
such a file checks it first: a secret that anyone on the host could have read
is a leaked secret, so the node refuses to start and says how to fix it.
"""

import os
import stat
import tomllib
from typing import Any

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


class InsecureFileError(Exception):
    """A secret file or folder that other users of the host can read or write."""


def make_private_dir(path: str) -> str:
    """Create ``path`` (and its parents) mode 0700, or tighten it if it exists; return it."""
    os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)
    return path


def write_private(path: str, text: str) -> str:
    """Write ``text`` to ``path`` readable by its owner only, replacing it atomically.

    The text goes to a temporary file created 0600 beside ``path`` and is
    renamed over it, so no reader ever sees a half-written or a readable file.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, PRIVATE_FILE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def create_private(path: str) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (a database file, say)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return
    os.close(fd)


def check_private(path: str, what: str) -> None:
    """Raise ``InsecureFileError`` if ``path`` can be read or written by group or others."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise InsecureFileError(
            f"{what} {path} holds secrets but has mode {mode:04o}, so other users of this "
            f"host can read it; run: chmod 600 {path}"
        )


def read_toml(path: str, error: type[Exception]) -> dict[str, Any]:
    """The TOML file ``path`` read; ``error`` with a clear message when it
    cannot be read or is not TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: {e}") from None
