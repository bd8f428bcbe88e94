"""A node's side of the configuration master: apply pushed configuration versions.

The master sends ``{"cmd": "config", "version": n, "domain": d, "users":
[...]}`` to the node's control endpoint. Only the client the node's ZAP
handler names ``master`` (the ``[cluster] master_key``) is obeyed: CurveZMQ
proves the sender holds the master's secret key, so a peer, a dashboard
client or anyone else gets an error and changes nothing. A version is
applied only when it is newer than the one the node holds; the users go
into the node's own store (one transaction) and the version into its node
state, so a node restarted while the master is down serves the last
configuration it got. A version may carry ``settings``, the SIP settings
(``actors.live_settings``), applied without a restart. A version may also
carry ``peers``, the cluster's membership (``actors.membership``): checked
with the rest before anything is written, then kept and handed to
``on_peers``. ``config_version`` reports what the node runs, its SIP over
TLS port (0 without TLS), which the master polls and puts in the cluster's
zone as ``_sips._tcp``, and whether the node is synced (a node still syncing
answers SIP 503, so it cannot check itself: the master does not make it the
first node of a staged rollout, ``web.push``).
"""

import logging
from collections.abc import Callable

from sipcore.dialplan import DialPlanError, parse_dialplan
from sipcore.sip_settings import SettingsError, parse_settings
from store.db import StoreError
from store.models import get_state, set_state
from store.users import pushed_users, replace_users

from .bus import BusError
from .live_settings import SETTINGS_KEY, apply_settings, keep_settings
from .membership import MembershipError, follow_peers, parse_peers, store_peers

log = logging.getLogger(__name__)

MASTER = "master"
"""The ZAP name of ``[cluster] master_key`` on the control endpoint."""

VERSION_KEY = "config_version"
"""Node state key of the configuration version the node runs."""
DIALPLAN_KEY = "dialplan"
"""Node state key of the pushed dial plan (``actors.gateways.STATE_KEY``)."""


class ConfigSync:
    """Applies the master's configuration versions to one node's store."""

    def __init__(
        self, domain: str, on_users=None, node_id: str = "", on_peers=None, tls_port: int = 0
    ):
        self.domain = domain
        self.tls_port = tls_port
        """The port this node takes SIP over TLS on, 0 for none."""
        self.on_users = on_users
        self.node_id = node_id
        self.on_peers = on_peers
        self.stats = {"applied": 0, "stale": 0, "refused": 0}
        self.on_dialplan = None
        """Called with a pushed ``dialplan`` document, once checked and its version taken
        (``actors.gateways.apply_dialplan``)."""
        self.on_settings: Callable[[dict], None] | None = None
        """Called with pushed SIP ``settings``, once checked and kept
        (``actors.live_settings.apply_settings``)."""
        self.synced: Callable[[], bool] = lambda: True
        """Whether the node is synced and healthy (serves SIP, can check a version);
        ``attach_config_sync`` asks its replicator and its health."""
        self.boot = 0
        """The node's epoch (one more at each start)."""

    def version(self, _request: dict | None = None) -> dict:
        """The configuration version this node runs (0: none from a master yet), its TLS
        port (0: no TLS), whether it is synced and healthy, and its boot (the epoch: a
        push to an earlier boot will never be answered)."""
        return {
            "version": int(get_state(VERSION_KEY, 0)),
            "tls_port": self.tls_port,
            "synced": bool(self.synced()),
            "boot": self.boot,
            **self.stats,
        }

    def apply(self, request: dict) -> dict:
        """Apply a configuration version pushed by the master (refused from anyone else)."""
        if request.get("from") != MASTER:
            self.stats["refused"] += 1
            log.warning(
                "refused a configuration push from %s: not the master's key",
                request.get("from") or "?",
            )
            raise BusError("configuration is accepted from the master's key only")
        version, users = request.get("version"), request.get("users")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BusError("version must be a positive integer")
        if request.get("domain") != self.domain:
            raise BusError(
                f"configuration for domain {request.get('domain')!r}, "
                f"this node serves {self.domain!r}"
            )
        if not isinstance(users, list):
            raise BusError("users must be a list")
        dialplan = self._dialplan(request)
        settings = self._settings(request)
        current = int(get_state(VERSION_KEY, 0))
        if version <= current:
            self.stats["stale"] += 1
            return {"version": current, "applied": False}
        try:
            peers = parse_peers(request["peers"], self.node_id) if "peers" in request else None
        except MembershipError as e:
            raise BusError(f"configuration {version} refused: {e}") from None
        try:
            written, deleted = replace_users(self.domain, users)
        except StoreError as e:
            raise BusError(f"configuration {version} refused: {e}") from None
        if peers is not None:
            store_peers(request["peers"])
            if self.on_peers is not None:
                self.on_peers(peers)
        set_state(VERSION_KEY, version)
        self.stats["applied"] += 1
        if self.on_users is not None:
            self.on_users()
        if dialplan is not None and self.on_dialplan is not None:
            self.on_dialplan(dialplan)
        if settings is not None:
            keep_settings(settings)
            if self.on_settings is not None:
                self.on_settings(settings)
        log.info("configuration %d applied: %d users, %d removed", version, written, deleted)
        return {"version": version, "applied": True}

    def _settings(self, request: dict) -> dict | None:
        """The push's SIP ``settings`` checked before anything is applied; None when it
        has none (the node keeps what it runs)."""
        doc = request.get("settings")
        if doc is None:
            return None
        try:
            return parse_settings(doc, self.domain)
        except SettingsError as e:
            raise BusError(f"settings refused: {e}") from None

    def snapshot(self) -> dict:
        """What the node runs now (version, users, dial plan, SIP settings), for
        :meth:`restore`."""
        return {
            "version": int(get_state(VERSION_KEY, 0)),
            "users": pushed_users(self.domain),
            "dialplan": get_state(DIALPLAN_KEY),
            "settings": get_state(SETTINGS_KEY),
        }

    def restore(self, snapshot: dict) -> None:
        """Run what :meth:`snapshot` saw again (a rollback; the peer list stays: it
        follows the nodes that exist)."""
        try:
            replace_users(self.domain, snapshot["users"])
        except StoreError as e:
            raise BusError(f"rollback failed: {e}") from None
        set_state(VERSION_KEY, snapshot["version"])
        if self.on_users is not None:
            self.on_users()
        if self.on_dialplan is not None and get_state(DIALPLAN_KEY) != snapshot["dialplan"]:
            self.on_dialplan(snapshot["dialplan"])
        # Settings the node ran before come back; a node that ran its file's (none pushed
        # yet) keeps the pushed ones until its next start, which reads the file again.
        before = snapshot.get("settings")
        if before is not None and before != get_state(SETTINGS_KEY):
            keep_settings(before)
            if self.on_settings is not None:
                self.on_settings(before)
        log.warning("configuration rolled back to %d", snapshot["version"])

    @staticmethod
    def _dialplan(request: dict) -> dict | None:
        """The push's ``dialplan`` document (gateways, rules, user policies), checked
        before anything is applied; None when the push has none (the plan stays)."""
        doc = request.get("dialplan")
        if doc is None:
            return None
        try:
            parse_dialplan(doc)
        except DialPlanError as e:
            raise BusError(f"dial plan refused: {e}") from None
        return doc


def attach_config_sync(node) -> ConfigSync | None:
    """Serve ``config`` and ``config_version`` on the node's control endpoint, if it has one."""
    control = node.replicator.control if node.replicator is not None else None
    if control is None:
        return None
    sync = node.config_sync = ConfigSync(
        node.cfg.domain,
        node.users.reload,
        node.cfg.id,
        lambda peers: follow_peers(node, peers),
        node.cfg.tls_port,
    )
    sync.on_settings = lambda doc: apply_settings(node, doc)
    sync.synced = lambda: node.replicator.synced and node.health.healthy
    sync.boot = node.registrar.sequencer.epoch
    control.handle("config", sync.apply)
    control.handle("config_version", sync.version)
    return sync
