"""Flag client: the daemon's SyncFlags stream kept as an immutable snapshot, swapped whole.

The request path reads ``FlagClient.snapshot`` (one attribute load: no lock, no I/O) and
evaluates it with the daemon's own compiled evaluator (`flagd.evaluator`), so the router's
answers are the answers the daemon's Resolve RPCs give for the same context.

Design notes (see `shared/notes/flag-propagation.md` section 4):

- Push, not poll: one `SyncFlags` stream; every message is the full flag set (spec B.2).
- Each message builds a new `FlagSnapshot` and rebinds one attribute; CPython makes that
  rebinding atomic, so a reader sees the old set or the new one, never a mix.
- Before the first message the snapshot is empty (version 0): routing falls back to legacy.
- While the daemon is away the last snapshot stays in service; a payload that cannot be
  parsed is counted and ignored (the last good snapshot stays).
- Reconnects use capped exponential backoff with jitter, forever; a fresh channel per
  attempt so our backoff, not grpc's internal reconnect backoff (1 s to 120 s), decides
  when the next connection is tried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
from google.protobuf.json_format import MessageToDict

from flagd.definitions import parse_document, parse_flag
from flagd.evaluator import CompiledFlag, compile_flag
from ripcord_pb.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

__all__ = [
    "FlagClient",
    "FlagClientStatus",
    "FlagSnapshot",
    "StreamState",
    "compile_snapshot",
]

log = logging.getLogger(__name__)

StreamState = Literal["connecting", "connected", "disconnected"]

# Opt-in header of Ripcord's daemon: each payload then carries "$ripcord": {"configVersion": N}.
EXTENSIONS_HEADER = ("ripcord-extensions", "config-version")
SELECTOR_HEADER = "flagd-selector"
PROVIDER_ID = "ripcord-router"

# A stream that stayed up this long proved the daemon healthy: the next failure starts the
# backoff from the beginning. Shorter-lived streams keep growing it, so a daemon that accepts
# and immediately drops connections is not hammered at backoff_initial.
HEALTHY_STREAM_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class FlagSnapshot:
    """One complete flag configuration, compiled; never mutated once published."""

    flags: Mapping[str, CompiledFlag] = field(default_factory=dict)
    version: int = 0  # the daemon's configVersion; 0 before any (or if it sends none)
    applied_at: float = 0.0  # time.time() when it was built, just before the swap
    received_at: float = 0.0  # time.time() when its message arrived
    # The daemon's static evaluation context (`sync_context`, from --context-value).
    context: Mapping[str, Any] = field(default_factory=dict)
    # Each flag's definition as compact JSON text: tells changed flags from unchanged ones.
    definitions: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    # Scratch space for values derived from this snapshot (routing memoises its Decision
    # objects here, since they only vary with the snapshot). Not part of equality.
    derived: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FlagClientStatus:
    """What metrics and health report about the stream; replaced whole on every change."""

    state: StreamState = "disconnected"
    version: int = 0  # version of the applied snapshot
    applied_at: float = 0.0  # time.time() of the last applied snapshot (0: never)
    received_at: float = 0.0  # time.time() of the last message, applied or not
    state_since: float = 0.0  # time.time() of the last state change
    messages: int = 0  # messages received, including unchanged and unparseable ones
    reconnects: int = 0  # attempts after the first one
    parse_failures: int = 0  # payloads ignored because they could not be used
    last_error: str = ""  # why the last stream or payload failed


class FlagClient:
    """Subscribes to a daemon's sync stream and publishes each flag set as `snapshot`."""

    def __init__(
        self,
        target: str,
        *,
        selector: str | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        on_change: Callable[[FlagSnapshot], None] | None = None,
        token: str | None = None,
        credentials: Any = None,
        fractional: Literal["v2", "v3"] = "v3",
        keepalive_seconds: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self.target = target
        self.selector = selector or ""
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.on_change = on_change
        self.credentials = credentials  # grpc.ChannelCredentials for TLS; None: plaintext
        self.fractional: Literal["v2", "v3"] = fractional  # must match the daemon's --fractional
        self.snapshot = FlagSnapshot()
        self.status = FlagClientStatus()
        metadata: list[tuple[str, str]] = [EXTENSIONS_HEADER]
        if self.selector:
            metadata.append((SELECTOR_HEADER, self.selector))
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        self._metadata = tuple(metadata)
        # The daemon allows pings every 10 s without data and never strikes; a ping left
        # unanswered for keepalive_timeout ends a half-open stream instead of hiding
        # changes behind it until TCP gives up.
        self._channel_options = [
            ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        self._rng = rng or random.Random()
        self._source = f"sync:{target}"
        self._last_message: tuple[str, bytes] | None = None  # (payload, sync_context bytes)
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the background stream task; returns at once (see `wait_until`)."""
        if self._task is not None:
            raise RuntimeError("FlagClient already started")
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"flag-sync {self.target}"
        )

    async def stop(self) -> None:
        """Cancel the stream and close its channel; the last snapshot stays readable."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait(), not `await task`: our own cancellation must still propagate to the caller.
        await asyncio.wait([task])
        self._set_status(state="disconnected")

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float) -> None:
        """Return once ``predicate()`` holds (checked on every change); else TimeoutError."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    # ------------------------------------------------------------------ stream loop

    async def _run(self) -> None:
        attempt = 0
        first = True
        while True:
            if not first:
                self._set_status(reconnects=self.status.reconnects + 1)
            first = False
            self._set_status(state="connecting")
            connected_at: float | None = None
            if self.credentials is None:
                channel = grpc.aio.insecure_channel(self.target, options=self._channel_options)
            else:
                channel = grpc.aio.secure_channel(
                    self.target, self.credentials, options=self._channel_options
                )
            try:
                stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
                request = sync_pb2.SyncFlagsRequest(provider_id=PROVIDER_ID, selector=self.selector)
                async for response in stub.SyncFlags(request, metadata=self._metadata):
                    if connected_at is None:
                        connected_at = time.monotonic()
                        self._set_status(state="connected")
                    self._apply(response)
                error = "stream ended by the daemon"
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:  # never let one odd failure end the subscription
                log.exception("flag stream to %s failed", self.target)
                error = f"{type(exc).__name__}: {exc}"
            finally:
                await channel.close()
            lived = time.monotonic() - connected_at if connected_at is not None else 0.0
            if lived >= HEALTHY_STREAM_SECONDS:
                attempt = 0
            self._set_status(state="disconnected", last_error=error)
            delay = self._backoff(attempt)
            attempt += 1
            log.warning(
                "flag stream to %s: %s; keeping version %d, retrying in %.2f s",
                self.target, error, self.snapshot.version, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Capped exponential delay with equal jitter: in [d/2, d], d = initial * 2**attempt."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2.0 ** min(attempt, 32))
        # Jitter spreads many routers' reconnects after a daemon restart; the d/2 floor keeps
        # a dead daemon from being retried in a tight loop.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    # ------------------------------------------------------------------ applying payloads

    def _apply(self, response: Any) -> None:
        received_at = time.time()
        payload: str = response.flag_configuration
        message = (payload, bytes(response.sync_context.SerializeToString(deterministic=True)))
        messages = self.status.messages + 1
        if message == self._last_message:
            # A reconnect resends the current set: nothing changed, so keep the snapshot (and
            # its applied_at, which is when this configuration really took effect).
            self._set_status(received_at=received_at, messages=messages)
            return
        try:
            snapshot = self._build(payload, response, received_at)
        except Exception as exc:  # a payload we cannot use must not end the stream
            log.warning("ignoring unusable flag payload from %s: %s", self.target, exc)
            self._set_status(
                received_at=received_at,
                messages=messages,
                parse_failures=self.status.parse_failures + 1,
                last_error=f"unusable payload: {exc}",
            )
            return
        self.snapshot = snapshot  # the one assignment readers observe
        self._last_message = message
        self._set_status(
            version=snapshot.version,
            applied_at=snapshot.applied_at,
            received_at=received_at,
            messages=messages,
        )
        if self.on_change is not None:
            try:
                self.on_change(snapshot)
            except Exception:
                log.exception("flag on_change hook failed")

    def _build(self, payload: str, response: Any, received_at: float) -> FlagSnapshot:
        context: Mapping[str, Any] = {}
        if response.HasField("sync_context") and response.sync_context.fields:
            context = MessageToDict(response.sync_context)
        return compile_snapshot(
            payload,
            previous=self.snapshot,
            context=context,
            fractional=self.fractional,
            source=self._source,
            received_at=received_at,
        )

    def _set_status(self, **changes: Any) -> None:
        if "state" in changes and changes["state"] != self.status.state:
            changes["state_since"] = time.time()
        self.status = dataclasses.replace(self.status, **changes)
        # Wake every waiter, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()


def compile_snapshot(
    payload: str,
    *,
    previous: FlagSnapshot | None = None,
    context: Mapping[str, Any] | None = None,
    fractional: Literal["v2", "v3"] = "v3",
    source: str = "sync",
    received_at: float | None = None,
) -> FlagSnapshot:
    """A snapshot from one `flag_configuration` payload; raises ValueError if unusable.

    The daemon resends the whole set for every change, and validating plus compiling a flag
    is nearly all of the cost of applying it; so a flag whose definition text is unchanged
    since ``previous`` keeps its compiled form, and only changed flags are validated (with
    the daemon's own `parse_flag`) and compiled. One bad flag still rejects the payload.
    """
    try:
        document = json.loads(payload, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ValueError(f"flag payload is not JSON: {exc}") from exc
    raw_flags = document.get("flags") if isinstance(document, dict) else None
    if (
        not isinstance(raw_flags, dict)
        or document.get("$evaluators") is not None
        or document.get("metadata") is not None
    ):
        # Not the shape a sync payload has (flags by key, `$ref`s expanded, metadata merged
        # into each flag): let the full document parser validate it, and compile it all.
        parsed = parse_document(payload, source=source, fmt="json")
        flags = {key: compile_flag(flag, fractional) for key, flag in parsed.flags.items()}
        definitions: dict[str, str] = {}
    else:
        old_flags = previous.flags if previous is not None else {}
        old_definitions = previous.definitions if previous is not None else {}
        flags = {}
        definitions = {}
        for key, raw in raw_flags.items():
            # Text, not dict equality: Python says 1 == 1.0 == True, JSON types do not.
            text = json.dumps(raw, separators=(",", ":"), ensure_ascii=False)
            old = old_flags.get(key)
            same = old_definitions.get(key) == text
            if old is not None and same and old.fractional == fractional:
                flags[key] = old
            else:
                flags[key] = compile_flag(parse_flag(key, raw, source=source), fractional)
            definitions[key] = text
    if context is None:
        context = {}
    if previous is not None and context == previous.context:
        context = previous.context
    now = time.time()
    return FlagSnapshot(
        flags=flags,
        version=_config_version(document),
        applied_at=now,
        received_at=now if received_at is None else received_at,
        context=context,
        definitions=definitions,
    )


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and the daemon's parser) does not.
    raise ValueError(f"{name} is not valid JSON")


def _config_version(document: dict[str, Any]) -> int:
    """The `$ripcord.configVersion` of a payload; 0 when the daemon did not send one."""
    extension = document.get("$ripcord")
    if extension is None:
        return 0
    version = extension.get("configVersion") if isinstance(extension, dict) else None
    if type(version) is not int or version < 0:
        raise ValueError(f'"$ripcord".configVersion must be a non-negative integer: {extension!r}')
    return version
