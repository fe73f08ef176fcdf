"""The Prometheus provider (spec 9): recorded 2.42 answers -> `result`, request shape, errors."""

from __future__ import annotations

import math
import socket
import time
import urllib.parse

import pytest

from canary.prometheus import (
    ADDRESS_ENV,
    HttpResponse,
    PrometheusClient,
    PrometheusError,
    PrometheusSpec,
    format_value,
    parse_response,
)
from flagd.process import free_port
from tests.canary.replay import WALL, Scripted, client, recording

NAN = math.nan

# recording -> (result type, value given to the conditions, stored value string)  (9.3)
DECODED = [
    ("spec_bad_canary_error_rate", "vector", [0.020708412397216953], "[0.020708412397216953]"),
    ("spec_good_stable_p99", "vector", [0.09920313527626906], "[0.09920313527626906]"),
    ("spec_default_buckets_p99", "vector", [4.95], "[4.95]"),
    ("spec_scalar", "scalar", 72.29, "72.29"),
    ("real_error_rate_bad", "vector", [0.08536585365853658], "[0.08536585365853658]"),
    ("real_error_rate_ok", "vector", [0.0], "[0]"),
    ("real_p99_ok", "vector", [0.0049499999999999995], "[0.0049499999999999995]"),
    ("real_empty_vector", "vector", [], "[]"),
    ("real_error_rate_no_data", "vector", [], "[]"),
    ("real_by_status", "vector", [3.2950000000000004, 0.3075333333333334],
     "[3.2950000000000004,0.3075333333333334]"),
    ("real_scalar", "scalar", 335.0, "335"),
    ("real_inf_vector", "vector", [math.inf], "[+Inf]"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "kind", "value", "text"), DECODED, ids=[d[0] for d in DECODED])
def test_recorded_answers_become_the_result_of_9_3(
    name: str, kind: str, value: float | list[float], text: str
) -> None:
    answer = recording(name)
    result = parse_response(answer.status, answer.body)
    assert (result.result_type, result.value, result.value_str) == (kind, value, text)
    assert result.warnings == () and result.metadata == {}


@pytest.mark.parametrize("name", ["real_error_rate_nan", "real_p99_nan"])
def test_nan_arrives_as_a_string_and_stays_nan(name: str) -> None:
    answer = recording(name)
    result = parse_response(answer.status, answer.body)
    assert isinstance(result.value, list) and math.isnan(result.value[0])
    assert result.value_str == "[NaN]"


def test_a_matrix_is_flattened_series_after_series() -> None:
    answer = recording("real_matrix")
    result = parse_response(answer.status, answer.body)
    assert result.result_type == "matrix" and isinstance(result.value, list)
    assert len(result.value) >= 2 and result.value == sorted(result.value)  # a counter's samples


def test_warnings_are_kept_as_metadata() -> None:
    body = (
        b'{"status":"success","data":{"resultType":"scalar","result":[1,"1"]},"warnings":["a","b"]}'
    )
    result = parse_response(200, body)
    assert result.warnings == ("a", "b") and result.metadata == {"warnings": '"a", "b"'}


ERRORS = [
    # recorded 2.42 error envelopes
    (
        recording("spec_bad_data_400"),
        'bad_data: invalid parameter "query": 1:17: parse error: unclosed left parenthesis',
    ),
    (recording("real_bad_data_400"), "bad_data: invalid parameter"),
    (recording("real_execution_422"), "execution: found duplicate series"),
    (recording("real_string"), "Prometheus metric type not supported"),
    # what client_golang reports for answers without an envelope
    # 503 is one of the codes that must carry an envelope (400/422/503): no JSON, no value
    (HttpResponse(503, b"upstream connect error"), "bad_response: HTTP 503, body is not JSON"),
    (HttpResponse(502, b"<html>bad gateway</html>"), "server_error: server error: 502"),
    (HttpResponse(404, b"404 page not found"), "client_error: client error: 404"),
    (HttpResponse(200, b"not json"), "bad_response"),
    (HttpResponse(400, b'{"status":"success","data":{}}'), "inconsistent body"),
    (
        HttpResponse(
            200, b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}'
        ),
        "bad_response",
    ),
]


@pytest.mark.parametrize(("answer", "message"), ERRORS)
def test_error_answers_raise(answer: HttpResponse, message: str) -> None:
    with pytest.raises(PrometheusError) as info:
        parse_response(answer.status, answer.body)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [(72.29, "72.29"), (72.0, "72"), (0.0, "0"), (-0.0, "-0"), (1e-05, "0.00001"),
     (1.5e-07, "0.00000015"), (1e21, "1000000000000000000000"), (0.1 + 0.2, "0.30000000000000004"),
     (NAN, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (1796026467.459, "1796026467.459")],
)  # fmt: skip
def test_values_are_formatted_like_go(value: float, text: str) -> None:
    assert format_value(value) == text


def test_the_request_is_a_form_post_with_query_and_time() -> None:
    transport = Scripted({"up": ["spec_scalar"]})
    spec = PrometheusSpec(
        query='sum(up{job="x"})',
        address="http://prom.test:9090/prefix/",
        timeout=10,
        headers=(("X-Scope-OrgID", "tenant"), ("content-type", "application/x-custom")),
    )
    client(transport).query(spec)
    (request,) = transport.requests
    assert (request.method, request.url) == ("POST", "http://prom.test:9090/prefix/api/v1/query")
    form = urllib.parse.parse_qs(request.body.decode() if request.body else "")
    # No `timeout` parameter: the field is a client-side deadline only (9.1, 9.2).
    assert form == {"query": ['sum(up{job="x"})'], "time": [format_value(WALL)]}
    assert request.timeout == 10.0
    assert request.headers == {"X-Scope-OrgID": "tenant", "content-type": "application/x-custom"}


@pytest.mark.parametrize("status", [405, 501])
def test_post_not_allowed_is_retried_as_get(status: int) -> None:
    transport = Scripted({"up": [HttpResponse(status, b""), "spec_scalar"]})
    result = client(transport).query(PrometheusSpec("up", "http://prom.test:9090"))
    assert result.value == 72.29
    assert [r.method for r in transport.requests] == ["POST", "GET"]
    assert transport.requests[1].url.startswith("http://prom.test:9090/api/v1/query?query=up&time=")


def test_timeout_defaults_to_30_seconds() -> None:
    transport = Scripted({"up": ["spec_scalar"]})
    client(transport).query(PrometheusSpec("up", "http://prom.test:9090"))
    assert transport.requests[0].timeout == 30.0


def test_address_falls_back_to_the_environment_then_fails() -> None:
    transport = Scripted({"up": ["spec_scalar"]})
    env_client = PrometheusClient(transport, env={ADDRESS_ENV: "http://from-env:9090"})
    env_client.query(PrometheusSpec("up"))
    assert transport.requests[0].url == "http://from-env:9090/api/v1/query"
    with pytest.raises(PrometheusError, match="prometheus address is not configured"):
        PrometheusClient(transport, env={}).query(PrometheusSpec("up"))
    with pytest.raises(PrometheusError, match="not is url format"):
        PrometheusClient(transport, env={}).query(PrometheusSpec("up", "prometheus:9090"))
    with pytest.raises(PrometheusError, match="should not be negative"):
        PrometheusClient(transport, env={}).query(PrometheusSpec("up", "http://p:1", timeout=-1))


def test_a_dead_prometheus_is_an_error_not_a_value() -> None:
    port = free_port()  # nothing listens there: connection refused
    with pytest.raises(PrometheusError) as info:
        PrometheusClient(env={}).query(PrometheusSpec("up", f"http://127.0.0.1:{port}", timeout=5))
    assert str(info.value) == (
        f'Post "http://127.0.0.1:{port}/api/v1/query": connect: connection refused'
    )


def test_a_silent_prometheus_times_out_after_timeout_seconds() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # accepts connections (kernel backlog) and never answers
        port = server.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(PrometheusError, match="context deadline exceeded"):
            PrometheusClient(env={}).query(PrometheusSpec("up", f"http://127.0.0.1:{port}", timeout=1))  # fmt: skip
        assert 0.9 < time.monotonic() - started < 5
