"""Service actions on a node: restart it through the lab that runs it.

In a lab (``run.py lab``) the master's ``[master] lab_data`` names the
lab's data folder, and a restart goes to the lab's control socket
(``actors.lab_control``, 0600 in the lab's 0700 folder), which stops the
node's process, starts it and waits until it answers. Without a lab there
is no process supervisor to ask, and the action says so.
"""

from actors.lab_control import LabControlError, ask

from store import master as ms


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
