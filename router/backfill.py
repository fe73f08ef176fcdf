"""The fx_rate_snapshot backfill: throttled, resumable, exactly once per batch, flag-gated.

One worker per database (a PG advisory lock, a lock file next to a SQLite database) walks
payment_transactions by keyset on the primary key: each batch is the next ``batch_size`` keys
after the checkpoint's cursor, ``UPDATE … SET fx_rate_snapshot = <built from the legacy columns>
WHERE payment_id > cursor AND payment_id <= last AND fx_rate_snapshot IS NULL``. The same
transaction advances the checkpoint (``ripcord_fx_backfill``: cursor, batch count, rows) and
appends the batch to ``ripcord_fx_backfill_batches``; so a SIGKILL at any moment leaves either
the whole batch and its checkpoint or neither, and a restart continues after the last committed
batch: none skipped, none redone. The checkpoint update is conditional on the batch count the
worker read (and the batch log's primary key is the count), so a stale worker cannot commit.
The batch commits without waiting for the disk (`_write`, ``relaxed``): a server crash or power
loss can only take the newest batches back together with their checkpoint, never one without
the other. Payment ids are random, so the rows of one batch sit on as many pages as there are
rows: a batch costs page writes, not just CPU (see the benchmark, `bench/backfill.py`).

Rows written concurrently are safe both ways: the router dual-writes new rows (the UPDATE's
``IS NULL`` never touches them, nor any value written by new code) and the ranges include keys
inserted after the cursor passed. Payment ids are random, so a row written without the column
by a router that has not yet seen the expand (or by old code) can land behind the cursor: at the
end of a pass the worker looks for NULLs and, if any remain, runs another pass (at most
``max_passes``); the backfill is complete only when none remain. That moment is recorded
(``completed_at``, and in the migration journal): the contract guard's 72 hours count from it.

Between batches it sleeps ``sleep_s`` and checks the gate: `FlagGate` evaluates
``payments.fx-backfill.enabled`` on a `router.flags.FlagClient` snapshot (the daemon pushes
changes, so the check costs no I/O and turning the flag off pauses the worker before its next
batch: within one batch). A missing, DISABLED or unreadable flag means paused. Progress (rows
done, rows left, rate over the last 10 s, ETA) goes to Prometheus gauges and, on the CLI, to a
rich progress bar. The rollback, `clear_backfill`, resets what the backfill wrote (documents
with ``"origin": "backfill"``) and its checkpoint; rows the router wrote keep their snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError

from router.ledger import LedgerDatabase, write_options
from router.schema import (
    PAYMENTS_TABLE,
    detect_phase,
    fx_backfill,
    fx_backfill_batches,
    journal,
    qualified_name,
    table_exists,
)

__all__ = [
    "BACKFILL_FLAG",
    "JOB",
    "REVISION",
    "AlwaysOn",
    "BackfillBusy",
    "BackfillError",
    "BackfillMetrics",
    "BackfillProgress",
    "BackfillSettings",
    "BackfillWorker",
    "BatchDone",
    "Checkpoint",
    "FlagGate",
    "Gate",
    "backfill_lock",
    "clear_backfill",
    "count_nulls",
    "nulls_remain",
    "read_checkpoint",
]

if TYPE_CHECKING:  # imported where used: a worker without a bar or a flag stream starts faster
    from rich.console import Console
    from rich.progress import Progress as RichProgress

log = logging.getLogger("router.backfill")

BACKFILL_FLAG = "payments.fx-backfill.enabled"
JOB = "fx_rate_snapshot"
REVISION = "0001_fx_snapshot_expand"  # the backfill fills the column that revision added
_LOCK_CLASS = 0x52495046  # "RIPF": first key of the PG advisory lock; the second is the schema
_RATE_WINDOW_S = 10.0
_MAX_CONSECUTIVE_ERRORS = 5
# Pages of keyset batches are scattered (random payment ids): a bigger page cache than SQLite's
# 2 MB default saves re-reading them between batches.
_SQLITE_CACHE = -65536  # KiB

Outcome = Literal["complete", "stopped"]

# The snapshot document (`router.ledger.fx_snapshot`, origin "backfill") built in SQL from the
# legacy columns. SQLite's json_object keeps argument order, so keys go in sorted order and the
# text equals the ledger's canonical JSON byte for byte; PG's jsonb has its own key order.
# SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC).
_SQLITE_SNAPSHOT = (
    "CASE WHEN fx_quote_id IS NULL"
    " THEN json_object('origin', 'backfill', 'source', 'none', 'v', 1)"
    " ELSE json_object("
    "'as_of', replace(fx_as_of, ' ', 'T') || '+00:00',"
    " 'converted_amount_minor', fx_converted_amount_minor,"
    " 'from_currency', currency, 'markup', fx_markup, 'origin', 'backfill',"
    " 'quote_id', fx_quote_id, 'rate', fx_rate, 'source', fx_source,"
    " 'table_version', NULL, 'to_currency', fx_to_currency, 'v', 1) END"
)
_PG_SNAPSHOT = (
    "CASE WHEN fx_quote_id IS NULL"
    " THEN jsonb_build_object('v', 1, 'origin', 'backfill', 'source', 'none')"
    " ELSE jsonb_build_object('v', 1, 'origin', 'backfill', 'source', fx_source,"
    " 'quote_id', fx_quote_id, 'from_currency', currency, 'to_currency', fx_to_currency,"
    " 'rate', fx_rate, 'markup', fx_markup,"
    " 'converted_amount_minor', fx_converted_amount_minor,"
    " 'as_of', to_char(fx_as_of AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'),"
    " 'table_version', NULL::text) END"
)
_SQLITE_FROM_BACKFILL = "json_extract(fx_rate_snapshot, '$.origin') = 'backfill'"
_PG_FROM_BACKFILL = "fx_rate_snapshot->>'origin' = 'backfill'"


class BackfillError(Exception):
    """The backfill cannot run or continue."""


class BackfillBusy(BackfillError):
    """Another backfill worker (or a migration step) holds this database's backfill lock."""


@dataclass(frozen=True)
class BackfillSettings:
    """Batch size and pace: both may change between runs (the checkpoint does not use them)."""

    batch_size: int = 1000
    sleep_s: float = 0.010
    max_passes: int = 5  # passes that find NULLs left behind, before giving up loudly
    lock_wait_s: float = 15.0  # a killed worker's PG session may take a moment to go away

    def __post_init__(self) -> None:
        """Refuse nonsense."""
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.sleep_s < 0 or self.lock_wait_s < 0:
            raise ValueError("sleep_s and lock_wait_s must not be negative")
        if self.max_passes < 1:
            raise ValueError("max_passes must be at least 1")


@dataclass(frozen=True)
class Checkpoint:
    """The durable state of the backfill job (one row of ripcord_fx_backfill)."""

    pass_no: int
    cursor: str | None  # last key of the last committed batch of this pass; None: from the start
    batches: int  # committed batches, all passes
    rows_done: int  # rows the committed batches filled
    started_at: datetime
    updated_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class BatchDone:
    """One committed batch."""

    seq: int
    pass_no: int
    after_key: str | None
    last_key: str
    rows: int
    seconds: float  # from the range query to the commit's return


# ---- the gate ----------------------------------------------------------------------------------


class Gate(Protocol):
    """Says whether the worker may run the next batch."""

    def enabled(self) -> bool:
        """True: run the next batch; False: pause."""
        ...

    def wait(self, timeout: float) -> None:
        """Block until the answer may have changed, or ``timeout`` seconds."""
        ...

    def describe(self) -> str:
        """Why the worker is paused, for people."""
        ...


class AlwaysOn:
    """A gate that never pauses (tests, benchmarks; the CLI always uses `FlagGate`)."""

    def enabled(self) -> bool:
        """Always True."""
        return True

    def wait(self, timeout: float) -> None:
        """Nothing to wait for."""
        time.sleep(timeout)

    def describe(self) -> str:
        """Never paused."""
        return "always on"


class FlagGate:
    """``payments.fx-backfill.enabled`` from the daemon's sync stream, kept as a snapshot."""

    def __init__(
        self,
        target: str,
        *,
        flag_key: str = BACKFILL_FLAG,
        token: str | None = None,
        credentials: Any = None,
    ) -> None:
        """Subscribe to ``target`` (the daemon's sync address) once `start` is called."""
        from router.flags import FlagClient

        self.target = target
        self.flag_key = flag_key
        self._changed = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._client = FlagClient(
            target,
            token=token,
            credentials=credentials,
            on_change=lambda _snapshot: self._changed.set(),
        )
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fx-backfill-flags", daemon=True
        )

    def start(self, first_snapshot_s: float = 5.0) -> FlagGate:
        """Start the stream on its own thread; wait up to ``first_snapshot_s`` for the flags."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._client.start(), self._loop).result(5)
        deadline = time.monotonic() + first_snapshot_s
        while self._client.snapshot.version == 0 and not self._client.snapshot.flags:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.wait(min(left, 0.2))
        return self

    def enabled(self) -> bool:
        """True only when the flag cleanly evaluates to true (missing/off/error: paused)."""
        from flagd.evaluator import resolve
        from flagd.model import FlagType

        snapshot = self._client.snapshot
        context: dict[str, Any] = {"targetingKey": "fx-backfill", **snapshot.context}
        return resolve(snapshot.flags.get(self.flag_key), context, FlagType.BOOLEAN).value is True

    def wait(self, timeout: float) -> None:
        """Until the next flag change or ``timeout``."""
        if self._changed.wait(timeout):
            self._changed.clear()

    def describe(self) -> str:
        """Which flag, from where, in which state."""
        status = self._client.status
        return (
            f"{self.flag_key} is not on (flags from {self.target}: stream {status.state}, "
            f"config version {self._client.snapshot.version})"
        )

    def close(self) -> None:
        """Stop the stream and its thread."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._client.stop(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> FlagGate:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---- progress and metrics ----------------------------------------------------------------------


class BackfillMetrics:
    """Prometheus gauges of one backfill worker (serve them with `start_http_server`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Register the metrics in ``registry`` (a fresh one by default)."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rows_done = Gauge(
            "ripcord_backfill_rows_done", "Rows the fx_rate_snapshot backfill filled", registry=r
        )
        self.rows_left = Gauge(
            "ripcord_backfill_rows_left", "Rows still without fx_rate_snapshot", registry=r
        )
        self.rate = Gauge(
            "ripcord_backfill_rows_per_second", "Backfill rate over the last 10 s", registry=r
        )
        self.eta = Gauge(
            "ripcord_backfill_eta_seconds", "Rows left / rate (-1: unknown)", registry=r
        )
        self.batches = Counter(
            "ripcord_backfill_batches", "Batches committed by this worker", registry=r
        )
        self.paused = Gauge(
            "ripcord_backfill_paused", "1 while the gate flag holds the worker", registry=r
        )
        self.complete = Gauge(
            "ripcord_backfill_complete", "1 once no row lacks fx_rate_snapshot", registry=r
        )


class BackfillProgress:
    """Rows done and left, rate over a sliding window, ETA: into metrics and an optional bar."""

    def __init__(
        self,
        metrics: BackfillMetrics | None = None,
        *,
        bar: bool = False,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``bar``: draw a rich progress bar on ``console`` (stderr by default)."""
        self.metrics = metrics or BackfillMetrics()
        self.done = 0
        self.left = 0
        self._clock = clock
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self._bar: RichProgress | None = None
        self._task: Any = None
        if bar:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]fx_rate_snapshot backfill"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[left]} left  {task.fields[rate]}  ETA {task.fields[eta]}"),
                TextColumn("{task.fields[state]}"),
                console=console or Console(stderr=True),
            )

    @property
    def rate(self) -> float:
        """Rows per second over the last 10 s (0 when unknown)."""
        if len(self._window) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._window[0], self._window[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds to go at the current rate (None when unknown)."""
        rate = self.rate
        return self.left / rate if rate > 0 else (0.0 if self.left == 0 else None)

    def start(self, done: int, left: int) -> None:
        """Begin (or begin a new pass) from the checkpoint's count and a fresh NULL count."""
        self.done, self.left = done, left
        self._window.clear()
        self._window.append((self._clock(), done))
        if self._bar is not None and self._task is None:
            self._bar.start()
            self._task = self._bar.add_task(
                "backfill", total=done + left, completed=done, left="", rate="", eta="", state=""
            )
        self._publish("running")

    def add(self, rows: int) -> None:
        """A batch committed ``rows`` rows."""
        self.done += rows
        self.left = max(0, self.left - rows)
        now = self._clock()
        self._window.append((now, self.done))
        while len(self._window) > 2 and now - self._window[0][0] > _RATE_WINDOW_S:
            self._window.popleft()
        self.metrics.batches.inc()
        self._publish("running")

    def paused(self, why: str) -> None:
        """The gate holds the worker."""
        self._window.clear()
        self._window.append((self._clock(), self.done))  # the pause is not part of the rate
        self._publish(f"paused: {why}", paused=True)

    def finish(self, outcome: Outcome) -> None:
        """The run ended."""
        if outcome == "complete":
            self.left = 0
            self.metrics.complete.set(1)
        self._publish(outcome)
        self.close()

    def close(self) -> None:
        """Stop drawing the bar (idempotent)."""
        if self._bar is not None:
            self._bar.stop()

    def _publish(self, state: str, *, paused: bool = False) -> None:
        m = self.metrics
        m.rows_done.set(self.done)
        m.rows_left.set(self.left)
        m.rate.set(self.rate)
        eta = self.eta
        m.eta.set(-1 if eta is None else eta)
        m.paused.set(1 if paused else 0)
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task,
                total=self.done + self.left,
                completed=self.done,
                left=f"{self.left:,}",
                rate=f"{self.rate:,.0f} rows/s",
                eta="?" if eta is None else _duration(eta),
                state=state,
            )


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ---- the lock ------------------------------------------------------------------------------------


@contextlib.contextmanager
def backfill_lock(db: LedgerDatabase, wait_s: float = 0.0) -> Iterator[None]:
    """Hold this database's backfill lock; `BackfillBusy` if it stays taken for ``wait_s``."""
    # The OS (flock) or the server (a session advisory lock) drops it when the holder dies.
    deadline = time.monotonic() + wait_s
    if db.dialect == "sqlite":
        assert db.path is not None
        path = db.path.with_name(db.path.name + ".fx-backfill.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise BackfillBusy(f"another backfill holds {path}") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)
        return
    key = db.schema or ""
    with db.engine.connect() as conn:
        while True:
            got = conn.execute(
                select(func.pg_try_advisory_lock(_LOCK_CLASS, func.hashtext(key)))
            ).scalar()
            conn.commit()  # the session lock outlives the transaction; don't idle inside one
            if got:
                break
            if time.monotonic() >= deadline:
                raise BackfillBusy(f"another backfill holds the advisory lock of schema {key!r}")
            time.sleep(0.05)
        try:
            yield
        finally:
            with contextlib.suppress(DBAPIError):
                conn.execute(select(func.pg_advisory_unlock(_LOCK_CLASS, func.hashtext(key))))
                conn.commit()


# ---- SQL ---------------------------------------------------------------------------------------


class _Sql:
    """The backfill's statements for one database (raw SQL: per-dialect JSON functions)."""

    def __init__(self, db: LedgerDatabase) -> None:
        self.db = db
        table = qualified_name(db.engine.dialect, db.schema, PAYMENTS_TABLE)
        sqlite = db.dialect == "sqlite"

        def ph(name: str) -> str:
            return f":{name}" if sqlite else f"%({name})s"

        self.ph = ph
        self.table = table
        self.snapshot = _SQLITE_SNAPSHOT if sqlite else _PG_SNAPSHOT
        self.from_backfill = _SQLITE_FROM_BACKFILL if sqlite else _PG_FROM_BACKFILL

    def next_bound(self, conn: Connection, cursor: str | None, n: int) -> str | None:
        """The last key of the next page of ``n`` keys after ``cursor`` (None: no more keys)."""
        where = f"WHERE payment_id > {self.ph('cursor')} " if cursor is not None else ""
        sql = (
            f"SELECT max(payment_id) FROM (SELECT payment_id FROM {self.table} {where}"
            f"ORDER BY payment_id LIMIT {self.ph('n')}) AS page"
        )
        value = conn.exec_driver_sql(sql, {"cursor": cursor, "n": n}).scalar()
        return None if value is None else str(value)

    def range_update(
        self, conn: Connection, set_sql: str, condition: str, lo: str | None, hi: str
    ) -> int:
        """UPDATE the rows of (lo, hi] that match ``condition``; how many changed."""
        lower = f"payment_id > {self.ph('lo')} AND " if lo is not None else ""
        sql = (
            f"UPDATE {self.table} SET fx_rate_snapshot = {set_sql}"
            f" WHERE {lower}payment_id <= {self.ph('hi')} AND {condition}"
        )
        return int(conn.exec_driver_sql(sql, {"lo": lo, "hi": hi}).rowcount)

    def any_null(self, conn: Connection) -> bool:
        """Whether some row still lacks the snapshot (stops at the first)."""
        sql = f"SELECT 1 FROM {self.table} WHERE fx_rate_snapshot IS NULL LIMIT 1"
        return conn.exec_driver_sql(sql).first() is not None

    def count_null(self, conn: Connection) -> int:
        """How many rows lack the snapshot (a full scan)."""
        sql = f"SELECT count(*) FROM {self.table} WHERE fx_rate_snapshot IS NULL"
        return int(conn.exec_driver_sql(sql).scalar_one())


def nulls_remain(db: LedgerDatabase, conn: Connection) -> bool:
    """Whether some row of payment_transactions lacks fx_rate_snapshot (stops at the first)."""
    return _Sql(db).any_null(conn)


def count_nulls(db: LedgerDatabase) -> int:
    """Rows of payment_transactions without fx_rate_snapshot (a full scan)."""
    with db.engine.connect() as conn:
        return _Sql(db).count_null(conn)


def read_checkpoint(conn: Connection) -> Checkpoint | None:
    """The job's checkpoint, or None if the backfill never started."""
    row = conn.execute(select(fx_backfill).where(fx_backfill.c.job == JOB)).first()
    if row is None:
        return None
    return Checkpoint(
        pass_no=int(row.pass_no),
        cursor=row.cursor,
        batches=int(row.batches),
        rows_done=int(row.rows_done),
        started_at=row.started_at,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
    )


# ---- the worker --------------------------------------------------------------------------------


class BackfillWorker:
    """Runs the backfill of one database until complete, stopped, or an error."""

    def __init__(
        self,
        db: LedgerDatabase,
        *,
        settings: BackfillSettings | None = None,
        gate: Gate | None = None,
        clock: Callable[[], datetime] | None = None,
        stop: threading.Event | None = None,
        progress: BackfillProgress | None = None,
        on_batch: Callable[[BatchDone], None] | None = None,
        actor: str = "backfill",
    ) -> None:
        """``gate`` None means `AlwaysOn`; ``stop`` ends the run after the current batch."""
        self.db = db
        self.settings = settings or BackfillSettings()
        self.gate: Gate = gate or AlwaysOn()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.stop = stop or threading.Event()
        self.progress = progress or BackfillProgress()
        self.on_batch = on_batch
        self.actor = actor
        self._sql = _Sql(db)
        self._checkpoint: Checkpoint | None = None

    @property
    def checkpoint(self) -> Checkpoint | None:
        """The last checkpoint this worker committed or read."""
        return self._checkpoint

    def run(self) -> Outcome:
        """Backfill until no row lacks the snapshot ("complete") or `stop` is set ("stopped")."""
        try:
            with backfill_lock(self.db, self.settings.lock_wait_s):
                outcome = self._run_locked()
        except BaseException:
            self.progress.close()
            raise
        self.progress.finish(outcome)
        return outcome

    def _run_locked(self) -> Outcome:
        with self.db.engine.connect() as conn:
            phase = detect_phase(conn, self.db.schema)
            has_tables = table_exists(conn, self.db.schema, fx_backfill.name)
        if phase == "legacy" or not has_tables:
            raise BackfillError("fx_rate_snapshot does not exist yet: run `migrate expand` first")
        if phase == "contracted":
            return "complete"  # NOT NULL: nothing can be missing
        checkpoint = self._load_or_start()
        if checkpoint.completed_at is not None:
            with self.db.engine.connect() as conn:
                if not self._sql.any_null(conn):
                    self.progress.start(checkpoint.rows_done, 0)
                    return "complete"
            # Rows without the snapshot appeared after completion (a router older than the
            # expand deploy is still writing): reopen, and the guard's 72 h restart later.
            checkpoint = self._new_pass(checkpoint, reopened=True)
        self.progress.start(checkpoint.rows_done, count_nulls(self.db))
        errors = 0
        while not self.stop.is_set():
            if not self.gate.enabled():
                self.progress.paused(self.gate.describe())
                self.gate.wait(0.5)
                continue
            try:
                batch = self._batch()
                if batch is None:
                    if self._finish_pass():
                        return "complete"
                    self.progress.start(self._current().rows_done, count_nulls(self.db))
                    continue
            except DBAPIError as exc:
                # A lost connection or a lock timeout: whether the last commit landed is known
                # only to the database, so re-read the checkpoint before going on.
                errors += 1
                if errors > _MAX_CONSECUTIVE_ERRORS:
                    raise
                log.warning("backfill batch failed (%s); re-reading the checkpoint", exc)
                self.stop.wait(min(5.0, 0.1 * 2**errors))
                self._checkpoint = self._load_or_start()
                continue
            errors = 0
            self.progress.add(batch.rows)
            if self.on_batch is not None:
                self.on_batch(batch)
            if self.settings.sleep_s:
                self.stop.wait(self.settings.sleep_s)
        return "stopped"

    def _current(self) -> Checkpoint:
        assert self._checkpoint is not None
        return self._checkpoint

    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        return _write(self.db)

    def _load_or_start(self) -> Checkpoint:
        now = self.clock()
        with self._write() as conn:
            checkpoint = read_checkpoint(conn)
            if checkpoint is None:
                conn.execute(
                    insert(fx_backfill).values(
                        job=JOB,
                        pass_no=1,
                        cursor=None,
                        batches=0,
                        rows_done=0,
                        started_at=now,
                        updated_at=now,
                        completed_at=None,
                    )
                )
                journal(
                    conn,
                    at=now,
                    action="backfill",
                    revision=REVISION,
                    actor=self.actor,
                    detail={"event": "started", "batch_size": self.settings.batch_size},
                )
                checkpoint = Checkpoint(1, None, 0, 0, now, now, None)
        self._checkpoint = checkpoint
        return checkpoint

    def _batch(self) -> BatchDone | None:
        """Fill the next page; None at the end of the pass."""
        ck = self._current()
        started = time.perf_counter()
        # The page's bound is read before the write transaction, so the SQLite write lock is
        # held only for the UPDATE and the checkpoint. Keys inserted in (cursor, last] after
        # this read are covered anyway: the UPDATE is by range.
        with self.db.engine.connect() as conn:
            last = self._sql.next_bound(conn, ck.cursor, self.settings.batch_size)
        if last is None:
            return None
        now = self.clock()
        seq = ck.batches + 1
        with _write(self.db, relaxed=True) as conn:
            rows = self._sql.range_update(
                conn, self._sql.snapshot, "fx_rate_snapshot IS NULL", ck.cursor, last
            )
            moved = conn.execute(
                update(fx_backfill)
                .where(fx_backfill.c.job == JOB, fx_backfill.c.batches == ck.batches)
                .values(cursor=last, batches=seq, rows_done=ck.rows_done + rows, updated_at=now)
            )
            if moved.rowcount != 1:  # rolls the batch back with the transaction
                raise BackfillError("the checkpoint moved under this worker: is another running?")
            conn.execute(
                insert(fx_backfill_batches).values(
                    job=JOB,
                    seq=seq,
                    pass_no=ck.pass_no,
                    after_key=ck.cursor,
                    last_key=last,
                    rows=rows,
                    at=now,
                )
            )
        self._checkpoint = replace(
            ck, cursor=last, batches=seq, rows_done=ck.rows_done + rows, updated_at=now
        )
        return BatchDone(seq, ck.pass_no, ck.cursor, last, rows, time.perf_counter() - started)

    def _finish_pass(self) -> bool:
        """At the end of a pass: complete if no NULL is left, else start another pass."""
        ck = self._current()
        with self.db.engine.connect() as conn:
            left_behind = self._sql.any_null(conn)
        if left_behind:
            self._new_pass(ck, reopened=False)
            return False
        now = self.clock()
        with self._write() as conn:
            conn.execute(
                update(fx_backfill)
                .where(fx_backfill.c.job == JOB, fx_backfill.c.batches == ck.batches)
                .values(completed_at=now, updated_at=now)
            )
            journal(
                conn,
                at=now,
                action="backfill",
                revision=REVISION,
                actor=self.actor,
                detail={
                    "event": "complete",
                    "passes": ck.pass_no,
                    "batches": ck.batches,
                    "rows": ck.rows_done,
                },
            )
        self._checkpoint = replace(ck, completed_at=now, updated_at=now)
        log.info("backfill complete: %d rows in %d batches", ck.rows_done, ck.batches)
        return True

    def _new_pass(self, ck: Checkpoint, *, reopened: bool) -> Checkpoint:
        if ck.pass_no >= self.settings.max_passes:
            raise BackfillError(
                f"rows without fx_rate_snapshot keep appearing after {ck.pass_no} passes: some "
                "router runs code older than the expand deploy (it does not dual-write)"
            )
        now = self.clock()
        with self._write() as conn:
            conn.execute(
                update(fx_backfill)
                .where(fx_backfill.c.job == JOB, fx_backfill.c.batches == ck.batches)
                .values(pass_no=ck.pass_no + 1, cursor=None, completed_at=None, updated_at=now)
            )
            journal(
                conn,
                at=now,
                action="backfill",
                revision=REVISION,
                actor=self.actor,
                detail={
                    "event": "reopened" if reopened else "new pass",
                    "pass": ck.pass_no + 1,
                    "why": "rows without fx_rate_snapshot behind the cursor",
                },
            )
        log.warning("backfill: NULL rows behind the cursor; starting pass %d", ck.pass_no + 1)
        self._checkpoint = replace(
            ck, pass_no=ck.pass_no + 1, cursor=None, completed_at=None, updated_at=now
        )
        return self._checkpoint


@contextlib.contextmanager
def _write(db: LedgerDatabase, *, relaxed: bool = False) -> Iterator[Connection]:
    """A write transaction (BEGIN IMMEDIATE on SQLite) that commits on normal exit.

    ``relaxed``: the commit does not wait for the disk (SQLite ``synchronous = NORMAL``, PG
    ``synchronous_commit = off``). Safe for a batch: it and its checkpoint are one transaction,
    so a power loss or server crash can only lose the latest batches together with their
    checkpoint (resumed from the one before), and a killed worker loses nothing committed.
    The payment writers keep their own full durability; they no longer wait behind the
    backfill's fsync (SQLite's write lock is held until the commit returns).
    """
    with db.engine.connect() as conn:
        raw: Any = None
        if relaxed and db.dialect == "sqlite":
            raw = conn.connection.driver_connection
            raw.execute("PRAGMA synchronous = NORMAL")  # per connection, outside a transaction
            raw.execute(f"PRAGMA cache_size = {_SQLITE_CACHE}")
        try:
            conn.execution_options(**write_options())
            with conn.begin():
                if relaxed and db.dialect == "postgresql":
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                yield conn
        finally:
            if raw is not None:
                raw.execute("PRAGMA synchronous = FULL")  # the pooled connection's default


def clear_backfill(
    db: LedgerDatabase,
    *,
    settings: BackfillSettings | None = None,
    clock: Callable[[], datetime] | None = None,
    actor: str = "rollback",
    stop: threading.Event | None = None,
) -> int:
    """Roll the backfill back: NULL what it wrote, drop its checkpoint; returns rows cleared.

    Throttled like the backfill and idempotent (re-run it after an interruption). The caller
    holds `backfill_lock` and has checked the phase (not contracted).
    """
    settings = settings or BackfillSettings()
    clock = clock or (lambda: datetime.now(UTC))
    stop = stop or threading.Event()
    sql = _Sql(db)
    cursor: str | None = None
    cleared = 0
    while not stop.is_set():
        with db.engine.connect() as conn:
            last = sql.next_bound(conn, cursor, settings.batch_size)
        if last is None:
            break
        with _write(db) as conn:
            cleared += sql.range_update(conn, "NULL", sql.from_backfill, cursor, last)
        cursor = last
        if settings.sleep_s:
            stop.wait(settings.sleep_s)
    if stop.is_set():
        raise BackfillError(f"rollback interrupted after clearing {cleared} rows; run it again")
    now = clock()
    with _write(db) as conn:
        conn.execute(delete(fx_backfill_batches).where(fx_backfill_batches.c.job == JOB))
        conn.execute(delete(fx_backfill).where(fx_backfill.c.job == JOB))
        journal(
            conn,
            at=now,
            action="downgrade",
            revision=REVISION,
            actor=actor,
            detail={"event": "backfill rolled back", "rows_cleared": cleared},
        )
    return cleared
