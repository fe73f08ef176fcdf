"""Fixtures and reporting for the provider conformance suite (self-contained on purpose: this
directory is its own pytest run, see pytest.ini)."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest

from .launchpad import Launchpad

_MODE_OF: dict[str, str] = {}
_RESULTS: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
_LAUNCHPADS: list[Launchpad] = []


@pytest.fixture(scope="session")
def launchpad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launchpad]:
    pad = Launchpad(tmp_path_factory.mktemp("launchpad"))
    _LAUNCHPADS.append(pad)
    try:
        yield pad
    finally:
        pad.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("case") if callspec is not None else None
        mode = getattr(case, "mode", None)
        if isinstance(mode, str):
            _MODE_OF[item.nodeid] = mode


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    mode = _MODE_OF.get(report.nodeid)
    if mode is None:
        return
    counts = _RESULTS[mode]
    if report.when == "setup":
        if report.skipped:
            counts["excluded"] += 1
        elif report.failed:
            counts["error"] += 1
    elif report.when == "call":
        if hasattr(report, "wasxfail"):
            counts["xfailed (known deviation)" if report.skipped else "xpassed"] += 1
        elif report.passed:
            counts["passed"] += 1
        elif report.failed:
            counts["failed"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("flagd provider conformance (openfeature-provider-flagd 0.6.1)")
    order = ["passed", "failed", "error", "xfailed (known deviation)", "xpassed", "excluded"]
    for mode, counts in sorted(_RESULTS.items(), key=lambda kv: kv[0] != "rpc"):
        parts = [f"{counts[k]} {k}" for k in order if counts[k]]
        write(f"{mode:>10}: " + ", ".join(parts))
    for pad in _LAUNCHPADS:
        unclean = [r for r in pad.stop_records if r.how == "SIGTERM" and r.returncode != 0]
        slow = [r for r in pad.stop_records if r.note.startswith("did not exit")]
        write(
            f"daemon: {pad.starts} starts; graceful stops with exit code != 0: {len(unclean)}; "
            f"ignored SIGTERM: {len(slow)}; failed delayed restarts: {len(pad.restart_errors)}"
        )
        write(f"daemon logs: {pad.logs_dir}")
