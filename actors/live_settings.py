"""The master's SIP settings applied to a running node, and kept for its next start.

A configuration version may carry ``settings`` (``sipcore.sip_settings``:
domain aliases, digest algorithms, registrar expiry bounds). The node
checks them with the rest of the push (``actors.config_sync``), keeps them
in its node state and applies them at once: the registrar's rules and
domains, the proxy's names, the cluster's names a Contact is checked
against, the digest-uris taken as naming the node and the algorithms its
next challenge offers. At start (``use_stored_settings``) the kept values
replace the file's, as the pushed peer list does. A challenge front, a
process of its own, keeps its file's values until it restarts from an
edited file.
"""

import logging

from sipcore.cluster_addresses import ClusterAddresses
from sipcore.sip_settings import SettingsError, parse_settings
from store.models import get_state, set_state

from .config import NodeConfig, server_uris

log = logging.getLogger(__name__)

SETTINGS_KEY = "sip_settings"
"""Node state key of the last settings the master pushed."""


def _set_config(cfg: NodeConfig, doc: dict) -> None:
    cfg.aliases = list(doc["aliases"])
    cfg.auth_algorithms = list(doc["auth_algorithms"])
    cfg.min_expires, cfg.max_expires, cfg.default_expires = (
        doc["min_expires"],
        doc["max_expires"],
        doc["default_expires"],
    )


def use_stored_settings(cfg: NodeConfig) -> bool:
    """Replace the file's aliases, algorithms and expiry bounds with the master's last
    settings, if any and if the node follows a master: call after the store is open,
    before the actors are built."""
    doc = get_state(SETTINGS_KEY)
    if doc is None or not cfg.master_key:
        return False
    try:
        _set_config(cfg, parse_settings(doc, cfg.domain))
    except SettingsError as e:
        log.warning("stored SIP settings ignored (%s): the file's are used", e)
        return False
    return True


def keep_settings(doc: dict) -> None:
    """Keep checked settings for the next start."""
    set_state(SETTINGS_KEY, doc)


def apply_settings(node, doc: dict) -> None:
    """Apply checked settings (``parse_settings``) to the running ``node``."""
    cfg = node.cfg
    _set_config(cfg, doc)
    names = [cfg.domain, *cfg.aliases]
    rules = node.registrar.path.rules
    rules.domains = {n.lower() for n in (*names, cfg.address)}
    rules.min_expires, rules.max_expires, rules.default_expires = (
        cfg.min_expires,
        cfg.max_expires,
        cfg.default_expires,
    )
    addresses = ClusterAddresses(names, rules.cluster.nodes)
    rules.cluster = addresses
    node.registrar.path.domains = frozenset(rules.domains)
    if node.proxy is not None:
        settings = node.proxy.core.settings
        settings.aliases = tuple(cfg.aliases)
        settings.names = frozenset(n.lower() for n in names)
        settings.addresses = addresses
    auth = node.registrar.auth
    auth.set_algorithms(tuple(cfg.auth_algorithms))
    auth.server_uris = server_uris(cfg)
    log.info(
        "SIP settings applied: aliases %s, digest %s, expires %d..%d (default %d)",
        ", ".join(cfg.aliases) or "none",
        ", ".join(cfg.auth_algorithms),
        cfg.min_expires,
        cfg.max_expires,
        cfg.default_expires,
    )
