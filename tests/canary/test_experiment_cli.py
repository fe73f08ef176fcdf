"""`ripcord experiment judge` against a fake Prometheus (http.server on a free port).

The fake answers with recorded-format JSON (Prometheus 2.42 instant-query envelopes, spec
analysis-semantics.md 9.2-9.3); the real Prometheus is exercised by the analysis-runner tests.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from canary.experiment_cli import main

NOW = 1796026467.459  # the injected clock: both queries must be evaluated at this instant
EXPOSURES = "payments_experiment_exposures_total"
CONVERSIONS = "payments_experiment_conversions_total"


def vector(values: dict[str, str]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"variant": k}, "value": [NOW, v]} for k, v in values.items()],
        },
    }


class FakePrometheus:
    """Answers /api/v1/query by metric name; remembers every query it was sent."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, Any]] = {}
        self.requests: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(url.query))
                fake.requests.append({"path": url.path, **params})
                metric = CONVERSIONS if CONVERSIONS in params.get("query", "") else EXPOSURES
                status, body = fake.answers.get(metric, (200, vector({})))
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def counts(self, exposures: dict[str, str], conversions: dict[str, str]) -> None:
        self.answers[EXPOSURES] = (200, vector(exposures))
        self.answers[CONVERSIONS] = (200, vector(conversions))


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["judge", *argv], "ripcord experiment", clock=lambda: NOW, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


VECTOR_A = (
    {"control": "200000", "treatment": "200000"},
    {"control": "10000", "treatment": "10300"},
)


def test_raw_totals_and_a_human_report(prom):
    prom.counts(*VECTOR_A)
    code, out, err = run("--prometheus", prom.url)
    assert (code, err) == (0, "")
    assert out.startswith("payments.dynamic-currency.enabled: TREATMENT-WINS")
    for fragment in (
        "200,000",
        "10,300",
        "5.150%",
        "z = 2.1611",
        "p = 0.03068",
        "raw counter totals",
        "2026-11-30T",
    ):
        assert fragment in out
    assert [r["query"] for r in prom.requests] == [
        f"sum by (variant) ({EXPOSURES})",
        f'sum by (variant) ({CONVERSIONS}{{outcome="ACCEPTED"}})',
    ]
    assert {r["path"] for r in prom.requests} == {"/api/v1/query"}
    assert {r["time"] for r in prom.requests} == {f"{NOW:.3f}"}  # one instant for both counts


def test_window_uses_increase_and_rounds_extrapolated_counts(prom):
    prom.counts(
        {"control": "200000.4", "treatment": "199999.6"},
        {"control": "9999.5", "treatment": "10299.8"},
    )
    code, out, _ = run("--prometheus", prom.url + "/", "--window", "1h30m", "--json")
    assert code == 0
    assert [r["query"] for r in prom.requests] == [
        f"sum by (variant) (increase({EXPOSURES}[1h30m]))",
        f'sum by (variant) (increase({CONVERSIONS}{{outcome="ACCEPTED"}}[1h30m]))',
    ]
    body = json.loads(out)
    assert (
        body["verdict"] == "treatment-wins" and body["flag"] == "payments.dynamic-currency.enabled"
    )
    assert body["variants"]["control"]["exposures"] == 200_000
    assert body["variants"]["control"]["conversions"] == 10_000  # round(9999.5) is 10,000 (even)
    assert body["variants"]["treatment"]["conversions"] == 10_300
    assert body["z"] == pytest.approx(2.161140155, abs=1e-8)
    assert body["p"] == pytest.approx(0.03068451453, rel=1e-7)
    assert body["srm"]["p"] == 1.0
    assert body["sequential"] is None
    assert body["source"]["window"] == "1h30m" and body["source"]["time"] == NOW


def test_sequential_judges_vector_a_not_significant(prom):
    prom.counts(*VECTOR_A)
    code, out, _ = run("--prometheus", prom.url, "--sequential", "--json")
    body = json.loads(out)
    assert code == 0
    assert body["verdict"] == "no-difference" and body["mode"] == "sequential"
    assert body["p"] == pytest.approx(0.3757305, rel=1e-6)
    assert body["sequential"]["tune_n"] == 400_000
    code, out, _ = run("--prometheus", prom.url, "--sequential", "--tune-n", "5000", "--json")
    assert json.loads(out)["p"] == 1.0


def test_insufficient_data_exits_3(prom):
    prom.counts(
        {"control": "200000", "treatment": "200000"}, {"control": "9999", "treatment": "10400"}
    )
    code, out, _ = run("--prometheus", prom.url)
    assert code == 3
    assert "INSUFFICIENT-DATA" in out and "control has 9,999" in out


def test_lower_floor_for_rehearsals_is_reported(prom):
    prom.counts(
        {"control": "20000", "treatment": "20000"}, {"control": "1000", "treatment": "1200"}
    )
    code, out, _ = run("--prometheus", prom.url, "--min-conversions", "500", "--json")
    body = json.loads(out)
    assert (code, body["verdict"], body["min_conversions"]) == (0, "treatment-wins", 500)


def test_sample_ratio_mismatch_exits_4(prom):
    prom.counts(
        {"control": "100000", "treatment": "101500"}, {"control": "10000", "treatment": "10800"}
    )
    code, out, _ = run("--prometheus", prom.url, "--json")
    body = json.loads(out)
    assert code == 4
    assert body["verdict"] == "blocked-srm"
    assert body["srm"]["p"] == pytest.approx(0.0008329868712, rel=1e-7)
    assert body["p"] < 0.05  # significant, and blocked all the same


def test_configured_split_is_used_for_srm(prom):
    prom.counts(
        {"control": "90000", "treatment": "10250"}, {"control": "10000", "treatment": "1000"}
    )
    code, out, _ = run(
        "--prometheus",
        prom.url,
        "--split",
        "treatment=10,control=90",
        "--min-conversions",
        "1000",
        "--json",
    )
    body = json.loads(out)
    assert body["srm"]["p"] == pytest.approx(0.01784835403, rel=1e-7)
    assert body["verdict"] != "blocked-srm" and code == 0
    # The same counts against the default 50/50 are an obvious mismatch.
    assert run("--prometheus", prom.url, "--min-conversions", "1000")[0] == 4


def test_an_unexpected_variant_blocks(prom):
    prom.counts(
        {"control": "200000", "treatment": "200000", "holdout": "5"},
        {"control": "10000", "treatment": "10600"},
    )
    code, out, _ = run("--prometheus", prom.url, "--json")
    body = json.loads(out)
    assert (code, body["verdict"]) == (4, "blocked-srm")
    assert body["srm"]["observed"]["holdout"] == 5 and body["srm"]["chi2"] is None


def test_no_series_yet_is_insufficient_data(prom):
    prom.counts({}, {})
    code, out, _ = run("--prometheus", prom.url, "--json")
    body = json.loads(out)
    assert (code, body["verdict"]) == (3, "insufficient-data")
    assert body["variants"]["treatment"]["exposures"] == 0 and body["z"] is None


def test_prometheus_error_envelope_exits_1(prom):
    error = {
        "status": "error",
        "errorType": "bad_data",
        "error": 'invalid parameter "query": parse error',
    }
    prom.answers[EXPOSURES] = (400, error)
    code, out, err = run("--prometheus", prom.url)
    assert (code, out) == (1, "")
    assert "Prometheus refused" in err and "parse error" in err


def test_http_error_without_json_exits_1(prom):
    prom.answers[EXPOSURES] = (502, b"<html>bad gateway</html>")
    code, _, err = run("--prometheus", prom.url)
    assert code == 1 and "HTTP 502" in err


def test_nan_sample_exits_1(prom):
    prom.counts({"control": "NaN", "treatment": "1"}, {})
    code, _, err = run("--prometheus", prom.url)
    assert code == 1 and "nan" in err


def test_more_conversions_than_exposures_exits_1(prom):
    prom.counts({"control": "100", "treatment": "100"}, {"control": "120", "treatment": "10"})
    code, _, err = run("--prometheus", prom.url, "--window", "5m")
    assert code == 1
    assert "120 conversions > 100 exposures" in err and "widen" in err


def test_unreachable_prometheus_exits_1():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run("--prometheus", f"http://127.0.0.1:{port}", "--timeout", "2")
    assert code == 1 and "cannot reach Prometheus" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--prometheus", "localhost:9090"],
        ["--prometheus", "http://p", "--flag", "payments.new-router"],
        ["--prometheus", "http://p", "--split", "treatment=50;control=50"],
        ["--prometheus", "http://p", "--split", "treatment=-1,control=50"],
        ["--prometheus", "http://p", "--split", "treatment=0,control=0"],
        ["--prometheus", "http://p", "--window", "1 hour"],
        ["--prometheus", "http://p", "--window", "1h])) or vector(1"],
        ["--prometheus", "http://p", "--tune-n", "0"],
        [],
    ],
)
def test_usage_errors_exit_2(argv):
    code, out, _ = run(*argv)
    assert code == 2 and out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--split", "a=50,b=50"], "no weight for control, treatment"),
        (["--control", "treatment"], "must differ"),
    ],
)
def test_inconsistent_options_exit_2_before_querying(prom, argv, message):
    code, _, err = run("--prometheus", prom.url, *argv)
    assert code == 2 and message in err
    assert prom.requests == []


def test_help_exits_0(capsys):
    assert main(["judge", "--help"]) == 0
    assert "exit codes" in capsys.readouterr().out
