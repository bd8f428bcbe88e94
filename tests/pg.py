"""A private, throwaway PostgreSQL server for tests.

:class:`PostgresServer` runs ``initdb`` into a fresh temporary directory,
starts the server with ``pg_ctl`` on a free port of 127.0.0.1 (its unix
socket in the same directory, fsync off), creates one database and gives
its URL; :meth:`PostgresServer.stop` stops it and removes the directory.
As root, initdb and pg_ctl run as the ``postgres`` OS user through
``runuser`` (PostgreSQL refuses to run as root); otherwise as the caller.

Binaries are looked up in ``$TANDEM_PG_BIN`` if set (and only there),
else in the newest ``/usr/lib/postgresql/*/bin``, then ``pg_config
--bindir``, then ``PATH``.
If none is found, :class:`PostgresUnavailable` is raised: the pytest
fixture (``tests/conftest.py``) turns that into a skip, or a failure when
``CI`` is set.

From a shell (e.g. a CI script)::

    python -m tests.pg -- python -m pytest tests   # run with TANDEM_PG_URL set
    python -m tests.pg                             # print the URL, serve
                                                   # until Ctrl-C / SIGTERM
"""

import argparse
import atexit
import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

log = logging.getLogger(__name__)

DATABASE = "tandem_test"
"""Name of the database created on the private server."""

START_TIMEOUT_S = 60
"""Bound on each of initdb and pg_ctl start/stop."""


class PostgresUnavailable(RuntimeError):
    """PostgreSQL server binaries (or a user to run them as) are missing."""


class PostgresError(RuntimeError):
    """The private PostgreSQL server could not be set up or started."""


def find_bindir() -> str | None:
    """Return the directory holding initdb and pg_ctl, or None."""
    if os.environ.get("TANDEM_PG_BIN"):
        return _first_with_server([os.environ["TANDEM_PG_BIN"]])
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_of, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout
            candidates.append(out.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    return _first_with_server(candidates)


def _version_of(bindir: str) -> int:
    """Major version of a /usr/lib/postgresql/N/bin directory (0 if none)."""
    name = os.path.basename(os.path.dirname(bindir))
    return int(name) if name.isdigit() else 0


def _first_with_server(candidates: list[str]) -> str | None:
    """Return the first directory holding initdb, pg_ctl and postgres."""
    for bindir in candidates:
        if all(
            os.access(os.path.join(bindir, name), os.X_OK)
            for name in ("initdb", "pg_ctl", "postgres")
        ):
            return bindir
    return None


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One private PostgreSQL server; use as a context manager or start/stop.

    ``url`` is ``postgresql://postgres@127.0.0.1:PORT/tandem_test`` once
    started (trust authentication, loopback only).
    """

    def __init__(self, bindir: str | None = None, database: str = DATABASE):
        self.bindir = bindir or find_bindir()
        self.database = database
        self.tmpdir = None
        self.port = None
        self.url = None
        self._run_as = []
        self._lock = threading.Lock()

    @property
    def datadir(self) -> str:
        """The cluster's data directory."""
        return os.path.join(self.tmpdir, "data")

    @property
    def logfile(self) -> str:
        """The server's log file."""
        return os.path.join(self.tmpdir, "server.log")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def start(self) -> "PostgresServer":
        """Create the cluster, start the server, create the database."""
        if self.bindir is None:
            where = (
                "$TANDEM_PG_BIN=%s" % os.environ["TANDEM_PG_BIN"]
                if os.environ.get("TANDEM_PG_BIN")
                else "/usr/lib/postgresql/*/bin, pg_config --bindir or PATH"
            )
            raise PostgresUnavailable(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not "
                "found in %s; install them (Debian: apt-get install "
                "postgresql-15) or set TANDEM_PG_URL to a server" % where
            )
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root, and there is no 'postgres' OS user to run initdb as"
                ) from None
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self.tmpdir = tempfile.mkdtemp(prefix="tandem-pg-")
        atexit.register(self.stop)
        if owner is not None:
            os.chown(self.tmpdir, owner.pw_uid, owner.pw_gid)
        try:
            self._initdb()
            self._start_server()
            self._create_database()
        except BaseException:
            self.stop()
            raise
        self.url = "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, self.database)
        log.info("private PostgreSQL at %s (dir %s)", self.url, self.tmpdir)
        return self

    def _run(self, args: list[str], what: str) -> None:
        """Run a PostgreSQL tool as the server's user; raise if it fails."""
        output = os.path.join(self.tmpdir, "tool.out")
        with open(output, "wb") as out:
            try:
                done = subprocess.run(
                    self._run_as + args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.tmpdir,
                    timeout=START_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                raise PostgresError("%s timed out after %ds" % (what, START_TIMEOUT_S)) from None
        if done.returncode != 0:
            with open(output, errors="replace") as out:
                text = out.read()
            raise PostgresError(
                "%s failed (exit %d): %s\n%s"
                % (what, done.returncode, " ".join(args), text + self._log_tail())
            )

    def _log_tail(self) -> str:
        """The end of the server log, for error messages."""
        try:
            with open(self.logfile, errors="replace") as handle:
                return handle.read()[-4000:]
        except OSError:
            return ""

    def _initdb(self) -> None:
        self._run(
            [
                os.path.join(self.bindir, "initdb"),
                "-D",
                self.datadir,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            "initdb",
        )

    def _pg_ctl(self, action: str) -> None:
        """Run ``pg_ctl <action>`` (start, restart) on this server's port."""
        options = (
            "-c listen_addresses=127.0.0.1 -p %d -k %s "
            "-c fsync=off -c full_page_writes=off" % (self.port, self.tmpdir)
        )
        self._run(
            [
                os.path.join(self.bindir, "pg_ctl"),
                "-D",
                self.datadir,
                "-l",
                self.logfile,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "-m",
                "fast",
                "-o",
                options,
                action,
            ],
            "pg_ctl " + action,
        )

    def _start_server(self) -> None:
        last = None
        for _ in range(3):
            self.port = free_port()
            try:
                self._pg_ctl("start")
                return
            except PostgresError as exc:
                last = exc
        raise last

    def restart(self) -> None:
        """Restart the server (fast shutdown) on the same port and data.

        Every client connection is cut, as when a database server fails
        over; for testing reconnection.
        """
        self._pg_ctl("restart")

    def pause(self) -> None:
        """Stop the server (fast shutdown), keeping its data and port for :meth:`resume`:
        the database is gone for its clients until then."""
        self._pg_ctl("stop")

    def resume(self) -> None:
        """Start the server :meth:`pause` stopped, on the same port and data."""
        self._pg_ctl("start")

    def _create_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=10
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute('CREATE DATABASE "%s"' % self.database)
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        with self._lock:
            if self.tmpdir is None:
                return
            pidfile = os.path.join(self.datadir, "postmaster.pid")
            if os.path.exists(pidfile):
                try:
                    self._run(
                        [
                            os.path.join(self.bindir, "pg_ctl"),
                            "-D",
                            self.datadir,
                            "-m",
                            "fast",
                            "-w",
                            "-t",
                            str(START_TIMEOUT_S),
                            "stop",
                        ],
                        "pg_ctl stop",
                    )
                except PostgresError:
                    log.warning("pg_ctl stop failed, killing the server", exc_info=True)
                    self._kill(pidfile)
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
            self.url = None

    @staticmethod
    def _kill(pidfile: str) -> None:
        """SIGKILL the postmaster this object started (pid from its file)."""
        try:
            with open(pidfile) as handle:
                pid = int(handle.readline())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            log.warning("could not kill the server of %s", pidfile, exc_info=True)


def main(argv: list[str] | None = None) -> int:
    """Start a server, then run a command with TANDEM_PG_URL, or serve."""
    parser = argparse.ArgumentParser(prog="python -m tests.pg", description=__doc__.split("\n")[0])
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="command to run with TANDEM_PG_URL set"
    )
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    logging.basicConfig(level=logging.INFO)
    with PostgresServer() as server:
        if command:
            env = dict(os.environ, TANDEM_PG_URL=server.url)
            return subprocess.call(command, env=env)
        sys.stdout.write(server.url + "\n")
        sys.stdout.flush()
        stopped = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopped.set())
        while not stopped.wait(3600):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
