"""The master's SIP settings (domain aliases, digest algorithms, registrar expiry),
kept in its settings table and carried by every configuration version.

Until an admin saves them, versions carry none and each node keeps the
values of its own file; once saved, every version carries them all
(``sipcore.sip_settings``) and every node applies them without a restart.
"""

from typing import Any

from sipcore.sip_settings import DEFAULTS, FIELDS, SettingsError, parse_settings
from store.db import StoreError
from store.master import domain, get_setting, master_db, new_version, set_setting

KEY = "sip_settings"


def pushed_settings() -> dict[str, Any] | None:
    """The settings a configuration version carries, None before any were saved."""
    doc = get_setting(KEY)
    return None if doc is None else dict(doc)


def current_settings() -> dict[str, Any]:
    """The saved settings, or the defaults a node runs without any."""
    return pushed_settings() or dict(DEFAULTS)


def save_settings(changes: Any, reason: str = "SIP settings changed") -> int:
    """Apply ``changes`` (some or all of the fields) over the current settings, check
    the whole (``StoreError`` saying what is wrong, nothing stored), store it; the new
    configuration version."""
    if not isinstance(changes, dict) or not changes:
        raise StoreError(f"expected a JSON object with some of: {', '.join(FIELDS)}")
    try:
        doc = parse_settings({**current_settings(), **changes}, domain())
    except SettingsError as e:
        raise StoreError(str(e)) from None
    with master_db.atomic():
        set_setting(KEY, doc)
        return new_version(reason)
