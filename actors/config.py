"""Node configuration: a TOML file read into checked dataclasses.

The schema is documented in ``conf/node.example.toml`` and the README.
"""

import os
import re
import ssl
from dataclasses import dataclass, field, fields

from sipcore.authguard import GuardSettings
from sipcore.cluster_addresses import ClusterAddresses
from sipcore.dialplan import DialPlanError, parse_dialplan
from sipcore.nat import NAT_HANDLING
from sipcore.registrar import RegistrarRules
from store.files import InsecureFileError, check_private, read_toml

from .limits import SETTINGS as LIMIT_SETTINGS
from .limits import Limits
from .notify import Channels


class ConfigError(Exception):
    """The configuration file is missing, unreadable or wrong."""


@dataclass
class Peer:
    """Another node of the cluster, as this node knows it."""

    id: str
    bus: str
    """ZeroMQ endpoint of its PUB socket, e.g. ``tcp://127.0.0.12:7001``."""
    snapshot: str
    """ZeroMQ endpoint of its ROUTER (snapshot) socket."""
    public_key: str = ""
    """Its CurveZMQ public key (Z85)."""
    sip: str = ""
    """Its SIP address, ``host:port`` (``[v6]:port``), so that this node knows the cluster's
    addresses: contacts pointing at any node are refused, a From naming one is the domain."""


@dataclass
class NodeConfig:
    """Everything one node needs to run."""

    id: str
    domain: str
    address: str = "127.0.0.1"
    port: int = 5060
    aliases: list[str] = field(default_factory=list)
    database: str = "sqlite:///tandem.db"
    data_dir: str = "."
    log_level: str = "INFO"
    log_file: str = ""
    """Log to this file (created 0600, reopened on SIGHUP) instead of stderr."""
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10
    nonce_lifetime: float = 300.0
    auth_secret: str = ""
    auth_algorithms: list[str] = field(default_factory=lambda: ["MD5"])
    require_qop: bool = True
    """Refuse digest credentials without qop (RFC 2069, replayable while their nonce lives)."""
    max_failures: int = 10
    """Wrong answers from one source within ``failure_window`` that ban it (0: never)."""
    max_user_failures: int = 30
    """Wrong answers for one user name within ``failure_window`` that lock it (0: never)."""
    failure_window: float = 60.0
    ban_time: float = 600.0
    """Seconds a ban (source) or a lockout (user) lasts."""
    ban_response: str = "403"
    """What a banned source's credentials get: ``"403"`` or ``"drop"`` (silence)."""
    udp_rate: float = Limits.udp_rate
    """Datagrams per second one source may send (token bucket; 0: no limit)."""
    udp_burst: int = Limits.udp_burst
    tcp_max_connections: int = Limits.tcp_max_connections
    tcp_max_per_source: int = Limits.tcp_max_per_source
    tcp_idle_timeout: float = Limits.tcp_idle_timeout
    tcp_header_timeout: float = Limits.tcp_header_timeout
    max_message_size: int = Limits.max_message_size
    log_rate: float = Limits.log_rate
    overload_delay: float = Limits.overload_delay
    overload_interval: float = Limits.overload_interval
    overload_response: str = Limits.overload_response
    overload_retry_after: int = Limits.overload_retry_after
    """The ``[limits]`` settings: their meaning and defaults live in ``actors.limits.Limits``."""
    batch_max: int = 256
    max_call_events: int = 100000
    """Call events the node keeps for the master at most; more are dropped and counted."""
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    challenge_front: bool = False
    """Run a second process that answers REGISTERs without credentials (401) on the same
    UDP port."""
    emergency_numbers: list[str] = field(default_factory=lambda: ["911", "112"])
    """Numbers whose calls no defence may challenge or refuse."""
    outside_line_prefix: str = ""
    """Digits phones dial for an outside line (``9``): before an emergency number (9911)
    it still makes an emergency call (``sipcore.emergency``)."""
    tls_port: int = 0
    """Port of the SIP over TLS listener on ``address`` (0: no TLS, 5061 is usual)."""
    tls_cert: str = ""
    """PEM file of the node's certificate chain, for the TLS listener."""
    tls_key: str = ""
    """PEM file of the certificate's private key (mode 0600, refused otherwise)."""
    tls_ca: str = ""
    """PEM file of the CAs the node checks the far end's certificate against when it
    opens a TLS connection (empty: encrypted, not checked)."""
    tls_peer_ca: str = ""
    """PEM file of the CAs whose client certificates the TLS port asks for (optional
    for the client; one presented must verify against them): trusted peers named by
    certificate (``sipcore.trusted``) are recognised by it. Empty: none asked for."""
    max_branches: int = 16
    """Branches one request may be forked to at most (all groups together)."""
    nat_handling: str = "auto"
    """When a call goes to the flow a phone registered on, not its Contact (``sipcore.nat``)."""
    keepalive_interval: float = 0.0
    """``[nat] keepalive_interval``: seconds between the keepalives this node sends on the
    flows it owns (``actors.keepalive``); 0: none."""
    flow_timer: int = 0
    """``[nat] flow_timer``: seconds between an RFC 5626 outbound phone's own keepalives,
    sent to it as ``Flow-Timer``; its failover waits up to that long; 0: the phone's own."""
    source: str = ""
    """The file this configuration was read from (empty when built in memory)."""
    dns_servers: list[str] = field(default_factory=list)
    dns_port: int = 53
    bus_pub: str = ""
    bus_snapshot: str = ""
    control: str = ""
    secret_key: str = ""
    public_key: str = ""
    peers: list[Peer] = field(default_factory=list)
    heartbeat: float = 0.5
    suspect_after: float = 1.5
    dead_after: float = 5.0
    alone_wait: float = 3.0
    control_keys: list[str] = field(default_factory=list)
    """Public keys (Z85) of clients allowed on the control endpoint besides peers (dashboard)."""
    master_key: str = ""
    """The configuration master's public key (Z85): the only client whose pushes are applied."""
    takeover: bool = False
    """``[cluster] takeover``: this node's ``[sip] address`` floats (``actors.takeover``)."""
    takeover_interface: str = "eth0"
    """The interface the floating addresses go on."""
    takeover_lifetime: float = 10.0
    """Seconds a taken address lives unless renewed (a holder cut off loses it then)."""
    hwm: int = 10000
    """ZeroMQ high-water mark (messages) of the replication PUB and SUB sockets."""
    snapshot_batch: int = 1000
    """Bindings per snapshot message."""
    snapshot_rate: int = 100000
    """Upper bound on bindings per second streamed to one snapshot request (0: no bound)."""
    sync_timeout: float = 5.0
    """Seconds a snapshot may go silent before it counts as failed and is retried."""
    record_route: str = ""
    """``[dialogs] record_route``: what the Record-Route names (``host`` or ``host:port``:
    the domain, resolved by SRV, or a floating address) instead of this node's
    address, so in-dialog requests reach any live node; empty: the node's address."""
    max_dialogs: int = 100_000
    """Dialog records kept at most (``sipcore.dialogs``)."""
    dialog_max_age: float = 12 * 3600.0
    """Seconds after its answer that a dialog record is dropped."""
    probe_timeout: float = 4.0
    """Seconds an end of a call taken over from a dead node has to answer an OPTIONS."""
    dialplan: dict = field(default_factory=dict)
    """The ``[dialplan]`` document (gateways, rules, users; ``sipcore.dialplan``), checked."""
    emergency_notify: Channels = field(default_factory=Channels)
    """``[emergency]``: where each emergency call is notified (``actors.emergency_notify``)."""


_SECTIONS = {
    "node": {"id": "id", "data_dir": "data_dir", "log_level": "log_level", "log_file": "log_file"},
    "sip": {
        "address": "address",
        "port": "port",
        "domain": "domain",
        "aliases": "aliases",
        "t1": "t1",
        "t2": "t2",
        "t4": "t4",
        "challenge_front": "challenge_front",
        "emergency_numbers": "emergency_numbers",
        "outside_line_prefix": "outside_line_prefix",
        "nat_handling": "nat_handling",
        "tls_port": "tls_port",
        "tls_cert": "tls_cert",
        "tls_key": "tls_key",
        "tls_ca": "tls_ca",
        "tls_peer_ca": "tls_peer_ca",
    },
    "registrar": {
        "min_expires": "min_expires",
        "max_expires": "max_expires",
        "default_expires": "default_expires",
        "max_contacts": "max_contacts",
    },
    "auth": {
        "secret": "auth_secret",
        "nonce_lifetime": "nonce_lifetime",
        "algorithms": "auth_algorithms",
        "require_qop": "require_qop",
        "max_failures": "max_failures",
        "max_user_failures": "max_user_failures",
        "failure_window": "failure_window",
        "ban_time": "ban_time",
        "ban_response": "ban_response",
    },
    "limits": {"max_branches": "max_branches", **{name: name for name in LIMIT_SETTINGS}},
    "database": {"url": "database", "batch_max": "batch_max", "max_call_events": "max_call_events"},
    "dns": {"servers": "dns_servers", "port": "dns_port"},
    "dialogs": {
        "record_route": "record_route",
        "max_dialogs": "max_dialogs",
        "max_age": "dialog_max_age",
        "probe_timeout": "probe_timeout",
    },
    "nat": {"keepalive_interval": "keepalive_interval", "flow_timer": "flow_timer"},
    "cluster": {
        "pub": "bus_pub",
        "snapshot": "bus_snapshot",
        "control": "control",
        "secret_key": "secret_key",
        "public_key": "public_key",
        "heartbeat": "heartbeat",
        "suspect_after": "suspect_after",
        "dead_after": "dead_after",
        "alone_wait": "alone_wait",
        "control_keys": "control_keys",
        "master_key": "master_key",
        "hwm": "hwm",
        "snapshot_batch": "snapshot_batch",
        "snapshot_rate": "snapshot_rate",
        "sync_timeout": "sync_timeout",
        "takeover": "takeover",
        "takeover_interface": "takeover_interface",
        "takeover_lifetime": "takeover_lifetime",
    },
}


def parse_config(data: dict, base_dir: str = ".") -> NodeConfig:
    """Build a ``NodeConfig`` from parsed TOML, checking names and types."""
    values: dict = {}
    for section, body in data.items():
        if section == "peers":
            continue
        if section == "dialplan":
            values["dialplan"] = _dialplan(body)
            continue
        if section == "emergency":
            values["emergency_notify"] = _channels(body)
            continue
        names = _SECTIONS.get(section)
        if names is None or not isinstance(body, dict):
            raise ConfigError(f"unknown section [{section}]")
        for k, v in body.items():
            if k not in names:
                raise ConfigError(f"unknown setting {section}.{k}")
            values[names[k]] = v
    for name in ("id", "domain"):
        if not values.get(name):
            raise ConfigError(f"missing required setting for {name}")
    peers = []
    for p in data.get("peers", []):
        try:
            peers.append(Peer(**p))
        except TypeError as e:
            raise ConfigError(f"bad [[peers]] entry: {e}") from None
    values["peers"] = peers
    cfg = NodeConfig(**values)
    for name in (
        "port",
        "min_expires",
        "max_expires",
        "default_expires",
        "max_contacts",
        "batch_max",
        "dns_port",
        "hwm",
        "snapshot_batch",
        "snapshot_rate",
        "max_failures",
        "max_user_failures",
        "udp_burst",
        "tcp_max_connections",
        "tcp_max_per_source",
        "max_message_size",
        "max_branches",
        "tls_port",
        "max_call_events",
        "overload_retry_after",
        "max_dialogs",
        "flow_timer",
    ):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{name} must be a non-negative integer, not {v!r}")
    for name in (
        "failure_window",
        "ban_time",
        "udp_rate",
        "tcp_idle_timeout",
        "tcp_header_timeout",
        "log_rate",
        "overload_delay",
        "overload_interval",
        "dialog_max_age",
        "probe_timeout",
        "keepalive_interval",
    ):
        v = getattr(cfg, name)
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{name} must be a non-negative number, not {v!r}")
    if not isinstance(cfg.require_qop, bool):
        raise ConfigError(f"auth.require_qop must be true or false, not {cfg.require_qop!r}")
    if cfg.ban_response not in ("403", "drop"):
        raise ConfigError(f'auth.ban_response takes "403" or "drop", not {cfg.ban_response!r}')
    if cfg.overload_response not in ("503", "drop"):
        raise ConfigError(
            f'limits.overload_response takes "503" or "drop", not {cfg.overload_response!r}'
        )
    if cfg.max_message_size < 1500:
        raise ConfigError("limits.max_message_size must be at least 1500 bytes")
    if not isinstance(cfg.challenge_front, bool):
        raise ConfigError(f"sip.challenge_front must be true or false, not {cfg.challenge_front!r}")
    if cfg.nat_handling not in NAT_HANDLING:
        raise ConfigError(
            f"sip.nat_handling takes one of {', '.join(NAT_HANDLING)}, not {cfg.nat_handling!r}"
        )
    if not 0 < cfg.port < 65536:
        raise ConfigError(f"port out of range: {cfg.port}")
    if cfg.max_branches < 1:
        raise ConfigError("limits.max_branches must be at least 1")
    if (
        not isinstance(cfg.record_route, str)
        or any(c in cfg.record_route for c in ' <>;,"@/')
        or len(cfg.record_route) > 255
    ):
        raise ConfigError(
            f"dialogs.record_route must be a host or host:port, not {cfg.record_route!r}"
        )
    if not isinstance(cfg.emergency_numbers, list) or not all(
        isinstance(n, str) and n for n in cfg.emergency_numbers
    ):
        raise ConfigError("sip.emergency_numbers must be a list of numbers as strings")
    prefix = cfg.outside_line_prefix
    if not isinstance(prefix, str) or len(prefix) > 4 or not (prefix == "" or prefix.isdigit()):
        raise ConfigError('sip.outside_line_prefix must be up to 4 digits as a string ("9")')
    for p in peers:
        if p.sip:
            _sip_address(p.sip, f"peer {p.id}")
    _check_takeover(cfg)
    bad = [a for a in cfg.auth_algorithms if a not in ("MD5", "SHA-256")]
    if bad or not cfg.auth_algorithms:
        raise ConfigError(f"auth.algorithms takes MD5 and/or SHA-256, not {bad}")
    if not cfg.min_expires <= cfg.default_expires <= cfg.max_expires:
        raise ConfigError("need min_expires <= default_expires <= max_expires")
    if not os.path.isabs(cfg.data_dir):
        cfg.data_dir = os.path.normpath(os.path.join(base_dir, cfg.data_dir))
    if cfg.log_file and not os.path.isabs(cfg.log_file):
        cfg.log_file = os.path.normpath(os.path.join(base_dir, cfg.log_file))
    _check_tls(cfg, base_dir)
    cfg.domain = cfg.domain.lower()
    if (
        cfg.database.startswith("sqlite:///")
        and not cfg.database.startswith("sqlite:////")
        and ":memory:" not in cfg.database
    ):
        rel, _, query = cfg.database[len("sqlite:///") :].partition("?")
        path = os.path.normpath(os.path.join(base_dir, rel))
        cfg.database = f"sqlite:///{path}" + (f"?{query}" if query else "")
    return cfg


def _channels(body) -> Channels:
    """The ``[emergency]`` section: webhook and e-mail settings, checked; the SMTP password
    from ``TANDEM_SMTP_PASSWORD`` (never in the file)."""
    if not isinstance(body, dict):
        raise ConfigError("[emergency] must be a table")
    known = {f.name: f for f in fields(Channels) if f.name != "smtp_password"}
    defaults = Channels()
    for k, v in body.items():
        if k not in known:
            raise ConfigError(f"unknown setting emergency.{k}")
        default = getattr(defaults, k)
        ok = (
            isinstance(v, list) and all(isinstance(a, str) and a for a in v)
            if isinstance(default, list)
            else isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536
            if k == "smtp_port"
            else isinstance(v, type(default))
        )
        if not ok:
            raise ConfigError(f"emergency.{k} must be like {default!r}")
    channels = Channels(**body, smtp_password=os.environ.get("TANDEM_SMTP_PASSWORD", ""))
    problem = channels.problem()
    if problem:
        raise ConfigError(f"emergency.{problem}")
    return channels


def _dialplan(body) -> dict:
    """The ``[dialplan]`` section as it is, once ``sipcore.dialplan`` can compile it."""
    try:
        parse_dialplan(body)
    except DialPlanError as e:
        raise ConfigError(str(e)) from None
    return body


def _check_tls(cfg: NodeConfig, base_dir: str) -> None:
    """With ``tls_port`` set: a certificate and a private key file (relative to
    the configuration's folder), the key readable by its owner alone."""
    if not cfg.tls_port:
        return
    if cfg.tls_port > 65535 or cfg.tls_port == cfg.port:
        raise ConfigError(f"sip.tls_port must be a port other than sip.port, not {cfg.tls_port}")
    for name in ("tls_cert", "tls_key"):
        path = getattr(cfg, name)
        if not isinstance(path, str) or not path:
            raise ConfigError(f"sip.tls_port is set, so sip.{name} must name a PEM file")
        path = os.path.normpath(os.path.join(base_dir, path))
        if not os.path.isfile(path):
            raise ConfigError(f"sip.{name}: no file {path}")
        setattr(cfg, name, path)
    for name in ("tls_ca", "tls_peer_ca"):
        path = getattr(cfg, name)
        if not path:
            continue
        if not isinstance(path, str):
            raise ConfigError(f"sip.{name} must name a PEM file, not {path!r}")
        path = os.path.normpath(os.path.join(base_dir, path))
        try:
            ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"sip.{name} {path}: not a PEM file of certificates: {e}") from None
        setattr(cfg, name, path)
    try:
        check_private(cfg.tls_key, "TLS private key")
    except InsecureFileError as e:
        raise ConfigError(str(e)) from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError(
            f"sip.tls_cert {cfg.tls_cert} and sip.tls_key {cfg.tls_key} "
            f"are not a PEM certificate and its key: {e}"
        ) from None


def _check_takeover(cfg: NodeConfig) -> None:
    if not isinstance(cfg.takeover, bool):
        raise ConfigError(f"cluster.takeover must be true or false, not {cfg.takeover!r}")
    lifetime = cfg.takeover_lifetime
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime < 2:
        raise ConfigError(f"cluster.takeover_lifetime must be 2 s or more, not {lifetime!r}")
    if not isinstance(cfg.takeover_interface, str) or not re.fullmatch(
        r"[A-Za-z0-9_.@-]{1,15}", cfg.takeover_interface
    ):
        raise ConfigError(f"cluster.takeover_interface: bad name {cfg.takeover_interface!r}")
    if cfg.takeover:
        if ":" in cfg.address or cfg.address in ("0.0.0.0", ""):
            raise ConfigError("cluster.takeover needs an IPv4 [sip] address of its own")
        missing = [p.id for p in cfg.peers if not p.sip]
        if missing:
            raise ConfigError(f"cluster.takeover needs every peer's sip address: {missing}")


def _sip_address(text: str, what: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as a pair; ``ConfigError`` when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: sip must be host:port, not {text!r}")
    return host.strip("[]"), int(port)


def cluster_addresses(cfg: NodeConfig, port: int | None = None) -> ClusterAddresses:
    """The cluster's names and node addresses as this node knows them: the domain,
    its aliases, its own ``[sip]`` address (``port``: the one it listens on, when
    known) and each peer's ``sip``, and the host ``[dialogs] record_route`` names; with
    TLS, the same hosts on ``tls_port`` (the cluster's nodes share their TLS port, as
    they share the domain)."""
    nodes = [(cfg.address, port or cfg.port)]
    nodes.extend(_sip_address(p.sip, f"peer {p.id}") for p in cfg.peers if p.sip)
    if cfg.tls_port:
        nodes.extend([(host, cfg.tls_port) for host, _ in nodes])
    # What the Record-Route names (the domain, or a floating address) is the cluster's.
    rr = (
        cfg.record_route.rpartition(":")[0]
        if cfg.record_route.rpartition(":")[2].isdigit()
        else cfg.record_route
    )
    return ClusterAddresses([cfg.domain, *cfg.aliases, *([rr] if rr else [])], nodes)


def registrar_rules(cfg: NodeConfig) -> RegistrarRules:
    """The registrar rules a node's configuration sets (the node and its challenge front
    share them)."""
    # With takeover a REGISTER may name a peer's address this node took over.
    taken = [_sip_address(p.sip, p.id)[0] for p in cfg.peers] if cfg.takeover else []
    return RegistrarRules(
        cfg.domain,
        [*cfg.aliases, cfg.address, *taken],
        cfg.min_expires,
        cfg.max_expires,
        cfg.default_expires,
        cfg.max_contacts,
        cluster_addresses(cfg),
        cfg.flow_timer,
    )


def guard_settings(cfg: NodeConfig) -> GuardSettings:
    """The guard against password guessing that a node's ``[auth]`` settings make."""
    return GuardSettings(
        cfg.max_failures, cfg.max_user_failures, float(cfg.failure_window), float(cfg.ban_time)
    )


def server_uris(cfg: NodeConfig) -> frozenset[str]:
    """The URIs naming the node itself (its domain, aliases and address, with
    and without its port or TLS port), lower case: digest-uris taken for any request."""
    hosts = [cfg.domain, *cfg.aliases, f"[{cfg.address}]" if ":" in cfg.address else cfg.address]
    ports = ("", f":{cfg.port}") + ((f":{cfg.tls_port}",) if cfg.tls_port else ())
    uris = {
        f"{scheme}:{host}{port}".lower()
        for scheme in ("sip", "sips")
        for host in hosts
        for port in ports
    }
    if cfg.takeover:
        # A peer's address this node may take over: requests name it then.
        for p in cfg.peers:
            host, port = _sip_address(p.sip, p.id)
            uris.update(
                f"{scheme}:{host}{end}"
                for scheme in ("sip", "sips")
                for end in ("", f":{port}", *ports[2:])
            )
    return frozenset(uris)


def sqlite_dir(cfg: NodeConfig) -> str | None:
    """The folder of the SQLite database file, if the database is SQLite."""
    if cfg.database.startswith("sqlite:////"):
        return os.path.dirname(cfg.database[len("sqlite:///") :].partition("?")[0])
    return None


def load_config(path: str) -> NodeConfig:
    """Read and check a node configuration file."""
    data = read_toml(path, ConfigError)
    cfg = parse_config(data, os.path.dirname(os.path.abspath(path)))
    if cfg.auth_secret or cfg.secret_key:
        try:
            check_private(path, "configuration")
        except InsecureFileError as e:
            raise ConfigError(str(e)) from None
    cfg.source = os.path.abspath(path)
    return cfg
