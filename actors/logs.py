"""Logging of the node's processes: stderr (journald under systemd) or a private file.

``setup_logging`` installs one handler on the root logger: stderr by
default, or ``[node] log_file`` created 0600 and appended to. ``reopen``
closes and reopens that file (after logrotate has renamed it, on SIGHUP);
``set_level`` changes the level at run time. Tracebacks are bounded per place
that logs them (``ExceptionLimit``): an input that trips a bug again and
again must not fill the disk.
"""

import logging
import os
import sys
import time
from typing import TextIO

from sipcore.ratelimit import LogLimiter
from store.files import PRIVATE_FILE, make_private_dir

FORMAT = "%(asctime)s {node} %(levelname)s %(name)s: %(message)s"


class ExceptionLimit(logging.Filter):
    """Lets through at most ``rate`` records with a traceback a second (10 at once) per
    place that logs them (logger and message); the next one let through says how many
    were left out. Records without a traceback pass: the lines about bad input have
    limits of their own (``log_rate``), and the others are not per packet."""

    def __init__(self, rate: float = 1.0):
        super().__init__()
        self.limit = LogLimiter(rate)

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is logged (its message notes the ones left out before)."""
        if not record.exc_info:
            return True
        suppressed = self.limit.allow(f"{record.name}:{record.msg}", time.monotonic())
        if suppressed is None:
            return False
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} more like it not logged)"
        return True


class PrivateFileHandler(logging.StreamHandler[TextIO]):
    """Appends to ``path``, kept 0600 (a log names users and addresses)."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(self._open())

    def _open(self) -> TextIO:
        if not os.path.isdir(os.path.dirname(self.path) or "."):
            make_private_dir(os.path.dirname(self.path))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
        # A file made by someone else (or before) may be readable by others.
        os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, "a", encoding="utf-8")

    def reopen(self) -> None:
        """Close the file and open ``path`` again (a new file if it was renamed)."""
        self.acquire()
        try:
            old = self.stream
            self.stream = self._open()
            old.close()
        finally:
            self.release()

    def close(self) -> None:
        """Close the file."""
        self.acquire()
        try:
            self.stream.close()
        finally:
            self.release()
        super().close()


def setup_logging(level: str, node_id: str = "-", log_file: str = "") -> None:
    """One line per event, each with the node id, to stderr or ``log_file``.

    Raises ``OSError`` when ``log_file`` cannot be opened.
    """
    handler: logging.Handler
    handler = PrivateFileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT.format(node=node_id)))
    handler.addFilter(ExceptionLimit())
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def reopen() -> bool:
    """Reopen the log file, if logging goes to one; return whether it does."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, PrivateFileHandler)]
    for h in files:
        h.reopen()
    return bool(files)


def set_level(level: str) -> None:
    """Change the root logger's level (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``)."""
    logging.getLogger().setLevel(level.upper())
