"""The rollout state machine: ``next_action(state, event) -> (state, actions)``. Pure: no clock,
no network; the driver (canary.rollout) executes the actions and feeds results back as events."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from canary.analysis import Phase
from canary.outcome import AnalysisOutcome, MetricView
from canary.plan import Step, StepKind

__all__ = [
    "EXIT_ABORTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Abort",
    "Action",
    "ActuatorFailed",
    "AnalysisEnded",
    "Awaiting",
    "Done",
    "Event",
    "FlagConflict",
    "Page",
    "PauseKind",
    "Promote",
    "Rollback",
    "RolloutPhase",
    "RolloutState",
    "RunAnalysis",
    "SetWeight",
    "Start",
    "StopAnalysis",
    "Tick",
    "Transition",
    "WeightSet",
    "initial_state",
    "next_action",
]

EXIT_OK, EXIT_ABORTED, EXIT_USAGE = 0, 1, 2


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
