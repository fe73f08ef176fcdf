"""A real grpc.aio server (own thread and event loop) with a stand-in FlagAdmin service.

The stand-in registers raw-bytes generic handlers under the real ripcord.admin.v1.FlagAdmin
method names (so FLAG_ADMIN_POLICY applies and grpcurl can call them via reflection) plus a
few extra shapes. Every handler answers with the principal it sees: for FlagAdmin methods a
real response message whose `actor` carries it, for the others the name as bytes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from flagd.auth import (
    FLAG_ADMIN_POLICY,
    Principal,
    Role,
    TokenAuthInterceptor,
    TokenStore,
    current_principal,
    hash_token,
    load_tokens,
    require_principal,
)
from ripcord_pb.ripcord.admin.v1 import admin_pb2
from tests.auth.certs import PKI, make_pki

ADMIN = "ripcord.admin.v1.FlagAdmin"
EXTRA = "test.Extra"

# Plain tokens the tests present; the server only ever sees their hashes or the env entry.
TOKENS = {
    "viewer": "viewer-token-0123456789abcdef",
    "operator": "operator-token-0123456789abcdef",
    "admin": "admin-token-0123456789abcdef",
}
PRINCIPALS = {"viewer": "alice", "operator": "canary-runner", "admin": "root@ops"}

# Extra shapes beside FlagAdmin: a context.write() stream and a bidi stream (admin), one
# unlisted method (open unless require_token_for_all). FlagAdmin/FutureMethod is served but
# not listed by name.
POLICY: dict[str, str] = {
    **FLAG_ADMIN_POLICY,
    f"/{EXTRA}/WriteStream": "admin",
    f"/{EXTRA}/Chat": "admin",
}


def _name() -> str:
    principal = current_principal()
    return principal.name if principal is not None else "<none>"


def _mutation(_request: bytes, _context: Any) -> bytes:
    # The way a real admin handler names the actor of its audit record.
    change = admin_pb2.ChangeRecord(actor=require_principal().name, action="set_rollout")
    return admin_pb2.MutationResponse(version=1, change=change).SerializeToString()


async def _unary(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(0)  # the principal must survive a suspension
    return _mutation(request, context)


async def _watch(_request: bytes, _context: Any) -> AsyncIterator[bytes]:
    for version in (1, 2):
        await asyncio.sleep(0)
        actor = require_principal().name
        yield admin_pb2.ChangeRecord(version=version, actor=actor).SerializeToString()


async def _write_stream(_request: bytes, context: Any) -> None:
    for _ in range(2):
        await context.write(_name().encode())
        await asyncio.sleep(0)


async def _chat(requests: AsyncIterator[bytes], _context: Any) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield _name().encode()


async def _ping(_request: bytes, _context: Any) -> bytes:
    return _name().encode()


def _handlers() -> list[grpc.GenericRpcHandler]:
    unary = grpc.unary_unary_rpc_method_handler
    service = admin_pb2.DESCRIPTOR.services_by_name["FlagAdmin"]
    admin = {
        m.name: grpc.unary_stream_rpc_method_handler(_watch)
        if m.server_streaming
        else unary(_unary)
        for m in service.methods
    }
    # Not in the policy by name: the service wildcard must cover it.
    admin["FutureMethod"] = unary(_unary)
    extra = {
        "WriteStream": grpc.unary_stream_rpc_method_handler(_write_stream),
        "Chat": grpc.stream_stream_rpc_method_handler(_chat),
        "Ping": unary(_ping),
    }
    return [
        grpc.method_handlers_generic_handler(ADMIN, admin),
        grpc.method_handlers_generic_handler(EXTRA, extra),
    ]


@dataclass
class ServerThread:
    """A grpc.aio server running on its own loop in a daemon thread."""

    interceptor: TokenAuthInterceptor
    registry: CollectorRegistry
    credentials: grpc.ServerCredentials | None = None
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> ServerThread:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        if self._error is not None:
            raise self._error
        return self

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = grpc.aio.server(interceptors=[self.interceptor])
            server.add_generic_rpc_handlers(tuple(_handlers()))
            health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
            reflection.enable_server_reflection(
                (ADMIN, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
            if self.credentials is None:
                self.port = server.add_insecure_port("127.0.0.1:0")
            else:
                self.port = server.add_secure_port("127.0.0.1:0", self.credentials)
            await server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        await server.stop(None)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def failures(self, reason: str, method: str) -> float:
        value = self.registry.get_sample_value(
            "flagd_auth_failures_total", {"reason": reason, "method": method}
        )
        return value or 0.0


@pytest.fixture(scope="session")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Viewer and operator tokens, hashed, in the line format."""
    path = tmp_path_factory.mktemp("auth") / "tokens.txt"
    path.write_text(
        "# ripcord flag daemon tokens\n\n"
        f"{hash_token(TOKENS['viewer'])} {PRINCIPALS['viewer']} viewer\n"
        f"{hash_token(TOKENS['operator'])}   {PRINCIPALS['operator']}  operator  # the runner\n"
    )
    return path


@pytest.fixture(scope="session")
def tokens(token_file: Path) -> TokenStore:
    """Viewer and operator from the file, admin from RIPCORD_TOKENS."""
    env = {"RIPCORD_TOKENS": f"{PRINCIPALS['admin']}:admin:{TOKENS['admin']}"}
    store = load_tokens(token_file, environ=env)
    assert sorted(store.principals(), key=lambda p: p.role) == [
        Principal(PRINCIPALS["viewer"], Role.VIEWER),
        Principal(PRINCIPALS["operator"], Role.OPERATOR),
        Principal(PRINCIPALS["admin"], Role.ADMIN),
    ]
    return store


@pytest.fixture(scope="session")
def server_factory(tokens: TokenStore) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def make(
        *, require_token_for_all: bool = False, credentials: grpc.ServerCredentials | None = None
    ) -> ServerThread:
        registry = CollectorRegistry()
        interceptor = TokenAuthInterceptor(
            tokens, POLICY, require_token_for_all=require_token_for_all, registry=registry
        )
        server = ServerThread(interceptor, registry, credentials).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(server_factory: Callable[..., ServerThread]) -> ServerThread:
    """Default policy: FlagAdmin + extras protected, the rest open."""
    return server_factory()


@pytest.fixture(scope="session")
def strict_server(server_factory: Callable[..., ServerThread]) -> ServerThread:
    """require_token_for_all=True."""
    return server_factory(require_token_for_all=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch
