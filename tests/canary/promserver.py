"""The tests' Prometheus: canary.local_prometheus, but a missing binary fails (never skips)."""

from __future__ import annotations

import pytest

from canary.local_prometheus import LocalPrometheus as PrometheusServer
from canary.local_prometheus import PrometheusMissing, find_binary

__all__ = ["PrometheusServer", "prometheus_binary"]


def prometheus_binary() -> str:
    """Path of the prometheus binary; fails the test with the install hint when missing."""
    try:
        return find_binary()
    except PrometheusMissing as exc:
        pytest.fail(str(exc))
