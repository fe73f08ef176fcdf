"""A Python re-creation of the flagd-testbed "launchpad" control server, in-process.

Upstream (flagd-testbed ``launchpad/``, see SOURCE.md "How the upstream harness wires these
together") runs inside the testbed container and offers ``/start?config=``, ``/stop``,
``/restart?seconds=`` and ``/change``. Here the same operations are methods that drive OUR
daemon (``python -m flagd start``) as a subprocess:

* work directory layout as in the testbed image: ``rawflags/`` holds verbatim copies of the
  testbed flag files, ``flags/allFlags.json`` is the deep merge of every raw file whose name
  does not start with ``selector-`` (``launchpad/pkg/json.go``), ``configs/`` holds the
  launchpad configs verbatim; the daemon runs with that directory as its cwd, so the relative
  source URIs in the configs (and the ``source`` selectors in the features) line up;
* ``restart_after(n)`` kills the daemon at once (upstream uses ``Process.Kill``) and deletes the
  merged flag file, then ``n`` seconds later re-creates the file and starts the daemon again on
  the same ports, without blocking the caller;
* ``change()`` toggles ``changing-flag``'s ``defaultVariant`` foo <-> bar in
  ``rawflags/changing-flag.json`` and re-merges ``flags/allFlags.json`` (what the upstream file
  watcher does), writing in place like Go's ``os.WriteFile``.

Unlike upstream, ports are not fixed: every fresh start picks free ports, which the steps pass
to the provider. A running daemon is reused across scenarios as long as it runs the wanted
profile (config + extra arguments) and answers ``/readyz``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .suite import FLAGS_DIR, LAUNCHPAD_CONFIGS_DIR, REPO_ROOT

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
CHANGING_FLAG = "changing-flag"


class DaemonError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    evaluation: int
    management: int
    sync: int


@dataclass(frozen=True)
class Profile:
    config: str  # launchpad config name: default, metadata, sync-payload
    extra_args: tuple[str, ...] = ()


@dataclass
class StopRecord:
    profile: Profile
    how: str  # "SIGTERM" or "SIGKILL"
    returncode: int | None
    note: str = ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """``deepMerge`` from flagd-testbed launchpad/pkg/json.go: objects merge recursively,
    anything else is overwritten by the later file."""
    for key, value in src.items():
        current = dst.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            dst[key] = deep_merge(current, value)
        else:
            dst[key] = value
    return dst


def combine_flag_files(raw_dir: Path) -> dict[str, Any]:
    """``CombineJSONFiles``: every ``*.json`` in name order, except ``selector-*`` files."""
    combined: dict[str, Any] = {}
    for path in sorted(raw_dir.glob("*.json")):
        if path.name.startswith("selector-"):
            continue
        combined = deep_merge(combined, json.loads(path.read_text(encoding="utf-8")))
    return combined


def _write_in_place(path: Path, data: dict[str, Any]) -> None:
    # Truncate-and-write like Go's os.WriteFile (what upstream does); no rename, so a daemon
    # watching the file itself keeps its watch.
    with path.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def http_status(url: str, timeout: float = 0.5) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, ValueError):
        return None


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    profile: Profile
    ports: Ports
    log_path: Path


@dataclass
class Launchpad:
    workdir: Path
    # the daemon's entry point; "start" and the options follow
    daemon_command: tuple[str, ...] = (sys.executable, "-m", "flagd")
    stop_records: list[StopRecord] = field(default_factory=list)
    restart_errors: list[str] = field(default_factory=list)
    starts: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._change_lock = threading.Lock()
        self._running: _Running | None = None
        self._last: _Running | None = None
        self._pending_restart: threading.Event | None = None
        self.raw_dir = self.workdir / "rawflags"
        self.flags_dir = self.workdir / "flags"
        self.configs_dir = self.workdir / "configs"
        self.logs_dir = self.workdir / "logs"
        for directory in (self.raw_dir, self.flags_dir, self.configs_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(FLAGS_DIR.glob("*.json")):
            shutil.copyfile(path, self.raw_dir / path.name)
        for path in sorted(LAUNCHPAD_CONFIGS_DIR.glob("*.json")):
            shutil.copyfile(path, self.configs_dir / path.name)
        self.merge()

    # ----------------------------------------------------------------- flag files
    @property
    def merged_file(self) -> Path:
        return self.flags_dir / "allFlags.json"

    def merge(self) -> None:
        _write_in_place(self.merged_file, combine_flag_files(self.raw_dir))

    def change(self) -> str:
        """Toggle changing-flag's defaultVariant (foo <-> bar); returns the new variant."""
        with self._change_lock:
            path = self.raw_dir / "changing-flag.json"
            data = json.loads(path.read_text(encoding="utf-8"))
            flag = data["flags"][CHANGING_FLAG]
            flag["defaultVariant"] = "bar" if flag["defaultVariant"] == "foo" else "foo"
            _write_in_place(path, data)
            self.merge()
            return str(flag["defaultVariant"])

    # ----------------------------------------------------------------- process control
    def ensure_running(self, profile: Profile) -> Ports:
        """``/start?config=``: cancels a pending delayed restart; reuses the running daemon when
        it runs ``profile`` and is ready, else (re)starts it on fresh ports."""
        with self._lock:
            self._cancel_pending_restart()
            running = self._running
            if (
                running is not None
                and running.profile == profile
                and running.process.poll() is None
                and self._is_ready(running.ports)
            ):
                return running.ports
            self._stop_locked(graceful=True)
            self._merge_if_missing()
            ports = Ports(*free_ports(3))
            self._spawn_locked(profile, ports)
            return ports

    def restart_after(self, seconds: float) -> None:
        """``/restart?seconds=``: kill the daemon and delete the merged flag file now; after
        ``seconds`` re-create the file and start the daemon again (same profile and ports).

        Deleting ``flags/allFlags.json`` is what upstream does too (``RestartFlagd`` ->
        ``deleteCombinedFlagsFile``): it is how "the connection is lost" reaches a provider in
        file mode. The daemon never sees the missing file: it is down while it is missing."""
        with self._lock:
            self._cancel_pending_restart()
            running = self._running or self._last
            self._stop_locked(graceful=False)
            self.merged_file.unlink(missing_ok=True)
            cancelled = threading.Event()
            self._pending_restart = cancelled
            thread = threading.Thread(
                target=self._delayed_start,
                args=(cancelled, seconds, (running.profile, running.ports) if running else None),
                name="launchpad-restart",
                daemon=True,
            )
            thread.start()

    def prepare_files(self) -> None:
        """What ``/start`` does to the files (``ensureStartConditions``), without a daemon:
        cancel a pending delayed restart and re-create the merged file if it is missing."""
        with self._lock:
            self._cancel_pending_restart()
            self._merge_if_missing()

    def stop(self) -> None:
        with self._lock:
            self._cancel_pending_restart()
            self._stop_locked(graceful=True)

    def current_ports(self) -> Ports | None:
        running = self._running
        return running.ports if running else None

    def log_tail(self, lines: int = 25) -> str:
        running = self._running or self._last
        if running is None or not running.log_path.exists():
            return "(no daemon log)"
        text = running.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return f"--- {running.log_path} (last {lines} lines) ---\n" + "\n".join(text[-lines:])

    # ----------------------------------------------------------------- internals
    def _cancel_pending_restart(self) -> None:
        if self._pending_restart is not None:
            self._pending_restart.set()
            self._pending_restart = None

    def _delayed_start(
        self,
        cancelled: threading.Event,
        seconds: float,
        daemon: tuple[Profile, Ports] | None,
    ) -> None:
        if cancelled.wait(seconds):
            return
        with self._lock:
            if cancelled.is_set() or self._pending_restart is not cancelled:
                return
            self._pending_restart = None
            self._merge_if_missing()
            if daemon is None:
                return
            try:
                self._spawn_locked(*daemon)
            except DaemonError as err:
                self.restart_errors.append(str(err))

    def _merge_if_missing(self) -> None:
        if not self.merged_file.exists():
            self.merge()

    def _command(self, profile: Profile, ports: Ports) -> list[str]:
        return [
            *self.daemon_command,
            "start",
            "--config",
            f"configs/{profile.config}.json",
            "--port",
            str(ports.evaluation),
            "--management-port",
            str(ports.management),
            "--sync-port",
            str(ports.sync),
            *profile.extra_args,
        ]

    def _spawn_locked(self, profile: Profile, ports: Ports) -> None:
        self.starts += 1
        log_path = self.logs_dir / f"daemon-{self.starts:03d}-{profile.config}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env = {k: v for k, v in env.items() if not k.startswith("FLAGD_")}
        command = self._command(profile, ports)
        with log_path.open("wb") as log:
            log.write(("$ " + " ".join(command) + "\n").encode())
            log.flush()
            process = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        running = _Running(process=process, profile=profile, ports=ports, log_path=log_path)
        self._running = running
        self._last = running
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._running = None
                raise DaemonError(
                    f"daemon exited with code {process.returncode} before becoming ready\n"
                    + self.log_tail()
                )
            if self._is_ready(ports):
                return
            time.sleep(0.05)
        self._stop_locked(graceful=False)
        raise DaemonError(
            f"daemon not ready (GET /readyz != 200) within {READY_TIMEOUT_S}s\n" + self.log_tail()
        )

    @staticmethod
    def _is_ready(ports: Ports) -> bool:
        return http_status(f"http://127.0.0.1:{ports.management}/readyz") == 200

    def _stop_locked(self, graceful: bool) -> None:
        running = self._running
        self._running = None
        if running is None:
            return
        process = running.process
        if process.poll() is not None:
            self.stop_records.append(
                StopRecord(running.profile, "none", process.returncode, "had already exited")
            )
            return
        if graceful:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
                self.stop_records.append(StopRecord(running.profile, "SIGTERM", process.returncode))
                return
            except subprocess.TimeoutExpired:
                note = f"did not exit within {STOP_TIMEOUT_S}s of SIGTERM"
        else:
            note = ""
        process.kill()
        process.wait(STOP_TIMEOUT_S)
        self.stop_records.append(StopRecord(running.profile, "SIGKILL", process.returncode, note))
