"""The drill's arithmetic, the payment mix and the payment book, without Locust."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from loadtest.book import PaymentBook, reconcile
from loadtest.drill import (
    DrillSummary,
    FlipResult,
    Observation,
    Recorder,
    Window,
    analyse_flip,
    percentile,
)
from loadtest.mix import CURRENCIES, FAIL_BIN, decimals, next_payment, parse_rates
from router.ledger import Ledger, PaymentRecord

T_CALL, T_ACK = 100.0, 100.010  # the admin call took 10 ms


def obs(offset_ms: float, engine: str, source: str = "w0/u1", version: int = 8) -> Observation:
    """A call that started ``offset_ms`` after the ack and took 2 ms."""
    start = T_ACK + offset_ms / 1000
    return Observation(start, start + 0.002, engine, version, source)


def steady(from_ms: float, to_ms: float, engine: str, every_ms: float = 1.0) -> list[Observation]:
    n = int((to_ms - from_ms) / every_ms)
    return [obs(from_ms + i * every_ms, engine, f"w{i % 2}/u{i % 7}") for i in range(n)]


def analyse(windows: list[Window], **kw: float) -> FlipResult:
    return analyse_flip(1, 8, T_CALL, T_ACK, windows, min_samples=20, quiet_s=0.1, **kw)


def test_latency_is_the_start_of_the_legacy_only_tail() -> None:
    before = steady(-500, -10, "new")  # before the admin call (t_call = ack - 10 ms)
    late = [obs(1.0, "new"), obs(3.5, "new", "w1/u3")]
    after = [obs(2.0, "legacy"), obs(4.25, "legacy"), *steady(5, 400, "legacy")]
    result = analyse([Window(before + late + after, horizon=T_ACK + 0.5)])
    assert result.converged and result.ok
    assert result.latency_ms == pytest.approx(4.25)  # first start after the last new one
    assert result.last_new_ms == pytest.approx(3.5)
    assert [o.source for o in result.late] == ["w0/u1", "w1/u3"]
    assert result.pre_new == result.pre_total == len(before)
    assert result.nodes == ["w0", "w1"]


def test_no_late_request_gives_the_first_start_after_the_ack() -> None:
    calls = [*steady(-300, -1, "new"), *steady(0.4, 300, "legacy")]
    result = analyse([Window(calls, horizon=T_ACK + 0.4)])
    assert result.converged and result.last_new_ms is None and result.late == []
    assert result.latency_ms == pytest.approx(0.4)


def test_calls_in_flight_hold_back_the_verdict() -> None:
    # Another process still has a call in flight that started 1 ms after the ack: what it
    # will say is unknown, so nothing after it counts yet.
    loaded = Window([*steady(-300, -1, "new"), *steady(0.5, 300, "legacy")], T_ACK + 0.4)
    busy = Window([], horizon=T_ACK + 0.001)
    assert not analyse([loaded, busy]).converged
    assert analyse([loaded, Window([], T_ACK + 0.4)]).converged


def test_too_few_or_too_short_legacy_tails_do_not_converge() -> None:
    few = [*steady(-300, -1, "new"), *steady(1, 10, "legacy", every_ms=1.0)]  # 9 answers
    assert not analyse([Window(few, T_ACK + 0.5)]).converged
    late_new = [*steady(-300, -1, "new"), *steady(1, 300, "legacy"), obs(350, "new")]
    result = analyse([Window(late_new, T_ACK + 0.4)])  # only 50 ms since the last new one
    assert not result.converged and result.last_new_ms == pytest.approx(350)


def test_requests_started_before_the_ack_are_not_counted() -> None:
    # Started 1 ms before the ack, answered by new afterwards: legitimate.
    calls = [*steady(-300, -1, "new"), obs(-0.5, "new"), *steady(0.2, 300, "legacy")]
    result = analyse([Window(calls, T_ACK + 0.4)])
    assert result.late == [] and result.ok


def test_recorder_keeps_answered_calls_and_its_horizon() -> None:
    now = [10.0]
    recorder = Recorder(keep_s=5.0, clock=lambda: now[0])
    a, _ = recorder.begin()
    now[0] = 11.0
    b, _ = recorder.begin()
    recorder.end(a, "new", 7, "w0/u1")
    assert recorder.in_flight == 1
    window = recorder.window(9.0)
    assert window.horizon == 11.0 and [o.engine for o in window.observations] == ["new"]
    recorder.end(b)  # failed: no observation
    now[0] = 17.0
    c, _ = recorder.begin()
    recorder.end(c, "legacy", 8, "w0/u1")  # the one from t=10 is older than keep_s now
    assert [o.start for o in recorder.window(0).observations] == [17.0]
    assert Window.from_wire(recorder.window(0).to_wire()) == recorder.window(0)


def test_summary_gates_on_p99_and_on_failed_flips() -> None:
    flips = [FlipResult(i, 8 + 2 * i, T_CALL, T_ACK, float(i), converged=True, pre_new=5)
             for i in range(1, 101)]  # fmt: skip
    summary = DrillSummary(flips, threshold_ms=99.0, wanted_flips=100)
    assert percentile(summary.latencies, 50) == 50.0 and summary.stat(99) == 99.0
    assert summary.problems == []
    summary.threshold_ms = 98.5
    assert summary.problems == ["p99 99.000 ms exceeds --drill-p99-ms 98.5"]
    summary.threshold_ms = None
    summary.flips[3].converged = False
    summary.flips[4].sources_missing = ["worker 1"]
    summary.wanted_flips = 101
    assert len(summary.problems) == 3
    again = DrillSummary.from_dict(summary.to_dict())
    assert again.latencies == summary.latencies and again.problems == summary.problems
    assert "NOT OK" in summary.text()


def test_the_mix_has_every_kind_of_payment() -> None:
    rng = random.Random(1)
    specs = [next_payment(rng) for _ in range(5000)]
    assert {decimals(s.currency) for s in specs} == {0, 2, 3}
    assert {s.currency for s in specs} == set(CURRENCIES)
    kinds = {
        k: sum(s.kind == k for s in specs) / len(specs) for k in ("approve", "decline", "fail")
    }
    assert (
        kinds["approve"] > 0.9 and 0.04 < kinds["decline"] < 0.08 and 0.005 < kinds["fail"] < 0.02
    )
    assert all(s.card_bin == FAIL_BIN for s in specs if s.kind == "fail")
    dcc = [s for s in specs if s.dcc_opt_in]
    assert 0.15 < len(dcc) / len(specs) < 0.25 and all(s.card_currency != s.currency for s in dcc)
    for s in specs:
        low, high = CURRENCIES[s.currency][2:]
        assert low <= s.amount_minor <= high


def test_book_states_chunks_and_merge() -> None:
    book = PaymentBook()
    book.lose_track(("m-1", "k1"))
    assert book.ack(("m-1", "k1"), "p1") is None  # a retry got the answer
    assert book.ack(("m-1", "k1"), "p1") is None  # a replay, same payment
    assert book.ack(("m-1", "k1"), "p2") is not None  # a replay with another payment
    book.refuse(("m-2", "k2"))
    book.lose_track(("m-3", "k3"))
    book.refuse(("m-1", "k1"))  # an acknowledged payment stays acknowledged
    merged = PaymentBook()
    for chunk in book.chunks(size=1):
        merged.merge(chunk)
    assert merged.acknowledged == {("m-1", "k1"): "p1"}
    assert merged.refused == {("m-2", "k2")} and merged.unknown == {("m-3", "k3")}
    assert len(merged.mismatches) == 1


def _record(ledger: Ledger, payment_id: str, key: str) -> None:
    record = PaymentRecord(
        payment_id=payment_id, idempotency_key=key, merchant_id="m-1", customer_id="c-1",
        amount_minor=1250, currency="EUR", status="APPROVED", engine="new", acquirer="acq-eu",
        card_bin="424242", card_last4="4242", flag_version=3,
    )  # fmt: skip
    ledger.record_payment(record, "0" * 64, b"response")


def test_reconcile_finds_lost_doubled_and_refused_payments(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'payments.db'}"
    with Ledger.open(url) as ledger:
        for n in range(1, 5):
            _record(ledger, f"p{n}", f"k{n}")
    book = PaymentBook()
    for n in (1, 2):
        book.ack(("m-1", f"k{n}"), f"p{n}")
    book.lose_track(("m-1", "k3"))  # recorded after all: fine
    assert reconcile(book, url).ok
    # A second row for k2 (what a broken idempotency check would write), an acknowledged
    # payment that never reached the database, and a refused one that did.
    db = sqlite3.connect(tmp_path / "payments.db")
    columns = [r[1] for r in db.execute("PRAGMA table_info(payment_transactions)")]
    picked = ", ".join("'p2-again'" if c == "payment_id" else c for c in columns)
    db.execute(f"INSERT INTO payment_transactions SELECT {picked} FROM payment_transactions "
               "WHERE payment_id = 'p2'")  # fmt: skip
    db.commit()
    db.close()
    book.ack(("m-1", "k-never"), "p-never")
    book.refuse(("m-1", "k4"))
    result = reconcile(book, url)
    assert not result.ok
    assert result.lost == [("m-1", "k-never")]
    assert result.duplicated == [(("m-1", "k2"), 2)]
    assert result.charged_when_refused == [("m-1", "k4")]
    assert result.unknown_recorded == 1
    assert "FAILED" in result.text()


def test_reconcile_fails_when_the_database_is_unreachable(tmp_path: Path) -> None:
    result = reconcile(PaymentBook(), "postgresql://nobody@127.0.0.1:1/none")
    assert not result.ok and result.error


def test_the_failing_card_share_is_a_parameter() -> None:
    rng = random.Random(2)
    assert not any(next_payment(rng, fail_share=0).kind == "fail" for _ in range(3000))


def test_accept_rates_parse_and_refuse_nonsense() -> None:
    assert parse_rates("control=0.7, treatment=0.82") == {"control": 0.7, "treatment": 0.82}
    for bad in ("control", "control=1.5", "=0.5", "control=x"):
        with pytest.raises(ValueError, match="--accept-rates"):
            parse_rates(bad)
