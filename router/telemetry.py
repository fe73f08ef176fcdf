"""OpenTelemetry for the router: Prometheus `/metrics` always, OTLP when configured.

Metric names are what the canary gates query (deploy/ documents them; spec 12.1):
`payments.request.duration` (s) becomes `payments_request_duration_seconds_*` on /metrics.
Latency buckets are explicit and include 0.2 s, the SLO threshold, so "p99 < 200 ms" is
judged exactly at a bucket edge instead of inside the SDK's millisecond-sized defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import REGISTRY, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0)
SCOPE = "payment_router"
OTLP_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"


@dataclass
class Instruments:
    """Every instrument the request path records to."""

    duration: metrics.Histogram
    requests: metrics.Counter
    fx_decisions: metrics.Counter
    shadow: metrics.Counter
    exposures: metrics.Counter
    conversions: metrics.Counter
    replays: metrics.Counter
    tracer: trace.Tracer


def setup(
    *,
    metrics_port: int | None,
    flag_state: Callable[[], tuple[int, float, bool]],
    service_name: str = "payment-router",
    extra_readers: Iterable[MetricReader] = (),
) -> Instruments:
    """Install meter and tracer providers; serve /metrics on ``metrics_port`` (None: don't).

    ``flag_state()`` returns (applied flag version, its apply time, stream connected).
    """
    resource = Resource.create({"service.name": service_name})
    readers: list[MetricReader] = [PrometheusMetricReader(), *extra_readers]
    # Spans are only recorded when they can go somewhere: an SDK span costs tens of
    # microseconds on the request path, the API's no-op tracer next to nothing.
    tracer: trace.Tracer = trace.NoOpTracer()
    if os.environ.get(OTLP_ENV):
        # Imported lazily: the OTLP exporters pull in their own gRPC stack.
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # OTEL_METRIC_EXPORT_INTERVAL (ms) wins; 5 s otherwise, shorter than the SDK's 60 s
        # so a canary gate reading an OTLP backend sees fresh data.
        interval = float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "5000"))
        readers.append(
            PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=interval)
        )
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
        tracer = tracer_provider.get_tracer(SCOPE)
    view = View(
        instrument_name="payments.request.duration",
        aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS),
    )
    provider = MeterProvider(resource=resource, metric_readers=readers, views=[view])
    metrics.set_meter_provider(provider)
    meter = provider.get_meter(SCOPE)

    def flag_gauges(_: CallbackOptions) -> Iterable[Observation]:
        version, applied_at, connected = flag_state()
        yield Observation(version, {"what": "version"})
        yield Observation(applied_at, {"what": "applied_timestamp_seconds"})
        yield Observation(1 if connected else 0, {"what": "stream_connected"})

    meter.create_observable_gauge(
        "payments.flags", callbacks=[flag_gauges], description="Flag snapshot in service."
    )
    if metrics_port is not None:
        start_http_server(metrics_port, registry=REGISTRY)
    return Instruments(
        duration=meter.create_histogram(
            "payments.request.duration", unit="s", description="Authorize latency."
        ),
        requests=meter.create_counter(
            "payments.requests", unit="{request}", description="Authorize calls."
        ),
        fx_decisions=meter.create_counter(
            "payments.fx.decisions", description="FX quotes by source (live|static) and reason."
        ),
        shadow=meter.create_counter(
            "payments.shadow.comparisons", description="Shadow comparisons by outcome kind."
        ),
        exposures=meter.create_counter(
            "payments.experiment.exposures", description="DCC experiment assignments."
        ),
        conversions=meter.create_counter(
            "payments.experiment.conversions", description="DCC experiment outcomes."
        ),
        replays=meter.create_counter(
            "payments.idempotent.replays", description="Authorize calls answered from storage."
        ),
        tracer=tracer,
    )
