"""FX: static table, circuit breaker, HTTP provider and service, against the real simulator."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from router.fx import (
    DEFAULT_MAX_AGE,
    DEFAULT_TIMEOUT,
    BreakerOpen,
    BreakerState,
    CircuitBreaker,
    FxProvider,
    FxService,
    FxUnavailable,
    ProviderMalformed,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RateTableError,
    StaticRates,
)
from router.fxsim import FxSimulator, simulated_rate
from router.money import AmountError, CurrencyError, convert, exponent

MARKUP = Decimal("0.035")
# Generous where the test is not about the timeout, so a busy CI machine can't flake it.
RELAXED = 2.0


@pytest.fixture(scope="module")
def table() -> StaticRates:
    return StaticRates.load()


@pytest.fixture(scope="module")
def sim(table):
    with FxSimulator(table=table, delay_ms=1000) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _reset(request):
    if "sim" in request.fixturenames:
        request.getfixturevalue("sim").set_mode("ok", delay_ms=1000, error_rate=0.0)


class Decisions(list[tuple[str, str, bool]]):
    def __call__(self, source: str, reason: str, stale: bool) -> None:
        self.append((source, reason, stale))


def fresh_clock(table: StaticRates):
    return lambda: table.as_of + timedelta(hours=1)


def service(table, sim_url, *, timeout=RELAXED, threshold=3, cool_down=60.0, clock=None):
    decisions = Decisions()
    provider = FxProvider(sim_url, timeout=timeout, breaker=CircuitBreaker(threshold, cool_down))
    fx = FxService(table, provider, on_decision=decisions, clock=clock or fresh_clock(table))
    return fx, provider, decisions


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- static table ----------------------------------------------------------------------------


def test_shipped_table(table):
    assert table.version and table.base == "USD"
    assert table.as_of.tzinfo is not None
    assert len(table.currencies) >= 12
    assert {exponent(code) for code in table.currencies} >= {0, 2, 3}
    assert table.max_age == DEFAULT_MAX_AGE == timedelta(hours=30)


def test_cross_rates(table):
    assert table.rate("USD", "EUR") == Decimal("0.8621")
    assert table.rate("EUR", "EUR") == 1
    # 1 / 0.8621 to 10 significant digits, half-up.
    assert table.rate("EUR", "USD") == Decimal("1.159958242")
    assert table.rate("JPY", "KWD") == Decimal("0.001974971046")
    with pytest.raises(KeyError, match="CZK"):
        table.rate("EUR", "CZK")


def test_staleness(table):
    assert not table.is_stale(table.as_of + timedelta(hours=29))
    assert table.is_stale(table.as_of + timedelta(hours=31))
    shorter = StaticRates.load(max_age=timedelta(minutes=5))
    assert shorter.is_stale(shorter.as_of + timedelta(minutes=6))


def table_json(**changes):
    doc = {
        "version": "t1",
        "as_of": "2026-11-27T16:00:00Z",
        "base": "USD",
        "rates": {"EUR": "0.9", "JPY": "150"},
    }
    doc.update(changes)
    return json.dumps(doc)


def test_table_from_json_adds_the_base():
    rates = StaticRates.from_json(table_json())
    assert rates.rate("USD", "JPY") == 150
    assert rates.currencies == {"USD", "EUR", "JPY"}


@pytest.mark.parametrize(
    "changes",
    [
        {"version": ""},
        {"as_of": "2026-11-27T16:00:00"},  # no time zone
        {"as_of": "yesterday"},
        {"base": "XYZ"},
        {"rates": {"EUR": 0.9}},  # a float
        {"rates": {"EUR": "0.9", "HRK": "7.5"}},  # retired
        {"rates": {"EUR": "-0.9"}},
        {"rates": {}},
        {"rates": {"USD": "1.1"}},  # the base must be 1
    ],
)
def test_invalid_tables_are_refused(changes):
    with pytest.raises(RateTableError):
        StaticRates.from_json(table_json(**changes))


def test_missing_field_and_file(tmp_path):
    with pytest.raises(RateTableError, match="version"):
        StaticRates.from_json(
            json.dumps({"as_of": "2026-11-27T16:00:00Z", "base": "USD", "rates": {}})
        )
    with pytest.raises(RateTableError):
        StaticRates.load(tmp_path / "missing.json")


# --- circuit breaker ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures():
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(3, 5.0, clock=clock, on_change=changes.append)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_success()  # resets the count: failures must be consecutive
    assert breaker.consecutive_failures == 0
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "open"
    assert changes == [BreakerState.OPEN]
    assert not breaker.allow()
    clock.now += 4.99
    assert not breaker.allow()


def test_breaker_half_open_probe_closes_on_success():
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(1, 5.0, clock=clock, on_change=changes.append)
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.allow()  # the probe
    assert breaker.state == "half_open"
    assert not breaker.allow()  # only one probe at a time
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow() and breaker.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_breaker_failed_probe_reopens_for_a_full_cool_down():
    clock = Clock()
    breaker = CircuitBreaker(2, 5.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 6.0
    assert breaker.allow()
    breaker.record_failure()  # one failure is enough while half-open
    assert breaker.state == "open"
    clock.now += 4.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_breaker_lost_probe_expires():
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.allow()
    clock.now += 4.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()  # the first probe never reported: let another through


def test_breaker_ignores_late_results_while_open():
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    breaker.record_success()  # a call that started before the breaker opened
    assert breaker.state == "open"
    assert not breaker.allow()


@pytest.mark.parametrize(("threshold", "cool_down"), [(0, 1.0), (1, 0.0)])
def test_breaker_arguments(threshold, cool_down):
    with pytest.raises(ValueError):
        CircuitBreaker(threshold, cool_down)


def test_breaker_is_thread_safe_about_the_probe():
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    clock.now += 5.0
    allowed: list[bool] = []
    threads = [threading.Thread(target=lambda: allowed.append(breaker.allow())) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 1


# --- provider over real HTTP -------------------------------------------------------------------


def test_provider_live_rate(sim, table):
    provider = FxProvider(sim.url, timeout=RELAXED)
    live = provider.quote("EUR", "USD")
    assert live.rate == simulated_rate(table, "EUR", "USD")
    assert live.rate != table.rate("EUR", "USD")  # the simulator drifts visibly
    assert abs(datetime.now(UTC) - live.as_of) < timedelta(seconds=10)
    assert live.latency_s < RELAXED


def test_provider_default_timeout_is_tight():
    assert FxProvider("http://127.0.0.1:1").timeout == DEFAULT_TIMEOUT == 0.150


def test_provider_slow_times_out_within_the_budget(sim):
    sim.set_mode("slow", delay_ms=2000)
    provider = FxProvider(sim.url, timeout=0.15)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        provider.quote("EUR", "USD")
    assert 0.14 <= time.monotonic() - started < 0.4


def test_provider_deadline_bounds_a_trickling_server():
    # Per-recv timeouts alone would wait ~0.1 s per byte forever; the deadline caps the total.
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            for byte in b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n":
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        provider = FxProvider(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.15)
        started = time.monotonic()
        with pytest.raises(ProviderTimeout):
            provider.quote("EUR", "USD")
        assert time.monotonic() - started < 0.4
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=2)


def test_provider_fail_and_gone(sim):
    provider = FxProvider(sim.url, timeout=RELAXED, breaker=CircuitBreaker(100, 60))
    sim.set_mode("fail")
    with pytest.raises(ProviderUnavailable, match="503"):
        provider.quote("EUR", "USD")
    sim.set_mode("gone")
    with pytest.raises(ProviderUnavailable):
        provider.quote("EUR", "USD")
    assert provider.breaker.consecutive_failures == 2


def test_provider_connection_refused():
    provider = FxProvider(f"http://127.0.0.1:{free_port()}", timeout=RELAXED)
    with pytest.raises(ProviderUnavailable):
        provider.quote("EUR", "USD")


def test_provider_every_malformed_answer_is_caught(sim):
    sim.set_mode("malformed")
    provider = FxProvider(sim.url, timeout=RELAXED, breaker=CircuitBreaker(100, 60))
    for _ in range(7):  # the simulator's seven kinds of broken answer, in turn
        with pytest.raises(ProviderMalformed):
            provider.quote("EUR", "USD")


def test_provider_4xx_is_rejected_without_tripping_the_breaker(sim):
    provider = FxProvider(sim.url, timeout=RELAXED, breaker=CircuitBreaker(1, 60))
    with pytest.raises(ProviderRejected):
        provider.quote("EUR", "CZK")
    assert provider.breaker.state == "closed"


def test_provider_breaker_open_makes_no_request(sim):
    provider = FxProvider(sim.url, timeout=RELAXED, breaker=CircuitBreaker(1, 60))
    sim.set_mode("fail")
    with pytest.raises(ProviderUnavailable):
        provider.quote("EUR", "USD")
    before = sim.rate_requests
    with pytest.raises(BreakerOpen):
        provider.quote("EUR", "USD")
    assert sim.rate_requests == before


@pytest.mark.parametrize("url", ["https://fx.example/", "ftp://x", "localhost:8099", "http://"])
def test_provider_url(url):
    with pytest.raises(ValueError):
        FxProvider(url)


# --- service ----------------------------------------------------------------------------------


def test_live_quote(sim, table):
    fx, _, decisions = service(table, sim.url)
    quote = fx.quote("EUR", "JPY", 10_000, MARKUP, kill_switch=False)
    rate = simulated_rate(table, "EUR", "JPY")
    assert (quote.source, quote.reason, quote.rate, quote.markup) == ("live", "ok", rate, MARKUP)
    assert quote.converted_amount_minor == convert(10_000, "EUR", "JPY", rate, MARKUP)
    assert quote.table_version is None and not quote.stale
    assert quote.rounding == "ROUND_HALF_UP"
    assert decisions == [("live", "ok", False)]


def test_quote_is_an_immutable_snapshot(sim, table):
    fx, _, _ = service(table, sim.url)
    first = fx.quote("USD", "KWD", 12_345, MARKUP, kill_switch=False)
    second = fx.quote("USD", "KWD", 12_345, MARKUP, kill_switch=False)
    assert first.quote_id != second.quote_id
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.rate = Decimal(2)
    assert first.applied_rate == first.rate * (1 + MARKUP)


def test_quote_to_proto(table):
    fx = FxService(table, None, clock=fresh_clock(table))
    quote = fx.quote("EUR", "USD", 15_000, Decimal("0.0325"), kill_switch=True)
    message = quote.to_proto()
    assert message.quote_id == quote.quote_id
    assert (message.from_currency, message.to_currency, message.source) == ("EUR", "USD", "static")
    assert Decimal(message.rate) == quote.rate and message.markup == "0.0325"
    assert message.converted_amount_minor == quote.converted_amount_minor
    assert message.as_of.ToDatetime(tzinfo=UTC) == table.as_of


def test_kill_switch_never_touches_the_network(sim, table):
    fx, _, decisions = service(table, sim.url)
    before = sim.state()["requests"]["total"]
    quote = fx.quote("EUR", "USD", 10_000, MARKUP, kill_switch=True)
    assert (quote.source, quote.reason) == ("static", "kill_switch")
    assert quote.table_version == table.version and quote.as_of == table.as_of
    assert quote.rate == table.rate("EUR", "USD")
    assert sim.state()["requests"]["total"] == before
    assert decisions == [("static", "kill_switch", False)]


def test_slow_provider_falls_back_within_the_timeout(sim, table):
    sim.set_mode("slow", delay_ms=2000)
    fx, _, decisions = service(table, sim.url, timeout=0.15)
    started = time.monotonic()
    quote = fx.quote("EUR", "USD", 10_000, MARKUP, kill_switch=False)
    assert time.monotonic() - started < 0.4
    assert (quote.source, quote.reason) == ("static", "timeout")
    assert decisions == [("static", "timeout", False)]


def test_failing_provider_falls_back(sim, table):
    sim.set_mode("fail")
    fx, _, decisions = service(table, sim.url)
    quote = fx.quote("GBP", "BHD", 10_000, MARKUP, kill_switch=False)
    assert (quote.source, quote.reason) == ("static", "error")
    assert quote.converted_amount_minor == convert(
        10_000, "GBP", "BHD", table.rate("GBP", "BHD"), MARKUP
    )
    assert decisions == [("static", "error", False)]


def test_malformed_provider_falls_back(sim, table):
    sim.set_mode("malformed")
    fx, _, decisions = service(table, sim.url, threshold=100)
    for _ in range(7):
        assert fx.quote("EUR", "USD", 10_000, MARKUP, kill_switch=False).source == "static"
    assert decisions == [("static", "malformed", False)] * 7


def test_gone_provider_opens_the_breaker_then_falls_back_instantly(sim, table):
    sim.set_mode("gone")
    fx, provider, decisions = service(table, sim.url, threshold=3)
    for _ in range(3):
        fx.quote("EUR", "USD", 10_000, MARKUP, kill_switch=False)
    assert provider.breaker.state == "open"
    before = sim.rate_requests
    started = time.monotonic()
    for _ in range(20):
        quote = fx.quote("EUR", "USD", 10_000, MARKUP, kill_switch=False)
        assert (quote.source, quote.reason) == ("static", "breaker_open")
    assert (time.monotonic() - started) / 20 < 0.01
    assert sim.rate_requests == before  # not one request reached the provider
    assert decisions == [("static", "error", False)] * 3 + [("static", "breaker_open", False)] * 20


def test_refused_connections_open_the_breaker(table):
    fx, provider, decisions = service(table, f"http://127.0.0.1:{free_port()}", threshold=2)
    for _ in range(3):
        assert fx.quote("EUR", "USD", 10_000, MARKUP, kill_switch=False).source == "static"
    assert provider.breaker.state == "open"
    assert [reason for _, reason, _ in decisions] == ["error", "error", "breaker_open"]


def test_recovers_through_a_half_open_probe(sim, table):
    sim.set_mode("fail")
    fx, provider, _ = service(table, sim.url, threshold=1, cool_down=0.2)
    assert fx.quote("EUR", "USD", 10_000, MARKUP, kill_switch=False).reason == "error"
    sim.set_mode("ok")
    assert fx.quote("EUR", "USD", 10_000, MARKUP, kill_switch=False).reason == "breaker_open"
    time.sleep(0.25)
    assert fx.quote("EUR", "USD", 10_000, MARKUP, kill_switch=False).source == "live"
    assert provider.breaker.state == "closed"


def test_provider_process_that_dies(table):
    # A provider process that dies: connections to its port are refused.
    simulator = FxSimulator(table=table).start()
    fx, _, _ = service(table, simulator.url, threshold=1)
    assert fx.quote("EUR", "USD", 100, MARKUP, kill_switch=False).source == "live"
    simulator.stop()
    assert fx.quote("EUR", "USD", 100, MARKUP, kill_switch=False).reason == "error"
    assert fx.quote("EUR", "USD", 100, MARKUP, kill_switch=False).reason == "breaker_open"


def test_stale_table_serves_but_says_so(table):
    late = table.as_of + table.max_age + timedelta(seconds=1)
    decisions = Decisions()
    fx = FxService(table, None, on_decision=decisions, clock=lambda: late)
    quote = fx.quote("EUR", "USD", 10_000, MARKUP, kill_switch=False)
    assert quote.stale and quote.source == "static"
    assert decisions == [("static", "no_provider", True)]


def test_live_quotes_are_never_stale(sim, table):
    late = table.as_of + timedelta(days=365)
    fx, _, decisions = service(table, sim.url, clock=lambda: late)
    assert not fx.quote("EUR", "USD", 10_000, MARKUP, kill_switch=False).stale
    assert decisions == [("live", "ok", False)]


def test_pair_missing_everywhere_is_unavailable(sim, table):
    fx, _, decisions = service(table, sim.url)
    with pytest.raises(FxUnavailable, match="CZK"):
        fx.quote("EUR", "CZK", 10_000, MARKUP, kill_switch=False)
    with pytest.raises(FxUnavailable):
        fx.quote("EUR", "CZK", 10_000, MARKUP, kill_switch=True)
    assert decisions == [("none", "rejected", False), ("none", "kill_switch", False)]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("EUR", "EUR", 100, MARKUP), CurrencyError),
        (("EUR", "XYZ", 100, MARKUP), CurrencyError),
        (("EUR", "USD", 0, MARKUP), AmountError),
        (("EUR", "USD", 100, 0.035), TypeError),
        (("EUR", "USD", 100.0, MARKUP), TypeError),
        (("EUR", "USD", 100, Decimal("3.5")), ValueError),
    ],
)
def test_invalid_input_fails_before_any_request(sim, table, args, error):
    fx, _, decisions = service(table, sim.url)
    before = sim.rate_requests
    with pytest.raises(error):
        fx.quote(*args, kill_switch=False)
    assert sim.rate_requests == before
    assert decisions == []


def test_unexpected_client_errors_fall_back(table):
    class Broken(FxProvider):
        def quote(self, from_ccy, to_ccy):
            raise RuntimeError("bug")

    decisions = Decisions()
    fx = FxService(
        table, Broken("http://127.0.0.1:1"), on_decision=decisions, clock=fresh_clock(table)
    )
    assert fx.quote("EUR", "USD", 100, MARKUP, kill_switch=False).source == "static"
    assert decisions == [("static", "error", False)]
