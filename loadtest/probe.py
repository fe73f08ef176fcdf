"""Flag probes for the drill's anchors: evaluate the circuit flag in a loop and record when the
value changes. One probe per process (run ``python -m loadtest.probe MODE ...``):

- ``rpc``: the official OpenFeature flagd provider (`openfeature-provider-flagd`) in RPC mode
  against the daemon's evaluation port: the flag is static, so the provider serves it from its
  LRU cache and drops the cache on the EventStream's configuration_change.
- ``in-process``: the same provider in in-process mode on the daemon's sync port (SyncFlags,
  local evaluation).
- ``ripcord``: our `router.flags.FlagClient` and `router.routing.decide`, what a router
  process runs (the client's asyncio loop in a thread, the evaluation loop in the main one).

The official provider ships its own copy of the flagd protos, which clash with ours
(`ripcord_pb`) in one process: hence a process per probe, and no import of ours at module level.

Between evaluations the loop sleeps ``--interval-us`` (default 200 us): a loop that never
sleeps would hold the GIL and delay the provider's own stream thread by up to the interpreter's
switch interval (5 ms), measuring the loop instead of the provider. Output, one JSON object per
line: ``{"ready": t}`` once the first value is in, then ``{"t": time.time(), "value": v}`` at
every change, and ``{"evaluations": n, "seconds": s}`` at exit (SIGTERM or SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

CIRCUIT = "payments.new-router.circuit-open"
MODES = ("rpc", "in-process", "ripcord")


class Log:
    """JSON lines, flushed at once (the bench reads the file while the probe runs)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, **item: Any) -> None:
        self.out.write(json.dumps(item) + "\n")
        self.out.flush()


def _loop(evaluate: Callable[[], bool], log: Log, stop: threading.Event, interval: float) -> None:
    """Evaluate until ``stop``; log the first value and every change."""
    last = evaluate()
    log.write(ready=time.time(), value=last)
    n, t0 = 1, time.monotonic()
    while not stop.is_set():
        value = evaluate()
        n += 1
        if value != last:
            log.write(t=time.time(), value=value)
            last = value
        time.sleep(interval)
    log.write(evaluations=n, seconds=time.monotonic() - t0)


def run_openfeature(mode: str, host: str, port: int, log: Log, stop: threading.Event,
                    interval: float) -> None:  # fmt: skip
    """The official provider, RPC or in-process."""
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import CacheType, ResolverType
    from openfeature.provider import ProviderStatus

    resolver = ResolverType.RPC if mode == "rpc" else ResolverType.IN_PROCESS
    provider = FlagdProvider(
        resolver_type=resolver, host=host, port=port, cache=CacheType.LRU, deadline_ms=1000
    )
    api.set_provider(provider, "probe")
    client = api.get_client("probe")
    deadline = time.monotonic() + 20
    while client.get_provider_status() != ProviderStatus.READY:
        if time.monotonic() > deadline:
            raise TimeoutError(f"provider not READY in 20 s ({mode} {host}:{port})")
        time.sleep(0.01)
    try:
        _loop(lambda: bool(client.get_boolean_value(CIRCUIT, False)), log, stop, interval)
    finally:
        api.shutdown()


def run_ripcord(target: str, log: Log, stop: threading.Event, interval: float) -> None:
    """Our flag client (its asyncio loop in a thread, as the providers run their streams) and
    the router's routing decision, evaluated in the same loop as the providers."""
    from router.flags import FlagClient
    from router.routing import decide

    loop = asyncio.new_event_loop()
    flags = FlagClient(target)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(flags.start(), loop).result(5)
    deadline = time.monotonic() + 20
    while flags.snapshot.version == 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no flags from {target} in 20 s")
        time.sleep(0.01)

    def circuit_open() -> bool:
        d = decide(flags.snapshot, merchant_id="m-probe", customer_id="", dcc_opt_in=False)
        return d.reason == "circuit-open"

    try:
        _loop(circuit_open, log, stop, interval)
    finally:
        asyncio.run_coroutine_threadsafe(flags.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("target", help="host:port: evaluation port (rpc), else the sync port")
    parser.add_argument("--interval-us", type=float, default=200.0)
    parser.add_argument("--out", default="-", help="output file (default stdout)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        log = Log(out)
        interval = args.interval_us / 1e6
        if args.mode == "ripcord":
            run_ripcord(args.target, log, stop, interval)
        else:
            run_openfeature(args.mode, host, int(port), log, stop, interval)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
