"""The registrar's rules (RFC 3261 §10.3, RFC 3327 Path, RFC 5626 instance/reg-id).

``RegistrarRules.check`` covers steps 1–2 (domain, Require) before
authentication; ``RegistrarRules.apply`` covers steps 4–8 after it and
returns the binding changes and the response. Nothing here touches I/O:
the caller commits the changes and only then sends the response.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from ipaddress import ip_address
from math import inf, nextafter
from urllib.parse import unquote

from .cluster_addresses import ClusterAddresses
from .errors import SipError, SipParseError
from .headers import parse_int
from .location import Binding, Location, tombstone
from .message import Request, Response, make_response, response_bytes
from .nat import is_outbound
from .uri import NameAddr, unquote_string

SUPPORTED = frozenset({"path", "outbound"})

_date_cache: list[int | str] = [-1, ""]


def http_date(now: float) -> str:
    """The ``Date`` header value for ``now`` (RFC 1123 form), computed once a second."""
    sec = int(now)
    if _date_cache[0] != sec:
        _date_cache[0], _date_cache[1] = sec, formatdate(sec, usegmt=True)
    return str(_date_cache[1])


@dataclass
class RegisterOutcome:
    """What a REGISTER does: bindings to write, then the 200 to send."""

    changes: list[Binding]
    """New versions (tombstones for removals) to commit before answering."""
    request: Request
    """The REGISTER."""
    headers: list[tuple[str, str]]
    """The 200's own header fields (Contact per binding, Path, Date)."""
    to_tag: str
    """The tag the 200 adds to To."""
    status = 200

    @property
    def response(self) -> Response:
        """The 200, built as if ``changes`` were committed."""
        return make_response(self.request, 200, "OK", self.headers, to_tag=self.to_tag)

    def encode(self) -> bytes:
        """``response.encode()``, built directly (the registrar's hot path)."""
        return response_bytes(self.request, 200, "OK", self.headers, to_tag=self.to_tag)


class RegistrarRules:
    """Registrar policy for one domain.

    ``cluster`` knows the cluster's names and node addresses: a Contact
    reaching any of them is refused (``403``), since a call forked to it
    would come back to the cluster on every pass. Without it, the domain
    and its aliases that are names (not addresses) count.
    """

    def __init__(
        self,
        domain: str,
        aliases: Iterable[str] = (),
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
        max_contacts: int = 10,
        cluster: ClusterAddresses | None = None,
        flow_timer: int = 0,
    ):
        self.domains = {domain.lower(), *(a.lower() for a in aliases)}
        if cluster is None:
            cluster = ClusterAddresses([n for n in self.domains if not _is_address(n)], ())
        self.cluster = cluster
        self.domain = domain.lower()
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.max_contacts = max_contacts
        self.flow_timer = flow_timer
        """Seconds between a UA's keepalives on an outbound flow, sent as ``Flow-Timer``
        (RFC 5626 §5.4) beside ``Require: outbound``; 0 leaves it to the UA."""

    def check(self, req: Request) -> None:
        """Steps 1–2: is the domain ours, are required extensions supported."""
        host = req.ruri.host_bare
        if req.ruri.scheme == "tel" or host not in self.domains:
            raise SipError(404, "Domain Not Served Here")
        unsupported = [o for o in req.get_all("require") if o.lower() not in SUPPORTED]
        if unsupported:
            raise SipError(420, "Bad Extension", [("Unsupported", ", ".join(unsupported))])

    def aor_of(self, req: Request) -> tuple[str, str]:
        """Step 5: the address of record from To, and its user part."""
        uri = req.to.uri
        if uri.scheme == "tel" or uri.host_bare not in self.domains or not uri.user:
            raise SipError(404, "Not Found")
        user = unquote(uri.user)
        return f"sip:{user}@{self.domain}", user

    def apply(
        self,
        req: Request,
        location: Location,
        now: float,
        node_id: str,
        received: str | None,
        to_tag: str,
        aor: str | None = None,
    ) -> RegisterOutcome:
        """Steps 5–8 for an authenticated and authorised REGISTER.

        Nothing is written: either every change is returned (to be put and
        committed together) or a ``SipError`` is raised and nothing changes.
        ``aor`` is ``aor_of(req)``'s, when the caller has it already.
        """
        if aor is None:
            aor = self.aor_of(req)[0]
        contacts = req.contacts
        call_id = req.call_id
        cseq = req.cseq[0]
        expires = req.expires
        changes, live = self.update(
            aor,
            contacts,
            call_id,
            cseq,
            expires,
            req.get("user-agent"),
            req.get_all("path") if contacts and contacts != "*" else [],
            location,
            now,
            node_id,
            received,
        )
        return RegisterOutcome(changes, req, self._ok(req, changes, live, now), to_tag)

    def update(
        self,
        aor: str,
        contacts: str | list[NameAddr],
        call_id: str,
        cseq: int,
        hdr_expires: int | None,
        ua: str | None,
        path: list[str],
        location: Location,
        now: float,
        node_id: str,
        received: str | None,
    ) -> tuple[list[Binding], list[Binding]]:
        """``apply``'s work on the request's parts: ``(changes, live)``, the
        new versions to commit and the bindings of ``aor`` alive after them.

        ``contacts`` is ``Request.contacts`` (addresses, or ``"*"``),
        ``hdr_expires`` the Expires header, ``path`` the Path values.
        """
        current = location.get(aor)
        live = (
            {k: b for k, b in current.items() if not b.deleted and b.expires_at > now}
            if current
            else {}
        )
        if isinstance(contacts, str):
            # Request.contacts is a string only for the wildcard "*".
            if hdr_expires != 0:
                raise SipParseError("wildcard Contact requires Expires: 0")
            changes = []
            for b in live.values():
                _check_order(b, call_id, cseq)
                changes.append(
                    tombstone(
                        b,
                        call_id=call_id,
                        cseq=cseq,
                        origin=node_id,
                        updated_at=_stamp(b, call_id, now),
                    )
                )
            return changes, []
        if not contacts:
            return [], list(live.values())
        before = len(live)
        pending: dict[str, Binding] = {}
        for na in contacts:
            key, new = self._binding(
                na, aor, current, call_id, cseq, hdr_expires, now, node_id, received, ua, path
            )
            if new is None:
                pending.pop(key, None)
                live.pop(key, None)
                continue
            pending[key] = new
            if new.deleted:
                live.pop(key, None)
            else:
                live[key] = new
        if len(live) > self.max_contacts and len(live) > before:
            raise SipError(403, "Too Many Contacts")
        return list(pending.values()), list(live.values())

    def _binding(
        self,
        na: NameAddr,
        aor: str,
        current: dict[str, Binding],
        call_id: str,
        cseq: int,
        hdr_expires: int | None,
        now: float,
        node_id: str,
        received: str | None,
        ua: str | None,
        path: list[str],
    ) -> tuple[str, Binding | None]:
        """One Contact's binding key and new version (a tombstone to remove; None: no change)."""
        p = na.params
        exp_text = p.get("expires")
        if exp_text is not None:
            expires = parse_int(exp_text, "Contact expires")
        elif hdr_expires is not None:
            expires = hdr_expires
        else:
            expires = self.default_expires
        if 0 < expires < self.min_expires:
            raise SipError(423, "Interval Too Brief", [("Min-Expires", str(self.min_expires))])
        expires = min(expires, self.max_expires)
        instance_text = p.get("+sip.instance")
        instance = unquote_string(instance_text) if instance_text else None
        reg_id_text = p.get("reg-id") if instance else None
        reg_id = parse_int(reg_id_text, "reg-id") if reg_id_text is not None else None
        if instance:
            key = instance if reg_id is None else f"{instance};reg-id={reg_id}"
        else:
            key = na.uri.canonical()
        q = None
        q_text = p.get("q")
        if q_text is not None:
            try:
                q = float(q_text)
            except ValueError:
                raise SipParseError("malformed q value") from None
            if not 0.0 <= q <= 1.0:
                raise SipParseError("q value out of range")
        old = current.get(key)
        if old is not None:
            _check_order(old, call_id, cseq)
        if expires == 0:
            if old is None or old.deleted or old.expires_at <= now:
                return key, None
            return key, tombstone(
                old,
                call_id=call_id,
                cseq=cseq,
                origin=node_id,
                updated_at=_stamp(old, call_id, now),
            )
        if self.cluster.points_here(na.uri):
            raise SipError(403, "Contact Points At This Cluster")
        return key, Binding(
            aor=aor,
            key=key,
            contact=str(na.uri),
            expires_at=now + expires,
            call_id=call_id,
            cseq=cseq,
            q=q,
            path=path,
            instance=instance,
            reg_id=reg_id,
            received=received,
            user_agent=ua,
            origin=node_id,
            updated_at=now if old is None else _stamp(old, call_id, now),
        )

    def _ok(
        self, req: Request, changes: list[Binding], live: list[Binding], now: float
    ) -> list[tuple[str, str]]:
        """The 200's header fields: every live binding with the seconds it has
        left, the Path the registrar took (if the UA supports it), the outbound
        confirmation (``flow_fields``), Date."""
        headers = self.contact_fields(live, now)
        paths = req.raw_values("path")
        options = [o.lower() for o in req.get_all("supported") + req.get_all("require")]
        if paths and "path" in options:
            headers.extend(("Path", v) for v in paths)
        first_hop = len(req.vias) == 1 or bool(paths and _ob_param(req.get_all("path")[0]))
        headers.extend(self.flow_fields(options, changes, first_hop))
        headers.append(("Date", http_date(now)))
        return headers

    def flow_fields(
        self, options: Iterable[str], changes: list[Binding], first_hop: bool
    ) -> list[tuple[str, str]]:
        """``Require: outbound`` (and ``Flow-Timer``) for a 200, or nothing.

        A UA that supports outbound (``options``: its Supported and Require tags, in
        lower case) and registered an outbound flow (a Contact with ``+sip.instance``
        and ``reg-id``, among ``changes``) straight to this node, or through an edge
        proxy whose Path says ``ob`` (``first_hop``), is told the registrar took it as
        one (RFC 5626 §6): only then does it keep the flow alive and register again
        at once when the flow fails (libre, the SIP stack of baresip)."""
        if (
            not first_hop
            or "outbound" not in options
            or not any(is_outbound(b.instance, b.reg_id) and not b.deleted for b in changes)
        ):
            return []
        if self.flow_timer:
            return [("Require", "outbound"), ("Flow-Timer", str(self.flow_timer))]
        return [("Require", "outbound")]

    @staticmethod
    def contact_fields(live: list[Binding], now: float) -> list[tuple[str, str]]:
        """A Contact field per binding of ``live``, with the seconds it has
        left, the soonest to expire first."""
        headers = []
        if len(live) > 1:
            live = sorted(live, key=_expiry)
        for b in live:
            extra = f";q={b.q:g}" if b.q is not None else ""
            if b.instance:
                extra += f';+sip.instance="{b.instance}"'
            if b.reg_id is not None:
                extra += f";reg-id={b.reg_id}"
            left = max(1, int(b.expires_at - now))
            headers.append(("Contact", f"<{b.contact}>;expires={left}{extra}"))
        return headers


def _ob_param(path: str) -> bool:
    """Whether the first Path URI carries ``ob`` (RFC 5626 §5.1: its edge proxy keeps
    the flow)."""
    uri = path.split(">", 1)[0]
    return any(p.split("=", 1)[0].strip().lower() == "ob" for p in uri.split(";")[1:])


def _is_address(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def _expiry(b: Binding) -> float:
    return b.expires_at


def _check_order(old: Binding, call_id: str, cseq: int) -> None:
    """§10.3 step 7: within one Call-ID a REGISTER must carry a higher CSeq.

    Checked against tombstones and not yet purged bindings too: a version
    that ``is_newer`` ranks below the stored one would be written here but
    refused by every peer.
    """
    if old.call_id == call_id and cseq <= old.cseq:
        raise SipError(500, "Out Of Order CSeq", [("Retry-After", "1")])


def _stamp(old: Binding, call_id: str, now: float) -> float:
    """``updated_at`` for a new version of ``old``, so that ``is_newer`` ranks it above.

    Across Call-IDs the time decides; if ``old`` carries a later time (a
    peer's clock ahead of ours, or ours stepped back), step just past it.
    """
    if call_id != old.call_id and old.updated_at >= now:
        return nextafter(old.updated_at, inf)
    return now
