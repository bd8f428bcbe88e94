"""The registrar actor: REGISTER in, bindings committed in groups, 200 out.

One greenlet owns the inbox, the non-INVITE server transactions of
REGISTER, and the writes to the location table. It takes every REGISTER
waiting in its inbox as one batch, applies the rules to each, writes all
binding changes of the batch in one database transaction (group commit),
and only then sends the 200s, so a binding is durable before its 200.
"""

import logging
import time
import uuid

from gevent.queue import Empty, Queue

from sipcore.errors import SipError
from sipcore.location import Binding, Location
from sipcore.message import Request, error_response, make_response
from sipcore.registrar import RegistrarRules
from sipcore.transaction import TransactionLayer
from store import bindings as binding_store

log = logging.getLogger(__name__)


class RegistrarActor:
    """Handles REGISTER for the node's domain."""

    def __init__(self, node_id: str, rules: RegistrarRules, authenticator, location: Location,
                 transport, sequencer, batch_max: int = 256, on_commit=None,
                 timers: dict | None = None, clock=time.time):
        self.node_id = node_id
        self.rules = rules
        self.auth = authenticator
        self.location = location
        self.transport = transport
        self.sequencer = sequencer
        self.batch_max = batch_max
        self.on_commit = on_commit
        self.clock = clock
        self.tx = TransactionLayer(**(timers or {}))
        self.inbox: Queue = Queue()
        self.greenlet = None
        self.stats = {"register": 0, "ok": 0, "challenged": 0, "rejected": 0,
                      "commits": 0, "committed": 0}

    def submit(self, req: Request, dest) -> None:
        """Give a REGISTER to the actor (called by the transport)."""
        self.inbox.put((req, dest))

    def run(self) -> None:
        """The actor's loop: batches of REGISTER, transaction timers, expiry."""
        inbox = self.inbox
        next_expiry = next_purge = self.clock()
        while True:
            deadline = self.tx.get_timer()
            deadline = next_expiry if deadline is None else min(deadline, next_expiry)
            timeout = max(0.0, deadline - self.clock())
            try:
                first = inbox.get(timeout=timeout)
            except Empty:
                first = None
            now = self.clock()
            self._send_all(self.tx.handle_timer(now))
            if now >= next_expiry:
                self.location.expire(now)
                next_expiry = now + 1.0
                if now >= next_purge:
                    next_purge = now + 60.0
                    self._purge(now)
            if first is None:
                continue
            batch = [first]
            while len(batch) < self.batch_max:
                try:
                    batch.append(inbox.get_nowait())
                except Empty:
                    break
            try:
                self._process(batch, now)
            except Exception:
                log.exception("registrar batch of %d failed", len(batch))

    def _purge(self, now: float) -> None:
        try:
            binding_store.purge_expired(now)
        except Exception:
            log.exception("purging expired bindings failed")

    def _send_all(self, outgoing) -> None:
        send = self.transport.send
        for dest, data in outgoing:
            send(dest, data)

    def _process(self, batch: list, now: float) -> None:
        pending = []
        changes: list[Binding] = []
        undo = []
        tx = self.tx
        seq_before = self.sequencer.peek()
        for req, dest in batch:
            st, out = tx.receive_request(req, dest, now)
            if out:
                self._send_all(out)
            if st is None:
                continue
            self.stats["register"] += 1
            try:
                response, made = self._register(req, dest, now)
            except SipError as err:
                self.stats["rejected"] += 1
                response, made = error_response(req, err, to_tag=_tag()), []
            for b in made:
                undo.append((b.aor, b.key, self.location.put(b)))
            changes.extend(made)
            if made:
                pending.append((st, response))
            else:
                self._send_all(tx.respond(st, response, now))
        if changes:
            try:
                binding_store.write_batch([b.to_record() for b in changes])
            except Exception:
                log.exception("group commit of %d bindings failed; answering 500", len(changes))
                for aor, key, old in reversed(undo):
                    self.location.restore(aor, key, old)
                self.sequencer.rewind(seq_before)
                for st, response in pending:
                    err = SipError(500, "Database Unavailable", [("Retry-After", "5")])
                    self._send_all(tx.respond(st, error_response(st.request, err), now))
                return
            self.stats["commits"] += 1
            self.stats["committed"] += len(changes)
            if self.on_commit is not None:
                self.on_commit(changes)
        for st, response in pending:
            self.stats["ok"] += 1
            self._send_all(tx.respond(st, response, now))

    def _register(self, req: Request, dest, now: float):
        rules = self.rules
        rules.check(req)
        result = self.auth.authenticate("REGISTER", req.raw_values("authorization"), now)
        if not result.ok:
            self.stats["challenged"] += 1
            headers = [("WWW-Authenticate", c) for c in result.challenges]
            return make_response(req, 401, "Unauthorized", headers, to_tag=_tag()), []
        _aor, user = rules.aor_of(req)
        if result.username != user:
            raise SipError(403, "Not Allowed To Register This User")
        received = "%s:%s:%d" % dest
        outcome = rules.apply(req, self.location, now, self.node_id, received, _tag())
        for b in outcome.changes:
            b.epoch, b.seq = self.sequencer.next()
        return outcome.response, outcome.changes


def _tag() -> str:
    return uuid.uuid4().hex[:12]
