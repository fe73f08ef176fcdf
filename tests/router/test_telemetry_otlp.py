"""The router's OTLP export, received by an in-process OTLP/gRPC collector stand-in.

A real daemon, the FX simulator and a router subprocess with OTEL_EXPORTER_OTLP_ENDPOINT
pointing at a grpc server implementing the collector's TraceService and MetricsService
(`opentelemetry-proto`'s generated stubs): what a collector would see, span by span and
data point by data point."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from flagd.process import REPO, DaemonProcess, free_port
from ripcord_pb.ripcord.payments.v1 import payments_pb2 as pb
from router.fxsim import FxSimulator
from tests.router.test_service import DCC, FLAGS, RELEASE, TOKEN, Stack, authorize, rollout

# The router's PeriodicExportingMetricReader exports every 5 s (telemetry.py, fixed today).
METRICS_WAIT_S = 15.0
SPANS_WAIT_S = 10.0


def attributes(kvs: Any) -> dict[str, Any]:
    """OTLP KeyValues as a plain dict (scalar values only, which is all the router sends)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        assert isinstance(kv, KeyValue)
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


@dataclass
class Received:
    """Everything the stand-in collector was sent, as (resource attributes, item) pairs."""

    spans: list[tuple[dict[str, Any], Span]] = field(default_factory=list)
    metrics: list[tuple[dict[str, Any], Metric]] = field(default_factory=list)
    exports: dict[str, int] = field(default_factory=lambda: {"traces": 0, "metrics": 0})
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                pytest.fail(f"the collector did not receive {what} within {timeout} s: {self}")

    def __str__(self) -> str:
        names = sorted({s.name for _, s in self.spans})
        metric_names = sorted({m.name for _, m in self.metrics})
        return f"{self.exports} exports, spans {names}, metrics {metric_names}"


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received):
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        with self.received.changed:
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    self.received.spans.extend((resource, s) for s in ss.spans)
            self.received.exports["traces"] += 1
            self.received.changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received):
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        with self.received.changed:
            for rm in request.resource_metrics:
                resource = attributes(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    self.received.metrics.extend((resource, m) for m in sm.metrics)
            self.received.exports["metrics"] += 1
            self.received.changed.notify_all()
        return metrics_service_pb2.ExportMetricsServiceResponse()


@dataclass
class OtlpStack:
    stack: Stack
    received: Received


@pytest.fixture
def otlp_stack(tmp_path: Path) -> Iterator[OtlpStack]:
    received = Received()
    collector = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceReceiver(received), collector)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
        MetricsReceiver(received), collector
    )
    otlp_port = collector.add_insecure_port("127.0.0.1:0")
    assert otlp_port > 0
    collector.start()
    daemon = DaemonProcess(
        "--uri", f"file:{FLAGS}", "--state-dir", str(tmp_path / "flagd"),
        env={"RIPCORD_TOKENS": f"tester:admin:{TOKEN}"},
    ).start()  # fmt: skip
    fx = FxSimulator().start()
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        # No effect today: telemetry.py passes export_interval_millis=5000 explicitly.
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }
    router = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", str(metrics_port), "--flagd", f"127.0.0.1:{daemon.sync_port}",
         "--db", f"sqlite:///{tmp_path / 'payments.db'}", "--fx", fx.url, "--log-level", "WARNING"],
        cwd=tmp_path, env=env, text=True,
    )  # fmt: skip
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stack = Stack(daemon, fx, router, port, metrics_port, channel)
    try:
        grpc.channel_ready_future(channel).result(timeout=20)
        stack.wait_version(1)
        yield OtlpStack(stack, received)
    finally:
        channel.close()
        router.terminate()
        try:
            assert router.wait(10) == 0
        finally:
            if router.poll() is None:
                router.kill()
                router.wait()
            fx.stop()
            daemon.stop()
            collector.stop(None)


def spans_named(received: Received, name: str) -> list[Span]:
    return [s for _, s in received.spans if s.name == name]


def children_of(received: Received, parent: Span) -> dict[str, Span]:
    return {
        s.name: s
        for _, s in received.spans
        if s.trace_id == parent.trace_id and s.parent_span_id == parent.span_id
    }


def authorize_span(received: Received, payment: Any) -> Span:
    """The `authorize` span of the payment (matched on the flag version and engine it reports)."""
    for span in spans_named(received, "authorize"):
        attrs = attributes(span.attributes)
        if (
            attrs.get("payments.flag_version") == payment.flag_version
            and attrs.get("payments.engine") == payment.engine
            and attrs.get("payments.variant") == payment.experiment_variant
        ):
            return span
    raise AssertionError(f"no authorize span for {payment}")


def test_spans_and_metrics_reach_an_otlp_collector(otlp_stack: OtlpStack) -> None:
    stack, received = otlp_stack.stack, otlp_stack.received
    legacy = [authorize(stack, f"otlp-{i}") for i in range(3)]
    assert {p.engine for p in legacy} == {"legacy"}
    stack.wait_version(rollout(stack, RELEASE, 100))
    stack.wait_version(rollout(stack, DCC, 100, ("treatment", "control")))
    dcc = authorize(stack, "otlp-dcc", customer_id="c-9", dcc_opt_in=True,
                    card=pb.Card(token="t", bin="424242", last4="4242", currency="USD"))  # fmt: skip
    assert (dcc.engine, dcc.experiment_variant, dcc.fx_quote.source) == ("new", "treatment", "live")
    sent = len(legacy) + 1

    # Traces: one `authorize` root per payment, its children in the same trace.
    received.wait_for(
        f"{sent} authorize spans with their children",
        lambda: (
            len(spans_named(received, "authorize")) >= sent
            and len(spans_named(received, "db.record_payment")) >= sent
        ),
        SPANS_WAIT_S,
    )
    roots = spans_named(received, "authorize")
    assert len(roots) == sent
    for span in roots:
        assert span.parent_span_id == b"" and span.kind == Span.SPAN_KIND_INTERNAL
    resources = {r.get("service.name") for r, _ in received.spans}
    assert resources == {"payment-router"}

    root = authorize_span(received, legacy[0])
    attrs = attributes(root.attributes)
    assert attrs["payments.engine"] == "legacy"
    assert attrs["payments.variant"] == ""
    assert attrs["payments.flag_version"] == legacy[0].flag_version >= 1
    assert attrs["rpc.grpc.status_code"] == 0
    children = children_of(received, root)
    assert set(children) == {"db.find_replay", "flag_decision", "engine", "db.record_payment"}
    assert attributes(children["engine"].attributes)["payments.engine"] == "legacy"
    assert attributes(children["flag_decision"].attributes)["payments.route_reason"] == (
        "release-split"
    )
    for child in children.values():  # children start and end inside their parent
        assert root.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= root.end_time_unix_nano
    order = sorted(children.values(), key=lambda s: s.start_time_unix_nano)
    assert [s.name for s in order] == ["db.find_replay", "flag_decision", "engine", "db.record_payment"]  # fmt: skip

    root = authorize_span(received, dcc)
    attrs = attributes(root.attributes)
    assert (attrs["payments.engine"], attrs["payments.variant"]) == ("new", "treatment")
    assert attrs["payments.flag_version"] == dcc.flag_version > legacy[0].flag_version
    children = children_of(received, root)
    assert set(children) == {"db.find_replay", "flag_decision", "engine", "fx", "db.record_payment"}  # fmt: skip
    assert attributes(children["engine"].attributes)["payments.engine"] == "new"
    assert attributes(children["fx"].attributes)["payments.fx_source"] == "live"

    # Metrics: cumulative, so the first export after the payments carries all of them.
    def requests_total() -> int:
        latest = [m for _, m in received.metrics if m.name == "payments.requests"]
        return sum(int(p.as_int) for p in latest[-1].sum.data_points) if latest else 0

    received.wait_for(
        f"payments.requests == {sent}", lambda: requests_total() >= sent, METRICS_WAIT_S
    )
    with received.changed:
        latest = {m.name: m for _, m in received.metrics}  # the last export of each name
        resources = {r.get("service.name") for r, _ in received.metrics}
    assert resources == {"payment-router"}
    requests = latest["payments.requests"]
    assert requests.sum.is_monotonic and requests.unit == "{request}"
    counts = {
        (a["engine"], a["status"]): int(p.as_int)
        for p in requests.sum.data_points
        for a in [attributes(p.attributes)]
    }
    assert counts == {("legacy", "OK"): 3, ("new", "OK"): 1}

    duration = latest["payments.request.duration"]
    assert duration.unit == "s" and duration.WhichOneof("data") == "histogram"
    points = {
        (a["engine"], a["status"]): p
        for p in duration.histogram.data_points
        for a in [attributes(p.attributes)]
    }
    assert set(points) == {("legacy", "OK"), ("new", "OK")}
    for (engine, _), point in points.items():
        assert 0.2 in list(point.explicit_bounds)
        assert list(point.explicit_bounds) == sorted(point.explicit_bounds)
        assert len(point.bucket_counts) == len(point.explicit_bounds) + 1
        assert point.count == sum(point.bucket_counts) == counts[engine, "OK"]
        assert 0 < point.sum < 10 * point.count  # seconds, not milliseconds

    flags = {attributes(p.attributes)["what"]: p.as_double or p.as_int
             for p in latest["payments.flags"].gauge.data_points}  # fmt: skip
    assert flags["version"] == dcc.flag_version and flags["stream_connected"] == 1
