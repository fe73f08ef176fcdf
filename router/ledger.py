"""The payment ledger: durable payments with idempotency keys, on SQLite (WAL) or PostgreSQL.

Idempotency scope: (merchant_id, idempotency_key), like Stripe's per-account keys. Two merchants
may use the same key independently; one merchant reusing a key for a different request gets
`IdempotencyConflict`. The fingerprint is the sha256 of the canonical request
(`request_fingerprint`). Keys are kept forever for now (Stripe prunes after >= 24 h; pruning
would delete only ``idempotency_keys`` rows, never payments).

Check-then-write, not reserve-then-complete. The service calls `find_replay` (or `lookup`)
BEFORE the acquirer, then `record_payment`, which writes the payment row and the idempotency
record in ONE transaction, insert-first: the unique (merchant_id, idempotency_key) key decides
the race, and a loser rolls back and returns the winner's stored response. Exactly one charge:

- A retry after a response was acknowledged finds the committed record and is replayed without
  calling the acquirer.
- Concurrent duplicates that both miss the look-up may both reach the acquirer, but with the
  same downstream key (`acquirer_idempotency_key`, derived from merchant, key and attempt), so
  the acquirer authorises once; the ledger commits one row and every caller gets its response.
- A crash between the acquirer call and COMMIT acknowledged nothing; the client's retry repeats
  the call with the same downstream key, which the acquirer deduplicates.

Reserve-then-complete would add a second durable commit (an fsync on SQLite) to every payment,
strand ``in_progress`` keys on a crash (recovering them needs the downstream key anyway), and
could not hold a SQLite transaction across the acquirer call without blocking every writer. It
would only save a duplicate *call*, not a duplicate charge.

A stored response is the first one, whatever its status (a decline replays as a decline). The
service stores its response with ``replayed`` false and sets it when it returns a replay, and
never records a transient failure (an acquirer timeout): the client may retry those.

Schema phases (`router.schema.detect_phase`; the migration is `router.migrate`). The ledger
detects the phase when it opens, again at most ``phase_ttl`` seconds later on use, and at once
when a statement fails (a dropped column, a new NOT NULL): it then retries once in the new phase,
so it never names a column that is not there.

- ``legacy``: the legacy ``fx_*`` columns only (what old router code writes and reads).
- ``expanded``: dual write. `Ledger._insert_payment` adds ``fx_rate_snapshot`` (`fx_snapshot`)
  to the same INSERT, hence the same transaction, as the legacy columns and the idempotency
  record. Reads take the snapshot when a row has one, else the legacy columns; both say the same.
- ``contracted``: the snapshot is NOT NULL and is the representation: it alone is written (the
  legacy ``fx_*`` columns stay NULL on new rows) and read, for old and new rows alike.

The API is synchronous and thread-safe: call it from worker threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Table, create_engine, event, func, insert, select, update
from sqlalchemy.engine import URL, Row, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError

from router.schema import (
    CONVERSION_OUTCOMES,
    PAYMENT_STATUSES,
    SchemaPhase,
    detect_phase,
    ensure_schema,
    idempotency_keys,
    payment_transactions,
    payment_transactions_fx,
)

__all__ = [
    "SNAPSHOT_VERSION",
    "ConversionConflict",
    "ConversionResult",
    "FxQuoteRecord",
    "IdempotencyConflict",
    "InvalidPaymentRecord",
    "Ledger",
    "LedgerDatabase",
    "LedgerError",
    "PaymentNotFound",
    "PaymentRecord",
    "RecordOutcome",
    "SchemaPhase",
    "StoredPayment",
    "StoredResponse",
    "acquirer_idempotency_key",
    "canonical_json",
    "fx_from_snapshot",
    "fx_snapshot",
    "open_database",
    "request_fingerprint",
]

log = logging.getLogger("router.ledger")

SQLITE_BUSY_TIMEOUT_MS = 30_000
DEFAULT_PHASE_TTL = 5.0  # seconds between schema-phase checks (a failing statement checks at once)
SNAPSHOT_VERSION = 1  # the "v" of fx_rate_snapshot documents
_MAX_ID_LENGTH = 255  # ids, keys (Stripe's Idempotency-Key limit) and short texts
_INT64_MAX = 2**63 - 1
# Any fixed 64-bit key, distinct from the flag daemon's: serialises concurrent PG `open`s.
_PG_DDL_LOCK_KEY = 0x52495043_4C454447  # "RIPCLEDG"
_WRITE = "ripcord_ledger_write"  # execution option: SQLite starts with BEGIN IMMEDIATE
_RECONCILE_CHUNK = 500  # stays far below SQLite's bound-parameter limit

_DIGITS = re.compile(r"[0-9]+")
_CURRENCY = re.compile(r"[A-Z]{3}")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_ENGINES = ("legacy", "new")
_FX_SOURCES = ("live", "static")


# ---- errors --------------------------------------------------------------------------------


class LedgerError(Exception):
    """A ledger operation could not be done."""


class InvalidPaymentRecord(LedgerError, ValueError):
    """A payment field is malformed (or looks like card data that must never be stored)."""

    def __init__(self, field: str, problem: str) -> None:
        """Name the field and what is wrong with it."""
        super().__init__(f"{field}: {problem}")
        self.field = field


class IdempotencyConflict(LedgerError):
    """The key was already used by this merchant for a different request."""

    def __init__(self, merchant_id: str, key: str, payment_id: str) -> None:
        """Say which key, whose, and which payment holds it."""
        super().__init__(
            f"idempotency key {key!r} of merchant {merchant_id!r} was already used for a "
            f"different request (payment {payment_id}); use a new key for a new payment"
        )
        self.merchant_id = merchant_id
        self.key = key
        self.payment_id = payment_id


class PaymentNotFound(LedgerError, LookupError):
    """No payment has that id."""


class ConversionConflict(LedgerError):
    """A different conversion outcome is already recorded for the payment."""

    def __init__(self, payment_id: str, recorded: str, requested: str) -> None:
        """Say what is recorded and what was asked."""
        super().__init__(
            f"payment {payment_id} already has conversion outcome {recorded}; "
            f"cannot change it to {requested}"
        )
        self.payment_id = payment_id
        self.recorded = recorded
        self.requested = requested


# ---- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FxQuoteRecord:
    """The FX quote a payment was offered, in the legacy flattened representation."""

    quote_id: str
    to_currency: str
    rate: str  # decimal string, units of to_currency per unit of the payment currency
    markup: str  # decimal string, "0.035" = 3.5 %
    source: str  # "live" | "static"
    converted_amount_minor: int
    as_of: datetime | None = None
    table_version: str | None = None  # the static table's version; None for live quotes

    def __post_init__(self) -> None:
        """Validate every field."""
        _text("fx.quote_id", self.quote_id)
        _currency("fx.to_currency", self.to_currency)
        _decimal("fx.rate", self.rate, positive=True)
        _decimal("fx.markup", self.markup, positive=False)
        if self.source not in _FX_SOURCES:
            raise InvalidPaymentRecord("fx.source", f"must be one of {_FX_SOURCES}")
        _amount("fx.converted_amount_minor", self.converted_amount_minor)
        if self.as_of is not None and self.as_of.utcoffset() is None:
            raise InvalidPaymentRecord("fx.as_of", "must be tz-aware")
        if self.table_version is not None:
            _text("fx.table_version", self.table_version)


@dataclass(frozen=True)
class PaymentRecord:
    """One payment as the ledger stores it; constructing one validates it."""

    payment_id: str
    idempotency_key: str
    merchant_id: str
    customer_id: str
    amount_minor: int
    currency: str
    status: str  # APPROVED | DECLINED | FAILED
    engine: str  # legacy | new
    acquirer: str
    card_bin: str
    card_last4: str
    flag_version: int
    decline_reason: str = ""
    experiment_variant: str = ""
    fx: FxQuoteRecord | None = None

    def __post_init__(self) -> None:
        """Validate every field; card fields that could hold a PAN are refused here too."""
        _text("payment_id", self.payment_id)
        _text("idempotency_key", self.idempotency_key)
        _text("merchant_id", self.merchant_id)
        _text("customer_id", self.customer_id, required=False)
        _amount("amount_minor", self.amount_minor)
        _currency("currency", self.currency)
        if self.status not in PAYMENT_STATUSES:
            raise InvalidPaymentRecord("status", f"must be one of {PAYMENT_STATUSES}")
        if self.engine not in _ENGINES:
            raise InvalidPaymentRecord("engine", f"must be one of {_ENGINES}")
        _text("acquirer", self.acquirer, required=False)
        # A full card number must never reach storage: only the BIN and the last four digits.
        if not (_DIGITS.fullmatch(self.card_bin) and 6 <= len(self.card_bin) <= 8):
            raise InvalidPaymentRecord("card_bin", "must be 6 to 8 digits (never a card number)")
        if not (_DIGITS.fullmatch(self.card_last4) and len(self.card_last4) == 4):
            raise InvalidPaymentRecord("card_last4", "must be exactly 4 digits")
        if type(self.flag_version) is not int or not 0 <= self.flag_version <= _INT64_MAX:
            raise InvalidPaymentRecord("flag_version", "must be a non-negative 64-bit integer")
        _text("decline_reason", self.decline_reason, required=False)
        _text("experiment_variant", self.experiment_variant, required=False)
        if self.fx is not None and not isinstance(self.fx, FxQuoteRecord):
            raise InvalidPaymentRecord("fx", "must be an FxQuoteRecord or None")


@dataclass(frozen=True)
class StoredPayment:
    """A recorded payment with what the ledger added: its time and conversion outcome."""

    payment: PaymentRecord
    created_at: datetime
    conversion: str  # ACCEPTED | ABANDONED | "" (no outcome yet)
    conversion_at: datetime | None


@dataclass(frozen=True)
class StoredResponse:
    """The idempotency record of a (merchant, key)."""

    fingerprint: str
    payment_id: str
    response: bytes
    created_at: datetime


@dataclass(frozen=True)
class RecordOutcome:
    """What to answer: the payment and response of the first request with this key."""

    payment_id: str
    response: bytes
    replayed: bool  # True: an earlier request's response, nothing was written now


@dataclass(frozen=True)
class ConversionResult:
    """A payment's experiment variant and conversion outcome."""

    variant: str
    outcome: str
    newly_recorded: bool  # False when the same outcome was already there: count it once


# ---- helpers for the service ---------------------------------------------------------------


def request_fingerprint(fields: Mapping[str, Any]) -> str:
    """The sha256 (hex) of a request's canonical JSON: sorted keys, no whitespace, UTF-8."""
    canonical = json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def acquirer_idempotency_key(merchant_id: str, key: str, attempt: int = 0) -> str:
    """The acquirer-side key of attempt N: stable across our retries, new for each failover."""
    # JSON of the triple is unambiguous (no separator games between merchant and key).
    digest = hashlib.sha256(json.dumps([merchant_id, key, attempt]).encode()).hexdigest()
    return f"rcacq_{digest[:40]}"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: one text per value (the snapshot column's form)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def fx_snapshot(
    payment: PaymentRecord, origin: Literal["write", "backfill"] = "write"
) -> dict[str, Any]:
    """The ``fx_rate_snapshot`` document of a payment (payments-domain note, section 1.5).

    ``{"v": 1, "origin": …, "source": "none"}`` when no quote was offered, so that every row has
    one; else the quote: id, source, currencies, rate and markup as decimal strings, converted
    amount, ``as_of`` (ISO 8601, UTC, microseconds) and the static table's version. ``origin``
    says who wrote it: the router ("write") or the backfill, which rebuilds it from the legacy
    columns (so ``table_version`` is null there: the legacy columns never had it).
    `router.backfill` builds the same document in SQL; a test holds the two together.
    """
    fx = payment.fx
    if fx is None:
        return {"v": SNAPSHOT_VERSION, "origin": origin, "source": "none"}
    return {
        "v": SNAPSHOT_VERSION,
        "origin": origin,
        "source": fx.source,
        "quote_id": fx.quote_id,
        "from_currency": payment.currency,
        "to_currency": fx.to_currency,
        "rate": fx.rate,
        "markup": fx.markup,
        "converted_amount_minor": fx.converted_amount_minor,
        "as_of": _iso_utc(fx.as_of),
        "table_version": fx.table_version,
    }


def fx_from_snapshot(document: Mapping[str, Any]) -> FxQuoteRecord | None:
    """The quote a snapshot document records (None for ``"source": "none"``)."""
    if document.get("v") != SNAPSHOT_VERSION:
        raise LedgerError(f"unknown fx_rate_snapshot version: {document.get('v')!r}")
    if document["source"] == "none":
        return None
    as_of = document.get("as_of")
    return FxQuoteRecord(
        quote_id=document["quote_id"],
        to_currency=document["to_currency"],
        rate=document["rate"],
        markup=document["markup"],
        source=document["source"],
        converted_amount_minor=int(document["converted_amount_minor"]),
        as_of=None if as_of is None else datetime.fromisoformat(as_of).astimezone(UTC),
        table_version=document.get("table_version"),
    )


def _iso_utc(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat(timespec="microseconds")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LedgerDatabase:
    """An engine configured the ledger's way, and where its tables live."""

    engine: Engine
    dialect: Literal["sqlite", "postgresql"]
    schema: str | None  # PG ?schema=, None: the search_path default (always None on SQLite)
    path: Path | None  # the SQLite file


def open_database(url: str) -> LedgerDatabase:
    """The engine for ``sqlite:///path`` or ``postgresql://…[?schema=name]``; creates nothing."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"not a database URL: {url!r}") from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite" and driver in ("pysqlite", ""):
        engine = _sqlite_engine(parsed)
        assert parsed.database is not None  # _sqlite_engine refuses URLs without a file
        return LedgerDatabase(engine, "sqlite", None, Path(parsed.database))
    if backend == "postgresql" and driver in ("psycopg", ""):
        engine, schema = _postgresql_engine(parsed)
        return LedgerDatabase(engine, "postgresql", schema, None)
    raise ValueError(f"unsupported ledger URL {parsed!r}: use sqlite:/// or postgresql://")


def write_options() -> dict[str, Any]:
    """Execution options of a connection that will write (BEGIN IMMEDIATE on SQLite)."""
    return {_WRITE: True}


# ---- the ledger ----------------------------------------------------------------------------


class Ledger:
    """Durable payments and their idempotency records; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        dialect: Literal["sqlite", "postgresql"],
        clock: Callable[[], datetime],
        schema: str | None = None,
        phase_ttl: float = DEFAULT_PHASE_TTL,
    ) -> None:
        """Use `Ledger.open`."""
        self._engine = engine
        self._dialect = dialect
        self._clock = clock
        self._schema = schema
        self._phase_ttl = phase_ttl
        self._phase_expires = 0.0  # time.monotonic() after which the phase is checked again
        # Same-process SQLite writers queue here rather than in SQLite's sleeping busy handler;
        # PostgreSQL writers run concurrently (row locks decide).
        self._sqlite_write_lock = threading.Lock()
        self._closed = False
        self._phase: SchemaPhase = "legacy"

    @classmethod
    def open(
        cls,
        url: str,
        *,
        clock: Callable[[], datetime] | None = None,
        phase_ttl: float = DEFAULT_PHASE_TTL,
    ) -> Ledger:
        """Connect to ``sqlite:///path`` or ``postgresql://…[?schema=name]``; create tables."""
        if phase_ttl < 0:
            raise ValueError("phase_ttl must not be negative")
        db = open_database(url)
        ledger = cls(db.engine, db.dialect, clock or _utc_now, db.schema, phase_ttl)
        try:
            ledger._create_tables(db.schema)
            ledger.refresh_phase()
        except BaseException:
            db.engine.dispose()
            raise
        return ledger

    @property
    def dialect(self) -> str:
        """ "sqlite" or "postgresql"."""
        return self._dialect

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for migrations and tests; payments go through the methods)."""
        return self._engine

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection; idempotent."""
        self._closed = True
        self._engine.dispose()

    def schema_phase(self) -> SchemaPhase:
        """The phase of payment_transactions this ledger writes for (re-checked after phase_ttl)."""
        if time.monotonic() >= self._phase_expires:
            self.refresh_phase()
        return self._phase

    def refresh_phase(self) -> SchemaPhase:
        """Detect the phase from the live schema now."""
        with self._connect() as conn:
            phase = detect_phase(conn, self._schema)
        if phase != self._phase:
            log.info("payment_transactions schema phase: %s -> %s", self._phase, phase)
        self._phase = phase
        self._phase_expires = time.monotonic() + self._phase_ttl
        return phase

    # ---- idempotency -------------------------------------------------------------------

    def lookup(self, merchant_id: str, key: str) -> StoredResponse | None:
        """The idempotency record of (merchant, key), or None if the key is unused."""
        with self._connect() as conn:
            row = conn.execute(
                select(idempotency_keys).where(
                    idempotency_keys.c.merchant_id == merchant_id,
                    idempotency_keys.c.idempotency_key == key,
                )
            ).first()
        if row is None:
            return None
        return StoredResponse(
            row.request_fingerprint, row.payment_id, bytes(row.response), row.created_at
        )

    def find_replay(self, merchant_id: str, key: str, fingerprint: str) -> RecordOutcome | None:
        """Call before the acquirer: the replay, None for a new key, or `IdempotencyConflict`."""
        _check_fingerprint(fingerprint)
        stored = self.lookup(merchant_id, key)
        return None if stored is None else _replay(stored, merchant_id, key, fingerprint)

    def record_payment(
        self, payment: PaymentRecord, request_fingerprint: str, response: bytes
    ) -> RecordOutcome:
        """Commit the payment and its idempotency record together, or replay the first request."""
        # A recorded key with the same fingerprint: the stored response, nothing written; with
        # another fingerprint: IdempotencyConflict. A new key returns only after COMMIT.
        if not isinstance(payment, PaymentRecord):
            raise TypeError("payment must be a PaymentRecord")
        _check_fingerprint(request_fingerprint)
        if not isinstance(response, bytes) or not response:
            raise ValueError("response must be non-empty bytes")
        now = self._now()
        phase = self.schema_phase()
        try:
            return self._record(payment, request_fingerprint, response, now, phase)
        except DBAPIError:
            # A migration step may have changed the table since the phase was detected (expand
            # rolled back: the column is gone; contract: it is NOT NULL). Nothing committed:
            # try once more in the phase the table is in now.
            fresh = self.refresh_phase()
            if fresh == phase:
                raise
        return self._record(payment, request_fingerprint, response, now, fresh)

    def _record(
        self,
        payment: PaymentRecord,
        request_fingerprint: str,
        response: bytes,
        now: datetime,
        phase: SchemaPhase,
    ) -> RecordOutcome:
        try:
            with self._write() as conn:
                # Payment first: the idempotency record's foreign key needs it. Both rows commit
                # or neither does; a duplicate key fails the second INSERT (on PostgreSQL it
                # waits for the other transaction, then fails if that one committed).
                self._insert_payment(conn, payment, now, phase)
                conn.execute(
                    insert(idempotency_keys).values(
                        merchant_id=payment.merchant_id,
                        idempotency_key=payment.idempotency_key,
                        request_fingerprint=request_fingerprint,
                        payment_id=payment.payment_id,
                        response=response,
                        created_at=now,
                    )
                )
        except IntegrityError as exc:
            # Lost the race (or a plain retry): the rollback undid our payment row; read the
            # committed winner in a fresh transaction.
            stored = self.lookup(payment.merchant_id, payment.idempotency_key)
            if stored is not None:
                return _replay(
                    stored, payment.merchant_id, payment.idempotency_key, request_fingerprint
                )
            if self.get_payment(payment.payment_id) is not None:
                raise LedgerError(
                    f"payment_id {payment.payment_id!r} is already recorded under another key"
                ) from exc
            raise
        return RecordOutcome(payment.payment_id, response, replayed=False)

    # ---- payments ----------------------------------------------------------------------

    def get_payment(self, payment_id: str) -> StoredPayment | None:
        """The payment with that id, or None."""
        phase = self.schema_phase()
        try:
            return self._get_payment(payment_id, phase)
        except DBAPIError:
            fresh = self.refresh_phase()  # e.g. the column was dropped since the last check
            if fresh == phase:
                raise
        return self._get_payment(payment_id, fresh)

    def _get_payment(self, payment_id: str, phase: SchemaPhase) -> StoredPayment | None:
        table = payment_transactions if phase == "legacy" else payment_transactions_fx
        with self._connect() as conn:
            row = conn.execute(select(table).where(table.c.payment_id == payment_id)).first()
        return None if row is None else _stored_payment(row, phase)

    def record_conversion(self, payment_id: str, outcome: str) -> ConversionResult:
        """Record the outcome once: the same outcome again is a no-op, a different one conflicts."""
        if outcome not in CONVERSION_OUTCOMES:
            raise ValueError(f"outcome must be one of {CONVERSION_OUTCOMES}, not {outcome!r}")
        pt = payment_transactions.c
        with self._write() as conn:
            # Conditional UPDATE: concurrent callers serialise on the row, one of them sets it.
            result = conn.execute(
                update(payment_transactions)
                .where(pt.payment_id == payment_id, pt.conversion.is_(None))
                .values(conversion=outcome, conversion_at=self._now())
            )
            row = conn.execute(
                select(pt.experiment_variant, pt.conversion).where(pt.payment_id == payment_id)
            ).first()
        if row is None:
            raise PaymentNotFound(f"no payment {payment_id!r}")
        if row.conversion != outcome:
            raise ConversionConflict(payment_id, row.conversion, outcome)
        return ConversionResult(row.experiment_variant, outcome, result.rowcount == 1)

    def count_payments(self) -> int:
        """How many payment rows there are."""
        with self._connect() as conn:
            count = conn.execute(select(func.count()).select_from(payment_transactions))
            return int(count.scalar_one())

    def reconcile(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """How many payment rows carry each acknowledged (merchant_id, key); 1 is correct."""
        by_merchant: dict[str, list[str]] = defaultdict(list)
        counts: dict[tuple[str, str], int] = {}
        for merchant_id, key in keys:
            if (merchant_id, key) not in counts:
                counts[merchant_id, key] = 0
                by_merchant[merchant_id].append(key)
        pt = payment_transactions.c
        with self._connect() as conn:
            for merchant_id, merchant_keys in by_merchant.items():
                for start in range(0, len(merchant_keys), _RECONCILE_CHUNK):
                    chunk = merchant_keys[start : start + _RECONCILE_CHUNK]
                    rows = conn.execute(
                        select(pt.idempotency_key, func.count())
                        .where(pt.merchant_id == merchant_id, pt.idempotency_key.in_(chunk))
                        .group_by(pt.idempotency_key)
                    )
                    for key, count in rows:
                        counts[merchant_id, key] = int(count)
        return counts

    # ---- internals ---------------------------------------------------------------------

    def _insert_payment(
        self, conn: Connection, payment: PaymentRecord, now: datetime, phase: SchemaPhase
    ) -> None:
        """INSERT the payment row in the caller's transaction; THE dual-write point."""
        values = _legacy_values(payment, now)
        table: Table = payment_transactions
        if phase != "legacy":
            # Same INSERT, so same transaction as the legacy columns and the idempotency record.
            # The legacy phase names only legacy columns: the new one may not exist.
            table = payment_transactions_fx
            values["fx_rate_snapshot"] = fx_snapshot(payment, "write")
            if phase == "contracted":
                # Dual write off: the snapshot is the representation now; old code that read
                # the fx_* columns is gone (the contract guard waited for that).
                values.update(dict.fromkeys(_LEGACY_FX_FIELDS))
        conn.execute(insert(table).values(values))

    def _create_tables(self, schema: str | None) -> None:
        """Idempotent, and safe when several processes open a fresh database at once."""
        with self._write() as conn:
            if self._dialect == "postgresql":
                # DDL is transactional in PG: whoever waits here then sees the tables.
                conn.execute(select(func.pg_advisory_xact_lock(_PG_DDL_LOCK_KEY)))
                if schema is not None:
                    quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
                    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            # SQLite: BEGIN IMMEDIATE already serialises openers.
            ensure_schema(conn)

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        if self._closed:
            raise LedgerError("the ledger is closed")
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite); commits on normal exit."""
        lock: AbstractContextManager[Any] = (
            self._sqlite_write_lock if self._dialect == "sqlite" else nullcontext()
        )
        with lock, self._connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    def _now(self) -> datetime:
        at = self._clock()
        if at.utcoffset() is None:
            raise ValueError("the ledger clock must return tz-aware datetimes")
        return at.astimezone(UTC)


# ---- engines -------------------------------------------------------------------------------


def _sqlite_engine(url: URL) -> Engine:
    if url.query:
        raise ValueError("a SQLite ledger URL takes no query parameters (?schema= is PG only)")
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        # Each pooled connection would get its own private database: nothing durable.
        raise ValueError("the SQLite ledger URL must name a file: sqlite:///path/to/ledger.db")
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url.set(drivername="sqlite+pysqlite"),
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        json_serializer=canonical_json,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Take transaction control from the sqlite3 module; `_on_begin` emits BEGIN itself.
        dbapi_conn.isolation_level = None
        dbapi_conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _set_wal(dbapi_conn)
        # FULL: fsync the WAL on every commit, so an acknowledged payment survives power loss.
        dbapi_conn.execute("PRAGMA synchronous = FULL")
        # SQLite enforces the idempotency record's foreign key only when asked to.
        dbapi_conn.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front (no deferred-upgrade deadlocks between the
        # duplicate-key losers); readers get a consistent WAL snapshot.
        mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _set_wal(dbapi_conn: sqlite3.Connection) -> None:
    # Switching a fresh file to WAL needs an exclusive lock and can answer "locked" without
    # waiting on the busy handler when several processes open it at once: retry.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = dbapi_conn.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if mode is None or str(mode[0]).lower() != "wal":
            raise RuntimeError(f"SQLite refused WAL journal mode (got {mode!r})")
        return


def _postgresql_engine(url: URL) -> tuple[Engine, str | None]:
    schema = url.query.get("schema")
    if isinstance(schema, tuple):
        raise ValueError("give ?schema= once")
    engine = create_engine(
        url.difference_update_query(["schema"]).set(drivername="postgresql+psycopg"),
        # A restarted or failed-over server leaves dead pooled connections: test on checkout.
        pool_pre_ping=True,
        connect_args={"application_name": "ripcord-ledger", "connect_timeout": 10},
        execution_options={"schema_translate_map": {None: schema}} if schema else {},
        json_serializer=canonical_json,
    )
    return engine, schema


# ---- validation and mapping ----------------------------------------------------------------


def _text(field: str, value: object, *, required: bool = True) -> None:
    if not isinstance(value, str):
        raise InvalidPaymentRecord(field, "must be a string")
    if required and not value:
        raise InvalidPaymentRecord(field, "is required")
    if len(value) > _MAX_ID_LENGTH:
        raise InvalidPaymentRecord(field, f"longer than {_MAX_ID_LENGTH} characters")


def _currency(field: str, value: object) -> None:
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise InvalidPaymentRecord(field, "must be an ISO 4217 alpha code like 'EUR'")


def _amount(field: str, value: object) -> None:
    # bool is an int subclass: True is not an amount.
    if type(value) is not int or not 0 < value <= _INT64_MAX:
        raise InvalidPaymentRecord(field, "must be a positive 64-bit integer of minor units")


def _decimal(field: str, value: object, *, positive: bool) -> None:
    # Plain decimal strings only: no floats, exponents, signs, spaces, NaN or Infinity.
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise InvalidPaymentRecord(field, "must be a plain decimal string like '1.0825'")
    if positive and not value.strip("0."):
        raise InvalidPaymentRecord(field, "must be greater than zero")


def _check_fingerprint(fingerprint: object) -> None:
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError("request_fingerprint must be a lowercase sha256 hex digest")


def _replay(stored: StoredResponse, merchant_id: str, key: str, fingerprint: str) -> RecordOutcome:
    if stored.fingerprint != fingerprint:
        raise IdempotencyConflict(merchant_id, key, stored.payment_id)
    return RecordOutcome(stored.payment_id, stored.response, replayed=True)


def _legacy_values(payment: PaymentRecord, now: datetime) -> dict[str, Any]:
    fx = payment.fx
    return {
        "payment_id": payment.payment_id,
        "idempotency_key": payment.idempotency_key,
        "merchant_id": payment.merchant_id,
        "customer_id": payment.customer_id,
        "amount_minor": payment.amount_minor,
        "currency": payment.currency,
        "status": payment.status,
        "decline_reason": payment.decline_reason,
        "engine": payment.engine,
        "acquirer": payment.acquirer,
        "card_bin": payment.card_bin,
        "card_last4": payment.card_last4,
        "experiment_variant": payment.experiment_variant,
        "flag_version": payment.flag_version,
        "fx_quote_id": fx.quote_id if fx else None,
        "fx_to_currency": fx.to_currency if fx else None,
        "fx_rate": fx.rate if fx else None,
        "fx_markup": fx.markup if fx else None,
        "fx_source": fx.source if fx else None,
        "fx_converted_amount_minor": fx.converted_amount_minor if fx else None,
        "fx_as_of": fx.as_of if fx else None,
        "created_at": now,
    }


_LEGACY_FX_FIELDS = (
    "fx_quote_id",
    "fx_to_currency",
    "fx_rate",
    "fx_markup",
    "fx_source",
    "fx_converted_amount_minor",
    "fx_as_of",
)


def _stored_payment(row: Row[Any], phase: SchemaPhase = "legacy") -> StoredPayment:
    fx = None
    snapshot = None if phase == "legacy" else row.fx_rate_snapshot
    if snapshot is not None:
        # Written by the router (expanded or contracted) or rebuilt by the backfill from the
        # legacy columns: either way it says what the legacy columns say, where they exist.
        fx = fx_from_snapshot(snapshot)
    elif row.fx_quote_id is not None:
        fx = FxQuoteRecord(
            quote_id=row.fx_quote_id,
            to_currency=row.fx_to_currency,
            rate=row.fx_rate,
            markup=row.fx_markup,
            source=row.fx_source,
            converted_amount_minor=int(row.fx_converted_amount_minor),
            as_of=row.fx_as_of,
        )
    payment = PaymentRecord(
        payment_id=row.payment_id,
        idempotency_key=row.idempotency_key,
        merchant_id=row.merchant_id,
        customer_id=row.customer_id,
        amount_minor=int(row.amount_minor),
        currency=row.currency,
        status=row.status,
        engine=row.engine,
        acquirer=row.acquirer,
        card_bin=row.card_bin,
        card_last4=row.card_last4,
        flag_version=int(row.flag_version),
        decline_reason=row.decline_reason,
        experiment_variant=row.experiment_variant,
        fx=fx,
    )
    return StoredPayment(payment, row.created_at, row.conversion or "", row.conversion_at)
