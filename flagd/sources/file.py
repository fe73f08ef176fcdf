"""A flag file on disk, polled for changes.

Polling a `stat()` every 200 ms keeps the "edit is live within 1 s" promise without inotify's
corner cases (editors that replace the file, files on overlay or network mounts).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flagd.definitions import DefinitionError, ParsedDocument, parse_document

log = logging.getLogger("flagd.sources")

POLL_INTERVAL_S = 0.2


def parse_uri(uri: str) -> str:
    """Return the file path of a `file:` source URI (a bare path is accepted too)."""
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if uri.startswith("file:"):
        return uri[len("file:") :]
    if "://" in uri:
        raise ValueError(f"--uri {uri!r}: only file sources are supported (file:PATH)")
    return uri


@dataclass
class SourceStatus:
    """What /readyz reports for one source."""

    name: str
    path: str
    synced: bool = False
    loads: int = 0
    last_loaded_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


class FileSource:
    """One `file:` source. ``name`` is the URI's path exactly as written (the selector name)."""

    def __init__(self, uri: str):
        self.path = parse_uri(uri)
        self.name = self.path
        self.status = SourceStatus(name=self.name, path=self.path)
        self._fingerprint: tuple[int, int, int] | None = None
        self._digest: bytes | None = None

    @property
    def digest(self) -> str:
        """SHA-256 of the content in service (hex); identifies a file version across replicas."""
        return self._digest.hex() if self._digest else ""

    def load(self) -> ParsedDocument:
        """Read and validate the file now; raises DefinitionError naming file and JSON path."""
        fingerprint = self._stat()
        try:
            data = Path(self.path).read_bytes()
        except OSError as exc:
            raise DefinitionError(self.name, "$", f"cannot read: {exc.strerror or exc}") from exc
        doc = self._parse(data)
        self._fingerprint = fingerprint
        self._digest = hashlib.sha256(data).digest()
        self._loaded()
        return doc

    def _parse(self, data: bytes) -> ParsedDocument:
        suffix = Path(self.path).suffix.lower()
        fmt = "yaml" if suffix in (".yaml", ".yml") else "json" if suffix == ".json" else None
        return parse_document(data, source=self.name, fmt=fmt)

    def _loaded(self) -> None:
        self.status.synced = True
        self.status.loads += 1
        self.status.last_loaded_at = time.time()
        self.status.last_error = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> ParsedDocument | None:
        """Reload when the file changed on disk; None when unchanged or invalid (kept last good)."""
        fingerprint = self._stat()
        if fingerprint == self._fingerprint:
            return None
        self._fingerprint = fingerprint
        try:
            data = Path(self.path).read_bytes()
        except OSError as exc:
            self._failed(f"{self.name}: cannot read: {exc.strerror or exc}")
            return None
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return None  # touched, not changed
        try:
            doc = self._parse(data)
        except DefinitionError as exc:
            self._failed(str(exc))
            return None
        self._digest = digest
        self._loaded()
        return doc

    def _failed(self, message: str) -> None:
        self.status.last_error = message
        self.status.last_error_at = time.time()
        log.error("flag source rejected, keeping the last good configuration: %s", message)

    async def watch(
        self,
        on_change: Callable[[ParsedDocument], None],
        on_error: Callable[[str], None],
        stop: asyncio.Event,
    ) -> None:
        """Poll until ``stop`` is set, handing every valid new document to ``on_change``."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), POLL_INTERVAL_S)
                return
            except TimeoutError:
                pass
            before = self.status.last_error_at
            doc = self.poll()
            if doc is not None:
                on_change(doc)
            elif self.status.last_error_at != before and self.status.last_error:
                on_error(self.status.last_error)
