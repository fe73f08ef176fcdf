"""`ripcord canary run` end to end: a real daemon, FX simulator and router, a real Prometheus 2.42
scraping the router every second, and the real Rollout and AnalysisTemplate from deploy/k8s with
short windows (--arg: 4 s rate window = 4 scrapes, 2 checks 2 s apart after 4 s).

Traffic is a few threads of Authorize calls with a fresh merchant each, so the flag's weight is
the share of payments the new engine takes. One rollout is healthy and reaches 100% (an operator
promotes at the `pause: {}`); in the other the router adds 300 ms to every new-engine payment
(--inject-faults) and the first gate (1%) must catch it: flag back at 0%, page sent, reason
audited.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console

from canary import cli
from flagd.process import REPO, DaemonProcess, free_port
from ripcord_pb.ripcord.admin.v1 import admin_pb2
from router.fxsim import FxSimulator
from tests.canary.promserver import PrometheusServer, prometheus_binary
from tests.router.test_service import FLAGS, RELEASE, Stack, authorize
from tests.router.test_service import TOKEN as ADMIN_TOKEN  # what Stack.admin() sends

TOKEN = "canary-e2e-operator-token-01"
WATCHDOG = 75.0  # seconds: abort a run that hangs (the healthy one takes about 30)
SHORT = ("--arg", "window=4s", "--arg", "interval=2s", "--arg", "count=2",
         "--arg", "initial-delay=4s")  # fmt: skip


@contextmanager
def router_stack(tmp_path: Path, faults: Sequence[str] = ()) -> Iterator[Stack]:
    """tests/router's stack (daemon, FX simulator, router), the router with ``faults``."""
    daemon = DaemonProcess(
        "--uri", f"file:{FLAGS}", "--state-dir", str(tmp_path / "flagd"),
        env={"RIPCORD_TOKENS": f"canary-driver:operator:{TOKEN},tester:admin:{ADMIN_TOKEN}"},
    ).start()  # fmt: skip
    fx = FxSimulator().start()
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    extra: list[str] = []
    for spec in faults:
        extra += ["--inject-faults", spec]
        env["RIPCORD_FAULT_INJECTION"] = "i-know-this-breaks-payments"
    router = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", str(metrics_port), "--flagd", f"127.0.0.1:{daemon.sync_port}",
         "--db", f"sqlite:///{tmp_path / 'payments.db'}", "--fx", fx.url,
         "--log-level", "WARNING", *extra],
        cwd=tmp_path, env=env, text=True,
    )  # fmt: skip
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stack = Stack(daemon, fx, router, port, metrics_port, channel)
    try:
        grpc.channel_ready_future(channel).result(timeout=20)
        stack.wait_version(1)
        yield stack
    finally:
        channel.close()
        router.terminate()
        router.wait(10)
        fx.stop()
        daemon.stop()


class Traffic:
    """Authorize calls from a few threads, a new merchant each (the flag buckets merchants)."""

    def __init__(self, stack: Stack, threads: int = 4) -> None:
        self.stack = stack
        self.engines: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            key = uuid.uuid4().hex
            try:
                reply = authorize(self.stack, key, merchant_id=f"m-{key[:10]}")
                self.engines[reply.engine] += 1
            except grpc.RpcError as e:
                self.failures.append(f"{e.code().name}: {e.details()}")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


@contextmanager
def observed(tmp_path: Path, faults: Sequence[str] = ()) -> Iterator[tuple[Stack, PrometheusServer, Traffic]]:  # fmt: skip
    prometheus_binary()  # fails (not skips) with the apt-get hint when missing
    with router_stack(tmp_path, faults) as stack:
        target: tuple[str, str, dict[str, str]] = (
            "payment-router",
            f"127.0.0.1:{stack.metrics_port}",
            {},
        )
        prometheus = PrometheusServer(tmp_path / "prometheus", [target], scrape_interval="1s")
        traffic = Traffic(stack)
        try:
            prometheus.start()
            prometheus.wait_for('payments_request_duration_seconds_count{job="payment-router"}')
            yield stack, prometheus, traffic
        finally:
            traffic.stop()
            prometheus.stop()


def canary(*argv: str, watchdog: float | None = None) -> tuple[int, str, str]:
    """`ripcord canary ARGV` in process; with ``watchdog``, an abort after that many seconds
    (an unexpected Inconclusive pause would otherwise wait for a human forever)."""
    out, err = StringIO(), StringIO()
    if watchdog is not None:
        state = argv[argv.index("--state-dir") + 1]
        timer = threading.Timer(
            watchdog, canary, ("abort", "--state-dir", state, "--user", "watchdog")
        )
        timer.daemon = True
        timer.start()
    code = cli.main(
        list(argv),
        environ={**os.environ, "RIPCORD_TOKEN": TOKEN, "RIPCORD_USER": "e2e"},
        console=Console(file=out, width=200),
        err_console=Console(file=err, width=200),
    )
    if watchdog is not None:
        timer.cancel()
    return code, out.getvalue(), err.getvalue()


def run_args(stack: Stack, prometheus: PrometheusServer, tmp_path: Path) -> list[str]:
    page = tmp_path / "page"
    hook = (
        f'cat > {page}.json; echo "$RIPCORD_EVENT $RIPCORD_FLAG_WEIGHT $RIPCORD_STEP" > {page}.env'
    )
    return ["run", "--server", f"127.0.0.1:{stack.daemon.port}", "--prometheus", prometheus.url,
            *SHORT, "--state-dir", str(tmp_path / "state"), "--notify-command", hook, "--plain"]  # fmt: skip


def release_flag(stack: Stack) -> tuple[dict[str, int], list[str]]:
    """The release flag's split now, and the reasons of its changes in order."""
    got = stack.admin("GetFlag", admin_pb2.GetFlagRequest(key=RELEASE))
    split = {w.variant: int(w.weight) for w in got.flag.rollout}
    changes = stack.admin("ListChanges", admin_pb2.ListChangesRequest(flag_key=RELEASE)).changes
    return split, [c.reason for c in changes]


def test_a_healthy_new_engine_reaches_100_percent(tmp_path: Path) -> None:
    with observed(tmp_path) as (stack, prometheus, traffic):
        promoted: list[tuple[int, str, str]] = []

        def operator() -> None:  # promotes at `pause: {}`, like a human with `canary promote`
            state = tmp_path / "state" / "status.json"
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not promoted:
                doc: Mapping[str, Any] = json.loads(state.read_text()) if state.exists() else {}
                if (
                    doc.get("phase") == "Paused"
                    and (doc.get("pause") or {}).get("kind") == "promote"
                ):
                    promoted.append(canary("promote", "--state-dir", str(tmp_path / "state")))
                time.sleep(0.2)

        helper = threading.Thread(target=operator, daemon=True)
        helper.start()
        started = time.monotonic()
        code, out, err = canary(*run_args(stack, prometheus, tmp_path), watchdog=WATCHDOG)
        took = time.monotonic() - started
        helper.join(5)
        split, reasons = release_flag(stack)
    assert code == 0, out + err
    assert promoted and promoted[0][0] == 0 and "promoted by e2e" in promoted[0][1], promoted
    assert split == {"on": 100, "off": 0}
    assert [r for r in reasons if r.startswith("canary")] == [
        "canary step 1/11: setWeight 1", "canary step 3/11: setWeight 5",
        "canary step 5/11: setWeight 25", "canary step 7/11: setWeight 50",
        "canary step 10/11: setWeight 100",
    ]  # fmt: skip
    assert not (tmp_path / "page.json").exists()  # nothing to page about
    # The gates judged real data from the new engine, not empty windows.
    doc = json.loads((tmp_path / "state" / "status.json").read_text())
    values = {m["name"]: m for m in doc["analysis"]["metrics"]}
    assert values["p99-latency"]["verdict"] == "Successful"
    assert 0 < float(values["p99-latency"]["value"]) < 0.2
    assert float(values["error-rate"]["value"]) <= 0.01
    assert traffic.engines["new"] > 100 and traffic.failures == []
    assert "step 2/11 analysis Successful" in out
    assert took < 60, took


def test_injected_latency_on_the_new_engine_aborts_at_the_first_gate(tmp_path: Path) -> None:
    with observed(tmp_path, faults=["new:latency=300ms"]) as (stack, prometheus, _traffic):
        code, out, err = canary(*run_args(stack, prometheus, tmp_path), watchdog=WATCHDOG)
        split, reasons = release_flag(stack)
        status = canary("status", "--state-dir", str(tmp_path / "state"))
    assert code == 1, out + err
    assert split == {"on": 0, "off": 100}
    # The last audited change is the rollback, and its reason names the metric and its value.
    assert reasons[-2] == "canary step 1/11: setWeight 1"
    assert re.fullmatch(
        r"canary abort at step 2/11 \(setWeight 1\): p99-latency = 0\.\d+ >= 0\.2 \(Failed\)",
        reasons[-1],
    ), reasons[-1]
    page = json.loads((tmp_path / "page.json").read_text())
    assert page["event"] == "canary.aborted" and page["reason"] == reasons[-1]
    assert page["rollback"]["ok"] is True and page["flag_weight"] == 0
    assert (tmp_path / "page.env").read_text().split() == ["canary.aborted", "0", "2"]
    assert status[0] == 0 and "Aborted" in status[1] and "p99-latency" in status[1]
