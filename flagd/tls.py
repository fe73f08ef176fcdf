"""TLS for the daemon's gRPC ports: server credentials from PEM files, checked at startup.

gRPC would only discover a bad certificate or key at the first handshake, as an opaque client
error; the stdlib ``ssl`` module loads the same files first so the daemon refuses to start with
a message naming the file. With a client CA the server requires client certificates (mTLS).
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import grpc

_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
_KEY_RE = re.compile(rb"-----BEGIN (?:RSA |EC |ENCRYPTED |)PRIVATE KEY-----")


class TLSConfigError(ValueError):
    """A certificate, key or CA file the daemon cannot serve TLS with."""


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{what} {path}: cannot read: {exc.strerror or exc}") from exc


def _refuse_password() -> bytes:
    # ssl would otherwise prompt on the terminal; gRPC cannot take a passphrase anyway.
    raise TLSConfigError("encrypted")


def server_credentials(
    cert_path: str | Path, key_path: str | Path, client_ca_path: str | Path | None = None
) -> grpc.ServerCredentials:
    """Credentials for ``server.add_secure_port``; TLSConfigError explains any unusable file."""
    cert = _read(cert_path, "TLS certificate")
    key = _read(key_path, "TLS key")
    if _CERT_MARKER not in cert:
        raise TLSConfigError(
            f"TLS certificate {cert_path}: no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )
    if not _KEY_RE.search(key):
        raise TLSConfigError(
            f"TLS key {key_path}: no PEM private key (-----BEGIN PRIVATE KEY-----)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert_path), str(key_path), password=_refuse_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(
                f"TLS key {key_path} does not match the certificate {cert_path}"
            ) from exc
        raise TLSConfigError(
            f"TLS certificate {cert_path} / key {key_path}: cannot load: {exc.reason or exc}"
        ) from exc
    except TLSConfigError:  # from _refuse_password: ssl found an encrypted key
        raise TLSConfigError(
            f"TLS key {key_path}: the key is encrypted; gRPC needs it unencrypted"
        ) from None
    client_ca: bytes | None = None
    if client_ca_path is not None:
        client_ca = _read(client_ca_path, "TLS client CA")
        if _CERT_MARKER not in client_ca:
            raise TLSConfigError(
                f"TLS client CA {client_ca_path}: no PEM certificate (-----BEGIN CERTIFICATE-----)"
            )
        try:
            context.load_verify_locations(cafile=str(client_ca_path))
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"TLS client CA {client_ca_path}: cannot load: {exc.reason or exc}"
            ) from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
