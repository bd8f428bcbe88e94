"""The node's dialog records (``sipcore.dialogs``): kept, shared, taken over, counted.

The proxy actor hands each turn's call events to :meth:`Dialogs.observe`: an
answered INVITE makes a record (owned by this node), a BYE ends it. Records
made, taken over or ended go to every peer as ``DIALOGS`` messages on the
replication bus, only while every peer announces the ``dialogs`` feature
(``sipcore.protocol``: a node of v0.23.0 never gets a kind it does not know);
when a peer asks for a snapshot (it restarted or rejoined), or the feature
becomes available, this node sends again every record it owns, so a
restarted node learns the calls of the cluster.

A loop, twice a second, ages the table and looks at the peers' liveness: the
records of a peer that is dead go to exactly one survivor, the lowest live
node id (``sipcore.dialogs.adopter``), which publishes them as its own and
probes both ends of each with an OPTIONS inside the dialog over UDP, from the
node's own SIP socket (``[dialogs] probe_timeout``). A call one of whose ends
no longer answers is over: the survivor sends a BYE to each end (the one still
there hangs up) and ends the record, with a ``lost`` call event (the call's
CDR says ``node failure``). A call whose ends both answer goes on; its phones' BYE, through any node
(the Record-Route names ``[dialogs] record_route``), ends it. Ends over TCP
or TLS are not probed (the dead node held their connections): their calls
wait for their BYE or ``max_age``.

``status`` adds ``calls`` (the records this node owns) and counts; the
drain is ``drained`` only once its own calls are over too; ``calls`` on the
control endpoint lists the records (``{"owner": id, "limit": n}``).
"""

import logging
import time
from dataclasses import replace

import gevent
import gevent.event
from gevent.pool import Pool

from sipcore.call_events import ANSWER, ATTEMPT, BYE, CANCEL, FAILURE, LOST, CallEvent
from sipcore.dialogs import (
    BRANCH_PREFIX,
    MAX_ROWS,
    Dialog,
    DialogTable,
    adopter,
    bye_request,
    decode_dialogs,
    encode_dialogs,
    new_branch,
    parse_dest,
    probe_request,
)
from sipcore.errors import SipError

from . import bus as busmod
from .bus import BusError

log = logging.getLogger(__name__)

LOOP = 0.5
"""Seconds between two looks at the peers' liveness and the records' age."""
MAX_LIST = 1000
"""Most records one ``calls`` answer lists."""
PROBES = 50
"""Probes and BYEs in flight at once."""


class Dialogs:
    """One node's dialog records; see the module doc. ``replicator`` (None: alone)
    carries the records to the peers; ``outbox`` (the proxy's ``CallOutbox``, or
    None) takes the ``lost`` events of calls this node ends."""

    def __init__(
        self,
        node_id: str,
        domain: str,
        address: str,
        replicator=None,
        outbox=None,
        max_dialogs: int = 100_000,
        max_age: float = 12 * 3600.0,
        probe_timeout: float = 4.0,
        clock=time.time,
    ):
        self.id, self.domain, self.address = node_id, domain, address
        self.table = DialogTable(node_id, max_dialogs, max_age)
        self.replicator = replicator
        self.outbox = outbox
        self.probe_timeout = probe_timeout
        self.clock = clock
        self._out: list[Dialog] = []
        self._ends: list[str] = []
        self._shared = False
        self._taken_from: set[str] = set()
        """Dead peers whose calls this node took over (until they live again)."""
        self.transport = None
        """The node's transport: probes and BYEs leave from its UDP socket (the address
        the phones know, and their NATs let in), their responses come back through
        ``response``."""
        self._waiting: dict[str, gevent.event.AsyncResult] = {}
        self.pool = Pool(PROBES)
        self.stats = {"published": 0, "probed": 0, "unanswered": 0, "ended_here": 0}

    # -- what the proxy saw ----------------------------------------------------------
    def observe(self, events: list[CallEvent], wall: float) -> None:
        """Fold one proxy turn's call events (seen at ``wall``) into the table."""
        table = self.table
        for ev in events:
            kind = ev.kind
            if kind == ATTEMPT:
                table.attempt(ev.call_id, wall)
            elif kind == ANSWER and ev.dialog is not None:
                d = table.answered(
                    replace(ev.dialog, started_at=wall, answered_at=wall, owner=self.id)
                )
                self._out.append(d)
            elif kind == BYE:
                if table.ended(ev.call_id, wall) is not None or self._shared:
                    self._ends.append(ev.call_id)
            elif kind in (FAILURE, CANCEL):
                table.failed(ev.call_id)
        if self._out or self._ends:
            self._publish()

    # -- the bus ------------------------------------------------------------------
    def _may_share(self) -> bool:
        rep = self.replicator
        return rep is not None and rep.clustered and rep.core.peers_support("dialogs")

    def _publish(self) -> None:
        """Send what changed, if every peer reads it (else it stays local)."""
        out, self._out = self._out, []
        ends, self._ends = self._ends, []
        if not self._may_share():
            return
        for i in range(0, max(len(out), len(ends)), MAX_ROWS):
            self.replicator.publish_frame(
                busmod.DIALOGS,
                encode_dialogs(self.id, out[i : i + MAX_ROWS], ends[i : i + MAX_ROWS]),
            )
            self.stats["published"] += 1

    def share_all(self, _peer: str | None = None) -> None:
        """Send again every record this node owns (a peer resyncs, or all peers now
        read dialog records)."""
        self._out.extend(self.table.of(self.id))
        self._publish()

    def decode(self, body: bytes):
        """The replicator's decoder of ``DIALOGS`` messages: ``(sender, (records, ends))``."""
        node, dialogs, ends = decode_dialogs(body)
        return node, (dialogs, ends)

    def received(self, peer: str, payload) -> None:
        """Records and ends from ``peer`` (in the replicator's loop)."""
        dialogs, ends = payload
        self.table.apply(dialogs, ends, self.clock())

    # -- the loop: age, take over --------------------------------------------------
    def run(self) -> None:
        """Age the records and take over those of dead peers, every ``LOOP`` seconds."""
        while True:
            gevent.sleep(LOOP)
            try:
                self.tick()
            except Exception:
                log.exception("dialogs: tick failed")

    def tick(self) -> None:
        """One turn of the loop (see the module doc)."""
        expired = self.table.expire(self.clock())
        if expired:
            log.warning(
                "%d dialog records dropped %d s after their answer (BYE missed)",
                len(expired),
                int(self.table.max_age),
            )
        shared = self._may_share()
        if shared and not self._shared:
            self.share_all()
        self._shared = shared
        rep = self.replicator
        if rep is None or not rep.clustered:
            return
        peers = rep.core.peers
        live = [self.id] + [
            p for p, st in peers.items() if st.liveness.state in ("alive", "suspected")
        ]
        dead_now = {p for p, st in peers.items() if st.liveness.state == "dead"}
        self._taken_from &= dead_now  # a peer back alive may die again
        for dead in dead_now - self._taken_from:
            if adopter(dead, live) != self.id:
                continue
            self._taken_from.add(dead)  # one pass over the table per death
            taken = self.table.adopt(dead, self.id)
            if not taken:
                continue
            log.warning(
                "node %s is dead: %d of its calls taken over here; probing their ends",
                dead,
                len(taken),
            )
            self._out.extend(taken)
            self._publish()
            for d in taken:
                self.pool.spawn(self._check, d)

    # -- probes and BYEs -------------------------------------------------------------
    def response(self, resp) -> bool:
        """A response the transport got: True when it answers one of our probes or
        BYEs (its branch is one of ours), which it then settles."""
        try:
            branch = resp.top_via.branch or ""
        except SipError:
            return False
        if not branch.startswith(BRANCH_PREFIX):
            return False
        waiter = self._waiting.get(branch)
        if waiter is not None and resp.status >= 200:
            waiter.set(resp.status)
        return True

    def _exchange(self, dest: str, make) -> int | None:
        """Send ``make(sent_by, branch)`` to ``dest`` over UDP, retransmitting as
        Timer E does, until a final response or ``probe_timeout``; its status."""
        where = parse_dest(dest)
        if where is None or where[0] != "udp" or self.transport is None:
            return None
        host, port = self.address, self.transport.port
        sent_by = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        branch = new_branch()
        data = make(sent_by, branch)
        waiter = self._waiting[branch] = gevent.event.AsyncResult()
        try:
            deadline = time.monotonic() + self.probe_timeout
            interval = 0.5
            while time.monotonic() < deadline:
                if not self.transport.send(where, data):
                    return None
                status = waiter.wait(min(interval, max(0.0, deadline - time.monotonic())))
                if status is not None:
                    return status
                interval = min(interval * 2, 4.0)
            return None
        finally:
            del self._waiting[branch]

    def _answers(self, d: Dialog, to_caller: bool) -> bool | None:
        """Whether one end of ``d`` still has the call: it answers an OPTIONS inside
        the dialog, with anything but 481 or 408 (None: not probed, not over UDP)."""
        dest = d.caller_dest if to_caller else d.callee_dest
        where = parse_dest(dest)
        if where is None or where[0] != "udp":
            return None
        self.stats["probed"] += 1
        status = self._exchange(
            dest, lambda sent_by, branch: probe_request(d, to_caller, sent_by, branch)
        )
        return status is not None and status not in (408, 481)

    def _check(self, d: Dialog) -> None:
        """Probe both ends of a call taken over; end it when one of them is gone."""
        ends = [self._answers(d, True), self._answers(d, False)]
        if False not in ends or self.table.get(d.call_id) is None:
            return
        self.stats["unanswered"] += 1
        log.warning(
            "call %s (%s to %s): %s no longer answers; ending it with a BYE to each end",
            d.call_id,
            d.caller,
            d.callee,
            "the caller" if ends[0] is False else "the callee",
        )
        byes = [
            gevent.spawn(
                self._exchange,
                dest,
                lambda sent_by, branch, c=to_caller: bye_request(d, c, sent_by, branch),
            )
            for dest, to_caller in ((d.caller_dest, True), (d.callee_dest, False))
        ]
        gevent.joinall(byes)
        wall = self.clock()
        if self.table.ended(d.call_id, wall) is None:
            return
        self.stats["ended_here"] += 1
        self._ends.append(d.call_id)
        self._publish()
        if self.outbox is not None:
            self.outbox.add(
                [CallEvent(LOST, d.call_id, d.caller, d.callee, f"node:{self.id}")], wall
            )

    # -- control --------------------------------------------------------------------
    def calls(self, request: dict) -> dict:
        """The records (of ``owner``, when given; at most ``limit``), oldest first."""
        owner, limit = request.get("owner"), request.get("limit", 100)
        if owner is not None and not isinstance(owner, str):
            raise BusError("owner must be a node id")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise BusError("limit must be a non-negative integer")
        found = self.table.of(owner) if owner else list(self.table.dialogs.values())
        return {
            "id": self.id,
            "total": len(found),
            "calls": [d.summary() for d in found[: min(limit, MAX_LIST)]],
        }

    def status(self) -> dict:
        """What ``status`` adds: this node's calls, every record known, counts."""
        return {
            "calls": self.table.count(self.id),
            "dialogs": len(self.table),
            "dialog_stats": {**self.table.stats, **self.stats},
        }


def attach_dialogs(node) -> Dialogs:
    """Give ``node`` its ``Dialogs`` (``node.dialogs``), fed by its proxy and carried by
    its replicator; serve ``calls`` and add to ``status``. Call after ``attach_drain``."""
    cfg = node.cfg
    rep = node.replicator
    dialogs = node.dialogs = Dialogs(
        cfg.id,
        cfg.domain,
        cfg.address,
        rep,
        node.proxy.outbox,
        cfg.max_dialogs,
        cfg.dialog_max_age,
        cfg.probe_timeout,
    )
    node.proxy.dialogs = dialogs
    dialogs.transport = node.transport
    if rep is not None:
        rep.add_kind(busmod.DIALOGS, dialogs.decode, dialogs.received)
        previous = rep.on_snapshot_request

        def on_snapshot_request(peer: str) -> None:
            if previous is not None:
                previous(peer)
            dialogs.share_all(peer)

        rep.on_snapshot_request = on_snapshot_request
    node.group.spawn(dialogs.run).link_exception(node.actor_died)
    control = rep.control if rep is not None else None
    if control is not None:
        control.handle("calls", dialogs.calls)

        def status(_request: dict, out: dict) -> None:
            # The calls this node still carries: a node that carries one is not drained.
            out.update(dialogs.status())
            if "drained" in out:
                out["drained"] = out["drained"] and out["calls"] == 0

        control.extend("status", status)
    return dialogs
