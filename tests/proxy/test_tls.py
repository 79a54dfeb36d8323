"""TLS is configuration: an HTTPS listener, and an upstream behind a private CA that wants a client certificate."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.proxy.echo import EchoUpstream
from tests.support import auth, serve_in_process, write_config


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, key, issuer_name, issuer_key, *, ca: bool, usage=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key) -> tuple[Path, Path]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("test root", ca_key, _name("test root"), ca_key, ca=True)
    ca_path, _ = _write(tmp_path / "ca", ca, ca_key)
    files = {"ca": ca_path}
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        files[role], files[f"{role}_key"] = _write(tmp_path / role, _issue(role, key, ca.subject, ca_key, ca=False, usage=usage), key)
    return files


async def test_https_listener_and_mutual_tls_upstream(tmp_path, pki):
    upstream_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    upstream_tls.load_cert_chain(pki["server"], pki["server_key"])
    upstream_tls.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no answer
    echo = EchoUpstream()
    echo.server = await asyncio.start_server(echo._serve, "127.0.0.1", 0, ssl=upstream_tls)
    echo.port = echo.server.sockets[0].getsockname()[1]
    version = {
        "upstream": f"https://127.0.0.1:{echo.port}",
        "tls": {"ca_bundle": str(pki["ca"]), "client_cert": str(pki["client"]), "client_key": str(pki["client_key"])},
    }
    untrusted = {"upstream": f"https://127.0.0.1:{echo.port}"}  # the system CAs do not know the private CA
    config = write_config(
        tmp_path,
        {"secure": {"v1": version}, "untrusted": {"v1": untrusted}},
        extra={"listen": {"host": "127.0.0.1", "port": 0, "tls": {"cert": str(pki["server"]), "key": str(pki["server_key"])}}},
    )
    try:
        async with serve_in_process(config, client_verify=ssl.create_default_context(cafile=str(pki["ca"]))) as gw:
            assert gw.url.startswith("https://")
            r = await gw.client.post("/models/secure/echo", json={"x": 1}, headers=auth("client"))
            assert r.status_code == 200, r.text
            assert r.json()["path"] == "/echo"
            r = await gw.client.post("/models/untrusted/echo", json={}, headers=auth("client"))
            assert r.status_code == 502 and "TLS" in r.json()["error"]["message"]
    finally:
        await echo.stop()
