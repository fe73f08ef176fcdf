"""The canary rollout driver: walk a Rollout's steps on the release flag, gated by analyses.

`ripcord canary run` releases the new engine behind `payments.new-router.enabled` the way Argo
Rollouts walks a canary (analysis-semantics.md sections 2-3): `setWeight: N` sets the flag's split
to on=N off=100-N through the admin API; `pause: {duration}` waits (scaled for rehearsals);
`pause: {}` waits for `ripcord canary promote`; an analysis step runs the AnalysisRun and goes on
when it is Successful, aborts on Failed/Error (flag back to 0% with the failing metric, its value
and phase as the audit reason, then a page), and pauses and pages on Inconclusive (promote goes
past the analysis, abort aborts). When the steps are done the flag is at 100%.

Layout:

* pure: ``load_plan``'s products (``Plan``, ``Step``), the state machine ``next_action(state,
  event) -> (state, actions)``, ``outcome_of(run)`` (what an AnalysisRun means for the rollout)
  and ``status_document`` (what `status` shows). No clock, no network.
* I/O edges: ``StateDir`` (the JSON files that coordinate `run` with `promote`/`abort`/`status`,
  written atomically with os.replace, plus an flock held by the running driver), ``AdminFlag``
  (the flag admin API over gRPC), ``PrometheusAnalyses`` (analysis runs in a background thread)
  and ``Driver``, the loop that executes the actions and feeds the results back as events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import json
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import grpc

from canary.analysis import AnalysisRun, MetricResult, Phase, start_analysis
from canary.notify import Delivery, Notifier
from canary.prometheus import PrometheusClient
from canary.templates import (
    AnalysisSpecError,
    AnalysisTemplate,
    MetricSpec,
    RolloutAnalysis,
    check_conditions,
    load_documents,
    parse_duration,
    prepare_run,
    rollout_analyses,
    rollout_args,
    select_templates,
    templates_from_documents,
)

__all__ = [
    "DEFAULT_FLAG",
    "LOCAL_ARGS_ANNOTATION",
    "Abort",
    "AdminFlag",
    "AnalysisEnded",
    "AnalysisOutcome",
    "Done",
    "Driver",
    "DriverBusy",
    "FlagConflict",
    "FlagConflictError",
    "FlagError",
    "FlagView",
    "MetricView",
    "Observer",
    "OperatorRequest",
    "Page",
    "Plan",
    "PlanError",
    "PrometheusAnalyses",
    "Promote",
    "Rollback",
    "RolloutPhase",
    "RolloutState",
    "RunAnalysis",
    "SetWeight",
    "Start",
    "StateDir",
    "Step",
    "StepKind",
    "StopAnalysis",
    "Tick",
    "WeightSet",
    "load_plan",
    "metric_views",
    "next_action",
    "outcome_of",
]

DEFAULT_FLAG = "payments.new-router.enabled"
LOCAL_ARGS_ANNOTATION = "ripcord/local-args"
PROMETHEUS_ARG = "prometheus-address"
EXIT_OK, EXIT_ABORTED, EXIT_USAGE = 0, 1, 2


class PlanError(Exception):
    """The Rollout or its templates cannot be driven; nothing was changed."""


# ============================================================================ the plan


class StepKind(StrEnum):
    """The step kinds the local driver executes (spec 2)."""

    SET_WEIGHT = "setWeight"
    PAUSE = "pause"
    ANALYSIS = "analysis"


@dataclass(frozen=True)
class Step:
    """One Rollout step, resolved: an analysis step carries its templates and final args."""

    index: int  # 0-based position in spec.strategy.canary.steps
    kind: StepKind
    weight: int | None = None  # setWeight
    duration: float | None = None  # pause seconds; None = until promoted
    analysis: RolloutAnalysis | None = None
    templates: tuple[AnalysisTemplate, ...] = ()
    args: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """`setWeight 5`, `pause 30s`, `pause (until promoted)`, `analysis payment-router-slo`."""
        if self.kind == StepKind.SET_WEIGHT:
            return f"setWeight {self.weight}"
        if self.kind == StepKind.PAUSE:
            return (
                "pause (until promoted)" if self.duration is None else f"pause {self.duration:g}s"
            )
        names = ", ".join(t.name for t in self.templates) or "?"
        return f"analysis {names}"


@dataclass(frozen=True)
class Plan:
    """What `run` executes: the Rollout's name, where it came from, its resolved steps."""

    rollout: str
    source: str
    steps: tuple[Step, ...]


def _pause_seconds(raw: Any, where: str) -> float | None:
    if not isinstance(raw, Mapping):
        raise PlanError(f"{where}: pause must be a mapping ({{}} or {{duration: X}})")
    duration = raw.get("duration")
    if duration is None:
        return None
    if isinstance(duration, bool):
        raise PlanError(f"{where}: pause duration {duration!r} is not a duration")
    if isinstance(duration, int):
        seconds = float(duration)
    else:
        text = str(duration)
        try:
            # A string of digits is seconds, anything else a Go duration (spec 2).
            seconds = float(text) if text.isdigit() else parse_duration(text)
        except ValueError as e:
            raise PlanError(f"{where}: pause duration: {e}") from None
    if seconds < 0:
        raise PlanError(f"{where}: pause duration must not be negative")
    return seconds


def _local_args(
    docs: Sequence[Mapping[str, Any]], templates: Sequence[AnalysisTemplate]
) -> dict[str, str]:
    """The `ripcord/local-args` annotations (JSON objects) of ``templates``, merged in order."""
    merged: dict[str, str] = {}
    for template in templates:
        for doc in docs:
            meta = doc.get("metadata") or {}
            if doc.get("kind") != template.kind or meta.get("name") != template.name:
                continue
            raw = (meta.get("annotations") or {}).get(LOCAL_ARGS_ANNOTATION)
            if raw is None:
                continue
            try:
                values = json.loads(raw)
            except ValueError as e:
                raise PlanError(
                    f"{template.kind} {template.name}: annotation {LOCAL_ARGS_ANNOTATION} "
                    f"is not JSON: {e}"
                ) from None
            if not isinstance(values, dict):
                raise PlanError(f"{template.name}: {LOCAL_ARGS_ANNOTATION} must be a JSON object")
            merged.update({str(k): str(v) for k, v in values.items()})
    return merged


def _analysis_args(
    analysis: RolloutAnalysis,
    rollout: Mapping[str, Any],
    overrides: Mapping[str, str],
    where: str,
) -> dict[str, str]:
    """Rollout-supplied args, then ``overrides`` on top (local args < --prometheus < --arg)."""
    kept = tuple(a for a in analysis.args if str(a.get("name")) not in overrides)
    try:
        supplied = rollout_args(dataclasses.replace(analysis, args=kept), rollout, {})
    except AnalysisSpecError as e:
        raise PlanError(
            f"{where}: {e}: no pods here; pass the value with --arg NAME=VALUE "
            f"(or keep --local-args to use the template's {LOCAL_ARGS_ANNOTATION})"
        ) from None
    return {**supplied, **overrides}


def load_plan(
    rollout_path: Path,
    template_paths: Sequence[Path] = (),
    *,
    local_args: bool = True,
    prometheus: str | None = None,
    args: Mapping[str, str] | None = None,
) -> Plan:
    """Read the Rollout and its AnalysisTemplates and resolve every step; PlanError if unusable.

    Each analysis step's args are validated here (spec 8, 11): a template that cannot resolve
    fails before the flag is touched, not at 1%.
    """
    try:
        docs = load_documents(rollout_path)
        for path in template_paths:
            docs += load_documents(path)
        templates = templates_from_documents(docs)
    except (OSError, AnalysisSpecError, ValueError) as e:
        raise PlanError(str(e)) from None
    rollouts = [d for d in docs if d.get("kind") == "Rollout"]
    if len(rollouts) != 1:
        raise PlanError(f"{rollout_path}: expected one Rollout, found {len(rollouts)}")
    rollout = rollouts[0]
    name = str((rollout.get("metadata") or {}).get("name", "?"))
    canary = ((rollout.get("spec") or {}).get("strategy") or {}).get("canary")
    if not isinstance(canary, Mapping):
        raise PlanError(f"Rollout {name}: only the canary strategy can be driven")
    if canary.get("analysis"):
        raise PlanError(
            f"Rollout {name}: background analysis (strategy.canary.analysis) is not supported "
            "by the local driver; use analysis steps"
        )
    raw_steps = canary.get("steps") or []
    if not raw_steps:
        raise PlanError(f"Rollout {name}: no canary steps")
    analyses = {a.step_index: a for a in rollout_analyses(rollout) if a.step_index is not None}
    extra = dict(args or {})
    steps: list[Step] = []
    for i, raw in enumerate(raw_steps):
        where = f"Rollout {name} step {i + 1}"
        kinds = [k for k in raw or {} if raw[k] is not None]
        if len(kinds) != 1:
            raise PlanError(f"{where}: a step has exactly one action, found {kinds}")
        kind = kinds[0]
        if kind == "setWeight":
            weight = raw["setWeight"]
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise PlanError(f"{where}: setWeight must be a whole number in 0..100")
            steps.append(Step(i, StepKind.SET_WEIGHT, weight=weight))
        elif kind == "pause":
            steps.append(Step(i, StepKind.PAUSE, duration=_pause_seconds(raw["pause"], where)))
        elif kind == "analysis":
            analysis = analyses[i]
            try:
                chosen = select_templates(analysis, templates)
            except AnalysisSpecError as e:
                raise PlanError(f"{where}: {e}") from None
            overrides = _local_args(docs, chosen) if local_args else {}
            if prometheus:
                overrides[PROMETHEUS_ARG] = prometheus
            overrides.update(extra)
            values = _analysis_args(analysis, rollout, overrides, where)
            try:
                spec = prepare_run(
                    chosen,
                    values,
                    dry_run=analysis.dry_run,
                    measurement_retention=analysis.measurement_retention,
                )
            except AnalysisSpecError as e:
                raise PlanError(f"{where}: {e}") from None
            problems = check_conditions(spec)
            if problems:
                raise PlanError(f"{where}: {'; '.join(problems)}")
            steps.append(
                Step(i, StepKind.ANALYSIS, analysis=analysis, templates=tuple(chosen), args=values)
            )
        else:
            raise PlanError(
                f"{where}: {kind!r} steps are not supported by the local driver "
                "(setWeight, pause and analysis are)"
            )
    return Plan(rollout=name, source=str(rollout_path), steps=tuple(steps))


# ============================================================================ analysis outcomes


@dataclass(frozen=True)
class MetricView:
    """One metric as the terminal and `status` show it."""

    name: str
    phase: str  # the metric's phase (Pending, Running, Successful, ...)
    value: str | None  # the newest measurement's value, readable ("0.0123", "no data")
    verdict: str | None  # the newest measurement's phase
    measured: int  # non-error measurements so far
    wanted: int | None  # effective count (None = unlimited)
    errors: int  # consecutive errors
    dry_run: bool
    message: str  # the newest measurement's message (errors)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricView:
        """Back from ``to_dict``."""
        wanted = data.get("wanted")
        return cls(
            name=str(data.get("name", "")),
            phase=str(data.get("phase", "")),
            value=None if data.get("value") is None else str(data["value"]),
            verdict=None if data.get("verdict") is None else str(data["verdict"]),
            measured=int(data.get("measured") or 0),
            wanted=None if wanted is None else int(wanted),
            errors=int(data.get("errors") or 0),
            dry_run=bool(data.get("dry_run")),
            message=str(data.get("message") or ""),
        )


@dataclass(frozen=True)
class AnalysisOutcome:
    """A completed run as the rollout sees it: its phase and a one-line explanation."""

    phase: Phase
    summary: str  # e.g. "p99-latency = 0.4975 >= 0.2 (Failed)"
    metrics: tuple[MetricView, ...] = ()


def readable_value(value: str | None) -> str | None:
    """`[0.31]` -> `0.31`, `[]` -> `no data`; floats to 4 significant digits."""
    if value is None:
        return None
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if not inner:
        return "no data"
    parts = []
    for piece in inner.split(","):
        try:
            number = float(piece)
        except ValueError:
            parts.append(piece)
            continue
        parts.append(f"{number:.4g}" if math.isfinite(number) else piece)
    return parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"


def metric_views(run: AnalysisRun) -> tuple[MetricView, ...]:
    """Every metric of ``run``: phase, newest value and verdict, progress."""
    views = []
    for spec, res in zip(run.spec.metrics, run.results, strict=True):
        last = res.last_measurement
        views.append(
            MetricView(
                name=res.name,
                phase=str(res.phase),
                value=readable_value(last.value) if last is not None else None,
                verdict=str(last.phase) if last is not None else None,
                measured=res.count,
                wanted=spec.effective_count,
                errors=res.consecutive_error,
                dry_run=res.dry_run,
                message=last.message if last is not None else "",
            )
        )
    return tuple(views)


_COMPARISON = re.compile(
    r"result(?:\[0\])?\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.\[])"
)


def _threshold(condition: str) -> tuple[str, str] | None:
    """The last `result[0] OP NUMBER` comparison in a condition, if there is one."""
    found = _COMPARISON.findall(condition)
    return (found[-1][0], found[-1][1]) if found else None


def _explain(spec: MetricSpec, res: MetricResult) -> str:
    """Why one metric ended the run: name, value, the threshold it crossed, phase."""
    last = res.last_measurement
    value = readable_value(last.value) if last is not None else None
    shown = f"{res.name} = {value}" if value is not None else res.name
    if res.phase == Phase.FAILED:
        crossed = _threshold(spec.failure_condition)
        if crossed is not None:
            return f"{shown} {crossed[0]} {crossed[1]} (Failed)"
        wanted = _threshold(spec.success_condition)
        if wanted is not None:
            return f"{shown}, not {wanted[0]} {wanted[1]} (Failed)"
        return f"{shown} (Failed: failed ({res.failed}) > failureLimit ({spec.failure_limit}))"
    if res.phase == Phase.ERROR:
        why = f"{res.consecutive_error} consecutive errors > limit {spec.consecutive_error_limit}"
        detail = f": {last.message}" if last is not None and last.message else ""
        return f"{res.name}: {why}{detail} (Error)"
    if res.phase == Phase.INCONCLUSIVE:
        if res.inconclusive > spec.inconclusive_limit:
            limit = spec.inconclusive_limit
            why = f"inconclusive ({res.inconclusive}) > inconclusiveLimit ({limit})"
        else:
            why = f"count ({res.count}) reached without {spec.consecutive_success_limit} successes"
        return f"{shown}, {why} (Inconclusive)"
    return f"{shown} ({res.phase})"


def outcome_of(run: AnalysisRun) -> AnalysisOutcome:
    """What a completed run means for the rollout, with the deciding metrics explained."""
    views = metric_views(run)
    if not run.completed:
        return AnalysisOutcome(Phase.ERROR, "the analysis stopped before completing (Error)", views)
    if run.phase == Phase.SUCCESSFUL:
        shown = [f"{v.name} = {v.value}" for v in views if not v.dry_run and v.value is not None]
        return AnalysisOutcome(run.phase, "; ".join(shown) + " (Successful)", views)
    deciding = [
        _explain(spec, res)
        for spec, res in zip(run.spec.metrics, run.results, strict=True)
        if res.phase == run.phase and not res.dry_run
    ]
    if not deciding:  # an Error before any measurement: unresolved args, invalid spec (4)
        return AnalysisOutcome(run.phase, f"{run.message or 'no metric ran'} ({run.phase})", views)
    return AnalysisOutcome(run.phase, "; ".join(deciding), views)


# ============================================================================ the state machine


class RolloutPhase(StrEnum):
    """The rollout's own phase."""

    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    COMPLETED = "Completed"
    ABORTED = "Aborted"

    @property
    def final(self) -> bool:
        """Completed or Aborted."""
        return self in (RolloutPhase.COMPLETED, RolloutPhase.ABORTED)


class PauseKind(StrEnum):
    """Why the rollout is paused."""

    TIMED = "duration"  # pause: {duration}
    PROMOTE = "promote"  # pause: {} — waits for a human
    INCONCLUSIVE = "inconclusive"  # an Inconclusive analysis — waits for a human


class Awaiting(StrEnum):
    """The action in flight whose result the state machine waits for."""

    WEIGHT = "weight"
    ANALYSIS = "analysis"


@dataclass(frozen=True)
class RolloutState:
    """Where the rollout is. ``index`` is the current step (== len(steps) when finishing)."""

    steps: tuple[Step, ...]
    pause_scale: float = 1.0
    index: int = 0
    weight: int = 0  # the flag weight the driver last set
    phase: RolloutPhase = RolloutPhase.PROGRESSING
    pause: PauseKind | None = None
    pause_until: float | None = None
    awaiting: Awaiting | None = None
    started: bool = False
    message: str = ""
    last_outcome: AnalysisOutcome | None = None

    @property
    def step(self) -> Step | None:
        """The current step, None past the end."""
        return self.steps[self.index] if self.index < len(self.steps) else None

    def position(self) -> str:
        """`step 4/11`."""
        return f"step {min(self.index, len(self.steps) - 1) + 1}/{len(self.steps)}"


# -- events


@dataclass(frozen=True)
class Start:
    """The driver begins."""

    now: float


@dataclass(frozen=True)
class WeightSet:
    """The flag's split is now on=weight."""

    weight: int
    now: float


@dataclass(frozen=True)
class AnalysisEnded:
    """The current step's analysis completed."""

    outcome: AnalysisOutcome
    now: float


@dataclass(frozen=True)
class Tick:
    """Time passes (ends timed pauses)."""

    now: float


@dataclass(frozen=True)
class Promote:
    """`ripcord canary promote`."""

    user: str
    now: float


@dataclass(frozen=True)
class Abort:
    """`ripcord canary abort`, or the driver interrupted."""

    user: str
    now: float


@dataclass(frozen=True)
class FlagConflict:
    """Someone else changed the flag since the driver's last change (expected_version)."""

    detail: str
    now: float


@dataclass(frozen=True)
class ActuatorFailed:
    """The admin API refused or could not be reached (after retries)."""

    detail: str
    now: float


Event = Start | WeightSet | AnalysisEnded | Tick | Promote | Abort | FlagConflict | ActuatorFailed


# -- actions


@dataclass(frozen=True)
class SetWeight:
    """SetRollout(on=weight, off=100-weight) with the driver's expected_version."""

    weight: int
    reason: str


@dataclass(frozen=True)
class RunAnalysis:
    """Start the step's AnalysisRun."""

    step: Step


@dataclass(frozen=True)
class StopAnalysis:
    """Terminate the running AnalysisRun (spec.terminate)."""


@dataclass(frozen=True)
class Rollback:
    """The flag to on=0 with ``reason``, whatever its version: a rollback always wins."""

    reason: str


@dataclass(frozen=True)
class Page:
    """Notify on-call (after any Rollback of the same transition)."""

    event: str  # canary.aborted | canary.inconclusive | canary.conflict
    severity: str  # critical | warning
    reason: str
    trigger: str  # analysis | operator | admin-api | conflict
    step: int  # 1-based
    steps: int
    step_description: str
    weight: int  # the weight that was live when it happened
    metrics: tuple[MetricView, ...] = ()


@dataclass(frozen=True)
class Done:
    """The driver ends with this exit status."""

    code: int


Action = SetWeight | RunAnalysis | StopAnalysis | Rollback | Page | Done
Transition = tuple[RolloutState, tuple[Action, ...]]


def initial_state(steps: Sequence[Step], pause_scale: float = 1.0) -> RolloutState:
    """Before Start."""
    if pause_scale < 0:
        raise ValueError("pause_scale must not be negative")
    return RolloutState(steps=tuple(steps), pause_scale=pause_scale)


def _advance(state: RolloutState, now: float) -> Transition:
    """Enter the step at ``state.index`` (skipping zero-length pauses)."""
    state = dataclasses.replace(
        state, phase=RolloutPhase.PROGRESSING, pause=None, pause_until=None, awaiting=None
    )
    n = len(state.steps)
    while True:
        step = state.step
        if step is None:
            if state.weight != 100 and state.index == n:
                # Past the last step the canary is the new stable: 100% (spec 2).
                reason = f"canary complete: all {n} steps passed, promoted to 100%"
                done = dataclasses.replace(state, awaiting=Awaiting.WEIGHT, message=reason)
                return done, (SetWeight(100, reason),)
            message = f"completed: all {n} steps passed, flag at {state.weight}%"
            return dataclasses.replace(state, phase=RolloutPhase.COMPLETED, message=message), (
                Done(EXIT_OK),
            )
        where = f"step {step.index + 1}/{n}"
        if step.kind == StepKind.SET_WEIGHT:
            assert step.weight is not None
            reason = f"canary {where}: setWeight {step.weight}"
            return dataclasses.replace(state, awaiting=Awaiting.WEIGHT, message=reason), (
                SetWeight(step.weight, reason),
            )
        if step.kind == StepKind.ANALYSIS:
            message = f"{where}: {step.describe()} gating setWeight {state.weight}"
            return dataclasses.replace(state, awaiting=Awaiting.ANALYSIS, message=message), (
                RunAnalysis(step),
            )
        if step.duration is None:
            message = f"{where}: paused until `ripcord canary promote` (or abort)"
            paused = dataclasses.replace(
                state, phase=RolloutPhase.PAUSED, pause=PauseKind.PROMOTE, message=message
            )
            return paused, ()
        seconds = step.duration * state.pause_scale
        if seconds <= 0:
            state = dataclasses.replace(state, index=state.index + 1)
            continue
        message = f"{where}: pause {step.duration:g}s"
        if state.pause_scale != 1:
            message += f" (x{state.pause_scale:g} = {seconds:g}s)"
        return dataclasses.replace(
            state,
            phase=RolloutPhase.PAUSED,
            pause=PauseKind.TIMED,
            pause_until=now + seconds,
            message=message,
        ), ()


def _page(
    state: RolloutState,
    event: str,
    severity: str,
    reason: str,
    trigger: str,
    metrics: tuple[MetricView, ...] = (),
) -> Page:
    step = state.step
    n = len(state.steps)
    return Page(
        event=event,
        severity=severity,
        reason=reason,
        trigger=trigger,
        step=min(state.index, n - 1) + 1,
        steps=n,
        step_description=step.describe() if step is not None else "promotion to 100%",
        weight=state.weight,
        metrics=metrics,
    )


def _abort(
    state: RolloutState, reason: str, trigger: str, metrics: tuple[MetricView, ...] = ()
) -> Transition:
    actions: list[Action] = []
    if state.awaiting == Awaiting.ANALYSIS:
        actions.append(StopAnalysis())
    page = _page(state, "canary.aborted", "critical", reason, trigger, metrics)
    actions += [Rollback(reason), page, Done(EXIT_ABORTED)]
    aborted = dataclasses.replace(
        state,
        phase=RolloutPhase.ABORTED,
        weight=0,
        pause=None,
        pause_until=None,
        awaiting=None,
        message=reason,
    )
    return aborted, tuple(actions)


def _gate(state: RolloutState) -> str:
    return f"{state.position()} (setWeight {state.weight})"


def next_action(state: RolloutState, event: Event) -> Transition:
    """The pure step logic: the new state and what to do. Events that do not apply are ignored
    (the state comes back unchanged with no actions)."""
    if state.phase.final:
        return state, ()
    if isinstance(event, Start):
        if state.started:
            return state, ()
        return _advance(dataclasses.replace(state, started=True), event.now)
    if not state.started:
        return state, ()
    if isinstance(event, WeightSet):
        if state.awaiting != Awaiting.WEIGHT:
            return state, ()
        moved = dataclasses.replace(state, weight=event.weight, index=state.index + 1)
        return _advance(moved, event.now)
    if isinstance(event, AnalysisEnded):
        if state.awaiting != Awaiting.ANALYSIS:
            return state, ()
        outcome = event.outcome
        state = dataclasses.replace(state, last_outcome=outcome, awaiting=None)
        if outcome.phase == Phase.SUCCESSFUL:
            return _advance(dataclasses.replace(state, index=state.index + 1), event.now)
        if outcome.phase == Phase.INCONCLUSIVE:
            reason = (
                f"canary paused at {_gate(state)}: {outcome.summary}; "
                "`ripcord canary promote` continues past the analysis, `ripcord canary abort` "
                "rolls back"
            )
            paused = dataclasses.replace(
                state,
                phase=RolloutPhase.PAUSED,
                pause=PauseKind.INCONCLUSIVE,
                awaiting=None,
                message=reason,
            )
            page = _page(
                state, "canary.inconclusive", "warning", reason, "analysis", outcome.metrics
            )
            return paused, (page,)
        if outcome.phase in (Phase.FAILED, Phase.ERROR):
            reason = f"canary abort at {_gate(state)}: {outcome.summary}"
            return _abort(state, reason, "analysis", outcome.metrics)
        return state, ()
    if isinstance(event, Tick):
        if (
            state.phase == RolloutPhase.PAUSED
            and state.pause == PauseKind.TIMED
            and state.pause_until is not None
            and event.now >= state.pause_until
        ):
            return _advance(dataclasses.replace(state, index=state.index + 1), event.now)
        return state, ()
    if isinstance(event, Promote):
        if state.phase != RolloutPhase.PAUSED:
            return state, ()
        # Past the pause, or past the Inconclusive analysis (spec 2).
        return _advance(dataclasses.replace(state, index=state.index + 1), event.now)
    if isinstance(event, Abort):
        step = state.step
        what = step.describe() if step is not None else "promotion to 100%"
        reason = f"canary aborted by {event.user} at {state.position()} ({what})"
        return _abort(state, reason, "operator")
    if isinstance(event, ActuatorFailed):
        reason = f"canary abort at {state.position()}: the flag could not be set: {event.detail}"
        return _abort(state, reason, "admin-api")
    if isinstance(event, FlagConflict):
        reason = (
            f"canary stopped at {state.position()}: the flag was changed outside the canary "
            f"({event.detail}); left as it is"
        )
        stopped = dataclasses.replace(
            state, phase=RolloutPhase.ABORTED, awaiting=None, pause=None, message=reason
        )
        page = _page(state, "canary.conflict", "critical", reason, "conflict")
        return stopped, (page, Done(EXIT_ABORTED))
    raise TypeError(f"unknown event {event!r}")


# ============================================================================ state directory


class DriverBusy(Exception):
    """Another driver holds the state directory."""


@dataclass(frozen=True)
class OperatorRequest:
    """A request file from `promote`/`abort`."""

    id: str
    action: str  # promote | abort
    user: str
    target: str  # promote: the pause it means (run_id/step index); abort: ""
    at: float


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class StateDir:
    """The files that coordinate the driver with operators (all JSON, readable by hand).

    * ``status.json``: written by the running driver at every change and every second;
    * ``requests/<time>-<id>.json``: one file per `promote`/`abort`, consumed by the driver;
    * ``driver.lock``: flock'ed by the running driver, so "is a driver running" is exact.
    Every file is written to a temporary name and renamed (os.replace): readers never see half
    a file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.status_path = self.path / "status.json"
        self.lock_path = self.path / "driver.lock"
        self.requests_path = self.path / "requests"

    def ensure(self) -> None:
        """Create the directories."""
        self.requests_path.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the driver lock for the duration; DriverBusy if another driver has it."""
        self.ensure()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise DriverBusy(f"a canary driver is already running in {self.path}") from None
                raise
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)  # releases the lock

    def driver_running(self) -> bool:
        """True while some process holds the driver lock."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def write_status(self, doc: Mapping[str, Any]) -> None:
        """Replace status.json."""
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.status_path, json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def read_status(self) -> dict[str, Any] | None:
        """status.json, or None when there is none."""
        try:
            data = json.loads(self.status_path.read_text())
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def post(self, action: str, user: str, target: str = "", now: float | None = None) -> str:
        """Leave a request for the driver; returns its id."""
        self.ensure()
        at = time.time() if now is None else now
        rid = uuid.uuid4().hex[:12]
        doc = {"id": rid, "action": action, "user": user, "target": target, "at": at}
        _atomic_write(self.requests_path / f"{at:017.6f}-{rid}.json", json.dumps(doc) + "\n")
        return rid

    def take(self) -> list[OperatorRequest]:
        """Read and remove every pending request, oldest first (unreadable ones are dropped)."""
        if not self.requests_path.is_dir():
            return []
        found = []
        for path in sorted(self.requests_path.glob("[!.]*.json")):
            try:
                raw = json.loads(path.read_text())
                found.append(
                    OperatorRequest(
                        id=str(raw["id"]),
                        action=str(raw["action"]),
                        user=str(raw.get("user") or "unknown"),
                        target=str(raw.get("target") or ""),
                        at=float(raw.get("at") or 0.0),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                pass
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return found

    def clear(self) -> None:
        """Drop requests left from an earlier run (a stale abort must not hit a new one)."""
        self.take()


# ============================================================================ the flag


class FlagError(Exception):
    """The admin API could not read or change the flag."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class FlagConflictError(FlagError):
    """expected_version did not match: someone else changed the flag (ABORTED)."""


@dataclass(frozen=True)
class FlagView:
    """The release flag as the admin API shows it."""

    on: str  # the variant serving the new path
    off: str
    weight: int | None  # on's weight in the split
    version: int  # last_change.version, the expected_version for the next change
    reason: str  # last change's reason
    actor: str


class FlagActuator(Protocol):
    """What the driver needs from the admin API (AdminFlag, or a fake in tests)."""

    def read(self) -> FlagView:
        """The flag now."""
        ...

    def set_weight(self, weight: int, reason: str, expected_version: int | None) -> int:
        """SetRollout on=weight off=100-weight; returns the new last_change version."""
        ...


class AdminFlag:
    """The release flag through ripcord.admin.v1.FlagAdmin (bearer token from RIPCORD_TOKEN)."""

    def __init__(
        self,
        server: str,
        flag: str,
        *,
        token: str = "",
        flag_set: str = "",
        timeout: float = 10.0,
        tls: bool = False,
        cacert: bytes | None = None,
    ) -> None:
        from ripcord_pb.ripcord.admin.v1 import admin_pb2_grpc

        self.server = server
        self.flag = flag
        self.flag_set = flag_set
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if tls or cacert is not None:
            credentials = grpc.ssl_channel_credentials(cacert)
            self.channel = grpc.secure_channel(server, credentials)
        else:
            self.channel = grpc.insecure_channel(server)
        self.stub = admin_pb2_grpc.FlagAdminStub(self.channel)
        self._order: list[str] | None = None
        self._on_off: tuple[str, str] | None = None

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code()
            text = f"{code.name}: {e.details()} ({self.server})"
            if code == grpc.StatusCode.ABORTED:
                raise FlagConflictError(text, code) from None
            raise FlagError(text, code) from None

    def read(self) -> FlagView:
        """GetFlag; works out which variant is `on` the way `ripcord flags rollout N` does."""
        from ripcord import flags_render
        from ripcord.flags_cli import on_off
        from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb

        got = self._call("GetFlag", pb.GetFlagRequest(key=self.flag, flag_set_id=self.flag_set))
        pair = on_off(got.flag, flags_render.struct_data(got.definition))
        if isinstance(pair, str):
            raise FlagError(f"{self.flag}: {pair}")
        on, off, _ = pair
        self._on_off = (on, off)
        self._order = [w.variant for w in got.flag.rollout]
        weights = {w.variant: int(w.weight) for w in got.flag.rollout}
        total = sum(weights.values())
        weight = round(100 * weights[on] / total) if total else None
        last = got.flag.last_change
        return FlagView(on, off, weight, int(last.version), last.reason, last.actor)

    def set_weight(self, weight: int, reason: str, expected_version: int | None) -> int:
        """SetRollout(on=weight, off=100-weight, reason, expected_version)."""
        from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb

        if self._on_off is None or self._order is None:
            self.read()
        assert self._on_off is not None and self._order is not None
        on, off = self._on_off
        order = self._order
        weights = sorted([(on, weight), (off, 100 - weight)], key=lambda w: order.index(w[0]))
        request = pb.SetRolloutRequest(
            key=self.flag,
            flag_set_id=self.flag_set,
            weights=[pb.RolloutWeight(variant=v, weight=w) for v, w in weights],
            reason=reason,
            expected_version=expected_version,
        )
        reply = self._call("SetRollout", request)
        return int(reply.change.version or reply.version)


# ============================================================================ analyses


class AnalysisHandleLike(Protocol):
    """A running analysis (canary.analysis.AnalysisHandle, or a test double)."""

    @property
    def run(self) -> AnalysisRun:
        """The newest state."""
        ...

    @property
    def done(self) -> bool:
        """True once the run completed (or its loop died)."""
        ...

    def terminate(self) -> None:
        """spec.terminate."""
        ...


class AnalysisLauncher(Protocol):
    """Starts a step's analysis."""

    def start(self, step: Step) -> AnalysisHandleLike:
        """A handle on the new run."""
        ...


class PrometheusAnalyses:
    """Analyses against Prometheus, each in a background thread (canary.start_analysis)."""

    def __init__(self, client: PrometheusClient | None = None) -> None:
        self.client = client or PrometheusClient()

    def start(self, step: Step) -> AnalysisHandleLike:
        """Start the run of ``step``."""
        assert step.analysis is not None
        return start_analysis(
            list(step.templates),
            step.args,
            self.client,
            dry_run=step.analysis.dry_run,
            measurement_retention=step.analysis.measurement_retention,
        )


# ============================================================================ status


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds")


def status_document(
    state: RolloutState,
    *,
    meta: Mapping[str, Any],
    analysis: AnalysisRun | None,
    history: Sequence[Mapping[str, Any]],
    now: float,
    exit_code: int | None = None,
    flag_version: int | None = None,
) -> dict[str, Any]:
    """What status.json holds: position, weight, phase, each metric's last value and verdict."""
    n = len(state.steps)
    current = min(state.index, n - 1)
    steps = []
    for step in state.steps:
        if step.index < state.index or state.phase == RolloutPhase.COMPLETED:
            mark = "done"
        elif step.index == state.index and not state.phase.final:
            mark = "current"
        elif step.index == state.index:
            mark = "stopped"
        else:
            mark = "pending"
        steps.append({"step": step.index + 1, "description": step.describe(), "status": mark})
    pause = None
    if state.pause is not None:
        pause = {"kind": str(state.pause), "until": state.pause_until}
    run_doc = None
    if analysis is not None:
        run_doc = {
            "phase": str(analysis.phase),
            "message": analysis.message,
            "metrics": [v.to_dict() for v in metric_views(analysis)],
        }
    return {
        "format": 1,
        **meta,
        "updated_at": now,
        "updated": _iso(now),
        "phase": str(state.phase),
        "step": current + 1,
        "steps": n,
        "step_index": state.index,
        "step_description": state.steps[current].describe() if n else "",
        "steps_list": steps,
        "weight": state.weight,
        "pause": pause,
        "pause_token": f"{meta.get('run_id')}/{state.index}"
        if state.phase == RolloutPhase.PAUSED
        else None,
        "message": state.message,
        "analysis": run_doc,
        "history": list(history)[-50:],
        "exit_code": exit_code,
        "flag_version": flag_version,
    }


# ============================================================================ the driver


class Observer(Protocol):
    """The terminal: event lines and status snapshots."""

    def event(self, text: str, level: str = "info") -> None:
        """One line worth telling (level: info, warning, error, success)."""
        ...

    def update(self, status: Mapping[str, Any]) -> None:
        """The latest status document."""
        ...


class _NoObserver:
    def event(self, text: str, level: str = "info") -> None:
        pass

    def update(self, status: Mapping[str, Any]) -> None:
        pass


RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Driver:
    """Executes the state machine's actions and feeds their results back as events."""

    def __init__(
        self,
        plan: Plan,
        flag: FlagActuator,
        analyses: AnalysisLauncher,
        state_dir: StateDir,
        notifier: Notifier,
        *,
        flag_name: str = DEFAULT_FLAG,
        server: str = "",
        user: str = "unknown",
        pause_scale: float = 1.0,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = 0.2,
        heartbeat: float = 1.0,
        set_attempts: int = 3,
        rollback_attempts: int = 5,
        retry_delay: float = 0.5,
    ) -> None:
        self.plan = plan
        self.flag = flag
        self.analyses = analyses
        self.state_dir = state_dir
        self.notifier = notifier
        self.flag_name = flag_name
        self.observer: Observer = observer or _NoObserver()
        self.clock = clock
        self.sleep = sleep
        self.poll_interval = poll_interval
        self.heartbeat = heartbeat
        self.set_attempts = set_attempts
        self.rollback_attempts = rollback_attempts
        self.retry_delay = retry_delay
        self.state = initial_state(plan.steps, pause_scale)
        self.run_id = uuid.uuid4().hex[:12]
        self.meta = {
            "run_id": self.run_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": user,
            "rollout": plan.rollout,
            "source": plan.source,
            "flag": flag_name,
            "server": server,
            "pause_scale": pause_scale,
            "started_at": clock(),
        }
        self.expected: int | None = None
        self.handle: AnalysisHandleLike | None = None
        self.analysis_run: AnalysisRun | None = None
        self.exit_code: int | None = None
        self.history: list[dict[str, Any]] = []
        self._rollback: dict[str, Any] | None = None
        self._last_write = 0.0

    # -- output

    def _note(self, text: str, level: str = "info") -> None:
        now = self.clock()
        self.history.append({"at": now, "time": _iso(now), "level": level, "text": text})
        self.observer.event(text, level)

    def status(self) -> dict[str, Any]:
        """The status document now."""
        return status_document(
            self.state,
            meta=self.meta,
            analysis=self.analysis_run,
            history=self.history,
            now=self.clock(),
            exit_code=self.exit_code,
            flag_version=self.expected,
        )

    def _publish(self) -> None:
        doc = self.status()
        self.state_dir.write_status(doc)
        self.observer.update(doc)
        self._last_write = self.clock()

    # -- the loop

    def run(self) -> int:
        """Drive the rollout to Completed or Aborted; returns the exit status."""
        with self.state_dir.hold():
            self.state_dir.clear()
            try:
                view = self.flag.read()
            except FlagError as e:
                self._note(f"cannot read flag {self.flag_name}: {e}", "error")
                self.exit_code = EXIT_ABORTED
                self._publish()
                return EXIT_ABORTED
            self.expected = view.version
            self._note(
                f"{self.plan.rollout}: {len(self.plan.steps)} steps on flag {self.flag_name} "
                f"(now {view.on}={view.weight}%, version {view.version})"
            )
            try:
                self._feed(Start(self.clock()))
                while self.exit_code is None:
                    self._poll()
                    if self.exit_code is not None:
                        break
                    if self.clock() - self._last_write >= self.heartbeat:
                        self._publish()
                    self.sleep(self.poll_interval)
            except KeyboardInterrupt:
                self._note("interrupted: aborting (the flag goes back to 0%)", "warning")
                self._feed(Abort(f"{self.meta['user']} (interrupted)", self.clock()))
            except Exception as e:  # a bug or a broken disk must not leave the flag ungated
                self._note(f"driver failure: {type(e).__name__}: {e}; aborting", "error")
                self._feed(Abort(f"the driver ({type(e).__name__}: {e})", self.clock()))
            self._publish()
            assert self.exit_code is not None
            return self.exit_code

    def _poll(self) -> None:
        now = self.clock()
        requests = self.state_dir.take()
        for request in sorted(requests, key=lambda r: (r.action != "abort", r.at)):
            if self.state.phase.final:
                self._note(
                    f"{request.action} by {request.user} ignored: already {self.state.phase}"
                )
            elif request.action == "abort":
                self._note(f"abort requested by {request.user}", "warning")
                self._feed(Abort(request.user, now))
            elif request.action == "promote":
                token = f"{self.run_id}/{self.state.index}"
                if self.state.phase != RolloutPhase.PAUSED or request.target != token:
                    self._note(
                        f"promote by {request.user} ignored: not paused at the step it named "
                        f"({request.target or '-'}); now {self.state.position()} "
                        f"{self.state.phase}",
                        "warning",
                    )
                    continue
                self._note(f"promoted by {request.user} at {self.state.position()}", "success")
                self._feed(Promote(request.user, now))
            else:
                self._note(f"unknown request {request.action!r} ignored", "warning")
        if self.exit_code is not None:
            return
        handle = self.handle
        if handle is not None:
            done = handle.done
            run = handle.run
            if run is not self.analysis_run:
                self._report_measurements(self.analysis_run, run)
                self.analysis_run = run
                self._publish()
            if done:
                self.handle = None
                outcome = outcome_of(run)
                level = {Phase.SUCCESSFUL: "success", Phase.INCONCLUSIVE: "warning"}.get(
                    outcome.phase, "error"
                )
                self._note(
                    f"{self.state.position()} analysis {outcome.phase}: {outcome.summary}", level
                )
                self._feed(AnalysisEnded(outcome, self.clock()))
        self._feed(Tick(self.clock()))

    def _report_measurements(self, before: AnalysisRun | None, after: AnalysisRun) -> None:
        for res in after.results:
            old = 0
            if before is not None and before.spec is after.spec:
                with contextlib.suppress(KeyError):
                    prev = before.result(res.name)
                    old = prev.count + prev.error
            new = res.count + res.error
            if new > old and res.last_measurement is not None:
                m = res.last_measurement
                value = readable_value(m.value) or "-"
                extra = f": {m.message}" if m.message else ""
                dry = " (dry run)" if res.dry_run else ""
                self._note(
                    f"  {res.name} = {value} {m.phase}{dry} "
                    f"[{res.count}/{self._wanted(after, res.name)}]{extra}"
                )

    @staticmethod
    def _wanted(run: AnalysisRun, name: str) -> str:
        wanted = run.metric(name).effective_count
        return "∞" if wanted is None else str(wanted)

    def _feed(self, event: Event) -> None:
        queue: list[Event] = [event]
        while queue:
            current = queue.pop(0)
            before = self.state
            self.state, actions = next_action(self.state, current)
            for action in actions:
                queue.extend(self._execute(action))
            if self.state is not before:
                self._publish()

    # -- actions

    def _execute(self, action: Action) -> list[Event]:
        if isinstance(action, SetWeight):
            return self._set_weight(action)
        if isinstance(action, RunAnalysis):
            step = action.step
            self.analysis_run = None
            self._note(
                f"{self.state.position()} {step.describe()} started (gating {self.state.weight}%)"
            )
            self.handle = self.analyses.start(step)
            self.analysis_run = self.handle.run
            return []
        if isinstance(action, StopAnalysis):
            if self.handle is not None:
                self.handle.terminate()
                self.analysis_run = self.handle.run
                self.handle = None
            return []
        if isinstance(action, Rollback):
            self._do_rollback(action.reason)
            return []
        if isinstance(action, Page):
            self._send_page(action)
            return []
        if isinstance(action, Done):
            self.exit_code = action.code
            level = "success" if action.code == EXIT_OK else "error"
            self._note(self.state.message, level)
            return []
        raise TypeError(f"unknown action {action!r}")

    def _set_weight(self, action: SetWeight) -> list[Event]:
        attempt = 0
        while True:
            attempt += 1
            try:
                version = self.flag.set_weight(action.weight, action.reason, self.expected)
                break
            except FlagConflictError as e:
                if attempt > 1 and self._already_applied(action):
                    version = self.expected or 0
                    break
                self._note(f"flag changed outside the canary: {e}", "error")
                return [FlagConflict(self._conflict_detail(e), self.clock())]
            except FlagError as e:
                if e.code in RETRYABLE and attempt < self.set_attempts:
                    self._note(f"setWeight {action.weight}: {e}; retrying", "warning")
                    self.sleep(self.retry_delay * attempt)
                    continue
                self._note(f"setWeight {action.weight} failed: {e}", "error")
                return [ActuatorFailed(str(e), self.clock())]
        self.expected = version
        self._note(
            f"{action.reason}: {self.flag_name} on={action.weight} off={100 - action.weight}"
            f" (version {version})"
        )
        return [WeightSet(action.weight, self.clock())]

    def _already_applied(self, action: SetWeight) -> bool:
        """After a retried call: did the lost first attempt commit exactly this change?"""
        try:
            view = self.flag.read()
        except FlagError:
            return False
        if view.weight == action.weight and view.reason == action.reason:
            self.expected = view.version
            return True
        return False

    def _conflict_detail(self, error: FlagError) -> str:
        try:
            view = self.flag.read()
        except FlagError:
            return str(error)
        return (
            f"now {view.on}={view.weight}% at version {view.version} by {view.actor}: "
            f"{view.reason!r}"
        )

    def _do_rollback(self, reason: str) -> None:
        last: FlagError | None = None
        for attempt in range(1, self.rollback_attempts + 1):
            try:
                version = self.flag.set_weight(0, reason, None)
            except FlagError as e:
                last = e
                self._note(f"rollback attempt {attempt} failed: {e}", "error")
                if attempt < self.rollback_attempts:
                    self.sleep(self.retry_delay * 2 ** (attempt - 1))
                continue
            self.expected = version
            self._rollback = {"ok": True, "flag_weight": 0, "flag_version": version}
            self._note(
                f"ROLLED BACK: {self.flag_name} on=0 off=100 (version {version}): {reason}", "error"
            )
            return
        self._rollback = {"ok": False, "flag_weight": None, "error": str(last)}
        self._note(f"ROLLBACK FAILED, the flag may still be live: {last}", "error")

    def _send_page(self, page: Page) -> None:
        event: dict[str, Any] = {
            "event": page.event,
            "severity": page.severity,
            "summary": f"{self.plan.rollout}/{self.flag_name}: {page.reason}",
            "reason": page.reason,
            "trigger": page.trigger,
            "rollout": self.plan.rollout,
            "flag": self.flag_name,
            "server": self.meta["server"],
            "step": page.step,
            "steps": page.steps,
            "step_description": page.step_description,
            "weight": page.weight,
            "flag_weight": self.state.weight,
            "metrics": [m.to_dict() for m in page.metrics],
            "run_id": self.run_id,
            "host": self.meta["host"],
            "at": _iso(self.clock()),
            "state_dir": str(self.state_dir.path),
        }
        if page.event == "canary.aborted" and self._rollback is not None:
            event["rollback"] = self._rollback
            if not self._rollback["ok"]:
                event["flag_weight"] = None
                event["summary"] += " -- ROLLBACK FAILED, the flag may still be live"
        if page.event == "canary.conflict":
            event["flag_weight"] = None
        if not self.notifier.configured:
            self._note("page: no --notify-command/--notify-webhook configured", "warning")
            return
        results: list[Delivery] = self.notifier.send(event)
        for result in results:
            self._note(f"page {page.event}: {result}", "info" if result.ok else "warning")
