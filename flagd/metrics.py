"""Prometheus metrics of one daemon instance (own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from flagd.model import Resolution


class DaemonMetrics:
    """Counters and gauges exposed on the management port's /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.evaluations = Counter(
            "flagd_evaluations",
            "Flag evaluations served, by flag, variant and reason.",
            ["flag", "variant", "reason"],
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "flagd_open_streams",
            "Open server streams, by kind (event = EventStream, sync = SyncFlags).",
            ["kind"],
            registry=self.registry,
        )
        self.config_version = Gauge(
            "flagd_config_version",
            "Version of the configuration in service (increments on every applied change).",
            registry=self.registry,
        )
        self.config_applied = Gauge(
            "flagd_config_applied_timestamp_seconds",
            "Unix time the configuration in service was applied.",
            registry=self.registry,
        )
        self.source_errors = Counter(
            "flagd_source_load_errors",
            "Flag source loads rejected (the last good configuration stayed in service).",
            ["source"],
            registry=self.registry,
        )
        self.source_healthy = Gauge(
            "flagd_source_healthy",
            "1 when the source's last load succeeded, 0 when it was rejected.",
            ["source"],
            registry=self.registry,
        )
        self.stream_messages = Counter(
            "flagd_stream_messages",
            "Messages sent on server streams, by kind and message type.",
            ["kind", "type"],
            registry=self.registry,
        )
        # labels() costs a lock and a dict lookup; cache the children per label tuple.
        self._eval_children: dict[tuple[str, str, str], Counter] = {}

    def count_evaluation(self, key: str, resolution: Resolution) -> None:
        """Count one evaluation by flag, variant and reason."""
        labels = (key, resolution.variant or "", resolution.reason.value)
        child = self._eval_children.get(labels)
        if child is None:
            child = self.evaluations.labels(*labels)
            self._eval_children[labels] = child
        child.inc()
