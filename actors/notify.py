"""Sending a notice: a JSON POST to a webhook and an e-mail through an SMTP server.

The one home for both channels, used by the master's alarms (``web.alarms``)
and by a node's emergency-call notifications (``actors.emergency_notify``).
Each send is bounded by ``SEND_TIMEOUT`` and never raises: a channel that
fails is logged (without its secrets) and reported as False.
"""

import http.client
import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage

log = logging.getLogger(__name__)

SEND_TIMEOUT = 10.0
"""Seconds one webhook POST or one SMTP conversation may take."""


@dataclass
class Channels:
    """Where notices go: ``webhook`` (an http(s) URL) and/or e-mail through ``smtp_host``."""

    webhook: str = ""
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "tandem@localhost"
    smtp_to: list[str] = field(default_factory=list)
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_starttls: bool = False

    def __bool__(self) -> bool:
        return bool(self.webhook or self.smtp_host)

    def problem(self) -> str | None:
        """What is wrong with these settings, or None."""
        if self.webhook and not self.webhook.startswith(("http://", "https://")):
            return "webhook must be an http:// or https:// URL"
        if self.smtp_host and not self.smtp_to:
            return "smtp_host needs smtp_to (a list of addresses)"
        return None


def post_json(url: str, body: dict, agent: str, timeout: float = SEND_TIMEOUT) -> bool:
    """POST ``body`` as JSON to ``url``; True on a 2xx answer."""
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": agent},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as e:
        log.warning("webhook %s failed: %s", agent, e)
        return False


def send_mail(channels: Channels, subject: str, text: str, timeout: float = SEND_TIMEOUT) -> bool:
    """Mail ``text`` under ``subject`` to ``channels.smtp_to``; True when the server took it."""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"], msg["To"] = channels.smtp_from, ", ".join(channels.smtp_to)
    msg.set_content(text)
    try:
        with smtplib.SMTP(channels.smtp_host, channels.smtp_port, timeout=timeout) as smtp:
            if channels.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if channels.smtp_user:
                smtp.login(channels.smtp_user, channels.smtp_password)
            smtp.send_message(msg)
        return True
    except (OSError, smtplib.SMTPException) as e:
        log.warning("e-mail through %s failed: %s", channels.smtp_host, e)
        return False


def send_notice(channels: Channels, body: dict, subject: str, text: str, agent: str) -> bool:
    """Deliver a notice on every configured channel: ``body`` to the webhook, ``subject``
    and ``text`` by e-mail; True when every one took it."""
    ok = True
    if channels.webhook:
        ok = post_json(channels.webhook, body, agent) and ok
    if channels.smtp_host:
        ok = send_mail(channels, subject, text) and ok
    return ok
