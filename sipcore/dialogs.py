"""The cluster's dialog records: which calls are up, through which node, sans-IO.

A node's proxy makes a :class:`Dialog` when it relays the 2xx of an INVITE
(``sipcore.forking``, on the ``answer`` call event) and the record ends when
a BYE of the call passes any node, or when the INVITE failed. Records are
small (Call-ID, tags, the two ends' Contacts and the addresses the node
reached them at, the route set, start and answer times, the owner node) and travel on the
cluster bus (``actors.dialogs``), so that every node knows every call: after
a node dies, exactly one survivor (the lowest live node id, :func:`adopter`)
takes its calls over.

:class:`DialogTable` keeps them, keyed by Call-ID (the proxy relays one 2xx
per call, so one dialog per Call-ID), bounded (``max_dialogs``: the oldest
go first, counted) and aged (``max_age``: a record whose call was answered
that long ago is dropped, counted, as its BYE was evidently missed). A call
that ended is remembered for ``ended_memory`` seconds, so that a record
arriving after its end (from another origin) does not bring it back.

The wire format of the bus message (:func:`encode_dialogs`,
:func:`decode_dialogs`) and the requests a survivor sends to the ends of a
call it takes over (:func:`probe_request`, :func:`bye_request`) live here
too. Everything takes the wall clock ``wall`` as an argument.
"""

import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import astuple, dataclass, replace
from typing import Any

from .errors import SipError
from .protocol import PROTOCOL_VERSION, NewerProtocol, ProtocolError, check_version
from .replication_wire import NewerMessage, WireError

MAX_DIALOGS = 100_000
"""Dialog records a node keeps at most (the oldest answered go first)."""
MAX_AGE = 12 * 3600.0
"""Seconds after its answer that a record is dropped (its BYE was missed)."""
ENDED_MEMORY = 600.0
"""Seconds a call that ended is remembered, so a late record does not revive it."""
MAX_ENDED = 100_000
"""Ended calls remembered at most."""
MAX_PENDING = 10_000
"""Calls being set up whose start time is remembered at most."""
MAX_ROWS = 1000
"""Records (or ends) one bus message carries at most."""
MAX_TEXT = 512
"""Longest text field of a record on the wire."""
MAX_ROUTE = 2048
"""Longest route set kept (a longer one is not kept)."""

DIALOG_FIELDS = (
    "call_id",
    "from_tag",
    "to_tag",
    "caller",
    "callee",
    "caller_contact",
    "callee_contact",
    "caller_dest",
    "callee_dest",
    "route",
    "cseq",
    "started_at",
    "answered_at",
    "owner",
)
"""A record's fields on the wire, in order."""


class DialogWireError(WireError):
    """A dialog message that is malformed."""


class NewerDialogMessage(NewerMessage):
    """A dialog message of a newer protocol version than this release reads."""


@dataclass(frozen=True, slots=True)
class Dialog:
    """One answered call, as the node that relayed its 2xx saw it."""

    call_id: str
    """The Call-ID."""
    from_tag: str
    """The caller's tag (From)."""
    to_tag: str
    """The callee's tag (To of the 2xx)."""
    caller: str
    """The caller's From URI (``sip:user@domain``)."""
    callee: str
    """The To URI."""
    caller_contact: str
    """The Contact URI of the INVITE (empty when it had none)."""
    callee_contact: str
    """The Contact URI of the 2xx (empty when it had none)."""
    caller_dest: str
    """``transport:host:port`` the INVITE came from (where the caller is reached)."""
    callee_dest: str
    """``transport:host:port`` the INVITE was sent to (where the callee answered)."""
    route: str
    """The route set: the 2xx's Record-Route values, top first, comma-separated (empty
    when longer than :data:`MAX_ROUTE`)."""
    cseq: int
    """The CSeq number of the INVITE."""
    started_at: float
    """Wall time the INVITE arrived (its answer time when unknown)."""
    answered_at: float
    """Wall time the 2xx was relayed."""
    owner: str
    """The node in charge of the record: the one that relayed the 2xx, or the
    survivor that took it over."""

    def row(self) -> list[Any]:
        """The record as a list in :data:`DIALOG_FIELDS` order."""
        return list(astuple(self))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view for the control endpoint and the master's API."""
        return {
            "call_id": self.call_id,
            "caller": self.caller,
            "callee": self.callee,
            "started_at": self.started_at,
            "answered_at": self.answered_at,
            "owner": self.owner,
            "route": self.route,
        }


def _contact(msg: Any) -> str:
    try:
        contacts = msg.contacts
    except SipError:
        return ""
    return str(contacts[0].uri)[:MAX_TEXT] if contacts and contacts != "*" else ""


def answered_dialog(
    invite: Any, ok: Any, caller_dest: tuple[Any, ...], callee_dest: tuple[Any, ...]
) -> Dialog | None:
    """The dialog a 2xx (``ok``) to ``invite`` makes, the INVITE having come from
    ``caller_dest`` and gone to ``callee_dest`` (``(transport, host, port)``); its times
    are 0 and its owner empty, for the node to stamp. None without both tags."""
    try:
        from_, to = invite.from_, ok.to
        from_tag, to_tag = from_.tag, to.tag
        cseq = invite.cseq[0]
        call_id = invite.call_id
        route = ",".join(ok.get_all("record-route"))
    except SipError:
        return None
    if not from_tag or not to_tag:
        return None
    return Dialog(
        call_id,
        from_tag,
        to_tag,
        str(from_.uri)[:MAX_TEXT],
        str(to.uri)[:MAX_TEXT],
        _contact(invite),
        _contact(ok),
        ":".join(str(p) for p in caller_dest),
        ":".join(str(p) for p in callee_dest),
        route if len(route) <= MAX_ROUTE else "",
        cseq,
        0.0,
        0.0,
        "",
    )


def adopter(dead: str, live: Iterable[str]) -> str | None:
    """The node that takes over the calls of ``dead``: the lowest id among ``live``
    (this node and the peers alive to it), the same choice on every node that sees
    the same live set; None when none is left."""
    rest = sorted(n for n in live if n != dead)
    return rest[0] if rest else None


class DialogTable:
    """The dialog records one node knows, its own and its peers'; see the module doc."""

    def __init__(
        self,
        node_id: str,
        max_dialogs: int = MAX_DIALOGS,
        max_age: float = MAX_AGE,
        ended_memory: float = ENDED_MEMORY,
    ):
        self.node_id = node_id
        self.max_dialogs, self.max_age, self.ended_memory = max_dialogs, max_age, ended_memory
        self.dialogs: OrderedDict[str, Dialog] = OrderedDict()
        """Call-ID -> record, oldest answered first."""
        self._ended: OrderedDict[str, float] = OrderedDict()
        self._pending: OrderedDict[str, float] = OrderedDict()
        self.stats = {
            "answered": 0,
            "ended": 0,
            "evicted": 0,
            "expired": 0,
            "adopted": 0,
            "received": 0,
            "stale": 0,
        }

    def __len__(self) -> int:
        return len(self.dialogs)

    def get(self, call_id: str) -> Dialog | None:
        """The record of ``call_id``, if any."""
        return self.dialogs.get(call_id)

    def count(self, owner: str | None = None) -> int:
        """How many records (of ``owner``'s, when given)."""
        if owner is None:
            return len(self.dialogs)
        return sum(1 for d in self.dialogs.values() if d.owner == owner)

    def of(self, owner: str) -> list[Dialog]:
        """The records ``owner`` is in charge of, oldest first."""
        return [d for d in self.dialogs.values() if d.owner == owner]

    def attempt(self, call_id: str, wall: float) -> None:
        """An INVITE of ``call_id`` arrived at ``wall``: its start time, if it is answered."""
        pending = self._pending
        if call_id not in pending:
            pending[call_id] = wall
            while len(pending) > MAX_PENDING:
                pending.popitem(last=False)

    def failed(self, call_id: str) -> None:
        """The call never got a 2xx (failure, cancel): forget its start time."""
        self._pending.pop(call_id, None)

    def answered(self, dialog: Dialog) -> Dialog:
        """This node relayed the 2xx of ``dialog`` (its ``started_at`` is filled from the
        attempt when known); returns the record kept."""
        started = self._pending.pop(dialog.call_id, None)
        if started is not None and started <= dialog.answered_at:
            dialog = replace(dialog, started_at=started)
        self._ended.pop(dialog.call_id, None)
        self._put(dialog)
        self.stats["answered"] += 1
        return dialog

    def ended(self, call_id: str, wall: float) -> Dialog | None:
        """A BYE of ``call_id`` passed a node (or the call was ended for good): the
        record goes, and the call is remembered as ended. Returns the record, if any."""
        self._pending.pop(call_id, None)
        self._remember_end(call_id, wall)
        d = self.dialogs.pop(call_id, None)
        if d is not None:
            self.stats["ended"] += 1
        return d

    def apply(self, dialogs: Iterable[Dialog], ends: Iterable[str], wall: float) -> None:
        """Records and ends a peer published: a record replaces the one held unless
        the call ended meanwhile; an end removes it."""
        for call_id in ends:
            self.ended(call_id, wall)
        for d in dialogs:
            self.stats["received"] += 1
            if d.call_id in self._ended:
                self.stats["stale"] += 1
                continue
            self._put(d)

    def adopt(self, dead: str, owner: str) -> list[Dialog]:
        """Give ``owner`` the records ``dead`` was in charge of; the new records."""
        out = []
        for call_id, d in list(self.dialogs.items()):
            if d.owner == dead:
                self.dialogs[call_id] = new = replace(d, owner=owner)
                out.append(new)
        self.stats["adopted"] += len(out)
        return out

    def expire(self, wall: float) -> list[Dialog]:
        """Drop the records answered more than ``max_age`` ago, and forget ends older
        than ``ended_memory``; the records dropped."""
        out = []
        dialogs = self.dialogs
        # Records are kept in the order they arrived, about that of their answers: the
        # scan stops at the first young one (a late arrival waits a little longer).
        while dialogs:
            d = next(iter(dialogs.values()))
            if wall - d.answered_at < self.max_age:
                break
            del dialogs[d.call_id]
            out.append(d)
        self.stats["expired"] += len(out)
        ended = self._ended
        while ended and wall - next(iter(ended.values())) >= self.ended_memory:
            ended.popitem(last=False)
        return out

    def _put(self, d: Dialog) -> None:
        dialogs = self.dialogs
        dialogs.pop(d.call_id, None)
        dialogs[d.call_id] = d
        while len(dialogs) > self.max_dialogs:
            dialogs.popitem(last=False)
            self.stats["evicted"] += 1

    def _remember_end(self, call_id: str, wall: float) -> None:
        ended = self._ended
        ended.pop(call_id, None)
        ended[call_id] = wall
        while len(ended) > MAX_ENDED:
            ended.popitem(last=False)


# -- the bus message ---------------------------------------------------------------
DIALOGS_VERSION = 1
"""Version of the dialogs message body; a receiver drops any other."""
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_dialogs(node: str, dialogs: Iterable[Dialog], ends: Iterable[str] = ()) -> bytes:
    """One dialogs message ``{"pv", "v": 1, "id", "d": [rows], "x": [Call-IDs]}`` of
    ``node``: records made or taken over (in :data:`DIALOG_FIELDS` order) and calls
    ended (at most :data:`MAX_ROWS` of each)."""
    return _dumps(
        {
            "pv": PROTOCOL_VERSION,
            "v": DIALOGS_VERSION,
            "id": node,
            "d": [d.row() for d in dialogs],
            "x": list(ends),
        }
    ).encode()


def _text(value: Any, empty: bool = False) -> bool:
    return isinstance(value, str) and (empty or value != "") and len(value) <= MAX_TEXT


def _time(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value < 1e11
    )


def _dialog(row: Any) -> Dialog:
    if not isinstance(row, list) or len(row) != len(DIALOG_FIELDS):
        raise DialogWireError(f"malformed dialog record {str(row)[:80]}")
    (
        call_id,
        from_tag,
        to_tag,
        caller,
        callee,
        caller_contact,
        callee_contact,
        caller_dest,
        callee_dest,
        route,
        cseq,
        started_at,
        answered_at,
        owner,
    ) = row
    if not (
        all(_text(v) for v in (call_id, from_tag, to_tag, caller, callee, owner))
        and all(_text(v, True) for v in (caller_contact, callee_contact, caller_dest, callee_dest))
        and isinstance(route, str)
        and len(route) <= MAX_ROUTE
        and isinstance(cseq, int)
        and not isinstance(cseq, bool)
        and 0 <= cseq < 2**31
        and _time(started_at)
        and _time(answered_at)
    ):
        raise DialogWireError(f"malformed dialog record {str(row)[:80]}")
    return Dialog(
        call_id,
        from_tag,
        to_tag,
        caller,
        callee,
        caller_contact,
        callee_contact,
        caller_dest,
        callee_dest,
        route,
        cseq,
        float(started_at),
        float(answered_at),
        owner,
    )


def decode_dialogs(data: bytes) -> tuple[str, list[Dialog], list[str]]:
    """``(node, records, ended Call-IDs)`` of a dialogs message; ``DialogWireError`` when
    malformed or of another body version, ``NewerDialogMessage`` when of a newer
    protocol version."""
    try:
        obj = json.loads(data)
    except (ValueError, TypeError, RecursionError) as e:
        raise DialogWireError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise DialogWireError("message body is not a JSON object")
    try:
        check_version(obj)
    except NewerProtocol as e:
        raise NewerDialogMessage(str(e)) from None
    except ProtocolError as e:
        raise DialogWireError(str(e)) from None
    if obj.get("v") != DIALOGS_VERSION:
        raise DialogWireError(f"dialogs message of version {str(obj.get('v'))[:20]!r}")
    node, rows, ends = obj.get("id"), obj.get("d"), obj.get("x")
    if not _text(node) or not isinstance(rows, list) or not isinstance(ends, list):
        raise DialogWireError("dialogs message needs id, d and x")
    if len(rows) > MAX_ROWS or len(ends) > MAX_ROWS:
        raise DialogWireError(f"{len(rows)} records and {len(ends)} ends in one message")
    if not all(_text(c) for c in ends):
        raise DialogWireError("malformed ended Call-ID")
    return str(node), [_dialog(r) for r in rows], [str(c) for c in ends]


# -- requests to the ends of a call taken over ---------------------------------------
def _dest_uri(dest: str, contact: str) -> str:
    """The Request-URI towards an end: its Contact, else its address."""
    if contact:
        return contact
    _, host, port = dest.split(":", 2) if dest.count(":") >= 2 else ("udp", dest, "5060")
    return f"sip:{host}:{port}"


def parse_dest(dest: str) -> tuple[str, str, int] | None:
    """``(transport, host, port)`` of a ``transport:host:port`` text; None when malformed."""
    transport, sep, rest = dest.partition(":")
    host, sep2, port = rest.rpartition(":")
    if not sep or not sep2 or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return transport.lower(), host.strip("[]"), int(port)


def _request(
    method: str,
    uri: str,
    sent_by: str,
    branch: str,
    from_: str,
    to: str,
    call_id: str,
    cseq: int,
    extra: tuple[str, ...] = (),
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {sent_by};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: {from_}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


BRANCH_PREFIX = "z9hG4bK-dlg"
"""The branch prefix of the requests a node sends to the ends of a call it took over."""


def new_branch() -> str:
    """A fresh RFC 3261 branch of ours (:data:`BRANCH_PREFIX`)."""
    return BRANCH_PREFIX + os.urandom(6).hex()


def probe_request(d: Dialog, to_caller: bool, sent_by: str, branch: str) -> bytes:
    """An OPTIONS inside ``d`` towards one end (the caller when ``to_caller``), asking
    whether it still has the call: a final response other than 481 (or 408) says it
    does (RFC 3261 §11, as in-dialog keepalives do)."""
    return in_dialog_request("OPTIONS", d, to_caller, sent_by, branch, d.cseq + 999)


def bye_request(d: Dialog, to_caller: bool, sent_by: str, branch: str) -> bytes:
    """The BYE that ends ``d`` towards one end (the caller when ``to_caller``), with a
    Reason saying why (RFC 3326)."""
    return in_dialog_request(
        "BYE",
        d,
        to_caller,
        sent_by,
        branch,
        d.cseq + 1000,
        (
            'Reason: SIP;cause=480;text="Call ended: its node failed and '
            'the other end does not answer"',
        ),
    )


def in_dialog_request(
    method: str,
    d: Dialog,
    to_caller: bool,
    sent_by: str,
    branch: str,
    cseq: int,
    extra: tuple[str, ...] = (),
) -> bytes:
    """A request of ``d`` towards one end, as the other end would send it: the
    dialog's tags, a CSeq above any either end used in the INVITE."""
    if to_caller:
        return _request(
            method,
            _dest_uri(d.caller_dest, d.caller_contact),
            sent_by,
            branch,
            f"<{d.callee}>;tag={d.to_tag}",
            f"<{d.caller}>;tag={d.from_tag}",
            d.call_id,
            cseq,
            extra,
        )
    return _request(
        method,
        _dest_uri(d.callee_dest, d.callee_contact),
        sent_by,
        branch,
        f"<{d.caller}>;tag={d.from_tag}",
        f"<{d.callee}>;tag={d.to_tag}",
        d.call_id,
        cseq,
        extra,
    )
