"""A transaction-stateful forking proxy (RFC 3261 §16), sans-IO.

``ProxyCore`` owns a ``TransactionLayer`` and one response context per
request it forwards. Its owner feeds it parsed messages and the time, and
drains bytes to send and DNS lookups to make::

    core.receive(msg, source, now, wall)   # a request or response from the transport
    core.resolved(token, targets, now)     # the answer to a Lookup (RFC 3263)
    core.transport_error(dest, now)        # sending to dest failed
    core.handle_timer(now)                 # when now >= core.get_timer()

    for data, dest in core.messages_to_send(): ...
    for lookup in core.lookups(): ...       # resolve, then call core.resolved

``now`` is a monotonic clock (transaction timers, Timer C); ``wall`` the
wall clock that binding expiry and digest nonces are measured with.

What it does with a request: §16.3 validation, §16.4 Route
pre-processing, caller authentication (a request from a user of our
domain that is not inside a dialog must carry valid Proxy-Authorization
for that same user, else ``407``; the domain in any spelling counts),
target set from the location table (``480`` for an unknown user and a
user without a binding alike; contacts that reach the cluster itself
skipped), parallel forking within the highest q and sequential groups
below (at most ``max_branches`` in all and Max-Breadth at once, RFC 5393),
RFC 3263 routing of other domains
with failover to the next target on a transport error, a timeout or a
``503``, ``100 Trying`` (held back 200 ms, §17.2.1, and skipped when a
provisional response is relayed first), provisional responses relayed,
every 2xx relayed and the other branches cancelled, best-response
selection, an incoming CANCEL answered and applied to every branch, Timer
C. ACKs for 2xx, and other requests inside a dialog we Record-Routed whose
Request-URI is an address, are forwarded statelessly (§16.11), with their
responses relayed by Via; re-INVITEs stay stateful.

A request is inside a dialog only when its Route carries the token our
Record-Route put there (``ProxySettings.record_route``): any other, To
tag or not, is handled as a new request (challenged if from our domain,
``403`` if it would be relayed for a stranger; a forged ACK is dropped).
A call to an emergency number (``ProxySettings.emergency``) is never
challenged nor refused by these defences.

With a dial plan (``ProxyCore.dialing``, ``sipcore.dialing``), a number of our
domain that is not a user goes to the gateways of the rule it matches, for an
authenticated caller with the rule's permission, the next gateway tried only on
"try elsewhere" (``Context.failover``); an emergency number goes to the
emergency gateways whoever calls; and nobody reaches a gateway's address past
the plan.

A trusted peer (``sipcore.trusted``, by source address or TLS certificate) is not challenged
and reaches only our users, their extensions and DIDs, never a gateway or
another domain. Caller identity is screened at the edge (``sipcore.identity``,
RFC 3325) on every request: a new one, and one inside a dialog (whose claimed
identities from an untrusted source are removed, nothing asserted).

A REFER (``sipcore.transfer``) is handled statefully even inside a dialog: a
phone of our domain is challenged, its target checked against its
permissions, and its transferee's INVITE carrying the token it got is routed
as the transferor's call.
"""

import heapq
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import unquote

from .call_events import (
    ANSWER,
    ATTEMPT,
    BYE,
    CANCEL,
    EMERGENCY,
    FAILURE,
    FINISHING,
    RINGING,
    CallEvent,
    call_event,
)
from .dialing import TRY_ELSEWHERE, Dialing
from .dialogs import Dialog, answered_dialog
from .digest import BANNED, Authenticator
from .errors import SipError
from .identity import screen as screen_identity
from .identity import withhold as withhold_identity
from .location import Location
from .message import Message, Request, Response, error_response, make_response
from .proxy import (
    ALLOW,
    DIALOG_METHODS,
    STATELESS_PREFIX,
    UNCHALLENGED,
    Branch,
    BranchTarget,
    Context,
    Lookup,
    ProxySettings,
    best_response,
    branch_prefix,
    branch_request,
    check_request,
    destinations,
    max_breadth,
    options_response,
    preprocess_route,
    sips_request,
    route_next_hop,
    stateless_branch,
    strip_our_via,
    target_groups,
    trying_response,
)
from .rfc3263 import Locator, Target
from .ring_groups import RingGroup, fallback_kind, ring_plan
from .transfer import TOKEN_HEADER, Transfers
from .transaction import (
    AckReceived,
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    StrayResponse,
    Transaction,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
)
from .trusted import TrustedPeer
from .uri import SipUri, parse_uri
from .via import Dest, source_address

log = logging.getLogger(__name__)

_CALL_DONE = [("Reason", 'SIP;cause=200;text="Call completed elsewhere"')]
_UNREACHABLE = (404, "Destination Not Found")
#: requests never forwarded statelessly (they need a transaction: CANCEL matching, 100, 408)
_STATEFUL = frozenset({"INVITE", "ACK", "CANCEL"})


class ProxyCore:
    """The proxy's logic; see the module docstring.

    ``location`` is the ``Location`` table (read only), ``authenticator``
    a ``digest.Authenticator`` for our realm (None: no caller
    authentication).
    ``timer_c`` bounds how long a ringing INVITE branch may stay without
    news (§16.6 step 11). ``trying_delay``: an INVITE gets ``100 Trying``
    only if nothing else was sent upstream within that many seconds
    (§17.2.1 asks for it within 200 ms; 0 sends it at once).
    """

    def __init__(
        self,
        settings: ProxySettings,
        location: Location,
        authenticator: Authenticator | None = None,
        *,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        timer_c: float = 180.0,
        trying_delay: float = 0.2,
    ) -> None:
        self.settings = settings
        self.location = location
        self.auth = authenticator
        self.timer_c = timer_c
        self.trying_delay = trying_delay
        self._trying: deque[tuple[float, Context]] = deque()
        self.layer = TransactionLayer(t1, t2, t4, auto_trying=False)
        self._seq = 0
        self._tag = os.urandom(4).hex()
        self._unique = os.urandom(3).hex()
        self._lookups: dict[int, Branch | tuple[Request, str] | None] = {}
        self._lookups_out: list[Lookup] = []
        self._ringing: dict[Branch, float] = {}
        self._gave_up: set[Branch] = set()
        """Gateway branches cancelled by Timer C: their end moves on to the next gateway."""
        self._literal: dict[tuple[str, int | None, str | None, str], list[Dest]] = {}
        self._ring_timers: list[tuple[float, int, Context, int]] = []
        """Ring groups' timeouts: (deadline, seq, context, groups left when it started)."""
        self._rung_out: set[Branch] = set()
        """Branches cancelled at their ring timeout: their 487 is not the call's answer."""
        self._call_events: list[CallEvent] = []
        self.dialing: Dialing | None = None
        """A ``sipcore.dialing.Dialing`` when the node has a dial plan: numbers that are
        not users go to gateways, emergency numbers to the emergency gateways."""
        self.tls_peer: Callable[[str, int], tuple[str, str] | None] | None = None
        """Set by the actor: ``(host, port) -> (fingerprint, common name) | None``, the
        verified certificate the TLS connection from there presented (trusted peers)."""
        self.transfers = Transfers(settings.secret or os.urandom(32))
        """Transfer tokens (``sipcore.transfer``): a REFER's target checked, its
        transferee's INVITE routed as the transferor's call."""
        self.stats = {
            "requests": 0,
            "forwarded": 0,
            "challenged": 0,
            "rejected": 0,
            "cancelled": 0,
            "timeouts": 0,
            "stateless": 0,
        }

    # -- outputs -------------------------------------------------------------
    def messages_to_send(self) -> list[tuple[bytes, Any]]:
        """Take every ``(bytes, destination)`` queued, oldest first."""
        return self.layer.messages_to_send()

    def take_call_events(self) -> list[CallEvent]:
        """Take the call events queued (attempt, ringing, answer, failure, cancel, bye)."""
        out, self._call_events = self._call_events, []
        return out

    def _call_event(
        self,
        kind: str,
        msg: Message,
        source: object,
        status: int | None = None,
        dialog: Dialog | None = None,
    ) -> None:
        # source: a Dest, mostly a transaction's destination (which the layer types object)
        ev = call_event(kind, msg, cast(Dest, source), status, dialog)
        if ev is not None:
            self._call_events.append(ev)
            if kind in FINISHING and self.dialing is not None:
                self.dialing.calls.end(ev.call_id)

    def lookups(self) -> list[Lookup]:
        """Take the RFC 3263 lookups to make."""
        out, self._lookups_out = self._lookups_out, []
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` should next be called, or None."""
        t = self.layer.get_timer()
        if self._ringing:
            c = next(iter(self._ringing.values())) + self.timer_c
            if t is None or c < t:
                t = c
        if self._trying:
            c = self._trying[0][0]
            if t is None or c < t:
                t = c
        if self._ring_timers:
            c = self._ring_timers[0][0]
            if t is None or c < t:
                t = c
        return t

    # -- inputs --------------------------------------------------------------
    def receive(
        self, msg: Request | Response, source: Dest, now: float, wall: float | None = None
    ) -> None:
        """Feed one validated message from ``source`` (``(transport, host, port)``)."""
        if isinstance(msg, Response):
            if (msg.top_via.branch or "").startswith(STATELESS_PREFIX):
                dest = strip_our_via(msg, self.settings)
                if dest is not None:
                    self.layer.send(msg, dest)
                return
        elif msg.to.tag is not None:
            route = msg.get("route")
            if (
                msg.method not in _STATEFUL
                and msg.method != "REFER"
                and route is not None
                and self.settings.is_record_route(route, msg)
                and self._forward_stateless(msg, source)
            ):
                return
        elif (
            self.auth is not None
            and msg.method not in UNCHALLENGED
            and msg.get("proxy-authorization") is None
            and self._challenge(msg, source, now if wall is None else wall)
        ):
            return
        try:
            self.layer.receive(msg, source, now, source[0] != "udp")
        except SipError as err:
            if isinstance(msg, Request) and msg.method != "ACK":
                self.layer.send(error_response(msg, err, self._new_tag()), source)
            return
        self._drain(now, now if wall is None else wall)

    def resolved(self, token: int, targets: list[Target], now: float) -> None:
        """The targets found for the ``Lookup`` with ``token`` (empty: none)."""
        item = self._lookups.pop(token, None)
        if item is None:
            return
        dests = destinations(targets, self.settings.transports)
        if isinstance(item, Branch):
            if item.done:
                return
            item.dests = dests
            if not self._send_branch(item, now):
                self._branch_final(item, self._generated(item.ctx, *_UNREACHABLE), now)
        elif dests:
            self._send_stateless_to(item[0], item[1], dests[0])
        self._drain(now, now)

    def transport_error(self, dest: Dest, now: float) -> None:
        """Sending to ``dest`` failed: its transactions fail over or end."""
        self.layer.transport_error(dest, now)
        self._drain(now, now)

    def handle_timer(self, now: float) -> None:
        """Fire the transaction timers and Timer C due at ``now``."""
        self.layer.handle_timer(now)
        trying = self._trying
        while trying and trying[0][0] <= now:
            ctx = trying.popleft()[1]
            if not ctx.final_sent and ctx.server.status == 0:
                self.layer.respond(ctx.server, trying_response(ctx.request), now)
        ringing = self._ringing
        timer_c = self.timer_c
        while ringing:
            branch, since = next(iter(ringing.items()))
            if since + timer_c > now:  # as get_timer computes it (no float drift)
                break
            del ringing[branch]
            if not branch.done and branch.tx is not None:
                log.info("timer C fired for %s; cancelling the branch", branch.tx.key[0])
                if branch.ctx.failover is not None:
                    self._gave_up.add(branch)
                self.layer.cancel(branch.tx, now)
        timers = self._ring_timers
        while timers and timers[0][0] <= now:
            _, _, ctx, left = heapq.heappop(timers)
            if not ctx.final_sent and not ctx.stopped and len(ctx.groups) == left:
                self._ring_out(ctx, now)
        self._drain(now, now)

    # -- events ----------------------------------------------------------------
    def _drain(self, now: float, wall: float) -> None:
        # Any: the events are told apart by their exact type (kind), which mypy does not
        # narrow ev by; a cast per event would cost a call in this loop.
        layer: Any = self.layer
        while (ev := layer.next_event()) is not None:
            kind = type(ev)
            if kind is ResponseReceived:
                self._on_response(ev.transaction, ev.response, now)
            elif kind is RequestReceived:
                if ev.request.method == "CANCEL":
                    self._on_cancel(ev, now)
                else:
                    self._on_request(ev.transaction, ev.request, now, wall)
            elif kind is AckReceived:
                self._forward_ack(ev.request)
            elif kind is StrayResponse:
                dest = strip_our_via(ev.response, self.settings)
                if dest is not None:
                    self.layer.send(ev.response, dest)
            elif kind is TransactionTimeout:
                self._on_failure(ev.transaction, 408, now)
            elif kind is TransportError:
                self._on_failure(ev.transaction, 503, now)

    def _on_request(self, stx: ServerTransaction, req: Request, now: float, wall: float) -> None:
        self.stats["requests"] += 1
        try:
            self._route(stx, req, now, wall)
        except SipError as err:
            self.stats["rejected"] += 1
            self.layer.respond(
                stx,
                make_response(req, err.status, err.reason, err.headers, to_tag=self._new_tag()),
                now,
            )

    def _route(self, stx: ServerTransaction, req: Request, now: float, wall: float) -> None:
        """§16.3 to §16.5 for a new request; raises ``SipError`` to answer it."""
        s = self.settings
        try:
            loop = check_request(req, s)
        except SipError as err:
            if err.status == 482:
                log.info("loop detected: %s %s call %s", req.method, req.uri, req.call_id)
            raise
        # A peer sending us a request for a flow we hold (sipcore.flow_relay).
        flow = s.relayed_flow(req, wall) if s.peer_hops else None
        routed = preprocess_route(req, s)
        ruri = req.ruri
        if not s.tls_port and sips_request(req):
            # §26.2: a sips request goes over TLS on every hop. The node has no TLS, so it
            # refuses rather than forward it over UDP or TCP.
            raise SipError(416, "SIPS Needs TLS, Not Offered Here")
        method = req.method
        has_route = req.get("route") is not None
        local = not has_route and s.is_local(ruri)
        if local and ruri.user is None:
            if method == "OPTIONS":
                self.layer.respond(stx, options_response(req, self._new_tag()), now)
                return
            raise SipError(405, "Method Not Allowed", [("Allow", ALLOW)])
        # Only a Route the cluster wrote (its token verified) makes a request
        # part of a dialog; a To tag alone proves nothing (issue 11: relay).
        in_dialog = routed and req.to.tag is not None
        emergency = bool(s.emergency) and s.is_emergency(ruri)
        caller = None
        # A trusted carrier is not challenged, and reaches only our users and numbers.
        peer = None if in_dialog else self._peer(cast(Dest, stx.destination))
        # A transferee's INVITE with a token is the transferor's call (sipcore.transfer).
        transferor = None if in_dialog else self.transfers.redeem(req, s, wall)
        if (
            self.auth is not None
            and not in_dialog
            and flow is None
            and method not in UNCHALLENGED
            and peer is None
            and transferor is None
        ):
            from_uri = req.from_.uri
            if from_uri.user and s.names_domain(from_uri):
                if emergency:
                    caller = self._emergency_caller(req, wall)
                else:
                    caller = self._authenticate(req, unquote(from_uri.user), wall)
        if transferor is not None:
            caller = transferor
        elif method == "REFER":
            self._refer(req, caller, in_dialog, cast(Dest, stx.destination), wall)
        breadth = max_breadth(req) if not emergency else self._emergency_breadth(req)
        dialing = self.dialing
        dialled = failover = ring = gateway = None
        callee = None
        try:
            if flow is not None:
                groups = [[BranchTarget(req.uri, (), flow)]]
            elif emergency and not in_dialog:
                dialled = self._emergency_gateways(
                    req, ruri, caller, cast(Dest, stx.destination)[1]
                )
                if dialled is None:
                    groups = self._emergency_targets(req, ruri, local, caller, wall, breadth)
                else:
                    groups = dialled[0]
            elif (
                local
                and dialing is not None
                and ruri.user
                and (group := self._ring_group(unquote(ruri.user))) is not None
            ):
                # A ring group's number: its members, then its fallback (sipcore.ring_groups).
                groups, ring = self._ring_targets(group, wall, breadth)
            elif (
                local
                and dialing is not None
                and ruri.user
                and (owner := dialing.alias(unquote(ruri.user))) is not None
            ):
                # An extension or DID of a user (looked up before the dial plan).
                groups = self._local_targets(ruri, wall, breadth, owner)
                callee = owner
            elif local and dialing is not None and ruri.user and dialing.takes(unquote(ruri.user)):
                # A number that is not a user of the domain: the dial plan's, for our users only.
                if caller is None:
                    raise SipError(403, "No Trunk-To-Trunk Relay" if peer else "Relaying Denied")
                busy = (
                    dialing.calls.busy_gateways(dialing.plan.limits)
                    if dialing.calls.gateways
                    else frozenset()
                )
                try:
                    groups, identity, gateway = dialing.route(unquote(ruri.user), caller, busy)
                except SipError as err:
                    if busy and err.status == 503:
                        dialing.calls.gateways_full()
                    raise
                dialled, failover = (groups, identity), TRY_ELSEWHERE
            elif local:
                groups = self._local_targets(ruri, wall, breadth)
                callee = unquote(ruri.user) if ruri.user else None
            else:
                if caller is None and not in_dialog:
                    raise SipError(403, "No Trunk-To-Trunk Relay" if peer else "Relaying Denied")
                if ruri.scheme == "tel" and not has_route:
                    raise SipError(404, "Not Found")
                if dialing is not None and not in_dialog and dialing.names_gateway(req):
                    # A gateway is reached through the dial plan and its permissions only.
                    raise SipError(403, "Gateways Only Through The Dial Plan")
                groups = [[BranchTarget(req.uri)]]
        except SipError as err:
            if method == "INVITE" and not in_dialog and (caller or peer or emergency):
                # A call that got past authentication (or came from a trusted carrier, or
                # to an emergency number) and found no way on (a user with no phone, a
                # number the dial plan refuses) is a call: it has a record. A stranger's
                # refused INVITE is none (it would let anyone fill the records).
                self._call_event(ATTEMPT, req, stx.destination)
                if emergency:
                    self._call_event(EMERGENCY, req, stx.destination)
                self._call_event(FAILURE, req, stx.destination, err.status)
            raise
        # Record-Route: the leg the request came on; each branch adds its own (RFC 5658).
        rr = (
            cast(Dest, stx.destination)[0]
            if method in DIALOG_METHODS and req.to.tag is None
            else None
        )
        if in_dialog:
            screen_identity(req, self._peer(cast(Dest, stx.destination)) is not None, None)
        else:
            screen_identity(
                req,
                peer is not None,
                None if caller is None or transferor else self._asserted(caller),
            )
        if dialled is not None:
            self._to_gateway(req, dialled[1])
        elif not in_dialog:
            withhold_identity(req)  # toward a phone or another domain: untrusted
        if dialing is not None and method == "INVITE" and req.to.tag is None:
            self._count_call(req, caller, callee, gateway, emergency, now)
        ctx = stx.context = Context(stx, req, branch_prefix(loop), rr, groups, breadth)
        ctx.failover = failover
        ctx.ring = ring
        if method == "BYE" or (ctx.invite and req.to.tag is None):
            if emergency and method != "BYE":
                log.warning(
                    "emergency call %s from %s (%s) to %s: %s",
                    req.call_id,
                    req.from_.uri,
                    "authenticated" if caller else "not authenticated",
                    req.uri,
                    "to the emergency gateways"
                    if dialled
                    else "no emergency gateway, routed as a user",
                )
            self._call_event(BYE if method == "BYE" else ATTEMPT, req, stx.destination)
            if emergency and method != "BYE":
                self._call_event(EMERGENCY, req, stx.destination)
        if ctx.invite:
            if self.trying_delay > 0:
                self._trying.append((now + self.trying_delay, ctx))
            else:
                self.layer.respond(stx, trying_response(req), now)
        self._advance(ctx, now)

    def _count_call(
        self,
        req: Request,
        caller: str | None,
        callee: str | None,
        gateway: str | None,
        emergency: bool,
        now: float,
    ) -> None:
        """Count a new call against its users and gateway (``sipcore.call_limits``):
        ``486`` past a user's limit, except for an emergency call (counted, never refused)."""
        calls = cast(Dialing, self.dialing).calls
        users = tuple(u for u in (caller, callee) if u)
        if not emergency:
            calls.check(users, cast(Dialing, self.dialing).plan.limits)
        calls.add(req.call_id, users, gateway, now)

    def _ring_group(self, number: str) -> RingGroup | None:
        """The ring group ``number`` of our domain reaches (a user's own name comes first)."""
        dialing = cast(Dialing, self.dialing)
        group = dialing.plan.ring_groups.get(number)
        return None if group is None or dialing.is_user(number) else group

    def _ring_targets(
        self, group: RingGroup, wall: float, breadth: int
    ) -> tuple[list[list[BranchTarget]], list[float | None]]:
        """The branch groups and ring timeouts of a call to ring group ``group``: its
        members' phones, then its fallback; ``480`` when none of it can be reached."""
        dialing = cast(Dialing, self.dialing)
        s = self.settings
        kind, target = fallback_kind(group, dialing.plan.owner)
        if kind == "number" and dialing.is_user(target):
            kind = "user"
        if kind == "uri":
            fallback = [[BranchTarget(target)]]
        elif kind == "user":
            fallback = self._bound_targets(f"sip:{target}@{s.domain}", wall, breadth)
        elif kind == "number":
            fallback = dialing.outside(target)
        else:
            fallback = []
        calls, limits = dialing.calls, dialing.plan.limits

        def phones(user: str) -> list[BranchTarget]:
            if calls.full(user, limits):
                return []  # at their call limit: busy
            return [
                t for g in self._bound_targets(f"sip:{user}@{s.domain}", wall, breadth) for t in g
            ]

        groups, timeouts = ring_plan(group, phones, fallback, s.max_branches)
        if not groups:
            raise SipError(480, "Temporarily Unavailable")
        return groups, timeouts

    def _bound_targets(self, aor: str, wall: float, breadth: int) -> list[list[BranchTarget]]:
        """The branch groups of the phones bound to ``aor`` (none: ``[]``); bindings whose
        contact reaches the cluster itself are never forked to (they would loop)."""
        s = self.settings
        bindings = self.location.lookup(aor, wall)
        if bindings:
            points_here = s.addresses.points_here
            bindings = [b for b in bindings if not points_here(parse_uri(b.contact))]
        if not bindings:
            return []
        return target_groups(bindings, s.max_branches, breadth, s.nat_handling, s.relay_route)

    def _local_targets(
        self, ruri: SipUri, wall: float, breadth: int, user: str | None = None
    ) -> list[list[BranchTarget]]:
        """The branch groups for a user of our domain (``user``: the one an extension or
        DID of the Request-URI belongs to).

        An unknown user and a user without a binding get the same ``480``
        after the same work (one location lookup), so that nobody learns
        which users exist (issue 11: enumeration). Bindings whose contact
        reaches the cluster itself are never forked to (they would loop).
        """
        s = self.settings
        aor = s.aor(ruri) if user is None else f"sip:{user}@{s.domain}"
        groups = self._bound_targets(aor, wall, breadth)
        if not groups:
            raise SipError(480, "Temporarily Unavailable")
        return groups

    def _emergency_targets(
        self, req: Request, ruri: SipUri, local: bool, caller: str | None, wall: float, breadth: int
    ) -> list[list[BranchTarget]]:
        """Where a call to an emergency number goes: the phones registered as that
        number of our domain, whatever domain the Request-URI names; else where
        routing takes an authenticated caller's call. Nobody else's request is
        relayed to another domain for being to such a number."""
        s = self.settings
        number = s.emergency.of_uri(ruri)
        bindings = self.location.lookup(f"sip:{number}@{s.domain}", wall)
        if bindings:
            return target_groups(bindings, s.max_branches, breadth, s.nat_handling, s.relay_route)
        if local or caller is None or (ruri.scheme == "tel" and req.get("route") is None):
            raise SipError(480, "No Route For Emergency Number")
        return [[BranchTarget(req.uri)]]

    def _emergency_gateways(
        self, req: Request, ruri: SipUri, caller: str | None, source: str
    ) -> tuple[list[list[BranchTarget]], str] | None:
        """``(groups, identity)`` of an emergency call from address ``source`` through
        the emergency gateways, or None without any. The callback number is that of the
        authenticated caller, else of the user the From names when it is of our domain
        (an emergency call whose credentials failed still tells the emergency service
        who it probably is), else of the location ``source`` is in
        (``DialPlan.callback``)."""
        if self.dialing is None:
            return None
        user = caller
        from_uri = req.from_.uri
        if user is None and from_uri.user and self.settings.names_domain(from_uri):
            user = unquote(from_uri.user)
        return self.dialing.emergency(self.settings.emergency.of_uri(ruri) or "", user, source)

    @staticmethod
    def _to_gateway(req: Request, identity: str) -> None:
        """A request the dial plan sends to a gateway: no Route of the caller's (the
        gateway is the next hop, nothing beyond it), and our identity of the caller
        instead of any the caller asserted (RFC 3325)."""
        for name in ("route", "p-asserted-identity", "p-preferred-identity"):
            req.remove(name)
        req.add("P-Asserted-Identity", identity)

    def _asserted(self, user: str) -> str:
        """The ``P-Asserted-Identity`` of an authenticated user's request."""
        dialing = self.dialing
        if dialing is not None:
            return dialing.asserted(user)
        return f"<sip:{user}@{self.settings.domain}>"

    def _peer(self, source: Dest) -> TrustedPeer | None:
        """The trusted peer (``sipcore.trusted``) a request from ``source`` (``(transport,
        host, port)``) comes from, by its address or its TLS connection's certificate."""
        dialing = self.dialing
        if dialing is None:
            return None
        certificate = (
            self.tls_peer(source[1], source[2])
            if source[0] == "tls" and self.tls_peer is not None
            else None
        )
        return dialing.plan.trusted.peer(source[1], certificate)

    def _refer(
        self, req: Request, caller: str | None, in_dialog: bool, source: Dest, wall: float
    ) -> None:
        """Check a REFER's target against its sender's permissions (``sipcore.transfer``);
        a phone of our domain inside a dialog is challenged for them first."""
        from_uri = req.from_.uri
        if (
            in_dialog
            and self.auth is not None
            and self._peer(source) is None
            and from_uri.user
            and self.settings.names_domain(from_uri)
        ):
            caller = self._authenticate(req, unquote(from_uri.user), wall, alias=True)
        self.transfers.accept(req, caller, self.settings, self.dialing, wall)

    def _emergency_caller(self, req: Request, wall: float) -> str | None:
        """The authenticated user of a call to an emergency number, or None: such a
        call is never challenged, nor refused for credentials that do not match."""
        values = req.raw_values("proxy-authorization")
        if not values:
            return None
        result = cast(Authenticator, self.auth).authenticate(req.method, values, wall)
        if result.ok and result.username == unquote(cast(str, req.from_.uri.user)):
            return result.username
        return None

    @staticmethod
    def _emergency_breadth(req: Request) -> int:
        """Max-Breadth for an emergency call: the request's, but never a ``440``."""
        try:
            return max_breadth(req)
        except SipError:
            return 1

    def _authenticate(self, req: Request, user: str, wall: float, alias: bool = False) -> str:
        """The user ``req``'s credentials prove, who must be ``user`` (with ``alias``,
        also the user ``user`` is an extension or DID of: inside a call to a DID, the
        callee's From is that number); else the ``SipError`` to answer."""
        result = cast(Authenticator, self.auth).authenticate(
            req.method, req.raw_values("proxy-authorization"), wall, req.uri, source_address(req)
        )
        if result is BANNED:
            raise SipError(403, "Forbidden (Too Many Failed Authentications)")
        if not result.ok:
            self.stats["challenged"] += 1
            if result.reason != "missing":
                log.info("%s from %s not authenticated: %s", req.method, user, result.reason)
            raise SipError(
                407,
                "Proxy Authentication Required",
                [("Proxy-Authenticate", c) for c in result.challenges],
            )
        if result.username != user and not (
            alias and self.dialing is not None and self.dialing.alias(user) == result.username
        ):
            log.info("%s from %s with credentials of %s refused", req.method, user, result.username)
            raise SipError(403, "Credentials Do Not Match From")
        return cast(str, result.username)  # ok: the user's name

    # -- branches --------------------------------------------------------------
    def _advance(self, ctx: Context, now: float) -> None:
        """Start the next group while nothing is pending; answer when all is done."""
        while not ctx.live and not ctx.final_sent:
            if ctx.stopped or not ctx.groups:
                self._send_final(ctx, now)
                return
            self._start_group(ctx, now)

    def _start_group(self, ctx: Context, now: float) -> None:
        """Fork to the context's next group (with its ring timeout, for a ring group)."""
        group = ctx.groups.pop(0)
        if ctx.ring:
            timeout = ctx.ring.pop(0)
            if timeout is not None:
                self._seq += 1
                heapq.heappush(self._ring_timers, (now + timeout, self._seq, ctx, len(ctx.groups)))
        share = max(1, ctx.breadth // len(group)) if group else 1
        for target in group:
            self._start_branch(ctx, target, now, share)

    def _ring_out(self, ctx: Context, now: float) -> None:
        """A ring group's group rang for its ring timeout without an answer: cancel its
        branches and ring the next group at once (the fallback, last); with none left
        the caller gets ``480``."""
        for b in ctx.branches:
            if not b.done and b.tx is not None:
                self._rung_out.add(b)
        self._cancel_branches(ctx, now, ())
        if ctx.groups:
            self._start_group(ctx, now)
        else:
            resp = self._generated(ctx, 480, "No Answer")
            if resp is not None:
                ctx.finals.append(resp)
        self._advance(ctx, now)

    def _start_branch(
        self, ctx: Context, target: BranchTarget, now: float, breadth: int | None = None
    ) -> None:
        branch = Branch(ctx)
        ctx.branches.append(branch)
        # An empty Record-Route to fill when the branch's transport is known (_send_branch).
        req = branch_request(
            ctx.request,
            target,
            None if ctx.record_route is None else "",
            self.settings.domain,
            breadth,
        )
        if target.dest is None or target.routes:
            try:
                hop = route_next_hop(req, ctx.ruri if target.uri == ctx.request.uri else None)
            except SipError as err:
                branch.done = True
                ctx.finals.append(cast(Response, self._generated(ctx, err.status, err.reason)))
                return
        branch.request = req
        ctx.live += 1
        if target.dest is not None and not target.routes:
            branch.dests = [target.dest]
            if target.dest[0] != "udp":
                self._add_contact_fallback(branch, target)
        else:
            dests = self._locate(hop, branch)
            if dests is None:
                return
            branch.dests = dests
        if not self._send_branch(branch, now):
            branch.done = True
            ctx.live -= 1
            ctx.finals.append(cast(Response, self._generated(ctx, *_UNREACHABLE)))

    def _add_contact_fallback(self, branch: Branch, target: BranchTarget) -> None:
        """After a TCP flow (which dies with its connection), try the contact itself."""
        try:
            uri = parse_uri(target.uri)
        except SipError:
            return
        for dest in self._locate(uri, None, lookup=False) or ():
            if dest not in branch.dests:
                branch.dests.append(dest)

    def _locate(
        self, uri: SipUri, item: Branch | tuple[Request, str] | None, lookup: bool = True
    ) -> list[Dest] | None:
        """Destinations for ``uri`` at once (an IP address), or None after queueing a
        Lookup for ``item`` (``[]`` instead when ``lookup`` is false)."""
        scheme = uri.scheme
        if scheme != "sip" and scheme != "sips":
            return []
        host = uri.params.get("maddr") or uri.host
        key = (host, uri.port, uri.transport, scheme)
        found = self._literal.get(key)
        if found is not None:
            return list(found)
        try:
            loc = Locator(host, uri.port, uri.transport, scheme, supported=self.settings.transports)
        except ValueError:
            return []
        if loc.done:
            found = destinations(loc.targets, self.settings.transports)
            if len(self._literal) > 10000:
                self._literal.clear()
            self._literal[key] = found
            return list(found)
        if not lookup:
            return []
        self._seq += 1
        self._lookups[self._seq] = item
        self._lookups_out.append(Lookup(self._seq, host, uri.port, uri.transport, scheme))
        return None

    def _send_branch(self, branch: Branch, now: float) -> bool:
        """Send the branch to its next destination in a new client transaction."""
        if branch.dests and sips_request(branch.ctx.request):
            # §26.2: never downgraded; a target reachable only over UDP or TCP is not tried.
            branch.dests = [d for d in branch.dests if d[0] == "tls"]
        if not branch.dests:
            return False
        dest = branch.dests.pop(0)
        req = cast(Request, branch.request)  # set before the branch is sent
        inbound = branch.ctx.record_route
        if branch.tries or inbound is not None:
            headers = [h[:] for h in req.headers]
            if inbound is not None:
                headers[1:2] = [
                    ["record-route", "Record-Route", v]
                    for v in self.settings.record_routes(req, inbound, dest[0])
                ]
            req = Request(req.method, req.uri, headers, req.body)
        branch.tries += 1
        self._seq += 1
        self.settings.set_via(req, dest[0], f"{branch.ctx.prefix}{self._unique}{self._seq:x}")
        tx = self.layer.send_request(req, dest, now, dest[0] != "udp")
        tx.fork = branch
        branch.tx = tx
        self.stats["forwarded"] += 1
        return True

    def _branch_final(self, branch: Branch, resp: Response | None, now: float) -> None:
        """A branch ended with ``resp`` (None: nothing to keep); move the context on."""
        ctx = branch.ctx
        if branch.done:
            return
        branch.done = True
        if branch.tx is not None:
            branch.tx.fork = None
        branch.tx = branch.request = None
        branch.dests = ()  # type: ignore[assignment]  # an ended branch's: () shared, not a list
        ctx.live -= 1
        self._ringing.pop(branch, None)
        gave_up = bool(self._gave_up) and branch in self._gave_up
        if gave_up:
            self._gave_up.discard(branch)
        if self._rung_out and branch in self._rung_out:
            self._rung_out.discard(branch)
            if resp is not None and resp.status == 487:
                resp = None  # cancelled at its ring timeout: not the callee's answer
        if ctx.final_sent:
            return
        if resp is not None:
            ctx.finals.append(resp)
            if resp.status >= 600 and ctx.invite and not ctx.stopped:
                ctx.stopped = True
                self._cancel_branches(ctx, now, ())
            elif ctx.failover is not None and resp.status not in ctx.failover and not gave_up:
                ctx.stopped = True  # the callee's answer, not the gateway's failure
        self._advance(ctx, now)

    def _cancel_branches(
        self, ctx: Context, now: float, headers: Sequence[tuple[str, str]]
    ) -> None:
        for b in ctx.branches:
            if b.done:
                continue
            if b.tx is not None:
                self.layer.cancel(b.tx, now, headers)
            else:
                b.done = True
                ctx.live -= 1
                if not ctx.final_sent:
                    ctx.finals.append(
                        cast(Response, self._generated(ctx, 487, "Request Terminated"))
                    )

    def _send_final(self, ctx: Context, now: float) -> None:
        ctx.final_sent = True
        if ctx.cancelled:
            resp = next((r for r in ctx.finals if r.status == 487), None)
            if resp is None:
                resp = cast(Response, self._generated(ctx, 487, "Request Terminated"))
        elif not ctx.finals:
            resp = cast(Response, self._generated(ctx, 408, "Request Timeout"))
        else:
            resp = best_response(ctx.finals)
            if resp.status == 503:
                resp = cast(Response, self._generated(ctx, 500, "Server Internal Error"))
        if resp.status == 408:
            self.stats["timeouts"] += 1
            log.info("%s to %s: no final response; 408", ctx.request.method, ctx.request.uri)
        if ctx.invite and not ctx.cancelled and ctx.request.to.tag is None:
            self._call_event(FAILURE, resp, ctx.server.destination, resp.status)
        self.layer.respond(ctx.server, resp, now)
        self._release(ctx)

    @staticmethod
    def _release(ctx: Context) -> None:
        """Once answered, a context keeps only what relaying later 2xx needs.

        Dropping the links back to it (server transaction, branch list)
        leaves no reference cycle, so it is freed as soon as its
        transactions end, without waiting for the cyclic collector.
        """
        # proxy.Context types the fields of a live context; a released one is only read
        # behind checks (_generated's request is None, final_sent).
        ctx.server.context = None
        ctx.request = None  # type: ignore[assignment]
        ctx.finals = ctx.branches = ()  # type: ignore[assignment]
        ctx.groups = None  # type: ignore[assignment]

    def _generated(self, ctx: Context, status: int, reason: str) -> Response | None:
        """A response of our own for the context's request (None once it is answered)."""
        if ctx.request is None:
            return None
        return make_response(ctx.request, status, reason, to_tag=self._new_tag())

    # -- responses -------------------------------------------------------------
    def _on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        branch = cast("Branch | None", tx.fork)
        if branch is None:
            if tx.relay_to is not None and 200 <= resp.status < 300:
                resp.pop_first_value("via")
                self.layer.respond(cast(ServerTransaction, tx.relay_to), resp, now)
            return
        ctx = branch.ctx
        status = resp.status
        if status < 200:
            if status == 100 or ctx.final_sent:
                return
            if ctx.invite and branch.tx is tx:
                self._ringing.pop(branch, None)
                self._ringing[branch] = now
                if status == 180 and ctx.request.to.tag is None:
                    self._call_event(RINGING, resp, ctx.server.destination, status)
            resp.pop_first_value("via")
            self.layer.respond(ctx.server, resp, now)
            return
        if status < 300:
            resp.pop_first_value("via")
            self.layer.respond(ctx.server, resp, now)
            first = not ctx.final_sent
            ctx.final_sent = ctx.stopped = True
            self._branch_final(branch, None, now)
            tx.fork = None
            tx.relay_to = ctx.server
            if not first:
                return
            if ctx.invite:
                if ctx.request.to.tag is None:
                    self._call_event(
                        ANSWER,
                        resp,
                        ctx.server.destination,
                        status,
                        answered_dialog(
                            ctx.request,
                            resp,
                            cast(Dest, ctx.server.destination),
                            cast(Dest, tx.destination),
                        ),
                    )
                self._cancel_branches(ctx, now, _CALL_DONE)
            self._release(ctx)
            return
        if branch.tx is not tx or branch.done:
            return
        if status == 503 and branch.dests and not ctx.stopped:
            log.info("503 from %s:%s:%d; trying the next target", *cast(Dest, tx.destination))
            if self._send_branch(branch, now):
                return
        resp.pop_first_value("via")
        self._branch_final(branch, resp, now)

    def _on_failure(self, tx: Transaction, status: int, now: float) -> None:
        """A timeout (408) or transport error (503) of a transaction."""
        branch = cast("Branch | None", tx.fork)
        if branch is None or branch.tx is not tx or branch.done:
            return
        ctx = branch.ctx
        if branch.dests and not ctx.stopped:
            log.info(
                "%s to %s:%s:%d; trying the next target",
                "timeout" if status == 408 else "transport error",
                *cast(Dest, tx.destination),
            )
            if self._send_branch(branch, now):
                return
        reason = "Request Timeout" if status == 408 else "Service Unavailable"
        self._branch_final(branch, self._generated(ctx, status, reason), now)

    def _on_cancel(self, ev: RequestReceived, now: float) -> None:
        """§16.10: answer the CANCEL, then cancel every branch of its INVITE."""
        cancel = ev.request
        invite = ev.invite
        if invite is None:
            self.layer.respond(
                ev.transaction, make_response(cancel, 481, to_tag=self._new_tag()), now
            )
            return
        self.layer.respond(ev.transaction, make_response(cancel, 200, to_tag=self._new_tag()), now)
        ctx = cast("Context | None", invite.context)
        if ctx is None or ctx.final_sent or ctx.cancelled:
            return
        self.stats["cancelled"] += 1
        self._call_event(CANCEL, cancel, ev.transaction.destination)
        ctx.cancelled = True
        ctx.stopped = True
        reason = cancel.get("reason")
        self._cancel_branches(ctx, now, [("Reason", reason)] if reason else ())
        self._advance(ctx, now)

    # -- stateless answers and forwarding ---------------------------------------
    def _challenge(self, req: Request, source: Dest, wall: float) -> bool:
        """Answer ``407`` without a transaction to a request of one of our users that
        carries no credentials, as most proxies do: a retransmission simply gets a
        fresh challenge, and the ACK of the 407 is dropped. False if not such a request."""
        s = self.settings
        from_uri = req.from_.uri
        if not from_uri.user or not s.names_domain(from_uri) or s.is_us(req.ruri):
            return False
        if s.emergency and s.is_emergency(req.ruri):
            return False
        if req.get(TOKEN_HEADER) is not None:
            return False  # a transferee's INVITE: _route checks its token instead
        if s.peer_hops and req.get("route") is not None and s.relayed_flow(req, wall):
            return False  # a peer's relay to a flow we hold: it checked the caller
        if self._peer(source) is not None:
            return False
        try:
            check_request(req, s)
        except SipError:
            return False
        self.stats["challenged"] += 1
        headers = [
            ("Proxy-Authenticate", c) for c in cast(Authenticator, self.auth).challenge(wall)
        ]
        self.layer.send(
            make_response(
                req, 407, "Proxy Authentication Required", headers, to_tag=self._new_tag()
            ),
            source,
        )
        return True

    def _forward_stateless(self, req: Request, source: Dest) -> bool:
        """Forward an in-dialog request routed through us without a transaction (§16.11).

        Taken when our Route is its only one and the Request-URI names an
        address (no DNS); returns False, changing nothing, otherwise.
        """
        if len(req.raw_values("route")) != 1 or req.get("proxy-require") is not None:
            return False
        try:
            dests = self._locate(req.ruri, None, lookup=False)
            mf = req.max_forwards
        except SipError:
            return False
        if not dests or (mf is not None and mf <= 0):
            return False
        branch = stateless_branch(req)
        screen_identity(req, self._peer(source) is not None, None)
        req.pop_first_value("route")
        out = branch_request(req, BranchTarget(req.uri), None, self.settings.domain)
        self._send_stateless_to(out, branch, dests[0])
        self.stats["stateless"] += 1
        if req.method == "BYE":
            self._call_event(BYE, req, source)
        return True

    def _forward_ack(self, ack: Request) -> None:
        """Forward an ACK for a 2xx statelessly along its Route set (§16.11); drop the
        ACK of a response of ours (its To tag is one we made)."""
        s = self.settings
        try:
            if (ack.to.tag or "").startswith(self._tag) or (
                ack.get("route") is None and s.is_local(ack.ruri)
            ):
                return
            branch = stateless_branch(ack)
            if not preprocess_route(ack, s):
                log.debug("ACK for %s dropped: not in a dialog we Record-Routed", ack.uri)
                return
            mf = ack.max_forwards
            if (mf is not None and mf <= 0) or (ack.get("route") is None and s.is_local(ack.ruri)):
                log.debug("ACK for %s dropped", ack.uri)
                return
            out = branch_request(ack, BranchTarget(ack.uri), None, self.settings.domain)
            hop = route_next_hop(out, ack.ruri)
        except SipError as err:
            log.info("ACK for %s dropped: %s", ack.uri, err.reason)
            return
        self.stats["stateless"] += 1
        dests = self._locate(hop, (out, branch))
        if dests:
            self._send_stateless_to(out, branch, dests[0])

    def _send_stateless_to(self, req: Request, branch: str, dest: Dest) -> None:
        self.settings.set_via(req, dest[0], branch)
        self.layer.send(req, dest)

    def _new_tag(self) -> str:
        self._seq += 1
        return f"{self._tag}{self._seq:x}"
