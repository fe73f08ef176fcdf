"""The rehearsal's report: per-engine traffic, p99 latency and error rate over time, read back
from Prometheus (what the gates saw), with the flag changes from the audit trail marked.

`fetch_series` talks to Prometheus, `marks_from_audit` reads audit records, `plot` and
`markdown` only render what they are given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flagd.control import rollout_of

RELEASE = "payments.new-router.enabled"
CIRCUIT = "payments.new-router.circuit-open"
ENGINES = ("legacy", "new")
# The AnalysisTemplate's definition of a server-side error (statuses a client causes excluded).
CLIENT_STATUSES = "OK|INVALID_ARGUMENT|ALREADY_EXISTS|NOT_FOUND|FAILED_PRECONDITION"
_METRIC = 'payments_request_duration_seconds{suffix}{{job="payment-router"{extra}}}'
QUERIES = {
    "rps": "sum by (engine) (rate({m}[5s]))".format(m=_METRIC.format(suffix="_count", extra="")),
    "errors": "sum by (engine) (rate({m}[10s]))".format(
        m=_METRIC.format(suffix="_count", extra=f',status!~"{CLIENT_STATUSES}"')
    ),
    "calls": "sum by (engine) (rate({m}[10s]))".format(m=_METRIC.format(suffix="_count", extra="")),
    "p99": "histogram_quantile(0.99, sum by (engine, le) (rate({m}[10s])))".format(
        m=_METRIC.format(suffix="_bucket", extra="")
    ),
}
CAPTION = (
    "Each panel is a Prometheus rate at 1 s resolution, over 5 s (traffic) or 10 s (p99, errors):"
    " a switch that takes milliseconds shows as a ramp of a few seconds. The flip's latency in"
    " the table is measured per request, from the client side."
)
MARK_COLOURS = {"step": "#4a7ab5", "rollback": "#c0392b", "flip": "#8e44ad", "event": "#d68910"}

__all__ = ["Mark", "Series", "fetch_series", "markdown", "marks_from_audit", "plot"]


class RangeQuery(Protocol):
    """What the report needs from Prometheus (canary.local_prometheus.LocalPrometheus)."""

    def query_range(self, query: str, start: float, end: float, step: float) -> Any:
        """`data.result` of a range query."""
        ...


@dataclass(frozen=True)
class Mark:
    """A moment worth a vertical line: a canary step, the rollback, the flip, a deploy."""

    at: float  # unix seconds
    label: str
    kind: str = "event"  # step | rollback | flip | event


@dataclass
class Series:
    """Per engine: (unix time, value) points of each panel."""

    rps: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    p99_ms: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    error_pct: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def _by_engine(result: Iterable[Mapping[str, Any]]) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = {}
    for item in result:
        engine = item.get("metric", {}).get("engine", "?")
        points = out.setdefault(engine, {})
        for t, v in item.get("values", []):
            value = float(v)
            if not math.isnan(value) and not math.isinf(value):
                points[float(t)] = value
    return out


def series_from_results(results: Mapping[str, Any]) -> Series:
    """Turn the four range-query results (keys of QUERIES) into per-engine panels.

    The error rate is errors / calls at each instant where there were calls: the error series
    only exists after the first error, so a missing point there means 0, not "no data"."""
    rps, calls, errors = (_by_engine(results[k]) for k in ("rps", "calls", "errors"))
    p99 = _by_engine(results["p99"])
    series = Series()
    for engine in sorted(set(rps) | set(calls)):
        series.rps[engine] = sorted(rps.get(engine, {}).items())
        series.p99_ms[engine] = sorted((t, 1000 * v) for t, v in p99.get(engine, {}).items())
        errs = errors.get(engine, {})
        series.error_pct[engine] = [
            (t, 100 * errs.get(t, 0.0) / c) for t, c in sorted(calls.get(engine, {}).items()) if c
        ]
    return series


def fetch_series(prometheus: RangeQuery, start: float, end: float, step: float = 1.0) -> Series:
    """The report's panels from Prometheus, over [start, end]."""
    results = {name: prometheus.query_range(q, start, end, step) for name, q in QUERIES.items()}
    return series_from_results(results)


def on_weight(flag: Mapping[str, Any] | None) -> int | None:
    """The `on` weight (%) of the release flag's fractional rollout (None when it has none)."""
    weights = rollout_of(dict(flag or {}))
    total = sum(w.weight for w in weights)
    on = sum(w.weight for w in weights if w.variant == "on")
    return round(100 * on / total) if total else None


def marks_from_audit(changes: Iterable[Mapping[str, Any]]) -> list[Mark]:
    """Marks for the release flag's weights and the circuit's flips, from audit records
    (`ListChanges` as dicts: at (unix seconds), flag_key, action, reason, after)."""
    marks: list[Mark] = []
    for change in changes:
        if change.get("action") == "file":
            continue  # the flag file's own history (the start-up load): not a rollout step
        key, reason = change.get("flag_key"), str(change.get("reason", ""))
        if key == RELEASE:
            weight = on_weight(change.get("after"))
            if weight is None:
                continue
            rollback = "abort" in reason.lower() and weight == 0
            label = "rollback → 0%" if rollback else f"{weight}%"
            marks.append(Mark(float(change["at"]), label, "rollback" if rollback else "step"))
        elif key == CIRCUIT and change.get("action") == "set_default_variant":
            variant = (change.get("after") or {}).get("defaultVariant")
            label = "circuit open" if variant == "on" else "circuit closed"
            marks.append(Mark(float(change["at"]), label, "flip"))
    return marks


def plot(series: Series, marks: Sequence[Mark], start: float, path: Path, title: str) -> Path:
    """Three panels (traffic, p99, error rate) per engine with the marks; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    colours = {"legacy": "#7f8c8d", "new": "#27ae60"}
    fig, axes = plt.subplots(3, 1, figsize=(13, 9), sharex=True, constrained_layout=True)
    panels = (
        (series.rps, "requests / s", None),
        (series.p99_ms, "p99 latency (ms)", (200.0, "gate: p99 < 200 ms")),
        (series.error_pct, "server errors (%)", (1.0, "gate: ≤ 1%")),
    )
    for ax, (data, ylabel, gate) in zip(axes, panels, strict=True):
        for engine in sorted(data):
            points = data[engine]
            if points:
                xs = [t - start for t, _ in points]
                ys = [v for _, v in points]
                ax.plot(xs, ys, ".-", ms=2, lw=1.2, label=engine, color=colours.get(engine))
        if gate is not None:
            ax.axhline(gate[0], color="#c0392b", ls=":", lw=1, label=gate[1])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        for mark in marks:
            colour = MARK_COLOURS.get(mark.kind, "#999")
            ax.axvline(mark.at - start, color=colour, lw=0.8, alpha=0.7)
        ax.legend(loc="upper left", fontsize=8)
    top = axes[0]
    for i, mark in enumerate(marks):
        top.annotate(
            mark.label,
            xy=(mark.at - start, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, 2 + 10 * (i % 4)),
            textcoords="offset points",
            fontsize=7,
            rotation=0,
            color=MARK_COLOURS.get(mark.kind, "#555"),
        )
    axes[-1].set_xlabel("seconds since the stack started")
    fig.suptitle(title, fontsize=11, y=1.06)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(
    title: str,
    summary: Sequence[tuple[str, str, str]],
    image: str,
    sections: Sequence[tuple[str, str]],
    marks: Sequence[Mark],
    start: float,
) -> str:
    """The report: a summary table (phase, outcome, numbers), the plot, then the details."""
    lines = [f"# {title}", "", "| phase | outcome | measured |", "|---|---|---|"]
    lines += [f"| {_cell(a)} | {_cell(b)} | {_cell(c)} |" for a, b, c in summary]
    lines += ["", f"![latency and error rate per engine over time]({image})", "", CAPTION, ""]
    lines += ["Marked on the plot (from the audit trail and the rehearsal's log):", ""]
    lines += [f"- t+{m.at - start:5.1f} s: {m.label} ({m.kind})" for m in marks]
    for heading, body in sections:
        lines += ["", f"## {heading}", "", body.rstrip()]
    return "\n".join(lines) + "\n"
