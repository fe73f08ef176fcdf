"""The payment ledger's tables (SQLAlchemy Core: one definition for SQLite and PostgreSQL).

``payment_transactions`` is created in its LEGACY shape: the FX quote flattened into ``fx_*``
columns (rates and markups as decimal strings, never floats), which is what old router code reads.
The expand-contract migration (`router.migrate`) adds ``fx_rate_snapshot`` (a JSON snapshot of the
quote: JSONB on PostgreSQL, JSON text on SQLite), NULLABLE first and NOT NULL after the contract.
`payment_transactions_fx` is the same table as seen by code that may name the new column.

Schema phases (`detect_phase`), from the live catalog plus the migration's own head record:

- ``legacy``: no ``fx_rate_snapshot`` (or one the migration did not create: not trusted);
- ``expanded``: the column exists, NULLABLE, and the head says expand ran: dual write;
- ``contracted``: the column is NOT NULL: only the snapshot is written, and read.

The ``ripcord_migration_*`` and ``ripcord_fx_backfill*`` tables are the migration's bookkeeping
(head, journal, backfill checkpoint and batch log); they are created by the first migration
command, never by `ensure_schema`, so a fresh ledger database is exactly the legacy schema.

``idempotency_keys`` is the single authority on deduplication: its primary key is (merchant_id,
idempotency_key), so keys are scoped per merchant, like Stripe's per-account keys.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    CHAR,
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    TypeDecorator,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

PAYMENT_STATUSES = ("APPROVED", "DECLINED", "FAILED")
CONVERSION_OUTCOMES = ("ACCEPTED", "ABANDONED")


class UtcDateTime(TypeDecorator[datetime]):
    """A tz-aware UTC datetime on both backends (SQLite has no time zone type: store naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; normalise to UTC."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamps must be tz-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Return tz-aware UTC."""
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


metadata = MetaData()

PAYMENTS_TABLE = "payment_transactions"
SNAPSHOT_COLUMN = "fx_rate_snapshot"
SchemaPhase = Literal["legacy", "expanded", "contracted"]
SCHEMA_PHASES: tuple[SchemaPhase, ...] = ("legacy", "expanded", "contracted")
# none_as_null: a Python None must be SQL NULL (the backfill's marker), never JSON 'null'.
FX_SNAPSHOT_TYPE = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

_FX_COLUMNS = (
    "fx_quote_id",
    "fx_to_currency",
    "fx_rate",
    "fx_markup",
    "fx_source",
    "fx_converted_amount_minor",
)


def _payment_table(meta: MetaData, snapshot: Literal["none", "nullable", "not-null"]) -> Table:
    """payment_transactions, without the snapshot column (legacy) or with it."""
    extra: list[Column[Any]] = []
    if snapshot != "none":
        extra.append(Column(SNAPSHOT_COLUMN, FX_SNAPSHOT_TYPE, nullable=snapshot == "nullable"))
    return Table(
        PAYMENTS_TABLE,
        meta,
        # Chosen by the service (opaque text); the backfill pages on it (keyset on the PK).
        Column("payment_id", Text, primary_key=True),
        Column("idempotency_key", Text, nullable=False),
        Column("merchant_id", Text, nullable=False),
        Column("customer_id", Text, nullable=False),
        Column("amount_minor", BigInteger, nullable=False),
        Column("currency", CHAR(3), nullable=False),
        Column("status", Text, nullable=False),
        Column("decline_reason", Text, nullable=False),  # "" when approved
        Column("engine", Text, nullable=False),
        Column("acquirer", Text, nullable=False),
        Column("card_bin", Text, nullable=False),
        Column("card_last4", Text, nullable=False),
        Column("experiment_variant", Text, nullable=False),  # "" when not in the experiment
        Column("flag_version", BigInteger, nullable=False),
        # The legacy FX representation: all NULL when no quote was offered.
        Column("fx_quote_id", Text, nullable=True),
        Column("fx_to_currency", CHAR(3), nullable=True),
        Column("fx_rate", Text, nullable=True),
        Column("fx_markup", Text, nullable=True),
        Column("fx_source", Text, nullable=True),
        Column("fx_converted_amount_minor", BigInteger, nullable=True),
        Column("fx_as_of", UtcDateTime, nullable=True),
        # The experiment's outcome event (RecordConversion); NULL until the customer decides.
        Column("conversion", Text, nullable=True),
        Column("conversion_at", UtcDateTime, nullable=True),
        Column("created_at", UtcDateTime, nullable=False),
        *extra,
        CheckConstraint("amount_minor > 0", name="payment_transactions_amount_positive"),
        # Defence in depth against a PAN reaching storage: the BIN is 6-8 digits, last4 is 4.
        CheckConstraint("length(card_last4) = 4", name="payment_transactions_last4_len"),
        CheckConstraint("length(card_bin) BETWEEN 6 AND 8", name="payment_transactions_bin_len"),
        CheckConstraint(_in("status", PAYMENT_STATUSES), name="payment_transactions_status"),
        CheckConstraint(
            f"conversion IS NULL OR {_in('conversion', CONVERSION_OUTCOMES)}",
            name="payment_transactions_conversion",
        ),
        CheckConstraint(
            "("
            + " AND ".join(f"{c} IS NULL" for c in _FX_COLUMNS)
            + ") OR ("
            + " AND ".join(f"{c} IS NOT NULL" for c in _FX_COLUMNS)
            + ")",
            name="payment_transactions_fx_all_or_none",
        ),
        # Not unique: idempotency_keys is the authority; this serves reconcile and key look-ups.
        Index("payment_transactions_merchant_key", "merchant_id", "idempotency_key"),
    )


payment_transactions = _payment_table(metadata, "none")
"""The legacy shape: what `ensure_schema` creates and what legacy-phase code reads and writes."""

payment_transactions_fx = _payment_table(MetaData(), "nullable")
"""The same table with ``fx_rate_snapshot``: for statements of the expanded and contracted phase."""


def contracted_payment_table(name: str) -> Table:
    """The contracted shape (snapshot NOT NULL) under another name: the SQLite rebuild's target."""
    return _payment_table(MetaData(), "not-null").to_metadata(MetaData(), name=name)


idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("merchant_id", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    # sha256 hex of the canonical request: a different request under the same key conflicts.
    Column("request_fingerprint", Text, nullable=False),
    Column(
        "payment_id",
        Text,
        ForeignKey("payment_transactions.payment_id", name="idempotency_keys_payment_fk"),
        nullable=False,
    ),
    # The serialized first response, replayed byte for byte.
    Column("response", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("merchant_id", "idempotency_key", name="idempotency_keys_pk"),
)


def ensure_schema(conn: Connection) -> None:
    """Create the legacy tables if missing; the caller holds a lock that serialises openers."""
    metadata.create_all(conn, checkfirst=True)


# ---- the migration's bookkeeping ------------------------------------------------------------

migration_metadata = MetaData()

MIGRATION_NAME = "payment_transactions.fx_rate_snapshot"

migration_head = Table(
    "ripcord_migration_head",
    migration_metadata,
    Column("name", Text, primary_key=True),
    # legacy | expanded | contracted: the phase the last completed migration step left.
    Column("phase", Text, nullable=False),
    Column("revision", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

migration_log = Table(
    "ripcord_migration_log",
    migration_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False),
    Column("name", Text, nullable=False),
    # upgrade | downgrade | backfill | guard-override | note
    Column("action", Text, nullable=False),
    Column("revision", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("detail", Text, nullable=False),  # JSON
)

fx_backfill = Table(
    "ripcord_fx_backfill",
    migration_metadata,
    Column("job", Text, primary_key=True),
    Column("pass_no", Integer, nullable=False),
    # The last payment_id of the last committed batch; NULL: the pass starts at the beginning.
    Column("cursor", Text, nullable=True),
    Column("batches", BigInteger, nullable=False),
    Column("rows_done", BigInteger, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("completed_at", UtcDateTime, nullable=True),
)

fx_backfill_batches = Table(
    "ripcord_fx_backfill_batches",
    migration_metadata,
    Column("job", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),  # 1, 2, … over all passes
    Column("pass_no", Integer, nullable=False),
    Column("after_key", Text, nullable=True),  # exclusive lower bound (NULL: the start)
    Column("last_key", Text, nullable=False),  # inclusive upper bound
    Column("rows", Integer, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("job", "seq", name="ripcord_fx_backfill_batches_pk"),
)


def ensure_migration_tables(conn: Connection) -> None:
    """Create the bookkeeping tables if missing (the caller serialises concurrent creators)."""
    migration_metadata.create_all(conn, checkfirst=True)


# ---- phase detection -----------------------------------------------------------------------


def snapshot_column_state(
    conn: Connection, schema: str | None
) -> Literal["absent", "nullable", "not-null"]:
    """Whether payment_transactions has fx_rate_snapshot, and its nullability, from the catalog."""
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(f'PRAGMA table_info("{PAYMENTS_TABLE}")').all()
        found = [row for row in rows if row[1] == SNAPSHOT_COLUMN]
        if not found:
            return "absent"
        return "not-null" if found[0][3] else "nullable"
    not_null = conn.execute(
        text(
            "SELECT a.attnotnull FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = coalesce(:schema, current_schema())"
            " AND c.relname = :table AND a.attname = :column AND NOT a.attisdropped"
        ),
        {"schema": schema, "table": PAYMENTS_TABLE, "column": SNAPSHOT_COLUMN},
    ).scalar()
    if not_null is None:
        return "absent"
    return "not-null" if not_null else "nullable"


def table_exists(conn: Connection, schema: str | None, name: str) -> bool:
    """Whether the table exists (in ``schema`` on PostgreSQL, None: the current schema)."""
    if conn.dialect.name == "sqlite":
        found = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).first()
        return found is not None
    found = conn.execute(
        text(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = coalesce(:schema, current_schema()) AND c.relname = :name"
        ),
        {"schema": schema, "name": name},
    ).first()
    return found is not None


def recorded_phase(conn: Connection, schema: str | None) -> SchemaPhase | None:
    """The phase the migration's head records, or None if no migration ever ran here."""
    if not table_exists(conn, schema, migration_head.name):
        return None
    phase = conn.execute(
        select(migration_head.c.phase).where(migration_head.c.name == MIGRATION_NAME)
    ).scalar()
    return phase if phase in SCHEMA_PHASES else None


def detect_phase(conn: Connection, schema: str | None) -> SchemaPhase:
    """The phase payment_transactions is in: which columns a writer must (and may) name."""
    column = snapshot_column_state(conn, schema)
    if column == "absent":
        return "legacy"  # never name a column that is not there, whatever the head says
    if column == "not-null":
        return "contracted"  # every INSERT must carry the snapshot, whatever the head says
    # A nullable column that the migration did not record (someone's hand-made ALTER, or a
    # rollback that is about to drop it) is not ours to write.
    return "expanded" if recorded_phase(conn, schema) in ("expanded", "contracted") else "legacy"


def qualified_name(conn_or_dialect: Connection | Dialect, schema: str | None, name: str) -> str:
    """``name`` quoted for raw SQL, prefixed with the quoted PG schema when there is one."""
    dialect = conn_or_dialect if isinstance(conn_or_dialect, Dialect) else conn_or_dialect.dialect
    quote = dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def set_head(conn: Connection, phase: SchemaPhase, revision: str, at: datetime) -> None:
    """Record the phase the migration left the table in (in the caller's transaction)."""
    values = {"phase": phase, "revision": revision, "updated_at": at}
    done = conn.execute(
        migration_head.update().where(migration_head.c.name == MIGRATION_NAME).values(values)
    )
    if done.rowcount == 0:
        conn.execute(migration_head.insert().values(name=MIGRATION_NAME, **values))


def journal(
    conn: Connection,
    *,
    at: datetime,
    action: str,
    revision: str,
    actor: str,
    detail: dict[str, Any],
) -> None:
    """Append one record to the migration journal (in the caller's transaction)."""
    conn.execute(
        migration_log.insert().values(
            at=at,
            name=MIGRATION_NAME,
            action=action,
            revision=revision,
            actor=actor,
            detail=json.dumps(detail, sort_keys=True, default=str),
        )
    )
