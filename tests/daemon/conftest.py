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

__all__ = ["REPO", "RunningDaemon", "write_flags"]


def write_flags(path: Path, doc: dict[str, Any]) -> None:
    """Replace a flag file atomically, the way a ConfigMap update or an editor's save does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


class RunningDaemon(DaemonProcess):
    """A daemon process plus stubs; channels are closed when the test ends."""

    def __init__(self, *args: str, cwd: Path | None = None):
        super().__init__(*args, cwd=cwd)
        self.channels: list[grpc.Channel] = []

    def channel(self, port: int | None = None) -> grpc.Channel:
        ch = grpc.insecure_channel(f"127.0.0.1:{port or self.port}")
        self.channels.append(ch)
        return ch

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
def daemon_factory() -> Iterator[Callable[..., RunningDaemon]]:
    started: list[RunningDaemon] = []

    def make(*args: str, cwd: Path | None = None, wait: bool = True) -> RunningDaemon:
        d = RunningDaemon(*args, cwd=cwd)
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
