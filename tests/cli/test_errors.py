"""How `ripcord flags` reports what goes wrong: no server, no or weak token, TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from flagd.process import free_port
from ripcord.flags_cli import server_address
from tests.auth.certs import make_pki
from tests.cli.conftest import CIRCUIT, OPERATOR, VIEWER, Run, start_daemon


def test_unreachable_server_names_it_and_says_how_to_change_it(run_cli: Run):
    port = free_port()  # nothing listens here
    got = run_cli("list", server=f"127.0.0.1:{port}")
    assert got.code == 1
    first, hint = got.err.splitlines()[:2]
    assert first.startswith("error: UNAVAILABLE: ")
    assert f"could not reach the flag admin API at 127.0.0.1:{port}" in hint
    assert "--server HOST:PORT" in hint and "FLAGD_ADMIN=HOST:PORT" in hint
    assert got.out == ""


def test_server_option_beats_the_environment(run_cli: Run):
    port = free_port()
    got = run_cli("--server", f"127.0.0.1:{port}", "list", server="127.0.0.1:1")
    assert got.code == 1 and f"127.0.0.1:{port};" in got.err


def test_server_resolution():
    assert server_address(None, {}) == "localhost:8013"
    assert server_address(None, {"FLAGD_ADMIN": "flagd:9000"}) == "flagd:9000"
    assert server_address("a:1", {"FLAGD_ADMIN": "flagd:9000"}) == "a:1"


def test_missing_token(flags: Run):
    got = flags("list", token=None)
    assert got.code == 1
    assert got.err.startswith("error: UNAUTHENTICATED: missing credentials")
    assert "set RIPCORD_TOKEN" in got.err


def test_unknown_token(flags: Run):
    got = flags("list", token="not-a-known-token-0123456789")
    assert got.code == 1
    assert got.err.startswith("error: UNAUTHENTICATED: unknown bearer token")
    assert "did not accept the token in RIPCORD_TOKEN" in got.err
    assert "not-a-known-token" not in got.err


def test_too_weak_a_role(flags: Run):
    got = flags("set", CIRCUIT, "--variant", "on", "--reason", "r", token=VIEWER)
    assert got.code == 1
    assert got.err.startswith("error: PERMISSION_DENIED: principal 'alice' has role viewer")
    assert "use one with role operator or above" in got.err
    assert (
        flags("get", CIRCUIT, "--json", token=VIEWER).json()["definition"]["defaultVariant"]
        == "off"
    )


def test_unreadable_cacert(run_cli: Run, tmp_path: Path):
    got = run_cli("--cacert", str(tmp_path / "missing.pem"), "list", server="127.0.0.1:1")
    assert got.code == 1
    assert got.err.startswith(f"error: --cacert {tmp_path / 'missing.pem'}: cannot read")


@pytest.fixture
def tls_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pki = make_pki(tmp_path)
    d = start_daemon(
        tmp_path, monkeypatch, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)
    )
    yield d, pki
    d.stop()


def test_tls_with_cacert(tls_daemon, run_cli: Run):
    d, pki = tls_daemon
    server = f"localhost:{d.port}"
    got = run_cli("--cacert", str(pki.ca_cert), "list", "--json", server=server, token=OPERATOR)
    assert got.code == 0, got.err
    assert len(got.json()["flags"]) == 4
    plain = run_cli("list", "--timeout", "3", server=server, token=OPERATOR)
    assert plain.code == 1
    assert plain.err.startswith("error: UNAVAILABLE")
    assert "add --tls or --cacert PATH if it serves TLS" in plain.err
