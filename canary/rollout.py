"""The canary rollout driver: walk a Rollout's steps on the release flag, gated by analyses.

`ripcord canary run` releases the new engine behind `payments.new-router.enabled` the way Argo
Rollouts walks a canary (analysis-semantics.md sections 2-3): `setWeight: N` sets the flag's split
to on=N off=100-N through the admin API; `pause: {duration}` waits (scaled for rehearsals);
`pause: {}` waits for `ripcord canary promote`; an analysis step runs the AnalysisRun and goes on
when it is Successful, aborts on Failed/Error (flag back to 0% with the failing metric, its value
and phase as the audit reason, then a page), and pauses and pages on Inconclusive (promote goes
past the analysis, abort aborts). When the steps are done the flag is at 100%.

Layout (pure modules first, the I/O edges last):

* ``canary.plan``: ``load_plan`` reads the Rollout and its templates into a ``Plan`` of
  ``Step``s, or refuses with a ``PlanError`` before anything changes.
* ``canary.machine``: the state machine ``next_action(state, event) -> (state, actions)``.
* ``canary.outcome``: ``outcome_of(run)``, what an AnalysisRun means for the rollout.
* ``canary.statedir``: the JSON files that coordinate `run` with `promote`/`abort`/`status`
  (written atomically with os.replace, plus an flock held by the running driver).
* ``canary.flag``: ``AdminFlag``, the release flag through the admin API over gRPC.
* this module: ``PrometheusAnalyses`` (analysis runs in a background thread),
  ``status_document`` (what `status` shows, pure) and ``Driver``, the loop that executes the
  machine's actions and feeds the results back as events.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc

from canary.analysis import AnalysisRun, Phase, start_analysis
from canary.flag import FlagActuator, FlagConflictError, FlagError
from canary.machine import (
    EXIT_ABORTED,
    EXIT_OK,
    Abort,
    Action,
    ActuatorFailed,
    AnalysisEnded,
    Done,
    Event,
    FlagConflict,
    Page,
    Promote,
    Rollback,
    RolloutPhase,
    RolloutState,
    RunAnalysis,
    SetWeight,
    Start,
    StopAnalysis,
    Tick,
    WeightSet,
    initial_state,
    next_action,
)
from canary.notify import Delivery, Notifier
from canary.outcome import metric_views, outcome_of, readable_value
from canary.plan import Plan, Step
from canary.prometheus import PrometheusClient
from canary.statedir import StateDir

__all__ = [
    "DEFAULT_FLAG",
    "AnalysisHandleLike",
    "AnalysisLauncher",
    "Driver",
    "Observer",
    "PrometheusAnalyses",
    "status_document",
]

DEFAULT_FLAG = "payments.new-router.enabled"


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
