"""The rollout driver without a network: the real Rollout and AnalysisTemplate from deploy/k8s,
the real AnalysisRun state machine on a simulated clock, a fake admin API and fake Prometheus
answers that depend on the weight the driver set (so "p99 goes bad at 5%" is a script).

The operator commands reach the driver through the real state directory (request files,
status.json, the flock), posted from inside the driver's sleep so everything stays in one thread.
"""

from __future__ import annotations

import http.server
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from canary import cli
from canary.analysis import AnalysisRunner, Phase
from canary.flag import FlagConflictError, FlagError, FlagView
from canary.machine import (
    Abort,
    AnalysisEnded,
    Done,
    Page,
    Promote,
    Rollback,
    RolloutPhase,
    RunAnalysis,
    SetWeight,
    Start,
    Tick,
    WeightSet,
    initial_state,
    next_action,
)
from canary.notify import Delivery, Notifier
from canary.outcome import AnalysisOutcome, outcome_of, readable_value
from canary.plan import PlanError, Step, StepKind, load_plan
from canary.prometheus import PrometheusClient, PrometheusSpec, QueryResult
from canary.rollout import Driver
from canary.statedir import DriverBusy, StateDir
from canary.templates import prepare_run
from flagd.process import REPO, free_port
from tests.canary.replay import FakeClock

ROLLOUT = REPO / "deploy" / "k8s" / "payment-router.yaml"
TEMPLATES = REPO / "deploy" / "k8s" / "analysis-template.yaml"
# The template's local args already say: initial-delay 10s, interval 10s, count 3, window 30s.


# ----------------------------------------------------------------------------- fakes


@dataclass
class FakeFlag:
    """The admin API: a version counter and every SetRollout the driver sent."""

    weight: int = 0
    version: int = 7
    calls: list[tuple[int, str, int | None]] = field(default_factory=list)
    conflict_at: int | None = None  # weight whose SetRollout answers ABORTED
    down: bool = False  # every call UNAVAILABLE

    def read(self) -> FlagView:
        if self.down:
            raise FlagError("UNAVAILABLE: down")
        return FlagView("on", "off", self.weight, self.version, "last reason", "tester")

    def set_weight(self, weight: int, reason: str, expected_version: int | None) -> int:
        self.calls.append((weight, reason, expected_version))
        if self.down:
            import grpc

            raise FlagError("UNAVAILABLE: down", grpc.StatusCode.UNAVAILABLE)
        if weight == self.conflict_at or (
            expected_version is not None and expected_version != self.version
        ):
            self.version += 1  # the operator's change
            raise FlagConflictError("ABORTED: expected_version")
        self.weight = weight
        self.version += 1
        return self.version

    @property
    def weights(self) -> list[int]:
        return [w for w, _, _ in self.calls]


class GatesByWeight:
    """Prometheus: p99 and error rate as functions of the flag weight; shadow has no data."""

    def __init__(
        self,
        flag: FakeFlag,
        p99: Callable[[int], float] = lambda w: 0.05,
        errors: Callable[[int], float] = lambda w: 0.0,
    ) -> None:
        self.flag, self.p99, self.errors = flag, p99, errors
        self.queries = 0

    def query(self, spec: PrometheusSpec) -> QueryResult:
        self.queries += 1
        if "histogram_quantile" in spec.query:
            value = self.p99(self.flag.weight)
        elif "payments_shadow" in spec.query:
            return QueryResult([], "[]", "vector")
        else:
            value = self.errors(self.flag.weight)
        text = "NaN" if math.isnan(value) else repr(value)
        return QueryResult([value], f"[{text}]", "vector")


class SteppedHandle:
    """An AnalysisRunner driven by the driver's polls on the simulated clock."""

    def __init__(self, runner: AnalysisRunner) -> None:
        self.runner = runner

    @property
    def run(self) -> Any:
        return self.runner.run

    @property
    def done(self) -> bool:
        while not self.runner.run.completed:
            due = self.runner.next_due()
            if due is None or due > self.runner.clock():
                break
            self.runner.tick()
        return self.runner.run.completed

    def terminate(self) -> None:
        self.runner.terminate()


class SimulatedAnalyses:
    """The real AnalysisRunner per analysis step, on the fake clock."""

    def __init__(self, provider: Any, clock: FakeClock) -> None:
        self.provider, self.clock = provider, clock
        self.started: list[float] = []

    def start(self, step: Step) -> SteppedHandle:
        assert step.analysis is not None
        self.started.append(self.clock())
        runner = AnalysisRunner.from_templates(
            list(step.templates), step.args, self.provider, clock=self.clock,
            dry_run=step.analysis.dry_run,
        )  # fmt: skip
        return SteppedHandle(runner)


class RecordingNotifier(Notifier):
    """Records each page with the flag weight at the moment it was sent."""

    def __init__(self, flag: FakeFlag) -> None:
        super().__init__(command="true")
        self.flag = flag
        self.sent: list[tuple[dict[str, Any], int]] = []

    def send(self, event: Mapping[str, Any]) -> list[Delivery]:
        self.sent.append((dict(event), self.flag.weight))
        return [Delivery("command", True, "recorded")]


@dataclass
class Rig:
    flag: FakeFlag
    clock: FakeClock
    state: StateDir
    notifier: RecordingNotifier
    driver: Driver
    analyses: SimulatedAnalyses
    on_sleep: list[Callable[[Rig], None]]

    def status(self) -> dict[str, Any]:
        doc = self.state.read_status()
        assert doc is not None
        return doc

    def pages(self) -> list[str]:
        return [e["event"] for e, _ in self.notifier.sent]


def rig(
    tmp_path: Path,
    *,
    p99: Callable[[int], float] = lambda w: 0.05,
    errors: Callable[[int], float] = lambda w: 0.0,
    provider: Any = None,
    flag: FakeFlag | None = None,
    args: Mapping[str, str] | None = None,
    pause_scale: float = 1.0,
    rollout: Path = ROLLOUT,
) -> Rig:
    flag = flag or FakeFlag()
    clock = FakeClock()
    plan = load_plan(rollout, [TEMPLATES], args=args)
    state = StateDir(tmp_path / "state")
    notifier = RecordingNotifier(flag)
    analyses = SimulatedAnalyses(provider or GatesByWeight(flag, p99, errors), clock)
    hooks: list[Callable[[Rig], None]] = []
    box: list[Rig] = []

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        for hook in list(hooks):
            hook(box[0])
        assert clock.elapsed < 24 * 3600, "the driver never finished"

    driver = Driver(plan, flag, analyses, state, notifier, user="tester", pause_scale=pause_scale,
                    clock=clock, sleep=sleep, server="fake:8013", poll_interval=0.5, heartbeat=5)  # fmt: skip
    box.append(Rig(flag, clock, state, notifier, driver, analyses, hooks))
    return box[0]


def promote_when_paused(user: str = "alice") -> Callable[[Rig], None]:
    def hook(r: Rig) -> None:
        doc = r.state.read_status()
        if doc and doc["phase"] == "Paused" and not list(r.state.requests_path.glob("*.json")):
            r.state.post("promote", user, doc["pause_token"])

    return hook


STEP_REASONS = [f"canary step {i}/11: setWeight {w}" for i, w in
                ((1, 1), (3, 5), (5, 25), (7, 50), (10, 100))]  # fmt: skip


# ----------------------------------------------------------------------------- the walk


def test_a_healthy_canary_walks_every_step_to_100_percent(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.on_sleep.append(promote_when_paused())
    assert r.driver.run() == 0
    assert r.flag.calls == [(w, reason, 7 + i) for i, (w, reason) in
                            enumerate(zip([1, 5, 25, 50, 100], STEP_REASONS, strict=True))]  # fmt: skip
    assert r.flag.weight == 100 and r.pages() == []
    # Five gates, each 10 s initial delay + 3 checks 10 s apart (the template's local args).
    assert len(r.analyses.started) == 5
    doc = r.status()
    assert doc["phase"] == "Completed" and doc["weight"] == 100 and doc["exit_code"] == 0
    assert all(s["status"] == "done" for s in doc["steps_list"])
    p99 = next(m for m in doc["analysis"]["metrics"] if m["name"] == "p99-latency")
    assert (p99["value"], p99["verdict"], p99["measured"], p99["wanted"]) == (
        "0.05",
        "Successful",
        3,
        3,
    )
    assert not r.state.driver_running()


@pytest.mark.parametrize(
    ("bad_weight", "step", "metric", "p99", "errors", "reason_tail"),
    [
        (
            1,
            2,
            "p99",
            lambda w: 0.31 if w == 1 else 0.05,
            lambda w: 0.0,
            "p99-latency = 0.31 >= 0.2 (Failed)",
        ),
        (
            5,
            4,
            "p99",
            lambda w: 0.31 if w >= 5 else 0.05,
            lambda w: 0.0,
            "p99-latency = 0.31 >= 0.2 (Failed)",
        ),
        (
            50,
            8,
            "errors",
            lambda w: 0.05,
            lambda w: 0.02 if w == 50 else 0.0,
            "error-rate = 0.02 > 0.01 (Failed)",
        ),
    ],
)
def test_a_failed_gate_aborts_at_that_step_flag_first_then_page(
    tmp_path: Path, bad_weight: int, step: int, metric: str, p99: Any, errors: Any, reason_tail: str
) -> None:
    r = rig(tmp_path, p99=p99, errors=errors)
    assert r.driver.run() == 1
    reason = f"canary abort at step {step}/11 (setWeight {bad_weight}): {reason_tail}"
    # The rollback ignores expected_version: it must win even over a concurrent change.
    assert r.flag.calls[-1] == (0, reason, None) and r.flag.weight == 0
    assert r.flag.weights[:-1] == [w for w in [1, 5, 25, 50] if w <= bad_weight]
    ((event, weight_when_paged),) = r.notifier.sent
    assert weight_when_paged == 0  # the flag was at 0% before the page went out
    assert event["event"] == "canary.aborted" and event["reason"] == reason
    assert (event["weight"], event["flag_weight"], event["rollback"]["ok"]) == (bad_weight, 0, True)
    assert event["step"] == step and event["trigger"] == "analysis"
    doc = r.status()
    assert (doc["phase"], doc["weight"], doc["message"], doc["exit_code"]) == (
        "Aborted",
        0,
        reason,
        1,
    )
    # Failed on the first measurement: no waiting for the count.
    assert r.clock.now - r.analyses.started[-1] == pytest.approx(10, abs=0.5)


def test_a_dead_prometheus_is_error_after_the_consecutive_limit_never_a_pass(
    tmp_path: Path,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused, for real
    r = rig(tmp_path, provider=PrometheusClient(), args={"prometheus-address": dead})
    assert r.driver.run() == 1
    assert r.flag.weights == [1, 0]
    reason = r.flag.calls[-1][1]
    assert reason.startswith("canary abort at step 2/11 (setWeight 1): error-rate: ")
    # consecutiveErrorLimit 2: the 3rd error in a row, 10 s apart (spec 5.2), after the delay.
    assert "3 consecutive errors > limit 2" in reason and "connection refused" in reason
    assert reason.endswith("(Error)")
    assert r.clock.now - r.analyses.started[0] == pytest.approx(10 + 20, abs=1)
    assert r.pages() == ["canary.aborted"]


def test_inconclusive_pauses_and_pages_then_promote_continues_past_the_analysis(
    tmp_path: Path,
) -> None:
    # No traffic on the new engine at 25%: histogram_quantile of nothing is NaN (spec 12.4).
    r = rig(tmp_path, p99=lambda w: math.nan if w == 25 else 0.05)
    paused_at: list[float] = []

    def promote_after_ten_minutes(r: Rig) -> None:
        doc = r.status()
        if doc["phase"] == "Paused" and doc["pause"]["kind"] == "inconclusive":
            paused_at.append(r.clock())
            if r.clock() - paused_at[0] >= 600:
                r.state.post("promote", "alice", doc["pause_token"])
        elif doc["phase"] == "Paused":
            r.state.post("promote", "alice", doc["pause_token"])

    r.on_sleep.append(promote_after_ten_minutes)
    assert r.driver.run() == 0
    assert r.flag.weights == [1, 5, 25, 50, 100]  # nothing moved while paused, no rollback
    ((event, weight),) = r.notifier.sent
    assert event["event"] == "canary.inconclusive" and event["severity"] == "warning"
    assert weight == 25 and event["step"] == 6
    assert (
        "p99-latency = NaN, inconclusive (2) > inconclusiveLimit (1) (Inconclusive)"
        in event["reason"]
    )
    assert paused_at[-1] - paused_at[0] >= 600
    history = [h["text"] for h in r.status()["history"]]
    assert any(t.startswith("promoted by alice at step 6/11") for t in history)


def test_inconclusive_then_abort_rolls_back(tmp_path: Path) -> None:
    r = rig(tmp_path, p99=lambda w: math.nan)

    def abort_when_inconclusive(r: Rig) -> None:
        doc = r.status()
        if doc["phase"] == "Paused" and not list(r.state.requests_path.glob("*.json")):
            r.state.post("abort", "bob")

    r.on_sleep.append(abort_when_inconclusive)
    assert r.driver.run() == 1
    reason = "canary aborted by bob at step 2/11 (analysis payment-router-slo)"
    assert r.flag.calls[-1] == (0, reason, None)
    assert r.pages() == ["canary.inconclusive", "canary.aborted"]
    assert r.notifier.sent[1][0]["trigger"] == "operator"


def test_an_indefinite_pause_holds_until_promoted(tmp_path: Path) -> None:
    r = rig(tmp_path)
    seen: list[tuple[float, int]] = []

    def promote_after_ten_minutes(r: Rig) -> None:
        doc = r.status()
        if doc["phase"] != "Paused":
            return
        assert doc["pause"]["kind"] == "promote" and doc["step"] == 9
        seen.append((r.clock(), len(r.flag.calls)))
        if r.clock() - seen[0][0] >= 600:
            r.state.post("promote", "alice", doc["pause_token"])

    r.on_sleep.append(promote_after_ten_minutes)
    assert r.driver.run() == 0
    assert {calls for _, calls in seen} == {4}  # held at 50% for ten minutes
    assert seen[-1][0] - seen[0][0] >= 600
    assert r.flag.weights == [1, 5, 25, 50, 100]


def test_a_promote_meant_for_another_pause_is_ignored(tmp_path: Path) -> None:
    r = rig(tmp_path)
    posted: list[str] = []

    def hook(r: Rig) -> None:
        doc = r.status()
        if doc["phase"] == "Progressing" and not posted:
            posted.append(r.state.post("promote", "mallory", "old-run/8"))
        elif doc["phase"] == "Paused":
            r.state.post("promote", "alice", doc["pause_token"])

    r.on_sleep.append(hook)
    assert r.driver.run() == 0
    history = [h["text"] for h in r.driver.history]
    assert any(t.startswith("promote by mallory ignored") for t in history)


def test_an_operator_abort_stops_a_running_analysis_at_once(tmp_path: Path) -> None:
    r = rig(tmp_path)

    def abort_mid_analysis(r: Rig) -> None:
        doc = r.status()
        running = doc["analysis"] and doc["analysis"]["phase"] == "Running"
        if doc["weight"] == 5 and running and r.clock() - r.analyses.started[-1] >= 15:
            r.state.post("abort", "carol")

    r.on_sleep.append(abort_mid_analysis)
    assert r.driver.run() == 1
    reason = "canary aborted by carol at step 4/11 (analysis payment-router-slo)"
    assert r.flag.calls[-1] == (0, reason, None) and r.flag.weights == [1, 5, 0]
    assert r.clock.now - r.analyses.started[-1] < 15.5  # within a poll, not after the count
    assert r.status()["analysis"]["phase"] == "Successful"  # terminated (spec 5.6)
    assert r.pages() == ["canary.aborted"]


def test_an_interrupted_driver_rolls_back(tmp_path: Path) -> None:
    r = rig(tmp_path)

    def interrupt(r: Rig) -> None:
        if r.flag.weight == 25:
            raise KeyboardInterrupt

    r.on_sleep.append(interrupt)
    assert r.driver.run() == 1
    assert r.flag.calls[-1][0] == 0 and "aborted by tester (interrupted)" in r.flag.calls[-1][1]


def test_a_flag_changed_by_someone_else_stops_the_driver_without_touching_it(
    tmp_path: Path,
) -> None:
    r = rig(tmp_path, flag=FakeFlag(conflict_at=25))
    assert r.driver.run() == 1
    assert r.flag.weights == [1, 5, 25]  # no rollback over the operator's change
    ((event, _),) = r.notifier.sent
    assert event["event"] == "canary.conflict" and event["flag_weight"] is None
    assert "changed outside the canary" in r.status()["message"]


def test_an_unreachable_admin_api_aborts_and_pages_that_the_rollback_failed(
    tmp_path: Path,
) -> None:
    flag = FakeFlag()
    r = rig(tmp_path, flag=flag)

    def admin_dies(r: Rig) -> None:
        if r.flag.weight == 5:
            r.flag.down = True

    r.on_sleep.append(admin_dies)
    assert r.driver.run() == 1
    ((event, _),) = r.notifier.sent
    assert event["rollback"]["ok"] is False and "ROLLBACK FAILED" in event["summary"]
    assert event["trigger"] == "admin-api"
    assert r.flag.weights.count(25) == 3 and r.flag.weights.count(0) == 5  # retried


def test_a_driver_failure_rolls_back_instead_of_leaving_the_flag_ungated(tmp_path: Path) -> None:
    r = rig(tmp_path)

    def broken(step: Step) -> SteppedHandle:
        raise RuntimeError("disk on fire")

    r.analyses.start = broken  # type: ignore[method-assign]
    assert r.driver.run() == 1
    assert r.flag.weights == [1, 0]
    assert "aborted by the driver (RuntimeError: disk on fire)" in r.flag.calls[-1][1]
    assert r.pages() == ["canary.aborted"]


def test_timed_pauses_are_scaled(tmp_path: Path) -> None:
    rollout = tmp_path / "rollout.yaml"
    rollout.write_text(
        ROLLOUT.read_text().replace("        - pause: {}\n", "        - pause: {duration: 10m}\n")
    )
    r = rig(tmp_path, rollout=rollout, pause_scale=0.01)
    assert r.driver.run() == 0
    assert r.flag.weights == [1, 5, 25, 50, 100]  # no promote needed: 600 s x 0.01 = 6 s


def test_a_second_driver_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    r = rig(tmp_path)
    with r.state.hold():
        assert r.state.driver_running()
        with pytest.raises(DriverBusy):
            r.driver.run()
    assert r.flag.calls == []


# ----------------------------------------------------------------------------- the pure core


def _steps() -> tuple[Step, ...]:
    return (
        Step(0, StepKind.SET_WEIGHT, weight=10),
        Step(1, StepKind.PAUSE, duration=30),
        Step(2, StepKind.ANALYSIS),
        Step(3, StepKind.PAUSE),
        Step(4, StepKind.SET_WEIGHT, weight=60),
    )


def test_next_action_walks_steps_and_ignores_events_that_do_not_apply() -> None:
    s, actions = next_action(initial_state(_steps(), pause_scale=0.5), Start(0))
    assert actions == (SetWeight(10, "canary step 1/5: setWeight 10"),)
    assert next_action(s, Promote("x", 1)) == (s, ())  # not paused
    assert next_action(s, Tick(1)) == (s, ())
    s, actions = next_action(s, WeightSet(10, 1))
    assert (s.phase, s.pause_until, actions) == (RolloutPhase.PAUSED, 16, ())  # 30 s x 0.5
    assert next_action(s, Tick(15.9)) == (s, ())
    s, (run,) = next_action(s, Tick(16))
    assert isinstance(run, RunAnalysis) and run.step.index == 2
    ok = AnalysisOutcome(Phase.SUCCESSFUL, "fine")
    s, actions = next_action(s, AnalysisEnded(ok, 20))
    assert (s.phase, s.pause, actions) == (RolloutPhase.PAUSED, "promote", ())
    assert next_action(s, Tick(10**9)) == (s, ())  # an indefinite pause never times out
    s, actions = next_action(s, Promote("alice", 30))
    assert actions == (SetWeight(60, "canary step 5/5: setWeight 60"),)
    s, actions = next_action(s, WeightSet(60, 31))
    # Past the last step the canary is the new stable: 100% (spec 2).
    assert actions == (SetWeight(100, "canary complete: all 5 steps passed, promoted to 100%"),)
    s, actions = next_action(s, WeightSet(100, 32))
    assert s.phase == RolloutPhase.COMPLETED and actions == (Done(0),)
    assert next_action(s, Abort("late", 33)) == (s, ())


def test_next_action_abort_order_is_rollback_then_page_then_exit() -> None:
    s, _ = next_action(initial_state(_steps()), Start(0))
    s, _ = next_action(s, WeightSet(10, 1))
    s, _ = next_action(s, Tick(31))
    bad = AnalysisOutcome(Phase.ERROR, "error-rate: boom (Error)")
    s, actions = next_action(s, AnalysisEnded(bad, 40))
    assert [type(a) for a in actions] == [Rollback, Page, Done]
    assert actions[0] == Rollback(
        "canary abort at step 3/5 (setWeight 10): error-rate: boom (Error)"
    )
    assert (s.phase, s.weight) == (RolloutPhase.ABORTED, 0)


def test_outcome_names_the_failing_metric_its_value_and_threshold() -> None:
    flag = FakeFlag(weight=5)
    clock = FakeClock()
    plan = load_plan(ROLLOUT, [TEMPLATES])
    step = plan.steps[1]
    runner = AnalysisRunner.from_templates(list(step.templates), step.args,
                                           GatesByWeight(flag, p99=lambda w: 0.4975), clock=clock)  # fmt: skip
    handle = SteppedHandle(runner)
    while not handle.done:
        clock.sleep(1)
    outcome = outcome_of(runner.run)
    assert outcome.phase == Phase.FAILED
    assert outcome.summary == "p99-latency = 0.4975 >= 0.2 (Failed)"
    assert {m.name: m.verdict for m in outcome.metrics}["error-rate"] == "Successful"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("[0.31]", "0.31"), ("[]", "no data"), ("[NaN]", "NaN"), ("[0.0019622641509]", "0.001962"),
     ("[0.1,0.3]", "[0.1, 0.3]"), ("72.29", "72.29"), (None, None)],
)  # fmt: skip
def test_readable_value(raw: str | None, shown: str | None) -> None:
    assert readable_value(raw) == shown


# ----------------------------------------------------------------------------- the plan


def test_the_plan_is_the_rollouts_steps_with_local_args_and_overrides() -> None:
    plan = load_plan(ROLLOUT, [TEMPLATES], prometheus="http://prom:9090", args={"count": "2"})
    assert [s.describe() for s in plan.steps] == [
        "setWeight 1", "analysis payment-router-slo", "setWeight 5", "analysis payment-router-slo",
        "setWeight 25", "analysis payment-router-slo", "setWeight 50", "analysis payment-router-slo",
        "pause (until promoted)", "setWeight 100", "analysis payment-router-slo",
    ]  # fmt: skip
    args = plan.steps[1].args
    assert (args["canary-label"], args["canary-value"], args["window"]) == ("engine", "new", "30s")
    assert (args["prometheus-address"], args["count"]) == ("http://prom:9090", "2")


def test_without_local_args_the_canary_hash_must_be_given() -> None:
    with pytest.raises(PlanError, match=r"no Latest pod template hash.*--arg NAME=VALUE"):
        load_plan(ROLLOUT, [TEMPLATES], local_args=False)
    plan = load_plan(ROLLOUT, [TEMPLATES], local_args=False, args={"canary-value": "abc123"})
    step = plan.steps[1]
    query = prepare_run(list(step.templates), step.args).metrics[0].prometheus.query
    assert 'rollouts_pod_template_hash="abc123"' in query and "[5m]" in query  # production


@pytest.mark.parametrize(
    ("replacement", "error"),
    [
        ("        - pause: {duration: -5}\n", "must not be negative"),
        ("        - pause: {duration: 2d}\n", "invalid duration"),
        ("        - setCanaryScale: {weight: 5}\n", "'setCanaryScale' steps are not supported"),
    ],
)
def test_unusable_steps_fail_before_anything_moves(
    tmp_path: Path, replacement: str, error: str
) -> None:
    rollout = tmp_path / "rollout.yaml"
    rollout.write_text(ROLLOUT.read_text().replace("        - pause: {}\n", replacement))
    with pytest.raises(PlanError, match=error):
        load_plan(rollout, [TEMPLATES])


def test_an_unresolvable_template_fails_at_load(tmp_path: Path) -> None:
    broken = tmp_path / "t.yaml"
    broken.write_text(TEMPLATES.read_text().replace("{{args.window}}", "{{args.nope}}"))
    with pytest.raises(PlanError, match="step 2: Unable to resolve metric arguments"):
        load_plan(ROLLOUT, [broken])


# ----------------------------------------------------------------------------- the page


def test_the_command_gets_json_on_stdin_and_env_but_not_the_token(tmp_path: Path) -> None:
    out = tmp_path / "page"
    command = f"{sys.executable} -c 'import json,os,sys; " \
              f"json.dump({{\"stdin\": json.load(sys.stdin), \"env\": dict(os.environ)}}, open(\"{out}\", \"w\"))'"  # fmt: skip
    notifier = Notifier(command, environ={"RIPCORD_TOKEN": "secret", "PATH": "/usr/bin:/bin"})
    event = {"event": "canary.aborted", "reason": "r", "flag": "f", "step": 2, "weight": 1,
             "flag_weight": 0}  # fmt: skip
    (result,) = notifier.send(event)
    assert result.ok, result
    got = json.loads(out.read_text())
    assert got["stdin"] == event
    env = got["env"]
    assert (env["RIPCORD_EVENT"], env["RIPCORD_REASON"], env["RIPCORD_STEP"]) == (
        "canary.aborted",
        "r",
        "2",
    )
    assert env["RIPCORD_FLAG_WEIGHT"] == "0" and "RIPCORD_TOKEN" not in env


def test_hook_failures_are_reported_never_raised(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/page"
    notifier = Notifier("echo oops >&2; exit 3", dead, command_timeout=5)
    command, webhook = notifier.send({"event": "canary.aborted"})
    assert (command.ok, command.detail) == (False, "exit 3: oops")
    assert not webhook.ok and "refused" in webhook.detail
    slow = Notifier("sleep 5", command_timeout=0.2).send({})
    assert not slow[0].ok and "killed after 0.2 s" in slow[0].detail


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    received: list[tuple[str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Content-Type"], body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_the_webhook_gets_the_event_as_json(webhook: tuple[str, list[tuple[str, bytes]]]) -> None:
    url, received = webhook
    (result,) = Notifier(webhook=url).send({"event": "canary.inconclusive", "step": 6})
    assert result.ok and result.detail == "HTTP 204"
    assert received == [("application/json", b'{"event": "canary.inconclusive", "step": 6}')]


# ----------------------------------------------------------------------------- operator commands


def run_cli(*argv: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    from io import StringIO

    from rich.console import Console

    out, err = StringIO(), StringIO()
    code = cli.main(list(argv), environ=env or {},
                    console=Console(file=out, width=200), err_console=Console(file=err, width=200))  # fmt: skip
    return code, out.getvalue(), err.getvalue()


def test_operator_commands_without_a_driver(tmp_path: Path) -> None:
    state = str(tmp_path / "s")
    assert run_cli("status", "--state-dir", state)[0] == 1
    code, _, err = run_cli("promote", "--state-dir", state)
    assert code == 1 and "no canary status" in err
    # No driver: abort sets the flag itself, and says so when the admin API is not there.
    dead = f"127.0.0.1:{free_port()}"
    code, _, err = run_cli("abort", "--state-dir", state, "--server", dead, "--user", "dave")
    assert code == 1 and "could not set payments.new-router.enabled to 0%" in err


def test_status_shows_step_weight_and_each_metrics_value_and_verdict(tmp_path: Path) -> None:
    r = rig(tmp_path, p99=lambda w: 0.31 if w == 5 else 0.05)
    r.driver.run()
    code, out, _ = run_cli("status", "--state-dir", str(r.state.path))
    assert code == 0
    assert "Aborted" in out and "step 4/11" in out and "weight 0%" in out
    assert "p99-latency" in out and "0.31" in out and "Failed" in out
    assert "no driver running" in out
    code, out, _ = run_cli("status", "--json", "--state-dir", str(r.state.path))
    doc = json.loads(out)
    assert doc["driver_running"] is False and doc["phase"] == "Aborted"
    code, _, err = run_cli("promote", "--state-dir", str(r.state.path))
    assert code == 1 and "no driver is running" in err


def threaded_driver(
    tmp_path: Path, rollout: Path = ROLLOUT
) -> tuple[Driver, FakeFlag, threading.Thread, list[int]]:
    """A driver on real time in a thread (its analyses would take 10 s before measuring)."""
    flag = FakeFlag()
    plan = load_plan(rollout, [TEMPLATES])
    analyses = SimulatedAnalyses(GatesByWeight(flag), FakeClock())
    analyses.clock = time.time  # type: ignore[assignment]
    driver = Driver(plan, flag, analyses, StateDir(tmp_path / "state"), RecordingNotifier(flag),
                    user="tester", poll_interval=0.05)  # fmt: skip
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(driver.run()), daemon=True)
    thread.start()
    return driver, flag, thread, codes


def wait_status(state: StateDir, phase: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        doc = state.read_status()
        if doc is not None and doc["phase"] == phase and state.driver_running():
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.02)


def test_cli_abort_reaches_a_running_driver(tmp_path: Path) -> None:
    driver, flag, thread, codes = threaded_driver(tmp_path)
    state = str(tmp_path / "state")
    wait_status(driver.state_dir, "Progressing")
    code, out, err = run_cli("abort", "--state-dir", state, "--user", "erin")
    thread.join(10)
    assert code == 0 and codes == [1], err
    assert out.startswith("aborted: canary aborted by erin at step 2/11")
    assert flag.calls[-1] == (
        0,
        "canary aborted by erin at step 2/11 (analysis payment-router-slo)",
        None,
    )


def test_cli_promote_reaches_a_paused_driver(tmp_path: Path) -> None:
    rollout = tmp_path / "rollout.yaml"
    text = ROLLOUT.read_text()
    steps = text.index("      steps:\n")
    rollout.write_text(
        text[:steps] + "      steps:\n        - setWeight: 10\n        - pause: {}\n"
    )
    driver, flag, thread, codes = threaded_driver(tmp_path, rollout)
    state = str(tmp_path / "state")
    wait_status(driver.state_dir, "Paused")
    code, out, err = run_cli("promote", "--state-dir", state, "--user", "frank")
    thread.join(10)
    assert code == 0 and codes == [0], err
    assert "promoted by frank" in out
    # Past the last step the canary becomes the stable: 100% (spec 2).
    assert flag.calls[-1] == (100, "canary complete: all 2 steps passed, promoted to 100%", 8)
    code, _, err = run_cli("promote", "--state-dir", state)
    assert code == 1 and "no driver is running" in err


def test_run_refuses_manifests_it_cannot_drive(tmp_path: Path) -> None:
    code, _, err = run_cli("run", "--rollout", str(tmp_path / "missing.yaml"),
                           "--state-dir", str(tmp_path / "s"))  # fmt: skip
    assert code == 2 and "missing.yaml" in err
