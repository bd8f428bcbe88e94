"""The one REGISTER path: a REGISTER in, its answer and binding changes out.

``RegisterPath.answer`` answers every REGISTER the node gets (RFC 3261
§10.3 with digest authentication): it challenges a request without
credentials, checks the credentials of the others, applies the
``RegistrarRules`` and writes the answer. The registrar actor, the node,
the challenge front and the tests all go through it. A datagram of the
usual shape (``sipcore.usual_register``) is recognised from its text and
answered without the general parser; anything the recognition leaves, and
any usual REGISTER whose answer is not a plain 200 or 401, takes the
general path (``parse_message``), with the same answer. The general path
is the reference: ``fast=False`` turns the recognition off, which is how
the tests hold the two to the same bytes.

A fast request that must go back to the general path is counted: by design
(``stats["usual_declined"]``: a 423, a wildcard, a Path...) at DEBUG, and
by accident (``stats["usual_fallback"]``: an exception that is a bug) with
the traceback, which ``strict`` (the test suite) raises instead.

Sans-IO: the caller gives the clocks, sends the bytes, commits the
changes of an ``Answer`` before sending it, and records it in the
server transactions (``AnsweredRequests``) as it goes out.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .answered import NEW, AnsweredRequests
from .digest import BANNED, AuthResult, Authenticator
from .errors import SipError
from .location import Binding, Location, Sequencer
from .message import Request, _address, error_response_bytes, parse_message, response_bytes
from .ratelimit import LogLimiter
from .registrar import RegistrarRules, http_date
from .transaction import Key
from .uri import parse_number
from .usual_register import UsualRegister, scan
from .via import Dest, source_address, stamp_via

log = logging.getLogger(__name__)


class NotUsual(Exception):
    """A usual REGISTER whose answer only the general path writes."""


@dataclass(slots=True)
class Answer:
    """What the registrar sends for one REGISTER."""

    dest: Dest
    """Where it goes."""
    data: bytes
    """The response, on the wire."""
    status: int
    """Its status code (0 for a retransmitted answer)."""
    key: Key | None = None
    """The server transaction it ends (recorded as it is sent); None for an
    answer sent statelessly (a challenge, a retransmission, an error found
    before the transaction)."""
    changes: list[Binding] = field(default_factory=list)
    """Binding versions to commit before the answer is sent."""
    request: Request | UsualRegister | None = None
    """The REGISTER, for the 500 its sender gets if the commit fails."""

    def failed(self, err: SipError, to_tag: str) -> bytes:
        """The answer ``err`` (a failed commit) writes in place of this one."""
        req = self.request
        if type(req) is UsualRegister:
            req = req.request()[0]
        assert isinstance(req, Request)
        return error_response_bytes(req, err, to_tag=to_tag)


def unauthorized(req: Request | UsualRegister, challenges: Sequence[str], to_tag: str) -> bytes:
    """The 401 asking ``req``'s sender for credentials (§22.1), one
    WWW-Authenticate per challenge: the one writer of a 401."""
    headers = [("WWW-Authenticate", c) for c in challenges]
    if type(req) is UsualRegister:
        return req.response(401, "Unauthorized", headers, to_tag)
    assert isinstance(req, Request)
    return response_bytes(req, 401, "Unauthorized", headers, to_tag=to_tag)


class RegisterPath:
    """Answers REGISTER for one domain.

    ``location``, ``sequencer`` and ``answered`` are the registrar's (the
    challenge front, which only challenges, has none); ``new_tag()`` gives
    each answer's To tag; ``ban_drop`` answers a banned source with silence
    instead of a 403; ``fast`` turns on the recognition of usual REGISTERs.
    """

    def __init__(
        self,
        rules: RegistrarRules,
        auth: Authenticator,
        new_tag: Callable[[], str],
        location: Location | None = None,
        node_id: str = "",
        sequencer: Sequencer | None = None,
        answered: AnsweredRequests | None = None,
        ban_drop: bool = False,
        fast: bool = True,
        strict: bool = False,
        log_rate: float = 20.0,
    ):
        self.rules = rules
        self.auth = auth
        self.new_tag = new_tag
        self.location = location if location is not None else Location()
        self.node_id = node_id
        self.sequencer = sequencer if sequencer is not None else Sequencer(0)
        self.answered = answered if answered is not None else AnsweredRequests()
        self.ban_drop = ban_drop
        self.fast = fast
        self.strict = strict
        self.domains = frozenset(rules.domains)
        self.log_limit = LogLimiter(log_rate)
        self.stats = {
            "register": 0,
            "challenged": 0,
            "rejected": 0,
            "banned": 0,
            "usual_declined": 0,
            "usual_fallback": 0,
        }

    def recognise(self, data: bytes, ip: str, port: int) -> UsualRegister | None:
        """The usual REGISTER ``data`` from ``ip:port`` (UDP), or None when the
        general parser must read it (or ``fast`` is off)."""
        if not self.fast or data[:9] != b"REGISTER ":
            return None
        return scan(data, ip, port, self.domains)

    def challenge(
        self, data: bytes, ip: str, port: int, now: float
    ) -> tuple[bytes, tuple[str, int]] | None:
        """The challenge front's part: ``(401, (host, port))`` for a REGISTER
        datagram without credentials for one of the domains, or None for any
        other datagram (the node answers it, errors included)."""
        usual = self.recognise(data, ip, port)
        if usual is not None:
            if "authorization" in usual.fields:
                return None
            return self._challenge(usual, now), usual.dest
        if data[:9] != b"REGISTER " or b"authorization" in data.lower():
            return None
        try:
            req = parse_message(data)
            req.validate()
            # The byte test above cannot see folding tricks; the parse can.
            if (
                not isinstance(req, Request)
                or req.method != "REGISTER"
                or req.raw_values("authorization")
            ):
                return None
            dest = stamp_via(req, "udp", ip, port)
            self.rules.check(req)
        except SipError:
            return None
        return self._challenge(req, now), (dest[1], dest[2])

    def _challenge(self, req: Request | UsualRegister, now: float) -> bytes:
        self.stats["register"] += 1
        self.stats["challenged"] += 1
        return unauthorized(req, self.auth.challenge(now), self.new_tag())

    def answer(
        self, req: Request | UsualRegister, dest: Dest | None, now: float, mono: float
    ) -> Answer | None:
        """The answer to the REGISTER ``req`` from ``dest`` (None for a usual
        one: it knows its source), at wall-clock ``now`` and monotonic
        ``mono``; None when nothing is to be sent (a retransmission of a
        request being answered, a banned source with ``ban_drop``).

        A REGISTER without credentials is challenged: the challenge changes
        nothing, so it is sent statelessly, as a proxy's sl_send_reply would.
        """
        if type(req) is UsualRegister:
            if "authorization" not in req.fields:
                return Answer(("udp", *req.dest), self._challenge(req, now), 401)
            return self._usual(req, now, mono)
        assert isinstance(req, Request) and dest is not None
        return self._general(req, dest, now, mono)

    def _general(
        self,
        req: Request,
        dest: Dest,
        now: float,
        mono: float,
        key: Key | None = None,
        result: AuthResult | None = None,
    ) -> Answer | None:
        """``answer`` for a parsed REGISTER. ``key`` is given when its
        transaction was received already, and ``result`` when its credentials
        were checked already (a usual REGISTER left to this path)."""
        stats = self.stats
        new_tag = self.new_tag
        if req.get("authorization") is None:
            try:
                self.rules.check(req)
            except SipError as err:
                stats["register"] += 1
                stats["rejected"] += 1
                return Answer(dest, error_response_bytes(req, err, to_tag=new_tag()), err.status)
            return Answer(dest, self._challenge(req, now), 401)
        if key is None:
            try:
                verdict, key, data = self.answered.receive(req, mono)
            except SipError as err:
                return Answer(dest, error_response_bytes(req, err, to_tag=new_tag()), err.status)
            if verdict is not NEW:
                return None if data is None else Answer(dest, data, 0)
        stats["register"] += 1
        try:
            answer = self._register(req, dest, now, mono, key, result)
            if answer is None:
                # A banned source, answered with silence.
                self.answered.forget(key)
            return answer
        except SipError as err:
            stats["rejected"] += 1
            return Answer(
                dest, error_response_bytes(req, err, to_tag=new_tag()), err.status, key, [], req
            )
        except Exception:
            # A bug must cost this request a 500, not the whole batch
            # its answer (nor leave its transaction pending for ever).
            log.exception("REGISTER from %s:%s:%d failed", *dest)
            stats["rejected"] += 1
            bug = SipError(500, "Server Internal Error")
            return Answer(dest, error_response_bytes(req, bug, to_tag=new_tag()), 500, key, [], req)

    def _register(
        self, req: Request, dest: Dest, now: float, mono: float, key: Key, result: AuthResult | None
    ) -> Answer | None:
        """Steps 1–8 for a REGISTER with credentials."""
        rules = self.rules
        rules.check(req)
        if result is None:
            result = self.auth.authenticate(
                "REGISTER", req.raw_values("authorization"), now, req.uri, source_address(req)
            )
        if result is BANNED:
            self.stats["banned"] += 1
            if self.ban_drop:
                return None
            raise SipError(403, "Forbidden (Too Many Failed Authentications)")
        if not result.ok:
            self.stats["challenged"] += 1
            if result.reason != "missing":
                # A guesser on many addresses must not fill the disk: lines rate-limited.
                suppressed = self.log_limit.allow("not_authenticated", mono)
                if suppressed is not None:
                    log.info(
                        "REGISTER for %s from %s:%s:%d not authenticated: %s%s",
                        req.to.uri.user,
                        *dest,
                        result.reason,
                        f" ({suppressed} more not logged)" if suppressed else "",
                    )
            return Answer(
                dest, unauthorized(req, result.challenges, self.new_tag()), 401, key, [], req
            )
        aor, user = rules.aor_of(req)
        if result.username != user:
            raise SipError(403, "Not Allowed To Register This User")
        outcome = rules.apply(
            req, self.location, now, self.node_id, "%s:%s:%d" % dest, self.new_tag(), aor
        )
        self._number(outcome.changes)
        return Answer(dest, outcome.encode(), 200, key, outcome.changes, req)

    def _number(self, changes: list[Binding]) -> None:
        """Stamp the changes with this node's (epoch, sequence number)."""
        for b in changes:
            b.epoch, b.seq = self.sequencer.next()

    def _usual(self, usual: UsualRegister, now: float, mono: float) -> Answer | None:
        """``answer`` for a usual REGISTER with credentials, written from its
        text when it is a plain refresh or registration that authenticates;
        anything else takes the general path, with the same answer.

        The bindings are worked out before the credentials are checked,
        since accepting credentials uses up their nonce-count: a request
        left to the general path afterwards must take the result along.
        """
        key = usual.key
        if key is None:
            return self._fall_back(usual, now, mono, "no magic cookie")
        verdict, key, data = self.answered.receive_key(key, mono)
        dest: Dest = ("udp", *usual.dest)
        if verdict is not NEW:
            return None if data is None else Answer(dest, data, 0)
        # Neither step changes anything unless the credentials are accepted,
        # the last thing authenticate does: whatever either raises (a 423,
        # a malformed Authorization), the general path starts over and
        # answers it as it answers any request.
        try:
            made, data = self._outcome(usual, now)
            result = self.auth.authenticate(
                "REGISTER", [usual.fields["authorization"]], now, usual.uri, usual.ip
            )
        except NotUsual as e:
            return self._fall_back(usual, now, mono, str(e), key)
        except SipError as err:
            return self._fall_back(usual, now, mono, f"{err.status} {err.reason}", key)
        except Exception:
            self.stats["usual_fallback"] += 1
            log.exception(
                "usual REGISTER from %s:%d failed; the general path answers it", *usual.dest
            )
            if self.strict:
                raise
            return self._general_of(usual, now, mono, key)
        if not result.ok or result.username != usual.user:
            return self._fall_back(usual, now, mono, result.reason or "another user", key, result)
        self._number(made)
        self.stats["register"] += 1
        return Answer(dest, data, 200, key, made, usual)

    def _fall_back(
        self,
        usual: UsualRegister,
        now: float,
        mono: float,
        why: str,
        key: Key | None = None,
        result: AuthResult | None = None,
    ) -> Answer | None:
        """Leave ``usual`` to the general path, by design (counted, at DEBUG)."""
        self.stats["usual_declined"] += 1
        log.debug(
            "usual REGISTER from %s:%d left to the general path: %s", usual.ip, usual.port, why
        )
        return self._general_of(usual, now, mono, key, result)

    def _general_of(
        self,
        usual: UsualRegister,
        now: float,
        mono: float,
        key: Key | None = None,
        result: AuthResult | None = None,
    ) -> Answer | None:
        try:
            req, dest = usual.request()
        except SipError:
            # scan takes only what the parser reads: a failure here is a bug.
            self.stats["usual_fallback"] += 1
            log.exception("a usual REGISTER from %s:%d is malformed", usual.ip, usual.port)
            if key is not None:
                self.answered.forget(key)
            if self.strict:
                raise
            return None
        return self._general(req, dest, now, mono, key, result)

    def _outcome(self, usual: UsualRegister, now: float) -> tuple[list[Binding], bytes]:
        """``(changes, 200 bytes)``: what ``rules.aor_of`` and ``rules.apply``
        give for the parsed request. Raises the ``SipError`` they raise, and
        ``NotUsual`` for what only the general path takes. Nothing is
        changed: the caller puts and commits the changes."""
        rules = self.rules
        fields = usual.fields
        contact = fields.get("contact")
        if contact is None or contact[:1] != "<" or "," in contact or "\\" in contact:
            raise NotUsual("not one plain Contact")
        if "path" in fields:
            raise NotUsual("a Path")
        if usual.to_host not in rules.domains:
            raise NotUsual("To host not written as one of the domain's names")
        # Contact before Expires: the general path's order, so the same error wins.
        contacts = [_address(contact, "Contact")]
        expires_text = fields.get("expires")
        expires = None if expires_text is None else parse_number(expires_text, "Expires", 2**32 - 1)
        aor = f"sip:{usual.user}@{rules.domain}"
        changes, live = rules.update(
            aor,
            contacts,
            usual.call_id,
            usual.cseq,
            expires,
            fields.get("user-agent"),
            [],
            self.location,
            now,
            self.node_id,
            "udp:%s:%d" % usual.dest,
        )
        headers = rules.contact_fields(live, now)
        supported = fields.get("supported")
        if supported is not None:
            # One Via (a usual REGISTER has no other): this node is the first hop.
            headers.extend(
                rules.flow_fields([o.strip().lower() for o in supported.split(",")], changes, True)
            )
        headers.append(("Date", http_date(now)))
        return changes, usual.response(200, "OK", headers, self.new_tag())
