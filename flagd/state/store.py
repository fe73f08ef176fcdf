"""`StateStore`: the durable admin layer and audit trail behind the admin API.

How file sources and admin changes combine: an admin override holds a whole flag definition
(or a tombstone for a deleted flag) and wins over the files' definition of that flag until an
admin releases it; file reloads and restarts never touch overrides. Every change, admin or
file, gets one audit record with the next version of a gapless global counter (the head),
which is the daemon's configuration version.

Writers serialise on the single head row (SQLite: BEGIN IMMEDIATE; PostgreSQL: SELECT … FOR
UPDATE), so versions are gapless across threads and processes, and a method that writes
returns only after COMMIT. The API is synchronous and thread-safe: call it from worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from flagd.state.database import Database, open_database, write_options
from flagd.state.notify import PG_POLL_S, SQLITE_POLL_S, Notifier
from flagd.state.records import (
    ChangeRecord,
    Definition,
    FlagId,
    NoOverrideError,
    StaleVersionError,
    StateSnapshot,
    decode,
    encode,
)

# `audit` is the ripcord_changes table (named apart from the `changes` method and argument).
from flagd.state.schema import HEAD_ID, flags, head, sources
from flagd.state.schema import changes as audit

FileChange = tuple[str, str, Definition | None, Definition | None]
"""(flag_set_id, key, before, after) of one flag in a source file edit."""

# Written only by their own methods: commit_change refuses them.
_RESERVED_ACTIONS = frozenset({"file", "release"})
_DEFAULT_LIMIT = 100


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Tx:
    """One write transaction holding the head lock; `append` hands out the next versions."""

    def __init__(self, conn: Connection, head_version: int, at: datetime) -> None:
        self.conn = conn
        self.start = head_version
        self.head = head_version
        self.at = at

    def flag_row(self, flag_set_id: str, key: str) -> Row[Any] | None:
        return self.conn.execute(
            select(flags).where(flags.c.flag_set_id == flag_set_id, flags.c.flag_key == key)
        ).first()

    def append(
        self,
        *,
        actor: str,
        action: str,
        flag_set_id: str,
        key: str,
        reason: str,
        before: str | None,
        after: str | None,
    ) -> ChangeRecord:
        self.head += 1
        self.conn.execute(
            insert(audit).values(
                version=self.head,
                at=self.at,
                actor=actor,
                action=action,
                flag_set_id=flag_set_id,
                flag_key=key,
                reason=reason,
                before=before,
                after=after,
            )
        )
        return ChangeRecord(
            self.head,
            self.at,
            actor,
            action,
            flag_set_id,
            key,
            reason,
            decode(before),
            decode(after),
        )

    def set_flag(
        self, existing: Row[Any] | None, flag_set_id: str, key: str, **values: Any
    ) -> None:
        """Insert or update the flag's row (we hold the head lock, so no one races us)."""
        if existing is None:
            values.setdefault("overridden", False)
            values.setdefault("definition", None)
            self.conn.execute(insert(flags).values(flag_set_id=flag_set_id, flag_key=key, **values))
        else:
            self.conn.execute(
                update(flags)
                .where(flags.c.flag_set_id == flag_set_id, flags.c.flag_key == key)
                .values(**values)
            )


class StateStore:
    """Durable overrides and audit trail on SQLite or PostgreSQL; see the module docstring."""

    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        """Use `StateStore.open`."""
        self._db = db
        self._engine = db.engine
        self._clock = clock
        # Same-process writers queue here instead of in SQLite's sleeping busy handler.
        self._write_lock = threading.Lock()
        self._notifier_lock = threading.Lock()
        self._notifier: Notifier | None = None
        self._closed = False

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] | None = None) -> StateStore:
        """Connect to ``url`` (sqlite:///… or postgresql://…[?schema=…]), creating tables."""
        return cls(open_database(url), clock or _utc_now)

    @property
    def dialect(self) -> str:
        """ "sqlite" or "postgresql"."""
        return self._db.dialect

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reads -------------------------------------------------------------------------

    def head_version(self) -> int:
        """The configuration version: the last version handed out (0 for a fresh store)."""
        with self._connect() as conn:
            return int(conn.execute(select(head.c.version)).scalar_one())

    def overrides(self) -> dict[FlagId, Definition | None]:
        """Admin overrides: (flag_set_id, key) -> definition, or None for a tombstone."""
        with self._connect() as conn:
            return _read_overrides(conn)

    def last_changes(self) -> dict[FlagId, ChangeRecord]:
        """The latest audit record of every flag that ever changed."""
        with self._connect() as conn:
            return _read_last_changes(conn)

    def file_definitions(self, source: str) -> dict[FlagId, Definition]:
        """What the audit trail last recorded from ``source``: flag -> its file definition.

        Flags the file removed are left out. This is the ``before`` for the next edit of that
        file, even for flags whose latest change overall is an admin one.
        """
        latest = (
            select(func.max(audit.c.version))
            .where(audit.c.action == "file", audit.c.actor == f"file:{source}")
            .group_by(audit.c.flag_set_id, audit.c.flag_key)
        )
        query = select(audit.c.flag_set_id, audit.c.flag_key, audit.c.after).where(
            audit.c.version.in_(latest), audit.c.after.is_not(None)
        )
        with self._connect() as conn:
            return {
                (r.flag_set_id, r.flag_key): definition
                for r in conn.execute(query)
                if (definition := decode(r.after)) is not None
            }

    def snapshot(self) -> StateSnapshot:
        """Head, overrides and last changes as of one instant (what a (re)load should use)."""
        with self._connect() as conn:
            if self._db.dialect == "postgresql":
                # READ COMMITTED would give each statement its own snapshot.
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():  # SQLite: one WAL read snapshot for the whole transaction
                version = int(conn.execute(select(head.c.version)).scalar_one())
                return StateSnapshot(version, _read_overrides(conn), _read_last_changes(conn))

    def changes(
        self,
        *,
        flag_key: str | None = None,
        from_version: int = 0,
        to_version: int = 0,
        limit: int = _DEFAULT_LIMIT,
    ) -> list[ChangeRecord]:
        """Audit records with from_version < version <= to_version (0 = no upper bound).

        Ascending by version, at most ``limit`` (0 = 100); ``flag_key`` matches in any set.
        """
        if from_version < 0 or to_version < 0 or limit < 0:
            raise ValueError("from_version, to_version and limit must not be negative")
        query = select(audit).where(audit.c.version > from_version)
        if to_version > 0:
            query = query.where(audit.c.version <= to_version)
        if flag_key:
            query = query.where(audit.c.flag_key == flag_key)
        query = query.order_by(audit.c.version).limit(limit or _DEFAULT_LIMIT)
        with self._connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    # ---- writes ------------------------------------------------------------------------

    def commit_change(
        self,
        *,
        flag_set_id: str,
        key: str,
        action: str,
        actor: str,
        reason: str,
        before: Definition | None,
        after: Definition | None,
        expected_version: int | None = None,
    ) -> ChangeRecord:
        """Set the flag's override to ``after`` (None: tombstone), audited; durable on return."""
        _require(key=key, action=action, actor=actor, reason=reason)
        _require_set_id(flag_set_id)
        if action in _RESERVED_ACTIONS:
            raise ValueError(f"action {action!r} is reserved; use its own method")
        before_text, after_text = encode(before, "before"), encode(after, "after")
        with self._write() as tx:
            row = tx.flag_row(flag_set_id, key)
            _check_expected(row, flag_set_id, key, expected_version)
            record = tx.append(
                actor=actor,
                action=action,
                flag_set_id=flag_set_id,
                key=key,
                reason=reason,
                before=before_text,
                after=after_text,
            )
            tx.set_flag(
                row,
                flag_set_id,
                key,
                last_version=record.version,
                overridden=True,
                definition=after_text,
            )
        return record

    def release_override(
        self,
        *,
        flag_set_id: str,
        key: str,
        actor: str,
        reason: str,
        expected_version: int | None = None,
        after: Definition | None = None,
    ) -> ChangeRecord:
        """Drop the flag's override so its file definition applies again (action "release").

        ``before`` is the override being dropped; ``after`` is what the caller says now applies
        (the files' definition, None if the files lack the flag). No override: NoOverrideError.
        """
        _require(key=key, actor=actor, reason=reason)
        _require_set_id(flag_set_id)
        after_text = encode(after, "after")
        with self._write() as tx:
            row = tx.flag_row(flag_set_id, key)
            _check_expected(row, flag_set_id, key, expected_version)
            if row is None or not row.overridden:
                raise NoOverrideError(flag_set_id, key)
            record = tx.append(
                actor=actor,
                action="release",
                flag_set_id=flag_set_id,
                key=key,
                reason=reason,
                before=row.definition,
                after=after_text,
            )
            tx.set_flag(
                row,
                flag_set_id,
                key,
                last_version=record.version,
                overridden=False,
                definition=None,
            )
        return record

    def record_file_changes(
        self, *, source: str, digest: str, changes: Sequence[FileChange]
    ) -> list[ChangeRecord]:
        """Audit a source file edit (action "file"); overrides are untouched.

        Replicas watching one file all report its edit: the first report of a content
        ``digest`` for ``source`` writes the records, the rest get []. Only the source's last
        recorded digest counts, so an edit back to earlier content (A→B→A) is recorded again.
        """
        _require(source=source, digest=digest)
        if not changes:
            return []
        encoded = []
        for flag_set_id, key, before, after in changes:
            _require(key=key)
            _require_set_id(flag_set_id)
            encoded.append((flag_set_id, key, encode(before, "before"), encode(after, "after")))
        records: list[ChangeRecord] = []
        with self._write() as tx:
            known = tx.conn.execute(
                select(sources.c.digest).where(sources.c.source == source)
            ).first()
            if known is not None and known.digest == digest:
                return []
            for flag_set_id, key, before_text, after_text in encoded:
                row = tx.flag_row(flag_set_id, key)
                record = tx.append(
                    actor=f"file:{source}",
                    action="file",
                    flag_set_id=flag_set_id,
                    key=key,
                    reason="file changed",
                    before=before_text,
                    after=after_text,
                )
                tx.set_flag(row, flag_set_id, key, last_version=record.version)
                records.append(record)
            if known is None:
                tx.conn.execute(
                    insert(sources).values(source=source, digest=digest, version=tx.head)
                )
            else:
                tx.conn.execute(
                    update(sources)
                    .where(sources.c.source == source)
                    .values(digest=digest, version=tx.head)
                )
        return records

    # ---- notifications and lifecycle ---------------------------------------------------

    def subscribe(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(version)`` soon after any process commits; returns the unsubscriber.

        Every commit after this returns is reported, in increasing order, possibly coalesced
        with later ones. Callbacks run on the store's notifier thread: keep them cheap.
        """
        with self._notifier_lock:
            if self._closed:
                raise RuntimeError("state store is closed")
            if self._notifier is not None:
                return self._notifier.add(callback)
            db = self._db
            notifier = Notifier(
                self.head_version,
                poll_interval=PG_POLL_S if db.dialect == "postgresql" else SQLITE_POLL_S,
                libpq_url=db.libpq_url,
                channel=db.channel,
                application_name=f"ripcord-listen:{db.schema}" if db.schema else "ripcord-listen",
            )
            unsubscribe = notifier.add(callback)
            try:
                notifier.start()
            except BaseException:
                notifier.close()
                raise
            self._notifier = notifier
            return unsubscribe

    def close(self) -> None:
        """Stop notifications and close every connection; idempotent."""
        with self._notifier_lock:
            if self._closed:
                return
            self._closed = True
            notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.close()
        self._engine.dispose()

    # ---- internals ---------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        if self._closed:
            raise RuntimeError("state store is closed")
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        """A transaction holding the head lock; bumps the head and NOTIFYs if it appended."""
        with self._write_lock, self._connect() as conn:
            conn.execution_options(**write_options())
            with conn.begin():
                start = conn.execute(
                    select(head.c.version).where(head.c.id == HEAD_ID).with_for_update()
                ).scalar_one()
                tx = _Tx(conn, int(start), self._now())
                yield tx
                if tx.head != tx.start:
                    conn.execute(update(head).where(head.c.id == HEAD_ID).values(version=tx.head))
                    if self._db.dialect == "postgresql":
                        # Delivered to listeners only when (and if) this transaction commits.
                        conn.execute(select(func.pg_notify(self._db.channel, str(tx.head))))
        if tx.head != tx.start and self._db.dialect == "sqlite":
            notifier = self._notifier
            if notifier is not None:
                notifier.poke()

    def _now(self) -> datetime:
        at = self._clock()
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("the state clock must return tz-aware datetimes")
        return at.astimezone(UTC)


def _require(**values: str) -> None:
    for name, value in values.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string")


def _require_set_id(flag_set_id: str) -> None:
    if not isinstance(flag_set_id, str):
        raise ValueError('flag_set_id must be a string ("" for the unnamed set)')


def _check_expected(
    row: Row[Any] | None, flag_set_id: str, key: str, expected_version: int | None
) -> None:
    if expected_version is None:
        return
    current = 0 if row is None else int(row.last_version)
    if expected_version != current:
        raise StaleVersionError(flag_set_id, key, current, expected_version)


def _record(row: Row[Any]) -> ChangeRecord:
    return ChangeRecord(
        version=int(row.version),
        at=row.at,
        actor=row.actor,
        action=row.action,
        flag_set_id=row.flag_set_id,
        flag_key=row.flag_key,
        reason=row.reason,
        before=decode(row.before),
        after=decode(row.after),
    )


def _read_overrides(conn: Connection) -> dict[FlagId, Definition | None]:
    rows = conn.execute(
        select(flags.c.flag_set_id, flags.c.flag_key, flags.c.definition).where(
            flags.c.overridden.is_(True)
        )
    )
    return {(r.flag_set_id, r.flag_key): decode(r.definition) for r in rows}


def _read_last_changes(conn: Connection) -> dict[FlagId, ChangeRecord]:
    rows = conn.execute(
        select(audit).select_from(audit.join(flags, flags.c.last_version == audit.c.version))
    )
    return {(r.flag_set_id, r.flag_key): _record(r) for r in rows}
