"""The kill-switch drill's arithmetic: observations, one flip's verdict, the run's summary.

Definitions (issue 7):

- A flip is acknowledged at ``t_ack``: the client clock right after the admin
  `SetDefaultVariant(circuit-open = on)` call returned.
- Only requests that STARTED at or after ``t_ack`` count. A replay (same idempotency key) is
  not an observation: it repeats the engine of the first attempt.
- ``last_new``: the start of the last request that was still served by the new engine (none
  when no request started after ``t_ack`` took the new path). The switch happened after it.
- The flip's latency is ``tail_start - t_ack``, where ``tail_start`` is the start of the first
  request after ``last_new`` (or after ``t_ack``): from there on every request was served by
  legacy. It bounds the true switch point from above, so a latency under a threshold proves
  the promise; ``tail_start - last_new`` is the sampling resolution, reported beside it.
- The flip converged when, after the last new-path start, at least ``min_samples`` requests
  were served by legacy over at least ``quiet_s`` seconds, counting only requests known to
  be complete: everything that started before the ``horizon`` (the oldest call still in
  flight anywhere, or the time of the query).

Pure: no Locust, no gevent, no gRPC. The locustfile feeds it, tests and the bench read it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "KILLSWITCH_NAME",
    "KILLSWITCH_TYPE",
    "DrillSummary",
    "FlipResult",
    "Observation",
    "Recorder",
    "Window",
    "analyse_flip",
    "percentile",
]

# The drill's row in Locust's stats (console, web UI, CSV, HTML): one request per flip.
KILLSWITCH_TYPE = "KILLSWITCH"
KILLSWITCH_NAME = "circuit open: ack to legacy-only"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Observation:
    """One Authorize call that the router answered (not a replay)."""

    start: float  # time.time() just before the call was made
    end: float  # time.time() when the answer was in
    engine: str  # "new" | "legacy"
    flag_version: int  # the router snapshot's configuration version
    source: str  # who sent it, e.g. "w1/u7" (worker 1, user 7) or "probe/3"

    def to_wire(self) -> list[Any]:
        """Compact form for Locust messages (msgpack) and JSON."""
        return [self.start, self.end, self.engine, self.flag_version, self.source]

    @classmethod
    def from_wire(cls, item: Sequence[Any]) -> Observation:
        """Inverse of `to_wire`."""
        start, end, engine, version, source = item
        return cls(float(start), float(end), str(engine), int(version), str(source))


@dataclass(frozen=True, slots=True)
class Window:
    """What one process knows about a time window: complete calls and its horizon."""

    observations: list[Observation]
    horizon: float  # every call started before this is complete (and in `observations`)

    def to_wire(self) -> dict[str, Any]:
        """For Locust messages."""
        return {"obs": [o.to_wire() for o in self.observations], "horizon": self.horizon}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Window:
        """Inverse of `to_wire`."""
        return cls([Observation.from_wire(o) for o in data["obs"]], float(data["horizon"]))


class Recorder:
    """One process's recent Authorize observations and the start times of calls in flight.

    Used from gevent greenlets (one OS thread), so no locking; old observations are dropped
    after ``keep_s`` seconds."""

    def __init__(self, keep_s: float = 60.0, clock: Any = time.time) -> None:
        self.keep_s = keep_s
        self._clock = clock
        self._observations: deque[Observation] = deque()
        self._inflight: dict[int, float] = {}
        self._next = 0

    def begin(self) -> tuple[int, float]:
        """Mark a call as started now: (token for `end`, start time)."""
        self._next += 1
        start = float(self._clock())
        self._inflight[self._next] = start
        return self._next, start

    def end(
        self, token: int, engine: str | None = None, flag_version: int = 0, source: str = ""
    ) -> None:
        """The call is over; with ``engine`` it was answered and becomes an observation."""
        start = self._inflight.pop(token, None)
        if start is None or engine is None:
            return
        now = float(self._clock())
        self._observations.append(Observation(start, now, engine, flag_version, source))
        cutoff = now - self.keep_s
        while self._observations and self._observations[0].start < cutoff:
            self._observations.popleft()

    @property
    def in_flight(self) -> int:
        """Calls started and not yet ended."""
        return len(self._inflight)

    def window(self, t_from: float) -> Window:
        """Observations that started at or after ``t_from``, with this process's horizon."""
        now = float(self._clock())
        horizon = min(self._inflight.values(), default=now)
        obs = [o for o in self._observations if o.start >= t_from]
        return Window(obs, min(horizon, now))


@dataclass
class FlipResult:
    """One opening flip of the circuit and what the load saw after it."""

    flip: int
    version: int  # configuration version the admin call returned
    t_call: float  # before the admin call
    t_ack: float  # after it returned
    latency_ms: float  # start of the legacy-only tail - t_ack; the timeout when it failed
    last_new_ms: float | None = None  # last new-path start - t_ack (None: no such request)
    converged: bool = False
    samples_after: int = 0  # answered calls started after t_ack (before the horizon)
    pre_new: int = 0  # calls started in the second before the flip that the new engine served
    pre_total: int = 0
    late: list[Observation] = field(default_factory=list)  # new path, started after t_ack
    nodes: list[str] = field(default_factory=list)  # Locust processes that sent those calls
    sources_missing: list[str] = field(default_factory=list)  # workers that did not answer
    applied_ms: list[float] = field(default_factory=list)  # router processes, server side
    error: str = ""

    @property
    def admin_ms(self) -> float:
        """How long the admin call took (durable commit included)."""
        return 1000 * (self.t_ack - self.t_call)

    @property
    def ok(self) -> bool:
        """Converged, every worker answered, and the new engine served before the flip."""
        return self.converged and not self.sources_missing and not self.error

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        out = asdict(self)
        out["late"] = [o.to_wire() for o in self.late]
        out["admin_ms"] = self.admin_ms
        out["ok"] = self.ok
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlipResult:
        """Inverse of `to_dict`."""
        fields = {k: v for k, v in data.items() if k not in ("admin_ms", "ok")}
        fields["late"] = [Observation.from_wire(o) for o in data.get("late", [])]
        return cls(**fields)


def analyse_flip(
    flip: int,
    version: int,
    t_call: float,
    t_ack: float,
    windows: Iterable[Window],
    *,
    min_samples: int,
    quiet_s: float,
    pre_window_s: float = 1.0,
) -> FlipResult:
    """The verdict on a flip from every process's window (see the module docstring)."""
    windows = list(windows)
    horizon = min((w.horizon for w in windows), default=t_ack)
    observations = sorted((o for w in windows for o in w.observations), key=lambda o: o.start)
    pre = [o for o in observations if t_call - pre_window_s <= o.start < t_call]
    after = [o for o in observations if t_ack <= o.start < horizon]
    late = [o for o in after if o.engine == "new"]
    last_new = late[-1].start if late else t_ack
    tail = [o for o in after if o.start > last_new or (not late and o.start >= t_ack)]
    converged = len(tail) >= min_samples and horizon - last_new >= quiet_s
    return FlipResult(
        flip=flip,
        version=version,
        t_call=t_call,
        t_ack=t_ack,
        latency_ms=1000 * (tail[0].start - t_ack) if tail else 1000 * (horizon - t_ack),
        last_new_ms=1000 * (last_new - t_ack) if late else None,
        converged=converged,
        samples_after=len(after),
        pre_new=sum(o.engine == "new" for o in pre),
        pre_total=len(pre),
        late=late,
        nodes=sorted({o.source.split("/", 1)[0] for o in after}),
    )


@dataclass
class DrillSummary:
    """Every flip of a run, and the verdict against the p99 threshold."""

    flips: list[FlipResult] = field(default_factory=list)
    threshold_ms: float | None = None
    wanted_flips: int = 0  # 0: no fixed count
    notes: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        """One latency per flip (a failed flip counts with its timeout)."""
        return [f.latency_ms for f in self.flips]

    def stat(self, p: float) -> float | None:
        """A percentile of the flip latencies (None without flips)."""
        return percentile(self.latencies, p) if self.flips else None

    @property
    def problems(self) -> list[str]:
        """Why the drill fails the run (empty: it passes)."""
        out = []
        if self.wanted_flips and len(self.flips) < self.wanted_flips:
            out.append(f"only {len(self.flips)} of {self.wanted_flips} flips ran")
        for f in self.flips:
            if not f.converged:
                out.append(f"flip {f.flip}: did not converge ({f.error or 'no quiet tail'})")
            elif f.sources_missing:
                out.append(f"flip {f.flip}: no observations from {', '.join(f.sources_missing)}")
            elif f.error:
                out.append(f"flip {f.flip}: {f.error}")
        p99 = self.stat(99)
        if self.threshold_ms is not None and p99 is not None and p99 > self.threshold_ms:
            out.append(f"p99 {p99:.3f} ms exceeds --drill-p99-ms {self.threshold_ms:g}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what --drill-json writes)."""
        return {
            "flips": [f.to_dict() for f in self.flips],
            "threshold_ms": self.threshold_ms,
            "wanted_flips": self.wanted_flips,
            "p50_ms": self.stat(50),
            "p99_ms": self.stat(99),
            "max_ms": max(self.latencies) if self.flips else None,
            "problems": self.problems,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrillSummary:
        """Inverse of `to_dict`."""
        return cls(
            flips=[FlipResult.from_dict(f) for f in data["flips"]],
            threshold_ms=data.get("threshold_ms"),
            wanted_flips=int(data.get("wanted_flips", 0)),
            notes=list(data.get("notes", [])),
        )

    def text(self, max_late: int = 50) -> str:
        """The summary for the console."""
        lines = []
        if not self.flips:
            lines.append("Kill-switch drill: no flips ran")
        else:
            ok = sum(f.ok for f in self.flips)
            p50, p99 = self.stat(50), self.stat(99)
            assert p50 is not None and p99 is not None
            gate = ""
            if self.threshold_ms is not None:
                verdict = "PASS" if p99 <= self.threshold_ms else "FAIL"
                gate = f" (threshold p99 <= {self.threshold_ms:g} ms: {verdict})"
            lines.append(
                f"Kill-switch drill: {len(self.flips)} flips ({ok} ok); latency from the flip's "
                f"acknowledgement to the first request start after which every request was "
                f"served by legacy: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max "
                f"{max(self.latencies):.2f} ms{gate}"
            )
            lines.append(
                f"{'flip':>5}{'version':>9}{'admin ms':>10}{'latency ms':>12}{'last new':>10}"
                f"{'samples':>9}{'late':>6}{'pre new':>9}  router processes applied (ms)"
            )
            for f in self.flips:
                bound = f"{f.last_new_ms:.2f}" if f.last_new_ms is not None else "-"
                applied = ", ".join(f"{a:.2f}" for a in f.applied_ms) or "-"
                status = "" if f.ok else "  NOT OK"
                lines.append(
                    f"{f.flip:>5}{f.version:>9}{f.admin_ms:>10.2f}{f.latency_ms:>12.2f}"
                    f"{bound:>10}{f.samples_after:>9}{len(f.late):>6}"
                    f"{f'{f.pre_new}/{f.pre_total}':>9}  {applied}{status}"
                )
            late = [(f, o) for f in self.flips for o in f.late]
            lines.append(
                f"Requests that took the new path after the flip was acknowledged: {len(late)}"
            )
            for f, o in late[:max_late]:
                lines.append(
                    f"  flip {f.flip}: started +{1000 * (o.start - f.t_ack):.2f} ms, answered "
                    f"+{1000 * (o.end - f.t_ack):.2f} ms, flag version {o.flag_version}, "
                    f"by {o.source}"
                )
            if len(late) > max_late:
                lines.append(f"  ... {len(late) - max_late} more in the drill JSON")
        lines.extend(f"note: {n}" for n in self.notes)
        problems = self.problems
        lines.append("drill: " + ("; ".join(problems) if problems else "ok"))
        return "\n".join(lines)
