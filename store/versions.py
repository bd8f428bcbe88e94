"""The content of configuration versions, so that any recent one can be restored.

Each version made by :func:`store.master.new_version` keeps what it told the
nodes: the domain, every user's HA1s and the dial plan (the peer list is not
kept: it follows the nodes that exist, not a choice to undo). Only the newest
:data:`KEEP` versions keep their content (compressed JSON), fewer when they
would take more than :data:`MAX_KEPT_BYTES`; older ones keep their number
and reason. Every change reads every user to keep them (about 0.5 s for
100,000 users on a loaded two-core machine). :func:`restore` makes the users and the dial plan
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
from store.master import (
    ConfigVersion,
    MasterModel,
    Setting,
    SipUser,
    current_version,
    domain,
    get_setting,
    master_db,
    new_version,
    set_setting,
)

KEEP = 50
"""Versions whose content is kept (the newest)."""
MAX_KEPT_BYTES = 512 * 1024 * 1024
"""Bytes of kept content at most: with many users (100,000 take about 8 MiB a version)
fewer than :data:`KEEP` versions stay restorable."""
DIALPLAN_KEY = "dialplan"
"""The master setting of the dial plan (``store.dialplan.KEY``)."""


class VersionContent(MasterModel):
    """What one configuration version told the nodes."""

    version = peewee.IntegerField(primary_key=True)
    content = peewee.TextField()
    """The domain and users: base64 of zlib'd JSON (text, so that backups, JSON lines,
    carry it as it is)."""
    dialplan = peewee.TextField(null=True)
    """The dial plan's JSON, apart: the next version's check reads it alone."""

    class Meta:
        table_name = "master_version_content"


_USER_FIELDS = ("username", "ha1_md5", "ha1_sha256", "enabled")


def _pack(content: dict[str, Any]) -> str:
    text = json.dumps(
        {"domain": content["domain"], "users": content["users"]}, separators=(",", ":")
    )
    return base64.b64encode(zlib.compress(text.encode(), 1)).decode()


def _unpack(row: VersionContent) -> dict[str, Any]:
    packed = json.loads(zlib.decompress(base64.b64decode(row.content)))
    return {
        "domain": packed["domain"],
        "users": [dict(zip(_USER_FIELDS, u, strict=True)) for u in packed["users"]],
        "dialplan": None if row.dialplan is None else json.loads(row.dialplan),
    }


def current_content() -> dict[str, Any]:
    """The users and dial plan the master holds now, as a version keeps them (each user a
    ``[username, ha1_md5, ha1_sha256, enabled]``: read straight from the cursor, since
    every change reads every user)."""
    query = SipUser.select(
        SipUser.username, SipUser.ha1_md5, SipUser.ha1_sha256, SipUser.enabled
    ).order_by(SipUser.username)
    users = [
        [u, md5, sha256, bool(enabled)]
        for u, md5, sha256, enabled in master_db.execute(query).fetchall()
    ]
    return {"domain": domain(), "users": users, "dialplan": get_setting(DIALPLAN_KEY)}


def keep(version: int, content: dict[str, Any]) -> None:
    """Store ``version``'s content and forget the content of versions older than the newest
    :data:`KEEP`, or than those that fill :data:`MAX_KEPT_BYTES` (the newest is always kept)."""
    plan = None if content["dialplan"] is None else json.dumps(content["dialplan"])
    # A number may come back when versions were deleted (a database emptied by hand).
    (
        VersionContent.insert(version=version, content=_pack(content), dialplan=plan)
        .on_conflict(
            conflict_target=[VersionContent.version],
            preserve=[VersionContent.content, VersionContent.dialplan],
        )
        .execute()
    )
    sizes = (
        VersionContent.select(
            VersionContent.version, peewee.fn.LENGTH(VersionContent.content).coerce(False)
        )
        .order_by(VersionContent.version.desc())
        .tuples()
    )
    total, old = 0, []
    for i, (number, size) in enumerate(cast(Iterable[tuple[int, int]], sizes)):
        total += int(size)
        if i and (i >= KEEP or total > MAX_KEPT_BYTES):
            old.append(number)
    for chunk in peewee.chunked(old, 100):
        VersionContent.delete().where(VersionContent.version.in_(chunk)).execute()


def content(version: int) -> dict[str, Any] | None:
    """What ``version`` told the nodes, None when it is unknown or too old."""
    row = VersionContent.get_or_none(VersionContent.version == version)
    return None if row is None else _unpack(row)


def previous_dialplan() -> dict[str, Any] | None:
    """The dial plan of the newest version that kept content (None: none)."""
    row = (
        VersionContent.select(VersionContent.dialplan)
        .order_by(VersionContent.version.desc())
        .first()
    )
    return None if row is None or row.dialplan is None else json.loads(row.dialplan)


def list_versions(limit: int = KEEP) -> list[dict[str, Any]]:
    """The newest versions: number, time, reason and whether it can be restored."""
    kept = {int(r.version) for r in VersionContent.select(VersionContent.version)}
    rows = ConfigVersion.select().order_by(ConfigVersion.version.desc()).limit(limit).dicts()
    return [{**r, "restorable": r["version"] in kept} for r in cast(Iterable[dict[str, Any]], rows)]


def restore(version: int) -> int | None:
    """Make the users and dial plan those of ``version`` again, as a new version; its
    number, or None when ``version`` is unknown or its content no longer kept.
    ``StoreError`` when the restored configuration is refused (its domain is not the
    master's, or the checks of ``store.validate``)."""
    old = content(version)
    if old is None:
        return None
    if old["domain"] != domain():
        raise StoreError(
            f"version {version} is for domain {old['domain']}, the master serves {domain()}"
        )
    with master_db.atomic():
        SipUser.delete().execute()
        for chunk in peewee.chunked(old["users"], 100):
            SipUser.insert_many(chunk).execute()
        if old["dialplan"] is None:
            Setting.delete().where(Setting.key == DIALPLAN_KEY).execute()
        else:
            set_setting(DIALPLAN_KEY, old["dialplan"])
        return new_version(f"version {version} restored")


def number_past(used: int, reason: str) -> int:
    """Make the current configuration a new version numbered past ``used``, a number
    handed out before this master's database was restored (a node takes only a newer
    number than the one it runs, and would keep a different content of the same one)."""
    with master_db.atomic():
        if current_version() < used:  # the skipped numbers' content is not ours
            ConfigVersion.create(version=used, reason="numbers used before a restore")
        return new_version(reason)


ROLLOUT_KEY = "rollout_failed"
"""Master setting: the version whose rollout stopped, the node and the reason."""


def record_rollout_failure(version: int, node_id: str, reason: str) -> None:
    """Remember that ``version`` broke ``node_id`` (which rolled back): pushing it stops."""
    set_setting(
        ROLLOUT_KEY,
        {"version": version, "node": node_id, "reason": reason[:500], "at": time.time()},
    )


def rollout_failure() -> dict[str, Any] | None:
    """The failed rollout of the newest version, None when it was not stopped (a newer
    version, such as a fix or a restore, rolls out afresh)."""
    failed = get_setting(ROLLOUT_KEY)
    if not failed or failed.get("version") != current_version():
        return None
    return dict(failed)
