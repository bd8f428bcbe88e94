"""Locust SIP load test: users that register with digest authentication.

    locust -f loadtest/locustfile.py --host sip://127.0.0.11:5060 --headless -u 200 -r 50 -t 60s

Users are ``user0``..``userN-1`` with password ``pw<i>`` (as
``loadtest/harness.write_users_csv`` makes them); set ``TANDEM_USERS`` to N
(default 1000) and ``TANDEM_DOMAIN`` (default example.test). Each Locust
user takes the next SIP user and re-registers it in a loop; every REGISTER
transaction pair (challenge, then credentials) is one Locust request.
"""

import itertools
import os
import time
from urllib.parse import urlparse

from locust import User, between, events, task

from loadtest.sipclient import SipClient, SipClientError

_next_user = itertools.count()


class SipUser(User):
    """A Locust user wrapping a ``SipClient``; reports each exchange to Locust."""

    abstract = True

    def __init__(self, environment):
        super().__init__(environment)
        url = urlparse(self.host or "sip://127.0.0.11:5060")
        n = next(_next_user) % int(os.environ.get("TANDEM_USERS", "1000"))
        self.client = SipClient((url.hostname, url.port or 5060), f"user{n}", f"pw{n}",
                                os.environ.get("TANDEM_DOMAIN", "example.test"))

    def measure(self, name: str, call):
        """Run ``call`` and fire ``events.request`` with its time and outcome."""
        start = time.perf_counter()
        exc = None
        length = 0
        try:
            resp = call()
            length = len(resp.body)
            if resp.status >= 300:
                exc = SipClientError(f"{resp.status} {resp.reason}")
        except SipClientError as e:
            exc = e
        events.request.fire(request_type="SIP", name=name,
                            response_time=(time.perf_counter() - start) * 1000,
                            response_length=length, exception=exc, context={})

    def on_stop(self):
        """Close the socket."""
        self.client.close()


class RegisteringPhone(SipUser):
    """A phone that registers (401, then credentials, then 200) every few seconds."""

    wait_time = between(0.5, 1.5)

    @task
    def register(self):
        """One authenticated registration."""
        self.measure("REGISTER", lambda: self.client.register(3600))
