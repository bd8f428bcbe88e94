"""The master's ring groups and call limits: two parts of the dial plan document.

Ring groups (``groups``, ``sipcore.ring_groups``) and concurrent-call limits
(``limits``, ``sipcore.call_limits``) live in the plan document that
``store.dialplan`` keeps and every configuration version pushes to the
nodes; each change here goes through ``store.dialplan.save_dialplan``, so a
group that loops, a number already someone's or a limit for no gateway is
refused before anything is stored.
"""

from typing import Any

from store.db import StoreError
from store.dialplan import get_dialplan, save_dialplan


def get_groups() -> list[dict[str, Any]]:
    """The ring groups, as stored."""
    return list(get_dialplan().get("groups", []))


def save_group(group: Any) -> int:
    """Add a ring group or replace the one of the same name; the new version."""
    if not isinstance(group, dict) or not isinstance(group.get("name"), str):
        raise StoreError("a ring group is a JSON object with a name")
    doc = get_dialplan()
    groups = [g for g in doc.get("groups", []) if g.get("name") != group["name"]]
    doc["groups"] = [*groups, group]
    return save_dialplan(doc, f"ring group {group['name'][:64]} saved")


def delete_group(name: str) -> int | None:
    """Remove ring group ``name`` (refused while another group names it); None when there
    is none."""
    doc = get_dialplan()
    groups = [g for g in doc.get("groups", []) if g.get("name") != name]
    if len(groups) == len(doc.get("groups", [])):
        return None
    for g in groups:
        if name in g.get("members", []):
            # Left there, the name would silently turn into a user's.
            raise StoreError(f"ring group {g.get('name')} has {name} as a member")
    doc["groups"] = groups
    return save_dialplan(doc, f"ring group {name[:64]} deleted")


def get_limits() -> dict[str, Any]:
    """The concurrent-call limits, as stored (``{}``: none)."""
    return dict(get_dialplan().get("limits", {}))


def save_limits(limits: Any) -> int:
    """Replace the concurrent-call limits (``{"user", "gateway", "users", "gateways"}``)."""
    if not isinstance(limits, dict):
        raise StoreError("the limits are a JSON object")
    doc = get_dialplan()
    doc["limits"] = limits
    return save_dialplan(doc, "call limits saved")
