"""The SIP settings the master holds and pushes: domain aliases, digest algorithms,
registrar expiry bounds.

``parse_settings`` checks a pushed (or submitted) document and returns it
normalised; the master checks what an admin submits with it before
storing anything, and a node checks a push with it before applying
anything, so a bad value is refused in one place with one message.
"""

import re
from typing import Any

ALGORITHMS = ("MD5", "SHA-256")
"""The digest algorithms a node offers (RFC 8760), in no particular order."""

MAX_ALIASES = 32
MAX_EXPIRES = 7 * 86400
"""Longest registration expiry the settings may allow, in seconds."""

FIELDS = ("aliases", "auth_algorithms", "min_expires", "max_expires", "default_expires")

DEFAULTS: dict[str, Any] = {
    "aliases": [],
    "auth_algorithms": ["MD5"],
    "min_expires": 60,
    "max_expires": 3600,
    "default_expires": 3600,
}
"""What a node runs when neither its file nor the master says otherwise."""

_HOST = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)


class SettingsError(ValueError):
    """A settings document that cannot be applied, with what is wrong."""


def _seconds(doc: dict[str, Any], name: str) -> int:
    value = doc[name]
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_EXPIRES:
        raise SettingsError(
            f"{name} must be whole seconds from 1 to {MAX_EXPIRES}, not {str(value)[:40]!r}"
        )
    return value


def parse_settings(doc: Any, domain: str) -> dict[str, Any]:
    """``doc`` checked and normalised (aliases lower case, duplicates dropped, every
    field present), or ``SettingsError``. ``domain`` may not be one of its aliases."""
    if not isinstance(doc, dict):
        raise SettingsError("settings must be a JSON object")
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise SettingsError(f"unknown setting {str(unknown[0])[:40]!r}; known: {', '.join(FIELDS)}")
    missing = [f for f in FIELDS if f not in doc]
    if missing:
        raise SettingsError(f"missing setting {missing[0]}")
    aliases = doc["aliases"]
    if not isinstance(aliases, list) or len(aliases) > MAX_ALIASES:
        raise SettingsError(f"aliases must be a list of at most {MAX_ALIASES} host names")
    names: list[str] = []
    for alias in aliases:
        name = alias.lower() if isinstance(alias, str) else ""
        if not _HOST.fullmatch(name):
            raise SettingsError(f"alias {str(alias)[:80]!r} is not a host name")
        if name == domain.lower():
            raise SettingsError(f"alias {name} is the domain itself")
        if name not in names:
            names.append(name)
    algorithms = doc["auth_algorithms"]
    if (
        not isinstance(algorithms, list)
        or not algorithms
        or any(a not in ALGORITHMS for a in algorithms)
        or len(set(algorithms)) != len(algorithms)
    ):
        raise SettingsError(
            f"auth_algorithms must list {' and/or '.join(ALGORITHMS)} "
            f"(each once, preferred first), not {str(algorithms)[:80]}"
        )
    low, high, default = (
        _seconds(doc, n) for n in ("min_expires", "max_expires", "default_expires")
    )
    if not low <= default <= high:
        raise SettingsError(
            f"need min_expires <= default_expires <= max_expires, not {low}, {default}, {high}"
        )
    return {
        "aliases": names,
        "auth_algorithms": list(algorithms),
        "min_expires": low,
        "max_expires": high,
        "default_expires": default,
    }
