"""Test helpers: replay recorded Prometheus answers (tests/canary/recorded/), a fake clock.

Each recording holds the HTTP status and the raw body exactly as Prometheus 2.42 sent it
(`real_*`: captured from a real run against the router; `spec_*`: values quoted in
analysis-semantics.md 12.4 in the 2.42 envelope). The `source` field of each file says which.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from canary.prometheus import HttpRequest, HttpResponse, PrometheusClient
from canary.templates import AnalysisTemplate, load_documents, templates_from_documents

RECORDED = Path(__file__).parent / "recorded"
SPEC_YAML = RECORDED / "spec_payment_router.yaml"
WALL = 1796026467.0  # the wall clock the replayed queries claim (spec 12.4's timestamps)

# A step in a script: a recording name, an exception to raise (no HTTP answer), or a response.
Step = str | BaseException | HttpResponse


def recording(name: str) -> HttpResponse:
    """The recorded answer ``recorded/<name>.json``."""
    data = json.loads((RECORDED / f"{name}.json").read_text())
    return HttpResponse(int(data["http_status"]), data["body"].encode())


def query_of(request: HttpRequest) -> str:
    """The PromQL a request carries (form body for POST, query string for GET)."""
    raw = request.body.decode() if request.body else urllib.parse.urlsplit(request.url).query
    return urllib.parse.parse_qs(raw)["query"][0]


@dataclass
class Scripted:
    """A transport answering each query from its own script; the last step repeats."""

    routes: Mapping[str, Sequence[Step]]  # substring of the query -> steps
    requests: list[HttpRequest] = field(default_factory=list)
    _used: dict[str, int] = field(default_factory=dict)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        query = query_of(request)
        keys = [k for k in self.routes if k in query]
        assert len(keys) == 1, f"no unique route for {query!r}: {keys}"
        steps = self.routes[keys[0]]
        i = self._used.get(keys[0], 0)
        self._used[keys[0]] = i + 1
        step = steps[min(i, len(steps) - 1)]
        if isinstance(step, BaseException):
            raise step
        return step if isinstance(step, HttpResponse) else recording(step)

    def calls(self, key: str) -> int:
        """How many queries matched route ``key``."""
        return self._used.get(key, 0)


def client(transport: Scripted) -> PrometheusClient:
    """A PrometheusClient over ``transport`` with a fixed wall clock and no environment."""
    return PrometheusClient(transport, wall_clock=lambda: WALL, env={})


class FakeClock:
    """Simulated time: ``clock()`` reads it, ``sleep(s)`` advances it instantly."""

    def __init__(self, start: float = 1000.0) -> None:
        self.start = self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.now - self.start


def spec_template() -> AnalysisTemplate:
    """`payment-router-slo` exactly as written in spec 12.2."""
    (template,) = templates_from_documents(load_documents(SPEC_YAML))
    return template


def template(*metrics: Mapping[str, object], args: Sequence[Mapping[str, str]] = ()) -> AnalysisTemplate:  # fmt: skip
    """An AnalysisTemplate with ``metrics`` (given a Prometheus address unless they have one)."""
    doc = {
        "kind": "AnalysisTemplate",
        "metadata": {"name": "t"},
        "spec": {"args": list(args), "metrics": [_with_provider(m) for m in metrics]},
    }
    return AnalysisTemplate.from_document(doc)


def _with_provider(metric: Mapping[str, object]) -> dict[str, object]:
    out = dict(metric)
    out.setdefault(
        "provider", {"prometheus": {"address": "http://prom.test:9090", "query": metric["name"]}}
    )
    return out
