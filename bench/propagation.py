"""Change propagation: from the daemon applying a file change to receipt on 50 open SyncFlags
streams (wall clock on one machine; the daemon publishes its apply time on /readyz)."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import grpc

from bench.timing import percentile
from flagd.process import REPO, DaemonProcess
from ripcord_pb.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

FLAGS = REPO / "deploy" / "flags" / "payments.flagd.json"
CIRCUIT = "payments.new-router.circuit-open"


def _write(path: Path, doc: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


async def _measure(
    daemon: DaemonProcess, path: Path, streams: int, changes: int
) -> list[list[float]]:
    doc = json.loads(FLAGS.read_text())
    arrivals: list[asyncio.Queue[float]] = [asyncio.Queue() for _ in range(streams)]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{daemon.sync_port}")
    stub = sync_pb2_grpc.FlagSyncServiceStub(channel)

    async def reader(q: asyncio.Queue[float]) -> None:
        async for _ in stub.SyncFlags(sync_pb2.SyncFlagsRequest()):
            q.put_nowait(time.time())

    tasks = [asyncio.create_task(reader(q)) for q in arrivals]
    for q in arrivals:  # initial snapshot on every stream
        await asyncio.wait_for(q.get(), 10)
    samples: list[list[float]] = []
    for i in range(changes):
        doc["flags"][CIRCUIT]["defaultVariant"] = "on" if i % 2 == 0 else "off"
        _write(path, doc)
        received = [await asyncio.wait_for(q.get(), 10) for q in arrivals]
        applied = await asyncio.to_thread(lambda: daemon.readyz()["applied_at"])
        samples.append([1000 * (t - applied) for t in received])
    for t in tasks:
        t.cancel()
    await channel.close()
    return samples


def run(streams: int = 50, changes: int = 40) -> list[list[float]]:
    """Per change, per stream: milliseconds from apply to receipt."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flags.json"
        path.write_text(FLAGS.read_text())
        with DaemonProcess("--uri", f"file:{path}", "--log-level", "WARNING") as daemon:
            return asyncio.run(_measure(daemon, path, streams, changes))


def report() -> None:
    """Print p50/p99 per stream and for the last stream of each change."""
    samples = run()
    every = [ms for change in samples for ms in change]
    last = [max(change) for change in samples]
    print(
        f"\n## Propagation: file change applied -> received on 50 SyncFlags streams "
        f"({len(samples)} changes)"
    )
    print(f"every stream : p50 {percentile(every, 50):.2f} ms, p99 {percentile(every, 99):.2f} ms")
    print(
        f"last of 50   : p50 {percentile(last, 50):.2f} ms, p99 {percentile(last, 99):.2f} ms "
        "(target < 10 ms)"
    )
