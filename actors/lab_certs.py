"""The lab's certificates: a lab CA and one certificate per node, made with the
``openssl`` command.

The ``cryptography`` package is not among the project's dependencies, and the
``openssl`` program is on every machine that runs the lab (Debian's
``openssl``), so the lab drives it rather than adding a dependency for a
development tool. Every private key is 0600 in the lab's 0700 data folder.
Files are made once and kept across restarts: a CA stays the one phones
were given, and a node's certificate is made again only when it no longer
fits (another address, another CA, or close to its end).
"""

import logging
import os
import subprocess
from dataclasses import dataclass

from store.files import check_private, make_private_dir, write_private

log = logging.getLogger(__name__)

CA_DAYS = 3650
"""Days the lab CA is valid."""

NODE_DAYS = 825
"""Days a node's certificate is valid (the longest Apple's TLS clients take)."""

RENEW_BEFORE = 30 * 86400
"""Seconds before its end at which a node's certificate is made again."""

OPENSSL_TIMEOUT = 60.0
"""Seconds one openssl command may take (RSA key generation included)."""


class LabCertError(Exception):
    """A certificate or key of the lab could not be made or read."""


@dataclass(frozen=True)
class NodeCert:
    """A node's certificate and key files."""

    cert: str
    """PEM certificate signed by the lab CA."""
    key: str
    """Its private key, mode 0600."""


def _openssl(*args: str, stdin: str | None = None) -> str:
    """Run ``openssl args``; its standard output, or LabCertError with its error."""
    try:
        done = subprocess.run(
            ["openssl", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=OPENSSL_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise LabCertError(
            "the lab makes its TLS certificates with the openssl command, "
            "which is missing (Debian: apt install openssl)"
        ) from None
    except subprocess.TimeoutExpired:
        raise LabCertError(f"openssl {args[0]} took longer than {OPENSSL_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise LabCertError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def _new_key(path: str) -> None:
    """A new RSA 2048 key at ``path``, written 0600 (never readable by others)."""
    write_private(
        path, _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    )


def lab_ca(folder: str) -> tuple[str, str]:
    """The lab CA's certificate and key under ``folder`` (0700), made if missing:
    ``(ca.pem, ca.key)``. A key others can read is refused (InsecureFileError)."""
    folder = make_private_dir(folder)
    cert, key = os.path.join(folder, "ca.pem"), os.path.join(folder, "ca.key")
    if os.path.exists(cert) and os.path.exists(key):
        check_private(key, "lab CA key")
        return cert, key
    _new_key(key)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        key,
        "-days",
        str(CA_DAYS),
        "-sha256",
        "-subj",
        "/O=Tandem lab/CN=Tandem lab CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        cert,
    )
    log.info("lab CA made: %s", cert)
    return cert, key


def _fits(cert: str, ca: str, names: list[str]) -> bool:
    """True if ``cert`` is signed by ``ca``, names every one of ``names`` in its
    subjectAltName and is not within RENEW_BEFORE of its end."""
    try:
        _openssl("verify", "-CAfile", ca, cert)
        _openssl("x509", "-in", cert, "-noout", "-checkend", str(RENEW_BEFORE))
        san = _openssl("x509", "-in", cert, "-noout", "-ext", "subjectAltName")
    except LabCertError as e:
        log.info("%s made again: %s", cert, e)
        return False
    present = {part.strip() for part in san.splitlines()[-1].split(",")}
    return all(name in present for name in names)


def node_cert(
    folder: str,
    ca: tuple[str, str],
    node_id: str,
    address: str,
    domain: str,
    also: tuple[str, ...] = (),
) -> NodeCert:
    """Node ``node_id``'s certificate (``tls.pem``, key ``tls.key`` 0600) under
    ``folder``, signed by ``ca`` (cert, key), for its IP ``address`` and the further
    addresses ``also`` (each as an IP and as a DNS name: the floating addresses of
    peers it may take over, ``actors.takeover``, whose phones reconnect to it), the
    SIP ``domain`` and ``<node_id>.<domain>``; kept when it still fits, else made
    again. It serves as a TLS server (phones) and a client (the node's own
    connections to sips next hops)."""
    cert, key = os.path.join(folder, "tls.pem"), os.path.join(folder, "tls.key")
    # The address is a DNS name too: linphone's TLS (mbedTLS 2) matches the host it
    # connects to only against DNS names, and refuses the IP-only certificate.
    addresses = [address, *(a for a in also if a != address)]
    names = [
        *(f"{kind}:{a}" for a in addresses for kind in ("IP Address", "DNS")),
        f"DNS:{domain}",
        f"DNS:{node_id}.{domain}",
    ]
    if os.path.exists(cert) and os.path.exists(key):
        check_private(key, f"{node_id} TLS key")
        if _fits(cert, ca[0], names):
            return NodeCert(cert, key)
    _new_key(key)
    csr = _openssl("req", "-new", "-key", key, "-subj", f"/O=Tandem lab/CN={node_id}.{domain}")
    alt = ",".join(f"{kind}:{a}" for a in addresses for kind in ("IP", "DNS"))
    extensions = (
        f"subjectAltName={alt},DNS:{domain},DNS:{node_id}.{domain}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    ext_path = os.path.join(folder, "tls.ext")
    with open(ext_path, "w") as f:
        f.write(extensions)
    try:
        signed = _openssl(
            "x509",
            "-req",
            "-CA",
            ca[0],
            "-CAkey",
            ca[1],
            "-set_serial",
            str(int.from_bytes(os.urandom(8), "big")),
            "-days",
            str(NODE_DAYS),
            "-sha256",
            "-extfile",
            ext_path,
            stdin=csr,
        )
    finally:
        os.unlink(ext_path)
    with open(cert, "w") as f:
        f.write(signed)
    log.info("%s certificate made for %s: %s", node_id, address, cert)
    return NodeCert(cert, key)
