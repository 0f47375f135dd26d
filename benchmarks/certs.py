"""Real X.509 certificates for the TLS tests and the security benchmark, made with `cryptography` (a dev
dependency; no openssl binary).

    ca = make_pki(folder, "ca1")                        a self-signed CA: ca.cert, ca.key
    leaf = issue(ca, folder, "server", server=True)     a leaf it signed: leaf.cert, leaf.key

Server certificates name DNS:localhost and IP:127.0.0.1 and are for serverAuth; client ones are
for clientAuth. Keys are EC P-256: quick to make.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class Pki(NamedTuple):
    """A CA: its certificate and key files, and the loaded objects to sign with."""

    cert: Path
    key: Path
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


class Leaf(NamedTuple):
    cert: Path
    key: Path


def _write_key(private_key, path: Path) -> None:
    path.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _builder(subject: str, issuer: x509.Name | None, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def make_pki(folder: Path, name: str = "ca") -> Pki:
    """A self-signed CA written to ``folder/NAME.pem`` and ``folder/NAME.key``."""
    folder.mkdir(parents=True, exist_ok=True)
    private_key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        _builder(f"edgecnn test {name}", None, private_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private_key.public_key()), critical=False)
        .sign(private_key, hashes.SHA256())
    )
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(private_key, key)
    return Pki(cert, key, certificate, private_key)


def issue(pki: Pki, folder: Path, common_name: str, *, server: bool) -> Leaf:
    """A leaf certificate signed by ``pki``, written to ``folder/COMMON_NAME.pem`` and ``.key``."""
    folder.mkdir(parents=True, exist_ok=True)
    private_key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(common_name, pki.certificate.subject, private_key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.private_key.public_key()), critical=False
        )
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(pki.private_key, hashes.SHA256())
    cert, key = folder / f"{common_name}.pem", folder / f"{common_name}.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(private_key, key)
    return Leaf(cert, key)
