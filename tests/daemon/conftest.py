"""A real daemon subprocess on free ports, and gRPC stubs pointed at it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from flagd.process import REPO, DaemonProcess
from ripcord_pb.flagd.evaluation.v1 import evaluation_pb2_grpc as v1_grpc
from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2_grpc as v2_grpc
from ripcord_pb.flagd.sync.v1 import sync_pb2_grpc
from ripcord_pb.ripcord.admin.v1 import admin_pb2_grpc

__all__ = ["REPO", "TOKENS", "RunningDaemon", "write_flags"]

# One token per role, handed to every test daemon through RIPCORD_TOKENS.
TOKENS = {
    "viewer": "viewer-token-0123456789",
    "operator": "operator-token-0123456789",
    "admin": "admin-token-0123456789abc",
}
TOKENS_ENV = ",".join(f"test-{role}:{role}:{token}" for role, token in TOKENS.items())


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer …` to every call on a channel."""

    def __init__(self, token: str):
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self.header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)


def write_flags(path: Path, doc: dict[str, Any]) -> None:
    """Replace a flag file atomically, the way a ConfigMap update or an editor's save does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


class RunningDaemon(DaemonProcess):
    """A daemon process plus stubs; channels are closed when the test ends."""

    def __init__(self, *args: str, cwd: Path | None = None, state_dir: Path | None = None):
        if state_dir is not None and "--state" not in args and "--state-dir" not in args:
            args = (*args, "--state-dir", str(state_dir))
        super().__init__(*args, cwd=cwd, env={"RIPCORD_TOKENS": TOKENS_ENV})
        self.channels: list[grpc.Channel] = []

    def channel(self, port: int | None = None) -> grpc.Channel:
        ch = grpc.insecure_channel(f"127.0.0.1:{port or self.port}")
        self.channels.append(ch)
        return ch

    def admin(self, role: str | None = "admin") -> admin_pb2_grpc.FlagAdminStub:
        """An admin stub whose calls carry the test token of ``role`` (None: no token)."""
        channel = self.channel()
        if role is not None:
            channel = grpc.intercept_channel(channel, _Bearer(TOKENS[role]))
        return admin_pb2_grpc.FlagAdminStub(channel)

    def v1(self) -> v1_grpc.ServiceStub:
        return v1_grpc.ServiceStub(self.channel())

    def v2(self) -> v2_grpc.ServiceStub:
        return v2_grpc.ServiceStub(self.channel())

    def sync(self) -> sync_pb2_grpc.FlagSyncServiceStub:
        return sync_pb2_grpc.FlagSyncServiceStub(self.channel(self.sync_port))

    def stop(self, timeout: float = 10.0) -> int:
        code = super().stop(timeout)
        for ch in self.channels:
            ch.close()
        return code


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., RunningDaemon]]:
    """Start daemons; each test gets its own SQLite state unless it passes --state."""
    started: list[RunningDaemon] = []

    def make(*args: str, cwd: Path | None = None, wait: bool = True) -> RunningDaemon:
        d = RunningDaemon(*args, cwd=cwd, state_dir=tmp_path / "state")
        started.append(d)
        return d.start(wait=wait)  # type: ignore[return-value]

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


@pytest.fixture
def flag_file(tmp_path: Path) -> Callable[..., Path]:
    def make(doc: dict[str, Any], name: str = "flags.json") -> Path:
        path = tmp_path / name
        write_flags(path, doc)
        return path

    return make
