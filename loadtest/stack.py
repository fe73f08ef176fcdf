"""A real stack to load: the flag daemon, the FX simulator and `router serve --processes N`.

Started the way an operator starts them (each its own process, free loopback ports). The
payment flags are the checked-in ones with the DCC experiment at 50/50, so opted-in
customers of the new engine get live FX quotes; the release flag stays at 0 % until the load
test sets it (the drill needs it at 100 %)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from flagd.process import REPO, DaemonProcess, free_port

FLAGS = REPO / "deploy" / "flags" / "payments.flagd.json"
DCC = "payments.dynamic-currency.enabled"
TOKEN = "loadtest-operator-token-0123456789"

__all__ = ["TOKEN", "Stack", "consecutive_free_ports", "router_versions"]


def consecutive_free_ports(n: int) -> int:
    """A base port p with p..p+n-1 free on loopback (router i serves metrics on base + i)."""
    for _ in range(50):
        base = free_port()
        sockets: list[socket.socket] = []
        try:
            for i in range(n):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise OSError(f"no {n} consecutive free ports")


def router_versions(metrics_urls: list[str]) -> list[tuple[int, float]]:
    """(applied flag version, its apply time) of each router process; (0, 0) if unreachable."""
    out = []
    for url in metrics_urls:
        version, applied = 0, 0.0
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                text = r.read().decode()
        except OSError:
            out.append((version, applied))
            continue
        for line in text.splitlines():
            if line.startswith("payments_flags{"):
                value = float(line.rsplit(" ", 1)[1])
                if 'what="version"' in line:
                    version = int(value)
                elif 'what="applied_timestamp_seconds"' in line:
                    applied = value
        out.append((version, applied))
    return out


class Stack:
    """Daemon + FX simulator + router processes in ``workdir``; a context manager."""

    def __init__(self, workdir: Path, processes: int = 2, log_level: str = "WARNING") -> None:
        self.workdir = workdir
        self.processes = processes
        self.log_level = log_level
        self.port = 0
        self.metrics_base = 0
        self.fx_port = 0
        self.daemon: DaemonProcess | None = None
        self.fx: subprocess.Popen[str] | None = None
        self.router: subprocess.Popen[str] | None = None

    # ---- addresses -------------------------------------------------------------------

    @property
    def target(self) -> str:
        """The routers' gRPC address (Locust's --host)."""
        return f"127.0.0.1:{self.port}"

    @property
    def admin_target(self) -> str:
        """The daemon's evaluation + admin gRPC address."""
        assert self.daemon is not None
        return f"127.0.0.1:{self.daemon.port}"

    @property
    def sync_target(self) -> str:
        """The daemon's sync (SyncFlags) address."""
        assert self.daemon is not None
        return f"127.0.0.1:{self.daemon.sync_port}"

    @property
    def db_url(self) -> str:
        """The routers' payment database."""
        return f"sqlite:///{self.workdir / 'payments.db'}"

    @property
    def metrics_urls(self) -> list[str]:
        """Each router process's /metrics."""
        return [f"http://127.0.0.1:{self.metrics_base + i}/metrics" for i in range(self.processes)]

    def locust_args(self) -> list[str]:
        """The locustfile options that point a run at this stack."""
        return [
            "--host", self.target,
            "--admin-host", self.admin_target,
            "--admin-token", TOKEN,
            "--router-db", self.db_url,
            "--router-metrics", ",".join(self.metrics_urls),
        ]  # fmt: skip

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Stack:
        """Start everything; returns once every router process has the daemon's flags."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        doc = json.loads(FLAGS.read_text())
        doc["flags"][DCC]["targeting"]["if"][1] = {
            "fractional": [["treatment", 50], ["control", 50]]
        }
        flags = self.workdir / "payments.flagd.json"
        flags.write_text(json.dumps(doc, indent=2))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        try:
            self.daemon = DaemonProcess(
                "--uri", f"file:{flags}", "--state-dir", str(self.workdir / "flagd"),
                "--log-level", self.log_level,
                env={"RIPCORD_TOKENS": f"loadtest:operator:{TOKEN}"},
            ).start(timeout=timeout)  # fmt: skip
            self.fx_port = free_port()
            self.fx = subprocess.Popen(
                [sys.executable, "-m", "router.fxsim", "--port", str(self.fx_port)],
                stdout=subprocess.PIPE, text=True, env=env, cwd=self.workdir,
            )  # fmt: skip
            assert self.fx.stdout is not None
            line = self.fx.stdout.readline()
            if "serving on" not in line:
                raise RuntimeError(f"FX simulator did not start: {line!r}")
            self.port, self.metrics_base = free_port(), consecutive_free_ports(self.processes)
            self.router = subprocess.Popen(
                [sys.executable, "-m", "router", "serve", "--processes", str(self.processes),
                 "--host", "127.0.0.1", "--port", str(self.port),
                 "--metrics-port", str(self.metrics_base), "--flagd", self.sync_target,
                 "--db", self.db_url, "--fx", f"http://127.0.0.1:{self.fx_port}",
                 "--log-level", self.log_level],
                cwd=self.workdir, env=env, text=True,
            )  # fmt: skip
            self.wait_versions(1, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_versions(self, version: int, timeout: float = 10.0) -> None:
        """Until every router process reports flag ``version`` or later."""
        deadline = time.monotonic() + timeout
        while min(v for v, _ in router_versions(self.metrics_urls)) < version:
            if self.router is not None and self.router.poll() is not None:
                raise RuntimeError(f"router exited with {self.router.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"routers not at flag version {version} in {timeout} s")
            time.sleep(0.05)

    def router_pids(self) -> list[int]:
        """The router processes (children of the supervisor)."""
        if self.router is None:
            return []
        path = Path(f"/proc/{self.router.pid}/task/{self.router.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []

    def stop(self) -> None:
        """Stop everything that was started (SIGTERM, then SIGKILL)."""
        for proc in (self.router, self.fx):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.fx is not None and self.fx.stdout is not None:
            self.fx.stdout.close()
        if self.daemon is not None and self.daemon.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.daemon.stop()
        self.router = self.fx = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
