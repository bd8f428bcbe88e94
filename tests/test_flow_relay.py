"""A TCP or TLS flow another node holds (sipcore.flow_relay): two proxy cores of one
cluster, the request relayed through the node that holds the connection, and forged or
stale relay Routes handled as any other request."""

import pytest

from sipcore.cluster_addresses import ClusterAddresses
from sipcore.digest import Authenticator, ha1
from sipcore.flow_relay import MAC_PARAM
from sipcore.forking import ProxyCore
from sipcore.location import Binding, Location
from sipcore.message import Response, parse_message
from sipcore.proxy import ProxySettings
from sipcore.via import stamp_via

DOMAIN = "example.test"
NODE1, NODE2 = ("127.0.0.11", 5060), ("127.0.0.12", 5060)
WALL = 1_000_000.0
FLOW = ("tcp", "127.0.0.1", 44433)
CONTACT = "sip:bob@127.0.0.1:44433;transport=TCP;ob"
CALLER = ("udp", "10.0.0.1", 5061)


def settings(me, node_id, peer, peer_id) -> ProxySettings:
    cluster = ClusterAddresses([DOMAIN], [NODE1, NODE2])
    return ProxySettings(
        DOMAIN,
        *me,
        secret=b"s" * 32,
        cluster=cluster,
        node_id=node_id,
        peer_hops=((peer_id, f"{peer[0]}:{peer[1]}"),),
    )


def lookup(user):
    return {"MD5": ha1(user, DOMAIN, "pw", "MD5")} if user in ("alice", "bob") else None


@pytest.fixture
def cores():
    """node1 and node2, the same binding of bob in both, made on node2 over its TCP
    connection (an RFC 5626 flow, its Contact the connection's port)."""
    made = []
    for me, node_id, peer, peer_id in (
        (NODE1, "node1", NODE2, "node2"),
        (NODE2, "node2", NODE1, "node1"),
    ):
        location = Location()
        location.put(
            Binding(
                f"sip:bob@{DOMAIN}",
                "<urn:uuid:1>;reg-id=1",
                CONTACT,
                WALL + 600,
                "reg",
                1,
                received="tcp:127.0.0.1:44433",
                instance="<urn:uuid:1>",
                reg_id=1,
                origin="node2",
            )
        )
        auth = Authenticator(DOMAIN, b"k" * 32, lookup, algorithms=("MD5",))
        made.append(ProxyCore(settings(me, node_id, peer, peer_id), location, auth, trying_delay=0))
    return made


def message(source, uri=f"sip:bob@{DOMAIN}", frm="sip:carol@other.test", extra=()):
    lines = [
        f"MESSAGE {uri} SIP/2.0",
        f"Via: SIP/2.0/{source[0].upper()} {source[1]}:{source[2]};branch=z9hG4bKm1",
        "Max-Forwards: 70",
        f"From: <{frm}>;tag=f",
        f"To: <sip:bob@{DOMAIN}>",
        "Call-ID: m1",
        "CSeq: 1 MESSAGE",
        *extra,
        "Content-Length: 2",
        "",
        "hi",
    ]
    req = parse_message("\r\n".join(lines).encode())
    req.validate()
    stamp_via(req, *source)
    return req


def sent(core):
    return [(parse_message(d), dest) for d, dest in core.messages_to_send()]


def relayed(core1):
    """What node1 sends for bob: one request, to node2 over TCP."""
    core1.receive(message(CALLER), CALLER, 0.0, WALL)
    out = [(m, d) for m, d in sent(core1) if not isinstance(m, Response)]
    assert len(out) == 1, out
    req, dest = out[0]
    assert dest == ("tcp", *NODE2), dest
    assert req.uri == CONTACT
    return req


def at_node2(core2, req):
    """Feed node2 the request node1 relayed (as it arrives from node1 over TCP)."""
    data = req.encode()
    again = parse_message(data)
    again.validate()
    stamp_via(again, "tcp", NODE1[0], 40000)
    core2.receive(again, ("tcp", NODE1[0], 40000), 0.0, WALL)
    return sent(core2)


def test_a_flow_another_node_holds_is_reached_through_that_node(cores):
    core1, core2 = cores
    req = relayed(core1)
    out = at_node2(core2, req)
    forwarded = [(m, d) for m, d in out if not isinstance(m, Response)]
    assert [d for _, d in forwarded] == [FLOW], out
    msg = forwarded[0][0]
    assert msg.uri == CONTACT and msg.get("route") is None
    assert not [m for m, _ in out if isinstance(m, Response) and m.status >= 400]


@pytest.mark.parametrize("change", ["mac", "flow", "ruri", "expired"])
def test_a_forged_or_stale_relay_route_is_no_relay(cores, change):
    """Hostile: a relay Route with another MAC, flow or Request-URI, or past its binding's
    expiry, is handled as any request: a caller of the domain is challenged (407), one
    from elsewhere is refused as a relay (403); nothing reaches the flow."""
    core1, core2 = cores
    req = relayed(core1)
    route = req.get("route")
    if change == "mac":
        mac = route.split(f"{MAC_PARAM}=")[1].rstrip(">")
        req.set("Route", route.replace(mac, "0" * len(mac)))
    elif change == "flow":
        req.set("Route", route.replace("44433", "44434"))
    elif change == "ruri":
        req.uri = "sip:bob@127.0.0.1:44433;transport=TCP"
    wall = WALL + 601 if change == "expired" else WALL  # the binding ends at WALL + 600
    data = req.encode()
    again = parse_message(data)
    again.validate()
    stamp_via(again, "tcp", NODE1[0], 40000)
    core2.receive(again, ("tcp", NODE1[0], 40000), 0.0, wall)
    out = sent(core2)
    assert not [d for m, d in out if not isinstance(m, Response)], out
    finals = [m.status for m, _ in out if isinstance(m, Response) and m.status >= 200]
    assert finals == [403], out


def test_a_relay_for_a_caller_of_the_domain_is_not_challenged_again(cores):
    """node1 challenged alice's request; node2 sends it on over its flow without a 407."""
    core1, core2 = cores
    route = core1.settings.relay_route(core1.location.lookup(f"sip:bob@{DOMAIN}", WALL)[0], FLOW)
    req = message(
        ("tcp", *NODE1), uri=CONTACT, frm=f"sip:alice@{DOMAIN}", extra=(f"Route: {route}",)
    )
    out = at_node2(core2, req)
    assert [d for m, d in out if not isinstance(m, Response)] == [FLOW], out
