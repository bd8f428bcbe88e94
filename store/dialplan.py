"""The master's dial plan: gateways, ordered rules, user policies and emergency settings.

The plan is one document, the shape ``sipcore.dialplan.parse_dialplan``
takes (and a node's ``[dialplan]`` section has), kept as the master setting
:data:`KEY`. Every change is checked by compiling the whole plan first, so a
plan that would not compile is never stored nor pushed, and makes a new
configuration version (``store.master.config_for`` carries the plan to every
node). The user policies carry each user's extensions and DIDs
(``numbers``), checked never to be the name of a user. ``which_rule``
answers "which rule would this number take?".
"""

import json
from typing import Any

from sipcore.dialplan import MAX_RULES, DialPlanError, is_number, parse_dialplan
from store.db import StoreError
from store.master import SipUser, get_setting, master_db, new_version, set_setting

KEY = "dialplan"
"""Master setting holding the plan document."""
MAX_DOCUMENT = 2 * 1024 * 1024
"""Largest plan document (bytes of JSON) stored."""
_EMPTY: dict[str, Any] = {"gateways": [], "rules": [], "users": {}}


def get_dialplan() -> dict[str, Any]:
    """The plan document (an empty plan when none was stored)."""
    doc = get_setting(KEY)
    return json.loads(json.dumps(_EMPTY)) if doc is None else dict(doc)


def pushed_dialplan() -> dict[str, Any] | None:
    """The plan a configuration version carries, None before any was stored."""
    doc = get_setting(KEY)
    return None if doc is None else dict(doc)


def save_dialplan(doc: Any, reason: str = "dial plan changed") -> int:
    """Check ``doc`` (``StoreError`` saying what is wrong), store it; the new version."""
    if not isinstance(doc, dict):
        raise StoreError("the dial plan must be a JSON object")
    if len(json.dumps(doc)) > MAX_DOCUMENT:
        raise StoreError(f"the dial plan is larger than {MAX_DOCUMENT} bytes")
    try:
        plan = parse_dialplan(doc)
    except DialPlanError as e:
        raise StoreError(str(e)) from None
    numbers = [n for policy in plan.users.values() for n in policy.numbers]
    numbers += plan.ring_groups.by_number
    for chunk in range(0, len(numbers), 500):
        taken = (
            SipUser.select(SipUser.username)
            .where(SipUser.username.in_(numbers[chunk : chunk + 500]))
            .first()
        )
        if taken is not None:
            raise StoreError(f"number {taken.username} is the name of a user")
    with master_db.atomic():
        set_setting(KEY, doc)
        return new_version(reason)


def save_gateway(gateway: Any) -> int:
    """Add a gateway or replace the one of the same name."""
    if not isinstance(gateway, dict) or not isinstance(gateway.get("name"), str):
        raise StoreError("a gateway is a JSON object with a name")
    doc = get_dialplan()
    gateways = [g for g in doc.get("gateways", []) if g.get("name") != gateway["name"]]
    doc["gateways"] = [*gateways, gateway]
    return save_dialplan(doc, f"gateway {gateway['name'][:64]} saved")


def delete_gateway(name: str) -> int | None:
    """Remove a gateway (refused while a rule names it); None when there is none."""
    doc = get_dialplan()
    gateways = [g for g in doc.get("gateways", []) if g.get("name") != name]
    if len(gateways) == len(doc.get("gateways", [])):
        return None
    doc["gateways"] = gateways
    return save_dialplan(doc, f"gateway {name[:64]} deleted")


def save_trusted(peer: Any) -> int:
    """Trust a carrier or gateway by source address (``{"name", "address"}``, an IP
    address or network) or TLS certificate (``certificate``, ``subject``;
    ``sipcore.trusted``), replacing the peer of the same name."""
    if not isinstance(peer, dict) or not isinstance(peer.get("name"), str):
        raise StoreError("a trusted peer is a JSON object with a name and an address")
    doc = get_dialplan()
    peers = [p for p in doc.get("trusted", []) if p.get("name") != peer["name"]]
    doc["trusted"] = [*peers, peer]
    return save_dialplan(doc, f"trusted peer {peer['name'][:64]} saved")


def delete_trusted(name: str) -> int | None:
    """Stop trusting the peer ``name``; None when there is none."""
    doc = get_dialplan()
    peers = [p for p in doc.get("trusted", []) if p.get("name") != name]
    if len(peers) == len(doc.get("trusted", [])):
        return None
    doc["trusted"] = peers
    return save_dialplan(doc, f"trusted peer {name[:64]} deleted")


def save_rule(rule: Any, position: int | None = None) -> int:
    """Insert ``rule`` at ``position`` (None: last); rules are tried in order."""
    doc = get_dialplan()
    rules = list(doc.get("rules", []))
    if len(rules) >= MAX_RULES:
        raise StoreError(f"the dial plan holds {MAX_RULES} rules at most")
    at = len(rules) if position is None else position
    if not isinstance(at, int) or isinstance(at, bool) or not 0 <= at <= len(rules):
        raise StoreError(f"position must be 0-{len(rules)}")
    rules.insert(at, rule)
    doc["rules"] = rules
    return save_dialplan(doc, f"rule {at} added")


def replace_rule(index: int, rule: Any) -> int | None:
    """Replace the rule at ``index``; None when there is none."""
    doc = get_dialplan()
    rules = list(doc.get("rules", []))
    if not 0 <= index < len(rules):
        return None
    rules[index] = rule
    doc["rules"] = rules
    return save_dialplan(doc, f"rule {index} changed")


def delete_rule(index: int) -> int | None:
    """Remove the rule at ``index``; None when there is none."""
    doc = get_dialplan()
    rules = list(doc.get("rules", []))
    if not 0 <= index < len(rules):
        return None
    del rules[index]
    doc["rules"] = rules
    return save_dialplan(doc, f"rule {index} deleted")


def move_rule(index: int, to: int) -> int | None:
    """Move the rule at ``index`` to position ``to``; None when either is out of range."""
    doc = get_dialplan()
    rules = list(doc.get("rules", []))
    if not (0 <= index < len(rules) and 0 <= to < len(rules)):
        return None
    rules.insert(to, rules.pop(index))
    doc["rules"] = rules
    return save_dialplan(doc, f"rule {index} moved to {to}")


def save_user_policy(username: str, policy: Any) -> int:
    """Set a user's permissions, caller ID, emergency callback number, extensions and DIDs."""
    if not isinstance(username, str) or not username or len(username) > 128:
        raise StoreError("a user name is 1-128 characters")
    doc = get_dialplan()
    users = dict(doc.get("users", {}))
    users[username] = policy
    doc["users"] = users
    return save_dialplan(doc, f"dial permissions of {username[:64]} saved")


EMERGENCY_KEYS = ("default_callback", "locations", "probe_interval", "probe_misses")
"""Plan-wide settings ``save_settings`` takes."""


def save_settings(settings: Any) -> int:
    """Set plan-wide settings: the default emergency callback number, the callback
    numbers by location (``[{"network", "callback"}]``), the probes' interval and misses."""
    if not isinstance(settings, dict) or not set(settings) <= set(EMERGENCY_KEYS):
        raise StoreError(f"settings take {', '.join(EMERGENCY_KEYS)}")
    doc = get_dialplan()
    doc.update(settings)
    return save_dialplan(doc, "dial plan settings saved")


def which_rule(number: Any) -> dict[str, Any]:
    """What the stored plan does with ``number``: the rule it takes (index, pattern,
    permission), the number sent on and the gateways, or ``{"rule": None}``."""
    if not isinstance(number, str) or not is_number(number) or len(number) > 64:
        raise StoreError("a number is +, digits, * or # (64 at most)")
    try:
        plan = parse_dialplan(get_dialplan())
    except DialPlanError as e:
        raise StoreError(f"the stored dial plan does not compile: {e}") from None
    found = plan.match(number)
    if found is None:
        return {"number": number, "rule": None}
    rule = found.rule
    return {
        "number": number,
        "rule": {"index": rule.index, "pattern": rule.pattern, "permission": rule.permission},
        "sent": found.number,
        "gateways": [{"name": g.name, "uri": g.uri(found.number)} for g in found.gateways],
    }
