"""The content of configuration versions, so that any recent one can be restored.

Each version made by :func:`store.master.new_version` keeps what it told the
nodes: the domain, every user's HA1s and the dial plan (the peer list is not
kept: it follows the nodes that exist, not a choice to undo). Only the newest
:data:`KEEP` versions keep their content (compressed JSON, in base64); older ones keep
their number and reason. :func:`restore` makes the users and the dial plan
those of an earlier version again, as a new version (validated and rolled
out like any change).
"""

import base64
import json
import time
import zlib
from collections.abc import Iterable
from typing import Any, cast

import peewee

from store.db import StoreError
from store.master import (ConfigVersion, MasterModel, Setting, SipUser, current_version, domain,
                          get_setting, master_db, new_version, set_setting)

KEEP = 50
"""Versions whose content is kept (the newest)."""
DIALPLAN_KEY = "dialplan"
"""The master setting of the dial plan (``store.dialplan.KEY``)."""


class VersionContent(MasterModel):
    """What one configuration version told the nodes (compressed JSON, in base64)."""

    version = peewee.IntegerField(primary_key=True)
    content = peewee.TextField()
    """Base64 of zlib'd JSON: text, so that backups (JSON lines) carry it as it is."""

    class Meta:
        table_name = "master_version_content"


def _pack(content: dict[str, Any]) -> str:
    return base64.b64encode(zlib.compress(json.dumps(content).encode(), 6)).decode()


def _unpack(text: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(zlib.decompress(base64.b64decode(text))))


def current_content() -> dict[str, Any]:
    """The users and dial plan the master holds now, as a version keeps them."""
    query = (SipUser.select(SipUser.username, SipUser.ha1_md5, SipUser.ha1_sha256,
                            SipUser.enabled).order_by(SipUser.username).dicts())
    return {"domain": domain(), "users": list(cast(Iterable[dict[str, Any]], query)),
            "dialplan": get_setting(DIALPLAN_KEY)}


def keep(version: int, content: dict[str, Any]) -> None:
    """Store ``version``'s content and forget the content of versions older than the newest
    :data:`KEEP`."""
    # A number may come back when versions were deleted (a database emptied by hand).
    (VersionContent.insert(version=version, content=_pack(content))
     .on_conflict(conflict_target=[VersionContent.version], preserve=[VersionContent.content])
     .execute())
    (VersionContent.delete()
     .where(VersionContent.version <= version - KEEP).execute())


def content(version: int) -> dict[str, Any] | None:
    """What ``version`` told the nodes, None when it is unknown or too old."""
    row = VersionContent.get_or_none(VersionContent.version == version)
    return None if row is None else _unpack(row.content)


def previous_dialplan() -> dict[str, Any] | None:
    """The dial plan of the newest version that kept content (None: none)."""
    row = VersionContent.select().order_by(VersionContent.version.desc()).first()
    return None if row is None else _unpack(row.content)["dialplan"]


def list_versions(limit: int = KEEP) -> list[dict[str, Any]]:
    """The newest versions: number, time, reason and whether it can be restored."""
    kept = {int(r.version) for r in VersionContent.select(VersionContent.version)}
    rows = (ConfigVersion.select().order_by(ConfigVersion.version.desc()).limit(limit).dicts())
    return [{**r, "restorable": r["version"] in kept}
            for r in cast(Iterable[dict[str, Any]], rows)]


def restore(version: int) -> int | None:
    """Make the users and dial plan those of ``version`` again, as a new version; its
    number, or None when ``version`` is unknown or its content no longer kept.
    ``StoreError`` when the restored configuration is refused (its domain is not the
    master's, or the checks of ``store.validate``)."""
    old = content(version)
    if old is None:
        return None
    if old["domain"] != domain():
        raise StoreError(f"version {version} is for domain {old['domain']}, the master serves "
                         f"{domain()}")
    with master_db.atomic():
        SipUser.delete().execute()
        for chunk in peewee.chunked(old["users"], 100):
            SipUser.insert_many(chunk).execute()
        if old["dialplan"] is None:
            Setting.delete().where(Setting.key == DIALPLAN_KEY).execute()
        else:
            set_setting(DIALPLAN_KEY, old["dialplan"])
        return new_version(f"version {version} restored")


ROLLOUT_KEY = "rollout_failed"
"""Master setting: the version whose rollout stopped, the node and the reason."""


def record_rollout_failure(version: int, node_id: str, reason: str) -> None:
    """Remember that ``version`` broke ``node_id`` (which rolled back): pushing it stops."""
    set_setting(ROLLOUT_KEY, {"version": version, "node": node_id, "reason": reason[:500],
                              "at": time.time()})


def rollout_failure() -> dict[str, Any] | None:
    """The failed rollout of the newest version, None when it was not stopped (a newer
    version, such as a fix or a restore, rolls out afresh)."""
    failed = get_setting(ROLLOUT_KEY)
    if not failed or failed.get("version") != current_version():
        return None
    return dict(failed)
