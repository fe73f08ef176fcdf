"""The release plan: a Rollout's canary steps and the analysis each gate runs (pure, loaded
once before anything changes; a PlanError means nothing was touched)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from canary.templates import (
    AnalysisSpecError,
    AnalysisTemplate,
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
    "LOCAL_ARGS_ANNOTATION",
    "PROMETHEUS_ARG",
    "Plan",
    "PlanError",
    "Step",
    "StepKind",
    "load_plan",
]

LOCAL_ARGS_ANNOTATION = "ripcord/local-args"
PROMETHEUS_ARG = "prometheus-address"


class PlanError(Exception):
    """The Rollout or its templates cannot be driven; nothing was changed."""


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
