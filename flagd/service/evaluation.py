"""gRPC evaluation API on port 8013: `flagd.evaluation.v1.Service` and `…v2.Service`.

Both versions share one request path (``Evaluator.evaluate``); they differ only in how an
outcome is put on the wire (spec A.4): v1 fills zero values and reports "no default variant"
as NOT_FOUND, v2 leaves value and variant unset ("use your code default").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from flagd.broadcast import Broadcast
from flagd.evaluator import resolve
from flagd.metrics import DaemonMetrics
from flagd.model import ErrorCode, FlagType, Reason, Resolution
from flagd.selector import Selector, SelectorError, parse_selector
from flagd.service.structs import fill_struct, struct_to_dict
from flagd.store import FlagStore, View, diff_views
from ripcord_pb.flagd.evaluation.v1 import evaluation_pb2 as v1
from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2 as v2

log = logging.getLogger("flagd.evaluation")

KEEP_ALIVE_S = 20.0
SELECTOR_HEADER = "flagd-selector"

# Error code -> (gRPC status, the message flagd uses); spec A.6.
ERROR_STATUS: dict[ErrorCode, tuple[grpc.StatusCode, str]] = {
    ErrorCode.FLAG_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, "Flag not found"),
    ErrorCode.TYPE_MISMATCH: (grpc.StatusCode.INVALID_ARGUMENT, "Type mismatch error"),
    ErrorCode.PARSE_ERROR: (grpc.StatusCode.DATA_LOSS, "Error parsing input or configuration"),
    ErrorCode.GENERAL: (grpc.StatusCode.UNKNOWN, "General error"),
}

NOT_FOUND = Resolution(
    reason=Reason.ERROR, error=ErrorCode.FLAG_NOT_FOUND, error_message="Flag not found"
)

Context = Any  # grpc.aio.ServicerContext; grpc ships no usable type stubs


class RpcError(Exception):
    """A deterministic failure to report as a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Evaluator:
    """The request path shared by v1 and v2: selector, context merge, lookup, resolve, count."""

    def __init__(
        self,
        store: FlagStore,
        metrics: DaemonMetrics,
        broadcast: Broadcast,
        *,
        static_context: Mapping[str, Any] | None = None,
        header_context: Mapping[str, str] | None = None,
    ):
        self.store = store
        self.metrics = metrics
        self.broadcast = broadcast
        self.static_context = dict(static_context or {})
        # header name (lower-case) -> context key
        self.header_context = {k.lower(): v for k, v in (header_context or {}).items()}
        # (message class, id(old view), id(new view)) -> (old, new, bytes or None); the views
        # are held so their ids cannot be reused while cached.
        self._change_events: dict[tuple[Any, int, int], tuple[View, View, bytes | None]] = {}

    def change_event(self, response_cls: Any, old: View, new: View) -> bytes | None:
        """The serialized `configuration_change` from ``old`` to ``new`` (None: no change).

        Every stream on the same selector asks for the same pair after a publish; computing
        the diff and serializing it once keeps the fan-out cost per stream to a write.
        """
        key = (response_cls, id(old), id(new))
        hit = self._change_events.get(key)
        if hit is not None and hit[0] is old and hit[1] is new:
            return hit[2]
        changes = diff_views(old, new)
        encoded = None
        if changes:
            flags = {k: {"type": kind} for k, kind in changes.items()}
            encoded = _event(response_cls, "configuration_change", {"flags": flags})
            encoded = encoded.SerializeToString()
        if len(self._change_events) > 256:
            self._change_events.clear()
        self._change_events[key] = (old, new, encoded)
        return encoded

    def selector_of(self, context: Context) -> Selector:
        """The request's `Flagd-Selector` header, parsed; INVALID_ARGUMENT when malformed."""
        for key, value in context.invocation_metadata() or ():
            if key == SELECTOR_HEADER:
                try:
                    return parse_selector(value if isinstance(value, str) else value.decode())
                except SelectorError as exc:
                    raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        return parse_selector(None)

    def merged_context(self, request_context: dict[str, Any], context: Context) -> dict[str, Any]:
        """Request context, then static `--context-value`s, then header-mapped values (spec A.3)."""
        if self.static_context:
            request_context.update(self.static_context)
        if self.header_context:
            for key, value in context.invocation_metadata() or ():
                target = self.header_context.get(key.lower())
                text = value if isinstance(value, str) else value.decode()
                if target is not None and text:
                    request_context[target] = text
        return request_context

    def evaluate(
        self,
        key: str,
        request_context: dict[str, Any],
        flag_type: FlagType | None,
        context: Context,
    ) -> tuple[Resolution, Selector]:
        """Evaluate one flag for one request."""
        selector = self.selector_of(context)
        compiled = self.store.current.view(selector).flags.get(key)
        if compiled is None:
            self.metrics.count_evaluation("", NOT_FOUND)
            return NOT_FOUND, selector
        resolution = resolve(compiled, self.merged_context(request_context, context), flag_type)
        self.metrics.count_evaluation(key, resolution)
        return resolution, selector


def _metadata(resolution: Resolution, selector: Selector) -> dict[str, Any]:
    if selector.is_all:
        return dict(resolution.metadata)
    out: dict[str, Any] = selector.reflection()
    out.update(resolution.metadata)
    return out


def _raise_for_error(resolution: Resolution) -> None:
    if resolution.error is None:
        return
    code, text = ERROR_STATUS.get(resolution.error, (grpc.StatusCode.UNKNOWN, "General error"))
    detail = resolution.error_message
    message = text if not detail or detail == text else f"{text}: {detail}"
    raise RpcError(code, message)


def _set_value(response: Any, flag_type: FlagType, value: Any) -> None:
    if flag_type is FlagType.OBJECT:
        response.value.SetInParent()
        fill_struct(response.value, value)
    elif flag_type is FlagType.INTEGER:
        response.value = int(value)
    elif flag_type is FlagType.FLOAT:
        response.value = float(value)
    else:
        response.value = value


def shape_v1(resolution: Resolution, selector: Selector, flag_type: FlagType, cls: Any) -> Any:
    """Put an outcome on the wire the v1 way (zero values; no default variant = NOT_FOUND)."""
    _raise_for_error(resolution)
    response = cls(reason=resolution.reason.value)
    if resolution.reason is Reason.DISABLED:
        pass  # success with the zero value and an empty variant
    elif resolution.variant is None:
        # Deliberate legacy behaviour of v1 (spec A.4): code default is an error here.
        code, text = ERROR_STATUS[ErrorCode.FLAG_NOT_FOUND]
        raise RpcError(code, text)
    else:
        response.variant = resolution.variant
        _set_value(response, flag_type, resolution.value)
    fill_struct(response.metadata, _metadata(resolution, selector))
    return response


def shape_v2(resolution: Resolution, selector: Selector, flag_type: FlagType, cls: Any) -> Any:
    """Put an outcome on the wire the v2 way (value and variant unset for code default)."""
    _raise_for_error(resolution)
    response = cls(reason=resolution.reason.value)
    if resolution.variant is not None and resolution.reason is not Reason.DISABLED:
        response.variant = resolution.variant
        _set_value(response, flag_type, resolution.value)
    fill_struct(response.metadata, _metadata(resolution, selector))
    return response


Shape = Callable[[Resolution, Selector, FlagType, Any], Any]
Handler = Callable[[bytes, Context], Awaitable[Any]]


def _parse(cls: type[Message], data: bytes) -> Any:
    try:
        return cls.FromString(data)
    except DecodeError as exc:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request: not a valid {cls.DESCRIPTOR.full_name}: {exc}",
        ) from exc


def _resolve_handler(
    core: Evaluator,
    flag_type: FlagType,
    request_cls: type[Message],
    response_cls: Any,
    shape: Shape,
) -> Handler:
    async def handler(data: bytes, context: Context) -> Any:
        try:
            request = _parse(request_cls, data)
            if not request.flag_key:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "flag_key: must not be empty")
            ctx = struct_to_dict(request.context)
            resolution, selector = core.evaluate(request.flag_key, ctx, flag_type, context)
            return shape(resolution, selector, flag_type, response_cls)
        except RpcError as exc:
            await context.abort(exc.code, exc.message)

    return handler


def _zero_of(variants: Mapping[str, Any]) -> Any:
    sample = next(iter(variants.values()), False)
    if isinstance(sample, bool):
        return False
    if isinstance(sample, str):
        return ""
    if isinstance(sample, int | float):
        return 0.0
    return {}


def _fill_any(flag: Any, value: Any) -> None:
    if isinstance(value, bool):
        flag.bool_value = value
    elif isinstance(value, str):
        flag.string_value = value
    elif isinstance(value, int | float):
        flag.double_value = float(value)
    elif isinstance(value, dict):
        flag.object_value.SetInParent()
        fill_struct(flag.object_value, value)


def _resolve_all_handler(core: Evaluator) -> Handler:
    async def handler(data: bytes, context: Context) -> Any:
        try:
            request = _parse(v1.ResolveAllRequest, data)
            selector = core.selector_of(context)
            base = struct_to_dict(request.context)
            response = v1.ResolveAllResponse()
            for key, compiled in core.store.current.view(selector).flags.items():
                ctx = core.merged_context(dict(base), context)
                resolution = resolve(compiled, ctx, None)
                core.metrics.count_evaluation(key, resolution)
                no_value = resolution.error is None and resolution.variant is None
                if no_value and resolution.reason is not Reason.DISABLED:
                    continue  # v1 omits flags that have no default variant (spec A.8)
                item = response.flags[key]
                item.reason = resolution.reason.value
                if resolution.error is None and resolution.variant is not None:
                    item.variant = resolution.variant
                    _fill_any(item, resolution.value)
                else:
                    _fill_any(item, _zero_of(compiled.flag.variants))
                fill_struct(item.metadata, _metadata(resolution, selector))
            fill_struct(response.metadata, selector.reflection())
            return response
        except RpcError as exc:
            await context.abort(exc.code, exc.message)

    return handler


def _event(cls: Any, kind: str, data: dict[str, Any] | None) -> Any:
    message = cls(type=kind)
    if data is not None:
        message.data.SetInParent()
        fill_struct(message.data, data)
    return message


def _event_stream_handler(core: Evaluator, response_cls: Any) -> Callable[..., AsyncIterator[Any]]:
    async def handler(data: bytes, context: Context) -> AsyncIterator[Any]:
        try:
            selector = core.selector_of(context)
        except RpcError as exc:
            await context.abort(exc.code, exc.message)
            return
        wake = core.broadcast.subscribe()
        gauge = core.metrics.open_streams.labels("event")
        gauge.inc()
        sent = core.metrics.stream_messages
        try:
            last: View = core.store.current.view(selector)
            yield _event(response_cls, "provider_ready", {})
            sent.labels("event", "provider_ready").inc()
            while True:
                try:
                    await asyncio.wait_for(wake.wait(), KEEP_ALIVE_S)
                except TimeoutError:
                    yield _event(response_cls, "keep_alive", None)
                    sent.labels("event", "keep_alive").inc()
                    continue
                wake.clear()
                if core.broadcast.closing:
                    yield _event(response_cls, "provider_shutdown", {})
                    sent.labels("event", "provider_shutdown").inc()
                    return
                current = core.store.current.view(selector)
                encoded = core.change_event(response_cls, last, current)
                last = current
                if encoded is not None:
                    yield encoded
                    sent.labels("event", "configuration_change").inc()
        finally:
            core.broadcast.unsubscribe(wake)
            gauge.dec()

    return handler


_TYPED: Sequence[tuple[str, FlagType, str]] = (
    ("ResolveBoolean", FlagType.BOOLEAN, "Boolean"),
    ("ResolveString", FlagType.STRING, "String"),
    ("ResolveInt", FlagType.INTEGER, "Int"),
    ("ResolveFloat", FlagType.FLOAT, "Float"),
    ("ResolveObject", FlagType.OBJECT, "Object"),
)


def _handlers(core: Evaluator, module: Any, shape: Shape) -> dict[str, grpc.RpcMethodHandler]:
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method, flag_type, name in _TYPED:
        handlers[method] = grpc.unary_unary_rpc_method_handler(
            _resolve_handler(
                core,
                flag_type,
                getattr(module, f"Resolve{name}Request"),
                getattr(module, f"Resolve{name}Response"),
                shape,
            ),
            response_serializer=_serialize,
        )
    handlers["EventStream"] = grpc.unary_stream_rpc_method_handler(
        _event_stream_handler(core, module.EventStreamResponse), response_serializer=_serialize
    )
    return handlers


def _serialize(message: Message | bytes) -> bytes:
    # Stream fan-out yields bytes serialized once for all streams; everything else messages.
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()


def evaluation_handlers(core: Evaluator) -> list[grpc.GenericRpcHandler]:
    """Generic handlers for v1 (with ResolveAll) and v2; requests arrive as raw bytes so a
    malformed message becomes INVALID_ARGUMENT with a reason instead of a bare INTERNAL."""
    v1_handlers = _handlers(core, v1, shape_v1)
    v1_handlers["ResolveAll"] = grpc.unary_unary_rpc_method_handler(
        _resolve_all_handler(core), response_serializer=_serialize
    )
    return [
        grpc.method_handlers_generic_handler("flagd.evaluation.v1.Service", v1_handlers),
        grpc.method_handlers_generic_handler(
            "flagd.evaluation.v2.Service", _handlers(core, v2, shape_v2)
        ),
    ]


SERVICE_NAMES = (
    v1.DESCRIPTOR.services_by_name["Service"].full_name,
    v2.DESCRIPTOR.services_by_name["Service"].full_name,
)
