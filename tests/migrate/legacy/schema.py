# FROZEN copy of router/schema.py at commit c873059: the legacy tables old router code knows.
"""The payment ledger's tables (SQLAlchemy Core: one definition for SQLite and PostgreSQL).

This is the LEGACY schema. ``payment_transactions`` carries the FX quote flattened into ``fx_*``
columns (rates and markups as decimal strings, never floats), which is what old router code reads.
It deliberately has no ``fx_rate_snapshot`` column: the migration's expand phase adds that one,
NULLABLE, and the ledger's dual-write hook (`router.ledger.Ledger._insert_payment`) fills it.

``idempotency_keys`` is the single authority on deduplication: its primary key is (merchant_id,
idempotency_key), so keys are scoped per merchant, like Stripe's per-account keys.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CHAR,
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    TypeDecorator,
)

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

_FX_COLUMNS = (
    "fx_quote_id",
    "fx_to_currency",
    "fx_rate",
    "fx_markup",
    "fx_source",
    "fx_converted_amount_minor",
)

payment_transactions = Table(
    "payment_transactions",
    metadata,
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
