"""The Funnelback client's HTTP transport over real TLS on loopback: certificate verification with a
private CA, refusal of an unknown certificate, and no redirects followed."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rotator.transport import Failure, Response, Transport


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.endswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "https://elsewhere.invalid/steal")
            body = b""
        else:
            self.send_response(200)
            body = b'{"data": {"name": "admin"}}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert, key = _self_signed(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/admin-api", cert
    finally:
        server.shutdown()
        server.server_close()


def _get(base: str, path: str, **tls: object) -> Response | Failure:
    transport = Transport(base, pool_size=2, connect_timeout=2.0, read_timeout=2.0, **tls)  # type: ignore[arg-type]
    try:
        return transport.send("GET", base + path, headers={"X-Security-Token": "t"}, body=None,
                              limit=1024, error_limit=1024)
    finally:
        transport.close()


def test_a_private_ca_is_trusted_when_named(tls_server: tuple[str, Path]) -> None:
    base, cert = tls_server
    answer = _get(base, "/account/v1/current-user", verify_tls=True, ca_cert=str(cert))
    assert isinstance(answer, Response) and answer.status == 200 and b"admin" in answer.body


def test_an_unknown_certificate_is_refused_before_anything_is_sent(tls_server: tuple[str, Path]) -> None:
    base, _ = tls_server
    answer = _get(base, "/account/v1/current-user", verify_tls=True, ca_cert=None)
    assert isinstance(answer, Failure)
    assert (answer.reason, answer.never_sent, answer.retryable) == ("TLS handshake failed", True, False)


def test_verification_can_be_turned_off_and_says_so(tls_server: tuple[str, Path]) -> None:
    import urllib3.exceptions

    base, _ = tls_server
    with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
        answer = _get(base, "/account/v1/current-user", verify_tls=False, ca_cert=None)
    assert isinstance(answer, Response) and answer.status == 200


def test_a_redirect_is_returned_not_followed(tls_server: tuple[str, Path]) -> None:
    base, cert = tls_server
    answer = _get(base, "/redirect", verify_tls=True, ca_cert=str(cert))
    assert isinstance(answer, Response) and answer.status == 302
