"""Kill-switch latency under load, from the client side, with two router processes; and the
router's throughput ceiling under Locust vs a lightweight asyncio gRPC driver.

One stack (`loadtest.stack`: daemon, FX simulator, `router serve --processes 2` on SQLite).
Beside it run three flag probes (`loadtest.probe`, each its own process): the official
OpenFeature flagd provider in RPC mode and in in-process mode, and our `FlagClient`, each
evaluating the circuit flag every 200 us and logging when the value changes.

1. Ceiling: the asyncio driver (`grpc.aio`, 16 channels, 64 calls in flight) and Locust (one
   local runner, 64 closed-loop users), each alone for a few seconds, fresh idempotency keys,
   the `loadtest.mix` payment mix. CPU per process says which side limits.
2. Drill at three loads: idle (no users; only the drill's probe payments, 100/s around each
   flip), moderate (Poisson users at about half of Locust's ceiling) and max (closed loop).
   Each run is the real locustfile with the drill: N flips, each measured as the time from the
   admin call's return to the first request start after which only legacy served (upper
   bound, `loadtest.drill`), beside the routers' own apply time (their /metrics) and the time
   each probe first saw the flip.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.rpc import _cpu_seconds
from bench.timing import percentile
from flagd.process import REPO
from loadtest.__main__ import locust_command
from loadtest.drill import DrillSummary
from loadtest.mix import next_payment
from loadtest.payer import Payer
from loadtest.stack import Stack

AUTHORIZE = "/ripcord.payments.v1.PaymentRouter/Authorize"
PROBES = ("ripcord", "in-process", "rpc")
PROBE_LABEL = {
    "ripcord": "our FlagClient probe",
    "in-process": "OF flagd in-process probe",
    "rpc": "OF flagd RPC probe",
}


# ---- 1. throughput ceiling -----------------------------------------------------------------


@dataclass
class Ceiling:
    label: str
    rate: float  # answered Authorize calls per second
    p50_ms: float
    p99_ms: float
    driver_cores: float
    router_cores: float  # both router processes together


async def _drive(target: str, seconds: float, concurrency: int, channels: int) -> list[float]:
    """Closed loop; returns the latency (s) of every answered call."""
    chans = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    calls = [c.unary_unary(AUTHORIZE) for c in chans]
    rng = random.Random(5)
    prefix = f"bench-aio-{os.getpid()}-{time.time_ns()}"
    latencies: list[float] = []
    count = 0
    stop_at = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal count
        call = calls[i % channels]
        while time.perf_counter() < stop_at:
            count += 1
            request = Payer.request_for(next_payment(rng), f"{prefix}-{count}")
            t0 = time.perf_counter()
            try:
                await call(request.SerializeToString(), timeout=5)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:  # failing test cards
                    raise
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    for c in chans:
        await c.close()
    return latencies


def _router_cpu(stack: Stack) -> float:
    return sum(_cpu_seconds(pid) for pid in stack.router_pids())


def ceiling_asyncio(stack: Stack, seconds: float = 8.0) -> Ceiling:
    asyncio.run(_drive(stack.target, 1.0, 16, 16))  # connect, warm up
    r0, c0, t0 = _router_cpu(stack), time.process_time(), time.perf_counter()
    latencies = asyncio.run(_drive(stack.target, seconds, 64, 16))
    wall = time.perf_counter() - t0
    return Ceiling(
        "asyncio driver (64 in flight, 16 channels)",
        len(latencies) / wall,
        1000 * percentile(latencies, 50),
        1000 * percentile(latencies, 99),
        (time.process_time() - c0) / wall,
        (_router_cpu(stack) - r0) / wall,
    )


def _authorize_row(out: Path) -> dict[str, str]:
    with (out / "loadtest_stats.csv").open() as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    return rows[("grpc", "Authorize")]


def locust_run(
    stack: Stack, out: Path, args: list[str], seconds: float
) -> tuple[int, float, float, float]:
    """One headless local-runner run: (exit code, Locust cores, router cores, wall s)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = locust_command(
        "--headless", "-t", f"{round(seconds)}s", "--csv", str(out / "loadtest"),
        "--stop-timeout", "5", "--only-summary", *stack.locust_args(), *args,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (out / "locust.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        r0, t0 = _router_cpu(stack), time.perf_counter()
        time.sleep(seconds * 0.9)
        cpu = _cpu_seconds(proc.pid)
        routers = _router_cpu(stack) - r0
        wall = time.perf_counter() - t0
        code = proc.wait(seconds + 120)
    return code, cpu / wall, routers / wall, wall


def ceiling_locust(stack: Stack, out: Path, users: int = 64, seconds: float = 12.0) -> Ceiling:
    code, locust_cores, router_cores, _ = locust_run(
        stack, out, ["-u", str(users), "-r", str(users), "--no-drill"], seconds
    )
    row = _authorize_row(out)
    return Ceiling(
        f"Locust (1 process, {users} closed-loop users), exit {code}",
        float(row["Requests/s"]),
        float(row["50%"]),
        float(row["99%"]),
        locust_cores,
        router_cores,
    )


# ---- 2. drill at three loads ---------------------------------------------------------------


def start_probes(stack: Stack, workdir: Path) -> dict[str, subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {}
    for mode in PROBES:
        target = stack.admin_target if mode == "rpc" else stack.sync_target
        cmd = [sys.executable, "-m", "loadtest.probe", mode, target,
               "--out", str(workdir / f"probe-{mode}.jsonl")]  # fmt: skip
        procs[mode] = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 30
    for mode in PROBES:
        path = workdir / f"probe-{mode}.jsonl"
        while not (path.exists() and "ready" in path.read_text()):
            if time.monotonic() > deadline or procs[mode].poll() is not None:
                raise RuntimeError(f"probe {mode} did not start")
            time.sleep(0.05)
    return procs


def probe_changes(path: Path) -> list[tuple[float, bool]]:
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(float(i["t"]), bool(i["value"])) for i in items if "t" in i]


def first_seen(changes: list[tuple[float, bool]], t_call: float, until: float) -> float | None:
    """Time the probe first saw the circuit open after ``t_call`` (before ``until``)."""
    for t, value in changes:
        if value and t_call <= t < until:
            return t
    return None


@dataclass
class Level:
    label: str
    rate: float  # user Authorize calls per second
    summary: DrillSummary
    anchors: dict[str, list[float]]  # probe -> ms from ack to first seen, per flip
    applied: list[float]  # slowest router process, ms from ack
    code: int


def drill_level(
    stack: Stack, out: Path, label: str, users: int, pace: float, flips: int, workdir: Path
) -> Level:
    interval, start = 2.5, 3.0
    # Whole seconds for -t; slack for flips that take longer than the interval under load.
    seconds = math.ceil(start + flips * (interval + 1.5) + 8)
    args = ["-u", str(users), "-r", str(max(users, 1)), "--pace", f"{pace:g}",
            "--drill-flips", str(flips), "--drill-start", f"{start:g}",
            "--drill-interval", f"{interval:g}", "--drill-p99-ms", "10"]  # fmt: skip
    code, _, _, _ = locust_run(stack, out, args, seconds)
    summary = DrillSummary.from_dict(json.loads((out / "loadtest_drill.json").read_text()))
    anchors: dict[str, list[float]] = {}
    for mode in PROBES:
        changes = probe_changes(workdir / f"probe-{mode}.jsonl")
        seen = []
        for i, f in enumerate(summary.flips):
            until = summary.flips[i + 1].t_call if i + 1 < len(summary.flips) else f.t_ack + 5
            t = first_seen(changes, f.t_call, until)
            if t is not None:
                seen.append(1000 * (t - f.t_ack))
        anchors[mode] = seen
    applied = [max(f.applied_ms) for f in summary.flips if f.applied_ms]
    rate = float(_authorize_row(out)["Requests/s"]) if users else 0.0
    return Level(label, rate, summary, anchors, applied, code)


def _cell(values: list[float]) -> str:
    if not values:
        return f"{'-':>22}"
    return f"{percentile(values, 50):>6.2f} {percentile(values, 99):>7.2f} {max(values):>7.2f}"


def report(flips: int = 10) -> None:
    """Print the ceiling and the drill tables."""
    with tempfile.TemporaryDirectory(prefix="bench-killswitch-load-") as tmp:
        workdir = Path(tmp)
        with Stack(workdir / "stack", processes=2) as stack:
            aio = ceiling_asyncio(stack)
            loc = ceiling_locust(stack, workdir / "ceiling")
            print("\n## Router throughput ceiling (2 router processes, SQLite, payment mix)")
            print(f"{'driver':<58}{'calls/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
                  f"{'driver cores':>14}{'router cores':>14}")  # fmt: skip
            for c in (aio, loc):
                print(f"{c.label:<58}{c.rate:>9,.0f}{c.p50_ms:>8.1f}{c.p99_ms:>8.1f}"
                      f"{c.driver_cores:>14.2f}{c.router_cores:>14.2f}")  # fmt: skip
            if loc.driver_cores >= 0.85:
                limit = "Locust's own CPU (one core) limits it"
            elif loc.router_cores >= 1.7 or aio.router_cores >= 1.7:
                limit = "the routers' CPU limits both"
            else:
                limit = (
                    "neither side is CPU-bound: the routers wait on their durable SQLite "
                    "commits (one writer, fsync per payment)"
                )
            print(
                f"Locust reaches {100 * loc.rate / aio.rate:.0f}% of the asyncio driver's rate "
                f"at the same concurrency; {limit} (2 cores shared by drivers, routers, daemon)"
            )
            procs = start_probes(stack, workdir)
            try:
                moderate_users = 10
                pace = max(1.0, 0.5 * loc.rate / moderate_users)
                levels = [
                    drill_level(stack, workdir / "idle", "idle (probes only)", 0, 0, flips,
                                workdir),
                    drill_level(stack, workdir / "moderate", "moderate", moderate_users, pace,
                                flips, workdir),
                    drill_level(stack, workdir / "max", "max (closed loop, 64 users)", 64, 0,
                                flips, workdir),
                ]  # fmt: skip
            finally:
                for p in procs.values():
                    p.terminate()
                    p.wait(10)
    _print_levels(levels, flips)


def _print_levels(levels: list[Level], flips: int) -> None:
    print(f"\n## Kill-switch drill under load: {flips} flips per level, 2 router processes")
    print("ms from the admin call's return (ack); p50 / p99 / max; negative = before the ack")
    print(f"{'':<44}" + "".join(f"{lv.label[:26]:>28}" for lv in levels))
    print(f"{'user load, Authorize calls/s':<44}" + "".join(f"{lv.rate:>28,.0f}" for lv in levels))

    def row(label: str, values: list[list[float]]) -> None:
        print(f"{label:<44}" + "".join(f"{_cell(v):>28}" for v in values))

    row("client: ack -> legacy-only (Locust stat)", [lv.summary.latencies for lv in levels])
    row(
        "client: ack -> last new-path start",
        [[f.last_new_ms or 0.0 for f in lv.summary.flips] for lv in levels],
    )
    row("routers applied (slowest of 2, /metrics)", [lv.applied for lv in levels])
    for mode in PROBES:
        row(PROBE_LABEL[mode] + ": first seen", [lv.anchors[mode] for lv in levels])
    row("admin call (durable commit incl.)", [[f.admin_ms for f in lv.summary.flips]
                                              for lv in levels])  # fmt: skip
    late = [sum(len(f.late) for f in lv.summary.flips) for lv in levels]
    print(f"{'requests on the new path after the ack':<44}" + "".join(f"{n:>28}" for n in late))
    verdicts = []
    for lv in levels:
        problems = lv.summary.problems
        verdicts.append("ok" if not problems else f"{len(problems)} problem(s)")
    print(
        f"{'drill verdict (p99 <= 10 ms), exit code':<44}"
        + "".join(f"{f'{v}, {lv.code}':>28}" for v, lv in zip(verdicts, levels, strict=True))
    )
    for lv in levels:
        for problem in lv.summary.problems:
            print(f"  {lv.label}: {problem}")
    print(
        "The Locust stat is an upper bound: the next request start after the switch, so it "
        "includes the sampling gap between requests; 'last new-path start' is the lower bound "
        "(0 when no request started after the ack took the new path)."
    )


def main(argv: list[str] | None = None) -> Any:
    report(int(argv[0]) if argv else 10)


if __name__ == "__main__":
    main(sys.argv[1:])
