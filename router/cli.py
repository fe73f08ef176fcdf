"""`ripcord router serve …` (also `python -m router serve …`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ripcord_pb.ripcord.payments.v1 import payments_pb2, payments_pb2_grpc
from router.engines import FaultConfigError, parse_faults
from router.flags import FlagClient
from router.fx import FxProvider, FxService, StaticRates
from router.ledger import Ledger
from router.service import PaymentRouterService, RouterConfig
from router.telemetry import setup

log = logging.getLogger("router")

EPILOG = """\
examples:
  ripcord router serve --flagd localhost:8015 --fx http://127.0.0.1:8099
  ripcord router serve --db postgresql://postgres@127.0.0.1:5432/test --processes 2

Flags come from the daemon's sync stream (in-process evaluation, no RPC per payment); before
the first snapshot arrives every payment goes to the legacy engine. Fault injection
(--inject-faults) additionally needs RIPCORD_FAULT_INJECTION=i-know-this-breaks-payments.
"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The `serve` command line."""
    parser = argparse.ArgumentParser(prog=prog, description="Ripcord's reference payment router.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve ripcord.payments.v1.PaymentRouter",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--port", type=int, default=50051, help="gRPC port (50051)")
    serve.add_argument("--host", default="0.0.0.0", help="listen address (0.0.0.0)")
    serve.add_argument("--metrics-port", type=int, default=9464, help="/metrics port (9464)")
    serve.add_argument(
        "--flagd", default="localhost:8015", help="the daemon's sync address (localhost:8015)"
    )
    serve.add_argument(
        "--db", default=None,
        help="payments database URL (default sqlite:///.state/router/payments.db)",
    )  # fmt: skip
    serve.add_argument("--fx", default=None, help="FX rate provider base URL (none: static only)")
    serve.add_argument(
        "--fx-timeout-ms", type=float, default=150.0, help="live FX deadline (150 ms)"
    )
    serve.add_argument(
        "--markup", action="append", default=[], metavar="MERCHANT=DECIMAL",
        help="DCC markup per merchant, e.g. m-1=0.035 (default 0.03)",
    )  # fmt: skip
    serve.add_argument(
        "--inject-faults", action="append", default=[], metavar="ENGINE:SPEC",
        help="drills only: new:latency=50ms,errors=0.05",
    )  # fmt: skip
    serve.add_argument(
        "--processes", type=int, default=1,
        help="router processes sharing --port (SO_REUSEPORT), each with its own flag stream; "
        "metrics on --metrics-port + i",
    )  # fmt: skip
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--log-level", default="INFO")
    return parser


async def serve(args: argparse.Namespace) -> int:
    """Run one router process until SIGTERM/SIGINT."""
    markups = {}
    for item in args.markup:
        merchant, _, value = item.partition("=")
        markups[merchant] = Decimal(value)
    faults = parse_faults(args.inject_faults)
    for engine, f in faults.items():
        log.warning("FAULT INJECTION ACTIVE on %s: %s", engine, f)
    db_url = args.db or f"sqlite:///{Path('.state/router').resolve() / 'payments.db'}"
    if not args.db:
        Path(".state/router").mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(db_url)
    provider = FxProvider(args.fx, timeout=args.fx_timeout_ms / 1000) if args.fx else None
    flags = FlagClient(args.flagd)

    def flag_state() -> tuple[int, float, bool]:
        status = flags.status
        return status.version, status.applied_at, status.state == "connected"

    telemetry = setup(metrics_port=args.metrics_port, flag_state=flag_state)
    fx = FxService(
        StaticRates.load(),
        provider,
        on_decision=lambda source, reason, stale: telemetry.fx_decisions.add(
            1, {"source": source, "reason": reason, "stale": str(stale).lower()}
        ),
    )
    service = PaymentRouterService(
        flags, ledger, fx, telemetry, RouterConfig(markups=markups, faults=faults)
    )
    options = [("grpc.so_reuseport", 1 if args.reuse_port else 0)]
    server = grpc.aio.server(options=options)
    payments_pb2_grpc.add_PaymentRouterServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    name = payments_pb2.DESCRIPTOR.services_by_name["PaymentRouter"].full_name
    reflection.enable_server_reflection(
        (name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    server.add_insecure_port(f"{args.host}:{args.port}")
    await flags.start()
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("router serving on :%d (flags from %s, db %s)", args.port, args.flagd, db_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(5)
    await flags.stop()
    ledger.close()
    return 0


def supervise(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Start ``--processes`` children on one port; forward SIGTERM; exit with the worst code.

    The first child to exit (a crash, or SIGTERM forwarded) stops the rest: a supervisor that
    kept serving on fewer processes would hide the failure. Codes of children killed by a
    signal are reported as 128 + signal, as shells do.
    """
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    # Installed before the first child exists, so a SIGTERM during start-up orphans nothing.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    base: list[str] = []
    skip = False
    for arg in argv:  # the children get the same arguments minus --processes
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            base.append(arg)
    for i in range(args.processes):
        cmd = [sys.executable, "-m", "router", *base, "--reuse-port"]
        cmd += ["--metrics-port", str(args.metrics_port + i)]
        children.append(subprocess.Popen(cmd, env=os.environ.copy()))
    try:
        # Blocks until any child exits (PEP 475 resumes it after our signal handler runs).
        pid, status = os.waitpid(-1, 0)
        for child in children:
            if child.pid == pid:  # reaped here, so Popen must be told the code
                child.returncode = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        pass
    crashed = not stopping
    if crashed:
        log.error("a router process exited on its own; stopping the others")
        forward(signal.SIGTERM, None)  # only once: a second SIGTERM would cut a drain short
    codes = [child.wait() for child in children]
    worst = 0
    for code in codes:
        code = 128 - code if code < 0 else code
        worst = max(worst, code)
    if crashed:
        worst = max(worst, 1)
    return worst


def main(argv: Sequence[str] | None = None, prog: str = "router") -> int:
    """Entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.processes > 1:
        return supervise(args, argv)
    try:
        return asyncio.run(serve(args))
    except FaultConfigError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
