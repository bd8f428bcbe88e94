"""The lab's CA and node certificates (actors.lab_certs), made by the real openssl command
and checked by a real TLS handshake."""

import os
import socket
import ssl
import stat
import threading

import pytest

from actors.lab_certs import lab_ca, node_cert
from store.files import InsecureFileError


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return lab_ca(str(tmp_path_factory.mktemp("lab") / "ca"))


def handshake(
    cert: str, key: str, cafile: str, address: str = "127.0.0.1", server_hostname: str | None = None
) -> str:
    """A TLS handshake with a server on ``address`` holding ``cert``; the client checks it
    against ``cafile`` and ``server_hostname`` (the address by default). The TLS version,
    or ssl.SSLError."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    with socket.socket() as listener:
        listener.bind((address, 0))
        listener.listen(1)
        listener.settimeout(10)

        def serve():
            raw, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(raw, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                raw.close()

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        ctx = ssl.create_default_context(cafile=cafile)
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname=server_hostname or address) as tls,
            ):
                return str(tls.version())
        finally:
            server.join(10)


def test_a_node_certificate_is_trusted_through_the_lab_ca_by_address_and_domain(ca, tmp_path):
    cert = node_cert(str(tmp_path), ca, "node1", "127.0.0.1", "example.test")
    for name in (None, "example.test", "node1.example.test"):
        assert handshake(cert.cert, cert.key, ca[0], server_hostname=name).startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(cert.cert, cert.key, ca[0], server_hostname="node2.example.test")
    for key in (cert.key, ca[1]):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_a_client_without_the_lab_ca_refuses_the_node(ca, tmp_path):
    cert = node_cert(str(tmp_path), ca, "node1", "127.0.0.1", "example.test")
    other = lab_ca(str(tmp_path / "other-ca"))
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(cert.cert, cert.key, other[0])


def test_certificates_are_kept_across_restarts_and_made_again_when_they_no_longer_fit(ca, tmp_path):
    first = node_cert(str(tmp_path), ca, "node1", "127.0.0.1", "example.test")
    with open(first.cert) as f:
        pem = f.read()
    assert lab_ca(os.path.dirname(ca[0])) == ca
    again = node_cert(str(tmp_path), ca, "node1", "127.0.0.1", "example.test")
    with open(again.cert) as f:
        assert f.read() == pem, "a fitting certificate is kept"
    moved = node_cert(str(tmp_path), ca, "node1", "127.0.0.2", "example.test")
    with open(moved.cert) as f:
        assert f.read() != pem, "a node on another address gets a new certificate"
    other = lab_ca(str(tmp_path / "other-ca"))
    resigned = node_cert(str(tmp_path), other, "node1", "127.0.0.2", "example.test")
    assert handshake(resigned.cert, resigned.key, other[0], "127.0.0.2").startswith("TLS")


def test_a_key_others_can_read_is_refused(ca, tmp_path):
    cert = node_cert(str(tmp_path), ca, "node1", "127.0.0.1", "example.test")
    os.chmod(cert.key, 0o644)
    with pytest.raises(InsecureFileError, match="chmod 600"):
        node_cert(str(tmp_path), ca, "node1", "127.0.0.1", "example.test")
    os.chmod(ca[1], 0o640)
    try:
        with pytest.raises(InsecureFileError, match="chmod 600"):
            lab_ca(os.path.dirname(ca[0]))
    finally:
        os.chmod(ca[1], 0o600)
