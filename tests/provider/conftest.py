"""Fixtures and reporting for the provider conformance suite (self-contained on purpose: this
directory is its own pytest run, see pytest.ini)."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest
from openfeature import api

from .launchpad import Launchpad

_MODE_OF: dict[str, str] = {}
_RESULTS: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
_LAUNCHPADS: list[Launchpad] = []
_HERE = Path(__file__).resolve().parent
_IGNORED_IN_FOREIGN_RUN: list[str] = []


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Only collect this suite in its own run (rootdir = this directory, see pytest.ini). In a
    run of the whole tree that forgot ``--ignore=tests/provider`` the provider's protobuf
    modules would clash with ripcord_pb ("duplicate symbol"); skip with a note instead."""
    if Path(str(config.rootpath)).resolve() != _HERE and collection_path.suffix == ".py":
        _IGNORED_IN_FOREIGN_RUN.append(collection_path.name)
        return True
    return None


@pytest.fixture(scope="session")
def launchpad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launchpad]:
    pad = Launchpad(tmp_path_factory.mktemp("launchpad"))
    _LAUNCHPADS.append(pad)
    try:
        yield pad
    finally:
        api.clear_providers()  # waits for the providers' shutdown
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
    if _IGNORED_IN_FOREIGN_RUN:
        terminalreporter.write_line(
            "tests/provider was not collected: run it on its own (.venv/bin/pytest tests/provider)"
        )
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
        died = [r for r in pad.stop_records if r.how == "none"]
        write(
            f"daemon: {pad.starts} starts; exited on its own: {len(died)}; graceful stops with "
            f"exit code != 0: {len(unclean)}; ignored SIGTERM: {len(slow)}; failed delayed "
            f"restarts: {len(pad.restart_errors)}"
        )
        write(f"daemon logs: {pad.logs_dir}")
