"""Synthetic payment history from before the fx_rate_snapshot migration: many legacy-phase
rows in one statement (the backfill bench, the rehearsal). Half of them carry an FX quote, so
the backfill has both kinds of row to fill."""

from __future__ import annotations

from router.ledger import Ledger, open_database

__all__ = ["seed_history"]

COLUMNS = (
    "payment_id, idempotency_key, merchant_id, customer_id, amount_minor, currency, status,"
    " decline_reason, engine, acquirer, card_bin, card_last4, experiment_variant, flag_version,"
    " fx_quote_id, fx_to_currency, fx_rate, fx_markup, fx_source, fx_converted_amount_minor,"
    " fx_as_of, created_at"
)
SQLITE_SEED = f"""
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {{rows}})
INSERT INTO payment_transactions ({COLUMNS})
SELECT lower(hex(randomblob(16))), 'seed-' || i, 'm-' || (i % 100), 'c-' || (i % 1000),
  1000 + i, 'EUR', 'APPROVED', '', 'legacy', 'acq-eu', '411111', '1111', '', 1,
  CASE WHEN i % 2 = 0 THEN 'fxq-' || i END, CASE WHEN i % 2 = 0 THEN 'GBP' END,
  CASE WHEN i % 2 = 0 THEN '0.856700' END, CASE WHEN i % 2 = 0 THEN '0.035' END,
  CASE WHEN i % 2 = 0 THEN 'live' END, CASE WHEN i % 2 = 0 THEN 887 + i END,
  CASE WHEN i % 2 = 0 THEN '2026-03-01 12:00:00.000000' END, '2026-03-01 12:00:00.000000'
FROM n
"""
PG_SEED = f"""
INSERT INTO {{table}} ({COLUMNS})
SELECT md5(i::text), 'seed-' || i, 'm-' || mod(i, 100), 'c-' || mod(i, 1000),
  1000 + i, 'EUR', 'APPROVED', '', 'legacy', 'acq-eu', '411111', '1111', '', 1,
  CASE WHEN mod(i, 2) = 0 THEN 'fxq-' || i END, CASE WHEN mod(i, 2) = 0 THEN 'GBP' END,
  CASE WHEN mod(i, 2) = 0 THEN '0.856700' END, CASE WHEN mod(i, 2) = 0 THEN '0.035' END,
  CASE WHEN mod(i, 2) = 0 THEN 'live' END, CASE WHEN mod(i, 2) = 0 THEN 887 + i END,
  CASE WHEN mod(i, 2) = 0 THEN timestamptz '2026-03-01 12:00:00+00' END,
  timestamptz '2026-03-01 12:00:00+00'
FROM generate_series(1, {{rows}}) AS i
"""


def seed_history(url: str, rows: int) -> None:
    """Create the ledger's tables (legacy phase) at ``url`` if needed and add ``rows`` payments."""
    Ledger.open(url).close()
    db = open_database(url)
    try:
        with db.engine.begin() as conn:
            if db.dialect == "sqlite":
                conn.exec_driver_sql(SQLITE_SEED.format(rows=rows))
            else:
                table = "payment_transactions"
                if db.schema:
                    table = f'"{db.schema}".{table}'
                conn.exec_driver_sql(PG_SEED.format(table=table, rows=rows))
    finally:
        db.engine.dispose()
