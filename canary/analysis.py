"""The AnalysisRun state machine (spec 4-7) and the loop that drives it against Prometheus.

Pure part: ``start_run``, ``apply_measurements``/``apply_measurement``, ``terminate_run``,
``due_metrics``/``next_due`` take and return frozen AnalysisRun values; no I/O, no clock.
I/O part: ``take_measurement`` (query + conditions), ``AnalysisRunner`` (one pass per
``tick()``), ``run_analysis`` (blocking loop with injectable clock/sleep) and
``start_analysis`` (background thread with ``terminate()``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from canary.condition import ConditionError, Value, evaluate_result
from canary.prometheus import PrometheusClient, PrometheusError, PrometheusSpec, QueryResult
from canary.templates import (
    AnalysisSpecError,
    AnalysisTemplate,
    MetricSpec,
    RunSpec,
    prepare_run,
)

__all__ = [
    "ERROR_RETRY_INTERVAL",
    "RESOLVED_QUERY",
    "AnalysisHandle",
    "AnalysisRun",
    "AnalysisRunner",
    "Measurement",
    "MetricProvider",
    "MetricResult",
    "OnMeasurement",
    "Phase",
    "RunSummary",
    "apply_measurement",
    "apply_measurements",
    "due_metrics",
    "error_run",
    "exit_code",
    "next_due",
    "run_analysis",
    "start_analysis",
    "start_run",
    "take_measurement",
    "terminate_run",
]

ERROR_RETRY_INTERVAL = 10.0  # seconds; DefaultErrorRetryInterval (5.2)
RESOLVED_QUERY = "ResolvedPrometheusQuery"  # metric metadata key (8)


class Phase(StrEnum):
    """Phase of a run, a metric or a measurement (4)."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    ERROR = "Error"
    INCONCLUSIVE = "Inconclusive"

    @property
    def completed(self) -> bool:
        """Successful, Failed, Error and Inconclusive are final."""
        return self not in (Phase.PENDING, Phase.RUNNING)


# analysisStatusOrder, best to worst (4).
_SEVERITY = (Phase.SUCCESSFUL, Phase.RUNNING, Phase.PENDING, Phase.INCONCLUSIVE, Phase.ERROR,
             Phase.FAILED)  # fmt: skip


def _worse(current: Phase, new: Phase) -> bool:
    return _SEVERITY.index(new) > _SEVERITY.index(current)


def exit_code(phase: Phase) -> int:
    """Exit status suggested by spec 13.6: 0 Successful, 1 Failed, 2 Error, 3 Inconclusive."""
    codes = {Phase.SUCCESSFUL: 0, Phase.FAILED: 1, Phase.ERROR: 2, Phase.INCONCLUSIVE: 3}
    if phase not in codes:
        raise ValueError(f"run not completed: {phase}")
    return codes[phase]


@dataclass(frozen=True)
class Measurement:
    """One measurement: its phase, when it ran, the stored value string (9.3), a message."""

    phase: Phase
    started_at: float
    finished_at: float
    value: str | None = None
    message: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricResult:
    """Status of one metric: phase, counters of 5.4, the newest measurements."""

    name: str
    phase: Phase = Phase.PENDING
    message: str = ""
    dry_run: bool = False
    count: int = 0
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    error: int = 0
    consecutive_error: int = 0
    consecutive_success: int = 0
    measurements: tuple[Measurement, ...] = ()  # trimmed to the metric's measurement_limit
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def last_measurement(self) -> Measurement | None:
        """The newest measurement, if any."""
        return self.measurements[-1] if self.measurements else None


@dataclass(frozen=True)
class RunSummary:
    """Metrics counted by final phase (`status.runSummary` / `dryRunSummary`, 5.6)."""

    count: int = 0
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    error: int = 0


@dataclass(frozen=True)
class AnalysisRun:
    """The whole run: spec, per-metric results, phase and message."""

    spec: RunSpec
    results: tuple[MetricResult, ...]
    phase: Phase = Phase.RUNNING
    message: str = ""
    started_at: float = 0.0
    completed_at: float | None = None
    terminate: bool = False  # spec.terminate
    run_summary: RunSummary = RunSummary()
    dry_run_summary: RunSummary = RunSummary()

    @property
    def completed(self) -> bool:
        """True once the run has a final phase."""
        return self.phase.completed

    @property
    def terminating(self) -> bool:
        """spec.terminate, or a non-dry-run metric already Failed/Error/Inconclusive (5.6)."""
        bad = (Phase.FAILED, Phase.ERROR, Phase.INCONCLUSIVE)
        return self.terminate or any(r.phase in bad and not r.dry_run for r in self.results)

    def result(self, name: str) -> MetricResult:
        """The result of metric ``name``."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def metric(self, name: str) -> MetricSpec:
        """The resolved spec of metric ``name``."""
        for m in self.spec.metrics:
            if m.name == name:
                return m
        raise KeyError(name)


# ----------------------------------------------------------------------------- assessment


def _limits(spec: MetricSpec, res: MetricResult) -> tuple[Phase | None, str]:
    """5.5 step 4: checked in order, a later one overriding an earlier one."""
    phase: Phase | None = None
    message = ""
    failed, inconclusive, errors = res.failed, res.inconclusive, res.consecutive_error
    if spec.failure_limit >= 0 and failed > spec.failure_limit:
        phase, message = Phase.FAILED, f"failed ({failed}) > failureLimit ({spec.failure_limit})"
    if inconclusive > spec.inconclusive_limit:
        phase = Phase.INCONCLUSIVE
        message = f"inconclusive ({inconclusive}) > inconclusiveLimit ({spec.inconclusive_limit})"
    if errors > spec.consecutive_error_limit:
        phase = Phase.ERROR
        limit = spec.consecutive_error_limit
        message = f"consecutiveErrors ({errors}) > consecutiveErrorLimit ({limit})"
    return phase, message


def _completion(spec: MetricSpec, res: MetricResult) -> tuple[Phase | None, str]:
    """Why a measured metric is complete (5.5 steps 4-6), or (None, "") if it is not."""
    phase, message = _limits(spec, res)
    if phase is not None:
        return phase, message
    streak = spec.consecutive_success_limit
    if streak > 0 and res.consecutive_success >= streak:
        return Phase.SUCCESSFUL, ""
    wanted = spec.effective_count
    if wanted is not None and res.count >= wanted:
        if streak > 0:
            # Enough measurements but never `streak` successes in a row (5.5 step 6).
            phase = Phase.INCONCLUSIVE if spec.failure_limit >= 0 else Phase.FAILED
            return phase, (f"count ({res.count}) reached without consecutiveSuccesses "
                           f"reaching consecutiveSuccessLimit ({streak})")  # fmt: skip
        return Phase.SUCCESSFUL, ""
    return None, ""


def _metric_phase(spec: MetricSpec, res: MetricResult, terminating: bool) -> Phase:
    """assessMetricStatus (5.5)."""
    if res.phase.completed:
        return res.phase
    if res.last_measurement is None:
        return Phase.SUCCESSFUL if terminating else Phase.PENDING
    # (Prometheus measurements complete at once, so there is never one in flight: step 3.)
    phase, _ = _completion(spec, res)
    if phase is not None:
        return phase
    # Unlimited or not yet reached: a terminated run ends such metrics Successful (step 7).
    return Phase.SUCCESSFUL if terminating else Phase.RUNNING


def _assess_metrics(run: AnalysisRun) -> AnalysisRun:
    terminating = run.terminating
    results = []
    for spec, res in zip(run.spec.metrics, run.results, strict=True):
        phase = _metric_phase(spec, res, terminating)
        if phase != res.phase:
            last = res.last_measurement
            message = last.message if last is not None else ""
            _, why = _completion(spec, res) if phase.completed else (None, "")
            if res.dry_run and why:
                message = f"Metric assessed {phase} due to {why}"
            res = dataclasses.replace(res, phase=phase, message=message)
        results.append(res)
    return dataclasses.replace(run, results=tuple(results))


def _summaries(run: AnalysisRun) -> tuple[RunSummary, RunSummary]:
    counts: dict[bool, dict[str, int]] = {
        dry: {"count": 0, "successful": 0, "failed": 0, "inconclusive": 0, "error": 0}
        for dry in (False, True)
    }
    for res in run.results:
        bucket = counts[res.dry_run]
        bucket["count"] += 1
        if res.phase.completed:
            bucket[res.phase.value.lower()] += 1
    return RunSummary(**counts[False]), RunSummary(**counts[True])


def _run_phase(run: AnalysisRun) -> tuple[Phase, str]:
    """assessRunStatus (5.6): worst non-dry-run phase; Running while anything is incomplete."""
    worst: Phase | None = None
    message = "Run Terminated" if run.terminate else ""
    everything_completed = True
    for spec, res in zip(run.spec.metrics, run.results, strict=True):
        if not res.phase.completed:
            everything_completed = False
            continue
        if res.dry_run:
            # Evaluated and reported, never counted against the run (5.6).
            worst = worst or Phase.SUCCESSFUL
            continue
        if worst is None or _worse(worst, res.phase):
            worst = res.phase
            _, why = _completion(spec, res)
            if why:
                message = f'Metric "{res.name}" assessed {res.phase} due to {why}'
                if res.message:
                    message += f': "Error Message: {res.message}"'
    if run.terminating:
        return worst or Phase.SUCCESSFUL, message
    if not everything_completed or worst is None:
        return Phase.RUNNING, ""
    return worst, message


def _assess(run: AnalysisRun, now: float) -> AnalysisRun:
    if run.completed:
        return run
    # A metric that completes Failed/Error/Inconclusive makes the run terminating; Argo applies
    # that on its next pass, "a local runner should re-assess right away" (5.6).
    for _ in range(2):
        terminating = run.terminating
        run = _assess_metrics(run)
        if run.terminating == terminating:
            break
    phase, message = _run_phase(run)
    ok, dry = _summaries(run)
    return dataclasses.replace(
        run,
        phase=phase,
        message=message if phase.completed else "",
        run_summary=ok,
        dry_run_summary=dry,
        completed_at=now if phase.completed else None,
    )


def start_run(spec: RunSpec, now: float) -> AnalysisRun:
    """A new run started at ``now`` (its startedAt: initialDelay counts from here, 5.2)."""
    results = tuple(
        MetricResult(
            name=m.name,
            dry_run=m.dry_run,
            metadata={RESOLVED_QUERY: spec.redact(m.prometheus.query)},
        )
        for m in spec.metrics
    )
    return _assess(AnalysisRun(spec, results, started_at=now), now)


def error_run(message: str, now: float) -> AnalysisRun:
    """A run that is Error before measuring anything (unresolved args, invalid spec: 4)."""
    return AnalysisRun(RunSpec(()), (), Phase.ERROR, message, now, now)


def _record(spec: MetricSpec, res: MetricResult, m: Measurement) -> MetricResult:
    """The counters of 5.4 (errors never count towards `count`)."""
    if res.phase.completed:
        raise ValueError(f"metric {res.name!r} is already {res.phase}")
    count, errors, error_streak, success_streak = res.count, res.error, res.consecutive_error, 0
    successful, failed, inconclusive = res.successful, res.failed, res.inconclusive
    if m.phase == Phase.ERROR:
        errors += 1
        error_streak += 1
    elif m.phase in (Phase.SUCCESSFUL, Phase.FAILED, Phase.INCONCLUSIVE):
        count += 1
        error_streak = 0
        successful += m.phase == Phase.SUCCESSFUL
        failed += m.phase == Phase.FAILED
        inconclusive += m.phase == Phase.INCONCLUSIVE
        success_streak = res.consecutive_success + 1 if m.phase == Phase.SUCCESSFUL else 0
    else:
        raise ValueError(f"a measurement must be completed, not {m.phase}")
    # Only the newest N are kept in status; the counters are unaffected (5.4).
    kept = (*res.measurements, m)[-max(spec.measurement_limit, 1) :]
    return dataclasses.replace(
        res, measurements=kept, count=count, successful=successful, failed=failed,
        inconclusive=inconclusive, error=errors, consecutive_error=error_streak,
        consecutive_success=success_streak,
    )  # fmt: skip


def apply_measurements(
    run: AnalysisRun, measurements: Iterable[tuple[str, Measurement]], now: float
) -> AnalysisRun:
    """Record one pass's measurements (5.4), then assess metrics and the run (5.5, 5.6).

    Measurements taken in the same pass are all recorded before the assessment, as the
    controller does: a metric failing does not discard the others' results of that pass.
    """
    if run.completed:
        raise ValueError(f"the run is already {run.phase}")
    by_name = dict(measurements)
    results = list(run.results)
    for name, m in by_name.items():
        i = next((i for i, r in enumerate(results) if r.name == name), None)
        if i is None:
            raise KeyError(name)
        results[i] = _record(run.spec.metrics[i], results[i], m)
    return _assess(dataclasses.replace(run, results=tuple(results)), now)


def apply_measurement(run: AnalysisRun, name: str, measurement: Measurement) -> AnalysisRun:
    """``apply_measurements`` for a single measurement, assessed at its finish time."""
    return apply_measurements(run, [(name, measurement)], measurement.finished_at)


def terminate_run(run: AnalysisRun, now: float) -> AnalysisRun:
    """Set spec.terminate: no new measurements; unfinished metrics end Successful (5.6)."""
    if run.completed:
        return run
    return _assess(dataclasses.replace(run, terminate=True), now)


def _next_at(run: AnalysisRun, spec: MetricSpec, res: MetricResult) -> float | None:
    """When metric ``spec`` is next due (5.2), or None if it takes no more measurements."""
    if res.phase.completed or run.terminating:
        return None
    last = res.last_measurement
    if last is None:
        return run.started_at + (spec.initial_delay or 0.0)
    wanted = spec.effective_count
    if wanted is not None and res.count >= wanted:
        return None
    if last.phase == Phase.ERROR or spec.interval is None:
        return last.finished_at + ERROR_RETRY_INTERVAL
    return last.finished_at + spec.interval


def due_metrics(run: AnalysisRun, now: float) -> list[str]:
    """Metrics to measure at ``now``.

    Due at the instant itself (the controller waits for "after"; with its one-second
    timestamps and requeue that is the same moment).
    """
    due = []
    for spec, res in zip(run.spec.metrics, run.results, strict=True):
        at = _next_at(run, spec, res)
        if at is not None and at <= now:
            due.append(spec.name)
    return due


def next_due(run: AnalysisRun) -> float | None:
    """The earliest time any metric is due; None when nothing more will be measured."""
    times = [
        t
        for spec, res in zip(run.spec.metrics, run.results, strict=True)
        if (t := _next_at(run, spec, res)) is not None
    ]
    return min(times) if times else None


# ----------------------------------------------------------------------------- I/O


class MetricProvider(Protocol):
    """What the runner needs from Prometheus (PrometheusClient, or a fake in tests)."""

    def query(self, spec: PrometheusSpec) -> QueryResult:
        """Run one query; raise PrometheusError when there is no value."""
        ...


OnMeasurement = Callable[[str, Measurement, AnalysisRun], None]


def take_measurement(
    spec: MetricSpec,
    provider: MetricProvider,
    clock: Callable[[], float] = time.time,
    redact: Callable[[str], str] = str,
) -> Measurement:
    """Query, then judge the value with the conditions (5.3, 6); failures become Error."""
    started = clock()
    try:
        answer = provider.query(spec.prometheus)
    except PrometheusError as e:
        return Measurement(Phase.ERROR, started, clock(), message=redact(str(e)))
    except Exception as e:  # a provider bug must not pass silently, nor kill the loop
        return Measurement(
            Phase.ERROR, started, clock(), message=redact(f"{type(e).__name__}: {e}")
        )
    value: Value = answer.value if isinstance(answer.value, float) else list[Value](answer.value)
    try:
        verdict = evaluate_result(value, spec.success_condition, spec.failure_condition)
    except ConditionError as e:
        return Measurement(
            Phase.ERROR, started, clock(), answer.value_str, redact(str(e)), answer.metadata
        )
    phase = Phase(verdict.value)
    return Measurement(phase, started, clock(), answer.value_str, "", answer.metadata)


class AnalysisRunner:
    """Incremental form: the caller decides when to ``tick()``; ``terminate()`` at any time.

    Not thread-safe by itself; ``start_analysis`` wraps it in a thread.
    """

    def __init__(
        self,
        spec: RunSpec,
        prometheus: MetricProvider | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_measurement: OnMeasurement | None = None,
    ) -> None:
        self.spec = spec
        self.provider: MetricProvider = prometheus or PrometheusClient()
        self.clock = clock
        self.on_measurement = on_measurement
        self._run = start_run(spec, clock())

    @classmethod
    def from_templates(
        cls,
        templates: AnalysisTemplate | Sequence[AnalysisTemplate],
        args: Mapping[str, str] | None = None,
        prometheus: MetricProvider | None = None,
        *,
        dry_run: Sequence[str] = (),
        measurement_retention: Sequence[tuple[str, int]] = (),
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        clock: Callable[[], float] = time.time,
        on_measurement: OnMeasurement | None = None,
    ) -> AnalysisRunner:
        """Resolve args and validate; a bad spec gives a runner whose run is already Error."""
        try:
            spec = prepare_run(
                templates,
                args,
                dry_run=dry_run,
                measurement_retention=measurement_retention,
                secrets=secrets,
            )
        except AnalysisSpecError as e:
            runner = cls(RunSpec(()), prometheus, clock=clock, on_measurement=on_measurement)
            runner._run = error_run(str(e), runner._run.started_at)
            return runner
        return cls(spec, prometheus, clock=clock, on_measurement=on_measurement)

    @property
    def run(self) -> AnalysisRun:
        """The current (immutable) state."""
        return self._run

    def next_due(self) -> float | None:
        """Clock time of the next measurement, None when the run is completed."""
        return None if self._run.completed else next_due(self._run)

    def tick(self) -> AnalysisRun:
        """One pass: take every due measurement (in parallel), apply them, assess."""
        run = self._run
        if run.completed:
            return run
        names = due_metrics(run, self.clock())
        if not names:
            return run
        specs = [run.metric(n) for n in names]

        def measure(spec: MetricSpec) -> Measurement:
            return take_measurement(spec, self.provider, self.clock, run.spec.redact)

        if len(specs) == 1:
            taken = [measure(specs[0])]
        else:
            with ThreadPoolExecutor(max_workers=len(specs)) as pool:
                taken = list(pool.map(measure, specs))
        pairs = list(zip(names, taken, strict=True))
        self._run = apply_measurements(run, pairs, self.clock())
        if self.on_measurement is not None:
            for name, m in pairs:
                self.on_measurement(name, m, self._run)
        return self._run

    def terminate(self) -> AnalysisRun:
        """spec.terminate (promotion, abort, end of rollout): finish now (5.6)."""
        self._run = terminate_run(self._run, self.clock())
        return self._run


def run_analysis(
    templates: AnalysisTemplate | Sequence[AnalysisTemplate],
    args: Mapping[str, str] | None = None,
    prometheus: MetricProvider | None = None,
    *,
    dry_run: Sequence[str] = (),
    measurement_retention: Sequence[tuple[str, int]] = (),
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    on_measurement: OnMeasurement | None = None,
    terminate_after: float | None = None,
) -> AnalysisRun:
    """Run an analysis to completion and return the final run.

    ``terminate_after`` (seconds from the start) terminates the run then, like a Rollout
    ending a background analysis (13.5). Without it, a metric with an interval and no count
    measures forever (5.1).
    """
    runner = AnalysisRunner.from_templates(
        templates, args, prometheus, dry_run=dry_run,
        measurement_retention=measurement_retention, secrets=secrets, clock=clock,
        on_measurement=on_measurement,
    )  # fmt: skip
    deadline = None if terminate_after is None else runner.run.started_at + terminate_after
    while not runner.run.completed:
        if deadline is not None and clock() >= deadline:
            runner.terminate()
            break
        runner.tick()
        wake = runner.next_due()
        if runner.run.completed or wake is None:
            break
        if deadline is not None:
            wake = min(wake, deadline)
        sleep(max(0.0, wake - clock()))
    return runner.run


class AnalysisHandle:
    """A run going on in a background thread: poll ``run``/``done``, ``terminate()``, ``wait()``."""

    def __init__(self, runner: AnalysisRunner) -> None:
        self._runner = runner
        self._stop = threading.Event()
        self._done = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="analysis-run", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        runner = self._runner
        try:
            while not runner.run.completed:
                if self._stop.is_set():
                    runner.terminate()
                    break
                runner.tick()
                wake = runner.next_due()
                if wake is None:
                    break
                # Event.wait is the sleep: terminate() wakes the loop at once.
                self._stop.wait(max(0.0, wake - runner.clock()))
        except BaseException as e:  # surfaced by wait(); the run must not hang silently
            self._failure = e
        finally:
            self._done.set()

    @property
    def run(self) -> AnalysisRun:
        """The latest state (safe to read from any thread: runs are immutable)."""
        return self._runner.run

    @property
    def done(self) -> bool:
        """True once the run is completed (or the loop failed)."""
        return self._done.is_set()

    def terminate(self) -> None:
        """Ask the run to terminate; it ends after any query in flight (at most its timeout)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> AnalysisRun | None:
        """The final run, or None if still running after ``timeout`` seconds."""
        if not self._done.wait(timeout):
            return None
        if self._failure is not None:
            raise RuntimeError("analysis loop failed") from self._failure
        return self._runner.run


def start_analysis(
    templates: AnalysisTemplate | Sequence[AnalysisTemplate],
    args: Mapping[str, str] | None = None,
    prometheus: MetricProvider | None = None,
    *,
    dry_run: Sequence[str] = (),
    measurement_retention: Sequence[tuple[str, int]] = (),
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    clock: Callable[[], float] = time.time,
    on_measurement: OnMeasurement | None = None,
) -> AnalysisHandle:
    """Start a run in a background thread (real time: the thread sleeps on ``clock``'s scale)."""
    runner = AnalysisRunner.from_templates(
        templates, args, prometheus, dry_run=dry_run,
        measurement_retention=measurement_retention, secrets=secrets, clock=clock,
        on_measurement=on_measurement,
    )  # fmt: skip
    return AnalysisHandle(runner)
