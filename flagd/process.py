"""Run a daemon as a child process on free ports and wait until it is ready.

Used by `ripcord demo`, the benchmarks and the integration tests, so all three start the
daemon exactly the way an operator does: `python -m flagd start …` in its own process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free on loopback, else a free port chosen by the kernel."""
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


class DaemonProcess:
    """`python -m flagd start` with the given arguments, on free loopback ports."""

    def __init__(
        self,
        *args: str,
        cwd: Path | None = None,
        preferred_ports: tuple[int, int, int] = (0, 0, 0),
        capture: bool = True,
        env: dict[str, str] | None = None,
    ):
        self.port = free_port(preferred_ports[0])
        self.management_port = free_port(preferred_ports[1])
        self.sync_port = free_port(preferred_ports[2])
        self.args = [
            "--port", str(self.port),
            "--management-port", str(self.management_port),
            "--sync-port", str(self.sync_port),
            "--host", "127.0.0.1",
            *args,
        ]  # fmt: skip
        self.cwd = cwd or REPO
        self.capture = capture
        self.extra_env = dict(env or {})
        # Closed with the object; a context manager cannot span the process's lifetime.
        self._log = tempfile.TemporaryFile("w+") if capture else None  # noqa: SIM115
        self.proc: subprocess.Popen[str] | None = None

    @property
    def command(self) -> list[str]:
        """The full command line."""
        return [sys.executable, "-m", "flagd", "start", *self.args]

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> DaemonProcess:
        """Start the child; with ``wait``, block until /readyz says 200 (or raise)."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            **self.extra_env,
        }
        # A file, not a pipe: nobody reads a pipe while the daemon runs, and a full pipe
        # would block the daemon's logging (and with it the daemon).
        out = self._log if self.capture else None
        self.proc = subprocess.Popen(
            self.command, cwd=self.cwd, env=env, text=True, stdout=out, stderr=out
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll /readyz until 200; raise with the child's stderr if it died."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.output()}")
            try:
                if self.http("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"daemon not ready within {timeout} s")

    def output(self) -> str:
        """Everything the daemon printed so far (empty when not captured)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def http(self, path: str) -> tuple[int, str]:
        """GET a management endpoint; returns (status, body)."""
        url = f"http://127.0.0.1:{self.management_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()

    def readyz(self) -> dict[str, Any]:
        """The /readyz detail document."""
        detail: dict[str, Any] = json.loads(self.http("/readyz")[1])
        return detail

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code (kills after ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, no questions asked."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> DaemonProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop()
