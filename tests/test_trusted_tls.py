"""A carrier trusted by its TLS client certificate, against a real node process: the node's
TLS port asks for a certificate (``tls_peer_ca``); a connection presenting the one the dial
plan names (by SHA-256 fingerprint) is not challenged; the same request without a
certificate, or with another certificate the CA signed, is challenged; a certificate
another CA signed fails the handshake."""

import hashlib
import os
import socket
import ssl
import subprocess

import pytest

from actors.config import ConfigError, load_config
from tests.test_tls import make_cert, tls_node

DID = "+15551230401"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(folder: str, name: str) -> tuple[str, str]:
    cert, key = os.path.join(folder, f"{name}.pem"), os.path.join(folder, f"{name}.key")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        f"/CN={name}",
        "-keyout",
        key,
        "-out",
        cert,
    )
    return cert, key


def client_cert(folder: str, ca: tuple[str, str], name: str, cn: str) -> tuple[str, str]:
    """A client certificate with common name ``cn`` that ``ca`` signed."""
    cert, key = os.path.join(folder, f"{name}.pem"), os.path.join(folder, f"{name}.key")
    csr = os.path.join(folder, f"{name}.csr")
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", key, "-out", csr
    )
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca[0],
        "-CAkey",
        ca[1],
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        cert,
    )
    return cert, key


def fingerprint(cert: str) -> str:
    with open(cert) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("peer-certs"))
    ca, rogue_ca = make_ca(folder, "carrier-ca"), make_ca(folder, "rogue-ca")
    carrier = client_cert(folder, ca, "carrier", "sbc.carrier.example")
    other = client_cert(folder, ca, "other", "other.example")
    rogue = client_cert(folder, rogue_ca, "rogue", "sbc.carrier.example")
    node = tls_node(str(tmp_path_factory.mktemp("trusted-tls")), *make_cert(folder))
    with open(node.config) as f:
        text = f.read()
    text = text.replace("[sip]\n", f'[sip]\ntls_peer_ca = "{ca[0]}"\n', 1)
    with open(node.config, "w") as f:
        f.write(
            text
            + f"""
[dialplan]
probe_interval = 0

[[dialplan.trusted]]
name = "carrier"
certificate = "{fingerprint(carrier[0])}"

[dialplan.users.user0]
numbers = ["{DID}"]
"""
        )
    node.start()
    try:
        yield node, carrier, other, rogue
    finally:
        node.stop()


def invite_over_tls(node, cert: tuple[str, str] | None) -> str:
    """The first final answer to an INVITE from the carrier to the DID, sent over a TLS
    connection presenting ``cert`` (None: no certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(*cert)
    raw = socket.create_connection((node.address, node.tls_port), timeout=5)
    with ctx.wrap_socket(raw) as sock:
        host, port = sock.getsockname()[:2]
        uri = f"sip:{DID}@{node.domain}"
        sock.sendall(
            (
                f"INVITE {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/TLS {host}:{port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
                f"From: <sip:+15557770000@{node.domain}>;tag=c1\r\nTo: <{uri}>\r\n"
                f"Call-ID: {os.urandom(8).hex()}\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:c@{host}:{port};transport=tls>\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        buf = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return buf.decode(errors="replace")
            buf += data
            for message in buf.split(b"\r\n\r\n")[:-1]:
                if message.startswith(b"SIP/2.0 ") and not message.startswith(b"SIP/2.0 1"):
                    return message.decode(errors="replace")


def test_the_carriers_certificate_makes_it_trusted(lab):
    node, carrier, _, _ = lab
    answer = invite_over_tls(node, carrier)
    # trusted: not challenged, routed to user0's DID (not registered: 480)
    assert answer.startswith("SIP/2.0 480"), (answer, node.log_tail())


@pytest.mark.parametrize("which", ["none", "other"])
def test_without_its_certificate_the_same_request_is_challenged(lab, which):
    node, _, other, _ = lab
    answer = invite_over_tls(node, None if which == "none" else other)
    assert answer.startswith("SIP/2.0 407"), answer


def test_a_certificate_another_ca_signed_fails_the_handshake(lab):
    node, _, _, rogue = lab
    try:
        answer = invite_over_tls(node, rogue)
    except (ssl.SSLError, ConnectionError):
        return
    assert answer == "", answer  # TLS 1.3: the refusal shows at the client's first read


def test_a_tls_peer_ca_that_is_no_certificate_file_is_refused(tmp_path):
    cert, key = make_cert(str(tmp_path))
    node = tls_node(str(tmp_path / "node"), cert, key)
    with open(node.config) as f:
        text = f.read()
    for value, error in ((key, "not a PEM file of certificates"), ("17", "must name")):
        quoted = f'"{value}"' if value != "17" else value
        with open(node.config, "w") as f:
            f.write(text.replace("[sip]\n", f"[sip]\ntls_peer_ca = {quoted}\n", 1))
        with pytest.raises(ConfigError, match=f"sip.tls_peer_ca.*{error}|{error}"):
            load_config(node.config)
