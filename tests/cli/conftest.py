"""A real daemon subprocess (file flags, SQLite state, bearer tokens) and a way to run
`ripcord flags` against it in-process, capturing what it prints."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flagd.process import DaemonProcess
from ripcord.flags_cli import main

VIEWER = "viewer-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abcdef"
TOKENS = f"alice:viewer:{VIEWER},oncall:operator:{OPERATOR}"

CIRCUIT = "payments.new-router.circuit-open"
RELEASE = "payments.new-router"
REVERSED = "payments.retry-v2"  # on/off split listed off first
COLOR = "checkout.color"  # three-variant split

FLAGS: dict[str, Any] = {
    "metadata": {"flagSetId": "payments"},
    "flags": {
        CIRCUIT: {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "metadata": {"kind": "ops", "owner": "on-call", "removal": "permanent"},
        },
        RELEASE: {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"fractional": [["on", 0], ["off", 100]]},
            "metadata": {"kind": "release", "owner": "payments", "removal": "2020-01-01"},
        },
        REVERSED: {
            "state": "ENABLED",
            "variants": {"enabled": True, "disabled": False},
            "defaultVariant": "disabled",
            "targeting": {"fractional": [["disabled", 90], ["enabled", 10]]},
            "metadata": {"kind": "release", "owner": "payments", "removal": "2999-01-01"},
        },
        COLOR: {
            "state": "ENABLED",
            "variants": {"red": "r", "blue": "b", "green": "g"},
            "defaultVariant": "red",
            "targeting": {"fractional": [["red", 50], ["blue", 25], ["green", 25]]},
            "metadata": {"kind": "experiment", "owner": "growth"},
        },
    },
}


@dataclass
class Result:
    """What one `ripcord flags` run returned and printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Result]


def start_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> DaemonProcess:
    """A daemon on free ports serving FLAGS, with the viewer and operator tokens."""
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps(FLAGS))
    monkeypatch.setenv("RIPCORD_TOKENS", TOKENS)  # inherited by the child only
    d = DaemonProcess("--uri", f"file:{flags}", "--state-dir", str(tmp_path / "state"), *extra)
    d.start()
    monkeypatch.delenv("RIPCORD_TOKENS")
    return d


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path, monkeypatch)
    yield d
    d.stop()


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Call main() in-process; environ holds only what the test gives (no stray tokens)."""
    monkeypatch.setenv("COLUMNS", "100")  # rich's width when output is not a terminal

    def run(*argv: str, server: str | None = None, token: str | None = OPERATOR) -> Result:
        environ = {}
        if server is not None:
            environ["FLAGD_ADMIN"] = server
        if token is not None:
            environ["RIPCORD_TOKEN"] = token
        capsys.readouterr()
        code = main(list(argv), environ=environ)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def flags(daemon: DaemonProcess, run_cli: Run) -> Run:
    """run_cli pointed at the daemon (through FLAGD_ADMIN)."""

    def run(*argv: str, token: str | None = OPERATOR) -> Result:
        return run_cli(*argv, server=f"127.0.0.1:{daemon.port}", token=token)

    return run
