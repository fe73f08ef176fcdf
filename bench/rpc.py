"""`ResolveBoolean` over gRPC vs a bare grpcio unary echo server: same machine, same client,
same request bytes, one run. The echo is the ceiling grpcio itself allows in Python."""

from __future__ import annotations

import asyncio
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


def run(seconds: float = 4.0, concurrency: int = 32, rounds: int = 2) -> tuple[float, float]:
    """Returns (daemon calls/s, echo calls/s), best of ``rounds`` alternating rounds."""
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
            ours = base = 0.0
            for _ in range(rounds):
                ours = max(ours, asyncio.run(_drive(daemon.port, payload, seconds, concurrency)))
                base = max(base, asyncio.run(_drive(echo_port, payload, seconds, concurrency)))
            return ours, base
    finally:
        echo.terminate()
        echo.wait()


def report() -> None:
    """Print the comparison."""
    ours, base = run()
    print("\n## RPC: ResolveBoolean (targeting flag) vs bare grpcio aio echo, same client")
    print(
        f"daemon {ours:,.0f} calls/s, echo {base:,.0f} calls/s: "
        f"{100 * ours / base:.0f}% of the echo's rate (target >= 60%)"
    )
