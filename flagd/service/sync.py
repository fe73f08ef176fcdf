"""gRPC sync API on port 8015: `flagd.sync.v1.FlagSyncService` for in-process providers (spec B)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from flagd.broadcast import Broadcast
from flagd.metrics import DaemonMetrics
from flagd.selector import Selector, SelectorError, parse_selector
from flagd.service.structs import fill_struct
from flagd.store import FlagStore
from ripcord_pb.flagd.sync.v1 import sync_pb2

EXTENSIONS_HEADER = "ripcord-extensions"  # value "config-version": see SyncService._extended

Context = Any  # grpc.aio.ServicerContext; grpc ships no usable type stubs


class SyncService:
    """Full snapshots at subscribe time and on every change to the selected flags."""

    def __init__(
        self,
        store: FlagStore,
        metrics: DaemonMetrics,
        broadcast: Broadcast,
        *,
        static_context: Mapping[str, Any] | None = None,
        metadata_enabled: bool = True,
    ):
        self.store = store
        self.metrics = metrics
        self.broadcast = broadcast
        self.static_context = dict(static_context or {})
        self.metadata_enabled = metadata_enabled
        self._last_encoded: tuple[str, bytes] | None = None
        self._last_extended: tuple[str, int, bytes] | None = None

    async def _selector(self, body_selector: str, context: Context) -> Selector:
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == "flagd-selector":
                header = value if isinstance(value, str) else value.decode()
        try:
            # The header wins over the deprecated body field (spec B.2).
            return parse_selector(header if header else body_selector)
        except SelectorError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    def _encoded(self, payload: str) -> bytes:
        """The serialized SyncFlagsResponse for ``payload``, built once for all streams.

        Fan-out cost is per stream; building and serializing a multi-KB message 50 times per
        change would dominate it, so every stream writes the same bytes.
        """
        cached = self._last_encoded
        if cached is not None and cached[0] is payload:
            return cached[1]
        encoded = self._serialize(payload)
        self._last_encoded = (payload, encoded)
        return encoded

    def _serialize(self, payload: str) -> bytes:
        message = sync_pb2.SyncFlagsResponse(flag_configuration=payload)
        message.sync_context.SetInParent()
        fill_struct(message.sync_context, self.static_context)
        return bytes(message.SerializeToString())

    def _extended(self, payload: str, version: int) -> bytes:
        """``payload`` plus `"$ripcord": {"configVersion": N}`, for clients that ask for it.

        Official providers never send the header, so what they receive stays exactly
        upstream's payload; Ripcord's router uses the version to say which configuration
        served each payment. flagd-core ignores unknown top-level keys either way.
        """
        cached = self._last_extended
        if cached is not None and cached[0] is payload and cached[1] == version:
            return cached[2]
        extended = f'{payload[:-1]},"$ripcord":{{"configVersion":{version}}}}}'
        encoded = self._serialize(extended)
        self._last_extended = (payload, version, encoded)
        return encoded

    async def SyncFlags(self, request: Any, context: Context) -> AsyncIterator[bytes]:
        """Stream the selected flag set now and after every change to it."""
        selector = await self._selector(request.selector, context)
        with_version = any(
            key == EXTENSIONS_HEADER and "config-version" in str(value)
            for key, value in context.invocation_metadata() or ()
        )
        wake = self.broadcast.subscribe()
        gauge = self.metrics.open_streams.labels("sync")
        gauge.inc()
        sent = self.metrics.stream_messages.labels("sync", "snapshot")
        try:
            snapshot = self.store.current
            payload = snapshot.view(selector).sync_payload()
            if with_version:
                yield self._extended(payload, snapshot.version)
            else:
                yield self._encoded(payload)
            sent.inc()
            while True:
                await wake.wait()
                wake.clear()
                if self.broadcast.closing:
                    return
                snapshot = self.store.current
                latest = snapshot.view(selector).sync_payload()
                if latest != payload:
                    payload = latest
                    if with_version:
                        yield self._extended(payload, snapshot.version)
                    else:
                        yield self._encoded(payload)
                    sent.inc()
        finally:
            self.broadcast.unsubscribe(wake)
            gauge.dec()

    async def FetchAllFlags(self, request: Any, context: Context) -> Any:
        """The selected flag set, once."""
        selector = await self._selector(request.selector, context)
        return sync_pb2.FetchAllFlagsResponse(
            flag_configuration=self.store.current.view(selector).sync_payload()
        )

    async def GetMetadata(self, request: Any, context: Context) -> Any:
        """Static context for in-process evaluation, unless disabled (then UNIMPLEMENTED)."""
        if not self.metadata_enabled:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "metadata endpoint disabled")
        response = sync_pb2.GetMetadataResponse()
        response.metadata.SetInParent()
        fill_struct(response.metadata, self.static_context)
        return response


def _passthrough(message: Any) -> bytes:
    # SyncFlags yields pre-serialized bytes; the unary methods return messages.
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


def sync_handlers(service: SyncService) -> grpc.GenericRpcHandler:
    """`flagd.sync.v1.FlagSyncService` with a serializer that passes cached bytes through."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "SyncFlags": grpc.unary_stream_rpc_method_handler(
                service.SyncFlags,
                request_deserializer=sync_pb2.SyncFlagsRequest.FromString,
                response_serializer=_passthrough,
            ),
            "FetchAllFlags": grpc.unary_unary_rpc_method_handler(
                service.FetchAllFlags,
                request_deserializer=sync_pb2.FetchAllFlagsRequest.FromString,
                response_serializer=_passthrough,
            ),
            "GetMetadata": grpc.unary_unary_rpc_method_handler(
                service.GetMetadata,
                request_deserializer=sync_pb2.GetMetadataRequest.FromString,
                response_serializer=_passthrough,
            ),
        },
    )


SERVICE_NAME = sync_pb2.DESCRIPTOR.services_by_name["FlagSyncService"].full_name
