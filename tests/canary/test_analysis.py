"""The AnalysisRun (spec 4-7, 12.4): scheduling, counters, limits, phases, dryRun, termination.

Driven by recorded Prometheus 2.42 answers through the real client and a simulated clock, so
the minutes of a real run take milliseconds; the dead-Prometheus cases use a real closed port.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from canary.analysis import (
    AnalysisRun,
    AnalysisRunner,
    Measurement,
    Phase,
    apply_measurement,
    apply_measurements,
    due_metrics,
    exit_code,
    next_due,
    run_analysis,
    start_analysis,
    start_run,
    terminate_run,
)
from canary.prometheus import PrometheusClient
from canary.templates import AnalysisTemplate, prepare_run
from flagd.process import free_port
from tests.canary.replay import FakeClock, Scripted, Step, client, spec_template, template

HASH = {"canary-hash": "canaryhash"}
ERR, P99 = "status!=", "histogram_quantile"  # route keys: the spec's two queries (12.3)


def run_spec(
    routes: Mapping[str, Sequence[Step]],
    args: Mapping[str, str] = HASH,
    templates: AnalysisTemplate | Sequence[AnalysisTemplate] | None = None,
    **kwargs: Any,
) -> tuple[AnalysisRun, FakeClock, Scripted]:
    """Run the spec's template (or ``templates``) on simulated time against ``routes``."""
    clock, transport = FakeClock(), Scripted(routes)
    run = run_analysis(templates or spec_template(), args, client(transport), clock=clock,
                       sleep=clock.sleep, **kwargs)  # fmt: skip
    return run, clock, transport


def times(run: AnalysisRun, name: str, clock: FakeClock) -> list[float]:
    """Start times of a metric's measurements, relative to the run start."""
    return [m.started_at - clock.start for m in run.result(name).measurements]


def phases(run: AnalysisRun, name: str) -> list[Phase]:
    """Phases of a metric's measurements."""
    return [m.phase for m in run.result(name).measurements]


# ----------------------------------------------------------------------------- 12.4 walk-throughs


def test_healthy_canary_passes_after_five_minutes() -> None:
    seen: list[tuple[str, Phase]] = []
    run, clock, transport = run_spec(
        {ERR: ["spec_good_stable_error_rate"], P99: ["spec_good_stable_p99"]},
        on_measurement=lambda name, m, _run: seen.append((name, m.phase)),
    )
    assert run.phase == Phase.SUCCESSFUL and run.message == ""
    assert run.completed_at == clock.start + 240
    for name, value in (("error-rate", "[0.001962264150943396]"),
                        ("p99-latency", "[0.09920313527626906]")):  # fmt: skip
        result = run.result(name)
        assert result.phase == Phase.SUCCESSFUL
        assert (result.count, result.successful, result.failed, result.error) == (5, 5, 0, 0)
        assert times(run, name, clock) == [0, 60, 120, 180, 240]  # interval 1m from the finish
        assert {m.value for m in result.measurements} == {value}
        assert (
            'rollouts_pod_template_hash="canaryhash"' in result.metadata["ResolvedPrometheusQuery"]
        )
    assert len(seen) == 10 and {p for _, p in seen} == {Phase.SUCCESSFUL}
    assert transport.calls(ERR) == transport.calls(P99) == 5
    assert run.run_summary.count == run.run_summary.successful == 2
    assert exit_code(run.phase) == 0


def test_bad_canary_fails_on_the_first_measurement() -> None:
    run, clock, transport = run_spec(
        {ERR: ["spec_bad_canary_error_rate"], P99: ["spec_bad_canary_p99"]}
    )
    assert run.phase == Phase.FAILED and clock.elapsed == 0  # no waiting for count (5.5)
    assert run.message == 'Metric "error-rate" assessed Failed due to failed (1) > failureLimit (0)'
    # Both measurements of that pass count: p99's own first one was Failed too (12.4).
    assert run.result("p99-latency").phase == Phase.FAILED
    assert transport.calls(ERR) == transport.calls(P99) == 1
    assert run.run_summary.failed == 2 and exit_code(run.phase) == 1


def test_one_failing_metric_stops_the_others_which_report_successful() -> None:
    run, clock, _ = run_spec(
        {
            ERR: ["spec_good_stable_error_rate"] * 2 + ["real_error_rate_bad"],
            P99: ["spec_good_stable_p99"],
        }
    )
    assert run.phase == Phase.FAILED and clock.elapsed == 120
    p99 = run.result("p99-latency")
    assert p99.phase == Phase.SUCCESSFUL and p99.count == 3  # terminated before its count
    assert run.result("error-rate").measurements[-1].value == "[0.08536585365853658]"


def test_sdk_default_buckets_fail_the_p99_gate() -> None:
    run, _, _ = run_spec({ERR: ["spec_good_stable_error_rate"], P99: ["spec_default_buckets_p99"]})
    assert run.phase == Phase.FAILED
    assert run.message.startswith('Metric "p99-latency" assessed Failed')


@pytest.mark.parametrize(
    "no_traffic",
    [("real_error_rate_nan", "real_p99_nan"),  # zero requests in the window: [NaN]
     ("real_error_rate_no_data", "real_p99_nan")],  # no series at all: []
)  # fmt: skip
def test_no_traffic_twice_is_inconclusive(no_traffic: tuple[str, str]) -> None:
    error_rate, p99 = no_traffic
    run, clock, _ = run_spec({ERR: [error_rate], P99: [p99]})
    assert run.phase == Phase.INCONCLUSIVE and clock.elapsed == 60
    assert run.message == (
        'Metric "error-rate" assessed Inconclusive due to inconclusive (2) > inconclusiveLimit (1)'
    )
    assert phases(run, "error-rate") == [Phase.INCONCLUSIVE] * 2
    assert exit_code(run.phase) == 3


def test_one_quiet_window_is_tolerated_and_counts_towards_count() -> None:
    run, clock, _ = run_spec(
        {ERR: ["real_error_rate_nan", "real_error_rate_ok"], P99: ["real_p99_nan", "real_p99_ok"]}
    )
    assert run.phase == Phase.SUCCESSFUL and clock.elapsed == 240
    result = run.result("error-rate")
    assert (result.count, result.inconclusive, result.successful) == (5, 1, 4)
    assert result.measurements[0].value == "[NaN]" and result.measurements[1].value == "[0]"


def test_dead_prometheus_is_an_error_after_the_limit_never_a_pass() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # a real closed port: connection refused
    clock = FakeClock()
    run = run_analysis(spec_template(), {**HASH, "prometheus-address": dead},
                       PrometheusClient(env={}), clock=clock, sleep=clock.sleep)  # fmt: skip
    # consecutiveErrorLimit 2: Error on the 3rd error, retried every 10 s (12.4).
    assert run.phase == Phase.ERROR and clock.elapsed == 20
    refused = f'Post "{dead}/api/v1/query": connect: connection refused'
    assert run.message == (
        'Metric "error-rate" assessed Error due to consecutiveErrors (3) > '
        f'consecutiveErrorLimit (2): "Error Message: {refused}"'
    )
    for name in ("error-rate", "p99-latency"):
        result = run.result(name)
        assert result.phase == Phase.ERROR and result.count == 0
        assert (result.error, result.consecutive_error) == (3, 3)
        assert times(run, name, clock) == [0, 10, 20]
        assert {m.message for m in result.measurements} == {refused}
    assert exit_code(run.phase) == 2


def test_default_consecutive_error_limit_errors_on_the_fifth() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    t = template({"name": "m", "interval": "1m", "count": 3,
                  "provider": {"prometheus": {"address": dead, "query": "up"}}})  # fmt: skip
    clock = FakeClock()
    run = run_analysis(t, None, PrometheusClient(env={}), clock=clock, sleep=clock.sleep)
    assert run.phase == Phase.ERROR and clock.elapsed == 40  # ~40-50 s in the controller (5.5)
    assert "consecutiveErrors (5) > consecutiveErrorLimit (4)" in run.message


def test_prometheus_error_answers_are_errors_too() -> None:
    run, clock, _ = run_spec({ERR: ["spec_bad_data_400"], P99: ["real_execution_422"]})
    assert run.phase == Phase.ERROR and clock.elapsed == 20
    assert "bad_data: invalid parameter" in run.result("error-rate").message
    assert "execution: found duplicate series" in run.result("p99-latency").message


def test_errors_reset_on_a_value_and_never_count_towards_count() -> None:
    t = template({"name": "m", "interval": "1m", "count": 2, "consecutiveErrorLimit": 2,
                  "successCondition": "result[0] < 1"})  # fmt: skip
    steps: list[Step] = [ConnectionRefusedError(), ConnectionRefusedError(), "real_error_rate_ok",
                         ConnectionRefusedError(), "real_error_rate_ok"]  # fmt: skip
    run, clock, _ = run_spec({"m": steps}, {}, t)
    result = run.result("m")
    assert run.phase == Phase.SUCCESSFUL
    assert (result.count, result.error, result.consecutive_error) == (2, 3, 0)
    assert times(run, "m", clock) == [0, 10, 20, 80, 90]  # 10 s after an Error, else interval


def test_index_into_no_data_is_an_error_each_time() -> None:
    t = template({"name": "m", "interval": "1m", "count": 5,
                  "successCondition": "result[0] <= 0.01"})  # fmt: skip
    run, clock, _ = run_spec({"m": ["real_empty_vector"]}, {}, t)
    assert run.phase == Phase.ERROR and clock.elapsed == 40
    last = run.result("m").measurements[-1]
    assert last.value == "[]" and last.message == (
        'could not evaluate successCondition "result[0] <= 0.01": metric result is nil or empty: '
        "no data returned from the metric provider"
    )


def test_nan_with_only_a_success_condition_fails() -> None:
    t = template({"name": "m", "successCondition": "result[0] <= 0.01"})
    run, _, _ = run_spec({"m": ["real_error_rate_nan"]}, {}, t)
    assert run.phase == Phase.FAILED and phases(run, "m") == [Phase.FAILED]
    t = template({"name": "m", "successCondition": "isNaN(result[0]) || result[0] <= 0.01"})
    assert run_spec({"m": ["real_error_rate_nan"]}, {}, t)[0].phase == Phase.SUCCESSFUL


def test_an_unsupported_result_type_is_an_error() -> None:
    t = template({"name": "m", "consecutiveErrorLimit": 0})
    run, _, _ = run_spec({"m": ["real_string"]}, {}, t)
    assert run.phase == Phase.ERROR
    assert run.result("m").message == "Prometheus metric type not supported"


# ----------------------------------------------------------------------------- limits (5.5)


@pytest.mark.parametrize(
    ("limit", "script", "phase", "measured"),
    [(1, ["bad", "ok", "ok", "ok", "ok"], Phase.SUCCESSFUL, 5),  # one flaky minute tolerated
     (1, ["bad", "ok", "bad"], Phase.FAILED, 3),  # the second failure exceeds failureLimit 1
     (2, ["bad", "bad", "bad"], Phase.FAILED, 3),  # failureLimit 2 fails on the third
     (0, ["ok", "bad"], Phase.FAILED, 2)],
)  # fmt: skip
def test_failure_limit_is_strictly_greater(
    limit: int, script: list[str], phase: Phase, measured: int
) -> None:
    t = template({"name": "m", "interval": "1m", "count": 5, "failureLimit": limit,
                  "successCondition": "result[0] <= 0.01"})  # fmt: skip
    steps: list[Step] = [f"real_error_rate_{s}" for s in script]
    run, _, _ = run_spec({"m": steps}, {}, t)
    assert run.phase == phase and len(run.result("m").measurements) == measured


def test_inconclusive_limit() -> None:
    t = template({"name": "m", "interval": "1m", "count": 4, "inconclusiveLimit": 1,
                  "successCondition": "result[0] < 1", "failureCondition": "result[0] >= 1"})  # fmt: skip
    steps: list[Step] = ["real_error_rate_nan", "real_error_rate_ok", "real_error_rate_nan"]
    run, clock, _ = run_spec({"m": steps}, {}, t)
    assert run.phase == Phase.INCONCLUSIVE and clock.elapsed == 120
    assert "inconclusive (2) > inconclusiveLimit (1)" in run.message


@pytest.mark.parametrize(
    ("failure_limit", "script", "phase", "measured"),
    [(-1, ["bad", "ok", "ok", "ok"], Phase.SUCCESSFUL, 4),  # 3 in a row: done early
     (-1, ["bad", "ok", "bad", "ok", "bad", "ok"], Phase.FAILED, 6),  # count, no streak
     (3, ["bad", "ok", "bad", "ok", "bad", "ok"], Phase.INCONCLUSIVE, 6)],
)  # fmt: skip
def test_consecutive_success_limit(
    failure_limit: int, script: list[str], phase: Phase, measured: int
) -> None:
    t = template({"name": "m", "interval": "1m", "count": 6, "failureLimit": failure_limit,
                  "consecutiveSuccessLimit": 3, "successCondition": "result[0] <= 0.01"})  # fmt: skip
    steps: list[Step] = [f"real_error_rate_{s}" for s in script]
    run, _, _ = run_spec({"m": steps}, {}, t)
    assert run.phase == phase and len(run.result("m").measurements) == measured


def test_worst_phase_wins_when_metrics_complete_together() -> None:
    failing = {"name": "a", "successCondition": "result[0] < 0.01"}
    erroring = {"name": "b", "consecutiveErrorLimit": 0}
    run, _, _ = run_spec({"a": ["real_error_rate_bad"], "b": [ConnectionRefusedError()]}, {},
                         template(erroring, failing))  # fmt: skip
    assert (run.result("a").phase, run.result("b").phase) == (Phase.FAILED, Phase.ERROR)
    assert run.phase == Phase.FAILED  # Failed is worse than Error (4)
    assert run.message.startswith('Metric "a" assessed Failed')


# ----------------------------------------------------------------------------- scheduling (5.1, 7)


def test_no_count_and_no_interval_is_one_measurement() -> None:
    run, clock, transport = run_spec({"m": ["real_error_rate_ok"]}, {}, template({"name": "m"}))
    assert run.phase == Phase.SUCCESSFUL and transport.calls("m") == 1 and clock.elapsed == 0


def test_initial_delay_counts_from_the_run_start() -> None:
    t = template({"name": "m", "initialDelay": "2m", "interval": "1m", "count": 5})
    run, clock, _ = run_spec({"m": ["real_error_rate_ok"]}, {}, t)
    assert times(run, "m", clock) == [120, 180, 240, 300, 360]  # spec 7's example


def test_interval_without_count_runs_until_terminated() -> None:
    t = template({"name": "m", "interval": "30s", "failureLimit": 1,
                  "successCondition": "result[0] <= 0.01"})  # fmt: skip
    steps: list[Step] = ["real_error_rate_ok", "real_error_rate_bad", "real_error_rate_ok"]
    run, clock, _ = run_spec({"m": steps}, {}, t, terminate_after=100)
    # A terminated run is Successful although it saw a Failed measurement within the limit.
    assert run.phase == Phase.SUCCESSFUL and run.message == "Run Terminated"
    assert times(run, "m", clock) == [0, 30, 60, 90] and clock.elapsed == 100
    assert run.result("m").phase == Phase.SUCCESSFUL and run.terminate


def test_terminating_before_any_measurement_is_successful() -> None:
    t = template({"name": "m", "initialDelay": "5m"})
    run, _, transport = run_spec({"m": ["real_error_rate_ok"]}, {}, t, terminate_after=60)
    assert run.phase == Phase.SUCCESSFUL and transport.calls("m") == 0
    assert run.result("m").phase == Phase.SUCCESSFUL and run.message == "Run Terminated"


def test_a_failure_ends_the_run_and_a_completed_run_ignores_terminate() -> None:
    t = template({"name": "m", "interval": "30s", "successCondition": "result[0] < 0.01"},
                 {"name": "n", "interval": "30s"})  # fmt: skip
    spec = prepare_run(t)
    run = start_run(spec, 0.0)
    bad = Measurement(Phase.FAILED, 0.0, 1.0, "[0.5]")
    run = apply_measurements(run, [("n", Measurement(Phase.SUCCESSFUL, 0.0, 1.0))], 1.0)
    assert run.phase == Phase.RUNNING
    run = apply_measurement(run, "m", bad)
    assert run.phase == Phase.FAILED and run.result("n").phase == Phase.SUCCESSFUL
    assert terminate_run(run, 5.0) is run  # completed runs stay as they are


# ----------------------------------------------------------------------------- dryRun (5.6)


def test_dry_run_metric_never_fails_the_run_but_is_reported() -> None:
    run, clock, transport = run_spec(
        {ERR: ["spec_bad_canary_error_rate"], P99: ["spec_good_stable_p99"]},
        dry_run=["error"],
    )
    assert run.phase == Phase.SUCCESSFUL and clock.elapsed == 240
    error_rate = run.result("error-rate")
    assert error_rate.dry_run and error_rate.phase == Phase.FAILED
    assert error_rate.message == "Metric assessed Failed due to failed (1) > failureLimit (0)"
    assert transport.calls(ERR) == 1 and transport.calls(P99) == 5  # the other one carried on
    assert run.dry_run_summary.failed == 1 and run.run_summary.successful == 1


def test_a_running_dry_run_metric_delays_the_end() -> None:
    t = template({"name": "gate"}, {"name": "shadow", "interval": "1m", "count": 3})
    run, clock, _ = run_spec({"gate": ["real_error_rate_ok"], "shadow": ["real_error_rate_ok"]},
                             {}, t, dry_run=["shadow"])  # fmt: skip
    assert run.phase == Phase.SUCCESSFUL and clock.elapsed == 120


def test_all_dry_run_is_successful_whatever_they_measure() -> None:
    run, _, _ = run_spec({ERR: ["spec_bad_canary_error_rate"], P99: ["spec_bad_canary_p99"]},
                         dry_run=[".*"])  # fmt: skip
    assert run.phase == Phase.SUCCESSFUL
    assert {r.phase for r in run.results} == {Phase.FAILED}


# ----------------------------------------------------------------------------- errors before running


def test_missing_arg_is_an_error_without_any_query() -> None:
    run, clock, transport = run_spec({ERR: ["spec_good_stable_error_rate"]}, {})
    assert run.phase == Phase.ERROR and run.message == "args.canary-hash was not resolved"
    assert transport.requests == [] and run.completed_at == run.started_at == clock.start


def test_invalid_spec_is_an_error_without_any_query() -> None:
    run, _, transport = run_spec({"m": ["real_error_rate_ok"]}, {}, template({"name": "m", "count": 3}))  # fmt: skip
    assert run.phase == Phase.ERROR and transport.requests == []
    assert run.message == (
        "Analysis spec invalid: metrics[0]: interval must be specified when count > 1"
    )


# ----------------------------------------------------------------------------- pure transitions


def test_transitions_are_pure_and_the_schedule_follows_5_2() -> None:
    spec = prepare_run(template({"name": "m", "interval": "1m", "count": 2}))
    run = start_run(spec, 100.0)
    assert run.phase == Phase.RUNNING and run.result("m").phase == Phase.PENDING
    assert due_metrics(run, 100.0) == ["m"] and next_due(run) == 100.0
    after = apply_measurement(run, "m", Measurement(Phase.ERROR, 100.0, 101.0, message="x"))
    assert run.result("m").error == 0  # the input is untouched
    assert after.result("m").phase == Phase.RUNNING and next_due(after) == 111.0  # 10 s retry
    after = apply_measurement(after, "m", Measurement(Phase.SUCCESSFUL, 111.0, 112.0))
    assert next_due(after) == 172.0 and due_metrics(after, 171.0) == []
    done = apply_measurement(after, "m", Measurement(Phase.SUCCESSFUL, 172.0, 173.0))
    assert done.phase == Phase.SUCCESSFUL and done.completed_at == 173.0
    assert next_due(done) is None
    with pytest.raises(ValueError, match="already Successful"):
        apply_measurement(done, "m", Measurement(Phase.SUCCESSFUL, 180.0, 181.0))
    with pytest.raises(ValueError, match="must be completed"):
        apply_measurement(after, "m", Measurement(Phase.RUNNING, 172.0, 173.0))


def test_only_the_newest_measurements_are_kept() -> None:
    t = template({"name": "m", "interval": "1s", "count": 15}, {"name": "n", "interval": "1s", "count": 15})  # fmt: skip
    run, _, _ = run_spec({"m": ["real_error_rate_ok"], "n": ["real_error_rate_ok"]}, {}, t,
                         measurement_retention=[("n", 3)])  # fmt: skip
    assert (run.result("m").count, len(run.result("m").measurements)) == (15, 10)
    assert (run.result("n").count, len(run.result("n").measurements)) == (15, 3)


# ----------------------------------------------------------------------------- incremental / async


def test_incremental_runner_is_driven_by_the_caller() -> None:
    clock, transport = FakeClock(), Scripted({ERR: ["spec_good_stable_error_rate"],
                                              P99: ["spec_good_stable_p99"]})  # fmt: skip
    runner = AnalysisRunner.from_templates(spec_template(), HASH, client(transport), clock=clock)
    assert runner.run.phase == Phase.RUNNING and runner.next_due() == clock.start
    runner.tick()
    assert runner.run.result("error-rate").count == 1 and runner.next_due() == clock.start + 60
    clock.sleep(30)
    runner.tick()  # nothing due yet
    assert transport.calls(ERR) == 1
    final = runner.terminate()  # e.g. the Rollout was promoted mid-step (2)
    assert final.phase == Phase.SUCCESSFUL and final.message == "Run Terminated"
    assert runner.next_due() is None


def test_background_analysis_can_be_polled_and_terminated() -> None:
    transport = Scripted({"m": ["real_error_rate_ok"]})
    t = template({"name": "m", "interval": "1h"})  # would measure hourly forever
    handle = start_analysis(t, None, client(transport))
    deadline = time.monotonic() + 5
    while transport.calls("m") == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not handle.done and handle.run.phase == Phase.RUNNING
    assert handle.wait(timeout=0.05) is None
    started = time.monotonic()
    handle.terminate()
    final = handle.wait(timeout=5)
    assert time.monotonic() - started < 1  # terminate wakes the loop at once
    assert final is not None and final.phase == Phase.SUCCESSFUL and handle.done
    assert final.message == "Run Terminated"


def test_a_broken_callback_surfaces_from_wait() -> None:
    def explode(name: str, m: Measurement, run: AnalysisRun) -> None:
        raise RuntimeError("boom")

    handle = start_analysis(template({"name": "m"}), None,
                            client(Scripted({"m": ["real_error_rate_ok"]})), on_measurement=explode)  # fmt: skip
    with pytest.raises(RuntimeError, match="analysis loop failed"):
        handle.wait(timeout=5)
    assert handle.done
