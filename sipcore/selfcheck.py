"""A node's self-check, sans-IO: the requests it sends itself and what a healthy answer is.

A node that took a new configuration asks itself, over its own SIP port, the
three things it is there for (``actors.selfcheck`` sends them): it answers
``OPTIONS`` for its domain (``200``); it takes a ``REGISTER`` for its domain
(a query without a Contact, without credentials: a registrar that serves the
domain challenges it, ``401``); and it routes a call (an ``INVITE`` from a
stranger to a user of the domain nobody registered: the proxy looks the user
up and answers ``480``, or ``404``). The user names are made per check, so
no real user or number is ever called, and no gateway is ever tried.
"""

from dataclasses import dataclass

CHECK_USER = "tandem-selfcheck"
"""User part of the self-check's REGISTER (never a user: names hold no such prefix)."""


@dataclass(frozen=True, slots=True)
class Probe:
    """One request of the self-check and the statuses that mean healthy."""

    method: str
    data: bytes
    call_id: str
    healthy: frozenset[int]


def _request(
    method: str,
    ruri: str,
    from_uri: str,
    to_uri: str,
    via: str,
    call_id: str,
    branch: str,
    tag: str,
) -> bytes:
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <{from_uri}>;tag={tag}\r\n"
        f"To: <{to_uri}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def probes(domain: str, via_host: str, via_port: int, token: str) -> list[Probe]:
    """The self-check's requests, sent from ``via_host:via_port`` (UDP); ``token`` (hex,
    fresh per check) makes Call-IDs, branches, tags and the called user unique."""
    host = f"[{via_host}]" if ":" in via_host else via_host
    via = f"{host}:{via_port}"
    me = f"sip:{CHECK_USER}@{domain}"
    stranger = f"sip:{CHECK_USER}@selfcheck.invalid"
    nobody = f"sip:{CHECK_USER}-{token}@{domain}"
    out = []
    for i, (method, ruri, src, dst, healthy) in enumerate(
        (
            ("OPTIONS", f"sip:{domain}", me, f"sip:{domain}", {200}),
            ("REGISTER", f"sip:{domain}", me, me, {401}),
            ("INVITE", nobody, stranger, nobody, {404, 480}),
        )
    ):
        call_id = f"selfcheck-{i}-{token}@{host}"
        out.append(
            Probe(
                method,
                _request(method, ruri, src, dst, via, call_id, f"z9hG4bK{token}{i}", f"{token}{i}"),
                call_id,
                frozenset(healthy),
            )
        )
    return out


def ack_for(probe: Probe, to_value: str) -> bytes:
    """The ACK of an ``INVITE`` probe's final answer (same branch, the answer's To)."""
    lines = probe.data.decode().split("\r\n")
    head = {line.split(":", 1)[0]: line for line in lines[1:] if ":" in line}
    ruri = lines[0].split(" ")[1]
    return (
        f"ACK {ruri} SIP/2.0\r\n{head['Via']}\r\nMax-Forwards: 70\r\n{head['From']}\r\n"
        f"To: {to_value}\r\n{head['Call-ID']}\r\nCSeq: 1 ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def verdict(probe: Probe, status: int | None) -> str | None:
    """None when ``status`` is a healthy answer to ``probe``, else why not."""
    if status is None:
        return f"{probe.method} to itself got no answer"
    if status not in probe.healthy:
        want = " or ".join(str(s) for s in sorted(probe.healthy))
        return f"{probe.method} to itself answered {status}, expected {want}"
    return None
