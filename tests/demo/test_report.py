"""The report's pure parts: series from Prometheus answers, marks from the audit trail, the PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from canary.local_prometheus import checked_in_config
from ripcord import report


def matrix(engine: str, points: list[tuple[float, str]]) -> dict[str, object]:
    return {"metric": {"engine": engine}, "values": [[t, v] for t, v in points]}


def test_error_rate_is_zero_where_calls_happened_without_errors() -> None:
    results = {
        "rps": [matrix("new", [(1, "2"), (2, "2")])],
        "calls": [matrix("new", [(1, "2"), (2, "4"), (3, "0")])],
        "errors": [matrix("new", [(2, "1")])],  # the error series starts at the first error
        "p99": [matrix("new", [(1, "0.012"), (2, "NaN")])],
    }
    series = report.series_from_results(results)
    assert series.error_pct["new"] == [(1.0, 0.0), (2.0, 25.0)]  # no calls at t=3: no point
    assert series.p99_ms["new"] == [(1.0, 12.0)]  # NaN (no traffic) is a gap, not a zero
    assert series.rps["new"] == [(1.0, 2.0), (2.0, 2.0)]


def change(
    at: float, key: str, action: str, after: dict[str, object], reason: str = ""
) -> dict[str, object]:
    return {"at": at, "flag_key": key, "action": action, "after": after, "reason": reason}


def rollout(on: int) -> dict[str, object]:
    return {"targeting": {"fractional": [["on", on], ["off", 100 - on]]}}


def test_marks_from_the_audit_trail() -> None:
    changes = [
        change(1, report.RELEASE, "file", rollout(0)),  # the start-up load: not a step
        change(2, report.RELEASE, "set_rollout", rollout(1), "canary step 1/11: setWeight 1"),
        change(3, report.RELEASE, "set_rollout", rollout(0), "canary abort at step 2/11: p99"),
        change(4, report.RELEASE, "set_rollout", rollout(0), "v2: the release starts over"),
        change(5, report.CIRCUIT, "set_default_variant", {"defaultVariant": "on"}),
        change(6, report.CIRCUIT, "set_default_variant", {"defaultVariant": "off"}),
        change(7, "payments.dynamic-currency.enabled", "set_rollout", rollout(50)),
        change(8, report.RELEASE, "set_state", {"state": "DISABLED"}),  # no rollout in it
    ]
    marks = report.marks_from_audit(changes)
    assert [(m.at, m.label, m.kind) for m in marks] == [
        (2.0, "1%", "step"),
        (3.0, "rollback → 0%", "rollback"),
        (4.0, "0%", "step"),
        (5.0, "circuit open", "flip"),
        (6.0, "circuit closed", "flip"),
    ]


def test_plot_and_markdown(tmp_path: Path) -> None:
    series = report.Series(
        rps={"legacy": [(100.0, 50.0), (101.0, 49.0)], "new": [(100.0, 1.0), (101.0, 1.0)]},
        p99_ms={"new": [(100.0, 12.0), (101.0, 480.0)]},
        error_pct={"new": [(100.0, 0.0), (101.0, 0.0)]},
    )
    marks = [report.Mark(100.5, "rollback → 0%", "rollback")]
    png = report.plot(series, marks, 99.0, tmp_path / "t.png", "title")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.markdown("T", [("a|b", "ok", "1 ms")], "t.png", [("S", "body")], marks, 99.0)
    assert "| a\\|b | ok | 1 ms |" in text
    assert "![latency and error rate per engine over time](t.png)" in text
    assert "- t+  1.5 s: rollback → 0% (rollback)" in text
    assert text.endswith("## S\n\nbody\n")


def test_the_demo_scrapes_with_the_checked_in_prometheus_config() -> None:
    config = checked_in_config({"payment-router": ["127.0.0.1:1", "127.0.0.1:2"]}, "1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["payment-router"]["static_configs"] == [{"targets": ["127.0.0.1:1", "127.0.0.1:2"]}]
    assert jobs["flagd"]["static_configs"] == [{"targets": ["127.0.0.1:8014"]}]  # untouched
    assert config["global"]["scrape_interval"] == "1s"
    with pytest.raises(ValueError, match="no job"):
        checked_in_config({"payments": ["127.0.0.1:1"]})
