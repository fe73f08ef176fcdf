"""The spec's AnalysisTemplate against a real Prometheus 2.42 scraping the real payment router.

The router (daemon + FX simulator + `python -m router serve --metrics-port`, the
tests/router stack) takes payments; Prometheus scrapes it every second with the labels the
Kubernetes scrape config would add (job, rollouts_pod_template_hash). The template is spec
12.2's, with only the timing made into args (window 30s instead of 5m, interval 2s, count 3).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import grpc

from canary.analysis import Phase, run_analysis
from canary.prometheus import PrometheusClient
from canary.templates import AnalysisTemplate, Argument, load_documents, templates_from_documents
from tests.canary.promserver import PrometheusServer, prometheus_binary
from tests.canary.replay import SPEC_YAML
from tests.router.test_service import Stack, authorize
from tests.router.test_service import stack as stack  # the router fixture, reused as is

HASH = "canaryhash"


def short_spec_template() -> AnalysisTemplate:
    """Spec 12.2's template with `[5m]`, `interval: 1m` and `count: 5` turned into args."""
    text = SPEC_YAML.read_text()
    for old, new, times in (("[5m]", "[{{args.window}}]", 3),
                            ("interval: 1m", 'interval: "{{args.interval}}"', 2),
                            ("count: 5", 'count: "{{args.count}}"', 2)):  # fmt: skip
        assert text.count(old) == times, old
        text = text.replace(old, new)
    (template,) = templates_from_documents(load_documents(text))
    timing = (Argument("window"), Argument("interval"), Argument("count"))
    return dataclasses.replace(template, args=(*template.args, *timing))


class Traffic:
    """Authorize calls in a background thread; ``bad_every`` > 0 adds INVALID_ARGUMENT ones."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.sent, self.bad_every = stack, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sent += 1
            bad = self.bad_every and self.sent % self.bad_every == 0
            try:
                authorize(self.stack, f"it-{self.sent}", **({"currency": "XXX"} if bad else {}))
            except grpc.RpcError as e:
                assert bad and e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_spec_gates_pass_a_healthy_router_and_fail_an_erroring_one(
    stack: Stack, tmp_path: Path
) -> None:
    prometheus_binary()  # fails (not skips) with the apt-get hint when it is not installed
    target = ("payment-router", f"127.0.0.1:{stack.metrics_port}",
              {"rollouts_pod_template_hash": HASH})  # fmt: skip
    prometheus = PrometheusServer(tmp_path / "prometheus", [target], scrape_interval="1s")
    traffic = Traffic(stack)
    try:
        prometheus.start()
        # rate() needs two samples per series inside the window (spec 7).
        prometheus.wait_for(
            'count_over_time(payments_request_duration_seconds_count{job="payment-router"}[30s]) >= 2'
        )
        args = {"canary-hash": HASH, "prometheus-address": prometheus.url,
                "window": "30s", "interval": "2s", "count": "3"}  # fmt: skip
        started = time.monotonic()
        run = run_analysis(short_spec_template(), args, PrometheusClient())
        assert run.phase == Phase.SUCCESSFUL, run
        assert 3.5 < time.monotonic() - started < 15  # measurements at 0, 2, 4 s
        error_rate, p99 = run.result("error-rate"), run.result("p99-latency")
        assert [m.value for m in error_rate.measurements] == ["[0]"] * 3  # `or vector(0)`
        for m in p99.measurements:
            assert m.phase == Phase.SUCCESSFUL and m.value is not None
            assert 0 < float(m.value.strip("[]")) < 0.2
        assert "[30s]" in error_rate.metadata["ResolvedPrometheusQuery"]

        # Now 1 request in 5 is refused: status!="OK" > 1% of the 30 s window -> Failed.
        traffic.bad_every = 5
        prometheus.wait_for(
            'sum(increase(payments_request_duration_seconds_count{status="INVALID_ARGUMENT"}[30s])) > 20'
        )
        run = run_analysis(short_spec_template(), {**args, "count": "1"}, PrometheusClient())
        assert run.phase == Phase.FAILED, run
        assert run.message.startswith('Metric "error-rate" assessed Failed due to failed (1)')
        (measured,) = run.result("error-rate").measurements
        assert measured.value is not None and float(measured.value.strip("[]")) > 0.01
    finally:
        traffic.stop()
        prometheus.stop()
    assert traffic.sent > 100
