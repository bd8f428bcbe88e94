"""The lab's configuration master: set up, started and watched like a lab node.

``setup`` runs ``run.py master init`` (keys, database, admin ``admin`` with
a generated password in ``<data>/master/admin-password``, 0600), records the
lab's nodes and puts the demo users (and ``--users``) into the master's
store, so the master is their source of truth and pushes them to every
node. The master serves its dashboard on ``<base address>:8080``. The lab
watches its process as it watches a node's: a death is reported while the
nodes go on serving, and ``run.py lab restart master`` brings it back.
"""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from store import master as master_store
from store.files import make_private_dir, write_private
from store.users import read_users_csv

from .keys import Member
from .watched import WatchedProcess

MASTER_PORT = 8080


class LabMaster(WatchedProcess):
    """The master process of a lab (the same surface as ``actors.lab.LabNode``)."""

    id = "master"

    def __init__(self, data: str, base: str, domain: str, root: str):
        self.dir = make_private_dir(os.path.join(data, "master"))
        self.address = base
        self.domain = domain
        self.root = root
        self.config = os.path.join(self.dir, "master.toml")
        self.log_path = os.path.join(self.dir, "master.log")
        self.url = self.where = f"http://{base}:{MASTER_PORT}"
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.deaths = self.restarts = 0
        self.last_exit = ""
        self.reported = False

    def _head(self) -> str:
        return (
            f'[master]\nlisten = "{self.address}:{MASTER_PORT}"\n'
            f'data_dir = "{self.dir}"\ndomain = "{self.domain}"\npush_interval = 1.0\n'
            f'lab_data = "{os.path.dirname(self.dir)}"\n'
        )

    def public_key(self) -> str:
        """The master's CurveZMQ public key (made by ``init`` on first use)."""
        if not os.path.exists(os.path.join(self.dir, "master.public")):
            write_private(self.config, self._head())
            init = subprocess.run(
                [
                    sys.executable,
                    os.path.join(self.root, "run.py"),
                    "master",
                    "init",
                    "--config",
                    self.config,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=self.root,
                check=False,
            )
            if init.returncode:
                raise RuntimeError(f"master init failed: {init.stderr.strip()}")
        with open(os.path.join(self.dir, "master.public")) as f:
            return f.read().strip()

    def password(self) -> str:
        """The admin's password (kept 0600 in the master's folder)."""
        with open(os.path.join(self.dir, "admin-password")) as f:
            return f.read().strip()

    def setup(
        self,
        members: list[Member],
        sip: dict[str, str],
        users: list[tuple[str, str]],
        users_csv: str | None,
    ) -> None:
        """Write the configuration naming the nodes; give the master the users."""
        self.public_key()
        nodes = "".join(
            f'\n[[nodes]]\nid = "{m.id}"\nsip = "{sip[m.id]}"\nbus = "{m.pub}"\n'
            f'snapshot = "{m.snapshot}"\ncontrol = "{m.control}"\n'
            f'public_key = "{m.public_key}"\n'
            for m in members
            if len(members) > 1
        )
        write_private(self.config, self._head() + nodes)
        rows = list(users)
        if users_csv:
            with open(users_csv, newline="", encoding="utf-8-sig") as f:
                rows += read_users_csv(f, users_csv)
        master_store.init_master_store(f"sqlite:///{self.dir}/master.db")
        try:
            master_store.save_users(rows, "lab users")
        finally:
            master_store.close_master_store()

    def zone_nodes(self) -> list[tuple[str, str, int, int, int]]:
        """The nodes the master holds, each with its address, SIP port, SRV weight and
        TLS port (the DNS page sets weights, a removal takes a node out).

        The master's database stays open in the lab's process after the first read,
        asked again each second (opening it each time logged a line each time); an
        error closes it, to be opened anew next time."""
        if master_store.master_db.obj is None:
            master_store.init_master_store(f"sqlite:///{self.dir}/master.db")
        try:
            return master_store.zone_nodes()
        except Exception:
            master_store.close_master_store()
            raise

    def start(self) -> None:
        """Start ``run.py master``, its output appended to its log."""
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(self.root, "run.py"),
                    "master",
                    "--config",
                    self.config,
                ],
                stdout=logf,
                stderr=logf,
                cwd=self.root,
            )
        self.started = time.monotonic()
        self.reported = False

    def wait_ready(self, limit: float = 15.0) -> bool:
        """Wait (bounded) until the dashboard answers its login page."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.alive():
            try:
                with urllib.request.urlopen(self.url + "/login", timeout=1.0) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        return False
