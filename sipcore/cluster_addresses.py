"""Who the cluster is: its domain names and every node's SIP address.

One answer to two questions that defences ask:

- ``names_domain``: does a URI (a From) name our domain in any spelling
  -- case, a trailing dot, an alias, a node's address with any port? A
  caller who writes the domain so is one of its users and is challenged.
- ``points_here``: does a URI (a Contact, a Route) reach the cluster
  itself? A binding that does would have the proxy fork a call back to
  itself on every pass (issue 11: one INVITE, 67,528 responses).
"""

from collections.abc import Iterable

from .uri import SipUri

_DEFAULT_PORT = {"sip": 5060, "sips": 5061}


def _bare(host: str) -> str:
    """A host as compared here: lower-case, no IPv6 brackets, no trailing dot."""
    host = host.lower()
    if host.startswith("["):
        return host[1:-1]
    return host.removesuffix(".")


class ClusterAddresses:
    """The domain's names and the ``(host, port)`` each node listens on for SIP.

    ``names`` are the domain and its aliases; ``nodes`` every node's SIP
    address, this one's included.
    """

    __slots__ = ("hosts", "names", "nodes")

    def __init__(self, names: Iterable[str], nodes: Iterable[tuple[str, int]]):
        self.names = frozenset(_bare(n) for n in names)
        self.nodes = frozenset((_bare(h), int(p)) for h, p in nodes)
        self.hosts = frozenset(h for h, _ in self.nodes)

    def names_domain(self, uri: SipUri) -> bool:
        """Whether ``uri``'s host is the domain in any spelling, or a node's address
        (whatever the port)."""
        if uri.scheme == "tel":
            return False
        host = _bare(uri.host)
        return host in self.names or host in self.hosts

    def points_here(self, uri: SipUri) -> bool:
        """Whether a request sent to ``uri`` would reach the cluster: its host (or
        ``maddr``) is one of the domain's names (any port), or a node's address
        and port (a phone on a node's host listens on another port)."""
        if uri.scheme == "tel":
            return False
        host = _bare(uri.params.get("maddr") or uri.host)
        if host in self.names:
            return True
        if host not in self.hosts:
            return False
        return (host, uri.port or _DEFAULT_PORT.get(uri.scheme, 5060)) in self.nodes
