"""A small SIP user agent client over UDP, for load tests (Locust) and probes.

It sends a request, retransmits it per RFC 3261 Timer E until a final
response or Timer F, and answers a 401/407 challenge once with digest
credentials computed by ``sipcore.digest``. It is written on gevent
sockets, so many clients share one process under Locust.
"""

import os
import time

from gevent import socket

from sipcore.digest import Credentials, expected_response, ha1
from sipcore.errors import SipError
from sipcore.message import Response, parse_message
from sipcore.uri import parse_params


class SipClientError(Exception):
    """No usable final response: timeout, bad response, or a failed challenge."""


class SipClient:
    """One UDP socket speaking for one user towards one server."""

    def __init__(self, server: tuple[str, int], user: str, password: str, domain: str,
                 local_ip: str = "127.0.0.1", t1: float = 0.5, timeout: float = 32.0):
        self.server = server
        self.user = user
        self.password = password
        self.domain = domain
        self.t1 = t1
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((local_ip, 0))
        self.local = self.sock.getsockname()
        self.call_id = os.urandom(8).hex() + "@" + local_ip
        self.cseq = 0
        self.tag = os.urandom(4).hex()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def register(self, expires: int = 3600) -> Response:
        """REGISTER this user's contact, answering one digest challenge."""
        return self.request("REGISTER", f"sip:{self.domain}",
                            [("Contact", f"<sip:{self.user}@{self.local[0]}:{self.local[1]}>"),
                             ("Expires", str(expires))])

    def request(self, method: str, uri: str, headers: list[tuple[str, str]]) -> Response:
        """Send ``method`` and return its final response (after one challenge)."""
        resp = self._transaction(method, uri, headers)
        if resp.status in (401, 407):
            name = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
            answer = "Authorization" if resp.status == 401 else "Proxy-Authorization"
            challenge = _pick_md5(resp.get_all(name))
            if challenge is None:
                raise SipClientError(f"{resp.status} without an MD5 challenge")
            auth = self._credentials(method, uri, challenge)
            resp = self._transaction(method, uri, [*headers, (answer, auth)])
            if resp.status in (401, 407):
                raise SipClientError(f"credentials refused: {resp.status} {resp.reason}")
        return resp

    def _transaction(self, method: str, uri: str, headers) -> Response:
        self.cseq += 1
        branch = "z9hG4bK" + os.urandom(8).hex()
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch={branch};rport",
                 f"From: <sip:{self.user}@{self.domain}>;tag={self.tag}",
                 f"To: <sip:{self.user}@{self.domain}>", f"Call-ID: {self.call_id}",
                 f"CSeq: {self.cseq} {method}", "Max-Forwards: 70",
                 *(f"{k}: {v}" for k, v in headers), "Content-Length: 0", "", ""]
        data = "\r\n".join(lines).encode()
        deadline = time.monotonic() + self.timeout
        interval = self.t1
        while True:
            self.sock.sendto(data, self.server)
            wait_until = min(time.monotonic() + interval, deadline)
            while True:
                left = wait_until - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                try:
                    raw = self.sock.recv(65535)
                except socket.timeout:
                    break
                resp = _match(raw, branch)
                if resp is not None and resp.status >= 200:
                    return resp
            if time.monotonic() >= deadline:
                raise SipClientError(f"{method}: no final response in {self.timeout:g} s")
            interval = min(interval * 2, 4.0)

    def _credentials(self, method: str, uri: str, challenge: str) -> str:
        params = parse_params(challenge.split(None, 1)[1].replace(",", ";"))
        unq = {k: (v or "").strip().strip('"') for k, v in params.items()}
        cnonce = os.urandom(4).hex()
        creds = Credentials(username=self.user, realm=unq["realm"], nonce=unq["nonce"], uri=uri,
                            response="", algorithm="MD5", qop="auth", nc="00000001",
                            cnonce=cnonce)
        response = expected_response(creds, method, ha1(self.user, unq["realm"], self.password))
        return (f'Digest username="{self.user}", realm="{unq["realm"]}", nonce="{unq["nonce"]}", '
                f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc=00000001, '
                f'cnonce="{cnonce}"')


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
