"""Alarms: what the master watches, how it tells (webhook, e-mail), and the alarms page.

Every ``check_every`` seconds the checker asks every node for its status
and bans (as the pages do, bounded) and looks at its own database, and
raises an alarm (``store.alarms``: grouped, repeated at most every
``repeat_every`` seconds, cleared when the trouble is gone) for:

- ``node down``: a node does not answer its control endpoint;
- ``node degraded``: a node answers but is not synced (syncing, alone) or reports a
  fault (its database fails: ``actors.health``);
- ``configuration behind``: a node runs an older configuration than the
  newest for more than ``behind_after`` seconds;
- ``replication lag``: a node's p99 replication lag is above ``lag_ms``;
- ``clock skew``: a node sees a peer's clock off by more than ``max_skew``
  seconds (nodes report it from the wall clock in every heartbeat);
- ``ban storm``: ``ban_storm`` or more bans in force on a node;
- ``gateway down``: a gateway of the dial plan that nodes' OPTIONS probes
  find down (one alarm per gateway, naming the nodes);
- ``certificate expiring``: a certificate of ``certificates`` (PEM files the
  master can read, e.g. the nodes' TLS certificates) ends within
  ``cert_days`` days, or cannot be read;
- ``emergency call``: a call record a node marked as one (its ``[sip]
  emergency_numbers``) or to one of ``emergency_numbers``.

Each notice is a JSON POST to ``webhook`` and/or an e-mail through
``smtp_host`` to ``smtp_to``, with a clear text and a link (``dashboard_url``
and the page that explains it). ``[alarms]`` of the master's configuration::

    webhook = "https://chat.example/hook"   # optional
    smtp_host = "mail.example"              # optional; smtp_port (25), smtp_from,
    smtp_to = ["ops@example"]               #   smtp_user, smtp_password, smtp_starttls
    dashboard_url = "https://master.example:8080"
    check_every = 10                        # and repeat_every, behind_after, lag_ms,
                                            # max_skew, ban_storm, cert_days,
                                            # certificates, emergency_numbers
"""

import datetime
import logging
import os
import ssl
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field, fields
from typing import Any

import gevent
from flask import Blueprint, Flask, render_template, request

from actors.notify import Channels, send_notice
from store import alarms as store
from store import master as ms

from . import cluster
from .auth import basic_auth_required, login_required
from .periodic import Periodic

log = logging.getLogger(__name__)

bp = Blueprint("alarms", __name__)

EVENT_KINDS = ("emergency call",)
"""Kinds that are events: nothing clears them, they close after a quiet while."""
BANNER_MAX = 5
"""Open emergency call alarms shown in the banner on top of every page, at most."""
NODE_KINDS = (
    "node down",
    "node degraded",
    "configuration behind",
    "replication lag",
    "clock skew",
    "ban storm",
    "gateway down",
)
"""Kinds observed by asking the nodes (left as they are when the master has no bus)."""
FILE_KINDS = ("certificate expiring",)


class AlarmSettingsError(ValueError):
    """An ``[alarms]`` setting that cannot be used."""


@dataclass
class AlarmSettings(Channels):
    """The ``[alarms]`` settings (see the module's docstring): where notices go
    (``Channels``, shared with the nodes' own notices) and when troubles count."""

    dashboard_url: str = ""
    check_every: float = 10.0
    repeat_every: float = 900.0
    behind_after: float = 30.0
    lag_ms: float = 1000.0
    max_skew: float = 1.0
    ban_storm: int = 20
    cert_days: float = 30.0
    certificates: list[str] = field(default_factory=list)
    emergency_numbers: list[str] = field(default_factory=lambda: ["911", "112"])

    @classmethod
    def of(cls, table: dict) -> "AlarmSettings":
        """The settings of an ``[alarms]`` table, checked."""
        known = {f.name: f for f in fields(cls)}
        unknown = set(table) - set(known)
        if unknown:
            raise AlarmSettingsError(f"unknown [alarms] settings {sorted(unknown)}")
        out = cls()
        for name, value in table.items():
            default = getattr(out, name)
            ok = (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
                if isinstance(default, list)
                else isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
                if isinstance(default, int | float) and not isinstance(default, bool)
                else isinstance(value, type(default))
            )
            if not ok:
                raise AlarmSettingsError(f"[alarms] {name} must be like {default!r}")
            setattr(out, name, value)
        problem = out.problem()
        if problem:
            raise AlarmSettingsError(f"[alarms] {problem}")
        if out.check_every < 1:
            raise AlarmSettingsError("[alarms] check_every must be at least 1 second")
        return out


@dataclass(frozen=True)
class Trouble:
    """One trouble seen now."""

    kind: str
    """What it is (``node down``...)."""
    subject: str
    """What it is about (a node id, a file, a number)."""
    text: str
    """What an operator reads."""
    link: str
    """The dashboard page that explains it."""


def _ts(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def gateway_troubles(gateways: dict) -> list[Trouble]:
    """Gateways that nodes find down (the ``gateways`` answers per node id, each
    ``{"gateways": {name: health}, ...}``, ``actors.gateways``)."""
    down: dict[str, list[str]] = {}
    emergency = set()
    for node, answer in sorted(gateways.items()):
        health = answer.get("gateways") if isinstance(answer, dict) else None
        if not isinstance(health, dict):
            continue
        for name, h in health.items():
            if isinstance(h, dict) and h.get("state") == "down":
                down.setdefault(str(name), []).append(node)
                if h.get("emergency"):
                    emergency.add(str(name))
    return [
        Trouble(
            "gateway down",
            name,
            f"gateway {name} does not answer the OPTIONS "
            f"probes of {', '.join(nodes)}: calls it would take go to the next "
            "gateway of their rule, or fail"
            + (" (it takes emergency calls!)." if name in emergency else "."),
            "/dialplan",
        )
        for name, nodes in sorted(down.items())
    ]


def node_troubles(
    settings: AlarmSettings, nodes: list[dict], states: dict, bans: dict, now: float
) -> list[Trouble]:
    """The troubles in what the nodes answered (``status`` and ``bans`` per node id)."""
    out = []
    newest = ms.current_version()
    for n in nodes:
        node, st = n["node_id"], states.get(n["node_id"], {"error": "not asked"})
        if "error" in st:
            out.append(
                Trouble(
                    "node down",
                    node,
                    f"{node} does not answer the master "
                    f"({st['error']}): it may be dead or cut off.",
                    "/",
                )
            )
        elif st.get("state") == "degraded":
            faults = st.get("faults") if isinstance(st.get("faults"), dict) else {}
            what = "; ".join(
                f"{k}: {v.get('reason') if isinstance(v, dict) else v}" for k, v in faults.items()
            )
            out.append(
                Trouble(
                    "node degraded",
                    node,
                    f"{node} answers but reports a fault ({what}); it refuses what it "
                    "cannot do (OPTIONS 503) and retries until the fault clears.",
                    "/",
                )
            )
        elif st.get("state") != "synced":
            out.append(
                Trouble(
                    "node degraded",
                    node,
                    f"{node} answers but is {st.get('state')}, not synced with its peers.",
                    "/",
                )
            )
        if n["acked_version"] < newest:
            missing = ms.ConfigVersion.get_or_none(
                ms.ConfigVersion.version == n["acked_version"] + 1
            )
            since = missing.created_at if missing is not None else now
            if now - since > settings.behind_after:
                out.append(
                    Trouble(
                        "configuration behind",
                        node,
                        f"{node} runs configuration "
                        f"{n['acked_version']}, the newest is {newest} (since "
                        f"{_ts(since)}); last push error: "
                        f"{n['last_error'] or 'none'}.",
                        "/",
                    )
                )
        if "error" in st:
            continue
        p99 = (st.get("lag_ms") or {}).get("p99")
        if isinstance(p99, int | float) and p99 > settings.lag_ms:
            out.append(
                Trouble(
                    "replication lag",
                    node,
                    f"{node} receives its peers' "
                    f"registrations {p99:.0f} ms after they were made (p99), over "
                    f"{settings.lag_ms:.0f} ms.",
                    "/",
                )
            )
        for peer, ps in sorted((st.get("peers") or {}).items()):
            if not isinstance(ps, dict) or ps.get("liveness") == "dead":
                continue  # a dead peer's last skew is stale
            skew = ps.get("skew")
            if isinstance(skew, int | float) and abs(skew) > settings.max_skew:
                pair = "-".join(sorted((node, peer)))
                out.append(
                    Trouble(
                        "clock skew",
                        pair,
                        f"the clocks of {node} and {peer} "
                        f"differ by {abs(skew):.2f} s (over {settings.max_skew} s): "
                        "registration expiry times are absolute, fix NTP.",
                        "/",
                    )
                )
        in_force = bans.get(node)
        if isinstance(in_force, list) and len(in_force) >= settings.ban_storm:
            out.append(
                Trouble(
                    "ban storm",
                    node,
                    f"{len(in_force)} bans in force on {node} "
                    f"(alarm at {settings.ban_storm}): a password-guessing attack "
                    "is under way.",
                    "/alarms",
                )
            )
    return list({(t.kind, t.subject): t for t in out}.values())


def cert_expiry(path: str) -> float:
    """When the PEM certificate at ``path`` ends (seconds since the epoch)."""
    out = subprocess.run(
        ["openssl", "x509", "-enddate", "-noout", "-in", path],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if out.returncode or not out.stdout.startswith("notAfter="):
        raise ValueError(
            out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "not a PEM certificate"
        )
    return float(ssl.cert_time_to_seconds(out.stdout.strip()[len("notAfter=") :]))


def file_troubles(settings: AlarmSettings, now: float) -> list[Trouble]:
    """Certificates that end within ``cert_days`` days or cannot be read."""
    out = []
    for path in settings.certificates:
        try:
            ends = cert_expiry(path)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            out.append(
                Trouble(
                    "certificate expiring",
                    path,
                    f"certificate {path} cannot be read ({e}).",
                    "/alarms",
                )
            )
            continue
        if ends - now < settings.cert_days * 86400:
            left = (ends - now) / 86400
            what = f"expired {-left:.0f} days ago" if left < 0 else f"ends in {left:.1f} days"
            out.append(
                Trouble(
                    "certificate expiring",
                    path,
                    f"certificate {path} {what} ({_ts(ends)}): renew it.",
                    "/alarms",
                )
            )
    return out


def call_troubles(settings: AlarmSettings) -> list[Trouble]:
    """Emergency calls recorded since the last check."""
    return [
        Trouble(
            "emergency call",
            str(c["callee"]),
            f"emergency call from {c['caller']} to {c['callee']} at {_ts(c['started_at'])}.",
            f"/calls?callee={urllib.parse.quote(str(c['callee']))}",
        )
        for c in store.emergency_calls(settings.emergency_numbers)
    ]


class Notifier:
    """Sends a notice by webhook and by e-mail (each configured channel)."""

    def __init__(self, settings: AlarmSettings, domain: str = ""):
        self.settings, self.domain = settings, domain

    def payload(self, row: store.Alarm) -> dict[str, Any]:
        """What a notice says, JSON-ready."""
        return {
            "alarm": row.kind,
            "subject": row.subject,
            "state": row.notice,
            "text": row.text,
            "link": self.settings.dashboard_url.rstrip("/") + row.link,
            "count": row.count,
            "first_at": row.first_at,
            "last_at": row.last_at,
            "cluster": self.domain,
        }

    def send(self, row: store.Alarm) -> bool:
        """Deliver ``row``'s notice on every channel; True when every one took it."""
        body = self.payload(row)
        state = {
            "raised": "",
            "repeated": f" (repeated, {body['count']} times)",
            "cleared": " (cleared)",
        }.get(body["state"], "")
        subject = f"[tandem {self.domain}] {body['alarm']}: {body['subject']}{state}"
        text = (
            f"{body['text']}\n\nState: {body['state']}, seen {body['count']} "
            f"times since {_ts(body['first_at'])}.\nDetails: {body['link']}\n"
        )
        return send_notice(self.settings, body, subject, text, "tandem-master")


class AlarmChecker(Periodic):
    """Looks for troubles every ``check_every`` seconds and sends the notices."""

    what = "alarm check"
    wait_first = True

    def __init__(self, settings: AlarmSettings, bus=None):
        super().__init__(settings.check_every)
        self.settings, self.bus = settings, bus

    def start(self) -> None:
        """Start checking: calls from now on are looked at (an emergency call collected
        before the first periodic check included)."""
        store.last_call_seen()
        super().start()

    def round(self) -> None:
        """One check of every trouble, now."""
        self.check(time.time())

    def emergency_now(self) -> None:
        """Raise the alarm of the emergency calls just collected and send its notices now,
        in a greenlet of its own (the collector's round does not wait on the webhook)."""
        gevent.spawn(self._emergency_now)

    def _emergency_now(self) -> None:
        now = time.time()
        try:
            for t in call_troubles(self.settings):
                store.seen(t.kind, t.subject, t.text, t.link, now, self.settings.repeat_every)
            self.deliver(now)
        except Exception:
            log.exception("emergency call alarm failed")

    def check(self, now: float) -> list[Trouble]:
        """One round: observe, raise and clear, deliver the notices; the troubles seen."""
        s = self.settings
        troubles = file_troubles(s, now) + call_troubles(s)
        kinds = list(FILE_KINDS)
        if self.bus is not None:
            nodes = ms.list_nodes()
            states = cluster.node_states(self.bus, nodes)
            alive = [n for n in nodes if "error" not in states.get(n["node_id"], {"error": 1})]
            bans = cluster.ask_all(self.bus, alive, {"cmd": "bans"})
            troubles += node_troubles(s, nodes, states, bans, now)
            troubles += gateway_troubles(cluster.ask_all(self.bus, alive, {"cmd": "gateways"}))
            kinds += NODE_KINDS
        for t in troubles:
            store.seen(t.kind, t.subject, t.text, t.link, now, s.repeat_every)
        store.clear_absent(kinds, {f"{t.kind}:{t.subject}"[:400] for t in troubles}, now)
        store.close_quiet(EVENT_KINDS, s.repeat_every, now)
        self.deliver(now)
        return troubles

    def deliver(self, now: float) -> None:
        """Send every waiting notice (each channel bounded by ``actors.notify.SEND_TIMEOUT``)."""
        if not self.settings:
            return
        notifier = Notifier(self.settings, ms.get_setting("domain", ""))
        for row in store.pending():
            ok = notifier.send(row)
            store.delivered(row, ok, now)
            if not ok and row.attempts >= store.MAX_ATTEMPTS:
                log.error(
                    "alarm notice %s of %s %s given up after %d attempts",
                    row.notice,
                    row.kind,
                    row.subject,
                    row.attempts,
                )


def init_app(app: Flask) -> None:
    """Show the number of open alarms in every page's menu, and the open emergency call
    alarms in a banner on top of every page."""

    @app.context_processor
    def open_alarms() -> dict:
        try:
            return {
                "open_alarms": store.count_open(),
                "emergency_alarms": store.open_of_kind(EVENT_KINDS[0], BANNER_MAX),
            }
        except Exception:  # a page must render even when the count cannot be read
            return {"open_alarms": 0, "emergency_alarms": []}


@bp.get("/alarms")
@login_required
def page():
    """Open alarms first, then the latest cleared ones, each with its text and link."""
    return render_template("alarms.html", alarms=store.search(limit=200), when=_ts)


@bp.get("/api/alarms")
@basic_auth_required
def api_alarms():
    """Alarms as JSON, open first; ``?open=1`` for the open ones only."""
    return {"alarms": store.search(open_only=request.args.get("open") == "1", limit=1000)}


def dashboard_url(listen: str) -> str:
    """The dashboard's URL from its listen address (the default ``dashboard_url``)."""
    return "http://" + listen if not listen.startswith("http") else listen


def env_settings(table: dict, listen: str) -> AlarmSettings:
    """The ``[alarms]`` settings with ``dashboard_url`` defaulting to the listen address
    and ``smtp_password`` from ``TANDEM_SMTP_PASSWORD`` when not in the file."""
    settings = AlarmSettings.of(table)
    if not settings.dashboard_url:
        settings.dashboard_url = dashboard_url(listen)
    if not settings.smtp_password:
        settings.smtp_password = os.environ.get("TANDEM_SMTP_PASSWORD", "")
    return settings
