"""The rehearsal's processes: flag daemon, FX simulator, router (replaceable by a rolling
deploy), Prometheus; plus the admin calls the story makes and the router's view of them."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from canary.local_prometheus import LocalPrometheus, checked_in_config
from flagd.process import REPO, DaemonProcess, free_port
from loadtest.history import seed_history
from loadtest.stack import router_versions
from ripcord_pb.ripcord.admin.v1 import admin_pb2 as admin_pb
from ripcord_pb.ripcord.admin.v1 import admin_pb2_grpc as admin_grpc

FLAGS = REPO / "deploy" / "flags" / "payments.flagd.json"
HISTORY_ROWS = 100_000

__all__ = ["Child", "DemoFailed", "Stack"]


class DemoFailed(Exception):
    """The rehearsal did not go as a release must (the message says which step)."""


@dataclass
class Child:
    """A background process whose output goes to a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal it and wait; kill after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def tail(self, lines: int = 15) -> str:
        """The end of its log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Stack:
    """The running processes and the few calls the story makes on them."""

    work: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    children: list[Child] = field(default_factory=list)
    daemon: DaemonProcess | None = None
    prometheus: LocalPrometheus | None = None
    router: Child | None = None

    def __post_init__(self) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "RIPCORD_TOKEN": self.token}
        self.router_port = free_port(50051)
        # Two metrics ports: the router being replaced and its successor run side by side
        # for a moment during the rolling deploy, and Prometheus scrapes both from the start.
        self.router_metrics = [free_port(9464), free_port()]
        self.db_url = f"sqlite:///{self.work / 'router' / 'payments.db'}"
        self.generation = 0

    # -- processes -------------------------------------------------------------------------

    def spawn(self, name: str, cmd: Sequence[str], env: dict[str, str] | None = None) -> Child:
        """Start ``cmd`` with its output in WORK/logs/NAME.log."""
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as sink:
            proc = subprocess.Popen(
                list(cmd), cwd=self.work, env=env or self.env, stdout=sink, stderr=subprocess.STDOUT
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def start(self) -> None:
        """Daemon, FX simulator, router, Prometheus; each ready before the next step."""
        flags = self.work / "payments.flagd.json"
        shutil.copy(FLAGS, flags)
        self.daemon = DaemonProcess(
            "--uri", f"file:{flags}", "--state-dir", str(self.work / "state"),
            "--log-level", "WARNING",
            preferred_ports=(8013, 8014, 8015), capture=False,
            env={"RIPCORD_TOKENS": f"demo-oncall:operator:{self.token}"},
        )  # fmt: skip
        self.daemon.start(timeout=20)
        self.admin_target = f"127.0.0.1:{self.daemon.port}"
        self.channel = grpc.insecure_channel(self.admin_target)
        self.admin = admin_grpc.FlagAdminStub(self.channel)
        self.fx_port = free_port(8099)
        self.spawn("fx-sim", [sys.executable, "-m", "router.fxsim", "--port", str(self.fx_port)])
        (self.work / "router").mkdir(parents=True, exist_ok=True)
        # A ledger with history: rows from before the migration give the backfill real work.
        seed_history(self.db_url, HISTORY_ROWS)
        print(f"   the ledger starts with {HISTORY_ROWS:,} payments from before the migration",
              flush=True)  # fmt: skip
        self.router = self.start_router(faults=())
        self.prometheus = LocalPrometheus(
            self.work / "prometheus",
            config=checked_in_config({
                "flagd": [f"127.0.0.1:{self.daemon.management_port}"],
                "payment-router": [f"127.0.0.1:{p}" for p in self.router_metrics],
            }),
            port=free_port(9090),
        ).start()  # fmt: skip
        print(
            f"   flagd :{self.daemon.port} (admin, evaluation) :{self.daemon.sync_port} (sync)  "
            f"fx-sim :{self.fx_port}  router :{self.router_port}  "
            f"prometheus {self.prometheus.url}\n   logs and report: {self.work}",
            flush=True,
        )

    def start_router(self, faults: Sequence[str]) -> Child:
        """A router process on the shared port (SO_REUSEPORT), ready with the current flags."""
        metrics = self.router_metrics[self.generation % 2]
        self.generation += 1
        cmd = [sys.executable, "-m", "router", "serve", "--host", "127.0.0.1",
               "--port", str(self.router_port), "--metrics-port", str(metrics),
               "--flagd", f"127.0.0.1:{self.sync_port}", "--db", self.db_url,
               "--fx", f"http://127.0.0.1:{self.fx_port}", "--log-level", "WARNING",
               "--reuse-port"]  # fmt: skip
        env = dict(self.env)
        for spec in faults:
            cmd += ["--inject-faults", spec]
            env["RIPCORD_FAULT_INJECTION"] = "i-know-this-breaks-payments"
        child = self.spawn(f"router-{self.generation}", cmd, env)
        self.router_metrics_port = metrics
        self.wait_router_version(self.flag_version(), timeout=30, process=child)
        return child

    @property
    def sync_port(self) -> int:
        assert self.daemon is not None
        return self.daemon.sync_port

    def stop(self) -> int:
        """SIGTERM everything still running, newest first; the worst exit code. (Processes
        that already ended were judged by the step that ran them.)"""
        codes = [child.stop() for child in reversed(self.children) if child.proc.poll() is None]
        if self.prometheus is not None:
            self.prometheus.stop()
        if self.daemon is not None:
            codes.append(self.daemon.stop())
        self.children.clear()
        return max(codes, default=0)

    def kill(self) -> None:
        """Leave nothing running, whatever happened."""
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.kill()
        if self.prometheus is not None:
            self.prometheus.stop()
        if self.daemon is not None:
            self.daemon.kill()

    # -- flags and the router's view of them -------------------------------------------------

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        """An admin call with the operator token."""
        return method(request, metadata=(("authorization", f"Bearer {self.token}"),), timeout=10)

    def flag_version(self) -> int:
        """The daemon's configuration version (its newest audit record)."""
        changes = self.call(self.admin.ListChanges, admin_pb.ListChangesRequest(limit=1000))
        return max((int(c.version) for c in changes.changes), default=1)

    def rollout(self, key: str, weights: dict[str, int], reason: str) -> int:
        """SetRollout; returns once the router serves it."""
        request = admin_pb.SetRolloutRequest(
            key=key,
            reason=reason,
            weights=[admin_pb.RolloutWeight(variant=v, weight=w) for v, w in weights.items()],
        )
        version = int(self.call(self.admin.SetRollout, request).version)
        self.wait_router_version(version)
        return version

    def set_variant(self, key: str, variant: str, reason: str) -> Any:
        """SetDefaultVariant (the reply: version and change record)."""
        request = admin_pb.SetDefaultVariantRequest(key=key, variant=variant, reason=reason)
        return self.call(self.admin.SetDefaultVariant, request)

    def router_version(self) -> int:
        """The flag version the current router process serves (0 while it does not answer)."""
        url = f"http://127.0.0.1:{self.router_metrics_port}/metrics"
        return router_versions([url])[0][0]

    def wait_router_version(
        self, version: int, timeout: float = 10.0, process: Child | None = None
    ) -> float:
        """Poll the router until it serves ``version``; returns when (unix time)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.router_version() >= version:  # 0 while it is not listening yet
                return time.time()
            if process is not None and process.proc.poll() is not None:
                raise DemoFailed(f"{process.name} exited:\n{process.tail()}")
            if time.monotonic() > deadline:
                raise DemoFailed(f"the router never served flag version {version}")
            time.sleep(0.005)

    def audit(self, since: float) -> list[dict[str, Any]]:
        """Audit records at or after ``since`` (unix time), oldest first, as dicts."""
        reply = self.call(self.admin.ListChanges, admin_pb.ListChangesRequest(limit=1000))
        records = []
        for change in reply.changes:
            at = change.at.seconds + change.at.nanos / 1e9
            if at >= since:
                item = MessageToDict(change, preserving_proto_field_name=True)
                records.append({**item, "at": at})
        return sorted(records, key=lambda r: r["at"])
