"""`ripcord demo`: the release plan rehearsed on one machine.

Starts the flag daemon (on a scratch copy of `deploy/flags/payments.flagd.json`), the FX rate
simulator and the payment router as real processes, sends payments, rolls the new router out
through the admin API, opens the circuit the way on-call would at 2 AM, and shows each effect
from the client's side: which engine served each payment and which flag version decided it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from flagd.process import REPO, DaemonProcess, free_port
from ripcord.flags_cli import main as flags_main
from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2 as ev
from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2_grpc as ev_grpc
from ripcord_pb.ripcord.admin.v1 import admin_pb2 as admin_pb
from ripcord_pb.ripcord.admin.v1 import admin_pb2_grpc as admin_grpc
from ripcord_pb.ripcord.payments.v1 import payments_pb2 as pay
from ripcord_pb.ripcord.payments.v1 import payments_pb2_grpc as pay_grpc

FLAGS = REPO / "deploy" / "flags" / "payments.flagd.json"
RELEASE = "payments.new-router.enabled"
CIRCUIT = "payments.new-router.circuit-open"
DCC = "payments.dynamic-currency.enabled"

# A payment mix: currencies with 0, 2 and 3 decimals, approving and declining test cards.
MIX = [
    ("EUR", 1999, "424242", "USD"),
    ("JPY", 5400, "424242", "JPY"),
    ("KWD", 12345, "555555", "USD"),
    ("USD", 2500, "400002", "USD"),  # a declining test BIN
    ("GBP", 899, "424242", "EUR"),
]


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


class _Events(threading.Thread):
    """Prints the daemon's EventStream messages as they arrive (what a provider sees)."""

    def __init__(self, channel: grpc.Channel):
        super().__init__(daemon=True)
        self.stub = ev_grpc.ServiceStub(channel)
        self.changed = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            for message in self.stub.EventStream(ev.EventStreamRequest()):
                flags = ", ".join(MessageToDict(message.data).get("flags", {}))
                print(f"   [event stream] {message.type} {flags}", flush=True)
                if message.type == "provider_ready":
                    self.ready.set()
                elif message.type == "configuration_change":
                    self.changed.set()
        except grpc.RpcError:
            pass


class Demo:
    """The running stack and the few things the story does with it."""

    def __init__(self, work: Path):
        self.work = work
        self.token = secrets.token_urlsafe(24)  # a throwaway operator token for this run
        self.flags = work / "payments.flagd.json"
        self.processes: list[subprocess.Popen[str]] = []
        self.daemon: DaemonProcess | None = None
        self.sent = 0

    # -- processes -------------------------------------------------------------------------

    def start(self) -> None:
        """Daemon, FX simulator, router; wait until each is ready."""
        shutil.copy(FLAGS, self.flags)
        shutil.rmtree(self.work / "state", ignore_errors=True)
        shutil.rmtree(self.work / "router", ignore_errors=True)
        self.daemon = DaemonProcess(
            "--uri", f"file:{self.flags}", "--state-dir", str(self.work / "state"),
            "--log-level", "WARNING",
            preferred_ports=(8013, 8014, 8015), capture=False,
            env={"RIPCORD_TOKENS": f"demo-oncall:operator:{self.token}"},
        )  # fmt: skip
        _say("starting the flag daemon, the FX simulator and the payment router")
        print("   $ python " + " ".join(self.daemon.command[1:]))
        self.daemon.start(timeout=20)
        self.fx_port = free_port(8099)
        self.router_port = free_port(50051)
        self.metrics_port = free_port(9464)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        fx_cmd = [sys.executable, "-m", "router.fxsim", "--port", str(self.fx_port)]
        router_cmd = [
            sys.executable, "-m", "router", "serve", "--host", "127.0.0.1",
            "--port", str(self.router_port), "--metrics-port", str(self.metrics_port),
            "--flagd", f"127.0.0.1:{self.daemon.sync_port}",
            "--db", f"sqlite:///{self.work / 'router' / 'payments.db'}",
            "--fx", f"http://127.0.0.1:{self.fx_port}", "--log-level", "WARNING",
        ]  # fmt: skip
        (self.work / "router").mkdir(parents=True, exist_ok=True)
        for cmd in (fx_cmd, router_cmd):
            print("   $ python " + " ".join(cmd[1:]))
            self.processes.append(subprocess.Popen(cmd, cwd=self.work, env=env, text=True))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.router_port}")
        grpc.channel_ready_future(self.channel).result(timeout=20)
        self.daemon_channel = grpc.insecure_channel(f"127.0.0.1:{self.daemon.port}")
        self.router = pay_grpc.PaymentRouterStub(self.channel)
        self.admin = admin_grpc.FlagAdminStub(self.daemon_channel)
        self.wait_router_version(1)
        print(
            f"   flagd :{self.daemon.port}/:{self.daemon.sync_port}  fx-sim :{self.fx_port}  "
            f"router :{self.router_port} (metrics :{self.metrics_port})"
        )

    def stop(self) -> int:
        """SIGTERM everything; the worst exit code."""
        codes = []
        for proc in reversed(self.processes):
            proc.terminate()
        for proc in self.processes:
            codes.append(proc.wait(15))
        if self.daemon is not None:
            codes.append(self.daemon.stop())
        return max(codes, default=0)

    def kill(self) -> None:
        """Leave nothing running, whatever happened."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
        if self.daemon is not None:
            self.daemon.kill()

    # -- the story's verbs -----------------------------------------------------------------

    def router_metric(self, prefix: str, needle: str) -> float:
        """One sample from the router's /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(prefix) and needle in line:
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_router_version(self, version: int) -> float:
        """Poll the router until its flag snapshot is at ``version``; returns when (monotonic)."""
        deadline = time.monotonic() + 10
        while self.router_metric("payments_flags", 'what="version"') < version:
            if time.monotonic() > deadline:
                raise TimeoutError(f"router never applied flag version {version}")
            time.sleep(0.002)
        return time.monotonic()

    def payments(self, n: int, *, dcc: bool = False) -> Counter[str]:
        """Send ``n`` payments; count them by engine (and FX source for DCC ones)."""
        seen: Counter[str] = Counter()
        for i in range(n):
            self.sent += 1
            ccy, amount, card_bin, card_ccy = MIX[i % len(MIX)]
            request = pay.AuthorizeRequest(
                idempotency_key=f"demo-{self.sent}",
                merchant_id=f"merchant-{i % 40}",
                customer_id=f"customer-{i}",
                amount_minor=amount,
                currency=ccy,
                card=pay.Card(token=f"tok_{i}", bin=card_bin, last4="4242", currency=card_ccy),
                dcc_opt_in=dcc,
            )
            reply = self.router.Authorize(request, timeout=10)
            seen[reply.engine] += 1
            if dcc and reply.experiment_variant:
                seen[f"{reply.experiment_variant}/fx:{reply.fx_quote.source or 'none'}"] += 1
        return seen

    def change(self, call: Callable[..., Any], request: Any) -> Any:
        """An admin call with the operator token."""
        return call(request, metadata=(("authorization", f"Bearer {self.token}"),))

    def rollout(self, key: str, weights: dict[str, int], reason: str) -> int:
        """SetRollout, as the canary runner does at each step; waits for the router."""
        reply = self.change(
            self.admin.SetRollout,
            admin_pb.SetRolloutRequest(
                key=key,
                reason=reason,
                weights=[admin_pb.RolloutWeight(variant=v, weight=w) for v, w in weights.items()],
            ),
        )
        self.wait_router_version(reply.version)
        return int(reply.version)


def _show(counts: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc["flags"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)  # atomic, like a ConfigMap update


def story(demo: Demo) -> None:
    """The rehearsal, step by step."""
    assert demo.daemon is not None
    events = _Events(demo.daemon_channel)
    events.start()
    events.ready.wait(5)

    _say("day 0: the new router is dark (release flag at 0%)")
    print(f"   200 payments -> {_show(demo.payments(200))}")

    _say("canary step: the release flag to 25% through the admin API (what `canary run` does)")
    version = demo.rollout(RELEASE, {"on": 25, "off": 75}, "canary step 25%")
    print(f"   configuration version {version}")
    print(f"   200 payments -> {_show(demo.payments(200))}  (split by merchant, stable)")

    _say("the DCC experiment: 50/50 for opted-in customers, quotes from the live FX provider")
    demo.rollout(RELEASE, {"on": 100, "off": 0}, "full rollout for the experiment demo")
    demo.rollout(DCC, {"treatment": 50, "control": 50}, "start the DCC experiment")
    print(f"   100 opted-in payments -> {_show(demo.payments(100, dcc=True))}")
    urllib.request.urlopen(
        urllib.request.Request(
            f"http://127.0.0.1:{demo.fx_port}/control", data=b'{"mode": "gone"}', method="POST"
        ),
        timeout=5,
    ).read()
    print("   the FX provider goes away (fx-sim mode 'gone'):")
    print(f"   100 opted-in payments -> {_show(demo.payments(100, dcc=True))}")
    print(
        "   (fallback to the static table; its rates are older than their freshness bound, "
        "so no conversion is offered rather than a stale one)"
    )

    _say("2 AM: error spike on the new router. On-call opens the circuit (one admin call)")
    events.changed.clear()
    t0 = time.monotonic()
    reply = demo.change(
        demo.admin.SetDefaultVariant,
        admin_pb.SetDefaultVariantRequest(
            key=CIRCUIT, variant="on", reason="INC-42: new router error spike"
        ),
    )
    returned = time.monotonic()
    applied = demo.wait_router_version(reply.version)
    print(
        f"   committed as version {reply.version} by {reply.change.actor} in "
        f"{1000 * (returned - t0):.1f} ms; the router applied it within "
        f"{1000 * (applied - returned):.1f} ms of the call's return (polling its /metrics)"
    )
    print(f"   200 payments -> {_show(demo.payments(200))}")
    print("   $ ripcord flags audit " + CIRCUIT)
    os.environ["RIPCORD_TOKEN"] = demo.token
    os.environ.setdefault("COLUMNS", "150")  # tables stay readable in a pipe
    flags_main(["--server", f"127.0.0.1:{demo.daemon.port}", "audit", CIRCUIT])

    _say("a file edit cannot silently undo the admin override; an invalid edit is refused")
    _edit(demo.flags, lambda f: f[CIRCUIT].update({"defaultVariant": "off"}))
    time.sleep(0.6)
    stub = ev_grpc.ServiceStub(demo.daemon_channel)
    r = stub.ResolveBoolean(ev.ResolveBooleanRequest(flag_key=CIRCUIT))
    print(f"   after editing the file to 'off': {CIRCUIT} = {r.value} (override holds)")
    _edit(demo.flags, lambda f: f[CIRCUIT].update({"defaultVariant": "onn"}))
    time.sleep(0.6)
    print(f"   /readyz: {demo.daemon.readyz()['sources'][0]['last_error']}")

    _say("the rollout, step by step, in the audit trail")
    flags_main(["--server", f"127.0.0.1:{demo.daemon.port}", "list"])
    print(
        f"\n   router: {demo.router_metric('payments_idempotent_replays_total', '') or 0:.0f} "
        "replays; every payment above is in the router's SQLite ledger"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rehearsal; returns the exit code."""
    parser = argparse.ArgumentParser(prog="ripcord demo", description=__doc__)
    parser.add_argument(
        "--workdir", default=str(REPO / ".state" / "demo"), help="scratch directory"
    )
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    demo = Demo(work)
    try:
        demo.start()
        story(demo)
        _say("graceful stop (SIGTERM): streams are told provider_shutdown, processes drain")
        code = demo.stop()
        print(f"   all processes exited with {code}")
        return 0 if code == 0 else 1
    finally:
        demo.kill()
