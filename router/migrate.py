"""`ripcord migrate status|expand|backfill|contract|rollback`: the fx_rate_snapshot migration.

Expand-contract on payment_transactions, as versioned revisions recorded in the database itself
(``ripcord_migration_head``: the phase and revision; ``ripcord_migration_log``: the journal):

- ``0001_fx_snapshot_expand`` (deploy N): ``ADD COLUMN fx_rate_snapshot`` NULLABLE, no default
  (jsonb on PostgreSQL: a catalog-only change; JSON on SQLite: a plain ADD COLUMN), plus the
  backfill's checkpoint tables; the head says "expanded" in the same transaction, and routers
  start dual-writing within their phase TTL (`router.ledger`).
- backfill (`router.backfill`): data only, gated by ``payments.fx-backfill.enabled``.
- ``0002_fx_snapshot_contract`` (deploy N+1), behind the guard (`router.contract`):
  PostgreSQL ``ADD CONSTRAINT … CHECK (fx_rate_snapshot IS NOT NULL) NOT VALID``, then
  ``VALIDATE CONSTRAINT`` (SHARE UPDATE EXCLUSIVE: reads and writes go on), then ``SET NOT
  NULL`` (PG 12+ skips its scan thanks to the valid check), then ``DROP CONSTRAINT``: four
  transactions, each re-entrant, so an interrupted contract can simply be run again. SQLite:
  the documented table rebuild (foreign keys off outside the transaction, create-copy-drop-
  rename, indexes and triggers recreated, ``PRAGMA foreign_key_check``, foreign keys back on).
- rollback: ``rollback backfill`` NULLs what the backfill wrote (not what routers wrote) and
  drops its checkpoint; ``rollback expand`` first sets the head back to "legacy" (routers stop
  writing the column), waits ``--grace`` seconds (twice the routers' phase TTL by default),
  then drops the column. The contract is one-way.

Every PostgreSQL DDL transaction starts with ``SET LOCAL lock_timeout`` (500 ms by default) and is
retried on lock_not_available (55P03) or a deadlock with capped exponential backoff and jitter:
an ALTER waiting for a long transaction must not queue all traffic behind itself. SQLite has no
lock queue; its writers wait on the busy timeout.

Why not Alembic: every step here needs its own transaction with a lock timeout and a retry loop,
the SQLite rebuild must switch foreign keys off outside any transaction, and the router itself
reads the phase; a small runner with a head table and a journal is shorter than bending
Alembic's per-migration transaction, and adds no dependency.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateTable

from router import backfill as bf
from router import contract as guard
from router.ledger import DEFAULT_PHASE_TTL, LedgerDatabase, open_database, write_options
from router.schema import (
    PAYMENTS_TABLE,
    SNAPSHOT_COLUMN,
    SchemaPhase,
    contracted_payment_table,
    detect_phase,
    ensure_migration_tables,
    ensure_schema,
    fx_backfill,
    fx_backfill_batches,
    journal,
    migration_head,
    migration_log,
    qualified_name,
    recorded_phase,
    set_head,
    snapshot_column_state,
    table_exists,
)

__all__ = [
    "CHECK_NAME",
    "REV_CONTRACT",
    "REV_EXPAND",
    "REV_LEGACY",
    "DatabaseStatus",
    "DdlPolicy",
    "MigrationError",
    "Migrator",
    "StepReport",
    "main",
]

log = logging.getLogger("router.migrate")

REV_LEGACY = "0000_legacy"
REV_EXPAND = bf.REVISION
REV_CONTRACT = guard.REVISION
CHECK_NAME = "payment_transactions_fx_snapshot_not_null"
DEFAULT_DB = "sqlite:///.state/router/payments.db"  # what `ripcord router serve` uses
_PG_TYPE = "jsonb"
_SQLITE_TYPE = "JSON"
_REBUILD_TABLE = "payment_transactions__contract"
_PG_MIGRATE_LOCK = 0x52495043_4D494752  # "RIPCMIGR": serialises bookkeeping creation
_RETRY_SQLSTATES = ("55P03", "40P01")  # lock_not_available, deadlock_detected
EXIT_REFUSED = 3


class MigrationError(Exception):
    """A migration step cannot run (wrong phase, data left, gave up retrying)."""


@dataclass(frozen=True)
class DdlPolicy:
    """How long a DDL statement may wait for its lock, and how long to keep retrying."""

    lock_timeout_ms: int = 500
    deadline_s: float = 120.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0


@dataclass(frozen=True)
class StepReport:
    """One DDL step: how many attempts it took."""

    name: str
    attempts: int
    seconds: float
    skipped: bool = False  # already done (steps are re-entrant)


@dataclass
class DatabaseStatus:
    """What `status` reports about one database."""

    url: str
    dialect: str
    phase: SchemaPhase | None  # None: no payment_transactions table
    column: str
    head_phase: str | None = None
    head_revision: str | None = None
    head_at: datetime | None = None
    check: str | None = None  # PG: the contract's NOT NULL check, "NOT VALID" / "valid"
    checkpoint: bf.Checkpoint | None = None
    worker_running: bool | None = None
    nulls: int | None = None
    journal: list[dict[str, Any]] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line: the phase in the migration's words."""
        if self.phase is None:
            return "no payment_transactions table"
        if self.phase == "legacy":
            return "legacy (before expand)"
        if self.phase == "contracted":
            return "contracted (fx_rate_snapshot NOT NULL; dual write off)"
        ck = self.checkpoint
        if self.check is not None:
            return f"expanded, contract in progress (check {self.check})"
        if ck is None:
            return "expanded, backfill not started"
        if ck.completed_at is not None:
            return f"expanded, backfill complete since {ck.completed_at:%Y-%m-%d %H:%M:%S} UTC"
        state = "running" if self.worker_running else "stopped or paused"
        return f"expanded, backfill {state} (pass {ck.pass_no}, {ck.rows_done:,} rows done)"


def _is_retryable(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in _RETRY_SQLSTATES:
        return True
    return "database is locked" in str(exc.orig)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Migrator:
    """The schema steps of the migration on one database."""

    def __init__(
        self,
        db: LedgerDatabase,
        *,
        policy: DdlPolicy | None = None,
        clock: Callable[[], datetime] = _utc_now,
        actor: str = "migrate",
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str, int, DBAPIError], None] | None = None,
    ) -> None:
        """``on_retry(step, attempt, error)`` is told about every lock-timeout retry."""
        self.db = db
        self.policy = policy or DdlPolicy()
        self.clock = clock
        self.actor = actor
        self.sleep = sleep
        self.on_retry = on_retry
        self.table = qualified_name(db.engine.dialect, db.schema, PAYMENTS_TABLE)

    @property
    def engine(self) -> Engine:
        """The database's engine."""
        return self.db.engine

    def phase(self) -> SchemaPhase:
        """The live phase (what routers detect)."""
        with self.engine.connect() as conn:
            return detect_phase(conn, self.db.schema)

    # ---- expand --------------------------------------------------------------------------

    def expand(self) -> list[StepReport]:
        """Add fx_rate_snapshot NULLABLE; the head says expanded in the same transaction."""
        self._prepare()
        with self.engine.connect() as conn:
            column = snapshot_column_state(conn, self.db.schema)
            recorded = recorded_phase(conn, self.db.schema)
            column_type = self._column_type(conn) if column != "absent" else None
        if column == "not-null":
            return [StepReport("expand", 0, 0.0, skipped=True)]  # contracted: long past
        if column == "nullable" and recorded in ("expanded", "contracted"):
            return [StepReport("expand", 0, 0.0, skipped=True)]
        wanted = _PG_TYPE if self.db.dialect == "postgresql" else _SQLITE_TYPE
        if column_type is not None and column_type.lower() != wanted.lower():
            raise MigrationError(
                f"{SNAPSHOT_COLUMN} already exists as {column_type}, not {wanted}: it was not "
                "made by this migration; drop it or fix it by hand first"
            )

        def add(conn: Connection) -> None:
            if snapshot_column_state(conn, self.db.schema) == "absent":
                conn.exec_driver_sql(
                    f"ALTER TABLE {self.table} ADD COLUMN {SNAPSHOT_COLUMN} {wanted}"
                )
            self._upgrade_head(
                conn, "expanded", REV_EXPAND, f"ADD COLUMN {SNAPSHOT_COLUMN} {wanted} NULL"
            )

        return [self._ddl("expand: ADD COLUMN fx_rate_snapshot (nullable, no default)", add)]

    # ---- contract ------------------------------------------------------------------------

    def contract(self) -> list[StepReport]:
        """Make fx_rate_snapshot NOT NULL (the caller has passed or overridden the guard)."""
        phase = self.phase()
        if phase == "contracted":
            return [StepReport("contract", 0, 0.0, skipped=True)]
        if phase == "legacy":
            raise MigrationError("fx_rate_snapshot is not there (or not the migration's): expand")
        # No backfill may run while the constraint goes on (nor start: we hold its lock).
        with bf.backfill_lock(self.db, 0.0):
            with self.engine.connect() as conn:
                if bf.nulls_remain(self.db, conn):
                    raise MigrationError(
                        "rows without fx_rate_snapshot remain: run the backfill to completion"
                    )
            if self.db.dialect == "sqlite":
                return [self._sqlite_rebuild()]
            return self._pg_contract()

    def _pg_contract(self) -> list[StepReport]:
        t, c = self.table, CHECK_NAME
        reports = []
        check = self._check_state()
        if check is None:
            reports.append(
                self._ddl(
                    "contract 1/4: ADD CHECK (fx_rate_snapshot IS NOT NULL) NOT VALID",
                    lambda conn: self._pg_step(
                        conn,
                        f"ALTER TABLE {t} ADD CONSTRAINT {c} "
                        f"CHECK ({SNAPSHOT_COLUMN} IS NOT NULL) NOT VALID",
                    ),
                )
            )
        else:
            reports.append(StepReport("contract 1/4: ADD CHECK … NOT VALID", 0, 0.0, True))
        if check != "valid":
            # Its own transaction: validating where the check was added would hold ACCESS
            # EXCLUSIVE for the whole scan.
            reports.append(
                self._ddl(
                    "contract 2/4: VALIDATE CONSTRAINT (scan under SHARE UPDATE EXCLUSIVE)",
                    lambda conn: self._pg_step(conn, f"ALTER TABLE {t} VALIDATE CONSTRAINT {c}"),
                )
            )
        else:
            reports.append(StepReport("contract 2/4: VALIDATE CONSTRAINT", 0, 0.0, True))

        def set_not_null(conn: Connection) -> None:
            conn.exec_driver_sql(f"ALTER TABLE {t} ALTER COLUMN {SNAPSHOT_COLUMN} SET NOT NULL")
            self._upgrade_head(
                conn, "contracted", REV_CONTRACT, f"SET NOT NULL (proved by the valid check {c})"
            )

        reports.append(
            self._ddl("contract 3/4: SET NOT NULL (no scan: the check proves it)", set_not_null)
        )
        # A separate statement: PG only skips SET NOT NULL's scan if the check is still there.
        reports.append(
            self._ddl(
                "contract 4/4: DROP the now redundant check",
                lambda conn: self._pg_step(conn, f"ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {c}"),
            )
        )
        return reports

    def _pg_step(self, conn: Connection, sql: str) -> None:
        conn.exec_driver_sql(sql)
        journal(
            conn,
            at=self.clock(),
            action="upgrade",
            revision=REV_CONTRACT,
            actor=self.actor,
            detail={"step": sql},
        )

    def _check_state(self) -> str | None:
        """The contract check on PG: None (absent), "NOT VALID" or "valid"."""
        if self.db.dialect != "postgresql":
            return None
        with self.engine.connect() as conn:
            valid = conn.execute(
                text(
                    "SELECT convalidated FROM pg_constraint WHERE conname = :name"
                    " AND conrelid = to_regclass(:table)"
                ),
                {"name": CHECK_NAME, "table": self.table},
            ).scalar()
        if valid is None:
            return None
        return "valid" if valid else "NOT VALID"

    def _sqlite_rebuild(self) -> StepReport:
        """The generalized ALTER TABLE procedure of sqlite.org (lang_altertable, 12 steps)."""
        started = time.perf_counter()
        new = contracted_payment_table(_REBUILD_TABLE)
        create = str(CreateTable(new).compile(dialect=self.engine.dialect)).strip()
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            # 1. Foreign keys off, outside any transaction (the PRAGMA is a no-op inside one):
            # idempotency_keys references the table that is about to be dropped.
            raw.execute("PRAGMA foreign_keys = OFF")
            try:
                conn.execution_options(**write_options())
                with conn.begin():  # 2. BEGIN IMMEDIATE
                    self._rebuild(conn, create, [c.name for c in new.columns])
            finally:
                raw.execute("PRAGMA foreign_keys = ON")  # 12.
        return StepReport(
            "contract: SQLite table rebuild (NOT NULL)", 1, time.perf_counter() - started
        )

    def _rebuild(self, conn: Connection, create: str, columns: list[str]) -> None:
        live = [row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({PAYMENTS_TABLE})")]
        if sorted(live) != sorted(columns):
            raise MigrationError(
                f"payment_transactions has columns {sorted(set(live) ^ set(columns))} that the "
                "contracted table does not (or lacks some): refusing to rebuild"
            )
        # 3. Remember the table's indexes and triggers, and every view (views are dropped and
        # recreated: a rename checks the whole schema and a view of a dropped table fails it).
        saved = conn.exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND "
            "((tbl_name = ? AND type IN ('index', 'trigger')) OR type = 'view')",
            (PAYMENTS_TABLE,),
        ).all()
        for kind, name, _sql in saved:
            if kind == "view":
                conn.exec_driver_sql(f'DROP VIEW "{name}"')
        conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{_REBUILD_TABLE}"')
        conn.exec_driver_sql(create)  # 4.
        names = ", ".join(f'"{c}"' for c in columns)
        # 5. Copy; a row without the snapshot fails the NOT NULL here and rolls everything back.
        conn.exec_driver_sql(
            f'INSERT INTO "{_REBUILD_TABLE}" ({names}) SELECT {names} FROM {PAYMENTS_TABLE}'
        )
        conn.exec_driver_sql(f"DROP TABLE {PAYMENTS_TABLE}")  # 6.
        conn.exec_driver_sql(f'ALTER TABLE "{_REBUILD_TABLE}" RENAME TO {PAYMENTS_TABLE}')  # 7.
        for kind, _name, sql in saved:  # 8., 9.
            if kind in ("index", "trigger"):
                conn.exec_driver_sql(sql)
        for kind, _name, sql in saved:
            if kind == "view":
                conn.exec_driver_sql(sql)
        problems = conn.exec_driver_sql("PRAGMA foreign_key_check").all()  # 10.
        if problems:
            raise MigrationError(f"foreign key check failed after the rebuild: {problems[:5]}")
        self._upgrade_head(
            conn, "contracted", REV_CONTRACT, "SQLite table rebuild with fx_rate_snapshot NOT NULL"
        )
        # 11. COMMIT on leaving the block.

    # ---- rollbacks -----------------------------------------------------------------------

    def rollback_backfill(self, settings: bf.BackfillSettings | None = None) -> int:
        """NULL the snapshots the backfill wrote and forget its checkpoint; rows cleared."""
        phase = self.phase()
        if phase == "contracted":
            raise MigrationError("the contract is one-way: fx_rate_snapshot is NOT NULL now")
        if phase == "legacy":
            return 0
        with bf.backfill_lock(self.db, 0.0):
            self._drop_check()
            return bf.clear_backfill(self.db, settings=settings, clock=self.clock, actor=self.actor)

    def rollback_expand(self, grace_s: float = 2 * DEFAULT_PHASE_TTL) -> list[StepReport]:
        """Routers stop writing the column (head → legacy), then, after ``grace_s``, drop it."""
        with self.engine.connect() as conn:
            column = snapshot_column_state(conn, self.db.schema)
            recorded = recorded_phase(conn, self.db.schema)
        if column == "not-null":
            raise MigrationError("the contract is one-way: fx_rate_snapshot is NOT NULL now")
        if column == "absent" and recorded in (None, "legacy"):
            return [StepReport("rollback expand", 0, 0.0, skipped=True)]
        reports = []
        with bf.backfill_lock(self.db, 0.0):
            self._drop_check()

            def to_legacy(conn: Connection) -> None:
                now = self.clock()
                set_head(conn, "legacy", REV_LEGACY, now)
                journal(
                    conn,
                    at=now,
                    action="downgrade",
                    revision=REV_EXPAND,
                    actor=self.actor,
                    detail={"step": "head -> legacy: routers stop writing fx_rate_snapshot"},
                )

            reports.append(self._ddl("rollback expand 1/2: head -> legacy", to_legacy))
            if column != "absent":
                # Routers re-check the phase every phase TTL; one that still writes the column
                # when it goes retries in the legacy phase anyway (`Ledger.record_payment`).
                self.sleep(grace_s)

                def drop(conn: Connection) -> None:
                    if snapshot_column_state(conn, self.db.schema) != "absent":
                        conn.exec_driver_sql(
                            f"ALTER TABLE {self.table} DROP COLUMN {SNAPSHOT_COLUMN}"
                        )
                    conn.execute(
                        fx_backfill_batches.delete().where(fx_backfill_batches.c.job == bf.JOB)
                    )
                    conn.execute(fx_backfill.delete().where(fx_backfill.c.job == bf.JOB))
                    journal(
                        conn,
                        at=self.clock(),
                        action="downgrade",
                        revision=REV_EXPAND,
                        actor=self.actor,
                        detail={"step": f"DROP COLUMN {SNAPSHOT_COLUMN}; backfill state reset"},
                    )

                reports.append(self._ddl("rollback expand 2/2: DROP COLUMN fx_rate_snapshot", drop))
        return reports

    def _drop_check(self) -> None:
        """Drop a half-done contract's check (it would refuse NULLs that rollbacks bring back)."""
        if self._check_state() is None:
            return
        sql = f"ALTER TABLE {self.table} DROP CONSTRAINT IF EXISTS {CHECK_NAME}"
        self._ddl("drop the contract's check", lambda conn: self._journal_step(conn, sql))

    def _journal_step(self, conn: Connection, sql: str) -> None:
        conn.exec_driver_sql(sql)
        journal(
            conn,
            at=self.clock(),
            action="downgrade",
            revision=REV_CONTRACT,
            actor=self.actor,
            detail={"step": sql},
        )

    # ---- status --------------------------------------------------------------------------

    def status(self, *, count: bool = False, journal_limit: int = 5) -> DatabaseStatus:
        """Phase, head, backfill checkpoint, worker, journal tail (``count``: NULL rows too)."""
        url = self.engine.url.render_as_string(hide_password=True)
        if self.db.schema:
            url += f" (schema {self.db.schema})"
        with self.engine.connect() as conn:
            if not table_exists(conn, self.db.schema, PAYMENTS_TABLE):
                return DatabaseStatus(url, self.db.dialect, None, "absent")
            column = snapshot_column_state(conn, self.db.schema)
            out = DatabaseStatus(url, self.db.dialect, detect_phase(conn, self.db.schema), column)
            if table_exists(conn, self.db.schema, migration_head.name):
                head = conn.execute(select(migration_head)).first()
                if head is not None:
                    out.head_phase, out.head_revision = head.phase, head.revision
                    out.head_at = head.updated_at
                rows = conn.execute(
                    select(migration_log).order_by(migration_log.c.id.desc()).limit(journal_limit)
                ).all()
                out.journal = [
                    {
                        "at": r.at,
                        "action": r.action,
                        "revision": r.revision,
                        "actor": r.actor,
                        "detail": json.loads(r.detail),
                    }
                    for r in reversed(rows)
                ]
            if table_exists(conn, self.db.schema, fx_backfill.name):
                out.checkpoint = bf.read_checkpoint(conn)
            if count and column != "absent":
                sql = f"SELECT count(*) FROM {self.table} WHERE {SNAPSHOT_COLUMN} IS NULL"
                out.nulls = int(conn.exec_driver_sql(sql).scalar_one())
        out.check = self._check_state()
        if out.phase == "expanded":
            try:
                with bf.backfill_lock(self.db, 0.0):
                    out.worker_running = False
            except bf.BackfillBusy:
                out.worker_running = True
        return out

    # ---- internals -----------------------------------------------------------------------

    def _prepare(self) -> None:
        """The legacy tables (as the router creates them) and the bookkeeping tables."""
        with self.engine.connect() as conn:
            conn.execution_options(**write_options())
            with conn.begin():
                if self.db.dialect == "postgresql":
                    conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATE_LOCK)))
                    if self.db.schema:
                        quoted = conn.dialect.identifier_preparer.quote(self.db.schema)
                        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
                ensure_schema(conn)
                ensure_migration_tables(conn)

    def _column_type(self, conn: Connection) -> str | None:
        if self.db.dialect == "sqlite":
            for row in conn.exec_driver_sql(f"PRAGMA table_info({PAYMENTS_TABLE})"):
                if row[1] == SNAPSHOT_COLUMN:
                    return str(row[2])
            return None
        value = conn.execute(
            text(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
                " WHERE a.attrelid = to_regclass(:table) AND a.attname = :column"
                " AND NOT a.attisdropped"
            ),
            {"table": self.table, "column": SNAPSHOT_COLUMN},
        ).scalar()
        return None if value is None else str(value)

    def _upgrade_head(self, conn: Connection, phase: SchemaPhase, revision: str, step: str) -> None:
        """Move the head to ``phase`` and journal the step, in the DDL's own transaction."""
        now = self.clock()
        set_head(conn, phase, revision, now)
        journal(
            conn,
            at=now,
            action="upgrade",
            revision=revision,
            actor=self.actor,
            detail={"step": step},
        )

    def _ddl(self, name: str, body: Callable[[Connection], None]) -> StepReport:
        """Run ``body`` in one transaction under a lock timeout; retry lock timeouts."""
        policy = self.policy
        started = time.perf_counter()
        deadline = time.monotonic() + policy.deadline_s
        delay = policy.backoff_initial_s
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.engine.connect() as conn:
                    conn.execution_options(**write_options())
                    with conn.begin():
                        if self.db.dialect == "postgresql":
                            ms = int(policy.lock_timeout_ms)
                            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{ms}ms'")
                        body(conn)
                log.info("%s: done after %d attempt(s)", name, attempt)
                return StepReport(name, attempt, time.perf_counter() - started)
            except DBAPIError as exc:
                if not _is_retryable(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise MigrationError(
                        f"{name}: no lock within {policy.deadline_s:g} s ({attempt} attempts of "
                        f"{policy.lock_timeout_ms} ms): a long transaction holds the table"
                    ) from exc
                if self.on_retry is not None:
                    self.on_retry(name, attempt, exc)
                log.warning("%s: lock timeout (attempt %d); retrying", name, attempt)
                # Equal jitter: many migrators (or a retry storm) do not line up.
                self.sleep(delay / 2 + random.uniform(0, delay / 2))
                delay = min(delay * 2, policy.backoff_max_s)


# ---- the command line --------------------------------------------------------------------------

EPILOG = """\
order of operations (deploy N, then N+1):
  ripcord migrate expand   --db URL     # nullable column; routers start dual-writing
  ripcord flags set payments.fx-backfill.enabled --variant on --reason '...'
  ripcord migrate backfill --db URL --flagd HOST:8015
  ripcord migrate status   --db URL [--db URL ...]
  ripcord migrate contract --db URL --admin HOST:8013   # 72 h after 100% and backfill done
  ripcord migrate rollback backfill|expand --db URL

the contract guard reads the daemon's audit trail with the token in RIPCORD_TOKEN (role viewer);
--override REASON records an override in the database's migration journal and proceeds.
exit codes: 0 done, 1 failed, 2 usage, 3 refused by the guard.
"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The `migrate` command line."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Expand-contract migration of payment_transactions.fx_rate_snapshot.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--actor", default=None, help="who runs this, for the journal ($USER)")
    common.add_argument("--log-level", default="WARNING")
    ddl = argparse.ArgumentParser(add_help=False)
    ddl.add_argument("--lock-timeout-ms", type=int, default=500, help="PG lock_timeout (500)")
    ddl.add_argument(
        "--ddl-deadline", type=float, default=120.0, metavar="S",
        help="keep retrying a lock timeout this long (120 s)",
    )  # fmt: skip
    one_db = argparse.ArgumentParser(add_help=False)
    one_db.add_argument("--db", default=None, help=f"the payments database URL ({DEFAULT_DB})")
    pace = argparse.ArgumentParser(add_help=False)
    pace.add_argument("--batch-size", type=int, default=1000, help="rows per batch (1000)")
    pace.add_argument("--sleep-ms", type=float, default=10.0, help="pause between batches (10)")

    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = subs.add_parser("status", help="which phase each database is in", parents=[common])
    status.add_argument("--db", action="append", default=[], help="repeat for several databases")
    status.add_argument("--count", action="store_true", help="count rows without the snapshot")
    status.add_argument("--json", action="store_true", help="print JSON")
    subs.add_parser("expand", help="add fx_rate_snapshot (nullable)", parents=[common, one_db, ddl])
    backfill = subs.add_parser(
        "backfill", help="fill fx_rate_snapshot (gated by payments.fx-backfill.enabled)",
        parents=[common, one_db, pace],
    )  # fmt: skip
    backfill.add_argument(
        "--flagd", default="localhost:8015", help="the daemon's sync address (localhost:8015)"
    )
    backfill.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here")
    backfill.add_argument("--no-progress", action="store_true", help="no progress bar")
    contract = subs.add_parser(
        "contract", help="make fx_rate_snapshot NOT NULL (guarded)", parents=[common, one_db, ddl]
    )
    contract.add_argument(
        "--admin", default=os.environ.get("FLAGD_ADMIN") or "localhost:8013",
        help="the daemon's admin API (env FLAGD_ADMIN; localhost:8013)",
    )  # fmt: skip
    contract.add_argument("--cacert", default=None, help="TLS to the admin API with this CA")
    contract.add_argument("--tls", action="store_true", help="TLS with the system roots")
    contract.add_argument("--release-flag", default=guard.RELEASE_FLAG)
    contract.add_argument("--flag-set", default=None, help="the release flag's flag set")
    contract.add_argument("--min-age-hours", type=float, default=72.0)
    contract.add_argument(
        "--override", metavar="REASON", default=None,
        help="proceed although the guard refuses; recorded with REASON in the journal",
    )  # fmt: skip
    rollback = subs.add_parser(
        "rollback", help="undo the backfill or the expand", parents=[common, one_db, ddl, pace]
    )
    rollback.add_argument("what", choices=["backfill", "expand"])
    rollback.add_argument(
        "--grace", type=float, default=2 * DEFAULT_PHASE_TTL, metavar="S",
        help="expand: wait between 'routers stop writing' and DROP COLUMN (10 s)",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "ripcord migrate") -> int:
    """Entry point; returns the exit code."""
    args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    actor = args.actor or os.environ.get("USER") or getpass.getuser()
    try:
        if args.command == "status":
            return _status(args, out)
        db = open_database(args.db or DEFAULT_DB)
        try:
            return _run(args, db, actor, out, err)
        finally:
            db.engine.dispose()
    except (MigrationError, bf.BackfillError, ValueError) as exc:
        err.print(f"{prog}: {exc}")
        return 1


def _migrator(args: argparse.Namespace, db: LedgerDatabase, actor: str, err: Console) -> Migrator:
    policy = DdlPolicy(lock_timeout_ms=args.lock_timeout_ms, deadline_s=args.ddl_deadline)

    def on_retry(step: str, attempt: int, exc: DBAPIError) -> None:
        err.print(f"{step}: lock not granted within {policy.lock_timeout_ms} ms (try {attempt})")

    return Migrator(db, policy=policy, actor=actor, on_retry=on_retry)


def _run(
    args: argparse.Namespace, db: LedgerDatabase, actor: str, out: Console, err: Console
) -> int:
    if args.command == "expand":
        _print_steps(out, _migrator(args, db, actor, err).expand())
        out.print("expanded: routers dual-write fx_rate_snapshot from their next phase check")
        return 0
    if args.command == "backfill":
        return _backfill(args, db, actor, out, err)
    if args.command == "contract":
        return _contract(args, db, actor, out, err)
    migrator = _migrator(args, db, actor, err)
    if args.what == "backfill":
        settings = bf.BackfillSettings(args.batch_size, args.sleep_ms / 1000)
        rows = migrator.rollback_backfill(settings)
        out.print(f"backfill rolled back: {rows:,} backfilled snapshots cleared")
        return 0
    _print_steps(out, migrator.rollback_expand(args.grace))
    out.print("expand rolled back: fx_rate_snapshot is gone; the table is legacy again")
    return 0


def _backfill(
    args: argparse.Namespace, db: LedgerDatabase, actor: str, out: Console, err: Console
) -> int:
    from prometheus_client import start_http_server

    settings = bf.BackfillSettings(args.batch_size, args.sleep_ms / 1000)
    if Migrator(db).phase() == "legacy":  # before waiting for the flag stream
        raise bf.BackfillError("fx_rate_snapshot does not exist yet: run `migrate expand` first")
    metrics = bf.BackfillMetrics()
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=metrics.registry)
    progress = bf.BackfillProgress(metrics, bar=not args.no_progress, console=err)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    gate = bf.FlagGate(args.flagd, token=os.environ.get(guard.TOKEN_ENV)).start()
    try:
        if not gate.enabled():
            err.print(f"paused until {gate.describe()}")
        worker = bf.BackfillWorker(
            db, settings=settings, gate=gate, stop=stop, progress=progress, actor=actor
        )
        outcome = worker.run()
    finally:
        gate.close()
    ck = worker.checkpoint
    done = f"{ck.rows_done:,} rows in {ck.batches:,} batches" if ck else "nothing to do"
    if outcome == "complete":
        out.print(f"backfill complete: {done}")
        return 0
    out.print(f"backfill stopped at a batch boundary ({done}); run it again to resume")
    return 1


def _contract(
    args: argparse.Namespace, db: LedgerDatabase, actor: str, out: Console, err: Console
) -> int:
    import grpc

    credentials = None
    if args.cacert:
        with open(args.cacert, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    elif args.tls:
        credentials = grpc.ssl_channel_credentials()
    migrator = _migrator(args, db, actor, err)
    if migrator.phase() == "contracted":
        out.print("already contracted")
        return 0
    now = _utc_now()
    verdict = guard.check_guard(
        db,
        guard.AdminAuditSource(args.admin, credentials=credentials),
        now=now,
        release_flag=args.release_flag,
        flag_set=args.flag_set,
        min_age=timedelta(hours=args.min_age_hours),
    )
    for line in verdict.explain():
        out.print(line)
    if not verdict.allowed:
        if not verdict.overridable or args.override is None:
            err.print("contract refused" + ("" if verdict.blocking else " (see --override)"))
            return EXIT_REFUSED
        guard.record_override(db, verdict, actor=actor, reason=args.override, at=now)
        out.print(f"guard overridden by {actor}: {args.override!r} (recorded in the journal)")
    _print_steps(out, migrator.contract())
    out.print("contracted: fx_rate_snapshot is NOT NULL; routers stop the dual write")
    return 0


def _print_steps(out: Console, reports: list[StepReport]) -> None:
    for r in reports:
        if r.skipped:
            out.print(f"{r.name}: already done")
        else:
            retries = f", {r.attempts - 1} lock retries" if r.attempts > 1 else ""
            out.print(f"{r.name}: ok in {r.seconds * 1000:.0f} ms{retries}")


def _status(args: argparse.Namespace, out: Console) -> int:
    urls = args.db or [DEFAULT_DB]
    statuses = []
    for url in urls:
        db = open_database(url)
        try:
            statuses.append(Migrator(db).status(count=args.count))
        finally:
            db.engine.dispose()
    if args.json:
        out.print_json(json.dumps([_status_data(s) for s in statuses], default=str))
        return 0
    for s in statuses:
        out.print(f"[bold]{s.url}[/bold]")
        ck = s.checkpoint
        rows = [("phase", s.summary)]
        if s.head_revision is not None and s.head_at is not None:
            rows.append(("head", f"{s.head_revision} ({s.head_phase}) since {_when(s.head_at)}"))
        if ck is not None:
            backfill = f"pass {ck.pass_no}, {ck.batches:,} batches, {ck.rows_done:,} rows"
            backfill += f", cursor {ck.cursor!r}, last batch {_when(ck.updated_at)}"
            if ck.completed_at is not None:
                backfill += f", complete since {_when(ck.completed_at)}"
            rows.append(("backfill", backfill))
        if s.nulls is not None:
            rows.append(("rows without snapshot", f"{s.nulls:,}"))
        for j in s.journal:
            rows.append(
                ("journal", f"{_when(j['at'])} {j['action']} by {j['actor']}: {j['detail']}")
            )
        grid = RichTable.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        for name, value in rows:
            grid.add_row(f"  {name}", value)
        out.print(grid)
    return 0


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _status_data(s: DatabaseStatus) -> dict[str, Any]:
    ck = s.checkpoint
    return {
        "database": s.url,
        "dialect": s.dialect,
        "phase": s.phase,
        "summary": s.summary,
        "column": s.column,
        "head": {"phase": s.head_phase, "revision": s.head_revision, "at": s.head_at},
        "contract_check": s.check,
        "backfill": None
        if ck is None
        else {
            "pass": ck.pass_no,
            "batches": ck.batches,
            "rows_done": ck.rows_done,
            "cursor": ck.cursor,
            "completed_at": ck.completed_at,
            "worker_running": s.worker_running,
        },
        "rows_without_snapshot": s.nulls,
        "journal": s.journal,
    }


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        sys.exit(main())
