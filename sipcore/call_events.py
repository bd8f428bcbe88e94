"""Call events: what the proxy saw of a call, for call logs and call detail records.

The proxy core (``sipcore.forking``) queues one :class:`CallEvent` at each
step of a call it handles; the node takes them with
``ProxyCore.take_call_events`` and stamps them with its wall clock.
"""

from dataclasses import dataclass

from sipcore.dialogs import Dialog
from sipcore.errors import SipError
from sipcore.message import Message

ATTEMPT = "attempt"
RINGING = "ringing"
ANSWER = "answer"
FAILURE = "failure"
CANCEL = "cancel"
BYE = "bye"
LOST = "lost"
"""A survivor ended the call: its node died and one of its ends no longer answered
(``actors.dialogs``); the record's outcome is ``node failure``."""
EMERGENCY = "emergency"
"""Queued right after the attempt of a call to an emergency number: its record is marked."""
FINISHING = frozenset((FAILURE, CANCEL, BYE, LOST))
"""Kinds that end a call (or its attempt)."""


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One step of a call, as the proxy saw it."""

    kind: str
    """``attempt``, ``emergency``, ``ringing``, ``answer``, ``failure``, ``cancel``, ``bye``
    or ``lost``."""
    call_id: str
    """The call's Call-ID."""
    caller: str
    """The From address of record (``sip:user@domain``), as the message had it."""
    callee: str
    """The To address of record."""
    source: str
    """``transport:host:port`` the call's request came from (the INVITE's, for responses)."""
    status: int | None = None
    """The final status of a failure (486, 408...), the 18x of a ringing; else None."""
    dialog: Dialog | None = None
    """On an ``answer``: the dialog the 2xx made (``sipcore.dialogs``), its times and
    owner left for the node to stamp."""


def call_event(
    kind: str,
    msg: Message,
    source: tuple[str, str, int],
    status: int | None = None,
    dialog: Dialog | None = None,
) -> CallEvent | None:
    """The event of ``kind`` for the call ``msg`` (a request or response) belongs to;
    None when its From, To or Call-ID cannot be read."""
    try:
        caller = f"{msg.from_.uri.scheme}:{msg.from_.uri.user}@{msg.from_.uri.host}"
        callee = f"{msg.to.uri.scheme}:{msg.to.uri.user}@{msg.to.uri.host}"
        call_id = msg.call_id
    except SipError:
        return None
    return CallEvent(
        kind, call_id, caller, callee, ":".join(str(p) for p in source), status, dialog
    )
