"""Caller identity at the edge of the trust domain (RFC 3325, with RFC 3323's ``Privacy``).

The cluster and its trusted peers (``sipcore.trusted``) form the trust
domain. On a new request the proxy core (``sipcore.forking``):

- removes ``P-Asserted-Identity`` and ``P-Preferred-Identity`` from any
  request that does not come from a trusted peer: a phone's claim of who it
  is proves nothing (RFC 3325 §5);
- asserts the identity of an authenticated caller itself, from the account
  (``sipcore.dialing.Dialing.asserted``: the user's caller ID, checked when
  the plan was parsed to be one of the user's numbers, else the user's DID,
  else the user name);
- keeps the ``P-Asserted-Identity`` of a trusted peer (a carrier's caller);
- honours ``Privacy: id`` by removing the asserted identity before the
  request leaves the trust domain, toward a phone or another domain; a
  gateway is inside the trust domain and gets it, with the ``Privacy``
  header, and withholds it from the called party itself.

An emergency call to the emergency gateways always carries the callback
number the dial plan sets (``ProxyCore._to_gateway``), whatever the caller
asked for: emergency services must be able to call back.
"""

from .message import Request

PAI = "p-asserted-identity"
PPI = "p-preferred-identity"


def screen(req: Request, trusted_source: bool, identity: str | None) -> None:
    """Apply the trust boundary to ``req`` as it enters: the identities an untrusted
    sender claimed removed, ``identity`` (a ``P-Asserted-Identity`` value, None when
    the caller is not authenticated) asserted instead of any other."""
    if req.get(PPI) is not None:
        req.remove(PPI)
    # remove() rebuilds the header list: only when there is something to remove
    if req.get(PAI) is not None and (identity is not None or not trusted_source):
        req.remove(PAI)
    if identity is not None:
        req.add("P-Asserted-Identity", identity)


def wants_privacy(req: Request) -> bool:
    """Whether ``req`` asks that its caller's identity be withheld (``Privacy: id``,
    RFC 3325 §7; ``id`` among the header's ``;``-separated values)."""
    for value in req.raw_values("privacy"):
        for token in value.replace(",", ";").split(";"):
            if token.strip().lower() == "id":
                return True
    return False


def withhold(req: Request) -> None:
    """Remove the asserted identity of a request leaving the trust domain that asks for
    privacy."""
    if req.get(PAI) is not None and wants_privacy(req):
        req.remove(PAI)
