"""Assembles sources, store and services into one running daemon, and stops it cleanly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flagd import auth, tls
from flagd.broadcast import Broadcast
from flagd.definitions import DefinitionError, flag_to_json, parse_flag
from flagd.metrics import DaemonMetrics
from flagd.model import Flag
from flagd.service.admin import ADMIN_SOURCE, AdminService
from flagd.service.admin import SERVICE_NAME as ADMIN_SERVICE
from flagd.service.evaluation import SERVICE_NAMES, Evaluator, evaluation_handlers
from flagd.service.management import ManagementServer
from flagd.service.sync import SERVICE_NAME as SYNC_SERVICE
from flagd.service.sync import SyncService, sync_handlers
from flagd.sources import FileSource
from flagd.state import StateStore
from flagd.store import FlagStore, FractionalVersion, Snapshot
from ripcord_pb.ripcord.admin.v1 import admin_pb2_grpc

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
    # Durable admin state: a SQLAlchemy URL; "" = SQLite in state_dir.
    state: str = ""
    state_dir: str = ".state/flagd"
    # Auth: hashed token file (plus RIPCORD_TOKENS); evaluation/sync open unless require_token.
    token_file: str | None = None
    require_token: bool = False
    # TLS on every gRPC port when both are set; client_ca turns on mutual TLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None

    def state_url(self) -> str:
        """Where admin changes and the audit trail live."""
        if self.state:
            return self.state
        return f"sqlite:///{Path(self.state_dir).resolve() / 'flagd.db'}"


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
        self.tokens = auth.load_tokens(config.token_file)
        if (config.tls_cert is None) != (config.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        self.credentials = (
            tls.server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
            if config.tls_cert and config.tls_key
            else None
        )
        self.interceptor = auth.TokenAuthInterceptor(
            self.tokens,
            auth.FLAG_ADMIN_POLICY,
            require_token_for_all=config.require_token,
            registry=self.metrics.registry,
        )
        self.broadcast = Broadcast()
        self.store = FlagStore(names, fractional=config.fractional)
        self.store.subscribe(self._published)
        self._stop_watching = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []
        self._servers: list[grpc.aio.Server] = []
        self._health: list[health.aio.HealthServicer] = []
        self._management: ManagementServer | None = None
        self.state: StateStore | None = None
        self._unsubscribe_state: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reload_pending = False
        self._file_lock = asyncio.Lock()
        self._file_tasks: set[asyncio.Task[None]] = set()
        self.started_at = time.time()

    # -- lifecycle -------------------------------------------------------------------------

    def load_sources(self) -> None:
        """Load every source once; raises DefinitionError on the first invalid one."""
        assert self.state is not None
        for source in self.sources:
            doc = source.load()
            # Compare with what the audit trail last recorded from this file, so a restart
            # after an edit still records the edit and an unchanged file records nothing.
            before = self.state.file_definitions(source.name)
            self._record_file(source, doc.flags.values(), before)
            self.store.replace_source(source.name, doc.flags.values())
        self._apply_state()

    def _record_file(
        self, source: FileSource, flags: Iterable[Flag], before: dict[tuple[str, str], Any]
    ) -> None:
        assert self.state is not None
        after = {(f.flag_set_id or "", f.key): flag_to_json(f) for f in flags}
        changes = [
            (ident[0], ident[1], before.get(ident), after.get(ident))
            for ident in sorted(set(before) | set(after))
            if before.get(ident) != after.get(ident)
        ]
        if changes:
            self.state.record_file_changes(
                source=source.name, digest=source.digest, changes=changes
            )

    def _apply_state(self) -> None:
        """Load the admin layer from the state store into the flag store (blocking I/O)."""
        assert self.state is not None
        self._apply_overrides(self.state.overrides(), self.state.head_version())

    def _state_changed(self, version: int) -> None:
        """Called on the state store's thread when any replica commits a change."""
        if self._loop is None or version <= self.store.current.version:
            return
        self._loop.call_soon_threadsafe(self._schedule_reload)

    def _schedule_reload(self) -> None:
        if not self._reload_pending:
            self._reload_pending = True
            asyncio.get_running_loop().create_task(self._reload_state())

    async def _reload_state(self) -> None:
        assert self.state is not None
        self._reload_pending = False
        # Head and overrides from one transaction, so they agree with each other.
        snapshot = await asyncio.to_thread(self.state.snapshot)
        if snapshot.version <= self.store.current.version:
            return
        # Parse and apply on the loop: the store is only ever touched from here.
        self._apply_overrides(snapshot.overrides, snapshot.version)

    def _apply_overrides(
        self, raw: dict[tuple[str, str], dict[str, Any] | None], version: int
    ) -> None:
        overrides: dict[tuple[str, str], Flag | None] = {}
        for ident, definition in raw.items():
            if definition is None:
                overrides[ident] = None
                continue
            below = self.store.file_flag(ident)
            try:
                overrides[ident] = parse_flag(
                    ident[1],
                    definition,
                    source=below.source if below else ADMIN_SOURCE,
                    flag_set_id=ident[0],
                )
            except DefinitionError as exc:  # validated on write; only a hand-edited DB gets here
                log.error("ignoring invalid admin override %s/%s: %s", *ident, exc)
        self.store.set_overrides(overrides, version=version)

    async def start(self) -> None:
        """Load sources, bind ports, start watching; raises on invalid files or busy ports."""
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        if not cfg.state:
            Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
        self.state = StateStore.open(cfg.state_url())
        self.load_sources()
        core = Evaluator(
            self.store,
            self.metrics,
            self.broadcast,
            static_context=cfg.static_context,
            header_context=cfg.header_context,
        )
        eval_server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[self.interceptor])
        eval_server.add_generic_rpc_handlers(tuple(evaluation_handlers(core)))
        admin_pb2_grpc.add_FlagAdminServicer_to_server(
            AdminService(self.store, self.state, self.broadcast, self._principal), eval_server
        )
        self._add_health_and_reflection(eval_server, (*SERVICE_NAMES, ADMIN_SERVICE))
        self._bind(eval_server, cfg.port, "--port")

        sync_server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[self.interceptor])
        sync_server.add_generic_rpc_handlers(
            (
                sync_handlers(
                    SyncService(
                        self.store,
                        self.metrics,
                        self.broadcast,
                        static_context=cfg.static_context,
                        metadata_enabled=cfg.sync_metadata,
                    )
                ),
            )
        )
        self._add_health_and_reflection(sync_server, (SYNC_SERVICE,))
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
        self._unsubscribe_state = self.state.subscribe(self._state_changed)
        log.info(
            "flagd serving: evaluation :%d, sync :%d, management :%d; sources %s; fractional %s",
            cfg.port,
            cfg.sync_port,
            cfg.management_port,
            ", ".join(s.name for s in self.sources),
            cfg.fractional,
        )
        if not len(self.tokens):
            log.warning(
                "no admin tokens configured (--token-file or %s): every admin call will be "
                "refused with UNAUTHENTICATED",
                auth.TOKENS_ENV,
            )

    def _bind(self, server: grpc.aio.Server, port: int, option: str) -> None:
        address = f"{self.config.host}:{port}"
        try:
            if self.credentials is not None:
                bound = server.add_secure_port(address, self.credentials)
            else:
                bound = server.add_insecure_port(address)
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
        if self._unsubscribe_state is not None:
            self._unsubscribe_state()
        if self.state is not None:
            self.state.close()
        log.info("flagd stopped")

    # -- sources ---------------------------------------------------------------------------

    async def _watch(self, source: FileSource) -> None:
        def changed(doc: Any) -> None:
            task = asyncio.create_task(self._apply_file(source, doc))
            self._file_tasks.add(task)
            task.add_done_callback(self._file_tasks.discard)

        def failed(message: str) -> None:
            self.metrics.source_errors.labels(source.name).inc()
            self.metrics.source_healthy.labels(source.name).set(0)

        self.metrics.source_healthy.labels(source.name).set(1)
        await source.watch(changed, failed, self._stop_watching)

    async def _apply_file(self, source: FileSource, doc: Any) -> None:
        """Audit a file edit (durably, once across replicas), then serve it."""
        assert self.state is not None
        async with self._file_lock:  # edits apply in order, each audited against the last
            before = {
                (f.flag_set_id or "", f.key): flag_to_json(f)
                for f in self.store.source_flags(source.name)
            }
            flags = list(doc.flags.values())
            await asyncio.to_thread(self._record_file, source, flags, before)
            version = await asyncio.to_thread(self.state.head_version)
            snapshot = self.store.replace_source(source.name, flags, version=version)
        self.metrics.source_healthy.labels(source.name).set(1)
        if snapshot is not None:
            log.info("applied %s: configuration version %d", source.name, snapshot.version)

    @staticmethod
    def _principal(context: Any) -> str:
        return auth.require_principal().name

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
