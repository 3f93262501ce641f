"""Certificates for the TLS servers: a trusted CA, an untrusted one, and what they sign.

Keys are P-256 (generated in a millisecond, where RSA takes tens); every file is PEM.
The server certificate names ``localhost`` and ``127.0.0.1`` only, so connecting to
``127.0.0.2`` (the same loopback interface) is a host name mismatch.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SERVER_NAMES", "Certificates", "client_context", "generate_certificates"]

SERVER_NAMES = ("localhost", "127.0.0.1")
_VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class Certificates:
    """Paths of the PEM files; ``client_*`` authenticate ``client_user`` (its CN)."""

    ca_cert: Path
    untrusted_ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_user: str
    # A client certificate for the same user, signed by the untrusted CA.
    untrusted_client_cert: Path
    untrusted_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # PostgreSQL refuses a key file that others can read.
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def _authority(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, _name(common_name), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    authority: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = authority
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(common_name, ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        names: list[x509.GeneralName] = [x509.DNSName(SERVER_NAMES[0])]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_NAMES[1:]]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def generate_certificates(directory: Path, client_user: str) -> Certificates:
    """Write a fresh CA, a second untrusted CA, and the server and client pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    trusted = _authority("fastapi-asyncdb test CA")
    untrusted = _authority("fastapi-asyncdb untrusted CA")
    server = _leaf(SERVER_NAMES[0], trusted, server=True)
    client = _leaf(client_user, trusted, server=False)
    stranger = _leaf(client_user, untrusted, server=False)
    files = Certificates(
        ca_cert=directory / "ca.crt",
        untrusted_ca_cert=directory / "untrusted-ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        client_user=client_user,
        untrusted_client_cert=directory / "untrusted-client.crt",
        untrusted_client_key=directory / "untrusted-client.key",
    )
    _write_cert(trusted[0], files.ca_cert)
    _write_cert(untrusted[0], files.untrusted_ca_cert)
    for (cert, key), cert_path, key_path in (
        (server, files.server_cert, files.server_key),
        (client, files.client_cert, files.client_key),
        (stranger, files.untrusted_client_cert, files.untrusted_client_key),
    ):
        _write_cert(cert, cert_path)
        _write_key(key, key_path)
    return files


def client_context(
    certificates: Certificates,
    *,
    trust_untrusted_ca: bool = False,
    client_certificate: bool = False,
    untrusted_client_certificate: bool = False,
) -> ssl.SSLContext:
    """A verify-full client context: the CA loaded, certificate and host name required."""
    ca = certificates.untrusted_ca_cert if trust_untrusted_ca else certificates.ca_cert
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    # create_default_context already requires both; stated so no reader has to know that.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if client_certificate:
        context.load_cert_chain(certificates.client_cert, certificates.client_key)
    elif untrusted_client_certificate:
        context.load_cert_chain(
            certificates.untrusted_client_cert, certificates.untrusted_client_key
        )
    return context
