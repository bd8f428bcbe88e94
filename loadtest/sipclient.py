"""A small SIP user agent client over UDP, for load tests (Locust) and probes.

It sends a request, retransmits it per RFC 3261 Timer E until a final
response or Timer F, and answers a 401/407 challenge once with digest
credentials computed by ``sipcore.digest``. It is written on gevent
sockets, so many clients share one process under Locust.
"""

import os
import time

from gevent import socket
from gevent.queue import Empty, Queue

from sipcore.digest import Credentials, expected_response, ha1
from sipcore.errors import SipError
from sipcore.message import Response, parse_message
from sipcore.uri import parse_name_addr, parse_params


class SipClientError(Exception):
    """No usable final response: timeout, bad response, or a failed challenge."""


def sdp_offer(address: str, port: int, direction: str = "sendrecv") -> bytes:
    """A minimal audio SDP (RFC 4566) at ``address``:``port``; ``sendonly`` holds the peer."""
    return (
        f"v=0\r\no=- 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
    ).encode()


class SipClient:
    """One UDP socket speaking for one user towards one server.

    ``server`` may be changed between transactions (a phone moving to the
    next SRV target after a node stops answering).
    """

    def __init__(
        self,
        server: tuple[str, int],
        user: str,
        password: str,
        domain: str,
        local_ip: str = "127.0.0.1",
        t1: float = 0.5,
        timeout: float = 32.0,
        shared: "tuple[socket.socket, Queue] | None" = None,
    ):
        self.server = server
        self.user = user
        self.password = password
        self.domain = domain
        self.t1 = t1
        self.timeout = timeout
        self.inbox: Queue | None = None
        if shared is not None:
            # A socket someone else reads (an answering agent): its responses come by the queue.
            self.sock, self.inbox = shared
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((local_ip, 0))
        self.local = self.sock.getsockname()
        self.call_id = os.urandom(8).hex() + "@" + local_ip
        self.cseq = 0
        self.tag = os.urandom(4).hex()

    @property
    def aor(self) -> str:
        """This user's address of record."""
        return f"sip:{self.user}@{self.domain}"

    def close(self) -> None:
        """Close the socket (unless it is shared)."""
        if self.inbox is None:
            self.sock.close()

    def register(self, expires: int = 3600) -> Response:
        """REGISTER this user's contact (this socket), answering one challenge.

        Every call uses this client's Call-ID with the next CSeq, so a second
        call refreshes the same binding (RFC 3261 §10.2.4).
        """
        return self.request(
            "REGISTER",
            f"sip:{self.domain}",
            [("Contact", self._contact()), ("Expires", str(expires))],
        )

    def request(self, method: str, uri: str, headers: list[tuple[str, str]], **kw) -> Response:
        """Send ``method`` and return its final response (after one challenge).

        Keyword arguments go to the transaction (``to``, ``call_id``,
        ``from_tag``, ``body``, ``dest``, ``ringing``); a challenged request
        is sent again with the next CSeq.
        """
        resp = self._transaction(method, uri, headers, **kw)
        if resp.status in (401, 407):
            name = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
            answer = "Authorization" if resp.status == 401 else "Proxy-Authorization"
            challenge = _pick_md5(resp.get_all(name))
            if challenge is None:
                raise SipClientError(f"{resp.status} without an MD5 challenge")
            auth = self._credentials(method, uri, challenge)
            resp = self._transaction(method, uri, [*headers, (answer, auth)], **kw)
            if resp.status in (401, 407):
                raise SipClientError(f"credentials refused: {resp.status} {resp.reason}")
        return resp

    def invite(self, callee: str, ringing=None) -> "tuple[Response, Dialog | None]":
        """Call the address of record ``callee``: INVITE (answering a 407), wait for the final
        response; for a 2xx, ACK it and return the confirmed dialog too.

        ``ringing`` is called with each provisional response above 100.
        """
        call_id = os.urandom(8).hex() + "@" + self.local[0]
        tag = os.urandom(4).hex()
        body = sdp_offer(self.local[0], 40000)
        resp = self.request(
            "INVITE",
            callee,
            [("Contact", self._contact()), ("Content-Type", "application/sdp")],
            to=f"<{callee}>",
            call_id=call_id,
            from_tag=tag,
            body=body,
            ringing=ringing,
        )
        if resp.status >= 300:
            return resp, None
        dialog = Dialog.from_2xx(self, resp, callee, call_id, tag)
        dialog.ack(resp.cseq[0])
        return resp, dialog

    def _contact(self) -> str:
        return f"<sip:{self.user}@{self.local[0]}:{self.local[1]}>"

    def _transaction(
        self,
        method: str,
        uri: str,
        headers,
        *,
        to: str | None = None,
        call_id: str | None = None,
        from_tag: str | None = None,
        body: bytes = b"",
        dest: tuple[str, int] | None = None,
        ringing=None,
    ) -> Response:
        self.cseq += 1
        branch = "z9hG4bK" + os.urandom(8).hex()
        to = to or f"<{self.aor}>"
        from_ = f"<{self.aor}>;tag={from_tag or self.tag}"
        data = self._encode(
            method, uri, branch, from_, to, call_id or self.call_id, self.cseq, headers, body
        )
        dest = dest or self.server
        deadline = time.monotonic() + self.timeout
        interval = self.t1
        retransmit = True
        while True:
            if retransmit:
                self.sock.sendto(data, dest)
            wait_until = min(time.monotonic() + interval, deadline)
            while True:
                left = wait_until - time.monotonic()
                if left <= 0:
                    break
                raw = self._receive(left)
                if raw is None:
                    break
                resp = _match(raw, branch)
                if resp is None:
                    continue
                if resp.status < 200:
                    # Timer A stops at a provisional response (§17.1.1.2); Timer B bounds the wait.
                    retransmit = retransmit and method != "INVITE"
                    if ringing is not None and resp.status > 100:
                        ringing(resp)
                    continue
                if method == "INVITE" and resp.status >= 300:
                    self._ack_failure(uri, branch, from_, resp, dest)
                return resp
            if time.monotonic() >= deadline:
                raise SipClientError(f"{method}: no final response in {self.timeout:g} s")
            interval = min(interval * 2, 4.0)

    def _receive(self, timeout: float) -> bytes | None:
        """The next datagram for this client within ``timeout`` seconds, or None."""
        if self.inbox is not None:
            try:
                return self.inbox.get(timeout=timeout)
            except Empty:
                return None
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65535)
        except socket.timeout:
            return None

    def _ack_failure(
        self, uri: str, branch: str, from_: str, resp: Response, dest: tuple[str, int]
    ) -> None:
        """The ACK of a non-2xx final response: same branch, the response's To (§17.1.1.3)."""
        to = resp.get("To") or ""
        self.sock.sendto(
            self._encode("ACK", uri, branch, from_, to, resp.call_id, resp.cseq[0], [], b""), dest
        )

    def _encode(
        self,
        method: str,
        uri: str,
        branch: str,
        from_: str,
        to: str,
        call_id: str,
        cseq: int,
        headers,
        body: bytes,
    ) -> bytes:
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch={branch};rport",
            f"From: {from_}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            "Max-Forwards: 70",
            *(f"{k}: {v}" for k, v in headers),
            f"Content-Length: {len(body)}",
            "",
            "",
        ]
        return "\r\n".join(lines).encode() + body

    def _credentials(self, method: str, uri: str, challenge: str) -> str:
        params = parse_params(challenge.split(None, 1)[1].replace(",", ";"))
        unq = {k: (v or "").strip().strip('"') for k, v in params.items()}
        cnonce = os.urandom(4).hex()
        creds = Credentials(
            username=self.user,
            realm=unq["realm"],
            nonce=unq["nonce"],
            uri=uri,
            response="",
            algorithm="MD5",
            qop="auth",
            nc="00000001",
            cnonce=cnonce,
        )
        response = expected_response(creds, method, ha1(self.user, unq["realm"], self.password))
        return (
            f'Digest username="{self.user}", realm="{unq["realm"]}", nonce="{unq["nonce"]}", '
            f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc=00000001, '
            f'cnonce="{cnonce}"'
        )


class Dialog:
    """A confirmed dialog of a call this client placed (RFC 3261 §12.1.2), for in-dialog requests.

    Requests go to the remote target through the route set (the 2xx's
    Record-Route, reversed), sent to the first route's host and port.
    """

    def __init__(
        self,
        client: SipClient,
        call_id: str,
        local_tag: str,
        remote: str,
        target: str,
        routes: list[str],
    ):
        self.client = client
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote = remote
        self.target = target
        self.routes = routes

    @classmethod
    def from_2xx(
        cls, client: SipClient, resp: Response, callee: str, call_id: str, tag: str
    ) -> "Dialog":
        """The dialog a 2xx to an INVITE of ``client`` creates."""
        try:
            contacts = resp.contacts
            target = str(contacts[0].uri) if isinstance(contacts, list) and contacts else callee
        except SipError as e:
            raise SipClientError(f"2xx with a bad Contact: {e}") from e
        return cls(
            client,
            call_id,
            tag,
            resp.get("To") or f"<{callee}>",
            target,
            list(reversed(resp.get_all("Record-Route"))),
        )

    def _dest(self) -> tuple[str, int]:
        if not self.routes:
            return self.client.server
        try:
            uri = parse_name_addr(self.routes[0]).uri
        except SipError as e:
            raise SipClientError(f"bad Record-Route {self.routes[0]!r}: {e}") from e
        return (uri.host, uri.port or 5060)

    def _headers(self) -> list[tuple[str, str]]:
        return [("Route", r) for r in self.routes]

    def ack(self, cseq: int) -> None:
        """The ACK of the 2xx with CSeq ``cseq``: its own transaction, never answered."""
        c = self.client
        data = c._encode(
            "ACK",
            self.target,
            "z9hG4bK" + os.urandom(8).hex(),
            f"<{c.aor}>;tag={self.local_tag}",
            self.remote,
            self.call_id,
            cseq,
            self._headers(),
            b"",
        )
        c.sock.sendto(data, self._dest())

    def request(
        self, method: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None
    ) -> Response:
        """Send ``method`` inside the dialog; a 2xx to a re-INVITE is ACKed."""
        hdrs = self._headers() + (headers or [])
        if method == "INVITE":
            hdrs.append(("Contact", self.client._contact()))
        resp = self.client.request(
            method,
            self.target,
            hdrs,
            to=self.remote,
            call_id=self.call_id,
            from_tag=self.local_tag,
            body=body,
            dest=self._dest(),
        )
        if method == "INVITE" and 200 <= resp.status < 300:
            self.ack(resp.cseq[0])
        return resp

    def hold(self) -> Response:
        """A re-INVITE offering ``sendonly`` audio (RFC 3264 §8.4): the far end is on hold."""
        c = self.client
        return self.request(
            "INVITE",
            sdp_offer(c.local[0], 40000, "sendonly"),
            [("Content-Type", "application/sdp")],
        )

    def bye(self) -> Response:
        """End the call."""
        return self.request("BYE")


def _pick_md5(values: list[str]) -> str | None:
    for v in values:
        if "algorithm=sha" not in v.lower().replace(" ", ""):
            return v
    return None


def _match(raw: bytes, branch: str) -> Response | None:
    try:
        msg = parse_message(raw)
    except SipError:
        return None
    if not isinstance(msg, Response):
        return None
    try:
        return msg if msg.top_via.branch == branch else None
    except SipError:
        return None
