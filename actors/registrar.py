"""The registrar actor: REGISTER in, bindings committed in groups, 200 out.

One greenlet owns the inbox, the non-INVITE server transactions of
REGISTER, and the writes to the location table. It takes every REGISTER
waiting in its inbox as one batch, applies the rules to each, writes all
binding changes of the batch in one database transaction (group commit),
and only then sends the 200s, so a binding is durable before its 200.

A usual REGISTER (``sipcore.usual_register``) reaches the inbox unparsed,
from ``Node.on_datagram``; it is answered from its text when the answer is
a 200, and by the general path otherwise.

Both paths give the authenticator the Request-URI (the digest uri must
match it) and the source address (for ``sipcore.authguard``): credentials
from a banned source, or for a locked user, get 403 (or nothing, with
``ban_drop``) without a password check. A REGISTER without credentials is
always challenged: the challenge costs nothing and checks nothing, and the
challenge front answers it the same way without knowing the bans.
"""

import logging
import time

import gevent
from gevent.queue import Empty, Queue

from sipcore.answered import NEW, AnsweredRequests
from sipcore.digest import BANNED
from sipcore.errors import SipError
from sipcore.location import Binding, Location
from sipcore.message import Request, error_response, error_response_bytes
from sipcore.ratelimit import LogLimiter
from sipcore.registrar import RegistrarRules, challenge_bytes, challenge_response
from sipcore.usual_register import NotUsual, UsualRegister
from sipcore.via import source_address
from store import bindings as binding_store

from .process import STRICT, new_tag

log = logging.getLogger(__name__)


class RegistrarActor:
    """Handles REGISTER for the node's domain."""

    def __init__(self, node_id: str, rules: RegistrarRules, authenticator, location: Location,
                 transport, sequencer, batch_max: int = 256, on_commit=None,
                 timers: dict | None = None, clock=time.time, monotonic=time.monotonic,
                 ban_drop: bool = False, log_rate: float = 20.0):
        self.node_id = node_id
        self.rules = rules
        self.auth = authenticator
        self.location = location
        self.transport = transport
        self.sequencer = sequencer
        self.batch_max = batch_max
        self.on_commit = on_commit
        self.clock = clock
        self.monotonic = monotonic
        self.ban_drop = ban_drop
        self.log_limit = LogLimiter(log_rate)
        self.answered = AnsweredRequests((timers or {}).get("t1", 0.5))
        self.inbox: Queue = Queue()
        self.greenlet = None
        self.stats = {"register": 0, "ok": 0, "challenged": 0, "rejected": 0,
                      "commits": 0, "committed": 0, "usual_fallback": 0,
                      "banned": 0}

    def submit(self, req: Request, dest) -> None:
        """Give a REGISTER to the actor (called by the transport)."""
        self.inbox.put((req, dest))

    def challenge(self, usual: UsualRegister) -> None:
        """Answer a usual REGISTER without credentials with its 401 at once,
        as ``_request`` answers any REGISTER without credentials."""
        stats = self.stats
        stats["register"] += 1
        stats["challenged"] += 1
        self.transport.send(("udp", *usual.dest),
                            usual.challenge(self.auth.challenge(self.clock()), new_tag()))

    def merge(self, bindings: list[Binding]) -> None:
        """Give replicated bindings to the actor: each is kept if newer (``is_newer``)
        and persisted in the next group commit. Not published again."""
        self.inbox.put((None, bindings))

    def run(self) -> None:
        """The actor's loop: batches of REGISTER, expiry of bindings and transactions."""
        inbox = self.inbox
        next_expiry = next_purge = self.monotonic()
        while True:
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
            if first is None:
                continue
            batch = [first]
            while len(batch) < self.batch_max:
                try:
                    batch.append(inbox.get_nowait())
                except Empty:
                    break
            try:
                self._process(batch, self.clock(), mono)
            except Exception:
                log.exception("registrar batch of %d failed", len(batch))
                if STRICT:
                    raise

    def _purge(self, now: float) -> None:
        try:
            binding_store.purge_expired(now)
        except Exception:
            log.exception("purging expired bindings failed")

    def _answer(self, key, dest, data: bytes, mono: float) -> None:
        self.answered.answered(key, data, dest[0] != "udp", mono)
        self.transport.send(dest, data)

    def _process(self, batch: list, now: float, mono: float) -> None:
        """One group commit: apply every request and merge, write once, then answer."""
        location = self.location
        stats = self.stats
        deferred = []
        changes: list[Binding] = []
        merged: list[Binding] = []
        undo = []
        # (binding, the one it replaced) for the log lines, written after the 200s
        noted: list[tuple[Binding, Binding | None]] | None = \
            [] if log.isEnabledFor(logging.INFO) else None
        seq_before = self.sequencer.peek()
        for req, dest in batch:
            if req is None:
                merged.extend(b for b in dest if location.merge_undoable(b, undo))
                continue
            if type(req) is UsualRegister:
                done = self._usual(req, now, mono)
            else:
                done = self._request(req, dest, now, mono)
            if done is None:
                continue
            key, dest, req, status, data, made = done
            for b in made:
                old = location.put(b)
                undo.append((b.aor, b.key, old))
                if noted is not None:
                    noted.append((b, old))
            changes.extend(made)
            if status < 300 and (changes or merged):
                deferred.append((key, dest, req, data))
            else:
                self._answer(key, dest, data, mono)
        if changes or merged:
            try:
                binding_store.write_bindings(changes + merged)
            except Exception:
                log.exception("group commit of %d bindings failed; answering 500",
                              len(changes) + len(merged))
                for aor, key, old in reversed(undo):
                    location.restore(aor, key, old)
                self.sequencer.rewind(seq_before)
                err = SipError(500, "Database Unavailable", [("Retry-After", "5")])
                for key, dest, req, _data in deferred:
                    if type(req) is UsualRegister:
                        req = req.request()[0]
                    self._answer(key, dest, error_response_bytes(req, err, to_tag=new_tag()), mono)
                if merged:
                    # Replicated versions must not be lost: retry them shortly.
                    gevent.spawn_later(1.0, self.merge, merged)
                return
            stats["commits"] += 1
            stats["committed"] += len(changes) + len(merged)
            if self.on_commit is not None and changes:
                try:
                    self.on_commit(changes)
                except Exception:
                    log.exception("publishing %d committed bindings failed", len(changes))
        for key, dest, _req, data in deferred:
            stats["ok"] += 1
            self._answer(key, dest, data, mono)
        if noted:
            self._log_changes(noted, now)

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
            contacts = sum(1 for x in location.get(aor).values()
                           if not x.deleted and x.expires_at > now)
            log.log(logging.INFO if added or removed else logging.DEBUG,
                    "registration of %s (Call-ID %s) from %s: %d contacts now, "
                    "%d added, %d removed, %d refreshed", aor, call_id,
                    sources[aor, call_id] or "?", contacts, added, removed, refreshed)

    def _request(self, req: Request, dest, now: float, mono: float, key=None, result=None):
        """Handle one parsed REGISTER: ``(key, dest, req, status, response
        bytes, changes)`` to commit before answering, or None when it was
        answered already (a challenge, an error, a retransmission).

        ``key`` is given when its transaction was received already, and
        ``result`` when its credentials were checked already
        (``_usual`` leaving a request to this general path).
        """
        stats = self.stats
        send = self.transport.send
        if req.get("authorization") is None:
            # Without credentials the answer is a challenge (or an error)
            # that changes nothing: send it statelessly, as a proxy's
            # sl_send_reply would; a retransmission just gets another.
            stats["register"] += 1
            try:
                self.rules.check(req)
                stats["challenged"] += 1
                data = challenge_bytes(req, self.auth.challenge(now), new_tag())
            except SipError as err:
                stats["rejected"] += 1
                data = error_response_bytes(req, err, to_tag=new_tag())
            send(dest, data)
            return None
        if key is None:
            try:
                verdict, key, data = self.answered.receive(req, mono)
            except SipError as err:
                send(dest, error_response_bytes(req, err, to_tag=new_tag()))
                return None
            if verdict is not NEW:
                if data is not None:
                    send(dest, data)
                return None
        stats["register"] += 1
        try:
            response, made = self._register(req, dest, now, result)
            if response is None:
                # A banned source, answered with silence.
                self.answered.forget(key)
                return None
        except SipError as err:
            stats["rejected"] += 1
            response, made = error_response(req, err, to_tag=new_tag()), []
        except Exception:
            # A bug must cost this request a 500, not the whole batch
            # its answer (nor leave its transaction pending for ever).
            log.exception("REGISTER from %s:%s:%d failed", *dest)
            stats["rejected"] += 1
            response = error_response(req, SipError(500, "Server Internal Error"),
                                      to_tag=new_tag())
            made = []
        return key, dest, req, response.status, response.encode(), made

    def _usual(self, usual: UsualRegister, now: float, mono: float):
        """``_request`` for a usual REGISTER with credentials, answered from
        its text (``sipcore.usual_register``) when it is a plain refresh
        or registration that authenticates; anything else takes the
        general path, with the same answer.

        The bindings are worked out before the credentials are checked,
        since accepting credentials uses up their nonce-count: a request
        left to the general path afterwards must take the result along.
        """
        key = usual.key
        if key is None:
            return self._general(usual, now, mono)
        verdict, key, data = self.answered.receive_key(key, mono)
        if verdict is not NEW:
            if data is not None:
                self.transport.send(("udp", *usual.dest), data)
            return None
        # Neither step changes anything unless the credentials are accepted,
        # the last thing authenticate does: whatever either raises (a 423, a
        # malformed Authorization, a bug), the general path can start over
        # and answer it as it answers any request.
        try:
            made, data = usual.outcome(self.rules, self.location, now, self.node_id, new_tag())
            result = self.auth.authenticate("REGISTER", [usual.fields["authorization"]], now,
                                            usual.uri, usual.ip)
        except (SipError, NotUsual):
            return self._general(usual, now, mono, key)
        except Exception:
            self.stats["usual_fallback"] += 1
            log.exception("usual REGISTER from %s:%d failed; the general path answers it",
                          *usual.dest)
            if STRICT:
                raise
            return self._general(usual, now, mono, key)
        if not result.ok or result.username != usual.user:
            return self._general(usual, now, mono, key, result)
        for b in made:
            b.epoch, b.seq = self.sequencer.next()
        self.stats["register"] += 1
        return key, ("udp", *usual.dest), usual, 200, data, made

    def _general(self, usual: UsualRegister, now: float, mono: float, key=None, result=None):
        """``_request`` for ``usual`` parsed by the general parser."""
        try:
            req, dest = usual.request()
        except SipError:
            # scan takes only what the parser reads: should that ever fail,
            # the transport answers the datagram as it answers any other.
            log.exception("a usual REGISTER from %s:%d is malformed", usual.ip, usual.port)
            if key is not None:
                self.answered.forget(key)
            self.transport.handle(usual.data, "udp", usual.ip, usual.port)
            return None
        return self._request(req, dest, now, mono, key, result)

    def _register(self, req: Request, dest, now: float, result=None):
        rules = self.rules
        rules.check(req)
        if result is None:
            result = self.auth.authenticate("REGISTER", req.raw_values("authorization"), now,
                                            req.uri, source_address(req))
        if result is BANNED:
            self.stats["banned"] += 1
            if self.ban_drop:
                return None, []
            raise SipError(403, "Forbidden (Too Many Failed Authentications)")
        if not result.ok:
            self.stats["challenged"] += 1
            if result.reason != "missing":
                # A guesser on many addresses must not fill the disk: lines rate-limited.
                suppressed = self.log_limit.allow("not_authenticated", self.monotonic())
                if suppressed is not None:
                    log.info("REGISTER for %s from %s:%s:%d not authenticated: %s%s",
                             req.to.uri.user, *dest, result.reason,
                             f" ({suppressed} more not logged)" if suppressed else "")
            return challenge_response(req, result.challenges, new_tag()), []
        aor, user = rules.aor_of(req)
        if result.username != user:
            raise SipError(403, "Not Allowed To Register This User")
        received = "%s:%s:%d" % dest
        outcome = rules.apply(req, self.location, now, self.node_id, received, new_tag(), aor)
        for b in outcome.changes:
            b.epoch, b.seq = self.sequencer.next()
        # The outcome stands for its 200: ``status`` and ``encode()``.
        return outcome, outcome.changes

