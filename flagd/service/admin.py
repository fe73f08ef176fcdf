"""`ripcord.admin.v1.FlagAdmin`: the operators' write API on the evaluation port (8013).

Every mutation follows one path: find the flag in service, compute the new definition with a
pure function (`flagd.control`), validate it as a whole flag, commit it durably with its audit
record (`flagd.state`), then swap it into the store, which wakes every stream. The call
returns only after the commit, with the new configuration version.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

from flagd import control
from flagd.broadcast import Broadcast
from flagd.definitions import DefinitionError, flag_to_json, parse_flag
from flagd.model import Flag
from flagd.service.structs import struct_to_dict
from flagd.state import ChangeRecord, NoOverrideError, StaleVersionError, StateStore
from flagd.store import FlagStore
from ripcord_pb.ripcord.admin.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("flagd.admin")

Context = Any  # grpc.aio.ServicerContext; grpc ships no usable type stubs
Ident = tuple[str, str]
ADMIN_SOURCE = "ripcord-admin"  # source name of flags created through PutFlag


class AdminError(Exception):
    """A refused request: status code plus a message that names the field."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _struct(data: dict[str, Any] | None) -> Struct | None:
    if data is None:
        return None
    s = Struct()
    s.update(data)
    return s


def change_to_pb(record: ChangeRecord) -> Any:
    """A ChangeRecord as its protobuf message."""
    message = admin_pb2.ChangeRecord(
        version=record.version,
        actor=record.actor,
        action=record.action,
        flag_key=record.flag_key,
        flag_set_id=record.flag_set_id,
        reason=record.reason,
    )
    message.at.FromDatetime(record.at)
    for name, data in (("before", record.before), ("after", record.after)):
        struct = _struct(data)
        if struct is not None:
            getattr(message, name).CopyFrom(struct)
    return message


def is_stale(metadata: dict[str, Any], today: dt.date) -> bool:
    """True when the flag's `removal` metadata is an ISO date that has passed."""
    removal = metadata.get("removal")
    if not isinstance(removal, str):
        return False
    try:
        return dt.date.fromisoformat(removal[:10]) < today
    except ValueError:
        return False  # a rule ("30 days after 100%"), not a date


class AdminService(admin_pb2_grpc.FlagAdminServicer):  # type: ignore[misc]
    """The admin API over a FlagStore (what is served) and a StateStore (what is durable)."""

    def __init__(
        self,
        store: FlagStore,
        state: StateStore,
        broadcast: Broadcast,
        principal: Callable[[Context], str],
        *,
        today: Callable[[], dt.date] = dt.date.today,
    ):
        self.store = store
        self.state = state
        self.broadcast = broadcast
        self.principal = principal
        self.today = today
        # One writer at a time in this process: read, decide, commit and apply must not
        # interleave, or two operators' changes to one flag could silently drop one.
        self._write_lock = asyncio.Lock()

    # -- lookups ---------------------------------------------------------------------------

    def _find(self, key: str, flag_set_id: str) -> tuple[Ident, Flag]:
        if not key:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "key: must not be empty")
        entries = self.store.current.entries
        if flag_set_id:
            entry = entries.get((flag_set_id, key))
            if entry is None:
                raise AdminError(
                    grpc.StatusCode.NOT_FOUND,
                    f"key: flag {key!r} not found in flag set {flag_set_id!r}",
                )
            return (flag_set_id, key), entry[1].flag
        matches = [(ident, e[1].flag) for ident, e in entries.items() if ident[1] == key]
        if not matches:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"key: flag {key!r} not found")
        if len(matches) > 1:
            sets = ", ".join(repr(i[0]) for i, _ in matches)
            raise AdminError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"flag_set_id: flag {key!r} exists in several flag sets ({sets}); name one",
            )
        return matches[0]

    def _source_for(self, ident: Ident) -> str:
        below = self.store.file_flag(ident)
        return below.source if below is not None else ADMIN_SOURCE

    def _summary(self, ident: Ident, flag: Flag, last: ChangeRecord | None) -> Any:
        meta = flag.metadata
        definition = flag_to_json(flag)
        summary = admin_pb2.FlagSummary(
            key=flag.key,
            flag_set_id=ident[0],
            kind=str(meta.get("kind", "")),
            owner=str(meta.get("owner", "")),
            description=str(meta.get("description", "")),
            removal=str(meta.get("removal", "")),
            state=flag.state,
            default_variant=flag.default_variant or "",
            stale=is_stale(dict(meta), self.today()),
            origin="admin" if ident in self.store.overrides else flag.source,
            variants=list(flag.variants),
        )
        for w in control.rollout_of(definition):
            summary.rollout.add(variant=w.variant, weight=w.weight)
        if last is not None:
            summary.last_change.CopyFrom(change_to_pb(last))
        return summary

    # -- reads -----------------------------------------------------------------------------

    async def ListFlags(self, request: Any, context: Context) -> Any:
        """The flag inventory."""
        last = await asyncio.to_thread(self.state.last_changes)
        snapshot = self.store.current
        response = admin_pb2.ListFlagsResponse(version=snapshot.version)
        for ident, (_, compiled) in sorted(snapshot.entries.items()):
            if request.flag_set_id and ident[0] != request.flag_set_id:
                continue
            response.flags.append(self._summary(ident, compiled.flag, last.get(ident)))
        return response

    async def GetFlag(self, request: Any, context: Context) -> Any:
        """One flag: summary and full definition."""
        try:
            ident, flag = self._find(request.key, request.flag_set_id)
        except AdminError as exc:
            await context.abort(exc.code, exc.message)
        last = await asyncio.to_thread(self.state.last_changes)
        response = admin_pb2.GetFlagResponse(
            flag=self._summary(ident, flag, last.get(ident)), version=self.store.current.version
        )
        response.definition.update(flag_to_json(flag))
        return response

    async def ListChanges(self, request: Any, context: Context) -> Any:
        """The audit trail, oldest first."""
        if request.limit < 0 or request.from_version < 0 or request.to_version < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "limit, from_version, to_version: must be >= 0"
            )
        records = await asyncio.to_thread(
            self.state.changes,
            flag_key=request.flag_key or None,
            from_version=request.from_version,
            to_version=request.to_version,
            limit=min(request.limit or 100, 10_000),
        )
        return admin_pb2.ListChangesResponse(changes=[change_to_pb(r) for r in records])

    async def WatchChanges(self, request: Any, context: Context) -> AsyncIterator[Any]:
        """Audit records as they are committed (after replaying those after `after_version`)."""
        wake = self.broadcast.subscribe()
        try:
            cursor = request.after_version or self.store.current.version
            while True:
                records = await asyncio.to_thread(
                    self.state.changes,
                    flag_key=request.flag_key or None,
                    from_version=cursor,
                    limit=1000,
                )
                for record in records:
                    yield change_to_pb(record)
                    cursor = record.version
                if records:
                    continue
                if self.broadcast.closing:
                    return
                await wake.wait()
                wake.clear()
        finally:
            self.broadcast.unsubscribe(wake)

    # -- writes ----------------------------------------------------------------------------

    async def _mutate(
        self,
        context: Context,
        request: Any,
        action: str,
        decide: Callable[[Ident, Flag | None], dict[str, Any] | None],
        *,
        must_exist: bool = True,
    ) -> Any:
        try:
            reason = request.reason.strip()
            if not reason:
                raise AdminError(
                    grpc.StatusCode.INVALID_ARGUMENT, "reason: required for every change"
                )
            expected = request.expected_version if request.HasField("expected_version") else None
            actor = self.principal(context)
            async with self._write_lock:
                flag: Flag | None
                if must_exist:
                    ident, flag = self._find(request.key, request.flag_set_id)
                    before: dict[str, Any] | None = flag_to_json(flag)
                else:
                    if not request.key:
                        raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "key: must not be empty")
                    ident = (request.flag_set_id, request.key)
                    entry = self.store.current.entries.get(ident)
                    flag = entry[1].flag if entry else None
                    before = flag_to_json(flag) if flag else None
                after = decide(ident, flag)
                new_flag = self._validated(ident, after)
                record = await asyncio.to_thread(
                    self.state.commit_change,
                    flag_set_id=ident[0],
                    key=ident[1],
                    action=action,
                    actor=actor,
                    reason=reason,
                    before=before,
                    after=after,
                    expected_version=expected,
                )
                overrides = self.store.overrides
                overrides[ident] = new_flag
                self.store.set_overrides(overrides, version=record.version)
            log.info(
                "%s %s/%s by %s at version %d: %s",
                action, ident[0], ident[1], actor, record.version, reason,
            )  # fmt: skip
            return admin_pb2.MutationResponse(version=record.version, change=change_to_pb(record))
        except control.MutationError as exc:
            code = (
                grpc.StatusCode.FAILED_PRECONDITION
                if exc.kind == "precondition"
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            await context.abort(code, str(exc))
        except AdminError as exc:
            await context.abort(exc.code, exc.message)
        except StaleVersionError as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"expected_version: {exc}")

    def _validated(self, ident: Ident, definition: dict[str, Any] | None) -> Flag | None:
        if definition is None:
            return None
        try:
            return parse_flag(
                ident[1], definition, source=self._source_for(ident), flag_set_id=ident[0]
            )
        except DefinitionError as exc:
            raise AdminError(
                grpc.StatusCode.INVALID_ARGUMENT, f"definition: {exc.path}: {exc.message}"
            ) from exc

    async def SetFlagState(self, request: Any, context: Context) -> Any:
        """ENABLED or DISABLED."""
        return await self._mutate(
            context,
            request,
            "set_state",
            lambda _, flag: control.set_state(flag_to_json(flag), request.state),  # type: ignore[arg-type]
        )

    async def SetDefaultVariant(self, request: Any, context: Context) -> Any:
        """The variant served when targeting does not decide (the kill-switch lever)."""
        if not request.variant:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "variant: must not be empty")
        return await self._mutate(
            context,
            request,
            "set_default_variant",
            lambda _, flag: control.set_default_variant(flag_to_json(flag), request.variant),  # type: ignore[arg-type]
        )

    async def SetRollout(self, request: Any, context: Context) -> Any:
        """New weights for the flag's fractional split (percentages summing to 100)."""
        weights = [control.Weight(w.variant, w.weight) for w in request.weights]
        return await self._mutate(
            context,
            request,
            "set_rollout",
            lambda _, flag: control.set_rollout(flag_to_json(flag), weights),  # type: ignore[arg-type]
        )

    async def PutFlag(self, request: Any, context: Context) -> Any:
        """Create or replace a whole definition (validated like a file)."""
        if not request.HasField("definition"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "definition: a flag definition is required"
            )
        definition = control.normalize_numbers(struct_to_dict(request.definition))
        return await self._mutate(
            context, request, "put", lambda _, __: definition, must_exist=False
        )

    async def DeleteFlag(self, request: Any, context: Context) -> Any:
        """Remove a flag from service (a tombstone over any file definition)."""
        return await self._mutate(context, request, "delete", lambda _, __: None)

    async def ReleaseOverride(self, request: Any, context: Context) -> Any:
        """Drop the admin override so the file definition applies again."""
        try:
            reason = request.reason.strip()
            if not reason:
                raise AdminError(
                    grpc.StatusCode.INVALID_ARGUMENT, "reason: required for every change"
                )
            ident: Ident = (request.flag_set_id, request.key)
            async with self._write_lock:
                overrides = self.store.overrides
                if ident not in overrides:
                    raise AdminError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"key: {request.key!r} in flag set {request.flag_set_id!r} "
                        "has no admin override",
                    )
                below = self.store.file_flag(ident)
                record = await asyncio.to_thread(
                    self.state.release_override,
                    flag_set_id=ident[0],
                    key=ident[1],
                    after=flag_to_json(below) if below is not None else None,
                    actor=self.principal(context),
                    reason=reason,
                    expected_version=(
                        request.expected_version if request.HasField("expected_version") else None
                    ),
                )
                del overrides[ident]
                self.store.set_overrides(overrides, version=record.version)
            return admin_pb2.MutationResponse(version=record.version, change=change_to_pb(record))
        except AdminError as exc:
            await context.abort(exc.code, exc.message)
        except StaleVersionError as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"expected_version: {exc}")
        except NoOverrideError as exc:  # another replica released it first
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"key: {exc}")


SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["FlagAdmin"].full_name
