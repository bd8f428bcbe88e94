"""The steps of RFC 3261 §16 as pure functions: what a proxy checks, rewrites and chooses.

``sipcore.forking.ProxyCore`` strings them together around the transaction
layer; everything here works on one message at a time and keeps no state:

- ``ProxySettings`` says who the proxy is (domain names, address, port)
  and answers "is this URI ours?".
- ``check_request``: §16.3 validation (Max-Forwards, Proxy-Require, loop
  detection with the branch rule of §16.6 step 8).
- ``preprocess_route``: §16.4, including strict-router interworking.
- ``target_groups``: §16.5/§16.6 target set from the location service,
  parallel within the highest q, sequential groups for lower q.
- ``branch_request``, ``route_next_hop``: §16.6 steps 1–7 for one target.
- ``Context`` and ``Branch``: the state of one response context (§16)
  and of each of its forwarded copies.
- ``best_response``: §16.7 step 6 and 7 (6xx first, lowest class,
  challenges aggregated).
- ``stateless_branch``, ``strip_our_via``: §16.11 forwarding without a
  transaction (ACK for 2xx, requests inside a dialog, their responses).
"""

import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from .cluster_addresses import ClusterAddresses
from .emergency import EmergencyNumbers
from .errors import SipError
from .flow_relay import flow_key, relay_route, relayed_flow
from .headers import Via, parse_int, split_list
from .location import Binding
from .message import Request, Response, make_response
from .nat import NAT_HANDLING, is_outbound, use_flow
from .rfc3263 import Target
from .transaction import MAGIC_COOKIE, ClientTransaction, ServerTransaction
from .uri import SipUri, parse_name_addr, parse_uri
from .via import Dest, response_destination

#: what the proxy lets through (and the Allow of its 405)
ALLOW = (
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, "
    "REFER, INFO, UPDATE, PRACK"
)
#: the fields of the 200 to an OPTIONS for the node itself (RFC 3261 §11.2)
OPTIONS_FIELDS = (("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", "path, outbound"))


def options_response(req: Request, to_tag: str) -> Response:
    """The 200 to an OPTIONS for the node itself: the one answer, whether the
    node gives it statelessly or the proxy's transaction layer does."""
    return make_response(req, 200, headers=OPTIONS_FIELDS, to_tag=to_tag)


#: methods that start a dialog, so the proxy Record-Routes them (§16.6 step 4)
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
#: methods never challenged (§22.1: CANCEL and ACK cannot be resubmitted)
UNCHALLENGED = frozenset({"ACK", "CANCEL"})
#: 4xx responses preferred by §16.7 step 6, as they tell the UAC how to retry
_PREFERRED = (401, 407, 415, 420, 484)
_AUTH_HEADERS = {401: "www-authenticate", 407: "proxy-authenticate"}
_DEFAULT_PORT = {"sip": 5060, "sips": 5061}
#: transports the node speaks (and "tls" when its settings give a ``tls_port``)
TRANSPORTS = ("udp", "tcp")
#: Max-Breadth of a request without one (RFC 5393 §5.1 recommends 60)
DEFAULT_BREADTH = 60
#: the Record-Route URI parameter holding the dialog token
DIALOG_PARAM = "dlg"
#: the branch prefix of requests forwarded statelessly (stateful ones have a hex digit here)
STATELESS_PREFIX = MAGIC_COOKIE + "s"


@dataclass(frozen=True, slots=True)
class Lookup:
    """An RFC 3263 resolution for the owner to make, then answer with ``ProxyCore.resolved``."""

    token: int
    """Pass it back with the answer."""
    host: str
    """The URI host (or maddr)."""
    port: int | None
    """The URI port, None when absent."""
    transport: str | None
    """The URI ``transport`` parameter, None when absent."""
    scheme: str
    """``sip`` or ``sips``."""


def destinations(targets: list[Target], transports: tuple[str, ...] = TRANSPORTS) -> list[Dest]:
    """``(transport, host, port)`` for the RFC 3263 targets over ``transports``."""
    return [(t.transport, t.host, t.port) for t in targets if t.transport in transports]


def sips_request(req: Request) -> bool:
    """Whether ``req`` must go over TLS on every hop (RFC 3261 §26.2): a ``sips``
    Request-URI, or a first Route that is one."""
    return req.ruri.scheme == "sips" or (first_route(req) or "").lstrip("<").startswith("sips:")


@dataclass
class ProxySettings:
    """Who the proxy is.

    ``domain`` and ``aliases`` are the domain names it is responsible for;
    ``address`` and ``port`` where it listens (and what it puts in Via
    and Record-Route). ``supported`` lists the option tags a
    ``Proxy-Require`` may name. ``secret`` keys the dialog tokens of its
    Record-Route (the cluster's shared ``[auth]`` secret, so that any node
    accepts them; random when empty). ``cluster`` knows every node's
    address (this one alone when None). ``emergency`` holds the numbers no
    defence may refuse (``EmergencyNumbers``; a set of numbers is made one);
    ``max_branches`` caps the branches of one request;
    ``nat_handling`` (one of ``sipcore.nat.NAT_HANDLING``) says when a
    binding's flow replaces its Contact; ``tls_port`` is where the node takes
    SIP over TLS (0: it has no TLS). ``node_id`` is the node's id and
    ``peer_hops`` the ``(id, "host:port")`` of each peer's SIP address: a TCP
    or TLS flow of a binding another node made is reached through that node
    (``sipcore.flow_relay``). ``rr_host`` is what the Record-Route names instead of
    the node's own address: a name or address every node answers (the domain,
    resolved by SRV, or a floating address; ``host`` or ``host:port``), so a phone
    sends the requests of its call to whichever node lives (issue 17).
    """

    domain: str
    address: str
    port: int
    aliases: tuple[str, ...] = ()
    supported: frozenset[str] = frozenset()
    secret: bytes = b""
    cluster: ClusterAddresses | None = None
    emergency: EmergencyNumbers = field(default_factory=EmergencyNumbers)
    max_branches: int = 16
    nat_handling: str = "auto"
    tls_port: int = 0
    node_id: str = ""
    peer_hops: tuple[tuple[str, str], ...] = ()
    rr_host: str = ""
    names: frozenset[str] = field(init=False)
    """Lower-case domain names that are ours (``domain`` and ``aliases``)."""
    sent_by: str = field(init=False)
    """``address:port`` as written in our Via."""
    tls_sent_by: str = field(init=False)
    """``address:tls_port``, written in our Via over TLS (``sent_by`` without TLS)."""
    addresses: ClusterAddresses = field(init=False)
    """``cluster``, or this node alone when it was None."""
    transports: tuple[str, ...] = field(init=False)
    """The transports the node forwards over (``TRANSPORTS``, and "tls" with a ``tls_port``)."""

    def __post_init__(self) -> None:
        self.emergency = EmergencyNumbers.of(self.emergency)
        if self.nat_handling not in NAT_HANDLING:
            raise ValueError(
                f"nat_handling must be one of {NAT_HANDLING}, not {self.nat_handling!r}"
            )
        self.domain = self.domain.lower()
        self.names = frozenset([self.domain, *(a.lower() for a in self.aliases)])
        host = f"[{self.address}]" if ":" in self.address else self.address
        self.sent_by = f"{host}:{self.port}"
        self.tls_sent_by = f"{host}:{self.tls_port}" if self.tls_port else self.sent_by
        # Our Record-Route for each transport a leg may use, up to its token.
        # A TLS leg names the TLS port, where the phone's requests of the dialog must go.
        self.transports = TRANSPORTS + (("tls",) if self.tls_port else ())
        self._rr_starts = {
            t: f"<sip:{self._rr_hostport(t)}"
            f"{'' if t == 'udp' else ';transport=' + t};lr;{DIALOG_PARAM}="
            for t in self.transports
        }
        self._dialog_key = hmac.digest(self.secret or os.urandom(32), b"record-route", "sha256")
        self._flow_key = flow_key(self.secret or os.urandom(32))
        self._peer_hops = dict(self.peer_hops)
        nodes = [(self.address, self.port)] + (
            [(self.address, self.tls_port)] if self.tls_port else []
        )
        self.addresses = self.cluster or ClusterAddresses(self.names, nodes)
        self._address = self.address.lower()
        self._via_host = host

    def _rr_hostport(self, transport: str) -> str:
        """What our Record-Route names for a leg over ``transport``."""
        if not self.rr_host:
            return self.sent_by if transport != "tls" else self.tls_sent_by
        host, sep, port = self.rr_host.rpartition(":")
        if not sep or not port.isdigit() or "]" in port:
            return self.rr_host  # a name without a port: SRV finds a node
        return f"{host}:{self.tls_port}" if transport == "tls" else self.rr_host

    # -- dialogs we Record-Routed ------------------------------------------------
    def dialog_token(self, call_id: str, tag: str | None) -> str:
        """The token of our Record-Route for a dialog: a MAC under the cluster's
        secret over its Call-ID and the caller's From tag (96 bits, hex)."""
        msg = f"{call_id}\0{tag or ''}".encode()
        return hmac.digest(self._dialog_key, msg, "sha256")[:12].hex()

    def record_route(self, req: Request, transport: str = "udp") -> str:
        """Our Record-Route value for a request that starts a dialog, for a leg over
        ``transport``: loose routing (§16.6 step 4), the ``transport`` parameter when
        the leg is not UDP, so that the phone on that side keeps sending its requests
        of the dialog over it (§16.6, §19.1.1), and the dialog's token."""
        return f"{self._rr_starts[transport]}{self.dialog_token(req.call_id, req.from_.tag)}>"

    def record_routes(self, req: Request, inbound: str, outbound: str) -> list[str]:
        """The Record-Route values to put on top for ``req``, which came over ``inbound``
        and leaves over ``outbound``: one when the legs share a transport, else two (RFC
        5658 §4: the one facing the callee first, the one facing the caller below it),
        with the dialog's token made once."""
        end = f"{self.dialog_token(req.call_id, req.from_.tag)}>"
        starts = self._rr_starts
        if inbound == outbound:
            return [starts[outbound] + end]
        return [starts[outbound] + end, starts[inbound] + end]

    def is_record_route(self, route: str, req: Request) -> bool:
        """Whether ``route`` is, as we wrote it for any transport, the Record-Route of
        the dialog ``req`` is in (sent by either end: the caller's tag is in From or To)."""
        for start in self._rr_starts.values():
            if route.startswith(start):
                break
        else:
            return False
        call_id = req.call_id
        end = f"{start}{self.dialog_token(call_id, req.from_.tag)}>"
        if hmac.compare_digest(route, end):
            return True
        end = f"{start}{self.dialog_token(call_id, req.to.tag)}>"
        return hmac.compare_digest(route, end)

    def proves_dialog(self, uri: SipUri, req: Request) -> bool:
        """Whether ``uri`` (a Route, or a Request-URI a strict router wrote) carries
        the token of the dialog ``req`` is in, made by any node of the cluster."""
        token = uri.params.get(DIALOG_PARAM)
        if not token:
            return False
        call_id = req.call_id
        return hmac.compare_digest(
            token, self.dialog_token(call_id, req.from_.tag)
        ) or hmac.compare_digest(token, self.dialog_token(call_id, req.to.tag))

    def is_cluster_route(self, uri: SipUri) -> bool:
        """Whether ``uri`` routes to a node of the cluster (ours or a peer's, so a
        dialog survives its node's failover): no user part, a node's address."""
        return uri.user is None and self.addresses.points_here(uri)

    # -- flows other nodes hold (sipcore.flow_relay) --------------------------------------
    def set_peer_hops(self, hops: Iterable[tuple[str, str]]) -> None:
        """New ``peer_hops`` (the master pushed a new peer list): a node that joined
        later is reached through, and a removed one no longer."""
        self.peer_hops = tuple(hops)
        self._peer_hops = dict(self.peer_hops)

    def relay_route(self, binding: Binding, dest: Dest) -> str | None:
        """The Route to the node holding ``binding``'s TCP or TLS flow ``dest``, or
        None when this node made the binding (or its origin is no known peer)."""
        origin = binding.origin
        hop = self._peer_hops.get(origin) if origin and origin != self.node_id else None
        if hop is None or not binding.received:
            return None
        if dest[0] == "tls":
            if not self.tls_port:
                return None
            hop = f"{hop.rpartition(':')[0]}:{self.tls_port}"
        return relay_route(
            self._flow_key, hop, dest[0], binding.received, binding.expires_at, binding.contact
        )

    def relayed_flow(self, req: Request, wall: float) -> Dest | None:
        """The flow a peer asks this node to send ``req`` over: the destination its
        first Route (naming a node of the cluster) carries with a valid MAC, else None."""
        first = first_route(req)
        if first is None:
            return None
        try:
            uri = _route_uri(first)
        except SipError:
            return None
        if not self.is_cluster_route(uri):
            return None
        return relayed_flow(self._flow_key, uri.params, req.uri, wall, parse_received)

    # -- callers and targets ---------------------------------------------------------
    def names_domain(self, uri: SipUri) -> bool:
        """Whether ``uri`` (a From) names our domain in any spelling: case, trailing
        dot, alias, a node's address with any port."""
        return self.addresses.names_domain(uri)

    def is_emergency(self, uri: SipUri) -> bool:
        """Whether ``uri`` dials one of the emergency numbers (``sipcore.emergency``)."""
        return self.emergency.of_uri(uri) is not None

    def is_local(self, uri: SipUri) -> bool:
        """Whether ``uri`` is in a domain this proxy is responsible for.

        A domain name is ours whatever the port; our IP address only with
        our port or TLS port (a phone on the same host listens on another one).
        """
        if uri.scheme == "tel":
            return False
        host = uri.host_bare
        if host in self.names:
            return True
        port = uri.port or _DEFAULT_PORT.get(uri.scheme, 5060)
        return host == self._address and (port == self.port or port == self.tls_port != 0)

    def is_our_host(self, uri: SipUri) -> bool:
        """Whether ``uri`` names one of our domains or our address, whatever its port."""
        host = uri.host_bare
        return uri.scheme != "tel" and (host in self.names or host == self._address)

    def is_us(self, uri: SipUri) -> bool:
        """Whether ``uri`` names the proxy itself (a local URI without a user part)."""
        return uri.user is None and self.is_local(uri)

    def aor(self, uri: SipUri) -> str:
        """The address of record a local Request-URI stands for."""
        return f"sip:{unquote(uri.user or '')}@{self.domain}"

    def set_via(self, req: Request, transport: str, branch: str) -> None:
        """Fill the placeholder Via that ``branch_request`` put on top of ``req``.

        The parsed view is stored with it, so nobody parses back what we wrote.
        """
        t = transport.upper()
        if t == "TLS":
            req.set_top_via(
                f"SIP/2.0/TLS {self.tls_sent_by};branch={branch}",
                Via(t, self._via_host, self.tls_port, {"branch": branch}),
            )
            return
        req.set_top_via(
            f"SIP/2.0/{t} {self.sent_by};branch={branch}",
            Via(t, self._via_host, self.port, {"branch": branch}),
        )

    def is_our_sent_by(self, sent_by: str) -> bool:
        """Whether ``sent_by`` (``host:port``, lower case) is one of our Vias'."""
        return sent_by == self.sent_by or sent_by == self.tls_sent_by


class Context:
    """The response context of one forwarded request (§16)."""

    __slots__ = (
        "server",
        "request",
        "ruri",
        "invite",
        "prefix",
        "record_route",
        "groups",
        "breadth",
        "branches",
        "finals",
        "live",
        "final_sent",
        "stopped",
        "cancelled",
        "failover",
        "ring",
    )

    def __init__(
        self,
        server: ServerTransaction,
        request: Request,
        prefix: str,
        record_route: str | None,
        groups: "list[list[BranchTarget]]",
        breadth: int = DEFAULT_BREADTH,
    ):
        self.server = server
        self.request = request
        self.ruri = request.ruri
        self.invite = request.method == "INVITE"
        self.prefix = prefix
        self.record_route = record_route
        self.groups = groups
        self.breadth = breadth
        self.branches: list[Branch] = []
        self.finals: list[Response] = []
        self.live = 0
        self.final_sent = False
        self.stopped = False
        self.cancelled = False
        self.failover: frozenset[int] | None = None
        """Final statuses after which the next group is tried (None: any; a gateway
        route sets ``sipcore.dialing.TRY_ELSEWHERE``)."""
        self.ring: list[float | None] | None = None
        """A ring group's call: the ring timeout of each group left (``sipcore.ring_groups``)."""


class Branch:
    """One forwarded copy of a request: its target, destinations left and client transaction."""

    __slots__ = ("ctx", "request", "dests", "tx", "done", "tries")

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.request: Request | None = None
        self.dests: list[Dest] = []
        self.tx: ClientTransaction | None = None
        self.done = False
        self.tries = 0


#: headers that decide how a request is routed, hashed into the loop-detection value
_LOOP_KEYS = frozenset({"from", "to", "call-id", "route", "proxy-require"})
_MASK = 0xFFFFFFFFFFFFFFFF


def _scan(
    req: Request, sent_by: str, tls_sent_by: str = "\0"
) -> tuple[str, str | None, bool, bool]:
    """One pass over the headers: (loop hash, Max-Forwards text, has Proxy-Require,
    has a Via naming ``sent_by`` or ``tls_sent_by``)."""
    parts = [req.uri, req.cseq[0]]
    mf = None
    proxy_require = ours = False
    for k, _, v in req.headers:
        if k in _LOOP_KEYS:
            parts.append(v)
            if k == "proxy-require":
                proxy_require = True
        elif k == "via":
            if sent_by in v or tls_sent_by in v:
                ours = True
        elif k == "max-forwards":
            mf = v
    return "%016x" % (hash(tuple(parts)) & _MASK), mf, proxy_require, ours


def loop_hash(req: Request) -> str:
    """The loop-detection part of our branch (§16.6 step 8, §16.3 step 4).

    It covers what decides how the request is processed -- the incoming
    Request-URI, From and To (with their tags), Call-ID, CSeq number,
    Route and Proxy-Require -- and not the method, so a CANCEL gets the
    same value as its INVITE. Computed on the request as received. It is
    Python's string hash, salted per process: only this process ever
    compares it with its own Vias.
    """
    return _scan(req, "\0")[0]


def branch_prefix(loop: str) -> str:
    """The start of every branch this proxy makes for a request with ``loop`` hash."""
    return f"{MAGIC_COOKIE}{loop}."


def check_request(req: Request, settings: ProxySettings) -> str:
    """§16.3 steps 3–5; raise ``SipError`` with the response to send, else return
    the request's ``loop_hash``.

    Max-Forwards 0 gives ``483``; an unsupported ``Proxy-Require`` option
    ``420`` with ``Unsupported``; a Via of ours whose branch carries this
    request's loop hash means the request came back unchanged: ``482``. A
    Via of ours with another hash is a spiral and is fine.
    """
    loop, mf, proxy_require, ours = _scan(req, settings.sent_by, settings.tls_sent_by)
    if mf is not None and parse_int(mf, "Max-Forwards", 255) <= 0:
        raise SipError(483, "Too Many Hops")
    if proxy_require:
        supported = settings.supported
        unsupported = [t for t in req.get_all("proxy-require") if t.lower() not in supported]
        if unsupported:
            raise SipError(420, "Bad Extension", [("Unsupported", ", ".join(unsupported))])
    if ours:
        prefix = branch_prefix(loop)
        for via in req.vias:
            port = via.port or 5060
            if settings.is_our_sent_by(f"{via.host.lower()}:{port}") and (
                via.branch or ""
            ).startswith(prefix):
                raise SipError(482, "Loop Detected")
    return loop


def first_route(req: Request) -> str | None:
    """The first Route value, or None."""
    value = req.get("route")
    if value is None:
        return None
    return split_list(value)[0] if "," in value else value


def _route_uri(value: str) -> SipUri:
    try:
        return parse_name_addr(value).uri
    except SipError:
        raise SipError(400, "Bad Route header") from None


def preprocess_route(req: Request, settings: ProxySettings) -> bool:
    """§16.4: undo a strict router's rewrite and remove our own Route.

    If the Request-URI is a Record-Route URI of the cluster (a strict
    router put it there) the last Route value becomes the Request-URI.
    Then a first Route naming a node of the cluster is removed (with the
    next ones naming one too: the double Record-Route of RFC 5658). Returns
    True only when the URI so removed carries the token of the dialog the
    request is in: the request then came by a Route the cluster wrote.
    Any other request, with a To tag or not, is out of the dialogs we
    know and gets no trust from its Route.
    """
    first = req.get("route")
    if first is None:
        return False
    if settings.is_record_route(first, req):
        req.pop_first_value("route")
        second = req.get("route")
        if second is not None and settings.is_record_route(second, req):
            req.pop_first_value("route")  # the other half of a double Record-Route
        return True
    proven = False
    ruri = req.ruri
    if settings.is_cluster_route(ruri):
        proven = settings.proves_dialog(ruri, req)
        values = req.get_all("route")
        last = values[-1]
        req.remove("route")
        for v in values[:-1]:
            req.add("Route", v)
        req.uri = str(_route_uri(last))
    first = first_route(req)
    while first is not None:
        uri = _route_uri(first)
        if not settings.is_cluster_route(uri):
            break
        req.pop_first_value("route")
        proven = settings.proves_dialog(uri, req) or proven
        first = first_route(req)
    return proven


@dataclass(slots=True)
class BranchTarget:
    """One place a request is forked to."""

    uri: str
    """The Request-URI of the branch."""
    routes: tuple[str, ...] = ()
    """Route values to put first (a binding's Path, RFC 3327)."""
    dest: Dest | None = None
    """A known destination ``(transport, host, port)`` (the flow a phone registered
    from), or None to locate the next hop by RFC 3263."""


def parse_received(received: str | None) -> Dest | None:
    """``"udp:1.2.3.4:5060"`` (a binding's ``received``) as a destination tuple."""
    if not received:
        return None
    transport, _, rest = received.partition(":")
    host, _, port = rest.rpartition(":")
    if transport not in ("udp", "tcp", "tls") or not host or not port.isdigit():
        return None
    return (transport, host.strip("[]"), int(port))


Relay = Callable[[Binding, Dest], str | None]
"""What gives the Route to the node holding a binding's flow (``ProxySettings.relay_route``)."""


def binding_target(
    binding: Binding, nat_handling: str = "auto", relay: Relay | None = None
) -> BranchTarget:
    """The branch target for a location binding (RFC 3261 §16.5).

    With a Path the request follows it; else it goes to the Contact by RFC
    3263, or back over the flow the REGISTER came from when it is an RFC 5626
    outbound registration or NAT handling says so (``sipcore.nat``), the
    Contact's transport matching the flow's. A TCP or TLS flow goes through
    the Route ``relay(binding, flow)`` gives when it gives one (the node that
    holds the connection, ``ProxySettings.relay_route``).
    """
    contact = binding.contact
    if binding.path:
        return BranchTarget(contact, tuple(binding.path))
    dest = parse_received(binding.received)
    if dest is not None:
        try:
            uri = parse_uri(contact)
        except SipError:
            uri = None
        # A sips Contact is reached over TLS only, so over a TLS flow or by its URI.
        if (
            uri is None
            or uri.scheme not in ("sip", "sips")
            or ("tls" if uri.scheme == "sips" else uri.transport or "udp") != dest[0]
            or not use_flow(
                nat_handling,
                dest[0],
                uri.params.get("maddr") or uri.host_bare,
                dest[1],
                is_outbound(binding.instance, binding.reg_id),
            )
        ):
            dest = None
    if dest is not None and dest[0] != "udp" and relay is not None:
        route = relay(binding, dest)
        if route is not None:
            return BranchTarget(contact, (route,))
    return BranchTarget(contact, (), dest)


def target_groups(
    bindings: list[Binding],
    max_branches: int = 16,
    breadth: int = DEFAULT_BREADTH,
    nat_handling: str = "auto",
    relay: Relay | None = None,
) -> list[list[BranchTarget]]:
    """§16.6: bindings (highest q first) as groups tried one after the other.

    Bindings of equal q are forked in parallel; a lower q is tried only
    once every branch of the higher one failed. A missing q counts as 1.
    At most ``max_branches`` bindings are taken in all, and at most
    ``breadth`` (the request's Max-Breadth, RFC 5393 §5.1) in one group,
    which bounds what one request can make however many bindings it meets.
    ``nat_handling`` is ``[sip] nat_handling`` and ``relay`` what reaches a flow
    another node holds (see ``binding_target``).
    """
    groups: list[list[BranchTarget]] = []
    last_q = None
    for b in bindings[:max_branches]:
        q = 1.0 if b.q is None else b.q
        if q != last_q:
            groups.append([])
            last_q = q
        if len(groups[-1]) < breadth:
            groups[-1].append(binding_target(b, nat_handling, relay))
    return groups


def max_breadth(req: Request) -> int:
    """The request's Max-Breadth (RFC 5393), 60 when absent; ``440`` when it is 0."""
    value = req.get("max-breadth")
    if value is None:
        return DEFAULT_BREADTH
    breadth = parse_int(value, "Max-Breadth", 2**31)
    if breadth == 0:
        raise SipError(440, "Max-Breadth Exceeded")
    return breadth


def branch_request(
    req: Request,
    target: BranchTarget,
    record_route: str | None,
    realm: str | None,
    breadth: int | None = None,
) -> Request:
    """§16.6 steps 1–5 for one target: a copy of ``req`` to forward.

    The copy gets the target's Request-URI, Max-Forwards decremented (70
    when absent), ``record_route`` on top of any Record-Route, the
    target's Path values as first Routes, ``Max-Breadth: breadth`` when
    given (RFC 5393), and loses the Proxy-Authorization values of
    ``realm`` (the credentials were for us). Its first header is an empty
    Via to be filled by ``set_via``.
    """
    headers: list[list[str]] = [["via", "Via", ""]]
    if record_route is not None:
        headers.append(["record-route", "Record-Route", record_route])
    for r in target.routes:
        headers.append(["route", "Route", r])
    mf = False
    realm_text = f'realm="{realm}"' if realm else None
    for k, n, v in req.headers:
        if k == "max-forwards":
            mf = True
            v = str(max(0, int(v) - 1))
        elif (k == "proxy-authorization" and realm_text is not None and realm_text in v) or (
            k == "max-breadth" and breadth is not None
        ):
            continue
        headers.append([k, n, v])
    if not mf:
        headers.append(["max-forwards", "Max-Forwards", "70"])
    if breadth is not None:
        headers.append(["max-breadth", "Max-Breadth", str(breadth)])
    return Request(req.method, target.uri, headers, req.body)


def route_next_hop(req: Request, ruri: SipUri | None = None) -> SipUri:
    """§16.6 steps 6–7: the URI to locate the next hop from.

    The first Route if any -- when it lacks ``lr`` the next hop is a
    strict router, so the Request-URI moves to the end of the Route set
    and that Route becomes the Request-URI -- else the Request-URI
    (``ruri`` when the caller has it parsed already).
    """
    first = first_route(req)
    if first is None:
        return ruri if ruri is not None else req.ruri
    uri = _route_uri(first)
    if "lr" in uri.params:
        return uri
    req.pop_first_value("route")
    req.add("Route", f"<{req.uri}>")
    req.uri = str(uri)
    return req.ruri


def best_response(finals: list[Response]) -> Response:
    """§16.7 step 6 and 7: the final response to send upstream.

    A 6xx if any; else one of the lowest class, preferring 401, 407, 415,
    420 and 484 among 4xx. A 401/407 carries the challenges of every
    401/407 received (aggregated). The caller turns a 503 into a 500.
    """
    chosen = None
    for r in finals:
        if r.status >= 600:
            chosen = r
            break
    if chosen is None:
        lowest = min(r.status // 100 for r in finals)
        group = [r for r in finals if r.status // 100 == lowest]
        chosen = group[0]
        if lowest == 4:
            for code in _PREFERRED:
                found = next((r for r in group if r.status == code), None)
                if found is not None:
                    chosen = found
                    break
    if chosen.status in _AUTH_HEADERS:
        have = set(chosen.raw_values("www-authenticate") + chosen.raw_values("proxy-authenticate"))
        for r in finals:
            if r is chosen or r.status not in _AUTH_HEADERS:
                continue
            key = _AUTH_HEADERS[r.status]
            name = "WWW-Authenticate" if key == "www-authenticate" else "Proxy-Authenticate"
            for v in r.raw_values(key):
                if v not in have:
                    have.add(v)
                    chosen.add(name, v)
    return chosen


def trying_response(req: Request) -> Response:
    """The ``100 Trying`` a proxy sends for an INVITE it will forward (§16.2)."""
    return make_response(req, 100)


def strip_our_via(resp: Response, settings: ProxySettings) -> Dest | None:
    """For a response relayed without a transaction (§16.11, §18.2.2): when its top
    Via is ours and another follows, remove ours and return where the response goes;
    else None (it is dropped)."""
    try:
        top = resp.top_via
    except SipError:
        return None
    if not settings.is_our_sent_by(f"{top.host.lower()}:{top.port or 5060}"):
        return None
    resp.pop_first_value("via")
    if resp.get("via") is None:
        return None
    return response_destination(resp)


_STATELESS_KEYS = frozenset({"via", "call-id", "cseq", "route"})


def stateless_branch(req: Request) -> str:
    """A branch for a request forwarded statelessly (§16.11): the same for retransmissions
    (of this process; the hash is salted per process)."""
    key = [req.uri]
    key.extend(v for k, _, v in req.headers if k in _STATELESS_KEYS)
    return "%s%016x" % (STATELESS_PREFIX, hash(tuple(key)) & _MASK)
