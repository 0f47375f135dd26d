"""TLS and mutual TLS for the gRPC server, with certificates re-read on SIGHUP; TLS for clients.

    tls = ServerTls(cert, key, client_ca=None)   reads and checks the PEM files now (ValueError)
    server.add_secure_port(address, tls.credentials())
    tls.reload()                                 on SIGHUP: new handshakes get the new files,
                                                 open connections keep theirs; bad files are kept out
    client_credentials(ca, cert, key)            grpc.ChannelCredentials for a client

With ``client_ca`` (mutual TLS) every client must present a certificate that CA signed. Errors name the
command-line flag of the file (--tls-cert, --tls-key, --tls-client-ca; a client's CA is --tls-ca).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import NamedTuple

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from edgecnn.serve.userfiles import read_user_file

log = logging.getLogger(__name__)


class _Files(NamedTuple):
    """The PEM bytes of one checked set of TLS files."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    not_after: str


def _certificates(path: Path, flag: str) -> tuple[bytes, list[x509.Certificate]]:
    data = read_user_file(path, flag)
    try:
        return data, x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{flag} {path}: not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None


def _private_key(path: Path):
    data = read_user_file(path, "--tls-key")
    try:
        return data, serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted: gRPC cannot ask for a password
        raise ValueError(f"--tls-key {path}: the key is encrypted; gRPC needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"--tls-key {path}: not a PEM private key (-----BEGIN PRIVATE KEY-----)") from None


def _key_pair(cert: Path, key: Path) -> tuple[bytes, bytes, x509.Certificate]:
    """The bytes of the certificate chain (``--tls-cert``) and key (``--tls-key``), checked to be PEM and a pair."""
    cert_bytes, chain = _certificates(cert, "--tls-cert")
    key_bytes, private_key = _private_key(key)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise ValueError(f"--tls-key {key}: the key does not match --tls-cert {cert}")
    return cert_bytes, key_bytes, chain[0]


class ServerTls:
    """The server's certificate, key and (mutual TLS) client CA, re-readable while serving.

    ``credentials()`` hands gRPC a fetcher it calls before every new handshake: after a
    successful ``reload()`` it returns the new configuration (once per credentials object),
    otherwise None, so gRPC keeps the one it has. Connections already open are never touched.
    ``reload()`` may run on any thread (a signal handler on the event loop); the fetcher runs
    on gRPC's threads.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self.client_ca = Path(client_ca) if client_ca is not None else None
        self._lock = threading.Lock()
        self._files = self._load()
        self._generation = 0  # bumped by each successful reload

    def _load(self) -> _Files:
        cert_bytes, key_bytes, leaf = _key_pair(self.cert, self.key)
        ca_bytes = _certificates(self.client_ca, "--tls-client-ca")[0] if self.client_ca is not None else None
        return _Files(cert_bytes, key_bytes, ca_bytes, leaf.not_valid_after_utc.isoformat())

    @staticmethod
    def _configuration(files: _Files):
        return grpc.ssl_server_certificate_configuration([(files.key, files.cert)], root_certificates=files.client_ca)

    def describe(self) -> str:
        """What is served, for logs: "mutual TLS" or "TLS"."""
        return "mutual TLS" if self.client_ca is not None else "TLS"

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up what ``reload()`` read, from the next handshake on."""
        with self._lock:
            initial, delivered = self._files, self._generation

        def fetch():
            nonlocal delivered
            with self._lock:
                if delivered == self._generation:
                    return None
                files, delivered = self._files, self._generation
            return self._configuration(files)

        return grpc.dynamic_ssl_server_credentials(
            self._configuration(initial), fetch, require_client_authentication=self.client_ca is not None
        )

    def reload(self) -> bool:
        """Re-read the files; on any problem log it and keep serving the current ones (False)."""
        try:
            files = self._load()
        except ValueError as error:
            log.error("TLS files not reloaded; keeping the current ones", extra={"error": str(error)})
            return False
        with self._lock:
            self._files = files
            self._generation += 1
        log.info("TLS certificates reloaded", extra={"cert": str(self.cert), "not_after": files.not_after})
        return True


def client_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS channel credentials: trust ``ca`` (default: the system roots); ``cert`` + ``key`` for mutual TLS."""
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    root = _certificates(Path(ca), "--tls-ca")[0] if ca is not None else None
    chain = private_key = None
    if cert is not None:
        chain, private_key, _ = _key_pair(Path(cert), Path(key))
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=private_key, certificate_chain=chain)
