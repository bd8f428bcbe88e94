"""What the fuzzers feed bytes to: a node's handling of a message (parsed as a
datagram and as a stream, and a REGISTER through the registrar's rules), and
of a digest Authorization value.

Each target takes any bytes and may raise only ``SipError`` (the parser's
documented error, ``sipcore.errors``); anything else, or a failed
assertion, is a crash. The same functions serve the hypothesis properties
(``tests/test_fuzz.py``), the atheris targets (``run.py message``,
``run.py digest`` here) and ``tests/test_message.py``.
"""

from sipcore.digest import Authenticator, NonceFactory, expected_response, ha1, parse_credentials
from sipcore.errors import SipError
from sipcore.message import (
    Message,
    Request,
    StreamFramer,
    error_response,
    make_response,
    parse_message,
)
from sipcore.location import Location
from sipcore.registrar import RegistrarRules
from sipcore.via import response_destination, stamp_via

#: the registrar's rules the message target applies, for the RFC's domains and Tandem's
_RULES = RegistrarRules("example.com", aliases=("example.test",))
_LOCATION = Location()
#: the clock the targets run at
NOW = 1000.0


def process(data: bytes, stream: bool = False) -> Message | SipError:
    """What a node does with one message; only SipError may escape.

    Returns the parsed message or the SipError. Every view a proxy or
    registrar reads is read, every response built on the way is encoded and
    parsed back, and a request's Via is stamped as the transport does.
    """
    try:
        msg = parse_message(data, stream)
        msg.validate()
        _ = msg.vias, msg.cseq, msg.to, msg.from_, msg.contacts, msg.expires, msg.max_forwards
        for via in msg.vias:
            _ = via.rport, str(via)
        for c in msg.contacts if msg.contacts != "*" else []:
            _ = c.q, c.expires, c.instance, c.reg_id, c.name, c.uri.aor(), c.uri.canonical(), str(c)
    except SipError as err:
        assert "\r" not in err.reason and "\n" not in err.reason
        if err.request is not None:
            assert isinstance(err.request, Request)
            answer = parse_message(error_response(err.request, err, to_tag="x1").encode())
            assert answer.status == err.status
        return err
    if isinstance(msg, Request):
        _ = msg.ruri.aor(), str(msg.ruri)
        answer = parse_message(make_response(msg, 200, to_tag="x1").encode())
        assert answer.status == 200 and answer.call_id == msg.call_id
        assert parse_message(msg.encode()).encode() == msg.encode()
        stamp_via(msg, "udp", "192.0.2.1", 5060)
    # Where a response would be relayed: a port and an address a socket takes, or nowhere.
    dest = response_destination(msg)
    if dest is not None:
        assert 0 < dest[2] < 65536 and dest[1].isascii() and dest[1]
    return msg


def process_stream(data: bytes) -> None:
    """What a TCP connection does with ``data``: frame it, then handle each message.

    The first byte chooses where the data is cut in two (two reads).
    """
    framer = StreamFramer(max_header=4096, max_body=4096)
    cut = data[0] if data else 0
    try:
        messages = framer.feed(data[:cut]) + framer.feed(data[cut:])
    except SipError:
        return
    for msg in messages:
        if msg != StreamFramer.PING:
            process(msg, stream=True)


def register(msg: Message) -> None:
    """What the registrar's rules (``sipcore.registrar``) do with a REGISTER
    that passed authentication: only ``SipError`` may escape, and the 200 of
    what they would commit is read back. The bindings are then kept, so that
    the next REGISTER meets them."""
    global _LOCATION
    if not isinstance(msg, Request) or msg.method != "REGISTER":
        return
    if len(_LOCATION) > 1000:
        _LOCATION = Location()  # bounded, whatever the fuzzer registers
    try:
        _RULES.check(msg)
        aor, _ = _RULES.aor_of(msg)
        outcome = _RULES.apply(msg, _LOCATION, NOW, "n1", "192.0.2.1", "t1", aor)
    except SipError:
        return
    answer = parse_message(outcome.encode())
    assert answer.status == 200 and answer.call_id == msg.call_id
    for binding in outcome.changes:
        assert "\x00" not in binding.key and "\r" not in binding.key and "\n" not in binding.key
        _LOCATION.put(binding)


def check_message(data: bytes) -> None:
    """The message target: ``data`` as a datagram and as a stream, and through
    the registrar's rules when it is a REGISTER."""
    msg = process(data)
    if isinstance(msg, Message):
        register(msg)
    process_stream(data)


# -- digest credentials -------------------------------------------------------

REALM = "example.test"
SECRET = b"fuzz-secret-fuzz-secret"
ORIGIN = "fuzz0001"
USERS = {
    "alice": {"MD5": ha1("alice", REALM, "pw"), "SHA-256": ha1("alice", REALM, "pw", "SHA-256")}
}
#: a nonce the authenticators below take as fresh and their own
NONCE = NonceFactory(SECRET, origin=ORIGIN).make(NOW)


def _authenticator() -> Authenticator:
    return Authenticator(REALM, SECRET, USERS.get, origin=ORIGIN)


def _outcome(call, *args) -> tuple:
    try:
        result = call(*args)
    except SipError as err:
        return ("error", err.status, err.reason)
    return (result.ok, result.username, result.stale, result.reason, len(result.challenges))


def check_credentials(data: bytes) -> None:
    """The digest target: ``data`` as an Authorization value.

    ``NONCE`` in the text becomes a fresh nonce of ours and a response of
    ``RIGHT`` the right one for alice, so that the fuzzer reaches the checks
    past the parser. ``parse_credentials`` may raise only ``SipError``;
    ``Authenticator.authenticate`` (with its shortcut for the usual shape)
    and ``_authenticate_slow`` must give the same outcome, twice (the second
    time, a replay).
    """
    text = data.decode("utf-8", "surrogateescape").replace("NONCE", NONCE)
    try:
        creds = parse_credentials(text)
    except SipError as err:
        assert "\r" not in err.reason and "\n" not in err.reason
        creds = None
    if creds is not None and "RIGHT" in text:
        base = creds.algorithm.removesuffix("-sess")
        key = USERS["alice"].get(base)
        if key is not None:
            right = expected_response(creds, "REGISTER", key)
            if right:
                text = text.replace("RIGHT", right)
    fast, slow = _authenticator(), _authenticator()
    for now in (NOW, NOW + 1.0):
        assert _outcome(fast.authenticate, "REGISTER", [text], now, f"sip:{REALM}") == _outcome(
            slow._authenticate_slow, "REGISTER", [text], now, f"sip:{REALM}"
        )


# -- seeds --------------------------------------------------------------------

#: Authorization values to start the digest target from: the usual shapes,
#: with the placeholders ``check_credentials`` fills in
DIGEST_SEEDS = [
    f'Digest username="alice",realm="{REALM}",nonce="NONCE",uri="sip:{REALM}",'
    'response="RIGHT",algorithm=MD5,cnonce="6b8b4567",qop=auth,nc=00000001',
    f'Digest username="alice", realm="{REALM}", nonce="NONCE", uri="sip:{REALM}", '
    'response="RIGHT", algorithm=SHA-256, cnonce="0a4f113b", qop=auth, nc=00000002, opaque=""',
    f'digest USERNAME*=UTF-8\'\'al%69ce,realm="{REALM}",nonce="NONCE",uri="sip:{REALM}",'
    'response="RIGHT",algorithm="MD5-sess",cnonce="x\\"y",qop="auth",nc=0000000a',
    f'Digest username="alice",realm="{REALM}",nonce="NONCE",uri="sip:{REALM}",response="RIGHT"',
]


#: REGISTERs of the usual shapes, for the message target besides RFC 4475's messages
REGISTER_SEEDS = [
    "REGISTER sip:example.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\nMax-Forwards: 70\r\n"
    'To: "Alice" <sip:alice@example.test>\r\nFrom: "Alice" <sip:alice@example.test>;tag=19283\r\n'
    "Call-ID: a84b4c76e66710@pc33.example.test\r\nCSeq: 314159 REGISTER\r\n"
    "Contact: <sip:alice@192.0.2.10:5060;transport=udp>;+sip.instance="
    '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";reg-id=1;expires=3600;q=0.5\r\n'
    "Expires: 3600\r\nSupported: path, outbound\r\nPath: <sip:p.example.test;lr>\r\n"
    "User-Agent: Tandem-test/1.0\r\nContent-Length: 0\r\n\r\n",
    "REGISTER sip:example.test SIP/2.0\r\nv: SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK2\r\n"
    "t: <sip:bob@example.test>\r\nf: <sip:bob@example.test>;tag=2\r\ni: c2\r\n"
    "CSeq: 2 REGISTER\r\nm: *\r\nExpires: 0\r\nl: 0\r\n\r\n",
]


def seeds(target: str) -> list[bytes]:
    """The inputs a fuzzing run of ``target`` (``message`` or ``digest``) starts from."""
    if target == "digest":
        return [s.encode() for s in DIGEST_SEEDS]
    from tests.rfc4475_messages import MESSAGES

    return [s.encode() for s in REGISTER_SEEDS] + [data for _, _, data in MESSAGES.values()]


def write_seeds(target: str, folder: str) -> None:
    """Write ``seeds(target)`` into ``folder``, one file each."""
    import os

    os.makedirs(folder, exist_ok=True)
    for i, data in enumerate(seeds(target)):
        with open(os.path.join(folder, f"seed-{i:03d}"), "wb") as f:
            f.write(data)
