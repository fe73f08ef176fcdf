"""The state directory where `canary run` meets `promote`, `abort` and `status`: JSON files
written atomically (os.replace) and an flock held by the running driver."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DriverBusy",
    "OperatorRequest",
    "StateDir",
]


class DriverBusy(Exception):
    """Another driver holds the state directory."""


@dataclass(frozen=True)
class OperatorRequest:
    """A request file from `promote`/`abort`."""

    id: str
    action: str  # promote | abort
    user: str
    target: str  # promote: the pause it means (run_id/step index); abort: ""
    at: float


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class StateDir:
    """The files that coordinate the driver with operators (all JSON, readable by hand).

    * ``status.json``: written by the running driver at every change and every second;
    * ``requests/<time>-<id>.json``: one file per `promote`/`abort`, consumed by the driver;
    * ``driver.lock``: flock'ed by the running driver, so "is a driver running" is exact.
    Every file is written to a temporary name and renamed (os.replace): readers never see half
    a file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.status_path = self.path / "status.json"
        self.lock_path = self.path / "driver.lock"
        self.requests_path = self.path / "requests"

    def ensure(self) -> None:
        """Create the directories."""
        self.requests_path.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the driver lock for the duration; DriverBusy if another driver has it."""
        self.ensure()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise DriverBusy(f"a canary driver is already running in {self.path}") from None
                raise
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)  # releases the lock

    def driver_running(self) -> bool:
        """True while some process holds the driver lock."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def write_status(self, doc: Mapping[str, Any]) -> None:
        """Replace status.json."""
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.status_path, json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def read_status(self) -> dict[str, Any] | None:
        """status.json, or None when there is none."""
        try:
            data = json.loads(self.status_path.read_text())
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def post(self, action: str, user: str, target: str = "", now: float | None = None) -> str:
        """Leave a request for the driver; returns its id."""
        self.ensure()
        at = time.time() if now is None else now
        rid = uuid.uuid4().hex[:12]
        doc = {"id": rid, "action": action, "user": user, "target": target, "at": at}
        _atomic_write(self.requests_path / f"{at:017.6f}-{rid}.json", json.dumps(doc) + "\n")
        return rid

    def take(self) -> list[OperatorRequest]:
        """Read and remove every pending request, oldest first (unreadable ones are dropped)."""
        if not self.requests_path.is_dir():
            return []
        found = []
        for path in sorted(self.requests_path.glob("[!.]*.json")):
            try:
                raw = json.loads(path.read_text())
                found.append(
                    OperatorRequest(
                        id=str(raw["id"]),
                        action=str(raw["action"]),
                        user=str(raw.get("user") or "unknown"),
                        target=str(raw.get("target") or ""),
                        at=float(raw.get("at") or 0.0),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                pass
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return found

    def clear(self) -> None:
        """Drop requests left from an earlier run (a stale abort must not hit a new one)."""
        self.take()
