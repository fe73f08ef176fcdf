"""Print the evaluator conformance pass count at the end of the run."""

from __future__ import annotations

from typing import Any

SUITE = "tests/conformance/test_evaluator_suites.py::test_scenario"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    counts = {"passed": 0, "failed": 0}
    for outcome in counts:
        for report in terminalreporter.stats.get(outcome, []):
            if report.when == "call" and report.nodeid.startswith(SUITE):
                counts[outcome] += 1
    if not any(counts.values()):
        return
    from tests.conformance.test_evaluator_suites import EXCLUDED

    terminalreporter.write_sep("=", "flagd evaluator conformance (upstream flagd-testbed suites)")
    terminalreporter.write_line(
        f"evaluator: {counts['passed']} passed, {counts['failed']} failed, "
        f"{len(EXCLUDED)} excluded (reasons in test_evaluator_suites.py)"
    )
