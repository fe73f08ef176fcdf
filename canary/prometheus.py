"""Prometheus instant queries for analysis measurements (spec 9): request, errors, `result`.

The exchange follows prometheus/client_golang as Argo Rollouts uses it (9.2): POST
`/api/v1/query` with a form body `query=...&time=...`, repeated as GET on 405/501; any transport
failure, timeout, non-2xx answer or `"status":"error"` raises PrometheusError, which the
analysis turns into a measurement Error. Responses become the `result` the conditions see (9.3).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = [
    "ADDRESS_ENV",
    "DEFAULT_TIMEOUT",
    "HttpRequest",
    "HttpResponse",
    "PrometheusClient",
    "PrometheusError",
    "PrometheusSpec",
    "QueryResult",
    "Transport",
    "format_value",
    "parse_response",
    "urllib_transport",
]

ADDRESS_ENV = "ARGO_ROLLOUTS_PROMETHEUS_ADDRESS"
DEFAULT_TIMEOUT = 30  # seconds, when `timeout` is unset (9.1)


class PrometheusError(Exception):
    """The query could not produce a value: the measurement is Error (5.3, 9.2)."""


@dataclass(frozen=True)
class PrometheusSpec:
    """`provider.prometheus` of a metric, after argument substitution (9.1)."""

    query: str
    address: str = ""
    timeout: int | None = None  # integer seconds; None = 30
    headers: tuple[tuple[str, str], ...] = ()
    insecure: bool = False


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request as the transport sees it."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    timeout: float
    insecure: bool = False


@dataclass(frozen=True)
class HttpResponse:
    """Status and raw body of an HTTP answer (any status: the client interprets it)."""

    status: int
    body: bytes


# Returns any HTTP answer; raises OSError (incl. TimeoutError, URLError) when there is none.
Transport = Callable[[HttpRequest], HttpResponse]


def urllib_transport(request: HttpRequest) -> HttpResponse:
    """Send ``request`` with urllib; HTTP error statuses are returned, not raised."""
    req = urllib.request.Request(
        request.url, data=request.body, method=request.method, headers=dict(request.headers)
    )
    context = None
    if request.insecure:  # `insecure: true` skips TLS verification (9.1)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=request.timeout, context=context) as resp:
            return HttpResponse(int(resp.status), resp.read())
    except urllib.error.HTTPError as e:
        return HttpResponse(e.code, e.read())


@dataclass(frozen=True)
class QueryResult:
    """A successful query: the condition input, its stored string form, and warnings."""

    value: float | list[float]
    value_str: str
    result_type: str
    warnings: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


def format_value(value: float) -> str:
    """Go's strconv.FormatFloat(v, 'f', -1, 64): shortest round-trip, no exponent (9.3)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _sample(pair: Any) -> float:
    if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str)):
        raise PrometheusError(f"bad_response: malformed sample {pair!r}")
    try:
        # Special values arrive as strings: "NaN", "+Inf", "-Inf" (9.3, 10).
        return float(pair[1])
    except ValueError:
        raise PrometheusError(f"bad_response: malformed sample value {pair[1]!r}") from None


def _series_values(series: Any, key: str) -> list[Any]:
    if not isinstance(series, dict) or key not in series:
        if isinstance(series, dict) and ("histogram" in series or "histograms" in series):
            raise PrometheusError("native histogram samples are not supported")
        raise PrometheusError(f"bad_response: series without {key!r}: {series!r}")
    return [series[key]] if key == "value" else list(series[key])


def parse_response(status: int, body: bytes) -> QueryResult:
    """Interpret an HTTP answer of /api/v1/query like client_golang, then map it (9.2, 9.3)."""
    api_error = status in (400, 422, 503)  # statuses that carry an error envelope
    if status // 100 != 2 and not api_error:
        kind = "server_error: server error" if status >= 500 else "client_error: client error"
        raise PrometheusError(f"{kind}: {status}")
    try:
        envelope = json.loads(body) if status != 204 else {}
    except ValueError as e:
        raise PrometheusError(f"bad_response: HTTP {status}, body is not JSON: {e}") from None
    if not isinstance(envelope, dict):
        raise PrometheusError("bad_response: response is not a JSON object")
    if envelope.get("status") == "error":
        raise PrometheusError(f"{envelope.get('errorType', '')}: {envelope.get('error', '')}")
    if api_error:
        raise PrometheusError("bad_response: inconsistent body for response code")
    if envelope.get("status") != "success":
        raise PrometheusError(f"bad_response: unexpected status {envelope.get('status')!r}")
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise PrometheusError("bad_response: missing data")
    warnings = tuple(str(w) for w in envelope.get("warnings") or ())
    # Argo stores them as one string: "w1", "w2" (prometheus.go).
    metadata = {"warnings": ", ".join(f'"{w}"' for w in warnings)} if warnings else {}
    result_type, result = data.get("resultType"), data.get("result")
    if result_type == "scalar":
        value = _sample(result)
        return QueryResult(value, format_value(value), "scalar", warnings, metadata)
    if result_type in ("vector", "matrix"):
        if not isinstance(result, list):
            raise PrometheusError(f"bad_response: {result_type} result is not a list")
        # One float per series in response order, labels dropped; a matrix flattens all
        # samples, series after series (9.3). An empty vector is an empty list, not nil.
        key = "value" if result_type == "vector" else "values"
        values = [_sample(p) for series in result for p in _series_values(series, key)]
        text = "[" + ",".join(format_value(v) for v in values) + "]"
        return QueryResult(values, text, result_type, warnings, metadata)
    raise PrometheusError("Prometheus metric type not supported")


def _resolve_address(spec: PrometheusSpec, env: Mapping[str, str]) -> str:
    address = spec.address or env.get(ADDRESS_ENV, "")
    if not address:
        raise PrometheusError("prometheus address is not configured")
    parsed = urllib.parse.urlsplit(address)
    if not (parsed.scheme and parsed.netloc):
        raise PrometheusError("prometheus address is not is url format")  # Argo's wording
    return address


def _reason(error: BaseException) -> str:
    inner = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(inner, TimeoutError | socket.timeout):
        return "context deadline exceeded"
    if isinstance(inner, ConnectionRefusedError):
        return "connect: connection refused"
    return str(inner) or type(inner).__name__


class PrometheusClient:
    """Runs instant queries; inject ``transport`` to replay recorded responses in tests."""

    def __init__(
        self,
        transport: Transport = urllib_transport,
        *,
        wall_clock: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.transport = transport
        # The query's evaluation time is real time even when the analysis clock is simulated.
        self.wall_clock = wall_clock
        self.env = os.environ if env is None else env

    def query(self, spec: PrometheusSpec) -> QueryResult:
        """Evaluate ``spec.query`` now; raises PrometheusError for every failure (9.2)."""
        if spec.timeout is not None and spec.timeout < 0:
            raise PrometheusError("prometheus timeout should not be negative")
        address = _resolve_address(spec, self.env)
        url = address.rstrip("/") + "/api/v1/query"
        form = urllib.parse.urlencode(
            {"query": spec.query, "time": format_value(self.wall_clock())}
        ).encode()
        # The `timeout` field is a client-side deadline only; it is not sent to Prometheus.
        # urllib applies it to each socket operation (connect, each read) where Go bounds the
        # whole call: the same for a dead or silent server, looser for one trickling bytes.
        timeout = float(DEFAULT_TIMEOUT if spec.timeout is None else spec.timeout)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        for key, value in spec.headers:  # each header is set, replacing same-named ones (9.1)
            headers = {k: v for k, v in headers.items() if k.lower() != key.lower()}
            headers[key] = value
        attempts: Sequence[HttpRequest] = (
            HttpRequest("POST", url, headers, form, timeout, spec.insecure),
            HttpRequest(
                "GET",
                f"{url}?{form.decode()}",
                {k: v for k, v in headers.items() if k.lower() != "content-type"},
                None,
                timeout,
                spec.insecure,
            ),
        )
        for request in attempts:
            try:
                response = self.transport(request)
            except (OSError, ValueError, http.client.HTTPException) as e:  # no HTTP answer
                verb = request.method.capitalize()
                raise PrometheusError(f'{verb} "{request.url}": {_reason(e)}') from e
            # client_golang's DoGetFallback: retry as GET when POST is not allowed.
            if request.method == "POST" and response.status in (405, 501):
                continue
            return parse_response(response.status, response.body)
        return parse_response(response.status, response.body)
