"""Expand, contract and rollback on real SQLite and PostgreSQL; old and new router code alongside.

"Old code" is the frozen copy of the legacy ledger in tests/migrate/legacy (deploy N-1), not a
mode of the new one.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from router.backfill import BackfillSettings, BackfillWorker
from router.ledger import Ledger, LedgerDatabase, fx_snapshot, open_database
from router.migrate import CHECK_NAME, DdlPolicy, MigrationError, Migrator
from router.schema import detect_phase, snapshot_column_state
from tests.conftest import PG_URL
from tests.migrate.conftest import (
    FP,
    assert_snapshots_match_legacy,
    fx_fields,
    make_payment,
    old_payment,
    seed_legacy,
    snapshots,
    table,
)
from tests.migrate.legacy.ledger import Ledger as OldLedger


def migrate_all(db: LedgerDatabase) -> None:
    """Expand and backfill to completion."""
    Migrator(db).expand()
    assert (
        BackfillWorker(db, settings=BackfillSettings(batch_size=50, sleep_s=0)).run() == "complete"
    )


def columns(db: LedgerDatabase) -> dict[str, bool]:
    """payment_transactions column -> nullable."""
    found = inspect(db.engine).get_columns("payment_transactions", db.schema)
    return {c["name"]: bool(c["nullable"]) for c in found}


# ---- expand ------------------------------------------------------------------------------------


def test_expand_adds_a_nullable_column_and_is_idempotent(db: LedgerDatabase) -> None:
    seed_legacy(db, 30)
    migrator = Migrator(db)
    assert migrator.phase() == "legacy"
    [step] = migrator.expand()
    assert not step.skipped and step.attempts == 1
    assert columns(db)["fx_rate_snapshot"] is True
    assert migrator.phase() == "expanded"
    assert migrator.expand()[0].skipped
    assert set(snapshots(db).values()) == {None}  # no default: nothing was written to old rows
    status = migrator.status(count=True)
    assert status.head_revision == "0001_fx_snapshot_expand" and status.nulls == 30
    assert status.summary == "expanded, backfill not started"


def test_expand_refuses_a_column_it_did_not_make(db: LedgerDatabase) -> None:
    with db.engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {table(db)} ADD COLUMN fx_rate_snapshot TEXT NULL"))
    with pytest.raises(MigrationError, match="not made by this migration"):
        Migrator(db).expand()


def test_old_code_works_on_legacy_expanded_and_backfilled_schemas(
    db: LedgerDatabase, db_url: str
) -> None:
    rng = random.Random(5)
    with OldLedger.open(db_url) as old, Ledger.open(db_url, phase_ttl=0) as new:
        written: dict[str, object] = {}

        def old_round(tag: str) -> None:
            for n in range(4):
                p = make_payment(rng, n, prefix=f"old-{tag}")
                old.record_payment(old_payment(p), FP, b"old")
                assert old.record_payment(old_payment(p), FP, b"again").replayed
                written[p.payment_id] = p.fx

        def new_round(tag: str) -> None:
            for n in range(4):
                p = make_payment(rng, n, prefix=f"new-{tag}")
                new.record_payment(p, FP, b"new")
                written[p.payment_id] = p.fx

        old_round("legacy")
        new_round("legacy")
        Migrator(db).expand()
        assert new.schema_phase() == "expanded"
        old_round("expanded")
        new_round("expanded")
        BackfillWorker(db, settings=BackfillSettings(batch_size=5, sleep_s=0)).run()
        old_round("backfilled")
        # Old code reads every row, including the ones new code dual-wrote, as it always did;
        # new code reads the same values.
        for payment_id, fx in written.items():
            old_row, new_row = old.get_payment(payment_id), new.get_payment(payment_id)
            assert old_row is not None and new_row is not None
            assert fx_fields(old_row.payment.fx) == fx_fields(new_row.payment.fx) == fx_fields(fx)
        assert old.count_payments() == new.count_payments() == len(written)
    # Old code never wrote the column: the rows it wrote after the backfill wait for a pass.
    nulls = [pid for pid, snap in snapshots(db).items() if snap is None]
    assert len(nulls) == 4


# ---- phase detection in the router's ledger ----------------------------------------------------


def test_ledger_detects_the_phase_at_start_and_on_change(db: LedgerDatabase, db_url: str) -> None:
    rng = random.Random(6)
    with Ledger.open(db_url, phase_ttl=1.0) as ledger:
        opened = time.monotonic()
        assert ledger.schema_phase() == "legacy"
        Migrator(db).expand()
        early = make_payment(rng, 1)
        ledger.record_payment(early, FP, b"r")  # within the TTL: still legacy
        assert time.monotonic() - opened < 1.0, "too slow to test the TTL"
        time.sleep(max(0.0, opened + 1.05 - time.monotonic()))
        assert ledger.schema_phase() == "expanded"
        late = make_payment(rng, 2)
        ledger.record_payment(late, FP, b"r")
    with Ledger.open(db_url) as reopened:
        assert reopened.schema_phase() == "expanded"  # detected at start
    snaps = snapshots(db)
    assert snaps[early.payment_id] is None
    assert snaps[late.payment_id] == fx_snapshot(late, "write")


def test_ledger_never_writes_a_column_that_is_gone(db: LedgerDatabase, db_url: str) -> None:
    rng = random.Random(7)
    with Ledger.open(db_url, phase_ttl=3600) as ledger:
        Migrator(db).expand()
        ledger.refresh_phase()
        ledger.record_payment(make_payment(rng, 1), FP, b"r")
        # Rolled back under a router that will not re-check for an hour: its INSERT names a
        # dropped column, fails, and is retried once in the phase the table is in now.
        Migrator(db).rollback_expand(grace_s=0)
        assert "fx_rate_snapshot" not in columns(db)
        p = make_payment(rng, 2)
        assert not ledger.record_payment(p, FP, b"r").replayed
        assert ledger.schema_phase() == "legacy"
        stored = ledger.get_payment(p.payment_id)
        assert stored is not None and stored.payment == p
        assert ledger.count_payments() == 2


def test_ledger_learns_of_a_contract_from_the_failed_insert(
    db: LedgerDatabase, db_url: str
) -> None:
    rng = random.Random(8)
    with Ledger.open(db_url, phase_ttl=3600) as ledger:
        assert ledger.schema_phase() == "legacy"  # stale on purpose: it never re-checks
        migrate_all(db)
        Migrator(db).contract()
        p = make_payment(rng, 1)
        assert not ledger.record_payment(p, FP, b"r").replayed  # NOT NULL -> re-detect, retry
        assert ledger.schema_phase() == "contracted"
        assert snapshots(db)[p.payment_id] == fx_snapshot(p, "write")


# ---- contract ----------------------------------------------------------------------------------


def test_contract_switches_dual_write_off_and_old_and_new_rows_read_the_same(
    db: LedgerDatabase, db_url: str
) -> None:
    rng = random.Random(9)
    old_rows = seed_legacy(db, 40)
    with Ledger.open(db_url, phase_ttl=0) as ledger:
        Migrator(db).expand()
        dual = [make_payment(rng, n, prefix="dual") for n in range(10)]
        for p in dual:
            ledger.record_payment(p, FP, b"r")
        BackfillWorker(db, settings=BackfillSettings(batch_size=7, sleep_s=0)).run()
        assert assert_snapshots_match_legacy(db) == 50
        before = {p.payment_id: ledger.get_payment(p.payment_id) for p in old_rows + dual}
        reports = Migrator(db).contract()
        assert ledger.schema_phase() == "contracted"
        assert columns(db)["fx_rate_snapshot"] is False
        after = {p.payment_id: ledger.get_payment(p.payment_id) for p in old_rows + dual}
        assert after == before  # read from the snapshot now, from the legacy columns before
        # New rows: the snapshot only; they read exactly like old rows with the same content.
        twins = []
        for n, old in enumerate(old_rows[:10]):
            twin = dataclasses.replace(old, payment_id=f"twin-{n}", idempotency_key=f"twin-{n}")
            ledger.record_payment(twin, FP, b"r")
            twins.append((old, twin))
        with db.engine.connect() as conn:
            legacy_fx = conn.execute(
                text(f"SELECT count(*) FROM {table(db)} WHERE fx_quote_id IS NOT NULL")
            ).scalar_one()
        for old, twin in twins:
            a, b = ledger.get_payment(old.payment_id), ledger.get_payment(twin.payment_id)
            assert a is not None and b is not None
            assert a.payment == old and b.payment == twin
            assert a.payment.fx == b.payment.fx
        # Dual write is off: no new row carries the legacy fx columns.
        assert legacy_fx == sum(1 for p in old_rows + dual if p.fx is not None)
    if db.dialect == "postgresql":
        assert [r.name for r in reports] == [
            "contract 1/4: ADD CHECK (fx_rate_snapshot IS NOT NULL) NOT VALID",
            "contract 2/4: VALIDATE CONSTRAINT (scan under SHARE UPDATE EXCLUSIVE)",
            "contract 3/4: SET NOT NULL (no scan: the check proves it)",
            "contract 4/4: DROP the now redundant check",
        ]
        assert Migrator(db)._check_state() is None  # the check is gone
    assert Migrator(db).status().summary.startswith("contracted")


def test_old_code_cannot_write_after_the_contract(db: LedgerDatabase, db_url: str) -> None:
    migrate_all(db)
    Migrator(db).contract()
    with OldLedger.open(db_url) as old, pytest.raises(IntegrityError):
        old.record_payment(old_payment(make_payment(random.Random(1), 1)), FP, b"r")


def test_contract_refuses_while_rows_lack_the_snapshot(db: LedgerDatabase) -> None:
    seed_legacy(db, 20)
    Migrator(db).expand()
    with pytest.raises(MigrationError, match="rows without fx_rate_snapshot remain"):
        Migrator(db).contract()
    assert Migrator(db).phase() == "expanded"
    Migrator(db).rollback_expand(grace_s=0)
    with pytest.raises(MigrationError, match="expand"):
        Migrator(db).contract()


def test_sqlite_rebuild_keeps_foreign_keys_indexes_and_triggers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"

    Ledger.open(url).close()
    db = open_database(url)
    payments = seed_legacy(db, 25)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE audit_trail (payment_id TEXT)")
        conn.exec_driver_sql(
            "CREATE TRIGGER pt_audit AFTER INSERT ON payment_transactions BEGIN"
            " INSERT INTO audit_trail VALUES (NEW.payment_id); END"
        )
        conn.exec_driver_sql(
            "CREATE VIEW approved AS SELECT payment_id FROM payment_transactions WHERE status = 'APPROVED'"
        )
    migrate_all(db)
    Migrator(db).contract()
    with db.engine.connect() as conn:
        objects = {
            (r[0], r[1])
            for r in conn.exec_driver_sql(
                "SELECT type, name FROM sqlite_master WHERE type != 'table'"
            )
        }
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        assert conn.exec_driver_sql("SELECT count(*) FROM idempotency_keys").scalar() == 25
        assert conn.exec_driver_sql("SELECT count(*) FROM approved").scalar() == sum(
            p.status == "APPROVED" for p in payments
        )
    assert {
        ("index", "payment_transactions_merchant_key"),
        ("trigger", "pt_audit"),
        ("view", "approved"),
    } <= objects
    with Ledger.open(url) as ledger:
        p = make_payment(random.Random(3), 99)
        ledger.record_payment(p, FP, b"r")
    with db.engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM audit_trail").scalar() == 1
        # The idempotency record's foreign key still points at the rebuilt table.
        with pytest.raises(IntegrityError):
            conn.exec_driver_sql(
                "INSERT INTO idempotency_keys VALUES ('m', 'k', ?, 'nope', x'00', '2026-01-01')",
                (FP,),
            )
    db.engine.dispose()


# ---- PostgreSQL: lock timeout and retry ------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"])
def test_pg_ddl_waits_briefly_retries_and_never_blocks_traffic(db: LedgerDatabase) -> None:
    """A long transaction holds the table: each try gives up after lock_timeout, traffic flows."""
    seed_legacy(db, 10)
    holder = psycopg.connect(PG_URL, connect_timeout=5)
    holder.execute(f"LOCK TABLE {table(db)} IN ACCESS SHARE MODE")  # a long-running reader
    retries: list[int] = []
    migrator = Migrator(
        db,
        policy=DdlPolicy(lock_timeout_ms=50, backoff_initial_s=0.02, backoff_max_s=0.1),
        on_retry=lambda step, attempt, exc: retries.append(attempt),
    )
    done = threading.Event()

    def expand() -> None:
        migrator.expand()
        done.set()

    thread = threading.Thread(target=expand)
    thread.start()
    reader_waits = []
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as reader:
        for _ in range(10):  # a plain SELECT waits at most one lock_timeout behind the ALTER
            started = time.perf_counter()
            reader.execute(f"SELECT count(*) FROM {table(db)}").fetchone()
            reader_waits.append(time.perf_counter() - started)
            time.sleep(0.03)
    assert not done.is_set() and len(retries) >= 2
    holder.rollback()
    holder.close()
    thread.join(10)
    assert done.is_set() and migrator.phase() == "expanded"
    assert max(reader_waits) < 0.5, reader_waits


@pytest.mark.parametrize("backend", ["postgresql"])
def test_pg_contract_retries_each_step_and_gives_up_at_the_deadline(db: LedgerDatabase) -> None:
    migrate_all(db)
    holder = psycopg.connect(PG_URL, connect_timeout=5)
    holder.execute(f"LOCK TABLE {table(db)} IN ACCESS SHARE MODE")
    impatient = Migrator(db, policy=DdlPolicy(lock_timeout_ms=30, deadline_s=0.3))
    with pytest.raises(MigrationError, match="no lock within"):
        impatient.contract()
    assert impatient._check_state() is None and impatient.phase() == "expanded"
    retries: list[str] = []
    patient = Migrator(
        db,
        policy=DdlPolicy(lock_timeout_ms=30, backoff_initial_s=0.02, backoff_max_s=0.05),
        on_retry=lambda step, attempt, exc: retries.append(step),
    )
    threading.Timer(0.3, holder.close).start()  # the long transaction ends (rolled back)
    patient.contract()
    assert retries and all(step.startswith("contract 1/4") for step in retries)
    assert patient.phase() == "contracted"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_pg_contract_resumes_after_an_interruption(db: LedgerDatabase) -> None:
    migrate_all(db)
    with db.engine.begin() as conn:  # as if the contract died after its first step
        conn.exec_driver_sql(
            f"ALTER TABLE {table(db)} ADD CONSTRAINT {CHECK_NAME}"
            " CHECK (fx_rate_snapshot IS NOT NULL) NOT VALID"
        )
    assert Migrator(db)._check_state() == "NOT VALID"
    assert "contract in progress" in Migrator(db).status().summary
    reports = Migrator(db).contract()
    assert [r.skipped for r in reports] == [True, False, False, False]
    with db.engine.connect() as conn:
        assert snapshot_column_state(conn, db.schema) == "not-null"


# ---- rollback ----------------------------------------------------------------------------------


def test_rollback_backfill_clears_only_what_the_backfill_wrote(
    db: LedgerDatabase, db_url: str
) -> None:
    seed_legacy(db, 30)
    rng = random.Random(10)
    with Ledger.open(db_url, phase_ttl=0) as ledger:
        Migrator(db).expand()
        dual = [make_payment(rng, n, prefix="dual") for n in range(5)]
        for p in dual:
            ledger.record_payment(p, FP, b"r")
        migrate_all(db)
        assert Migrator(db).rollback_backfill(BackfillSettings(batch_size=8, sleep_s=0)) == 30
        snaps = snapshots(db)
        assert {pid for pid, s in snaps.items() if s is not None} == {p.payment_id for p in dual}
        status = Migrator(db).status(count=True)
        assert status.checkpoint is None and status.nulls == 30
        assert status.journal[-1]["detail"]["event"] == "backfill rolled back"
        for p in dual:  # unaffected, and still read the same
            stored = ledger.get_payment(p.payment_id)
            assert stored is not None and stored.payment == p
        assert BackfillWorker(db).run() == "complete"  # and it can run again from scratch
        assert assert_snapshots_match_legacy(db) == 35


def test_rollback_expand_returns_to_legacy_and_expand_again_works(
    db: LedgerDatabase, db_url: str
) -> None:
    payments = seed_legacy(db, 12)
    migrate_all(db)
    steps = Migrator(db).rollback_expand(grace_s=0)
    assert [s.name for s in steps] == [
        "rollback expand 1/2: head -> legacy",
        "rollback expand 2/2: DROP COLUMN fx_rate_snapshot",
    ]
    assert "fx_rate_snapshot" not in columns(db)
    status = Migrator(db).status()
    assert status.phase == "legacy" and status.checkpoint is None
    with OldLedger.open(db_url) as old, Ledger.open(db_url) as new:
        assert new.schema_phase() == "legacy"
        for p in payments:
            a, b = old.get_payment(p.payment_id), new.get_payment(p.payment_id)
            assert a is not None and b is not None
            assert fx_fields(a.payment.fx) == fx_fields(b.payment.fx) == fx_fields(p.fx)
    migrate_all(db)
    assert Migrator(db).phase() == "expanded"


def test_rollback_after_contract_is_refused(db: LedgerDatabase) -> None:
    migrate_all(db)
    Migrator(db).contract()
    with pytest.raises(MigrationError, match="one-way"):
        Migrator(db).rollback_expand(grace_s=0)
    with pytest.raises(MigrationError, match="one-way"):
        Migrator(db).rollback_backfill()


def test_status_reports_each_phase(db: LedgerDatabase) -> None:
    m = Migrator(db, clock=lambda: datetime(2026, 5, 1, tzinfo=UTC))
    assert m.status().summary == "legacy (before expand)"
    seed_legacy(db, 5)
    m.expand()
    with db.engine.connect() as conn:
        assert detect_phase(conn, db.schema) == "expanded"
    BackfillWorker(db, clock=m.clock).run()
    assert m.status().summary == "expanded, backfill complete since 2026-05-01 00:00:00 UTC"
    m.contract()
    assert m.status().summary.startswith("contracted")
    assert [j["action"] for j in m.status(journal_limit=10).journal] == [
        "upgrade", "backfill", "backfill", *["upgrade"] * (1 if db.dialect == "sqlite" else 4)
    ]  # fmt: skip
