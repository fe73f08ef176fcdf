"""What an AnalysisRun means for the rollout: per-metric views and the verdict with its reason
(pure)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canary.analysis import AnalysisRun, MetricResult, Phase
from canary.templates import MetricSpec

__all__ = [
    "AnalysisOutcome",
    "MetricView",
    "metric_views",
    "outcome_of",
    "readable_value",
]


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
