"""Calls to numbers: the dial plan applied to a request, gateway health, caller identity.

``sipcore.forking.ProxyCore`` asks its ``Dialing`` (when the node has a
dial plan) two questions:

- ``takes(user)``: is this Request-URI user of our domain a number to dial
  out (a number, not a user of the domain)? Then ``route`` gives the
  branch groups -- one gateway per group, tried in order, gateways marked
  down skipped -- and the ``P-Asserted-Identity`` to send, or raises the
  ``SipError`` to answer: ``404`` when no rule takes the number, ``403``
  when the caller lacks the rule's permission, ``503`` when every gateway
  of the route is down or at its call limit (``sipcore.call_limits``).
- ``emergency(user)``: the branch groups and identity of an emergency
  call, to the emergency gateways only (those up first, then those marked
  down: an emergency call is never refused for a probe's opinion), or None
  when the plan has no emergency gateway.

A gateway call moves on to the route's next gateway only on an answer
that means "try elsewhere" (``TRY_ELSEWHERE``): 408 (also what a Timer B
or F timeout of the branch gives), 500, 502, 503 (also a transport error)
and 504, or once Timer C cancelled the gateway's ringing branch. Any other
final answer (486 Busy, 404, 6xx...) is the callee's and ends the call. An
emergency call tries every emergency gateway until one answers 2xx (a 6xx
still ends it).

``down`` is the set of gateway names the node's prober (``actors.gateways``)
found silent; it only reads and writes names, so a new plan keeps it.
"""

from collections.abc import Callable

from .call_limits import CallCounts
from .dialplan import DialPlan, Gateway, Match, is_number
from .errors import SipError
from .message import Request
from .proxy import BranchTarget
from .uri import SipUri, parse_name_addr

TRY_ELSEWHERE = frozenset({408, 500, 502, 503, 504})
"""Final statuses of a gateway after which the route's next gateway is tried."""


class Dialing:
    """The dial plan of a node, its gateways' health and who its users are."""

    def __init__(self, plan: DialPlan, is_user: Callable[[str], bool], domain: str):
        self.plan = plan
        self.is_user = is_user
        self.domain = domain
        self.down: set[str] = set()
        """Names of gateways that missed their probes."""
        self.stats = {"routed": 0, "no_route": 0, "forbidden": 0, "emergency": 0}
        self.calls = CallCounts()
        """The node's calls in progress, per user and gateway (``sipcore.call_limits``)."""

    def alias(self, user: str) -> str | None:
        """The user whose extension or DID the Request-URI user ``user`` is, or None (also
        when a user of that name exists: a user's own name comes first)."""
        owner = self.plan.owner(user)
        return None if owner is None or self.is_user(user) else owner

    def takes(self, user: str) -> bool:
        """Whether a call to ``user`` of our domain goes through the dial plan."""
        return bool(self.plan.rules) and is_number(user) and not self.is_user(user)

    def names_gateway(self, req: Request) -> bool:
        """Whether ``req``'s Request-URI or a Route of it names a gateway's host: such a
        request would reach the telephone network past the dial plan's permissions."""
        if not self.plan.gateways:
            return False
        if self.is_gateway(req.ruri):
            return True
        for value in req.get_all("route"):
            try:
                if self.is_gateway(parse_name_addr(value).uri):
                    return True
            except SipError:
                return True
        return False

    def is_gateway(self, uri: SipUri) -> bool:
        """Whether ``uri`` names one of the plan's gateways (its host, and its port if set)."""
        host, port = uri.host_bare, uri.port or 5060
        return any(
            g.host.strip("[]").lower() == host and g.port in (None, port)
            for g in self.plan.gateways.values()
        )

    def identity(self, number: str) -> str:
        """The ``P-Asserted-Identity`` value presenting ``number`` (or a user name)."""
        return f"<sip:{number}@{self.domain}{';user=phone' if is_number(number) else ''}>"

    def asserted(self, user: str) -> str:
        """The ``P-Asserted-Identity`` of ``user``'s calls, from the account: the caller ID
        (one of the user's numbers), else the user's DID, else the user name."""
        return self.identity(self.plan.policy(user).presented or user)

    def route(
        self, number: str, caller: str, busy: frozenset[str] = frozenset()
    ) -> tuple[list[list[BranchTarget]], str, str]:
        """The branch groups and identity of ``caller``'s call to ``number``, and the name
        of the gateway tried first; the gateways named in ``busy`` (at their call limit)
        are skipped, ``503`` when that leaves none."""
        found = self.permit(number, caller)
        up = self._up(found, busy)
        if not up:
            if busy and self._up(found):
                raise SipError(503, "Gateways Busy (Call Limit Reached)")
            raise SipError(503, "No Gateway Available")
        self.stats["routed"] += 1
        return (
            [[BranchTarget(g.uri(found.number))] for g in up],
            self.asserted(caller),
            up[0].name,
        )

    def _up(self, found: Match, busy: frozenset[str] = frozenset()) -> list[Gateway]:
        return [g for g in found.gateways if g.name not in self.down and g.name not in busy]

    def outside(self, number: str) -> list[list[BranchTarget]]:
        """The branch groups of ``number`` dialled on the plan's own behalf (a ring
        group's fallback): its rule's gateways that are up, no permission asked; none
        when no rule takes it."""
        found = self.plan.match(number)
        if found is None:
            return []
        return [[BranchTarget(g.uri(found.number))] for g in self._up(found)]

    def permit(self, number: str, caller: str) -> Match:
        """The rule match of ``caller``'s call to ``number``, or the ``SipError`` it gets:
        ``404`` when no rule takes the number, ``403`` without the rule's permission."""
        found = self.plan.match(number)
        if found is None:
            self.stats["no_route"] += 1
            raise SipError(404, "No Route For Number")
        permission = found.rule.permission
        if permission and permission not in self.plan.policy(caller).permissions:
            self.stats["forbidden"] += 1
            raise SipError(403, f"Forbidden: Needs Permission {permission}")
        return found

    def emergency(
        self, number: str, user: str | None, source: str | None = None
    ) -> tuple[list[list[BranchTarget]], str] | None:
        """The branch groups and identity of an emergency call to ``number`` from
        ``user`` (None when unknown) at address ``source``, or None when there is no
        emergency gateway."""
        gateways = self.plan.emergency_gateways
        if not gateways:
            return None
        ordered: list[Gateway] = sorted(gateways, key=lambda g: g.name in self.down)
        self.stats["emergency"] += 1
        callback = self.plan.callback(user, source) or (user or "anonymous")
        return [[BranchTarget(g.uri(number))] for g in ordered], self.identity(callback)


def probe_request(
    gateway: Gateway,
    via_host: str,
    via_port: int,
    transport: str,
    domain: str,
    call_id: str,
    branch: str,
) -> bytes:
    """The OPTIONS that asks ``gateway`` whether it is alive (RFC 3261 §11), sent from
    ``via_host:via_port`` over ``transport``; its answer is matched by ``call_id``."""
    host = f"[{via_host}]" if ":" in via_host else via_host
    target = gateway.uri(None)
    return (
        f"OPTIONS {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {host}:{via_port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:gateway-probe@{domain}>;tag={branch[-10:]}\r\n"
        f"To: <{target}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Accept: application/sdp\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
