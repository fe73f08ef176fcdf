"""`ResolveBoolean` over gRPC vs a bare grpcio unary echo server: same machine, same client,
same request bytes, one run. The echo is the ceiling grpcio itself allows in Python."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from google.protobuf.struct_pb2 import Struct

from flagd.process import REPO, DaemonProcess, free_port
from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2 as v2

METHOD = "/flagd.evaluation.v2.Service/ResolveBoolean"
FLAGS = REPO / "deploy" / "flags" / "payments.flagd.json"

ECHO_SERVER = """
import asyncio, sys, grpc

async def echo(request, context):
    return request

async def main(port):
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "flagd.evaluation.v2.Service", {"ResolveBoolean": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

asyncio.run(main(int(sys.argv[1])))
"""


async def _drive(port: int, payload: bytes, seconds: float, concurrency: int) -> float:
    """Closed loop: ``concurrency`` callers on one channel; returns completed calls per second."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        await call(payload)  # connect and warm up
        done = 0
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await call(payload)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured(
    pid: int, port: int, payload: bytes, seconds: float, conc: int
) -> tuple[float, float]:
    """(calls/s, server CPU microseconds per call) for one closed-loop round."""
    cpu0 = _cpu_seconds(pid)
    t0 = time.perf_counter()
    rate = asyncio.run(_drive(port, payload, seconds, conc))
    calls = rate * (time.perf_counter() - t0)
    return rate, 1e6 * (_cpu_seconds(pid) - cpu0) / max(calls, 1.0)


def run(
    seconds: float = 4.0, concurrency: int = 32, rounds: int = 2
) -> tuple[tuple[float, float], tuple[float, float]]:
    """((daemon calls/s, CPU us/call), (echo calls/s, CPU us/call)), best of ``rounds``."""
    ctx = Struct()
    ctx.update({"targetingKey": "merchant-42", "dcc_opt_in": True})
    payload = v2.ResolveBooleanRequest(
        flag_key="payments.dynamic-currency.enabled", context=ctx
    ).SerializeToString()
    echo_port = free_port()
    echo = subprocess.Popen(
        [sys.executable, "-c", ECHO_SERVER, str(echo_port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        with DaemonProcess("--uri", f"file:{Path(FLAGS)}", "--log-level", "WARNING") as daemon:
            assert daemon.proc is not None
            ours = base = (0.0, 0.0)
            for _ in range(rounds):
                ours = max(
                    ours, _measured(daemon.proc.pid, daemon.port, payload, seconds, concurrency)
                )
                base = max(base, _measured(echo.pid, echo_port, payload, seconds, concurrency))
            return ours, base
    finally:
        echo.terminate()
        echo.wait()


def report() -> None:
    """Print the comparison."""
    (ours, our_cpu), (base, base_cpu) = run()
    print("\n## RPC: ResolveBoolean (targeting flag) vs bare grpcio aio echo, same client")
    print(
        f"closed loop, 32 in flight: daemon {ours:,.0f} calls/s, echo {base:,.0f} calls/s: "
        f"{100 * ours / base:.0f}% of the echo's rate (target >= 60%)"
    )
    # On 2 cores the Python client saturates too; server CPU per call is the client-free view.
    print(
        f"server CPU per call: daemon {our_cpu:.0f} us, echo {base_cpu:.0f} us: the daemon could "
        f"serve {100 * base_cpu / our_cpu:.0f}% of the echo's rate when the server is the limit"
    )
