"""Interleaved best-of-N timing: A and B alternate so machine noise hits both alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_rate(fn: Callable[[int], None], n: int, rounds: int = 5) -> float:
    """Operations per second of ``fn(n)`` (which performs n operations), best of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t0)
    return n / best


def paired_rates(
    ours: Callable[[int], None], baseline: Callable[[int], None], n: int, rounds: int = 5
) -> tuple[float, float]:
    """Best-of-``rounds`` rates for both, alternating ours/baseline each round."""
    best_ours = best_base = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        ours(n)
        best_ours = min(best_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        baseline(n)
        best_base = min(best_base, time.perf_counter() - t0)
    return n / best_ours, n / best_base


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]
