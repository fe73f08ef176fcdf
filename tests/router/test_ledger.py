"""The payment ledger on real SQLite (WAL) and real PostgreSQL: idempotency, races, kill -9.

PostgreSQL comes from $RIPCORD_TEST_PG_URL (default: the local trust-auth server); each test gets
its own schema, named after this run, and all of them are dropped at the end of the module.
The multi-process tests run this module's `child_main` in subprocesses.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, inspect, text
from sqlalchemy.exc import IntegrityError

from router.ledger import (
    ConversionConflict,
    FxQuoteRecord,
    IdempotencyConflict,
    InvalidPaymentRecord,
    Ledger,
    PaymentNotFound,
    PaymentRecord,
    RecordOutcome,
    acquirer_idempotency_key,
    request_fingerprint,
)
from router.schema import payment_transactions
from tests.conftest import fresh_pg_url

REPO = Path(__file__).resolve().parents[2]

FP_A = request_fingerprint({"amount_minor": 1000, "currency": "EUR"})
FP_B = request_fingerprint({"amount_minor": 2000, "currency": "EUR"})


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def ledger_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, empty ledger on the test's backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger' / 'ledger.db'}"
    request.getfixturevalue("pg_admin")
    return fresh_pg_url()


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """A fresh ledger, closed afterwards."""
    with Ledger.open(ledger_url) as opened:
        yield opened


def payment(**overrides: Any) -> PaymentRecord:
    """A valid payment with test defaults."""
    values: dict[str, Any] = {
        "payment_id": "pay_1",
        "idempotency_key": "key-1",
        "merchant_id": "merchant-1",
        "customer_id": "customer-1",
        "amount_minor": 1000,
        "currency": "EUR",
        "status": "APPROVED",
        "engine": "legacy",
        "acquirer": "acq-eu",
        "card_bin": "411111",
        "card_last4": "1111",
        "flag_version": 7,
    }
    values.update(overrides)
    return PaymentRecord(**values)


def fx_quote(**overrides: Any) -> FxQuoteRecord:
    """A valid live FX quote EUR -> GBP."""
    values: dict[str, Any] = {
        "quote_id": "fxq_1",
        "to_currency": "GBP",
        "rate": "0.856700",
        "markup": "0.035",
        "source": "live",
        "converted_amount_minor": 887,
        "as_of": datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
    }
    values.update(overrides)
    return FxQuoteRecord(**values)


def pg_schema(url: str) -> str:
    """The `?schema=` of a test PG URL."""
    return url.rsplit("schema=", 1)[1]


def spawn_child(*args: str) -> subprocess.Popen[str]:
    """Run `child_main(*args)` in a new Python process with pipes."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tests.router.test_ledger import child_main; child_main()",
            *args,
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def child_main() -> None:
    """Subprocess entry: ``duplicate URL`` (one racing write) or ``writer URL`` (until killed)."""
    mode, url = sys.argv[1:3]
    ledger = Ledger.open(url)
    if mode == "duplicate":
        print("ready", flush=True)
        sys.stdin.readline()
        pid = os.getpid()
        outcome = ledger.record_payment(
            payment(payment_id=f"pay_p{pid}"), FP_A, f"response of {pid}".encode()
        )
        print(json.dumps([outcome.payment_id, outcome.response.hex(), outcome.replayed]))
    elif mode == "writer":
        for i in itertools.count():
            ledger.record_payment(
                payment(payment_id=f"pay_{i}", idempotency_key=f"k{i}"),
                request_fingerprint({"i": i}),
                f"response {i}".encode(),
            )
            print(i, flush=True)  # the acknowledgement: printed only after COMMIT returned
    ledger.close()


def describe_ms(samples_s: list[float]) -> str:
    """p50/p99/max of seconds, in milliseconds."""
    ms = sorted(s * 1000 for s in samples_s)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (
        f"p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms (n={len(ms)})"
    )


# ---- write, replay, conflict -----------------------------------------------------------------


def test_write_then_read_back(ledger: Ledger) -> None:
    recorded = payment(fx=fx_quote(), experiment_variant="treatment")
    outcome = ledger.record_payment(recorded, FP_A, b"response-1")
    assert outcome == RecordOutcome("pay_1", b"response-1", replayed=False)
    stored = ledger.get_payment("pay_1")
    assert stored is not None
    assert stored.payment == recorded
    assert stored.created_at.tzinfo is UTC
    assert (stored.conversion, stored.conversion_at) == ("", None)
    looked_up = ledger.lookup("merchant-1", "key-1")
    assert looked_up is not None
    assert (looked_up.fingerprint, looked_up.payment_id, looked_up.response) == (
        FP_A,
        "pay_1",
        b"response-1",
    )
    assert ledger.count_payments() == 1
    assert ledger.get_payment("pay_missing") is None
    assert ledger.lookup("merchant-1", "key-2") is None


def test_payment_without_fx_quote_reads_back_without_one(ledger: Ledger) -> None:
    ledger.record_payment(
        payment(status="DECLINED", decline_reason="insufficient_funds"), FP_A, b"r"
    )
    stored = ledger.get_payment("pay_1")
    assert stored is not None
    assert stored.payment.fx is None
    assert stored.payment.decline_reason == "insufficient_funds"


def test_same_key_same_request_replays_without_writing(ledger: Ledger) -> None:
    ledger.record_payment(payment(), FP_A, b"first")
    # A retry builds a new payment id and response; the first ones win.
    again = ledger.record_payment(payment(payment_id="pay_2"), FP_A, b"second")
    assert again == RecordOutcome("pay_1", b"first", replayed=True)
    assert ledger.count_payments() == 1
    assert ledger.get_payment("pay_2") is None
    assert ledger.find_replay("merchant-1", "key-1", FP_A) == again


def test_a_stored_decline_replays_as_a_decline(ledger: Ledger) -> None:
    ledger.record_payment(payment(status="DECLINED", decline_reason="do_not_honor"), FP_A, b"no")
    assert ledger.find_replay("merchant-1", "key-1", FP_A) == RecordOutcome("pay_1", b"no", True)


def test_same_key_different_request_conflicts(ledger: Ledger) -> None:
    ledger.record_payment(payment(), FP_A, b"first")
    with pytest.raises(IdempotencyConflict) as raised:
        ledger.record_payment(payment(payment_id="pay_2", amount_minor=2000), FP_B, b"second")
    message = str(raised.value)
    assert "'key-1'" in message and "'merchant-1'" in message and "pay_1" in message
    assert "different request" in message
    assert raised.value.payment_id == "pay_1"
    with pytest.raises(IdempotencyConflict):
        ledger.find_replay("merchant-1", "key-1", FP_B)
    assert ledger.count_payments() == 1
    assert ledger.get_payment("pay_2") is None


def test_find_replay_is_none_for_a_new_key(ledger: Ledger) -> None:
    assert ledger.find_replay("merchant-1", "key-1", FP_A) is None


def test_keys_are_scoped_per_merchant(ledger: Ledger) -> None:
    one = ledger.record_payment(payment(), FP_A, b"one")
    # Another merchant's identical key is a different payment, even with another request.
    two = ledger.record_payment(payment(payment_id="pay_2", merchant_id="merchant-2"), FP_B, b"two")
    assert (one.replayed, two.replayed) == (False, False)
    assert ledger.count_payments() == 2
    assert ledger.reconcile([("merchant-1", "key-1"), ("merchant-2", "key-1")]) == {
        ("merchant-1", "key-1"): 1,
        ("merchant-2", "key-1"): 1,
    }


def test_reusing_a_payment_id_under_another_key_is_refused(ledger: Ledger) -> None:
    ledger.record_payment(payment(), FP_A, b"one")
    with pytest.raises(Exception, match="already recorded under another key"):
        ledger.record_payment(payment(idempotency_key="key-2"), FP_A, b"two")
    assert ledger.count_payments() == 1
    assert ledger.lookup("merchant-1", "key-2") is None


def test_fingerprint_and_response_are_checked(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="sha256"):
        ledger.record_payment(payment(), "not-a-digest", b"r")
    with pytest.raises(ValueError, match="non-empty bytes"):
        ledger.record_payment(payment(), FP_A, b"")
    assert ledger.count_payments() == 0


def test_request_fingerprint_is_canonical() -> None:
    assert request_fingerprint({"a": 1, "b": "x"}) == request_fingerprint({"b": "x", "a": 1})
    assert request_fingerprint({"a": 1}) != request_fingerprint({"a": 2})
    assert len(request_fingerprint({})) == 64


def test_acquirer_key_is_stable_per_attempt_and_unambiguous() -> None:
    key = acquirer_idempotency_key("m", "k")
    assert key == acquirer_idempotency_key("m", "k", 0)
    assert key != acquirer_idempotency_key("m", "k", 1)
    assert acquirer_idempotency_key("ab", "c") != acquirer_idempotency_key("a", "bc")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from([FP_A, FP_B])), max_size=8))
def test_behaves_like_a_dict_of_first_requests(
    ledger: Ledger, requests: list[tuple[str, str]]
) -> None:
    merchant = f"m-{secrets.token_hex(6)}"  # each example gets its own key space
    first: dict[str, tuple[str, str]] = {}  # key -> (fingerprint, payment_id)
    for n, (key, fp) in enumerate(requests):
        attempt = payment(payment_id=f"{merchant}-{n}", merchant_id=merchant, idempotency_key=key)
        if key in first and first[key][0] != fp:
            with pytest.raises(IdempotencyConflict):
                ledger.record_payment(attempt, fp, f"r{n}".encode())
            continue
        outcome = ledger.record_payment(attempt, fp, f"r{n}".encode())
        if key in first:
            assert outcome.replayed and outcome.payment_id == first[key][1]
        else:
            assert not outcome.replayed
            first[key] = (fp, attempt.payment_id)
    assert ledger.reconcile((merchant, k) for k in "abc") == {
        (merchant, k): int(k in first) for k in "abc"
    }


# ---- concurrent duplicates -------------------------------------------------------------------


def test_eight_threads_same_key_one_row_same_response(ledger: Ledger) -> None:
    barrier = threading.Barrier(8)
    outcomes: list[RecordOutcome] = []
    errors: list[BaseException] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            outcomes.append(
                ledger.record_payment(payment(payment_id=f"pay_t{i}"), FP_A, f"thread {i}".encode())
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(outcomes) == 8
    assert len({(o.payment_id, o.response) for o in outcomes}) == 1
    assert sorted(o.replayed for o in outcomes) == [False] + [True] * 7
    winner = outcomes[0].payment_id
    assert outcomes[0].response == f"thread {winner.removeprefix('pay_t')}".encode()
    assert ledger.count_payments() == 1
    assert ledger.get_payment(winner) is not None


def test_concurrent_different_requests_under_one_key(ledger: Ledger) -> None:
    barrier = threading.Barrier(8)
    results: list[tuple[str, RecordOutcome | IdempotencyConflict]] = []

    def attempt(i: int) -> None:
        fp = FP_A if i % 2 else FP_B
        barrier.wait()
        try:
            outcome = ledger.record_payment(payment(payment_id=f"pay_t{i}"), fp, b"%d" % i)
            results.append((fp, outcome))
        except IdempotencyConflict as exc:
            results.append((fp, exc))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 8
    assert ledger.count_payments() == 1
    stored = ledger.lookup("merchant-1", "key-1")
    assert stored is not None
    for fp, result in results:
        if fp == stored.fingerprint:
            assert isinstance(result, RecordOutcome)
            assert (result.payment_id, result.response) == (stored.payment_id, stored.response)
        else:
            assert isinstance(result, IdempotencyConflict)


def test_threads_racing_on_many_keys_record_each_exactly_once(ledger: Ledger) -> None:
    keys = [f"k{n}" for n in range(30)]
    barrier = threading.Barrier(6)
    seen: dict[str, set[str]] = {k: set() for k in keys}
    lock = threading.Lock()

    def worker(t: int) -> None:
        order = keys[:]
        random.Random(t).shuffle(order)
        barrier.wait()
        for key in order:
            out = ledger.record_payment(
                payment(payment_id=f"pay_{key}_{t}", idempotency_key=key), FP_A, key.encode()
            )
            with lock:
                seen[key].add(out.payment_id)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(len(ids) == 1 for ids in seen.values()), seen
    assert ledger.count_payments() == len(keys)
    assert set(ledger.reconcile(("merchant-1", k) for k in keys).values()) == {1}


@pytest.mark.timeout(60)
def test_three_processes_same_key_one_row_same_response(ledger: Ledger, ledger_url: str) -> None:
    children = [spawn_child("duplicate", ledger_url) for _ in range(3)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdin is not None
            line = child.stdout.readline().strip()
            assert line == "ready", child.stderr.read() if child.stderr else ""
        for child in children:  # all opened their ledgers; release them together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            assert child.stdout is not None and child.stderr is not None
            out = child.stdout.read()  # the buffered file readline used (see the sigkill test)
            assert child.wait(30) == 0, child.stderr.read()
            results.append(json.loads(out))
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert len({(pid, response) for pid, response, _ in results}) == 1
    assert sorted(replayed for _, _, replayed in results) == [False, True, True]
    payment_id, response_hex, _ = results[0]
    assert bytes.fromhex(response_hex) == f"response of {payment_id.removeprefix('pay_p')}".encode()
    assert ledger.count_payments() == 1


# ---- durability ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("attempt", [1, 2])
def test_sigkill_of_a_writer_loses_no_acknowledged_payment(ledger_url: str, attempt: int) -> None:
    Ledger.open(ledger_url).close()  # create the tables before the clock starts
    child = spawn_child("writer", ledger_url)
    assert child.stdout is not None
    try:
        first = child.stdout.readline()
        assert first, child.stderr.read() if child.stderr else ""
        time.sleep(random.uniform(0.05, 0.3))
        child.send_signal(signal.SIGKILL)
        # Read through the same buffered file as readline (communicate() reads the raw pipe and
        # would skip lines readline already buffered); a killed child means EOF soon.
        rest = child.stdout.read()
        child.wait(10)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    acknowledged = [int(line) for line in (first + rest).splitlines()]
    assert acknowledged == list(range(len(acknowledged)))

    with Ledger.open(ledger_url) as ledger:
        keys = [("merchant-1", f"k{i}") for i in range(len(acknowledged) + 2)]
        counts = ledger.reconcile(keys)
        for i in acknowledged:
            assert counts["merchant-1", f"k{i}"] == 1, f"acknowledged payment k{i} lost"
            stored = ledger.lookup("merchant-1", f"k{i}")
            assert stored is not None and stored.response == f"response {i}".encode()
        # At most the one payment whose acknowledgement the kill cut off is extra, and it is
        # complete (payment row and idempotency record), never half written.
        extra = ledger.count_payments() - len(acknowledged)
        assert extra in (0, 1)
        n = len(acknowledged)
        assert counts["merchant-1", f"k{n}"] == extra
        assert (ledger.lookup("merchant-1", f"k{n}") is not None) == bool(extra)
        assert counts["merchant-1", f"k{n + 1}"] == 0
        # The ledger keeps working, and a client retry of the cut-off payment replays or writes.
        retry = ledger.record_payment(
            payment(payment_id=f"pay_retry_{n}", idempotency_key=f"k{n}"),
            request_fingerprint({"i": n}),
            f"response {n}".encode(),
        )
        assert retry.replayed == bool(extra)
        print(f"\n{ledger.dialect}: killed after {n} acknowledged payments, {extra} unacknowledged")


def test_commit_cost_per_payment(ledger: Ledger, backend: str) -> None:
    for i in range(5):  # warm the pool and statement caches
        ledger.record_payment(payment(payment_id=f"w{i}", idempotency_key=f"w{i}"), FP_A, b"w")
    costs = []
    for i in range(200):
        started = time.perf_counter()
        ledger.record_payment(
            payment(payment_id=f"p{i}", idempotency_key=f"p{i}", fx=fx_quote()), FP_A, b"x" * 200
        )
        costs.append(time.perf_counter() - started)
    print(
        f"\n{backend}: record_payment (2 rows, 1 durable commit), sequential: {describe_ms(costs)}"
    )
    assert ledger.count_payments() == 205


# ---- card data never reaches storage ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("card_last4", "41111"),
        ("card_last4", "4111111111111111"),
        ("card_last4", "111"),
        ("card_last4", "11a1"),
        ("card_last4", "\uff11" * 4),  # fullwidth digits are not ASCII digits
        ("card_bin", "411111111"),
        ("card_bin", "4111111111111111"),
        ("card_bin", "41111"),
        ("card_bin", "4111-11"),
    ],
)
def test_pan_looking_card_fields_are_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidPaymentRecord) as raised:
        payment(**{field: value})
    assert raised.value.field == field


def test_database_refuses_a_pan_even_past_the_record_type(ledger: Ledger) -> None:
    row = {
        "payment_id": "pay_raw",
        "idempotency_key": "k",
        "merchant_id": "m",
        "customer_id": "c",
        "amount_minor": 100,
        "currency": "EUR",
        "status": "APPROVED",
        "decline_reason": "",
        "engine": "legacy",
        "acquirer": "a",
        "experiment_variant": "",
        "flag_version": 1,
        "created_at": datetime.now(UTC),
    }
    for card in ({"card_bin": "411111", "card_last4": "4111111111111111"},
                 {"card_bin": "4111111111111111", "card_last4": "1111"}):  # fmt: skip
        with pytest.raises(IntegrityError), ledger.engine.begin() as conn:
            conn.execute(insert(payment_transactions).values(**row, **card))
    assert ledger.count_payments() == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"amount_minor": 0}, "amount_minor"),
        ({"amount_minor": -5}, "amount_minor"),
        ({"amount_minor": 2**63}, "amount_minor"),
        ({"amount_minor": True}, "amount_minor"),
        ({"amount_minor": 10.0}, "amount_minor"),
        ({"currency": "eur"}, "currency"),
        ({"currency": "EURO"}, "currency"),
        ({"status": "OK"}, "status"),
        ({"engine": "v2"}, "engine"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 256}, "idempotency_key"),
        ({"merchant_id": ""}, "merchant_id"),
        ({"flag_version": -1}, "flag_version"),
    ],
)
def test_malformed_payments_are_refused(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPaymentRecord) as raised:
        payment(**overrides)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"rate": 0.8567}, "fx.rate"),
        ({"rate": "1e-3"}, "fx.rate"),
        ({"rate": "NaN"}, "fx.rate"),
        ({"rate": "-0.5"}, "fx.rate"),
        ({"rate": "0.000"}, "fx.rate"),
        ({"markup": " 0.03"}, "fx.markup"),
        ({"source": "cache"}, "fx.source"),
        ({"converted_amount_minor": 0}, "fx.converted_amount_minor"),
        ({"as_of": datetime(2026, 1, 1)}, "fx.as_of"),
    ],
)
def test_malformed_fx_quotes_are_refused(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPaymentRecord) as raised:
        fx_quote(**overrides)
    assert raised.value.field == field


# ---- conversions -----------------------------------------------------------------------------


def test_record_conversion_once_then_idempotent_then_conflict(ledger: Ledger) -> None:
    ledger.record_payment(payment(experiment_variant="treatment", fx=fx_quote()), FP_A, b"r")
    first = ledger.record_conversion("pay_1", "ACCEPTED")
    assert (first.variant, first.outcome, first.newly_recorded) == ("treatment", "ACCEPTED", True)
    again = ledger.record_conversion("pay_1", "ACCEPTED")
    assert (again.variant, again.outcome, again.newly_recorded) == ("treatment", "ACCEPTED", False)
    with pytest.raises(ConversionConflict, match="ACCEPTED"):
        ledger.record_conversion("pay_1", "ABANDONED")
    stored = ledger.get_payment("pay_1")
    assert stored is not None
    assert stored.conversion == "ACCEPTED" and stored.conversion_at is not None


def test_record_conversion_unknown_payment_and_bad_outcome(ledger: Ledger) -> None:
    with pytest.raises(PaymentNotFound):
        ledger.record_conversion("pay_missing", "ACCEPTED")
    ledger.record_payment(payment(), FP_A, b"r")
    with pytest.raises(ValueError, match="outcome"):
        ledger.record_conversion("pay_1", "MAYBE")
    result = ledger.record_conversion("pay_1", "ABANDONED")
    assert (result.variant, result.newly_recorded) == ("", True)


def test_concurrent_conversions_record_one_outcome(ledger: Ledger) -> None:
    ledger.record_payment(payment(experiment_variant="control"), FP_A, b"r")
    barrier = threading.Barrier(6)
    results: list[str] = []

    def convert(i: int) -> None:
        outcome = "ACCEPTED" if i % 2 else "ABANDONED"
        barrier.wait()
        try:
            results.append(
                "new" if ledger.record_conversion("pay_1", outcome).newly_recorded else "same"
            )
        except ConversionConflict:
            results.append("conflict")

    threads = [threading.Thread(target=convert, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == ["conflict"] * 3 + ["new"] + ["same"] * 2


# ---- reconcile, schema, opening --------------------------------------------------------------


def test_reconcile_reports_missing_and_present_keys(ledger: Ledger) -> None:
    for n in range(3):
        ledger.record_payment(payment(payment_id=f"p{n}", idempotency_key=f"k{n}"), FP_A, b"r")
    keys = [("merchant-1", f"k{n}") for n in range(1200)]  # spans several IN chunks
    counts = ledger.reconcile(keys + keys[:2])
    assert len(counts) == 1200
    assert {k for k, c in counts.items() if c == 1} == {("merchant-1", f"k{n}") for n in range(3)}
    assert {c for k, c in counts.items() if k[1] not in ("k0", "k1", "k2")} == {0}


def test_schema_is_legacy_without_fx_rate_snapshot(ledger: Ledger, ledger_url: str) -> None:
    assert ledger.schema_phase() == "legacy"
    schema = pg_schema(ledger_url) if ledger.dialect == "postgresql" else None
    columns = {
        c["name"] for c in inspect(ledger.engine).get_columns("payment_transactions", schema)
    }
    assert "fx_rate_snapshot" not in columns
    assert {"fx_quote_id", "fx_rate", "fx_markup", "fx_source", "card_last4"} <= columns
    assert "card_number" not in columns and "pan" not in columns


def test_legacy_code_works_on_the_expanded_schema(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as ledger:
        ledger.record_payment(payment(fx=fx_quote()), FP_A, b"before")
        table = "payment_transactions"
        if ledger.dialect == "postgresql":
            table = f'"{pg_schema(ledger_url)}".payment_transactions'
        with ledger.engine.begin() as conn:  # what the migration's expand phase will do
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN fx_rate_snapshot TEXT NULL"))
    with Ledger.open(ledger_url) as ledger:
        assert ledger.schema_phase() == "legacy"
        ledger.record_payment(payment(payment_id="pay_2", idempotency_key="key-2"), FP_A, b"after")
        assert ledger.record_payment(payment(payment_id="x"), FP_A, b"x").replayed
        old, new = ledger.get_payment("pay_1"), ledger.get_payment("pay_2")
        assert old is not None and old.payment.fx == fx_quote()
        assert new is not None and new.payment.fx is None
        with ledger.engine.connect() as conn:
            snapshots = conn.execute(text(f"SELECT fx_rate_snapshot FROM {table}")).all()
        assert snapshots == [(None,), (None,)]


def test_sqlite_pragmas(tmp_path: Path) -> None:
    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as ledger, ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_reopening_keeps_payments(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as ledger:
        ledger.record_payment(payment(), FP_A, b"r")
    with Ledger.open(ledger_url) as ledger:
        assert ledger.count_payments() == 1
        assert ledger.find_replay("merchant-1", "key-1", FP_A) == RecordOutcome("pay_1", b"r", True)


def test_closed_ledger_refuses_work(ledger: Ledger) -> None:
    ledger.close()
    with pytest.raises(Exception, match="closed"):
        ledger.count_payments()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///x.db?schema=s",
        "mysql://u@h/db",
        "not a url",
    ],
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        Ledger.open(url)


def test_naive_clock_is_refused(tmp_path: Path) -> None:
    with Ledger.open(
        f"sqlite:///{tmp_path / 'l.db'}", clock=lambda: datetime(2026, 1, 1)
    ) as ledger:
        with pytest.raises(ValueError, match="tz-aware"):
            ledger.record_payment(payment(), FP_A, b"r")
        assert ledger.count_payments() == 0
