"""Locust runs against a real stack (daemon, FX simulator, two router processes): the headless
run with the drill, the p99 gate, and distributed mode (master + one worker process).

One stack serves the module; each run sets the release flag to 100 % and restores it. Locust
itself only ever runs in child processes: importing it here would monkey-patch pytest."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from flagd.process import REPO
from loadtest.__main__ import run
from loadtest.drill import KILLSWITCH_NAME, KILLSWITCH_TYPE
from loadtest.stack import TOKEN, Stack
from ripcord_pb.ripcord.admin.v1 import admin_pb2, admin_pb2_grpc

CIRCUIT = "payments.new-router.circuit-open"

DRILL = ["--drill-flips", "2", "--drill-start", "3", "--drill-interval", "4"]
# Paced users, a roomy deadline and a loose drill gate: these runs check the harness, not the
# numbers (those are `make bench`'s). On a 2-core CI machine a closed loop saturates the
# routers' SQLite commits (second-long fsync stalls happen there), and at ~200 payments/s the
# drill's latency is mostly the sampling gap between requests.
LOAD = ["--pace", "25", "--deadline-ms", "5000", "--drill-p99-ms", "100"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack"), processes=2) as s:
        yield s


def locust(stack: Stack, out: Path, *args: str, workers: int = 0) -> tuple[int, str]:
    log = out / "locust.log"
    code = run(stack, [*LOAD, *args], out, workers, timeout=90, log=log)
    return code, log.read_text()


def stats_rows(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    with (out / "loadtest_stats.csv").open() as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


def drill(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "loadtest_drill.json").read_text())
    return data


def assert_reconciled(log: str) -> None:
    line = next(x for x in log.splitlines() if x.startswith("Reconciliation:"))
    assert line.endswith(": ok") and "lost 0, charged twice 0" in line, line


def test_headless_run_with_the_drill(stack: Stack, tmp_path: Path) -> None:
    code, log = locust(stack, tmp_path, "-u", "10", "-r", "10", "-t", "15s", *DRILL)
    assert code == 0, log[-3000:]
    assert (tmp_path / "loadtest.html").stat().st_size > 10_000
    rows = stats_rows(tmp_path)
    killswitch = rows[(KILLSWITCH_TYPE, KILLSWITCH_NAME)]
    assert killswitch["Request Count"] == "2" and killswitch["Failure Count"] == "0"
    authorize = rows[("grpc", "Authorize")]
    assert int(authorize["Request Count"]) > 200 and authorize["Failure Count"] == "0"
    for name in ("Authorize [replay]", "GetPayment", "RecordConversion"):
        assert int(rows[("grpc", name)]["Request Count"]) > 0, name
    assert KILLSWITCH_NAME in (tmp_path / "loadtest.html").read_text()
    summary = drill(tmp_path)
    assert [f["ok"] for f in summary["flips"]] == [True, True] and summary["problems"] == []
    for flip in summary["flips"]:
        assert flip["pre_new"] > 0 and flip["samples_after"] >= 20
        assert len(flip["applied_ms"]) == 2  # both router processes applied that version
    assert 0 < summary["p99_ms"] <= 100.0
    assert "Kill-switch drill: 2 flips (2 ok)" in log
    assert_reconciled(log)


def test_an_impossible_p99_fails_the_run(stack: Stack, tmp_path: Path) -> None:
    code, log = locust(
        stack, tmp_path, "-u", "5", "-t", "8s", "--drill-flips", "1", "--drill-start", "3",
        "--drill-p99-ms", "0.001",
    )  # fmt: skip
    assert code == 3, log[-3000:]
    summary = drill(tmp_path)
    assert summary["flips"][0]["ok"] and summary["p99_ms"] > 0.001
    assert summary["problems"] == [f"p99 {summary['p99_ms']:.3f} ms exceeds --drill-p99-ms 0.001"]
    assert_reconciled(log)


def test_distributed_run_combines_the_workers(stack: Stack, tmp_path: Path) -> None:
    code, log = locust(stack, tmp_path, "-u", "8", "-r", "8", "-t", "13s", *DRILL, workers=1)
    assert code == 0, log[-3000:]
    summary = drill(tmp_path)
    assert [f["ok"] for f in summary["flips"]] == [True, True]
    # The master runs no users, only the drill's probes: the worker's observations reached the
    # flips over Locust's messages, and so did its payment book (most acknowledged payments).
    assert all(f["nodes"] == ["master", "w0"] for f in summary["flips"]), summary["flips"]
    assert stats_rows(tmp_path)[(KILLSWITCH_TYPE, KILLSWITCH_NAME)]["Request Count"] == "2"
    assert_reconciled(log)
    acknowledged = int(log.split("Reconciliation: ", 1)[1].split(" ", 1)[0])
    probes = int(stats_rows(tmp_path)[("grpc", "Authorize (drill probe)")]["Request Count"])
    assert acknowledged > probes + 500


def test_probes_see_each_flip(stack: Stack, tmp_path: Path) -> None:
    """The drill's anchors: the official provider (RPC, in-process) and our FlagClient, each in
    its own process, log the circuit's changes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    modes = {"rpc": stack.admin_target, "in-process": stack.sync_target,
             "ripcord": stack.sync_target}  # fmt: skip
    procs = {}
    for mode, target in modes.items():
        out = str(tmp_path / f"{mode}.jsonl")
        command = [sys.executable, "-m", "loadtest.probe", mode, target, "--out", out]
        procs[mode] = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + 30
        for mode in modes:
            path = tmp_path / f"{mode}.jsonl"
            while not (path.exists() and '"ready"' in path.read_text()):
                assert procs[mode].poll() is None and time.monotonic() < deadline, mode
                time.sleep(0.05)
        flips = []
        for variant in ("on", "off"):
            request = admin_pb2.SetDefaultVariantRequest(key=CIRCUIT, variant=variant, reason="t")
            with grpc.insecure_channel(stack.admin_target) as channel:
                reply = admin_pb2_grpc.FlagAdminStub(channel).SetDefaultVariant(
                    request, metadata=(("authorization", f"Bearer {TOKEN}"),)
                )
            flips.append((variant, time.time(), reply.version))
            time.sleep(1.0)
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(10)
    for mode in modes:
        lines = [json.loads(x) for x in (tmp_path / f"{mode}.jsonl").read_text().splitlines()]
        assert lines[0]["value"] is False, (mode, lines[0])
        changes = [x for x in lines if "t" in x]
        assert [c["value"] for c in changes] == [True, False], (mode, changes)
        for c, (_, acked, _) in zip(changes, flips, strict=True):
            assert abs(c["t"] - acked) < 0.5, (mode, c, acked)  # seen around the ack
        assert lines[-1]["evaluations"] > 1000, (mode, lines[-1])
