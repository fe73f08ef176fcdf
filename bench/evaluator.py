"""Our compiled evaluator vs openfeature-flagd-core 2.0.0 (what the Python provider runs
in-process) on the payment flags, same definitions, same contexts, one process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext

from bench.timing import paired_rates
from flagd.definitions import parse_document
from flagd.evaluator import compile_flag, resolve
from flagd.model import FlagType

REPO = Path(__file__).resolve().parent.parent
FLAGS = REPO / "deploy" / "flags" / "payments.flagd.json"

CASES = [
    ("static", "payments.new-router.circuit-open"),
    ("fractional", "payments.new-router.enabled"),
    ("targeting rule", "payments.dynamic-currency.enabled"),
]


def _document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FLAGS.read_text())
    # Mid-rollout weights, so buckets really split (the checked-in file starts at 0%).
    doc["flags"]["payments.new-router.enabled"]["targeting"] = {
        "fractional": [["on", 25], ["off", 75]]
    }
    return doc


def run(n: int = 20_000) -> list[tuple[str, float, float]]:
    """Returns (case, our evals/s, flagd-core evals/s)."""
    doc = _document()
    ours = {
        key: compile_flag(flag)
        for key, flag in parse_document(json.dumps(doc), source="bench").flags.items()
    }
    core = FlagdCore()
    core.set_flags(doc)
    keys = [f"merchant-{i}" for i in range(1000)]
    our_ctx = [{"targetingKey": k, "dcc_opt_in": i % 2 == 0} for i, k in enumerate(keys)]
    core_ctx = [EvaluationContext(k, {"dcc_opt_in": i % 2 == 0}) for i, k in enumerate(keys)]

    # Same answers first: a fast wrong evaluator is worth nothing.
    for _, key in CASES:
        for c_ours, c_core in zip(our_ctx, core_ctx, strict=True):
            a = resolve(ours[key], dict(c_ours), FlagType.BOOLEAN)
            b = core.resolve_boolean_value(key, False, c_core)
            assert (a.value, a.variant) == (b.value, b.variant), (key, c_ours, a, b)

    results = []
    for label, key in CASES:
        compiled = ours[key]

        def run_ours(count: int, compiled: Any = compiled) -> None:
            m = len(our_ctx)
            for i in range(count):
                resolve(compiled, dict(our_ctx[i % m]), FlagType.BOOLEAN)

        def run_core(count: int, key: str = key) -> None:
            m = len(core_ctx)
            for i in range(count):
                core.resolve_boolean_value(key, False, core_ctx[i % m])

        mine, theirs = paired_rates(run_ours, run_core, n)
        results.append((label, mine, theirs))
    return results


def report() -> None:
    """Print the table."""
    print("\n## In-process evaluation: ours vs openfeature-flagd-core 2.0.0 (payment flags)")
    print(f"{'flag kind':<16}{'ours evals/s':>14}{'flagd-core':>14}{'ratio':>9}  target")
    for label, mine, theirs in run():
        target = "" if label == "static" else ">= 10x"
        print(f"{label:<16}{mine:>14,.0f}{theirs:>14,.0f}{mine / theirs:>8.1f}x  {target}")
