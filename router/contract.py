"""The contract guard: may deploy N+1 make fx_rate_snapshot NOT NULL yet?

It refuses unless, for at least ``min_age`` (72 hours) up to ``now`` (an injected clock):

1. The release flag (``payments.new-router.enabled``) has served 100 % of traffic without a
   break. This comes from the flag daemon's audit trail, read through its admin API
   (``ripcord.admin.v1.FlagAdmin/ListChanges``, bearer token from ``RIPCORD_TOKEN``). The trail
   is replayed record by record (file edits, admin overrides, deletes, releases of overrides)
   to get the definition in service after each one; the clock starts at the first record of
   the current uninterrupted stretch at 100 %. "At 100 %" must be provable from the definition
   alone: ENABLED, and either no targeting with a true default variant, or a plain fractional
   split whose non-zero weights all go to true variants. Any other targeting, a missing flag or
   an unreadable trail is a refusal.
2. The backfill has been complete: ``completed_at`` of its checkpoint in the router database
   (the daemon never hears of the backfill; the worker records the moment the last pass found
   no NULL), and no row lacks the snapshot now.

The override is explicit and recorded: ``--override REASON`` writes a ``guard-override`` record
(actor, reason, every refusal it overrides) to the router database's migration journal, in its
own committed transaction before any DDL, next to the migration's other records, so the audit
of the schema change lives with the schema. It cannot override rows without a snapshot: the
NOT NULL constraint could not be validated anyway.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import grpc
from google.protobuf.json_format import MessageToDict
from sqlalchemy import select

from router.backfill import nulls_remain, read_checkpoint
from router.ledger import LedgerDatabase, write_options
from router.schema import detect_phase, fx_backfill, journal, migration_log, table_exists

__all__ = [
    "DEFAULT_MIN_AGE",
    "RELEASE_FLAG",
    "AdminAuditSource",
    "AuditRecord",
    "AuditSource",
    "GuardVerdict",
    "check_guard",
    "full_rollout",
    "overrides",
    "record_override",
    "release_full_since",
]

RELEASE_FLAG = "payments.new-router.enabled"
DEFAULT_MIN_AGE = timedelta(hours=72)
TOKEN_ENV = "RIPCORD_TOKEN"
REVISION = "0002_fx_snapshot_contract"
_PAGE = 1000
_OVERRIDE_ACTIONS = ("set_state", "set_default_variant", "set_rollout", "put")


@dataclass(frozen=True)
class AuditRecord:
    """One audit record of the flag daemon, as the guard needs it."""

    version: int
    at: datetime
    action: str  # set_state | set_default_variant | set_rollout | put | delete | release | file
    flag_set_id: str
    flag_key: str
    actor: str
    after: Mapping[str, Any] | None  # the definition after the change (None: absent)


class AuditSource(Protocol):
    """Where the guard reads a flag's audit trail."""

    def changes(self, flag_key: str) -> list[AuditRecord]:
        """Every record of ``flag_key`` (any flag set), oldest first."""
        ...


def record_from_pb(message: Any) -> AuditRecord:
    """A ``ripcord.admin.v1.ChangeRecord`` as an `AuditRecord`."""
    after = MessageToDict(message.after) if message.HasField("after") else None
    return AuditRecord(
        version=int(message.version),
        at=message.at.ToDatetime(tzinfo=UTC),
        action=message.action,
        flag_set_id=message.flag_set_id,
        flag_key=message.flag_key,
        actor=message.actor,
        after=after,
    )


class AdminAuditSource:
    """The daemon's audit trail through ``FlagAdmin/ListChanges`` (role viewer)."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        credentials: Any = None,
        timeout: float = 10.0,
    ) -> None:
        """``target``: the admin API (host:port); ``token`` defaults to $RIPCORD_TOKEN."""
        self.target = target
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.credentials = credentials
        self.timeout = timeout

    def changes(self, flag_key: str) -> list[AuditRecord]:
        """Every record of the flag, paging forwards by version."""
        from ripcord_pb.ripcord.admin.v1 import admin_pb2, admin_pb2_grpc

        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        if self.credentials is None:
            channel = grpc.insecure_channel(self.target)
        else:
            channel = grpc.secure_channel(self.target, self.credentials)
        records: list[AuditRecord] = []
        with channel:
            stub = admin_pb2_grpc.FlagAdminStub(channel)
            cursor = 0
            while True:
                request = admin_pb2.ListChangesRequest(
                    flag_key=flag_key, from_version=cursor, limit=_PAGE
                )
                page = stub.ListChanges(request, metadata=metadata, timeout=self.timeout).changes
                records.extend(record_from_pb(m) for m in page)
                if len(page) < _PAGE:
                    return records
                cursor = page[-1].version


# ---- "at 100 %" ------------------------------------------------------------------------------


def full_rollout(definition: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether a flag definition serves its true variant to everyone; and what it serves."""
    if definition is None:
        return False, "absent"
    if definition.get("state") != "ENABLED":
        return False, str(definition.get("state", "no state"))
    variants = definition.get("variants")
    if not isinstance(variants, Mapping):
        return False, "no variants"
    targeting = definition.get("targeting")
    if not targeting:
        default = definition.get("defaultVariant")
        on = default in variants and variants[default] is True
        return on, f"default {default}" + (" (100%)" if on else "")
    if not (isinstance(targeting, Mapping) and set(targeting) == {"fractional"}):
        return False, "targeting other than a plain fractional split"
    weights: dict[str, float] = {}
    for bucket in targeting["fractional"]:
        if not isinstance(bucket, list):
            continue  # the optional bucketing expression before the buckets
        if not bucket or not isinstance(bucket[0], str):
            return False, "unreadable fractional split"
        weight = float(bucket[1]) if len(bucket) > 1 else 1.0
        weights[bucket[0]] = weights.get(bucket[0], 0.0) + weight
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        return False, "empty fractional split"
    on_share = sum(w for v, w in weights.items() if w > 0 and variants.get(v) is True)
    split = " ".join(f"{v}={100 * w / total:g}%" for v, w in weights.items())
    return on_share == total, split


def release_full_since(
    records: Iterable[AuditRecord], flag_set: str | None = None
) -> tuple[datetime | None, str]:
    """Since when the flag has been at 100 % without a break (None: it is not), and its state."""
    chosen = list(records)
    sets = {r.flag_set_id for r in chosen}
    if flag_set is not None:
        chosen = [r for r in chosen if r.flag_set_id == flag_set]
    elif len(sets) > 1:
        raise ValueError(f"the flag exists in several flag sets {sorted(sets)}: name one")
    if not chosen:
        return None, "no audit record"
    file_definition: Mapping[str, Any] | None = None
    override: Mapping[str, Any] | None = None
    overridden = False
    since: datetime | None = None
    state = "absent"
    for record in sorted(chosen, key=lambda r: r.version):
        if record.action == "file":
            file_definition = record.after
        elif record.action in _OVERRIDE_ACTIONS:
            override, overridden = record.after, True
        elif record.action == "delete":
            override, overridden = None, True  # a tombstone: the flag is gone
        elif record.action == "release":
            # `after` is what applies once the override is dropped: the files' definition.
            file_definition, override, overridden = record.after, None, False
        else:
            raise ValueError(f"audit record {record.version}: unknown action {record.action!r}")
        full, state = full_rollout(override if overridden else file_definition)
        if not full:
            since = None
        elif since is None:
            since = record.at
    return since, state


# ---- the verdict -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardVerdict:
    """What the guard found; ``allowed`` only when nothing refuses."""

    now: datetime
    min_age: timedelta
    release_since: datetime | None
    release_state: str
    backfill_since: datetime | None
    nulls_left: bool
    refusals: tuple[str, ...] = ()
    blocking: tuple[str, ...] = field(default=())  # refusals no override can lift

    @property
    def allowed(self) -> bool:
        """Nothing refuses."""
        return not self.refusals and not self.blocking

    @property
    def overridable(self) -> bool:
        """Refused, but only for reasons an explicit override may lift."""
        return not self.allowed and not self.blocking

    @property
    def earliest(self) -> datetime | None:
        """When the time conditions will hold if nothing changes (None: not on the way)."""
        if self.release_since is None or self.backfill_since is None:
            return None
        return max(self.release_since, self.backfill_since) + self.min_age

    def explain(self) -> list[str]:
        """Human lines."""
        release = f"release flag: {self.release_state}"
        if self.release_since is not None:
            release += f", at 100% since {_ts(self.release_since)}"
        backfill = "backfill: incomplete"
        if self.backfill_since is not None:
            backfill = f"backfill: complete since {_ts(self.backfill_since)}"
        if self.nulls_left:
            backfill += "; rows without fx_rate_snapshot remain"
        lines = [release, backfill]
        if self.earliest is not None and not self.allowed:
            lines.append(f"earliest contract: {_ts(self.earliest)}")
        lines += [f"BLOCKED: {b}" for b in self.blocking]
        lines += [f"refused: {r}" for r in self.refusals]
        if self.allowed:
            lines.append(f"guard passed: both conditions held for at least {_hours(self.min_age)}")
        return lines


def _ts(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _hours(delta: timedelta) -> str:
    return f"{round(delta.total_seconds() / 3600, 1):g} h"


def check_guard(
    db: LedgerDatabase,
    audit: AuditSource,
    *,
    now: datetime,
    release_flag: str = RELEASE_FLAG,
    flag_set: str | None = None,
    min_age: timedelta = DEFAULT_MIN_AGE,
) -> GuardVerdict:
    """Read the audit trail and the backfill's state; judge at ``now``."""
    refusals: list[str] = []
    blocking: list[str] = []
    release_since: datetime | None = None
    try:
        release_since, release_state = release_full_since(audit.changes(release_flag), flag_set)
    except grpc.RpcError as exc:
        release_state = "unknown"
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        refusals.append(f"cannot read the audit trail of {release_flag}: {detail}")
    except ValueError as exc:
        release_state = "unknown"
        refusals.append(f"cannot judge {release_flag}: {exc}")
    if release_since is None and release_state != "unknown":
        refusals.append(f"{release_flag} is not at 100% ({release_state})")
    elif release_since is not None and now - release_since < min_age:
        refusals.append(
            f"{release_flag} has been at 100% for {_hours(now - release_since)} only "
            f"(needs {_hours(min_age)})"
        )

    with db.engine.connect() as conn:
        phase = detect_phase(conn, db.schema)
        checkpoint = (
            read_checkpoint(conn) if table_exists(conn, db.schema, fx_backfill.name) else None
        )
        nulls_left = phase == "expanded" and nulls_remain(db, conn)
    backfill_since = checkpoint.completed_at if checkpoint is not None else None
    if phase == "legacy":
        blocking.append("fx_rate_snapshot does not exist (or is not the migration's): expand first")
    if nulls_left:
        blocking.append("rows without fx_rate_snapshot remain: run the backfill to completion")
    if backfill_since is None:
        refusals.append("the backfill has not completed")
    elif now - backfill_since < min_age:
        refusals.append(
            f"the backfill completed {_hours(now - backfill_since)} ago only "
            f"(needs {_hours(min_age)})"
        )
    return GuardVerdict(
        now=now,
        min_age=min_age,
        release_since=release_since,
        release_state=release_state,
        backfill_since=backfill_since,
        nulls_left=nulls_left,
        refusals=tuple(refusals),
        blocking=tuple(blocking),
    )


def record_override(
    db: LedgerDatabase, verdict: GuardVerdict, *, actor: str, reason: str, at: datetime
) -> None:
    """Commit the override to the migration journal (before any DDL runs)."""
    if not reason.strip():
        raise ValueError("an override needs a reason")
    if not actor.strip():
        raise ValueError("an override needs an actor")
    if verdict.blocking:
        raise ValueError("cannot override: " + "; ".join(verdict.blocking))
    detail = {
        "reason": reason,
        "overridden": list(verdict.refusals),
        "release_since": verdict.release_since,
        "backfill_since": verdict.backfill_since,
        "min_age_hours": verdict.min_age.total_seconds() / 3600,
    }
    with db.engine.connect() as conn:
        conn.execution_options(**write_options())
        with conn.begin():
            journal(
                conn,
                at=at,
                action="guard-override",
                revision=REVISION,
                actor=actor,
                detail=detail,
            )


def overrides(db: LedgerDatabase) -> Sequence[Mapping[str, Any]]:
    """The recorded guard overrides, oldest first (for status and tests)."""
    with db.engine.connect() as conn:
        if not table_exists(conn, db.schema, migration_log.name):
            return []
        rows = conn.execute(
            select(migration_log)
            .where(migration_log.c.action == "guard-override")
            .order_by(migration_log.c.id)
        ).all()
    return [
        {"at": r.at, "actor": r.actor, "revision": r.revision, **json.loads(r.detail)} for r in rows
    ]
