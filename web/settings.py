"""The master's configuration file (TOML) and its first-run set-up.

```
[master]
listen = "127.0.0.10:8080"      # the dashboard (gevent's WSGI server)
data_dir = "/var/lib/tandem-master"
database = ""                   # default: sqlite:///<data_dir>/master.db
domain = "example.test"         # used by `run.py master init`
url = "https://master.example.test"   # how nodes reach the dashboard (join commands)
join_token_ttl = 3600           # seconds a join token lives
dns = ""                        # address:port: serve the cluster's zone there (off when empty)

[[nodes]]                       # one per node the master pushes to
id = "node1"
sip = "127.0.0.11:5060"
control = "tcp://127.0.0.11:7003"
snapshot = "tcp://127.0.0.11:7002"   # with bus: the master pushes the peer list
public_key = "..."              # the node's CurveZMQ public key

[backup]                        # scheduled backups (web.backups)
dir = "backups"                 # relative to data_dir
every = 86400                   # seconds between two; 0: none
keep = 7                        # archives kept

[alarms]                        # webhook, smtp_*, thresholds: see web.alarms
```

The master's own secrets live in ``data_dir``, each 0600: its CurveZMQ key
pair (``master.public``, ``master.secret``), the session-signing key
(``session.key``), the cluster's ``[auth] secret`` that joining nodes get
(``cluster.secret``) and the first admin's password (``admin-password``).
"""

import os
import secrets
from dataclasses import dataclass, field

from actors.bus import generate_keypair
from store.files import check_private, make_private_dir, read_toml, write_private

DEFAULT_LISTEN = "127.0.0.10:8080"


class SettingsError(Exception):
    """The master's configuration is missing, unreadable or wrong."""


@dataclass
class MasterSettings:
    """Everything the master process needs."""

    data_dir: str
    listen: str = DEFAULT_LISTEN
    database: str = ""
    domain: str = ""
    nodes: list[dict] = field(default_factory=list)
    push_interval: float = 2.0
    lab_data: str = ""
    """The data folder of the lab running the nodes (restarts go to its control socket)."""
    config_path: str = ""
    """The file these settings came from (a backup carries it)."""
    backup: dict = field(default_factory=dict)
    """The ``[backup]`` table (``web.backups.BackupPlan``)."""
    alarms: dict = field(default_factory=dict)
    """The ``[alarms]`` table (``web.alarms``)."""
    url: str = ""
    """The dashboard's URL as nodes reach it (printed in join commands); default from listen."""
    join_token_ttl: float = 3600.0
    """Seconds a join token lives."""
    dns: str = ""
    """``address:port`` where the master serves the cluster's zone (empty: it does not)."""

    @property
    def public_url(self) -> str:
        """``url``, or ``http://<listen>``."""
        return (self.url or f"http://{self.listen}").rstrip("/")

    @property
    def database_url(self) -> str:
        """The database URL: ``database``, or SQLite in ``data_dir``."""
        return self.database or f"sqlite:///{os.path.join(self.data_dir, 'master.db')}"

    def path(self, name: str) -> str:
        """A file of the master's data folder."""
        return os.path.join(self.data_dir, name)


def load_settings(path: str) -> MasterSettings:
    """Read and check ``path``."""
    data = read_toml(path, SettingsError)
    body = data.get("master", {})
    known = {
        "listen",
        "data_dir",
        "database",
        "domain",
        "push_interval",
        "lab_data",
        "url",
        "join_token_ttl",
        "dns",
    }
    unknown = (set(body) - known) | (set(data) - {"master", "nodes", "backup", "alarms"})
    if unknown:
        raise SettingsError(f"{path}: unknown settings {sorted(unknown)}")
    base = os.path.dirname(os.path.abspath(path))
    data_dir = os.path.normpath(os.path.join(base, body.get("data_dir", "master-data")))
    nodes = data.get("nodes", [])
    for n in nodes:
        missing = {"id", "sip", "control", "public_key"} - set(n)
        if missing:
            raise SettingsError(f"{path}: a [[nodes]] entry lacks {sorted(missing)}")
    ttl = body.get("join_token_ttl", 3600.0)
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 0 < ttl <= 30 * 86400:
        raise SettingsError(
            f"{path}: join_token_ttl must be seconds, more than 0 and at most 30 days"
        )
    return MasterSettings(
        data_dir=data_dir,
        listen=body.get("listen", DEFAULT_LISTEN),
        url=str(body.get("url", "")),
        join_token_ttl=float(ttl),
        dns=str(body.get("dns", "")),
        database=body.get("database", ""),
        domain=body.get("domain", ""),
        nodes=nodes,
        push_interval=float(body.get("push_interval", 2.0)),
        lab_data=os.path.normpath(os.path.join(base, body["lab_data"]))
        if body.get("lab_data")
        else "",
        config_path=os.path.abspath(path),
        backup=data.get("backup", {}),
        alarms=data.get("alarms", {}),
    )


def read_secret(path: str) -> str:
    """A secret file's text, refused when others can read it."""
    try:
        check_private(path, "secret")
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise SettingsError(
            f"cannot read {path}: {e.strerror} (run `run.py master init` first)"
        ) from None


def init_files(settings: MasterSettings) -> str | None:
    """Make the data folder (0700) and the master's key pair and session key (0600)
    if missing. Returns the generated admin password when one was made, else None."""
    make_private_dir(settings.data_dir)
    if not os.path.exists(settings.path("master.secret")):
        public, secret = generate_keypair()
        write_private(settings.path("master.public"), public + "\n")
        write_private(settings.path("master.secret"), secret + "\n")
    if not os.path.exists(settings.path("session.key")):
        write_private(settings.path("session.key"), secrets.token_hex(32) + "\n")
    cluster_secret(settings)
    if os.path.exists(settings.path("admin-password")):
        return None
    password = secrets.token_urlsafe(18)
    write_private(settings.path("admin-password"), password + "\n")
    return password


def cluster_secret(settings: MasterSettings) -> str:
    """The cluster's ``[auth] secret`` (hex), made (0600) on first use; joining nodes get it."""
    path = settings.path("cluster.secret")
    if not os.path.exists(path):
        write_private(path, secrets.token_hex(32) + "\n")
    return read_secret(path)
