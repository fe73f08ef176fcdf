"""Every command block of deploy/RUNBOOK.md, executed verbatim (bash) against a daemon."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.conftest import REPO, TOKENS

RUNBOOK = REPO / "deploy" / "RUNBOOK.md"
BLOCK = re.compile(r"<!-- runbook:([\w-]+) -->\s*```sh\n(.*?)```", re.S)


def blocks() -> dict[str, str]:
    found = dict(BLOCK.findall(RUNBOOK.read_text()))
    assert {"open-circuit", "audit", "close-circuit"} <= set(found), sorted(found)
    return found


def test_readme_shows_the_runbook_command_verbatim():
    readme = dict(BLOCK.findall((REPO / "README.md").read_text()))
    assert readme["open-circuit"] == blocks()["open-circuit"]


def run(script: str, daemon, token: str = TOKENS["operator"]) -> dict[str, Any]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "FLAGD_ADMIN": f"127.0.0.1:{daemon.port}",
        "RIPCORD_TOKEN": token,
    }
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory("--uri", f"file:{REPO / 'deploy/flags/payments.flagd.json'}")


def test_open_audit_and_close_the_circuit(daemon):
    from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2 as v2

    def circuit() -> bool:
        request = v2.ResolveBooleanRequest(flag_key="payments.new-router.circuit-open")
        return bool(daemon.v2().ResolveBoolean(request).value)

    commands = blocks()
    assert circuit() is False
    opened = run(commands["open-circuit"], daemon)
    assert int(opened["version"]) > 0 and opened["change"]["action"] == "set_default_variant"
    assert circuit() is True
    audit = run(commands["audit"], daemon)
    assert audit["changes"][-1]["reason"].startswith("INC-0000")
    run(commands["close-circuit"], daemon)
    assert circuit() is False
