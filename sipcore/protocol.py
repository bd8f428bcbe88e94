"""Protocol versions of bus and control messages, so releases mix during a rolling upgrade.

Every JSON body a node or the master sends on the cluster bus (updates,
heartbeats, bans, snapshot requests, batches and end markers) and on a
control endpoint (requests and replies) carries ``"pv"``: the protocol
version it is written in. A body without it is version 1, release v0.23.0,
which ignores the field; version 2 (this release) is version 1 with the
stamp and the rules below, so a node of either release reads the other's
messages and a cluster can be upgraded one node at a time.

The rules every release keeps (README "Upgrades"):

- A receiver reads every version up to :data:`PROTOCOL_VERSION` and ignores
  fields it does not know. A body of a newer version than that is dropped
  and counted (``newer_protocol``), never applied and never a crash; a
  control request of a newer version gets an error reply naming the
  versions. A heartbeat is the exception: its fields never change, and its
  ``pv`` is how a peer announces what it speaks (``Heartbeat.protocol``), so
  it is read whatever its version.
- A message kind (a bus frame type, a control command) unknown to a node is
  ignored and counted (``unknown_kinds``), not a bad message; a control
  request for an unknown command gets an error reply, as the client waits.
- Anything new (a kind, a field an old reader would refuse, a format change)
  is sent only to peers whose announced version supports it:
  :func:`peer_supports` with a feature of :data:`FEATURES`; on the PUB socket,
  which reaches every peer, only when all of them do
  (``Replication.peers_support``). A peer not heard yet supports nothing new.
- A release that changes a message incompatibly raises
  :data:`PROTOCOL_VERSION`, and keeps writing the old form, stamped with the
  old version, while any peer announces only that.
"""

from collections.abc import Iterable
from typing import Any

PROTOCOL_VERSION = 2
"""The protocol version this release reads and writes."""
FIRST_VERSION = 1
"""The version of a body without ``pv`` (release v0.23.0)."""
MAX_VERSION = 9999
"""A ``pv`` above this is malformed, not newer (it would not fit a log line)."""
FEATURES: dict[str, int] = {"pv": 2, "dialogs": 2}
"""Each feature a sender may use only towards peers that have it -> the first
protocol version with it. A helper adding a message kind or field adds it here
(raising :data:`PROTOCOL_VERSION` when no version has it yet)."""

if max(FEATURES.values()) > PROTOCOL_VERSION:
    raise ImportError("sipcore.protocol FEATURES name a version newer than PROTOCOL_VERSION")


class ProtocolError(ValueError):
    """A body whose ``pv`` is malformed."""


class NewerProtocol(ProtocolError):
    """A body of a protocol version newer than this release reads."""

    def __init__(self, version: int):
        super().__init__(f"protocol version {version}, this node reads up to {PROTOCOL_VERSION}")
        self.version = version


def version_of(obj: dict[str, Any]) -> int:
    """The protocol version of a decoded body: its ``pv``, 1 when absent;
    ``ProtocolError`` when it is not an integer from 1 to ``MAX_VERSION``."""
    pv = obj.get("pv", FIRST_VERSION)
    if type(pv) is not int or not FIRST_VERSION <= pv <= MAX_VERSION:
        raise ProtocolError(f"bad protocol version {str(pv)[:20]!r}")
    return pv


def check_version(obj: dict[str, Any]) -> int:
    """``version_of(obj)``, raising ``NewerProtocol`` when this release cannot read it."""
    pv = version_of(obj)
    if pv > PROTOCOL_VERSION:
        raise NewerProtocol(pv)
    return pv


def stamp(obj: dict[str, Any], version: int = PROTOCOL_VERSION) -> dict[str, Any]:
    """``obj`` with ``"pv": version`` first (a new dict)."""
    return {"pv": version, **obj}


def peer_supports(peer_version: int | None, feature: str) -> bool:
    """Whether a peer that announced ``peer_version`` (None: not heard yet) has
    ``feature`` (a key of :data:`FEATURES`; another name is a ``KeyError``)."""
    first = FEATURES[feature]
    return peer_version is not None and peer_version >= first


def all_support(peer_versions: Iterable[int | None], feature: str) -> bool:
    """Whether every peer of ``peer_versions`` has ``feature`` (true for no peer)."""
    return all(peer_supports(v, feature) for v in peer_versions)
