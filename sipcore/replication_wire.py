"""Replication wire format: updates, heartbeats, snapshots, and the set digest.

Bodies are compact JSON; a binding is a list in :data:`FIELDS` order.
Decoders validate and raise :class:`WireError` for anything malformed,
never another exception. An update ``{"id", "e", "t", "b": [rows]}`` holds
one group commit of node ``id`` in epoch ``e`` (consecutive sequence
numbers); a heartbeat ``{"id", "t", "e", "s", "st", "v"}`` the sender's wall
clock, epoch, last published sequence number, sync state and the versions
it holds of other origins; a snapshot request ``{"id", "r"}`` is answered
by batches ``{"r", "n", "b"}`` and an end marker ``{"r", "n", "c", "d", "e",
"s", "v"}`` (batch and binding counts, digest of the batch bodies, the
server's own (epoch, seq) and the versions it held of other origins when it
took the snapshot).

A version vector ``"v"`` maps an origin node id to ``[epoch, seq]``: the
last change of that origin the sender holds, all earlier ones of that
epoch included. It is optional on the wire (an empty map when absent).

Every body carries ``"pv"``, its protocol version (:mod:`sipcore.protocol`):
a body of a newer version than this release reads raises
:class:`NewerMessage` (a ``WireError`` the replicator counts apart), except a
heartbeat, read whatever its version, whose ``pv`` tells what its sender
speaks (``Heartbeat.protocol``).
"""

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from operator import attrgetter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from .location import Binding
from .protocol import (
    FIRST_VERSION,
    PROTOCOL_VERSION,
    NewerProtocol,
    ProtocolError,
    check_version,
    version_of,
)

if TYPE_CHECKING:
    from .authguard import Ban

FIELDS = (
    "aor",
    "key",
    "contact",
    "expires_at",
    "call_id",
    "cseq",
    "q",
    "path",
    "instance",
    "reg_id",
    "received",
    "user_agent",
    "origin",
    "epoch",
    "seq",
    "updated_at",
    "deleted",
)
"""Order of a binding's fields on the wire (the ``Binding`` constructor's order)."""

if tuple(Binding.__dataclass_fields__) != FIELDS:
    raise ImportError("sipcore.replication_wire FIELDS must follow Binding's field order")

SYNCING, SYNCED = "syncing", "synced"

MAX_VERSIONS = 1000
"""Most origins a version vector may name."""

Versions = dict[str, tuple[int, int]]
"""A version vector: origin node id -> (epoch, seq) of the last change held."""

_NUM, _INT, _STR, _BOOL, _LIST = "number", "integer", "string", "boolean", "list"
_KINDS = {
    "expires_at": _NUM,
    "q": _NUM,
    "updated_at": _NUM,
    "cseq": _INT,
    "reg_id": _INT,
    "epoch": _INT,
    "seq": _INT,
    "path": _LIST,
    "deleted": _BOOL,
}
_OPTIONAL = {"q", "instance", "reg_id", "received", "user_agent"}
_SPEC = tuple((f, _KINDS.get(f, _STR), f in _OPTIONAL) for f in FIELDS)
_TYPES = {_NUM: (int, float), _INT: (int,), _STR: (str,), _BOOL: (bool,), _LIST: (list,)}
_NFIELDS = len(FIELDS)
_row_of = attrgetter(*FIELDS)
_dumps = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, check_circular=False, allow_nan=False
).encode


class WireError(ValueError):
    """A replication message that is malformed or inconsistent."""


class NewerMessage(WireError):
    """A message of a newer protocol version than this release reads: dropped and
    counted (``newer_protocol``), not a bad message."""


class SnapshotError(Exception):
    """A snapshot stream that is incomplete or does not match its end marker."""


def _reject_constant(name: str) -> NoReturn:
    raise WireError(f"non-finite number {name} in message")


def _loads(data: bytes, versioned: bool = True) -> dict[str, Any]:
    """Parse a JSON object body, turning every failure into ``WireError``; with
    ``versioned``, ``NewerMessage`` when its protocol version is newer than ours."""
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, TypeError, RecursionError) as e:
        if isinstance(e, WireError):
            raise
        raise WireError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise WireError("message body is not a JSON object")
    try:
        check_version(obj) if versioned else version_of(obj)
    except NewerProtocol as e:
        raise NewerMessage(str(e)) from None
    except ProtocolError as e:
        raise WireError(str(e)) from None
    return obj


def _get(obj: dict[str, Any], name: str, kind: str) -> Any:
    """Field ``name`` of a decoded message, checked against ``kind``."""
    if name not in obj:
        raise WireError(f"missing field {name!r}")
    value = obj[name]
    if not isinstance(value, _TYPES[kind]) or (kind != _BOOL and isinstance(value, bool)):
        raise WireError(f"field {name!r} must be a {kind}, not {type(value).__name__}")
    return value


def _encode_versions(versions: Versions | None) -> dict[str, list[int]]:
    return {k: [e, s] for k, (e, s) in (versions or {}).items()}


def _versions(obj: dict[str, Any]) -> Versions:
    """The optional version vector ``"v"`` of a decoded message, checked."""
    raw = obj.get("v", {})
    if not isinstance(raw, dict):
        raise WireError("field 'v' must be an object")
    if len(raw) > MAX_VERSIONS:
        raise WireError(f"version vector names more than {MAX_VERSIONS} origins")
    out = {}
    for origin, pair in raw.items():
        if (
            not origin
            or type(pair) is not list
            or len(pair) != 2
            or any(type(x) is not int or x < 0 for x in pair)
        ):
            raise WireError(
                f"bad version of origin {origin[:40]!r}: must be "
                "[epoch, seq], non-negative integers"
            )
        out[origin] = (pair[0], pair[1])
    return out


def _row_types() -> frozenset[tuple[type, ...]]:
    """Every allowed tuple of a wire row's field types (a few hundred)."""
    per_field = [_TYPES[kind] + ((type(None),) if optional else ()) for _, kind, optional in _SPEC]
    return frozenset(itertools.product(*per_field))


_ROW_TYPES = _row_types()


def _row_type_error(row: list[Any]) -> WireError:
    """The error naming the first field of ``row`` with a wrong type."""
    for (name, kind, optional), value in zip(_SPEC, row, strict=False):
        if value is None:
            if not optional:
                return WireError(f"binding field {name} is missing")
        elif type(value) not in _TYPES[kind]:
            return WireError(f"binding field {name} must be a {kind}, not {type(value).__name__}")
    return WireError("binding field types")


def row_binding(row: Any) -> Binding:
    """Validate one wire list and build its ``Binding``."""
    if type(row) is not list or len(row) != _NFIELDS:
        raise WireError(f"a binding must be a list of {_NFIELDS} fields")
    if tuple(map(type, row)) not in _ROW_TYPES:
        raise _row_type_error(row)
    if not row[0] or not row[1] or not row[12]:
        raise WireError("binding aor, key and origin must not be empty")
    if row[5] < 0 or row[13] < 0 or row[14] < 0:
        raise WireError("binding cseq, epoch and seq must not be negative")
    finite = math.isfinite
    if not (finite(row[3]) and finite(row[15]) and (row[6] is None or finite(row[6]))):
        raise WireError("binding times and q must be finite numbers")
    if row[7] and any(type(p) is not str for p in row[7]):
        raise WireError("binding path must be a list of strings")
    return Binding(*row)


def _rows(obj: dict[str, Any]) -> list[Binding]:
    return [row_binding(r) for r in _get(obj, "b", _LIST)]


@dataclass(frozen=True, slots=True)
class Update:
    """One group commit of a node's own binding changes."""

    origin: str
    """Id of the node that made the changes."""
    epoch: int
    """Its epoch."""
    first: int
    """Sequence number of the first change."""
    last: int
    """Sequence number of the last change (``first + len(bindings) - 1``)."""
    sent_at: float
    """Wall time at which the origin committed them (just before its 200s went out)."""
    bindings: list[Binding]
    """The new versions, tombstones included, in sequence order."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A node's periodic sign of life."""

    node: str
    """Id of the sender."""
    wall: float
    """The sender's wall clock (unix seconds) when it sent this."""
    epoch: int
    """The sender's epoch."""
    seq: int
    """The last sequence number the sender published in that epoch."""
    state: str
    """The sender's own sync state: ``syncing`` or ``synced``."""
    versions: Versions = field(default_factory=dict)
    """The last (epoch, seq) the sender holds of each other origin."""
    protocol: int = FIRST_VERSION
    """The protocol version the sender speaks (1: a release without ``pv``)."""


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    """The end marker of a snapshot stream."""

    request: int
    """The request it answers."""
    batches: int
    """How many batches came before it."""
    count: int
    """How many bindings those batches held."""
    digest: str
    """Hex digest of the batch bodies, in order (see ``SnapshotAssembler``)."""
    epoch: int
    """The server's epoch when it took the snapshot."""
    seq: int
    """The last sequence number the server had published then."""
    versions: Versions = field(default_factory=dict)
    """The last (epoch, seq) of each other origin the snapshot holds."""


def encode_update(origin: str, epoch: int, sent_at: float, bindings: list[Binding]) -> bytes:
    """The body of an update message for one commit of ``origin``'s own changes."""
    return _dumps(
        {
            "pv": PROTOCOL_VERSION,
            "id": origin,
            "e": epoch,
            "t": sent_at,
            "b": [list(_row_of(b)) for b in bindings],
        }
    ).encode()


def decode_update(data: bytes) -> Update:
    """Parse and check an update: one origin and epoch, consecutive sequence numbers."""
    obj = _loads(data)
    origin, epoch, sent_at = _get(obj, "id", _STR), _get(obj, "e", _INT), _get(obj, "t", _NUM)
    bindings = _rows(obj)
    if not bindings:
        raise WireError("update without bindings")
    first = bindings[0].seq
    for i, b in enumerate(bindings):
        if b.origin != origin or b.epoch != epoch:
            raise WireError(
                f"update from {origin}/{epoch} carries a change of {b.origin}/{b.epoch}"
            )
        if b.seq != first + i:
            raise WireError(f"update sequence numbers not consecutive at {b.seq}")
    return Update(origin, epoch, first, bindings[-1].seq, sent_at, bindings)


def encode_heartbeat(
    node: str, wall: float, epoch: int, seq: int, state: str, versions: Versions | None = None
) -> bytes:
    """The body of a heartbeat (``versions``: what the sender holds of other origins)."""
    return _dumps(
        {
            "pv": PROTOCOL_VERSION,
            "id": node,
            "t": wall,
            "e": epoch,
            "s": seq,
            "st": state,
            "v": _encode_versions(versions),
        }
    ).encode()


def decode_heartbeat(data: bytes) -> Heartbeat:
    """Parse and check a heartbeat."""
    obj = _loads(data, versioned=False)
    hb = Heartbeat(
        _get(obj, "id", _STR),
        _get(obj, "t", _NUM),
        _get(obj, "e", _INT),
        _get(obj, "s", _INT),
        _get(obj, "st", _STR),
        _versions(obj),
        version_of(obj),
    )
    if hb.state not in (SYNCING, SYNCED) or hb.seq < 0 or not hb.node:
        raise WireError("bad heartbeat state, node or sequence number")
    return hb


def encode_snapshot_request(node: str, request: int) -> bytes:
    """The body of a snapshot request."""
    return _dumps({"pv": PROTOCOL_VERSION, "id": node, "r": request}).encode()


def decode_snapshot_request(data: bytes) -> tuple[str, int]:
    """Parse and check a snapshot request: ``(asking node id, request number)``."""
    obj = _loads(data)
    return _get(obj, "id", _STR), _get(obj, "r", _INT)


def snapshot_stream(
    request: int,
    bindings: list[Binding],
    batch_size: int,
    epoch: int,
    seq: int,
    versions: Versions | None = None,
) -> Iterator[tuple[bool, bytes, int]]:
    """Encode a snapshot lazily: ``(is_end, body, bindings_in_body)`` per message.

    ``bindings`` is taken as given (the caller copies the table at one
    instant); ``(epoch, seq)`` is the server's own stamp at that instant and
    ``versions`` what the copy holds of other origins.
    """
    hasher = hashlib.blake2b(digest_size=16)
    n = 0
    for start in range(0, len(bindings), batch_size):
        chunk = bindings[start : start + batch_size]
        body = _dumps(
            {"pv": PROTOCOL_VERSION, "r": request, "n": n, "b": [_row_of(b) for b in chunk]}
        ).encode()
        hasher.update(len(body).to_bytes(8, "big"))
        hasher.update(body)
        n += 1
        yield False, body, len(chunk)
    end = _dumps(
        {
            "pv": PROTOCOL_VERSION,
            "r": request,
            "n": n,
            "c": len(bindings),
            "d": hasher.hexdigest(),
            "e": epoch,
            "s": seq,
            "v": _encode_versions(versions),
        }
    ).encode()
    yield True, end, 0


class SnapshotAssembler:
    """Receives one snapshot stream and checks it against its end marker.

    Batches must come in order; each is decoded as it arrives (so it can be
    applied at once: the merge rule makes a partial snapshot harmless), and
    ``finish`` raises ``SnapshotError`` unless the batch count, the binding
    count and the digest of the bodies all match.
    """

    def __init__(self, request: int):
        self.request = request
        self.batches = 0
        self.count = 0
        self._hasher = hashlib.blake2b(digest_size=16)

    def add(self, body: bytes) -> list[Binding]:
        """Decode one batch; return its bindings."""
        obj = _loads(body)
        if _get(obj, "r", _INT) != self.request:
            raise WireError("batch of another snapshot request")
        n = _get(obj, "n", _INT)
        if n != self.batches:
            raise SnapshotError(f"batch {n} arrived, expected batch {self.batches}")
        bindings = _rows(obj)
        self._hasher.update(len(body).to_bytes(8, "big"))
        self._hasher.update(body)
        self.batches += 1
        self.count += len(bindings)
        return bindings

    def finish(self, body: bytes) -> SnapshotEnd:
        """Check the end marker against what arrived; return it."""
        obj = _loads(body)
        end = SnapshotEnd(
            _get(obj, "r", _INT),
            _get(obj, "n", _INT),
            _get(obj, "c", _INT),
            _get(obj, "d", _STR),
            _get(obj, "e", _INT),
            _get(obj, "s", _INT),
            _versions(obj),
        )
        if end.request != self.request:
            raise WireError("end marker of another snapshot request")
        if end.batches != self.batches or end.count != self.count:
            raise SnapshotError(
                f"snapshot incomplete: got {self.count} bindings in "
                f"{self.batches} batches, server sent {end.count} in {end.batches}"
            )
        if end.digest != self._hasher.hexdigest():
            raise SnapshotError("snapshot digest mismatch")
        return end


def binding_hash(b: Binding) -> int:
    """A 128-bit hash of every field of ``b``, the same on every node."""
    data = repr(_row_of(b)).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")


class SetDigest:
    """An order-independent digest of a set of bindings, built incrementally."""

    def __init__(self) -> None:
        self.total = self.live = self.tombstones = 0

    def add(self, bindings: Iterable[Binding], wall: float | None = None) -> "SetDigest":
        """Count ``bindings`` in (only those not expired at ``wall`` when given)."""
        for b in bindings:
            if wall is None or b.expires_at > wall:
                self.total = (self.total + binding_hash(b)) & ((1 << 128) - 1)
                self.tombstones += b.deleted
                self.live += not b.deleted
        return self

    def summary(self) -> dict[str, Any]:
        """``{"digest": 32 hex digits, "live": n, "tombstones": n}``."""
        return {"digest": f"{self.total:032x}", "live": self.live, "tombstones": self.tombstones}


BANS_VERSION = 1
"""Version of the bans message; a receiver drops any other."""
MAX_BANS = 1000
"""Most bans one message may carry."""
_MAX_BAN_KEY = 256
_BAN_KINDS = {"s": "source", "u": "user"}
_BAN_CODES = {v: k for k, v in _BAN_KINDS.items()}


def encode_bans(node: str, bans: "Iterable[Ban]") -> bytes:
    """One bans message ``{"pv", "v": 1, "id", "b": [[kind, key, until], ...]}`` of
    node ``node``: kind ``s`` (source) or ``u`` (user), ``until`` the
    wall-clock end of the ban, 0 for a ban lifted. ``bans`` are
    ``sipcore.authguard.Ban`` values (at most ``MAX_BANS``)."""
    return _dumps(
        {
            "pv": PROTOCOL_VERSION,
            "v": BANS_VERSION,
            "id": node,
            "b": [[_BAN_CODES[b.kind], b.key, round(b.until, 3)] for b in bans],
        }
    ).encode()


def decode_bans(data: bytes) -> tuple[str, list[tuple[str, str, float]]]:
    """``(node, [(kind, key, until), ...])`` of a bans message, kind
    ``"source"`` or ``"user"``; ``WireError`` when malformed or of another version."""
    obj = _loads(data)
    if obj.get("v") != BANS_VERSION:
        raise WireError(f"bans message of version {obj.get('v')!r}")
    node = _get(obj, "id", _STR)
    rows = _get(obj, "b", _LIST)
    if len(rows) > MAX_BANS:
        raise WireError(f"{len(rows)} bans in one message")
    out = []
    for row in rows:
        if (
            not isinstance(row, list)
            or len(row) != 3
            or row[0] not in _BAN_KINDS
            or not isinstance(row[1], str)
            or not 0 < len(row[1]) <= _MAX_BAN_KEY
            or isinstance(row[2], bool)
            or not isinstance(row[2], int | float)
            or not math.isfinite(row[2])
        ):
            raise WireError(f"malformed ban {str(row)[:80]}")
        out.append((_BAN_KINDS[row[0]], row[1], float(row[2])))
    return node, out
