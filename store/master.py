"""The configuration master's database: the cluster's source of truth.

Separate from the node's models (:mod:`store.models`): its own database
proxy, tables prefixed ``master_``, bound by :func:`init_master_store` to a
URL (SQLite by default, PostgreSQL by URL, through :func:`store.db.open_database`).
It holds the domain settings, the SIP users (HA1 only), the nodes, the
configuration versions and the admin accounts (password hashes only).

Every change to what nodes serve goes through :func:`new_version`, which
checks it (``store.validate``), numbers it and keeps its content
(``store.versions``); :func:`config_for` builds what is pushed for a version.
"""

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import peewee
from werkzeug.security import check_password_hash, generate_password_hash

from store.db import StoreError, open_database
from store.migrations import MASTER_MIGRATIONS
from store.schema import migrate
from store.users import compute_ha1s, validate_domain, validate_username

log = logging.getLogger(__name__)

master_db = peewee.DatabaseProxy()
"""The database of every master model; bound by :func:`init_master_store`."""

MAX_USERS = 1_000_000
"""Upper bound on SIP users the master holds (a push carries them all)."""


class MasterModel(peewee.Model):
    """Base of the master's models."""

    class Meta:
        database = master_db


class Setting(MasterModel):
    """One cluster setting (``domain``, ``aliases``...), JSON-encoded."""

    key = peewee.TextField(primary_key=True)
    value = peewee.TextField()

    class Meta:
        table_name = "master_settings"


class SipUser(MasterModel):
    """A SIP user of the cluster's domain: HA1 digests only, never a password."""

    username = peewee.TextField(unique=True)
    ha1_md5 = peewee.CharField(max_length=32)
    ha1_sha256 = peewee.CharField(max_length=64)
    enabled = peewee.BooleanField(default=True)
    created_at = peewee.DoubleField(default=time.time)

    class Meta:
        table_name = "master_users"


class ClusterNode(MasterModel):
    """A node the master manages, and the last version it acknowledged."""

    node_id = peewee.TextField(unique=True)
    sip = peewee.TextField()
    bus = peewee.TextField(default="")
    snapshot = peewee.TextField(default="")
    """Its snapshot ROUTER endpoint: with ``bus``, what its peers connect to."""
    control = peewee.TextField()
    public_key = peewee.TextField()
    weight = peewee.IntegerField(default=50)
    tls_port = peewee.IntegerField(default=0)
    """Its SIP over TLS port as it last reported it (``web.push``), 0 for none."""
    acked_version = peewee.IntegerField(default=0)
    acked_at = peewee.DoubleField(default=0.0)
    last_error = peewee.TextField(default="")

    class Meta:
        table_name = "master_nodes"


class ConfigVersion(MasterModel):
    """One configuration version: its number, when and why it was made."""

    version = peewee.AutoField()
    created_at = peewee.DoubleField(default=time.time)
    reason = peewee.TextField()

    class Meta:
        table_name = "master_versions"


class Admin(MasterModel):
    """A dashboard administrator (werkzeug's salted scrypt hash of the password)."""

    username = peewee.TextField(unique=True)
    password_hash = peewee.TextField()
    created_at = peewee.DoubleField(default=time.time)

    class Meta:
        table_name = "master_admins"


class CallRecord(MasterModel):
    """One call detail record, assembled from every node's call events (``store.cdrs``)."""

    id = peewee.AutoField()
    call_id = peewee.TextField(unique=True)
    caller = peewee.TextField()
    callee = peewee.TextField()
    started_at = peewee.DoubleField(index=True)
    answered_at = peewee.DoubleField(null=True)
    ended_at = peewee.DoubleField(null=True)
    bye_at = peewee.DoubleField(null=True)
    """When the first BYE was seen (the end of an answered call)."""
    final_at = peewee.DoubleField(null=True)
    """When the first failure or CANCEL was seen (the end of an unanswered call)."""
    lost_at = peewee.DoubleField(null=True)
    """When a survivor ended the call because its node died and an end was gone."""
    duration = peewee.DoubleField(null=True)
    outcome = peewee.TextField(index=True)
    status = peewee.IntegerField(null=True)
    """The final failure status (486, 480...), if the call failed."""
    cancelled = peewee.BooleanField(default=False)
    nodes = peewee.TextField(default="[]")
    """The nodes that saw the call, as a JSON list."""

    class Meta:
        table_name = "master_cdrs"


class CdrCursor(MasterModel):
    """The last call event stored from one node: later ones only are new."""

    node_id = peewee.TextField(primary_key=True)
    seq = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "master_cdr_cursors"


class EmergencyCall(MasterModel):
    """A call to an emergency number (its record in ``CallRecord`` is marked by it)."""

    call_id = peewee.TextField(primary_key=True)

    class Meta:
        table_name = "master_emergency_calls"


class JoinToken(MasterModel):
    """A join token (``store.join_tokens``): only its SHA-256 is kept, never the token."""

    id = peewee.AutoField()
    digest = peewee.CharField(max_length=64, unique=True)
    created_at = peewee.DoubleField(default=time.time)
    expires_at = peewee.DoubleField()
    used_at = peewee.DoubleField(null=True)
    used_by = peewee.TextField(default="")
    """The node that joined with it."""

    class Meta:
        table_name = "master_join_tokens"


MASTER_MODELS = (
    Setting,
    SipUser,
    ClusterNode,
    ConfigVersion,
    Admin,
    CallRecord,
    CdrCursor,
    JoinToken,
    EmergencyCall,
)
"""Every master model of this module, in table-creation order."""


def master_models() -> tuple[type[MasterModel], ...]:
    """Every table of the master's database: this module's and the modules' that
    build on it (the audit log, alarms), which import this one and so are imported here late."""
    from store.alarms import Alarm
    from store.audit import AuditEntry
    from store.versions import VersionContent

    return (*MASTER_MODELS, AuditEntry, Alarm, VersionContent)


def init_master_store(url: str) -> peewee.Database:
    """Open the master's database at ``url``, bind the models, create missing tables
    (an older schema migrates forward: ``store.schema``)."""
    db = open_database(url)
    master_db.initialize(db)
    migrate(db, "master", master_models(), MASTER_MIGRATIONS)
    return db


def close_master_store() -> None:
    """Close and unbind the master's database."""
    db = master_db.obj
    if db is not None and not db.is_closed():
        db.close()
    master_db.initialize(None)


def get_setting(key: str, default: Any = None) -> Any:
    """The setting under ``key``, or ``default``."""
    row = Setting.get_or_none(Setting.key == key)
    return default if row is None else json.loads(row.value)


def set_setting(key: str, value: Any) -> None:
    """Store ``value`` (JSON-ready) under ``key``."""
    (
        Setting.insert(key=key, value=json.dumps(value))
        .on_conflict(conflict_target=[Setting.key], preserve=[Setting.value])
        .execute()
    )


def domain() -> str:
    """The cluster's SIP domain (also the digest realm)."""
    value = get_setting("domain")
    if not value:
        raise StoreError(
            "the master has no domain: set [master] domain and run `run.py master init`"
        )
    return str(value)


def new_version(reason: str) -> int:
    """Record a new configuration version and keep its content (``store.versions``); return
    its number. The configuration is checked first (``store.validate``): a refused one
    raises ``ConfigError`` saying why, and no version is made (the caller's transaction,
    rolled back by the error, undoes the change)."""
    from store import validate, versions

    with master_db.atomic():
        content = versions.current_content()
        validate.check_config(content["domain"], content["dialplan"], versions.previous_dialplan())
        number = ConfigVersion.create(reason=reason[:200]).version
        versions.keep(number, content)
    return number


def current_version() -> int:
    """The newest configuration version (0 when none was made)."""
    return ConfigVersion.select(peewee.fn.MAX(ConfigVersion.version)).scalar() or 0


def _owned_numbers() -> set[str]:
    """The extensions and DIDs the dial plan gives users (``store.dialplan``): no user may
    be named as one, or calls to it would reach someone else."""
    doc = get_setting("dialplan") or {}
    owned = {
        n
        for policy in doc.get("users", {}).values()
        if isinstance(policy, dict)
        for n in policy.get("numbers", [])
    }
    # A ring group's numbers (sipcore.ring_groups) likewise.
    return owned | {
        n
        for group in doc.get("groups", [])
        if isinstance(group, dict)
        for n in group.get("numbers", [])
    }


def save_user(username: str, password: str, enabled: bool | None = True) -> int:
    """Add a user or change its password; return the new configuration version.

    ``enabled=None`` keeps an existing user's state (a new one is enabled).
    """
    validate_username(username)
    if username in _owned_numbers():
        raise StoreError(f"{username} is a user's extension or DID in the dial plan")
    if not isinstance(password, str) or not password:
        raise StoreError("password must be a non-empty string")
    ha1 = compute_ha1s(username, domain(), password)
    kept = [SipUser.ha1_md5, SipUser.ha1_sha256] + ([] if enabled is None else [SipUser.enabled])
    with master_db.atomic():
        if (
            SipUser.get_or_none(SipUser.username == username) is None
            and SipUser.select().count() >= MAX_USERS
        ):
            raise StoreError("the master holds %d users already (the limit)" % MAX_USERS)
        (
            SipUser.insert(
                username=username,
                ha1_md5=ha1["MD5"],
                ha1_sha256=ha1["SHA-256"],
                enabled=enabled is not False,
            )
            .on_conflict(conflict_target=[SipUser.username], preserve=kept)
            .execute()
        )
        version = new_version(f"user {username} saved")
    log.info("user %s saved (configuration %d)", username, version)
    return version


def set_user_enabled(username: str, enabled: bool) -> int | None:
    """Enable or disable a user (a disabled one can neither register nor call, but for
    emergency numbers); the new configuration version, or None if there is no such user."""
    with master_db.atomic():
        if not SipUser.update(enabled=bool(enabled)).where(SipUser.username == username).execute():
            return None
        version = new_version(f"user {username} {'enabled' if enabled else 'disabled'}")
    log.info(
        "user %s %s (configuration %d)", username, "enabled" if enabled else "disabled", version
    )
    return version


IMPORT_CHUNK = 1000
"""Users hashed, and written, between two calls of an import's ``progress``."""


def save_users(
    rows: list[tuple[str, str]], reason: str, progress: Callable[[str, int], None] | None = None
) -> int:
    """Add or change many ``(username, password)`` at once, one version; return it.

    Every row is checked and hashed before the one transaction that writes
    them all (so a bad row writes nothing). ``progress(phase, done)`` is called
    every :data:`IMPORT_CHUNK` rows of the ``hashing`` and ``writing`` phases.
    """
    realm = domain()
    records = []
    owned = _owned_numbers()
    now = time.time()
    for n, (username, password) in enumerate(rows):
        if n % IMPORT_CHUNK == 0 and progress is not None:
            progress("hashing", n)
        if username in owned:
            raise StoreError(f"{username} is a user's extension or DID in the dial plan")
        if not isinstance(password, str) or not password:
            raise StoreError(f"user {username} has no password")
        secret = f"{validate_username(username)}:{realm}:{password}".encode()
        records.append(
            (
                username,
                hashlib.md5(secret).hexdigest(),
                hashlib.sha256(secret).hexdigest(),
                True,
                now,
            )
        )
    table, param = SipUser._meta.table_name, master_db.param
    # One prepared statement run for every row (the driver's executemany): building a
    # multi-row statement per chunk in peewee costs more than writing it.
    upsert = (
        f"INSERT INTO {table} (username, ha1_md5, ha1_sha256, enabled, created_at) "
        f"VALUES ({', '.join([param] * 5)}) ON CONFLICT (username) DO UPDATE SET "
        "ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256"
    )
    with master_db.atomic():
        if SipUser.select().count() + len(records) > MAX_USERS:
            raise StoreError("more than %d users" % MAX_USERS)
        cursor = master_db.cursor()
        for n in range(0, len(records), IMPORT_CHUNK):
            if progress is not None:
                progress("writing", n)
            cursor.executemany(upsert, records[n : n + IMPORT_CHUNK])
        return new_version(reason)


def delete_user(username: str) -> int | None:
    """Delete a user; the new configuration version, or None if there was no such user."""
    with master_db.atomic():
        if not SipUser.delete().where(SipUser.username == username).execute():
            return None
        return new_version(f"user {username} deleted")


def _users(search: str, enabled: bool | None) -> "peewee.ModelSelect[SipUser]":
    query = SipUser.select(SipUser.username, SipUser.enabled, SipUser.created_at)
    if search:
        query = query.where(SipUser.username.contains(search))
    if enabled is not None:
        query = query.where(SipUser.enabled == enabled)
    return query


def list_users(
    search: str = "", limit: int = 100, offset: int = 0, enabled: bool | None = None
) -> list[dict[str, Any]]:
    """Users by name (no HA1s), optionally those whose name contains ``search`` and those
    enabled (``True``) or disabled (``False``)."""
    rows = _users(search, enabled).order_by(SipUser.username).limit(limit).offset(offset).dicts()
    return list(cast(Iterable[dict[str, Any]], rows))


def count_users(search: str = "", enabled: bool | None = None) -> int:
    """How many SIP users the master holds (those matching, when filters are given)."""
    if not search and enabled is None:
        return SipUser.select().count()
    return int(_users(search, enabled).count())


def save_node(
    node_id: str,
    sip: str,
    control: str,
    public_key: str,
    bus: str = "",
    weight: int = 50,
    snapshot: str = "",
) -> None:
    """Add or change a node the master pushes to."""
    if not node_id or not control or not public_key:
        raise StoreError("a node needs an id, a control endpoint and a public key")
    (
        ClusterNode.insert(
            node_id=node_id,
            sip=sip,
            bus=bus,
            snapshot=snapshot,
            control=control,
            public_key=public_key,
            weight=weight,
        )
        .on_conflict(
            conflict_target=[ClusterNode.node_id],
            preserve=[
                ClusterNode.sip,
                ClusterNode.bus,
                ClusterNode.snapshot,
                ClusterNode.control,
                ClusterNode.public_key,
                ClusterNode.weight,
            ],
        )
        .execute()
    )


def remove_node(node_id: str) -> int | None:
    """Forget a node; the new configuration version (its peers drop it), or None if
    there was no such node."""
    with master_db.atomic():
        if not ClusterNode.delete().where(ClusterNode.node_id == node_id).execute():
            return None
        CdrCursor.delete().where(CdrCursor.node_id == node_id).execute()
        version = new_version(f"node {node_id} removed")
    log.info("node %s removed (configuration %d)", node_id, version)
    return version


def list_nodes() -> list[dict[str, Any]]:
    """Every node with its endpoints, weight and acknowledged version."""
    rows = ClusterNode.select().order_by(ClusterNode.node_id).dicts()
    return list(cast(Iterable[dict[str, Any]], rows))


MAX_WEIGHT = 65535
"""Largest SRV weight (RFC 2782: 16 bits)."""


def set_weight(node_id: str, weight: int) -> None:
    """Set a node's SRV weight (0 to 65535); ``StoreError`` for a bad value or node."""
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= MAX_WEIGHT:
        raise StoreError("weight of %s must be an integer from 0 to %d" % (node_id, MAX_WEIGHT))
    if not ClusterNode.update(weight=weight).where(ClusterNode.node_id == node_id).execute():
        raise StoreError("no node %r" % (node_id,))


def set_tls_port(node_id: str, port: int) -> None:
    """Remember the SIP over TLS port a node reported (0: it takes no TLS);
    ``StoreError`` for a bad value."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise StoreError("TLS port of %s must be an integer from 0 to 65535" % (node_id,))
    ClusterNode.update(tls_port=port).where(ClusterNode.node_id == node_id).execute()


def zone_nodes() -> list[tuple[str, str, int, int, int]]:
    """``(node id, address, SIP port, weight, TLS port)`` of every node with a SIP
    address (TLS port 0: none reported)."""
    out = []
    for n in list_nodes():
        host, _, port = str(n["sip"]).rpartition(":")
        if host and port.isdigit():
            out.append((str(n["node_id"]), host, int(port), int(n["weight"]), int(n["tls_port"])))
    return out


def record_ack(node_id: str, version: int, error: str = "") -> None:
    """Remember what a node acknowledged (or the error of the last push)."""
    fields: dict[Any, Any] = {ClusterNode.last_error: error[:500]}
    if not error:
        fields.update({ClusterNode.acked_version: version, ClusterNode.acked_at: time.time()})
    ClusterNode.update(fields).where(ClusterNode.node_id == node_id).execute()


def config_for(version: int) -> dict[str, Any]:
    """What version ``version`` tells every node: the domain and every user's HA1s."""
    query = (
        SipUser.select(SipUser.username, SipUser.ha1_md5, SipUser.ha1_sha256, SipUser.enabled)
        .order_by(SipUser.username)
        .dicts()
    )
    users = list(cast(Iterable[dict[str, Any]], query))
    return {
        "version": version,
        "domain": domain(),
        "users": users,
        **peers_push(),
        **_dialplan_part(),
        **_settings_part(),
    }


def peers_push() -> dict[str, Any]:
    """The ``peers`` key of a push: every node's id, bus and snapshot endpoints, public
    key and SIP address, from which each node takes its peers (``actors.membership``).

    Empty (the key left out, so each node keeps the peers of its own file) while
    some node lacks a bus or snapshot endpoint: a partial list would cut nodes
    off each other.
    """
    nodes = list_nodes()
    if not nodes or any(not n["bus"] or not n["snapshot"] for n in nodes):
        return {}
    return {
        "peers": [
            {
                "id": n["node_id"],
                "bus": n["bus"],
                "snapshot": n["snapshot"],
                "public_key": n["public_key"],
                "sip": n["sip"],
            }
            for n in nodes
        ]
    }


def _dialplan_part() -> dict[str, Any]:
    """The dial plan a version carries (``store.dialplan``), once the master has one."""
    from store.dialplan import pushed_dialplan

    doc = pushed_dialplan()
    return {} if doc is None else {"dialplan": doc}


def _settings_part() -> dict[str, Any]:
    """The SIP settings a version carries (``store.sip_settings``), once saved."""
    from store.sip_settings import pushed_settings

    doc = pushed_settings()
    return {} if doc is None else {"settings": doc}


def add_admin(username: str, password: str) -> None:
    """Create or reset an admin account (only a slow salted hash is kept)."""
    if not username or not password:
        raise StoreError("an admin needs a name and a password")
    digest = generate_password_hash(password)
    (
        Admin.insert(username=username, password_hash=digest)
        .on_conflict(conflict_target=[Admin.username], preserve=[Admin.password_hash])
        .execute()
    )


def check_admin(username: str, password: str) -> bool:
    """Whether ``password`` is ``username``'s (a hash is checked even for an unknown name)."""
    row = Admin.get_or_none(Admin.username == username)
    digest = row.password_hash if row is not None else _DUMMY_HASH
    ok = check_password_hash(digest, password or "")
    return ok and row is not None


_DUMMY_HASH = generate_password_hash("not a password of anyone")
"""Checked for unknown names, so a login takes as long whether the name exists or not."""


def setup(domain_name: str) -> None:
    """Set the cluster's domain (first run)."""
    set_setting("domain", validate_domain(domain_name.lower()))
