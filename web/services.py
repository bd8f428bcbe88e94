"""Service actions on a node: its services, restart it through the lab that runs it, drain
it, list the calls it carries.

Each node's services (SIP transport, registrar, proxy, replicator, DNS
resolver, challenge front; ``actors.services``) are listed with the
``services`` control command and stopped, started or restarted with
``service``, on any node, lab or not; the node refuses what it cannot do
safely and says why.

A drain goes straight to the node's control endpoint (``drain``, see
``actors.drain``), as the dashboard's other questions do (``web.cluster``).
In a lab (``run.py lab``) the master's ``[master] lab_data`` names the
lab's data folder, and a restart goes to the lab's control socket
(``actors.lab_control``, 0600 in the lab's 0700 folder), which stops the
node's process, starts it and waits until it answers. Without a lab there
is no process supervisor to ask, and the action says so.
"""

from actors.bus import BusError, request
from actors.lab_control import LabControlError, ask
from store import master as ms

from .cluster import ASK_TIMEOUT

ACTION_TIMEOUT = 10.0
"""Seconds a node may take to stop and start a service."""


class ServiceError(Exception):
    """A service action that cannot be done, with the reason."""


def restart_node(lab_data: str, node_id: str) -> dict:
    """Restart node ``node_id`` (one the master knows); its new process state."""
    if node_id not in {n["node_id"] for n in ms.list_nodes()}:
        raise ServiceError(f"no node {node_id!r}")
    if not lab_data:
        raise ServiceError("restart needs a supervisor: this master has no [master] lab_data")
    try:
        return ask(lab_data, f"restart {node_id}")
    except LabControlError as e:
        raise ServiceError(str(e)) from None


ACTIONS = ("stop", "start", "restart")


def _node(node_id: str) -> dict:
    node = next((n for n in ms.list_nodes() if n["node_id"] == node_id), None)
    if node is None:
        raise ServiceError(f"no node {node_id!r}")
    return node


def _ask(bus, node_id: str, message: dict, timeout: float = ASK_TIMEOUT):
    node = _node(node_id)
    if bus is None:
        raise ServiceError("the master has no bus to reach the node")
    try:
        return request(bus, node["control"], node["public_key"], message, timeout)
    except BusError as e:
        raise ServiceError(f"{node_id}: {e}") from None


def node_services(bus, node_id: str) -> dict:
    """``{service: {"state", "uptime", "restarts"}}`` of node ``node_id``."""
    return _ask(bus, node_id, {"cmd": "services"})


def service_action(bus, node_id: str, name: str, action: str) -> dict:
    """Stop, start or restart service ``name`` of node ``node_id``; its state after."""
    if action not in ACTIONS:
        raise ServiceError(f"unknown action {action[:40]!r}; known: {', '.join(ACTIONS)}")
    # A registrar that stops waits for its batch: give the node the time it may take.
    return _ask(bus, node_id, {"cmd": "service", "name": name, "action": action}, ACTION_TIMEOUT)


def drain_node(bus, node_id: str, on: bool) -> dict:
    """Drain node ``node_id`` (``on``) or end its drain; the node's drain state."""
    if not isinstance(on, bool):
        raise ServiceError('drain needs "on": true or false')
    return _ask(bus, node_id, {"cmd": "drain", "on": on})


def node_calls(bus, node_id: str, limit: int = 100) -> dict:
    """The calls node ``node_id`` carries (its dialog records, ``actors.dialogs``): the
    total and the first ``limit`` (1 to 1000), oldest first."""
    return _ask(bus, node_id, {"cmd": "calls", "owner": node_id, "limit": limit})
