"""Assembles sources, store and services into one running daemon, and stops it cleanly."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flagd.broadcast import Broadcast
from flagd.metrics import DaemonMetrics
from flagd.service.evaluation import SERVICE_NAMES, Evaluator, evaluation_handlers
from flagd.service.management import ManagementServer
from flagd.service.sync import SyncService
from flagd.sources import FileSource
from flagd.store import FlagStore, FractionalVersion, Snapshot
from ripcord_pb.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

log = logging.getLogger("flagd")

# Providers keep streams open for minutes and may ping; tolerate pings every 10 s even with no
# call open, so a client's keepalive never earns a GOAWAY (flagd issue 1998, notes section 4).
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),  # a second daemon on the same port must fail loudly
]


@dataclass
class DaemonConfig:
    """Everything `flagd start` can be told."""

    uris: list[str]
    host: str = "0.0.0.0"
    port: int = 8013
    management_port: int = 8014
    sync_port: int = 8015
    fractional: FractionalVersion = "v3"
    static_context: dict[str, Any] = field(default_factory=dict)
    header_context: dict[str, str] = field(default_factory=dict)
    sync_metadata: bool = True


class Daemon:
    """One flag daemon: call ``start()``, then ``stop()`` (or ``run_until`` an event)."""

    def __init__(self, config: DaemonConfig):
        if not config.uris:
            raise ValueError("at least one --uri is required")
        self.config = config
        self.sources = [FileSource(uri) for uri in config.uris]
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"--uri: the same source is given twice: {names}")
        self.metrics = DaemonMetrics()
        self.broadcast = Broadcast()
        self.store = FlagStore(names, fractional=config.fractional)
        self.store.subscribe(self._published)
        self._stop_watching = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []
        self._servers: list[grpc.aio.Server] = []
        self._health: list[health.aio.HealthServicer] = []
        self._management: ManagementServer | None = None
        self.started_at = time.time()

    # -- lifecycle -------------------------------------------------------------------------

    def load_sources(self) -> None:
        """Load every source once; raises DefinitionError on the first invalid one."""
        for source in self.sources:
            self.store.replace_source(source.name, source.load().flags.values())

    async def start(self) -> None:
        """Load sources, bind ports, start watching; raises on invalid files or busy ports."""
        self.load_sources()
        cfg = self.config
        core = Evaluator(
            self.store,
            self.metrics,
            self.broadcast,
            static_context=cfg.static_context,
            header_context=cfg.header_context,
        )
        eval_server = grpc.aio.server(options=SERVER_OPTIONS)
        eval_server.add_generic_rpc_handlers(tuple(evaluation_handlers(core)))
        self._add_health_and_reflection(eval_server, SERVICE_NAMES)
        self._bind(eval_server, cfg.port, "--port")

        sync_server = grpc.aio.server(options=SERVER_OPTIONS)
        sync_pb2_grpc.add_FlagSyncServiceServicer_to_server(
            SyncService(
                self.store,
                self.metrics,
                self.broadcast,
                static_context=cfg.static_context,
                metadata_enabled=cfg.sync_metadata,
            ),
            sync_server,
        )
        sync_name = sync_pb2.DESCRIPTOR.services_by_name["FlagSyncService"].full_name
        self._add_health_and_reflection(sync_server, (sync_name,))
        self._bind(sync_server, cfg.sync_port, "--sync-port")

        self._management = ManagementServer(
            cfg.host, cfg.management_port, self.metrics.registry, self.readiness
        )
        self._servers = [eval_server, sync_server]
        for server in self._servers:
            await server.start()
        self._management.start()
        for source in self.sources:
            self._watchers.append(asyncio.create_task(self._watch(source)))
        log.info(
            "flagd serving: evaluation :%d, sync :%d, management :%d; sources %s; fractional %s",
            cfg.port,
            cfg.sync_port,
            cfg.management_port,
            ", ".join(s.name for s in self.sources),
            cfg.fractional,
        )

    def _bind(self, server: grpc.aio.Server, port: int, option: str) -> None:
        try:
            bound = server.add_insecure_port(f"{self.config.host}:{port}")
        except RuntimeError as exc:
            raise OSError(
                f"{option} {port}: cannot listen ({exc}); is another daemon running?"
            ) from exc
        if bound == 0:
            raise OSError(f"{option} {port}: cannot listen; is another daemon running?")

    def _add_health_and_reflection(self, server: grpc.aio.Server, names: tuple[str, ...]) -> None:
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        self._health.append(servicer)
        reflection.enable_server_reflection(
            (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )

    async def _set_health(self, status: int) -> None:
        for servicer in self._health:
            await servicer.set("", status)

    async def serve_health(self) -> None:
        """Mark every gRPC port SERVING (called once start() returned)."""
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 3.0) -> None:
        """Tell streams we are going (provider_shutdown), drain, close ports."""
        self._stop_watching.set()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.broadcast.close()
        # Let the streams flush their last message before the servers cancel them.
        await asyncio.sleep(0.05)
        await asyncio.gather(*(s.stop(grace) for s in self._servers))
        for task in self._watchers:
            task.cancel()
        if self._management is not None:
            self._management.stop()
        log.info("flagd stopped")

    # -- sources ---------------------------------------------------------------------------

    async def _watch(self, source: FileSource) -> None:
        def changed(doc: Any) -> None:
            snapshot = self.store.replace_source(source.name, doc.flags.values())
            self.metrics.source_healthy.labels(source.name).set(1)
            if snapshot is not None:
                log.info("applied %s: configuration version %d", source.name, snapshot.version)

        def failed(message: str) -> None:
            self.metrics.source_errors.labels(source.name).inc()
            self.metrics.source_healthy.labels(source.name).set(0)

        self.metrics.source_healthy.labels(source.name).set(1)
        await source.watch(changed, failed, self._stop_watching)

    def _published(self, snapshot: Snapshot) -> None:
        self.metrics.config_version.set(snapshot.version)
        self.metrics.config_applied.set(snapshot.applied_at)
        self.broadcast.publish()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready once every source applied at least once; detail names any failing source."""
        statuses = [s.status for s in self.sources]
        ready = all(s.synced for s in statuses)
        snapshot = self.store.current
        detail = {
            "ready": ready,
            "configuration_version": snapshot.version,
            "applied_at": snapshot.applied_at,
            "fractional": self.config.fractional,
            "open_streams": len(self.broadcast),
            "sources": [
                {
                    "name": s.name,
                    "synced": s.synced,
                    "loads": s.loads,
                    "last_loaded_at": s.last_loaded_at,
                    "last_error": s.last_error,
                    "last_error_at": s.last_error_at,
                    "healthy": s.last_error is None,
                }
                for s in statuses
            ],
        }
        return ready, detail
