"""The master's periodic tasks (rate sampling, call event collection, alarm checks,
the served zone): one greenlet each, one round every ``every`` seconds."""

import logging
from abc import ABC, abstractmethod

import gevent

log = logging.getLogger(__name__)


class Periodic(ABC):
    """Runs :meth:`round` in a greenlet of its own every ``every`` seconds, from
    :meth:`start` until :meth:`stop`. A round that raises is logged and the next one
    comes anyway: a master task never dies of one bad answer."""

    what = "periodic task"
    """Named in the log when a round fails."""
    wait_first = False
    """Whether the first round waits ``every`` seconds (else it runs at once)."""

    def __init__(self, every: float):
        self.every = every
        self.greenlet: gevent.Greenlet | None = None

    @abstractmethod
    def round(self) -> object:
        """One round of the task."""

    def start(self) -> None:
        """Start the rounds."""
        self.greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop the rounds (one in progress is killed)."""
        if self.greenlet is not None:
            self.greenlet.kill(block=True, timeout=5)
            self.greenlet = None

    def _run(self) -> None:
        if self.wait_first:
            gevent.sleep(self.every)
        while True:
            try:
                self.round()
            except Exception:
                log.exception("%s failed", self.what)
            gevent.sleep(self.every)
