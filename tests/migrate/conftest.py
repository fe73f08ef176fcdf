"""Fixtures for the expand-contract migration: real SQLite files and real PostgreSQL schemas.

PostgreSQL comes from $RIPCORD_TEST_PG_URL (default: the local trust-auth server); every test
gets its own schema, named after this session, and all of them are dropped at the end. A flag
daemon (a real `python -m flagd start` child) serves the payment flags to the tests that need
the audit trail or the backfill's gate flag.
"""

from __future__ import annotations

import json
import random
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from flagd.process import REPO, DaemonProcess
from router.ledger import (
    FxQuoteRecord,
    LedgerDatabase,
    PaymentRecord,
    _stored_payment,
    fx_snapshot,
    open_database,
    request_fingerprint,
)
from router.schema import idempotency_keys, payment_transactions, payment_transactions_fx
from tests.conftest import fresh_pg_url

FLAGS = REPO / "deploy" / "flags" / "payments.flagd.json"
OPERATOR_TOKEN = "migrate-tests-operator-0123456789"

FP = request_fingerprint({"test": "migrate"})
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, empty payments database on the test's backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'payments' / 'payments.db'}"
    request.getfixturevalue("pg_admin")
    return fresh_pg_url()


@pytest.fixture
def db(db_url: str) -> Iterator[LedgerDatabase]:
    """The migration's view of the test database (legacy tables created, as a router would)."""
    from router.ledger import Ledger

    Ledger.open(db_url).close()  # the legacy schema, exactly as the router creates it
    opened = open_database(db_url)
    yield opened
    opened.engine.dispose()


def table(db: LedgerDatabase, name: str = "payment_transactions") -> str:
    """A table's name for raw SQL in the test's schema."""
    return f'"{db.schema}".{name}' if db.schema else name


# ---- payments --------------------------------------------------------------------------------


def random_fx(rng: random.Random) -> FxQuoteRecord | None:
    """A quote half of the time: live or static, with or without as_of and table version."""
    if rng.random() < 0.5:
        return None
    static = rng.random() < 0.5
    micro = rng.randrange(1_000_000)
    return FxQuoteRecord(
        quote_id=str(uuid.UUID(int=rng.getrandbits(128))),
        to_currency=rng.choice(["GBP", "USD", "JPY", "CHF"]),
        rate=f"{rng.randrange(1, 3)}.{rng.randrange(10**6):06d}",
        markup=rng.choice(["0.03", "0.035", "0", "0.0325"]),
        source="static" if static else "live",
        converted_amount_minor=rng.randrange(1, 10**9),
        as_of=None
        if rng.random() < 0.1
        else T0 + timedelta(seconds=rng.randrange(10**6), microseconds=micro),
    )


def make_payment(
    rng: random.Random, n: int, *, prefix: str = "k", fx: Any = "random"
) -> PaymentRecord:
    """A valid payment with a random id (real ids are UUIDs: they land anywhere in the key order)."""
    return PaymentRecord(
        payment_id=str(uuid.UUID(int=rng.getrandbits(128))),
        idempotency_key=f"{prefix}-{n}",
        merchant_id=f"m-{n % 7}",
        customer_id=f"c-{n % 13}",
        amount_minor=rng.randrange(1, 10**7),
        currency=rng.choice(["EUR", "USD"]),
        status=rng.choice(["APPROVED", "DECLINED"]),
        engine=rng.choice(["legacy", "new"]),
        acquirer="acq-eu",
        card_bin="411111",
        card_last4="1111",
        flag_version=n,
        fx=random_fx(rng) if fx == "random" else fx,
    )


def old_payment(payment: PaymentRecord) -> Any:
    """The same payment as old code's record type (it has no table_version)."""
    from tests.migrate.legacy import ledger as old

    fx = payment.fx
    old_fx = None
    if fx is not None:
        assert fx.table_version is None, "old code cannot carry a table version"
        old_fx = old.FxQuoteRecord(
            fx.quote_id, fx.to_currency, fx.rate, fx.markup, fx.source,
            fx.converted_amount_minor, fx.as_of,
        )  # fmt: skip
    return old.PaymentRecord(**{**payment.__dict__, "fx": old_fx})


def fx_fields(fx: Any) -> tuple[Any, ...] | None:
    """What old and new quote records have in common, to compare across the two."""
    if fx is None:
        return None
    return (fx.quote_id, fx.to_currency, fx.rate, fx.markup, fx.source,
            fx.converted_amount_minor, fx.as_of)  # fmt: skip


def seed_legacy(db: LedgerDatabase, count: int, seed: int = 1) -> list[PaymentRecord]:
    """Bulk-insert ``count`` legacy rows (and their idempotency records) in one transaction."""
    from router.ledger import _legacy_values

    rng = random.Random(seed)
    payments = [make_payment(rng, n, prefix=f"seed{seed}") for n in range(count)]
    rows = [_legacy_values(p, T0) for p in payments]
    keys = [
        {
            "merchant_id": p.merchant_id,
            "idempotency_key": p.idempotency_key,
            "request_fingerprint": FP,
            "payment_id": p.payment_id,
            "response": b"r",
            "created_at": T0,
        }
        for p in payments
    ]
    with db.engine.begin() as conn:
        for start in range(0, count, 5000):
            conn.execute(insert(payment_transactions), rows[start : start + 5000])
            conn.execute(insert(idempotency_keys), keys[start : start + 5000])
    return payments


def snapshots(db: LedgerDatabase) -> dict[str, Any]:
    """payment_id -> fx_rate_snapshot (parsed) of every row."""
    pt = payment_transactions_fx.c
    with db.engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(select(pt.payment_id, pt.fx_rate_snapshot))}


def assert_snapshots_match_legacy(db: LedgerDatabase) -> int:
    """Every snapshot says what the row's legacy columns say; returns how many rows have both."""
    checked = 0
    with db.engine.connect() as conn:
        for row in conn.execute(select(payment_transactions_fx)):
            if row.fx_rate_snapshot is None:
                continue
            legacy = _stored_payment(row, "legacy").payment
            expected = fx_snapshot(legacy, row.fx_rate_snapshot["origin"])
            if row.fx_rate_snapshot["origin"] == "write" and legacy.fx is not None:
                # The router knew the static table version; the legacy columns never had it.
                expected["table_version"] = row.fx_rate_snapshot.get("table_version")
            assert row.fx_rate_snapshot == expected, row.payment_id
            checked += 1
    return checked


# ---- the update counter ------------------------------------------------------------------------


def install_update_counter(db: LedgerDatabase) -> None:
    """A trigger logs every row UPDATE that sets fx_rate_snapshot: the database counts, not us."""
    with db.engine.begin() as conn:
        if db.dialect == "sqlite":
            conn.exec_driver_sql("CREATE TABLE fx_update_log (payment_id TEXT NOT NULL)")
            conn.exec_driver_sql(
                "CREATE TRIGGER fx_update_count AFTER UPDATE OF fx_rate_snapshot"
                " ON payment_transactions BEGIN"
                " INSERT INTO fx_update_log (payment_id) VALUES (NEW.payment_id); END"
            )
            return
        s = f'"{db.schema}"'
        conn.exec_driver_sql(f"CREATE TABLE {s}.fx_update_log (payment_id text NOT NULL)")
        conn.exec_driver_sql(
            f"CREATE FUNCTION {s}.fx_update_count() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN INSERT INTO {s}.fx_update_log VALUES (NEW.payment_id); RETURN NEW; END $$"
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER fx_update_count AFTER UPDATE OF fx_rate_snapshot"
            f" ON {s}.payment_transactions FOR EACH ROW EXECUTE FUNCTION {s}.fx_update_count()"
        )


def update_counts(db: LedgerDatabase) -> dict[str, int]:
    """payment_id -> how many UPDATEs set its snapshot."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT payment_id, count(*) FROM {table(db, 'fx_update_log')} GROUP BY payment_id"
            )
        ).all()
    return {r[0]: int(r[1]) for r in rows}


# ---- the flag daemon -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A real flag daemon on the payment flags (a copy), with an operator token."""
    root = tmp_path_factory.mktemp("flagd")
    flags = root / "payments.flagd.json"
    shutil.copy(FLAGS, flags)
    env = {"RIPCORD_TOKENS": f"migrate-tests:operator:{OPERATOR_TOKEN}"}
    args = ("--uri", f"file:{flags}", "--state-dir", str(root / "state"), "--log-level", "WARNING")
    with DaemonProcess(*args, env=env) as proc:
        yield proc


@pytest.fixture
def admin(daemon: DaemonProcess) -> Iterator[Callable[[str, Any], Any]]:
    """Calls a FlagAdmin method with the operator token: admin("SetRollout", request)."""
    import grpc

    from ripcord_pb.ripcord.admin.v1 import admin_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{daemon.port}")
    stub = admin_pb2_grpc.FlagAdminStub(channel)
    metadata = (("authorization", f"Bearer {OPERATOR_TOKEN}"),)

    def call(method: str, request: Any) -> Any:
        return getattr(stub, method)(request, metadata=metadata, timeout=10)

    yield call
    channel.close()


def dumps(value: Any) -> str:
    """Stable JSON for messages."""
    return json.dumps(value, sort_keys=True, default=str)
