"""The backfill on real SQLite and PostgreSQL: exactly once per row, resumable after SIGKILL,
pausable, concurrent with payments; "updated once" is counted by a trigger, not trusted."""

from __future__ import annotations

import io
import multiprocessing
import os
import random
import signal
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from rich.console import Console
from sqlalchemy import insert, select, text

from router.backfill import (
    AlwaysOn,
    BackfillBusy,
    BackfillError,
    BackfillMetrics,
    BackfillProgress,
    BackfillSettings,
    BackfillWorker,
    BatchDone,
    backfill_lock,
    count_nulls,
    read_checkpoint,
)
from router.ledger import (
    FxQuoteRecord,
    Ledger,
    LedgerDatabase,
    _legacy_values,
    canonical_json,
    fx_snapshot,
)
from router.migrate import Migrator
from router.schema import fx_backfill_batches, payment_transactions
from tests.migrate.backfill_child import child_main
from tests.migrate.conftest import (
    FP,
    T0,
    assert_snapshots_match_legacy,
    install_update_counter,
    make_payment,
    old_payment,
    seed_legacy,
    snapshots,
    table,
)
from tests.migrate.legacy.ledger import Ledger as OldLedger


def batches(db: LedgerDatabase) -> list[Any]:
    """The batch log, in order."""
    with db.engine.connect() as conn:
        return list(conn.execute(select(fx_backfill_batches).order_by(fx_backfill_batches.c.seq)))


def assert_batches_tile_the_key_space(db: LedgerDatabase) -> None:
    """Batches 1..n, each pass a chain of adjacent ranges from the start: none skipped or redone."""
    log = batches(db)
    assert [b.seq for b in log] == list(range(1, len(log) + 1))
    previous: dict[int, str | None] = {}
    for b in log:
        assert b.after_key == previous.get(b.pass_no), (b.seq, b.after_key)
        assert b.after_key is None or b.after_key < b.last_key
        previous[b.pass_no] = b.last_key


# ---- the SQL snapshot is the ledger's snapshot -------------------------------------------------

_decimal = st.builds(
    lambda i, f: f"{i}.{f}" if f else str(i),
    st.integers(0, 10**6),
    st.text("0123456789", max_size=8),
).filter(lambda s: s.strip("0.") != "")
_quotes = st.builds(
    FxQuoteRecord,
    quote_id=st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40
    ),
    to_currency=st.sampled_from(["GBP", "USD", "JPY"]),
    rate=_decimal,
    markup=_decimal | st.just("0"),
    source=st.sampled_from(["live", "static"]),
    converted_amount_minor=st.integers(1, 2**63 - 1),
    as_of=st.none() | st.datetimes(timezones=st.just(__import__("datetime").UTC)),
)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(quotes=st.lists(st.none() | _quotes, min_size=1, max_size=40))
def test_backfill_sql_builds_the_ledgers_snapshot(db: LedgerDatabase, quotes: list[Any]) -> None:
    rng = random.Random(len(quotes))
    with db.engine.begin() as conn:
        conn.execute(text(f"DELETE FROM {table(db, 'idempotency_keys')}"))
        conn.execute(text(f"DELETE FROM {table(db)}"))
        if "fx_rate_snapshot" in str(
            conn.execute(text(f"SELECT * FROM {table(db)} LIMIT 0")).keys()
        ):
            conn.execute(text(f"DELETE FROM {table(db, 'ripcord_fx_backfill')}"))
            conn.execute(text(f"DELETE FROM {table(db, 'ripcord_fx_backfill_batches')}"))
    payments = [make_payment(rng, n, fx=q) for n, q in enumerate(quotes)]
    with db.engine.begin() as conn:
        conn.execute(insert(payment_transactions), [_legacy_values(p, T0) for p in payments])
    Migrator(db).expand()
    assert (
        BackfillWorker(db, settings=BackfillSettings(batch_size=16, sleep_s=0)).run() == "complete"
    )
    stored = snapshots(db)
    for p in payments:
        assert stored[p.payment_id] == fx_snapshot(p, "backfill")
    if db.dialect == "sqlite":  # byte for byte the ledger's canonical JSON
        with db.engine.connect() as conn:
            raw: dict[str, str] = dict(
                conn.execute(
                    text("SELECT payment_id, fx_rate_snapshot FROM payment_transactions")
                ).all()
            )
        assert all(
            raw[p.payment_id] == canonical_json(fx_snapshot(p, "backfill")) for p in payments
        )


# ---- batches, checkpoint, counter ------------------------------------------------------------


def test_each_row_is_updated_once_in_adjacent_batches(db: LedgerDatabase) -> None:
    payments = seed_legacy(db, 1000)
    Migrator(db).expand()
    install_update_counter(db)
    done: list[BatchDone] = []
    worker = BackfillWorker(
        db, settings=BackfillSettings(batch_size=64, sleep_s=0), on_batch=done.append
    )
    assert worker.run() == "complete"
    assert update_counts_all_one(db, {p.payment_id for p in payments})
    assert_batches_tile_the_key_space(db)
    assert [b.rows for b in done] == [b.rows for b in batches(db)]
    assert sum(b.rows for b in done) == 1000 and len(done) == 16
    ck = worker.checkpoint
    assert ck is not None and ck.rows_done == 1000 and ck.completed_at is not None
    assert assert_snapshots_match_legacy(db) == 1000
    assert BackfillWorker(db).run() == "complete"  # complete stays complete; nothing redone
    assert len(batches(db)) == 16


def update_counts_all_one(db: LedgerDatabase, expected: set[str]) -> bool:
    """Every expected row was updated exactly once, and no other row at all."""
    from tests.migrate.conftest import update_counts

    counts = update_counts(db)
    assert set(counts) == expected
    assert {n for n in counts.values()} == {1}
    return True


def test_stop_resumes_at_the_next_batch(db: LedgerDatabase) -> None:
    seed_legacy(db, 300)
    Migrator(db).expand()
    install_update_counter(db)
    stop = threading.Event()

    def stop_after_three(batch: BatchDone) -> None:
        if batch.seq == 3:
            stop.set()

    settings = BackfillSettings(batch_size=40, sleep_s=0)
    first = BackfillWorker(db, settings=settings, stop=stop, on_batch=stop_after_three)
    assert first.run() == "stopped"
    with db.engine.connect() as conn:
        ck = read_checkpoint(conn)
    assert ck is not None and ck.batches == 3 and ck.rows_done == 120 and ck.completed_at is None
    assert count_nulls(db) == 180
    resumed: list[BatchDone] = []
    assert BackfillWorker(db, settings=settings, on_batch=resumed.append).run() == "complete"
    assert resumed[0].seq == 4 and resumed[0].after_key == ck.cursor
    assert_batches_tile_the_key_space(db)
    from tests.migrate.conftest import update_counts

    assert set(update_counts(db).values()) == {1} and len(update_counts(db)) == 300


def test_sigkill_at_random_points_never_skips_or_redoes_a_batch(
    db: LedgerDatabase, db_url: str
) -> None:
    """Workers are real processes (from a forkserver, so they start fast) killed with SIGKILL."""
    rows = 6000
    payments = seed_legacy(db, rows)
    Migrator(db).expand()
    install_update_counter(db)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.migrate.backfill_child"])
    rng = random.Random(2024)
    kills = 0
    at_kill: list[int] = []  # committed batches when each kill landed
    while True:
        ready = context.Event()
        child = context.Process(target=child_main, args=(db_url, 150, 2.0, ready))
        child.start()
        assert ready.wait(30), "the worker did not start"
        if kills == 10:
            child.join(60)
            assert child.exitcode == 0
            break
        time.sleep(rng.uniform(0.0, 0.06))  # anywhere: between batches, mid-UPDATE, mid-commit
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(10)
        kills += 1
        with db.engine.connect() as conn:
            checkpoint = read_checkpoint(conn)
            at_kill.append(checkpoint.batches if checkpoint else 0)
        if child.exitcode == 0:
            break  # it finished before the kill landed
    assert kills >= 5
    with db.engine.connect() as conn:
        ck = read_checkpoint(conn)
    assert ck is not None
    assert len({n for n in at_kill if 0 < n < ck.batches}) >= 3, at_kill  # killed mid-way, often
    assert ck is not None and ck.completed_at is not None and ck.rows_done == rows
    assert count_nulls(db) == 0
    assert update_counts_all_one(db, {p.payment_id for p in payments})
    assert_batches_tile_the_key_space(db)
    assert sum(b.rows for b in batches(db)) == rows
    assert assert_snapshots_match_legacy(db) == rows


# ---- concurrent payments -----------------------------------------------------------------------


def test_payments_keep_flowing_through_expand_and_backfill(db: LedgerDatabase, db_url: str) -> None:
    """New code (dual write) writes throughout, old code during expand and the first batches."""
    seeded = seed_legacy(db, 2000)
    errors: list[BaseException] = []
    acked: dict[str, str] = {}  # payment_id -> writer
    stop_new, stop_old = threading.Event(), threading.Event()

    def writer(name: str, stop: threading.Event, old: bool) -> None:
        rng = random.Random(name)
        ledger: Any = OldLedger.open(db_url) if old else Ledger.open(db_url, phase_ttl=0.02)
        n = 0
        try:
            while not stop.is_set():
                p = make_payment(rng, n, prefix=name)
                record = old_payment(p) if old else p
                outcome = ledger.record_payment(record, FP, b"r")
                assert not outcome.replayed
                acked[p.payment_id] = name
                if n % 10 == 0:  # a client retry: replayed, never a second row
                    assert ledger.record_payment(record, FP, b"r").replayed
                n += 1
                time.sleep(0.001)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            ledger.close()

    threads = [
        threading.Thread(target=writer, args=("new", stop_new, False)),
        threading.Thread(target=writer, args=("old", stop_old, True)),
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)
    Migrator(db).expand()
    time.sleep(0.2)

    def on_batch(batch: BatchDone) -> None:
        if batch.seq == 5:
            # The last old router is gone (deploy N finished rolling out); a row it writes
            # after the final check would rightly leave the backfill incomplete.
            stop_old.set()
            threads[1].join(30)

    worker = BackfillWorker(
        db, settings=BackfillSettings(batch_size=200, sleep_s=0.002), on_batch=on_batch
    )
    assert worker.run() == "complete"
    time.sleep(0.2)  # new code keeps writing after the backfill
    stop_new.set()
    stop_old.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert {"new", "old"} == set(acked.values())
    with Ledger.open(db_url) as ledger:
        assert ledger.count_payments() == len(seeded) + len(acked)
        keys = [(p.merchant_id, p.idempotency_key) for p in seeded]
        counts = ledger.reconcile(keys)
        assert set(counts.values()) == {1}
    snaps = snapshots(db)
    assert set(snaps) == {p.payment_id for p in seeded} | set(acked)  # none lost, none extra
    nulls = {pid: acked.get(pid, "seed") for pid, s in snaps.items() if s is None}
    assert not nulls, (nulls, Migrator(db).status(journal_limit=10).journal, worker.checkpoint)
    assert assert_snapshots_match_legacy(db) == len(snaps)
    origins = {pid: s["origin"] for pid, s in snaps.items()}
    assert {origins[p.payment_id] for p in seeded} == {"backfill"}
    assert {origins[pid] for pid, who in acked.items() if who == "old"} == {"backfill"}
    assert "write" in {origins[pid] for pid, who in acked.items() if who == "new"}


def test_rows_written_behind_the_cursor_get_another_pass(db: LedgerDatabase, db_url: str) -> None:
    seed_legacy(db, 200)
    Migrator(db).expand()
    rng = random.Random(11)
    behind: list[str] = []

    with OldLedger.open(db_url) as old:

        def write_behind(batch: BatchDone) -> None:
            if batch.seq == 3 and batch.pass_no == 1:
                p = make_payment(rng, 1, prefix="late")
                p = type(p)(**{**p.__dict__, "payment_id": "0" + p.payment_id})  # before the cursor
                old.record_payment(old_payment(p), FP, b"r")
                behind.append(p.payment_id)

        worker = BackfillWorker(
            db, settings=BackfillSettings(batch_size=30, sleep_s=0), on_batch=write_behind
        )
        assert worker.run() == "complete"
    ck = worker.checkpoint
    assert ck is not None and ck.pass_no == 2 and ck.rows_done == 201
    assert snapshots(db)[behind[0]] is not None
    assert_batches_tile_the_key_space(db)
    events = [j["detail"].get("event") for j in Migrator(db).status(journal_limit=10).journal]
    assert events[-3:] == ["started", "new pass", "complete"]


def test_a_second_worker_is_refused_while_one_runs(db: LedgerDatabase) -> None:
    seed_legacy(db, 50)
    Migrator(db).expand()
    with backfill_lock(db):
        with pytest.raises(BackfillBusy):
            BackfillWorker(db, settings=BackfillSettings(lock_wait_s=0.1)).run()
        assert Migrator(db).status().worker_running is True
    assert Migrator(db).status().worker_running is False


def test_backfill_before_expand_is_refused(db: LedgerDatabase) -> None:
    with pytest.raises(BackfillError, match="expand"):
        BackfillWorker(db).run()


# ---- the gate ----------------------------------------------------------------------------------


class Switch:
    """A gate flipped by the test; remembers when it first said "off"."""

    def __init__(self) -> None:
        self.on = True
        self.first_off: float | None = None
        self.changed = threading.Event()

    def enabled(self) -> bool:
        if not self.on and self.first_off is None:
            self.first_off = time.perf_counter()
        return self.on

    def wait(self, timeout: float) -> None:
        self.changed.wait(timeout)
        self.changed.clear()

    def describe(self) -> str:
        return "switched off by the test"


def test_turning_the_gate_off_pauses_within_one_batch(db: LedgerDatabase) -> None:
    seed_legacy(db, 2000)
    Migrator(db).expand()
    switch = Switch()
    commits: list[tuple[float, BatchDone]] = []

    def on_batch(batch: BatchDone) -> None:
        commits.append((time.perf_counter(), batch))
        if batch.seq == 4:
            switch.on = False

    worker = BackfillWorker(
        db, settings=BackfillSettings(batch_size=50, sleep_s=0.002), gate=switch, on_batch=on_batch
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    time.sleep(0.4)
    assert switch.first_off is not None
    after_off = [b for t, b in commits if t > switch.first_off]
    assert after_off == []  # the check comes before each batch: none started once it was off
    assert len(commits) == 4 and worker.progress.metrics.paused._value.get() == 1
    switch.on = True
    switch.changed.set()
    thread.join(30)
    assert not thread.is_alive() and count_nulls(db) == 0


# ---- progress and metrics ----------------------------------------------------------------------


def test_progress_bar_and_metrics_report_done_left_rate_and_eta(db: LedgerDatabase) -> None:
    seed_legacy(db, 500)
    Migrator(db).expand()
    out = io.StringIO()
    metrics = BackfillMetrics()
    progress = BackfillProgress(metrics, bar=True, console=Console(file=out, width=160))
    seen: list[tuple[int, int, float]] = []

    def on_batch(_batch: BatchDone) -> None:
        seen.append((progress.done, progress.left, progress.rate))

    worker = BackfillWorker(
        db,
        settings=BackfillSettings(batch_size=100, sleep_s=0.01),
        progress=progress,
        on_batch=on_batch,
    )
    assert worker.run() == "complete"
    assert [(d, left) for d, left, _ in seen] == [(100 * i, 500 - 100 * i) for i in range(1, 6)]
    assert all(rate > 0 for _, _, rate in seen[1:])
    exposition = generate_latest(metrics.registry).decode()
    for line in (
        "ripcord_backfill_rows_done 500.0",
        "ripcord_backfill_rows_left 0.0",
        "ripcord_backfill_batches_total 5.0",
        "ripcord_backfill_complete 1.0",
        "ripcord_backfill_paused 0.0",
    ):
        assert line in exposition
    assert (
        "ripcord_backfill_rows_per_second" in exposition
        and "ripcord_backfill_eta_seconds" in exposition
    )
    rendered = out.getvalue()
    assert (
        "fx_rate_snapshot backfill" in rendered and "500/500" in rendered and "complete" in rendered
    )


def test_always_on_gate_is_on() -> None:
    gate = AlwaysOn()
    assert gate.enabled() and gate.describe() == "always on"
