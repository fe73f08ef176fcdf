"""The fx_rate_snapshot backfill over 1,000,000 rows, on SQLite and then PostgreSQL.

Per database: 1,000,000 legacy rows (half with an FX quote, random ids like the router's UUIDs),
`migrate expand`, then the backfill worker (`router.backfill`, always-on gate) in its own
process, as in production: first a 20 s window with batches of 100, then the default settings
(batch 1000, sleep 10 ms) resuming from that checkpoint to completion. This process meanwhile
records payments through the router's ledger (dual write, as a deploy-N router does) at a
steady 200/s, also before and after the backfill: each run's payment p99 is compared with the
p99 without a backfill, same process, same run. Each run's rate is compared with its
sleep-bound ceiling, batch size / (sleep + mean batch time), the batch time being measured by
the worker from the page query to the commit's return. Takes about 3.5 minutes.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.timing import percentile
from flagd.process import REPO
from loadtest.history import seed_history
from router.ledger import Ledger, PaymentRecord, open_database, request_fingerprint

PG_URL = os.environ.get("RIPCORD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROWS = 1_000_000
BATCH = 1000
SLEEP_MS = 10.0
PAYMENTS_PER_S = 200
BASELINE_S = 6.0  # payments without a backfill, before and after it
SMALL_S = 20.0
# The per-batch interference grows with the batch (each of its rows sits on its own page: the
# ids are random), so a window with smaller batches shows the other side of the trade-off.
SMALL = (100, 10.0)
FP = request_fingerprint({"bench": "backfill"})


@dataclass(frozen=True)
class Run:
    """One backfill run and the payments during it."""

    batch: int
    sleep_ms: float
    rows: int
    seconds: float
    batches: int
    batch_s: float  # mean batch time
    p99_ms: float  # payments during the run
    payments: int

    @property
    def rate(self) -> float:
        """Rows per second over the whole run (initial count and final check included)."""
        return self.rows / self.seconds

    @property
    def ceiling(self) -> float:
        """batch size / (sleep + mean batch time)."""
        return self.batch / (self.sleep_ms / 1000 + self.batch_s)


@dataclass(frozen=True)
class Result:
    """One database: payments without a backfill, and the runs."""

    label: str
    p99_without_ms: float
    payments_without: int
    small: Run  # batch 100, sleep 10 ms, for SMALL_S seconds
    default: Run  # batch 1000, sleep 10 ms, to completion


def worker_main(url: str, batch: int, sleep_ms: float, max_s: float = 0.0) -> None:
    """The backfill in this (child) process (stopped after ``max_s`` if > 0); prints JSON."""
    from router.backfill import BackfillSettings, BackfillWorker, BatchDone

    times: list[float] = []
    rows = 0

    def on_batch(done: BatchDone) -> None:
        nonlocal rows
        times.append(done.seconds)
        rows += done.rows

    db = open_database(url)
    stop = threading.Event()
    if max_s:
        threading.Timer(max_s, stop.set).start()
    settings = BackfillSettings(batch_size=batch, sleep_s=sleep_ms / 1000)
    worker = BackfillWorker(db, settings=settings, on_batch=on_batch, stop=stop)
    started = time.perf_counter()
    outcome = worker.run()
    elapsed = time.perf_counter() - started
    stop.set()
    print(
        json.dumps(
            {
                "outcome": outcome,
                "rows": rows,
                "seconds": elapsed,
                "batches": len(times),
                "batch_s": statistics.fmean(times),
            }
        ),
        flush=True,
    )


class Payments:
    """Records payments through the router's ledger at a steady pace on a thread."""

    def __init__(self, url: str) -> None:
        self.ledger = Ledger.open(url)
        self.samples: list[tuple[float, float]] = []  # (start, latency s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rng = random.Random(7)

    def _payment(self, n: int) -> PaymentRecord:
        return PaymentRecord(
            payment_id=f"bench-{secrets.token_hex(12)}",
            idempotency_key=f"bench-{n}",
            merchant_id=f"m-{n % 100}",
            customer_id=f"c-{n % 1000}",
            amount_minor=self._rng.randrange(100, 100_000),
            currency="EUR",
            status="APPROVED",
            engine="new",
            acquirer="acq-eu",
            card_bin="411111",
            card_last4="1111",
            flag_version=1,
        )

    def _run(self) -> None:
        interval = 1 / PAYMENTS_PER_S
        due = time.perf_counter()
        n = 0
        while not self._stop.is_set():
            payment = self._payment(n)
            started = time.perf_counter()
            self.ledger.record_payment(payment, FP, b"r")
            self.samples.append((started, time.perf_counter() - started))
            n += 1
            due += interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                due = time.perf_counter()  # behind: do not burst to catch up

    def start(self) -> None:
        """Begin paying."""
        self._thread.start()

    def stop(self) -> None:
        """Stop and close."""
        self._stop.set()
        self._thread.join(30)
        self.ledger.close()

    def p99_ms(self, windows: list[tuple[float, float]]) -> tuple[float, int]:
        """p99 latency (ms) of the payments that started inside any window, and how many."""
        inside = [lat for t, lat in self.samples if any(a <= t < b for a, b in windows)]
        return 1000 * percentile(inside, 99), len(inside)


def _seed(url: str, dialect: str, schema: str | None) -> None:
    from router.migrate import Migrator

    seed_history(url, ROWS)
    db = open_database(url)
    if dialect == "postgresql":
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("VACUUM ANALYZE {}.payment_transactions").format(
                    sql.Identifier(schema or "")
                )
            )
    Migrator(db).expand()
    db.engine.dispose()


def _backfill(url: str, batch: int, sleep_ms: float, max_s: float = 0.0) -> dict[str, Any]:
    args = f"{url!r}, {batch}, {sleep_ms}, {max_s}"
    code = f"from bench.backfill import worker_main; worker_main({args})"
    child = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    done: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return done


def measure(label: str, url: str, dialect: str, schema: str | None = None) -> Result:
    """Seed, expand; payments before, during a small-batch window, during the rest, after."""
    _seed(url, dialect, schema)
    payments = Payments(url)
    payments.start()
    t0 = time.perf_counter()
    time.sleep(BASELINE_S)
    t1 = time.perf_counter()
    small = _backfill(url, *SMALL, SMALL_S)
    t2 = time.perf_counter()
    default = _backfill(url, BATCH, SLEEP_MS)  # resumes from the small-batch run's checkpoint
    t3 = time.perf_counter()
    time.sleep(BASELINE_S)
    t4 = time.perf_counter()
    payments.stop()
    if default["outcome"] != "complete":
        raise RuntimeError(f"backfill did not complete: {default}")
    without, n_without = payments.p99_ms([(t0, t1), (t3, t4)])
    runs = []
    for done, (a, b), batch, sleep_ms in (
        (small, (t1, t2), *SMALL),
        (default, (t2, t3), BATCH, SLEEP_MS),
    ):
        p99, n = payments.p99_ms([(a, b)])
        runs.append(
            Run(
                batch,
                sleep_ms,
                done["rows"],
                done["seconds"],
                done["batches"],
                done["batch_s"],
                p99,
                n,
            )
        )
    return Result(label, without, n_without, runs[0], runs[1])


def run() -> list[Result]:
    """Both databases."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'payments.db'}"
        results.append(measure("SQLite (WAL, synchronous=FULL)", url, "sqlite"))
    with ExitStack() as stack:
        schema = f"rcbench_{secrets.token_hex(4)}"
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
        stack.callback(admin.close)
        stack.callback(
            lambda: admin.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
        )
        results.append(measure("PostgreSQL", f"{PG_URL}?schema={schema}", "postgresql", schema))
    return results


def report() -> None:
    """Print the table."""
    started = time.perf_counter()
    print(
        f"\n## Backfill of fx_rate_snapshot, {ROWS:,} rows: rate vs the sleep-bound ceiling and"
        f" payment p99 during vs without (worker in its own process, payments at"
        f" {PAYMENTS_PER_S}/s through the ledger in this one)"
    )
    results = run()
    print(
        f"{'database, settings':<46}{'rows/s':>8}{'batch':>9}{'ceiling':>9}{'of ceil':>8}"
        f"{'p99':>9}{'p99 ratio':>10}"
    )
    for r in results:
        print(
            f"{r.label}: payments without a backfill p99 {r.p99_without_ms:.2f} ms"
            f" (n={r.payments_without:,})"
        )
        for name, run_ in (("default", r.default), ("small batches", r.small)):
            settings = f"  {name}: batch {run_.batch}, sleep {run_.sleep_ms:g} ms"
            print(
                f"{settings:<46}{run_.rate:>8,.0f}{1000 * run_.batch_s:>7.1f}ms"
                f"{run_.ceiling:>9,.0f}"
                f"{100 * run_.rate / run_.ceiling:>7.0f}%{run_.p99_ms:>7.2f}ms"
                f"{run_.p99_ms / r.p99_without_ms:>10.2f}"
            )
        print(
            f"  ({r.default.rows:,} rows in {r.default.seconds:.0f} s by the default run, after"
            f" {r.small.rows:,} in the {SMALL_S:g} s small-batch window)"
        )
    print(
        "(target: >= 80% of the ceiling with a p99 ratio <= 1.2;"
        " ceiling = batch / (sleep + mean batch time))"
    )
    print(f"(this benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    report()
