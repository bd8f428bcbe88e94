"""What the lab knows of each process it watches and restarts: a node or the master."""

import subprocess
import time


class WatchedProcess:
    """A lab process: its ``proc``, when it started, how often it died and was
    restarted, and how it last ended. Subclasses start it and say ``where`` it serves."""

    id: str
    proc: subprocess.Popen | None
    started: float
    deaths: int
    restarts: int
    last_exit: str
    where: str
    """The address it serves on, for ``run.py lab status``."""

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def status(self) -> dict:
        """JSON-ready state of the process for ``run.py lab status``."""
        up = self.alive()
        return {
            "id": self.id,
            "address": self.where,
            "running": up,
            "uptime": round(time.monotonic() - self.started, 1) if up else 0.0,
            "pid": self.proc.pid if up and self.proc else None,
            "deaths": self.deaths,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }
