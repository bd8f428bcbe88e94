"""The registrar actor: REGISTER in, bindings committed in groups, 200 out.

One greenlet owns the inbox, the non-INVITE server transactions of
REGISTER, and the writes to the location table. It takes every REGISTER
waiting in its inbox as one batch, applies the rules to each, writes all
binding changes of the batch in one database transaction (group commit),
and only then sends the 200s, so a binding is durable before its 200. A
commit that fails changes nothing: its REGISTERs get 503 and the node's
``Health`` is told (``actors.health``), as it is of the next success.

Each REGISTER is answered by the one REGISTER path, ``sipcore.register``:
this actor only batches, commits and sends. A datagram the transport offers
(``take``) is recognised there as a usual REGISTER and reaches the inbox
unparsed; one without credentials is challenged at once, without waiting
for a batch.
"""

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from gevent.queue import Empty, Queue

from sipcore.answered import AnsweredRequests
from sipcore.digest import Authenticator
from sipcore.errors import SipError
from sipcore.location import Binding, Location, Sequencer
from sipcore.message import Request
from sipcore.register import Answer, RegisterPath
from sipcore.registrar import RegistrarRules
from sipcore.usual_register import UsualRegister
from sipcore.via import Dest
from store import bindings as binding_store
from store.db import StoreError

from .health import DATABASE, REGISTRAR, Health
from .process import STRICT, new_tag
from .transport import Transport

log = logging.getLogger(__name__)


class Register(NamedTuple):
    """An inbox message: a REGISTER to answer, parsed or usual (``dest`` None for a
    usual one, which carries its source)."""

    req: Request | UsualRegister
    dest: Dest | None


class Merge(NamedTuple):
    """An inbox message: replicated binding versions to merge."""

    bindings: list[Binding]


class Stop(NamedTuple):
    """An inbox message: end the loop once the batch before it is done (``stop``)."""


_STOP = Stop()

InboxMessage = Register | Merge | Stop


class RegistrarActor:
    """Handles REGISTER for the node's domain."""

    def __init__(
        self,
        node_id: str,
        rules: RegistrarRules,
        authenticator: Authenticator,
        location: Location,
        transport: Transport,
        sequencer: Sequencer,
        batch_max: int = 256,
        on_commit: Callable[[list[Binding]], None] | None = None,
        timers: dict[str, float] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        ban_drop: bool = False,
        log_rate: float = 20.0,
        health: Health | None = None,
    ):
        self.location = location
        self.health = health or Health()
        self.sequencer = sequencer
        self.answered = AnsweredRequests((timers or {}).get("t1", 0.5))
        self.path = RegisterPath(
            rules,
            authenticator,
            new_tag,
            location,
            node_id,
            sequencer,
            self.answered,
            ban_drop=ban_drop,
            strict=STRICT,
            log_rate=log_rate,
        )
        self.transport = transport
        self.batch_max = batch_max
        self.on_commit = on_commit
        self.clock = clock
        self.monotonic = monotonic
        self.inbox: Queue[InboxMessage] = Queue()
        self.greenlet = None
        self.stats = {"commits": 0, "committed": 0, "ok": 0}
        self.unwritten: dict[tuple[str, str], Binding] = {}
        """Replicated versions in the table that a failed commit did not write, by
        (aor, key): at most one per binding of the table."""

    @property
    def auth(self) -> Authenticator:
        """The node's authenticator (the path's)."""
        return self.path.auth

    def statistics(self) -> dict[str, int]:
        """The path's counters and the actor's (commits, 200s sent)."""
        return {**self.path.stats, **self.stats}

    def submit(self, req: Request | UsualRegister, dest: Dest | None) -> None:
        """Give a REGISTER to the actor (``dest`` None for a usual one)."""
        self.inbox.put(Register(req, dest))

    def take(self, data: bytes, ip: str, port: int) -> bool:
        """Offer a UDP datagram: a usual REGISTER (``RegisterPath.recognise``)
        with credentials goes to the inbox unparsed, one without is challenged
        at once. False for any other datagram, which the transport then parses.

        An exception of the recognition is a bug: counted with the path's
        fallbacks and logged, the datagram left to the general path (raised
        under ``TANDEM_STRICT``)."""
        try:
            usual = self.path.recognise(data, ip, port)
        except Exception:
            self.path.stats["usual_fallback"] += 1
            log.exception(
                "recognising a datagram from %s:%d failed; the general path takes it", ip, port
            )
            if STRICT:
                raise
            return False
        if usual is None:
            return False
        if "authorization" in usual.fields:
            self.inbox.put(Register(usual, None))
        else:
            answer = self.path.answer(usual, None, self.clock(), 0.0)
            if answer is not None:
                self.transport.send(answer.dest, answer.data)
        return True

    def merge(self, bindings: list[Binding]) -> None:
        """Give replicated bindings to the actor: each is kept if newer (``is_newer``)
        and persisted in the next group commit. Not published again."""
        self.inbox.put(Merge(bindings))

    def run(self) -> None:
        """The actor's loop: batches of REGISTER, expiry of bindings and transactions."""
        inbox = self.inbox
        next_expiry = next_purge = self.monotonic()
        while True:
            first: InboxMessage | None
            try:
                first = inbox.get(timeout=max(0.0, next_expiry - self.monotonic()))
            except Empty:
                first = None
            mono = self.monotonic()
            if mono >= next_expiry:
                now = self.clock()
                self.location.expire(now)
                self.answered.expire(mono)
                next_expiry = mono + 1.0
                if mono >= next_purge:
                    next_purge = mono + 60.0
                    self._purge(now)
                if self.unwritten:
                    self._run_batch([], mono)
            if first is None:
                continue
            if isinstance(first, Stop):
                return
            batch: list[Register | Merge] = [first]
            stopping = False
            while len(batch) < self.batch_max:
                try:
                    item = inbox.get_nowait()
                except Empty:
                    break
                if isinstance(item, Stop):
                    stopping = True
                    break
                batch.append(item)
            self._run_batch(batch, mono)
            if stopping:
                return

    def _run_batch(self, batch: list[Register | Merge], mono: float) -> None:
        """``_process`` one batch; one that raises is a fault of the registrar (a bug),
        which the next batch that does not clears."""
        try:
            self._process(batch, self.clock(), mono)
        except Exception as exc:
            if self.health.fail(REGISTRAR, f"a batch of {len(batch)} raised {exc!r}"):
                log.exception("registrar batch of %d failed", len(batch))
            if STRICT:
                raise
        else:
            self.health.ok(REGISTRAR)

    def stop(self, wait: float) -> None:
        """End the loop after the requests queued before this call (killed after
        ``wait`` seconds): a batch is never cut between its commit and its 200s.
        What arrives later stays in the inbox for the next ``run``."""
        greenlet = self.greenlet
        if greenlet is None or greenlet.dead:
            return
        self.inbox.put(_STOP)
        greenlet.join(timeout=wait)
        if not greenlet.dead:
            log.warning("registrar did not stop within %.0f s; killed", wait)
            greenlet.kill(block=True, timeout=1)
            # The marker must not end the next run: keep everything else, in order.
            kept = []
            while not self.inbox.empty():
                item = self.inbox.get_nowait()
                if not isinstance(item, Stop):
                    kept.append(item)
            for item in kept:
                self.inbox.put(item)

    def _purge(self, now: float) -> None:
        try:
            binding_store.purge_expired(now)
        except Exception as exc:  # the purge is retried in a minute; the node goes on
            self.health.fail(DATABASE, f"purging expired bindings failed: {exc}")

    def _send(self, answer: Answer, mono: float) -> None:
        """Send ``answer``, recording it in its server transaction if it has one."""
        key = answer.key
        if key is not None:
            self.answered.answered(key, answer.data, answer.dest[0] != "udp", mono)
        self.transport.send(answer.dest, answer.data)

    def _process(self, batch: list[Register | Merge], now: float, mono: float) -> None:
        """One group commit: answer every request and merge, write once, then send."""
        location = self.location
        answer_of = self.path.answer
        deferred: list[Answer] = []
        changes: list[Binding] = []
        merged: list[Binding] = []
        undo: list[tuple[str, str, Binding | None]] = []
        # (binding, the one it replaced) for the log lines, written after the 200s
        noted: list[tuple[Binding, Binding | None]] | None = (
            [] if log.isEnabledFor(logging.INFO) else None
        )
        seq_before = self.sequencer.peek()
        for item in batch:
            if isinstance(item, Merge):
                merged.extend(b for b in item.bindings if location.merge(b))
                continue
            answer = answer_of(item.req, item.dest, now, mono)
            if answer is None:
                continue
            made = answer.changes
            for b in made:
                old = location.put(b)
                undo.append((b.aor, b.key, old))
                if noted is not None:
                    noted.append((b, old))
            changes.extend(made)
            if answer.key is not None and answer.status < 300 and (changes or merged):
                deferred.append(answer)
            else:
                self._send(answer, mono)
        unwritten = self.unwritten
        if changes or merged or unwritten:
            # Older versions first: of two of one binding, the write keeps the last.
            pending = [*unwritten.values(), *changes, *merged] if unwritten else changes + merged
            try:
                binding_store.write_bindings(pending)
            except Exception as exc:
                self._commit_failed(exc, deferred, merged, undo, seq_before, mono)
                return
            unwritten.clear()
            self.health.ok(DATABASE)
            self.stats["commits"] += 1
            self.stats["committed"] += len(pending)
            if self.on_commit is not None and changes:
                try:
                    self.on_commit(changes)
                except Exception:
                    log.exception("publishing %d committed bindings failed", len(changes))
        self.stats["ok"] += len(deferred)
        for answer in deferred:
            self._send(answer, mono)
        if noted:
            self._log_changes(noted, now)

    def _commit_failed(
        self,
        exc: Exception,
        deferred: list[Answer],
        merged: list[Binding],
        undo: list[tuple[str, str, Binding | None]],
        seq_before: int,
        mono: float,
    ) -> None:
        """A group commit failed: nothing of it was written. The REGISTERs' changes
        and the sequence go back, and each REGISTER waiting for it gets 503 (RFC 3263:
        the phone tries the next server). Replicated versions stay in the table (a
        peer holds them durably; calls to them still route) and wait in
        ``unwritten`` for the next write, tried at least once a second. The node is
        degraded until a write succeeds."""
        n = len(undo) + len(merged)
        if self.health.fail(DATABASE, f"group commit failed: {exc}") and not isinstance(
            exc, StoreError
        ):
            log.exception("group commit of %d bindings failed", n)
        location = self.location
        for aor, key, old in reversed(undo):
            location.restore(aor, key, old)
        unwritten = self.unwritten
        for b in merged:
            # Put back any a REGISTER's undo took away (the newer version wins).
            location.merge(b)
            unwritten[b.aor, b.key] = b
        self.sequencer.rewind(seq_before)
        err = SipError(503, "Database Unavailable", [("Retry-After", str(self.health.retry_after))])
        for answer in deferred:
            answer.data = answer.failed(err, new_tag())
            self._send(answer, mono)

    def _log_changes(self, noted: list[tuple[Binding, Binding | None]], now: float) -> None:
        """One line per committed registration change (issue 14): user, Call-ID,
        source and the contacts the user now has, after the batch's 200s went out.

        Contacts added or removed are INFO; a refresh of the same contacts
        (most REGISTERs under load) is DEBUG, so a busy registrar's log holds
        what changed, not every refresh.
        """
        per: dict[tuple[str, str], list[int]] = {}
        for b, old in noted:
            counts = per.setdefault((b.aor, b.call_id), [0, 0, 0])
            if b.deleted:
                counts[1] += 1
            elif old is None or old.deleted:
                counts[0] += 1
            else:
                counts[2] += 1
        sources = {(b.aor, b.call_id): b.received for b, _old in noted}
        location = self.location
        for (aor, call_id), (added, removed, refreshed) in per.items():
            contacts = sum(
                1 for x in location.get(aor).values() if not x.deleted and x.expires_at > now
            )
            log.log(
                logging.INFO if added or removed else logging.DEBUG,
                "registration of %s (Call-ID %s) from %s: %d contacts now, "
                "%d added, %d removed, %d refreshed",
                aor,
                call_id,
                sources[aor, call_id] or "?",
                contacts,
                added,
                removed,
                refreshed,
            )
