"""CurveZMQ key pairs for the cluster bus, and the cluster part of a node's configuration.

``run.py keys`` prints a new key pair as a ``[cluster]`` TOML snippet, or
with ``--out PREFIX`` writes ``PREFIX.public`` and ``PREFIX.secret`` (the
latter readable by its owner only) and prints only the public key. The
lab and the test harness use ``load_or_create_keypair`` and
``cluster_toml`` to give each node its keys and the list of its peers.
"""

import argparse
import os
import sys
from dataclasses import dataclass

from store.files import InsecureFileError, check_private, make_private_dir, write_private

from .bus import BusError, check_key, generate_keypair

__all__ = [
    "generate_keypair",
    "write_keypair",
    "read_keypair",
    "load_or_create_keypair",
    "Member",
    "cluster_toml",
    "configure_parser",
    "cmd_keys",
]


def write_keypair(prefix: str, public: str, secret: str) -> tuple[str, str]:
    """Write ``PREFIX.public`` and ``PREFIX.secret`` (mode 0600); return both paths."""
    pub_path, sec_path = prefix + ".public", prefix + ".secret"
    directory = os.path.dirname(os.path.abspath(prefix))
    if not os.path.isdir(directory):
        make_private_dir(directory)
    write_private(sec_path, secret + "\n")
    with open(pub_path, "w") as f:
        f.write(public + "\n")
    return pub_path, sec_path


def read_keypair(prefix: str) -> tuple[str, str]:
    """Read a pair written by ``write_keypair``; ``BusError`` if missing or malformed."""
    try:
        check_private(prefix + ".secret", "secret key")
        with open(prefix + ".public") as f:
            public = f.read().strip()
        with open(prefix + ".secret") as f:
            secret = f.read().strip()
    except OSError as e:
        raise BusError(f"cannot read key pair {prefix}: {e.strerror}") from None
    except InsecureFileError as e:
        raise BusError(str(e)) from None
    check_key(public, f"{prefix}.public")
    check_key(secret, f"{prefix}.secret")
    return public, secret


def load_or_create_keypair(prefix: str) -> tuple[str, str]:
    """The pair stored under ``prefix``, made and stored first if there is none."""
    if os.path.exists(prefix + ".public") and os.path.exists(prefix + ".secret"):
        return read_keypair(prefix)
    public, secret = generate_keypair()
    write_keypair(prefix, public, secret)
    return public, secret


@dataclass
class Member:
    """One node as the cluster configuration names it."""

    id: str
    """Node id."""
    pub: str
    """Its PUB endpoint, e.g. ``tcp://127.0.0.11:7001``."""
    snapshot: str
    """Its snapshot ROUTER endpoint."""
    control: str
    """Its control endpoint."""
    public_key: str
    """Its CurveZMQ public key."""
    secret_key: str = ""
    """Its secret key (only needed for its own configuration)."""
    sip: str = ""
    """Its SIP ``host:port``, so that peers know the cluster's addresses."""


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    text = str(v)
    if any(c in text for c in '"\\\n'):
        raise ValueError(f"cannot write {text!r} as a TOML string")
    return f'"{text}"'


def cluster_toml(me: Member, members: list[Member], **settings) -> str:
    """The ``[cluster]`` section and ``[[peers]]`` entries of ``me``'s configuration.

    ``members`` may include ``me`` (it is skipped); ``settings`` adds other
    ``[cluster]`` keys such as ``heartbeat`` or ``control_keys``.
    """
    lines = [
        "[cluster]",
        f"pub = {_toml_value(me.pub)}",
        f"snapshot = {_toml_value(me.snapshot)}",
        f"control = {_toml_value(me.control)}",
        f"public_key = {_toml_value(me.public_key)}",
        f"secret_key = {_toml_value(me.secret_key)}",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    for m in members:
        if m.id == me.id:
            continue
        lines += [
            "",
            "[[peers]]",
            f"id = {_toml_value(m.id)}",
            f"bus = {_toml_value(m.pub)}",
            f"snapshot = {_toml_value(m.snapshot)}",
            f"public_key = {_toml_value(m.public_key)}",
        ]
        if m.sip:
            lines.append(f"sip = {_toml_value(m.sip)}")
    return "\n".join(lines) + "\n"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``run.py keys`` options to ``parser``."""
    parser.add_argument(
        "--out",
        metavar="PREFIX",
        help="write PREFIX.public and PREFIX.secret instead of printing both",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def cmd_keys(args) -> int:
    """``run.py keys``: make one CurveZMQ key pair for a node or the dashboard."""
    public, secret = generate_keypair()
    if not getattr(args, "out", None):
        sys.stdout.write(
            "# Keep secret_key private; give public_key to every peer.\n"
            f'[cluster]\npublic_key = "{public}"\nsecret_key = "{secret}"\n'
        )
        return 0
    prefix = args.out
    if not getattr(args, "force", False) and (
        os.path.exists(prefix + ".public") or os.path.exists(prefix + ".secret")
    ):
        sys.stderr.write(f"{prefix}.public or {prefix}.secret exists; use --force\n")
        return 1
    try:
        pub_path, sec_path = write_keypair(prefix, public, secret)
    except OSError as e:
        sys.stderr.write(f"cannot write the key pair: {e}\n")
        return 1
    sys.stdout.write(f"public key {public}\nwritten to {pub_path}; secret key in {sec_path}\n")
    return 0
