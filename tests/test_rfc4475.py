"""Every message of RFC 4475 (SIP torture tests), with what Tandem does with it.

A node is a proxy and registrar: it must take each valid message, answer
each invalid request with the response its section calls for (400 with a
reason, 416, 420, 483, 505...), drop each invalid response, and never
break. ``OUTCOMES`` holds, for each section of the RFC, the outcome the
RFC asks of a proxy or registrar and Tandem gives; where the RFC leaves a
choice (be liberal or refuse), the comment says which Tandem makes.

The parser (``sipcore.message``) is checked on all 49 messages, each with
what a proxy or registrar then reads of it; a real node process is sent a
sample over UDP and must answer each as the table says, gets the three
messages whose sections speak of TCP over TCP, and must still answer
OPTIONS after the lot. Two hostile Vias the fuzzing led to are tried on it
too: overlarge values in a relayed response's Via (which killed a node),
and a ``received`` that would have it answer someone else.
"""

import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from loadtest.harness import NodeProcess
from sipcore.errors import SipError
from sipcore.message import (
    Request,
    Response,
    StreamFramer,
    error_response,
    make_response,
    parse_message,
)
from sipcore.proxy import ProxySettings, check_request
from sipcore.transaction import server_key
from tests.rfc4475_messages import MESSAGES

DOMAIN = "example.com"  # the RFC's domain, made the node's own


@dataclass(frozen=True)
class Outcome:
    """What Tandem does with one message of RFC 4475."""

    status: int | None
    """The response a request gets from the parser or validation (None: none)."""
    words: str = ""
    """Words the response's reason holds."""
    kind: str = "request"
    """``request`` or ``response``: what the message parses as when it is taken;
    ``drop``: a response the node drops without a word."""
    check: Callable[[Request | Response], None] | None = None
    """Further checks of a taken message: what a proxy or registrar reads of it."""


def raises(status: int, words: str, read: Callable[[], object]) -> None:
    """Check that ``read()`` raises ``SipError`` ``status`` with ``words`` in its reason."""
    with pytest.raises(SipError) as exc:
        read()
    assert (exc.value.status, words in exc.value.reason) == (status, True), exc.value


def wsinv(m):
    assert m.method == "INVITE" and m.ruri.params == {"unknownparam": None}
    assert m.to.tag == "1918181833n" and m.from_.tag == "98asjd8"
    assert m.from_.name == 'J Rosenberg \\"'
    assert (m.max_forwards, m.cseq, m.call_id) == (68, (9, "INVITE"), "wsinv.ndaksdj@192.0.2.1")
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert (
        m.get("subject") == ""
        and m.get("NewFangledHeader") == "newfangled value continued newfangled value"
    )
    assert m.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    [contact] = m.contacts
    assert contact.name == 'Quoted string ""' and contact.q == 0.33
    assert contact.params["newparam"] == "newvalue" and "secondparam" in contact.params
    assert m.get_all("route") == [
        "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"
    ]
    assert len(m.body) == 150


def intmeth(m):
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.method == method and m.cseq == (139122385, method)
    assert m.ruri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.ruri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert m.to.name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    # A proxy forwards what it does not understand byte for byte.
    assert parse_message(m.encode()).encode() == m.encode()


def esc01(m):
    assert m.ruri.user == "sips%3Auser%40example.com" and m.ruri.host == "example.net"
    assert m.to.uri.aor() == "sip:user@example.com"
    assert m.from_.uri.aor() == "sip:I have spaces@example.net"
    [contact] = m.contacts
    assert contact.uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}


def escnull(m):
    assert m.to.uri.user == "null-%00-null"
    # Two distinct contacts, neither cut short at its NUL; their binding keys keep
    # the NULs escaped, for a store that refuses them (PostgreSQL does).
    keys = {c.uri.canonical() for c in m.contacts}
    assert keys == {"sip:%00@host5.example.com", "sip:%00%00@host5.example.com"}


def esc02(m):
    assert m.method == "RE%47IST%45R" and m.method != "REGISTER"
    assert m.to.name == "%Z%45" and m.from_.name == "%Z%45"
    # C%6Fntact is a header of its own: two Contacts, not three.
    assert [c.uri.user for c in m.contacts] == ["alias1", "alias3"]
    assert m.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert m.top_via.branch == "z9hG4bK209%fzsnel234"


def lwsdisp(m):
    assert m.from_.name == "caller" and m.from_.uri.user == "caller"


def longreq(m):
    assert len(m.vias) == 34 and m.vias[0].host == "sip33.example.com"
    assert m.vias[-1].branch == "very" + "long" * 50 + "branchvalue"
    assert m.from_.tag == "12" + "982" * 50 + "424"
    assert m.to.uri.port == 6000 and len(m.to.uri.params) == 3
    assert m.call_id == "longreq.one" + "really" * 20 + "longcallid"
    assert len(m.body) == 150


def dblreq(m):
    # The INVITE after the REGISTER's empty body is noise (RFC 3261 §18.3).
    assert m.method == "REGISTER" and m.body == b"" and m.call_id.startswith("dblreq.0ha0")
    assert b"INVITE" not in m.encode()


def semiuri(m):
    assert m.ruri.user == "user;par=u%40example.net" and m.ruri.host == "example.com"
    assert m.ruri.params == {}
    assert len(m.get_all("accept")) == 6


def transports(m):
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def mpart01(m):
    assert len(m.body) == 553 and b"\x00" in m.body and m.body.endswith(b"--7a9cbec02ceef655--\r\n")


def unreason(m):
    assert m.status == 200 and m.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"


def noreason(m):
    assert (m.status, m.reason) == (100, "")


def bad_contact(m):
    # A registrar reads the Contact: a URI with headers must be in <> (400).
    raises(400, "must be enclosed in <>", lambda: m.contacts)


def badaspec(m):
    # Liberal, as the RFC allows: the spaces inside <> are ignored.
    assert str(m.to.uri) == "sip:t.watson@example.org" and m.to.name == "Watson, Thomas"


def badbranch(m):
    # Taken, as the RFC allows; the parser does not break on the cookie alone.
    assert m.top_via.branch == "z9hG4bK" and m.cseq == (8, "OPTIONS")


def proxy_checks(status: int, words: str, unsupported: str | None = None):
    """A check that §16.3 validation at a proxy answers ``status``."""

    def check(m):
        with pytest.raises(SipError) as exc:
            check_request(m, ProxySettings(domain=DOMAIN, address="192.0.2.200", port=5060))
        assert (exc.value.status, words in exc.value.reason) == (status, True), exc.value
        if unsupported is not None:
            assert dict(exc.value.headers)["Unsupported"] == unsupported

    return check


def invut(m):
    assert m.get("content-type") == "application/unknownformat" and len(m.body) == 40


def regaut01(m):
    assert m.get("authorization") == "NoOneKnowsThisScheme opaque-data=here"


def bcast(m):
    assert [v.host for v in m.vias] == ["192.0.2.198", "255.255.255.255"]


def cparam01(m):
    # addr-spec form: the parameter belongs to the Contact, not to its URI.
    [contact] = m.contacts
    assert contact.uri.params == {} and contact.params == {"unknownparam": None}


def cparam02(m):
    [contact] = m.contacts
    assert contact.uri.params == {"unknownparam": None} and contact.params == {}


def regescrt(m):
    [contact] = m.contacts
    assert contact.uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert str(contact) == "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"


def sdp01(m):
    assert m.get("accept") == "text/nobodyKnowsThis" and len(m.body) == 150


def inv2543(m):
    # No Max-Forwards, no branch cookie, no From tag: taken (RFC 3261 §8.1.1).
    assert m.max_forwards is None and m.top_via.branch is None and m.from_.tag is None
    assert server_key(m)[0] is None
    assert m.get("record-route") == "<sip:UserB@example.com;maddr=ss1.example.com>"


OUTCOMES: dict[str, Outcome] = {
    # §3.1.1 valid messages: every element takes them.
    "3.1.1.1": Outcome(None, check=wsinv),
    "3.1.1.2": Outcome(None, check=intmeth),
    "3.1.1.3": Outcome(None, check=esc01),
    "3.1.1.4": Outcome(None, check=escnull),
    "3.1.1.5": Outcome(None, check=esc02),
    "3.1.1.6": Outcome(None, check=lwsdisp),
    "3.1.1.7": Outcome(None, check=longreq),
    "3.1.1.8": Outcome(None, check=dblreq),
    "3.1.1.9": Outcome(None, check=semiuri),
    "3.1.1.10": Outcome(None, check=transports),
    "3.1.1.11": Outcome(None, check=mpart01),
    "3.1.1.12": Outcome(None, kind="response", check=unreason),
    "3.1.1.13": Outcome(None, kind="response", check=noreason),
    # §3.1.2 invalid messages.
    "3.1.2.1": Outcome(400, "empty parameter"),
    "3.1.2.2": Outcome(400, "body shorter than Content-Length"),
    "3.1.2.3": Outcome(400, "malformed Content-Length"),
    "3.1.2.4": Outcome(400, "CSeq number too large"),
    "3.1.2.5": Outcome(None, kind="drop"),
    "3.1.2.6": Outcome(400, "unterminated quoted string"),
    "3.1.2.7": Outcome(400, "bad Request-URI"),  # not liberal: the brackets are refused
    "3.1.2.8": Outcome(400, "whitespace in Request-URI"),
    "3.1.2.9": Outcome(400, "extra whitespace in request line"),
    "3.1.2.10": Outcome(400, "extra whitespace in request line"),
    "3.1.2.11": Outcome(400, "headers in the Request-URI"),
    # The Date is never read by a proxy or registrar: ignored, as the RFC allows.
    "3.1.2.12": Outcome(None),
    # Taken by the parser; the registrar refuses the Contact (after authentication).
    "3.1.2.13": Outcome(None, check=bad_contact),
    "3.1.2.14": Outcome(None, check=badaspec),
    "3.1.2.15": Outcome(400, "display name with separators must be quoted"),
    "3.1.2.16": Outcome(505, "Version Not Supported"),
    "3.1.2.17": Outcome(400, "CSeq method does not match"),
    # 400, which the RFC accepts beside 501: the CSeq mismatch is the error found.
    "3.1.2.18": Outcome(400, "CSeq method does not match"),
    "3.1.2.19": Outcome(None, kind="drop"),
    # §3.2 transaction layer: taken (not refused with 400).
    "3.2.1": Outcome(None, check=badbranch),
    # §3.3 application layer.
    "3.3.1": Outcome(400, "missing From header"),
    "3.3.2": Outcome(416, "Unsupported URI Scheme"),
    "3.3.3": Outcome(416, "Unsupported URI Scheme"),
    # A registrar needs SIP URIs in To and From: 400.
    "3.3.4": Outcome(400, "unsupported URI scheme"),
    # A proxy answers 420 listing the Proxy-Require options it lacks.
    "3.3.5": Outcome(
        None,
        check=proxy_checks(
            420, "Bad Extension", "noProxiesSupportThis, norDoAnyProxiesSupportThis"
        ),
    ),
    "3.3.6": Outcome(None, check=invut),  # a proxy forwards what it need not read
    "3.3.7": Outcome(None, check=regaut01),  # the registrar challenges (401)
    "3.3.8": Outcome(400, "more than one From header"),
    "3.3.9": Outcome(400, "more than one Content-Length header"),
    # Taken by the parser; a proxy drops it: its top Via is not the proxy's.
    "3.3.10": Outcome(None, kind="response", check=bcast),
    "3.3.11": Outcome(None, check=proxy_checks(483, "Too Many Hops")),
    "3.3.12": Outcome(None, check=cparam01),
    "3.3.13": Outcome(None, check=cparam02),
    "3.3.14": Outcome(None, check=regescrt),
    "3.3.15": Outcome(None, check=sdp01),  # a proxy forwards; the endpoint answers 406
    # §3.4 backward compatibility.
    "3.4.1": Outcome(None, check=inv2543),
}


def test_the_table_holds_every_section():
    assert list(OUTCOMES) == list(MESSAGES) and len(MESSAGES) == 49


@pytest.mark.parametrize("section", list(MESSAGES))
def test_parser(section):
    data = MESSAGES[section][2]
    outcome = OUTCOMES[section]
    if outcome.status is None and outcome.kind != "drop":
        msg = parse_message(data)
        msg.validate()
        assert isinstance(msg, Request if outcome.kind == "request" else Response)
        if isinstance(msg, Request):
            # Every response a proxy or registrar may build for it can be read back.
            answer = parse_message(make_response(msg, 200, to_tag="t1").encode())
            assert answer.call_id == msg.call_id and answer.cseq == msg.cseq
        if outcome.check is not None:
            outcome.check(msg)
        return
    with pytest.raises(SipError) as exc:
        parse_message(data).validate()
    err = exc.value
    if outcome.kind == "drop":
        assert err.request is None, "a malformed response is dropped, never answered"
        return
    assert err.status == outcome.status and outcome.words in err.reason, err
    assert err.request is not None, "a malformed request must be answered"
    answer = parse_message(error_response(err.request, err).encode())
    assert (answer.status, answer.reason) == (err.status, err.reason)
    assert answer.call_id == (err.request.get("call-id") or "").strip()


def test_dblreq_over_tcp_is_two_requests():
    # On a stream the INVITE is a message of its own: the framer cuts at Content-Length
    # (the INVITE's body is one octet longer than its Content-Length says: noise follows).
    register, invite, *_ = StreamFramer().feed(MESSAGES["3.1.1.8"][2])
    assert parse_message(register, stream=True).method == "REGISTER"
    assert parse_message(invite, stream=True).method == "INVITE"


# -- a real node --------------------------------------------------------------

#: sections sent to the node: (what the node answers, or None for silence, and
#: a header the answer must hold)
NODE_SAMPLE = {
    "3.1.1.2": (407, "Proxy-Authenticate"),  # parsed whole; its From names the domain
    "3.1.1.8": (401, "WWW-Authenticate"),  # the REGISTER is challenged, the INVITE ignored
    "3.1.1.12": (None, None),
    "3.1.1.13": (None, None),  # responses to nothing: dropped
    "3.1.2.1": (400, None),
    "3.1.2.2": (400, None),
    "3.1.2.3": (400, None),
    "3.1.2.4": (400, None),
    "3.1.2.5": (None, None),
    "3.1.2.6": (400, None),
    "3.1.2.7": (400, None),
    "3.1.2.9": (400, None),
    "3.1.2.11": (400, None),
    "3.1.2.15": (400, None),
    "3.1.2.16": (505, None),
    "3.1.2.17": (400, None),
    "3.1.2.18": (400, None),
    "3.1.2.19": (None, None),
    "3.3.1": (400, None),
    "3.3.2": (416, None),
    "3.3.3": (416, None),
    "3.3.4": (400, None),
    "3.3.5": (420, "Unsupported"),
    "3.3.7": (401, "WWW-Authenticate"),
    "3.3.8": (400, None),
    "3.3.9": (400, None),
    "3.3.10": (None, None),
    "3.3.11": (483, None),
}

#: the top Via's sent-by, on one line, and what follows it
_TOP_VIA = re.compile(rb"(?im)^((?:via|v)[ \t]*:[^;\r\n,]*?)(;|\r\n|,)")


def reachable(data: bytes) -> bytes:
    """``data`` with ``rport`` on its top Via, so that an answer sent where the
    Via says comes back to the sending socket (RFC 3581)."""
    return _TOP_VIA.sub(lambda m: m.group(1) + b";rport" + m.group(2), data, count=1)


def answers(node: NodeProcess, data: bytes, quiet: float = 1.0) -> list[bytes]:
    """Every datagram the node sends back for ``data`` until a final answer
    or ``quiet`` seconds of silence (bounded)."""
    got: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(data, (node.address, node.port))
        deadline = time.monotonic() + quiet
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                got.append(s.recv(65535))
            except TimeoutError:
                break
            if not got[-1].startswith(b"SIP/2.0 1"):
                # A final answer: wait a little for anything more (the INVITE of dblreq).
                deadline = min(deadline, time.monotonic() + 0.3)
    return got


#: how long the node waits for the rest of a message begun over TCP
HEADER_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node of the RFC's domain, ``example.com``."""
    n = NodeProcess(
        str(tmp_path_factory.mktemp("rfc4475")),
        domain=DOMAIN,
        limits=f"udp_rate = 0\ntcp_header_timeout = {HEADER_TIMEOUT}",
    ).start()
    yield n
    n.stop()


@pytest.mark.parametrize("section", list(NODE_SAMPLE))
def test_node_answers(node, section):
    data = MESSAGES[section][2]
    status, header = NODE_SAMPLE[section]
    got = answers(node, reachable(data))
    if status is None:
        assert got == [], got
        return
    finals = [parse_message(d) for d in got if not d.startswith(b"SIP/2.0 1")]
    assert len(finals) == 1, got
    [answer] = finals
    assert isinstance(answer, Response) and answer.status == status, got
    outcome = OUTCOMES[section]
    if outcome.status is not None:
        assert outcome.words in answer.reason
    if header is not None:
        assert answer.get(header), got
    # The answer is the request's: its Call-ID and CSeq.
    request, _ = re.subn(rb"\r\n\r\n.*", b"", data, flags=re.S)
    call_id = re.search(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)", request)
    if call_id is not None and section not in ("3.3.8",):
        assert answer.call_id == call_id.group(1).decode()


def over_tcp(node: NodeProcess, data: bytes, wait: float) -> tuple[list[bytes], bool]:
    """Send ``data`` on a new TCP connection; return the answers' start lines
    read within ``wait`` seconds and whether the node closed the connection."""
    lines: list[bytes] = []
    closed = False
    with socket.create_connection((node.address, node.port), timeout=wait) as s:
        s.sendall(data)
        framer = StreamFramer()
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                chunk = s.recv(65535)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            lines += [m.split(b"\r\n", 1)[0] for m in framer.feed(chunk)]
    return lines, closed


def test_node_over_tcp(node):
    # §3.1.2.3: a negative Content-Length cannot be framed; the connection is closed.
    _, closed = over_tcp(node, MESSAGES["3.1.2.3"][2], wait=5.0)
    assert closed
    # §3.1.2.2: a Content-Length past the data: the node waits for the rest, a bounded time.
    started = time.monotonic()
    lines, closed = over_tcp(node, MESSAGES["3.1.2.2"][2], wait=HEADER_TIMEOUT + 5.0)
    assert closed and lines == [] and time.monotonic() - started < HEADER_TIMEOUT + 4.0
    # §3.1.1.8: on a stream the INVITE after the REGISTER is a request of its own.
    # (The REGISTER is challenged; the INVITE gets a final answer too; the noise after
    # it, an octet of its body beyond its Content-Length, gets nothing.)
    lines, _ = over_tcp(node, MESSAGES["3.1.1.8"][2], wait=3.0)
    finals = [line for line in lines if not line.startswith(b"SIP/2.0 1")]
    assert len(finals) == 2 and finals[0] == b"SIP/2.0 401 Unauthorized", lines


def test_node_survives_overlarge_values_in_a_relayed_response(node):
    # After §3.1.2.5 (overlarge scalar values in a response): a response whose top
    # Via is the node's is relayed to the next Via; an rport of 99999 there once
    # reached sendto, whose OverflowError killed the proxy actor and the node.
    for second in ("rport=99999", "rport=abc", "rport=\u0661", "received=evil.example"):
        data = (
            f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {node.address}:{node.port};branch=z9hG4bKs1\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1;{second}\r\nFrom: <sip:a@b>;tag=1\r\n"
            "To: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        assert answers(node, data.encode(), quiet=0.2) == []
    test_node_still_serves_after_the_torture(node)


def test_node_answers_where_the_request_came_from(node):
    # A Via's received written by the sender does not steer the answer elsewhere
    # (here 127.0.0.2, another loopback address on the same port): no reflection.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        sender.bind(("127.0.0.1", 0))
        port = sender.getsockname()[1]
        victim.bind(("127.0.0.2", port))
        options = (
            f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};"
            f"received=127.0.0.2;branch=z9hG4bK{os.urandom(6).hex()}\r\n"
            f"From: <sip:probe@{DOMAIN}>;tag=1\r\nTo: <sip:{DOMAIN}>\r\n"
            f"Call-ID: {os.urandom(6).hex()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        sender.sendto(options, (node.address, node.port))
        sender.settimeout(3.0)
        assert sender.recv(65535).startswith(b"SIP/2.0 200")
        victim.settimeout(0.5)
        with pytest.raises(TimeoutError):
            victim.recv(65535)


def test_node_still_serves_after_the_torture(node):
    for section in MESSAGES:
        answers(node, reachable(MESSAGES[section][2]), quiet=0.05)
    options = (
        f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK"
        f"{os.urandom(6).hex()};rport\r\nFrom: <sip:probe@{DOMAIN}>;tag=1\r\n"
        f"To: <sip:{DOMAIN}>\r\nCall-ID: {os.urandom(6).hex()}\r\nCSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    got = answers(node, options, quiet=3.0)
    assert got and parse_message(got[-1]).status == 200, got
    assert node.proc.poll() is None
