"""`python -m router serve --processes 2`: two children on one port (SO_REUSEPORT), each with
its own flag stream and its own /metrics port, stopped together by SIGTERM to the parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from flagd.process import REPO, DaemonProcess, free_port
from loadtest.stack import consecutive_free_ports
from ripcord_pb.ripcord.admin.v1 import admin_pb2, admin_pb2_grpc
from ripcord_pb.ripcord.payments.v1 import payments_pb2 as pb
from ripcord_pb.ripcord.payments.v1 import payments_pb2_grpc
from router.ledger import Ledger
from tests.router.test_service import CIRCUIT, FLAGS, RELEASE, TOKEN

PROCESSES = 2
CLIENTS = 16  # connections; the kernel spreads connections (not calls) across the children
CALLS_PER_CLIENT = 3


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the first series ``name`` whose labels include ``labels``, or None."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] == name and all(w in series for w in wanted):
            return float(value)
    return None


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every series ``name`` whose labels include ``labels``."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] == name and all(w in series for w in wanted):
            total += float(value)
    return total


@dataclass
class Fleet:
    daemon: DaemonProcess
    parent: subprocess.Popen[str]
    port: int
    metrics_ports: list[int]

    def scrape(self, i: int) -> str:
        url = f"http://127.0.0.1:{self.metrics_ports[i]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def versions(self) -> list[int]:
        out = []
        for i in range(len(self.metrics_ports)):
            try:
                out.append(int(metric(self.scrape(i), "payments_flags", what="version") or 0))
            except OSError:
                out.append(0)
        return out

    def wait_versions(self, version: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while min(self.versions()) < version:
            assert self.parent.poll() is None, "the supervisor exited"
            assert time.monotonic() < deadline, f"versions {self.versions()}, want {version}"
            time.sleep(0.05)

    def open_sync_streams(self) -> float | None:
        return metric(self.daemon.http("/metrics")[1], "flagd_open_streams", kind="sync")

    def admin(self, method: str, request: Any) -> Any:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.daemon.port}")
        try:
            call = getattr(admin_pb2_grpc.FlagAdminStub(channel), method)
            return call(request, metadata=(("authorization", f"Bearer {TOKEN}"),))
        finally:
            channel.close()

    def children(self) -> list[int]:
        """The supervisor's child pids."""
        path = Path(f"/proc/{self.parent.pid}/task/{self.parent.pid}/children")
        return [int(pid) for pid in path.read_text().split()]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    daemon = DaemonProcess(
        "--uri", f"file:{FLAGS}", "--state-dir", str(tmp_path / "flagd"),
        env={"RIPCORD_TOKENS": f"tester:admin:{TOKEN}"},
    ).start()  # fmt: skip
    port, metrics_base = free_port(), consecutive_free_ports(PROCESSES)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--processes", str(PROCESSES),
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_base),
         "--flagd", f"127.0.0.1:{daemon.sync_port}",
         "--db", f"sqlite:///{tmp_path / 'payments.db'}", "--log-level", "WARNING"],
        cwd=tmp_path, env=env, text=True,
    )  # fmt: skip
    fleet = Fleet(daemon, parent, port, [metrics_base + i for i in range(PROCESSES)])
    try:
        fleet.wait_versions(1, timeout=20)
        yield fleet
    finally:
        if parent.poll() is None:
            parent.terminate()
            try:
                parent.wait(10)
            except subprocess.TimeoutExpired:
                parent.kill()
                parent.wait()
        daemon.stop()


def channel_to(port: int) -> grpc.Channel:
    # A local subchannel pool: each channel opens its own TCP connection (grpcio would
    # otherwise share one between same-target channels, and all calls would hit one child).
    return grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


def pay_from_many_connections(port: int, prefix: str) -> list[Any]:
    """CLIENTS channels, each sending CALLS_PER_CLIENT payments with fresh keys."""
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        channel = channel_to(port)
        try:
            stub = payments_pb2_grpc.PaymentRouterStub(channel)
            for i in range(CALLS_PER_CLIENT):
                reply = stub.Authorize(
                    pb.AuthorizeRequest(
                        idempotency_key=f"{prefix}-{c}-{i}", merchant_id=f"m-{c}",
                        customer_id="c-1", amount_minor=1250, currency="EUR",
                        card=pb.Card(token="tok", bin="424242", last4="4242"),
                    ),
                    timeout=10,
                )  # fmt: skip
                with lock:
                    results.append(reply)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            channel.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors
    assert len(results) == CLIENTS * CALLS_PER_CLIENT
    return results


def requests_per_process(fleet: Fleet, **labels: str) -> list[float]:
    return [
        metric_sum(fleet.scrape(i), "payments_requests_total", **labels)
        for i in range(len(fleet.metrics_ports))
    ]


def test_two_processes_share_a_port_and_each_follow_the_flags(fleet: Fleet, tmp_path: Path) -> None:
    # Each child holds its own sync stream.
    deadline = time.monotonic() + 10
    while fleet.open_sync_streams() != PROCESSES:
        assert time.monotonic() < deadline, f"open sync streams: {fleet.open_sync_streams()}"
        time.sleep(0.05)

    # Connections spread over both children; every call is counted by exactly one of them.
    released = fleet.admin("SetRollout", admin_pb2.SetRolloutRequest(
        key=RELEASE, reason="test", weights=[admin_pb2.RolloutWeight(variant="on", weight=100),
                                             admin_pb2.RolloutWeight(variant="off", weight=0)]))  # fmt: skip
    fleet.wait_versions(released.version)
    replies = pay_from_many_connections(fleet.port, "spread")
    assert {r.engine for r in replies} == {"new"}
    per_process = requests_per_process(fleet, engine="new", status="OK")
    assert sum(per_process) == len(replies), per_process
    assert all(n > 0 for n in per_process), f"one child served everything: {per_process}"

    # A circuit flip reaches both children: both report the version, and every connection
    # (whichever child it landed on) now routes to legacy.
    opened = fleet.admin(
        "SetDefaultVariant",
        admin_pb2.SetDefaultVariantRequest(key=CIRCUIT, variant="on", reason="drill"),
    )
    fleet.wait_versions(opened.version)
    assert fleet.versions() == [opened.version] * PROCESSES
    replies = pay_from_many_connections(fleet.port, "circuit")
    assert {(r.engine, r.flag_version) for r in replies} == {("legacy", opened.version)}
    per_process = requests_per_process(fleet, engine="legacy", status="OK")
    assert sum(per_process) == len(replies), per_process
    assert all(n > 0 for n in per_process), f"one child served everything: {per_process}"

    # Both children wrote to the one database.
    with Ledger.open(f"sqlite:///{tmp_path / 'payments.db'}") as ledger:
        assert ledger.count_payments() == 2 * CLIENTS * CALLS_PER_CLIENT

    # SIGTERM to the parent stops both children cleanly, and their streams close.
    children = fleet.children()
    assert len(children) == PROCESSES
    fleet.parent.send_signal(signal.SIGTERM)
    assert fleet.parent.wait(15) == 0
    for pid in children:  # reaped by the supervisor, so gone for good
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for i in range(PROCESSES):
        with pytest.raises(OSError):
            fleet.scrape(i)
    deadline = time.monotonic() + 10
    while fleet.open_sync_streams() != 0:
        assert time.monotonic() < deadline, f"open sync streams: {fleet.open_sync_streams()}"
        time.sleep(0.05)


def test_a_child_killed_by_a_signal_fails_the_supervisor(fleet: Fleet) -> None:
    children = fleet.children()
    assert len(children) == PROCESSES
    os.kill(children[0], signal.SIGKILL)  # a crash (OOM killer, segfault) of one child
    deadline = time.monotonic() + 10
    while all(v > 0 for v in fleet.versions()):  # until the dead child's /metrics is gone
        assert time.monotonic() < deadline, "the killed child still answers"
        time.sleep(0.05)
    # The supervisor notices on its own, stops the other child and reports the failure.
    assert fleet.parent.wait(15) == 128 + signal.SIGKILL
