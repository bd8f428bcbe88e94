"""The master's configuration push: every node gets the newest version, over CurveZMQ.

One greenlet owns the push. It wakes on every change (``poke``) and every
``interval`` seconds, and rolls the newest configuration version out to each
node that does not run it: one node first, the others once that one reports
itself healthy (``config_staged``, ``actors.staged``); a node that rolls back
stops the rollout. A node of the previous release, which knows no staging, gets
the plain ``config`` push (see README, Upgrades). Each node is asked, cheaply,
which version it runs, and its TLS port, kept for the zone's ``_sips._tcp``
records. It talks to each node's control endpoint with the
master's key pair (the nodes know it as ``[cluster] master_key``). A node
that is down keeps its last version and gets the newest one once it answers
again; the master is never needed for a call.

The first node of a rollout must be able to check itself: it is a node that
says it is synced (one still syncing answers SIP 503 to everything), and the
push tells it that it is the first (a node that restarted since it said so
refuses to take the version unchecked). A round
waits for its pushes at most ``ROUND_WAIT``: a slower push (a node that
stopped in the middle of one never answers; ``PUSH_TIMEOUT`` ends it) goes on
by itself, its node skipped until it ends, so one node never holds back the
versions of the others; a push to a node removed meanwhile is dropped.
"""

import logging
import time

import gevent
from gevent.event import Event
from gevent.pool import Group

from actors.bus import Bus, BusError, request
from store import audit
from store import master as ms
from store import versions

log = logging.getLogger(__name__)

PUSH_TIMEOUT = 30.0
"""Seconds a node may take to apply and acknowledge one version (10,000 users take about one)."""
CHECK_TIMEOUT = 1.0
"""Seconds a node may take to say which version it runs."""
ROUND_WAIT = 5.0
"""Seconds a round waits for its pushes; a slower one goes on past the round."""


class Pusher:
    """Pushes configuration versions to every node until each acknowledges the newest."""

    def __init__(self, public_key: str, secret_key: str, interval: float = 2.0):
        self.bus = Bus(public_key, secret_key, "master")
        self.interval = interval
        self.wake = Event()
        self.greenlet = None
        self.jobs = Group()
        """One greenlet per node of the round in progress (killed by ``stop``)."""
        self._cached: tuple[int, dict] | None = None
        self.last_round = 0.0
        self._bad_tls_port: set[str] = set()
        self.pushing: dict[str, tuple[int, gevent.Greenlet, object]] = {}
        """Each node's push in progress: the version, its greenlet (it may outlast
        its round) and the boot of the node it went to."""

    def start(self) -> None:
        """Start the push greenlet."""
        self.greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop pushing and close the bus."""
        if self.greenlet is not None:
            self.greenlet.kill(block=True, timeout=2)
            self.greenlet = None
        self.jobs.kill(block=True, timeout=2)
        self.bus.close()

    def poke(self) -> None:
        """Push at once (a change was made)."""
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait(self.interval)
            self.wake.clear()
            try:
                self.push_round()
            except Exception:
                log.exception("configuration push round failed")

    def _config(self, version: int) -> dict:
        if self._cached is None or self._cached[0] != version:
            self._cached = (version, ms.config_for(version))
        return self._cached[1]

    def push_round(self) -> dict:
        """Roll the newest version out to every node behind it; ``{node id: outcome}``.

        Every node is asked first (cheaply) which version it runs: one thought
        current may have lost its store and restarted meanwhile, and one that is
        down costs the round ``CHECK_TIMEOUT``, not ``PUSH_TIMEOUT``. While no node
        runs the version, it goes to one node alone (the lowest id of those that
        answer and are synced); only when that node reports itself healthy does it
        go to the others. A node whose push is still going on is asked only whether
        it restarted since (its ``boot``): that push then never ends, and is dropped
        (the node is pushed to again at once). A node
        that reports itself unhealthy has rolled back: the rollout of this version
        stops (``store.versions.rollout_failure``) until a newer one.
        """
        version = ms.current_version()
        if version == 0:
            return {}
        nodes = ms.list_nodes()
        self._in_progress({n["node_id"] for n in nodes})
        asked = {n["node_id"]: self.jobs.spawn(self._running, n) for n in nodes}
        gevent.joinall(list(asked.values()), timeout=CHECK_TIMEOUT + 1)
        self._drop_restarted(asked)
        busy = {node_id: v for node_id, (v, _, _) in self.pushing.items()}
        idle = [n for n in nodes if n["node_id"] not in busy]
        runs = [
            j.value[0]
            for node_id, j in asked.items()
            if node_id not in busy and j.successful() and isinstance(j.value, tuple)
        ]
        if runs and max(runs) > version:
            version = self._past(max(runs))
        outcome: dict[str, object] = {n: f"push of {v} in progress" for n, v in busy.items()}
        behind, synced, current = [], set(), False
        for n in idle:
            job = asked[n["node_id"]]
            answer = job.value if job.successful() else "no answer"
            if isinstance(answer, str):
                ms.record_ack(n["node_id"], n["acked_version"], answer)
                outcome[n["node_id"]] = answer
                continue
            running, is_synced, n["boot"] = answer
            if running >= version:
                if n["last_error"] or n["acked_version"] < running:
                    ms.record_ack(n["node_id"], running)
                outcome[n["node_id"]] = f"version {running}"
                current = True
            else:
                behind.append(n)
                if is_synced:
                    synced.add(n["node_id"])
        failed = versions.rollout_failure()
        if behind and failed is not None:
            outcome.update(
                {
                    n["node_id"]: f"rollout of {version} stopped: {failed['node']} "
                    f"rolled back ({failed['reason']})"
                    for n in behind
                }
            )
            behind = []
        if behind and not current:
            behind = self._canary(behind, synced, busy, version, outcome)
        jobs = {n["node_id"]: self._start_push(n, version) for n in behind}
        gevent.joinall(list(jobs.values()), timeout=ROUND_WAIT)
        for node_id, job in jobs.items():
            outcome[node_id] = self._outcome(job, version)
        self.last_round = time.time()
        return outcome

    def _canary(
        self,
        behind: list[dict],
        synced: set[str],
        busy: dict[str, int],
        version: int,
        outcome: dict[str, object],
    ) -> list[dict]:
        """No node runs ``version`` yet: stage it on one node first, the lowest id of those
        behind that are synced (one syncing cannot check itself). The nodes to push to
        next: the others once that one runs it healthy, else none."""
        waiting = "waiting for the first node of the rollout"
        if version in busy.values():  # its push goes on from an earlier round
            outcome.update({n["node_id"]: waiting for n in behind})
            return []
        first = next((n for n in behind if n["node_id"] in synced), None)  # ordered by id
        if first is None:
            outcome.update(
                {n["node_id"]: f"{waiting}: no node synced to check {version}" for n in behind}
            )
            return []
        job = self._start_push(first, version, first=True)
        job.join(timeout=ROUND_WAIT)
        outcome[first["node_id"]] = result = self._outcome(job, version)
        rest = [n for n in behind if n is not first]
        if not (job.ready() and isinstance(result, str) and result.startswith("version ")):
            outcome.update({n["node_id"]: waiting for n in rest})
            return []
        return rest

    def _in_progress(self, listed: set[str]) -> None:
        """Forget the pushes that ended; drop those to a node no longer listed (removed)."""
        for node_id, (_, job, _) in list(self.pushing.items()):
            if job.ready():
                del self.pushing[node_id]
            elif node_id not in listed:
                del self.pushing[node_id]
                job.kill(block=False)
                log.info("push to node %s dropped: the node was removed", node_id)

    def _drop_restarted(self, asked: dict[str, gevent.Greenlet]) -> None:
        """Drop the pushes to a node that answers from another boot than the one pushed
        to: it restarted in the middle of its push, which will never be answered."""
        for node_id, (version, job, boot) in list(self.pushing.items()):
            check = asked.get(node_id)
            answer = check.value if check is not None and check.successful() else None
            if isinstance(answer, tuple) and None not in (boot, answer[2]) and answer[2] != boot:
                del self.pushing[node_id]
                job.kill(block=False)
                log.info("push of %d to node %s dropped: the node restarted", version, node_id)

    def _start_push(self, node: dict, version: int, first: bool = False) -> gevent.Greenlet:
        job = self.jobs.spawn(self._push, node, version, first)
        self.pushing[node["node_id"]] = (version, job, node.get("boot"))
        return job

    @staticmethod
    def _outcome(job: gevent.Greenlet, version: int) -> object:
        if not job.ready():
            return f"push of {version} in progress"
        return job.value if job.successful() else "push failed"

    @staticmethod
    def _past(running: int) -> int:
        """A node runs a version newer than the master's newest: the master was restored
        from an archive older than what the nodes run (e.g. onto a new host). The current
        configuration becomes a new version numbered past it, so every node takes it."""
        version = versions.number_past(
            running, f"numbered past version {running}, which a node runs (a restored master)"
        )
        log.warning(
            "a node runs configuration %d, newer than this master's: the current "
            "configuration is rolled out as %d",
            running,
            version,
        )
        audit.record(
            "master",
            "versions renumbered",
            "",
            after={"version": version},
            result=f"a node ran version {running}, newer than the master's newest",
        )
        return version

    def _running(self, node: dict) -> tuple[int, bool, object] | str:
        """The version a node runs, whether it is synced (a node of a release that
        does not say is taken as synced) and its boot (None from a release that does not
        say), or why it did not say."""
        try:
            answer = request(
                self.bus,
                node["control"],
                node["public_key"],
                {"cmd": "config_version"},
                timeout=CHECK_TIMEOUT,
            )
        except BusError as e:
            return str(e)
        self._note_tls_port(node, answer.get("tls_port", 0))
        return int(answer["version"]), answer.get("synced", True) is not False, answer.get("boot")

    def _note_tls_port(self, node: dict, port: object) -> None:
        """Keep the TLS port a node reports (absent: 0, no TLS) for the zone's
        ``_sips._tcp`` records; a value that is no port is ignored, with a WARNING
        the first time in a row (then DEBUG: a node polled every round)."""
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            first = node["node_id"] not in self._bad_tls_port
            self._bad_tls_port.add(node["node_id"])
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "node %s reported TLS port %.40r: not a port, ignored",
                node["node_id"],
                port,
            )
            return
        self._bad_tls_port.discard(node["node_id"])
        if port != node["tls_port"]:
            ms.set_tls_port(node["node_id"], port)
            log.info("node %s takes TLS on port %s", node["node_id"], port or "none")

    def _push(self, node: dict, version: int, first: bool = False) -> str:
        """Stage ``version`` on a node; ``"version N"`` when it runs it healthy. ``first``:
        the first node of the rollout, which must check it (``actors.staged``)."""
        message = {"cmd": "config_staged", **self._config(version)}
        if first:
            message["first"] = True
        try:
            try:
                result = request(
                    self.bus, node["control"], node["public_key"], message, timeout=PUSH_TIMEOUT
                )
            except BusError as e:
                if "unknown command 'config_staged'" not in str(e):
                    raise
                # A node of the previous release (v0.23.0) applies a version at once and
                # checks nothing: its answer is taken as healthy.
                result = request(
                    self.bus,
                    node["control"],
                    node["public_key"],
                    {**message, "cmd": "config"},
                    timeout=PUSH_TIMEOUT,
                )
                result = {**result, "healthy": True}
        except BusError as e:
            ms.record_ack(node["node_id"], version, str(e))
            log.info("node %s did not take configuration %d: %s", node["node_id"], version, e)
            if str(e)[:500] != node["last_error"]:  # a dead node's retries are one row
                audit.record(
                    "master",
                    "push",
                    node["node_id"],
                    after={"version": version},
                    result=str(e),
                    ok=False,
                )
            self._undo(node, version)
            return str(e)
        if not result.get("healthy", False):
            reason = str(result.get("reason", "unhealthy"))
            versions.record_rollout_failure(version, node["node_id"], reason)
            error = f"configuration {version} refused or rolled back: {reason}"
            ms.record_ack(node["node_id"], version, error)
            audit.record(
                "master",
                "rollout stopped",
                node["node_id"],
                after={"version": version},
                result=reason,
                ok=False,
            )
            log.warning(
                "node %s rolled configuration %d back (%s): rollout stopped",
                node["node_id"],
                version,
                reason,
            )
            return error
        acked = int(result.get("version", 0))
        ms.record_ack(node["node_id"], acked)
        audit.record(
            "master",
            "push",
            node["node_id"],
            before={"version": node["acked_version"]},
            after={"version": acked},
        )
        log.info("node %s runs configuration %d", node["node_id"], acked)
        return f"version {acked}"

    def _undo(self, node: dict, version: int) -> None:
        """A staged push went unanswered: ask the node to put back what it ran before, in
        case it applied the version without its answer arriving (best effort)."""
        try:
            request(
                self.bus,
                node["control"],
                node["public_key"],
                {"cmd": "config_rollback", "version": version},
                timeout=CHECK_TIMEOUT,
            )
        except BusError:
            pass
