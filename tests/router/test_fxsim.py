"""The FX provider simulator: its HTTP API, run-time control, and the `fx-sim` command."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from router.fx import StaticRates
from router.fxsim import MAX_DRIFT_BP, FxSimulator, main, simulated_rate
from router.money import parse_rate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def table() -> StaticRates:
    return StaticRates.load()


@pytest.fixture(scope="module")
def sim(table):
    with FxSimulator(table=table) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _reset(request):
    if "sim" in request.fixturenames:
        simulator = request.getfixturevalue("sim")
        simulator.set_mode("ok", delay_ms=1000, error_rate=0.0)


def get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post(url: str, body: object) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_simulated_rates_are_deterministic_and_near_the_table(table):
    for source in sorted(table.currencies):
        for target in sorted(table.currencies):
            rate = simulated_rate(table, source, target)
            assert rate == simulated_rate(table, source, target)
            drift = abs(rate / table.rate(source, target) - 1)
            assert drift <= Decimal(MAX_DRIFT_BP).scaleb(-4) + Decimal("1e-7")
            assert len(rate.as_tuple().digits) <= 8


def test_rates_endpoint(sim, table):
    status, body = get(f"{sim.url}/rates?from=EUR&to=KWD")
    assert status == 200
    assert (body["from"], body["to"]) == ("EUR", "KWD")
    assert isinstance(body["rate"], str)  # a decimal string, never a JSON number
    assert parse_rate(body["rate"]) == simulated_rate(table, "EUR", "KWD")
    assert body["as_of"].endswith("Z")


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("from=EUR", 400),
        ("from=EUR&to=USD&to=GBP", 400),
        ("from=EUR&to=CZK", 404),
        ("from=eur&to=USD", 404),
    ],
)
def test_rates_bad_queries(sim, query, status):
    assert get(f"{sim.url}/rates?{query}")[0] == status


def test_health_and_unknown_paths(sim):
    assert get(f"{sim.url}/healthz") == (200, {"status": "ok"})
    assert get(f"{sim.url}/nope")[0] == 404


def test_control_reports_state_and_counts(sim, table):
    post(f"{sim.url}/control", {"reset": True})
    get(f"{sim.url}/rates?from=EUR&to=USD")
    get(f"{sim.url}/rates?from=EUR&to=USD")
    status, state = get(f"{sim.url}/control")
    assert status == 200
    assert state["mode"] == "ok" and state["error_rate"] == 0.0
    assert state["requests"]["rates"] == 2 == sim.rate_requests
    assert state["requests"]["total"] == 3  # this GET counts too
    assert state["table_version"] == table.version


def test_control_changes_the_mode_at_run_time(sim):
    status, state = post(f"{sim.url}/control", {"mode": "fail"})
    assert status == 200 and state["mode"] == "fail"
    assert get(f"{sim.url}/rates?from=EUR&to=USD")[0] == 503
    post(f"{sim.url}/control", {"mode": "ok"})
    assert get(f"{sim.url}/rates?from=EUR&to=USD")[0] == 200


def test_slow_mode_delays(sim):
    post(f"{sim.url}/control", {"mode": "slow", "delay_ms": 120})
    started = time.monotonic()
    assert get(f"{sim.url}/rates?from=EUR&to=USD")[0] == 200
    assert time.monotonic() - started >= 0.12
    assert get(f"{sim.url}/healthz")[0] == 200  # control endpoints are never delayed


def test_gone_mode_resets_connections_but_keeps_control(sim):
    post(f"{sim.url}/control", {"mode": "gone"})
    connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    connection.request("GET", "/rates?from=EUR&to=USD")
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        connection.getresponse()
    connection.close()
    assert get(f"{sim.url}/control")[1]["mode"] == "gone"


def test_error_rate(sim):
    post(f"{sim.url}/control", {"error_rate": 1.0})
    assert get(f"{sim.url}/rates?from=EUR&to=USD")[0] == 500
    post(f"{sim.url}/control", {"error_rate": 0.5})
    statuses = [get(f"{sim.url}/rates?from=EUR&to=USD")[0] for _ in range(40)]
    assert 0 < statuses.count(500) < 40
    assert set(statuses) == {200, 500}


def test_malformed_mode_answers_200_with_nonsense(sim):
    sim.set_mode("malformed")
    for _ in range(7):
        connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
        connection.request("GET", "/rates?from=EUR&to=USD")
        response = connection.getresponse()
        assert response.status == 200
        body = response.read()
        connection.close()
        try:
            doc = json.loads(body)
            valid = (
                isinstance(doc, dict)
                and doc.get("to") == "USD"
                and isinstance(doc.get("rate"), str)
                and parse_rate(doc["rate"]) > 0
                and "as_of" in doc
            )
        except ValueError:
            valid = False
        assert not valid, body


@pytest.mark.parametrize(
    "body",
    [
        {"mode": "sideways"},
        {"delay_ms": -1},
        {"delay_ms": True},
        {"delay_ms": 1.5},
        {"error_rate": 2},
        {"colour": "red"},
        [1],
        b"not json",
        b"",
    ],
)
def test_control_rejects_bad_settings(sim, body):
    status, answer = post(f"{sim.url}/control", body)
    assert status == 400 and answer["error"]
    assert get(f"{sim.url}/control")[1]["mode"] == "ok"


def test_in_process_controls(table):
    with pytest.raises(ValueError):
        FxSimulator(table=table, mode="sideways")
    simulator = FxSimulator(table=table, mode="fail").start()
    port = simulator.port
    try:
        assert get(f"{simulator.url}/rates?from=EUR&to=USD")[0] == 503
        simulator.set_mode("ok")
        assert get(f"{simulator.url}/rates?from=EUR&to=USD")[0] == 200
        assert simulator.state()["requests"]["rates"] == 2
    finally:
        simulator.stop()
    with pytest.raises(RuntimeError):
        _ = simulator.port
    # Stopped means gone for good: the port refuses connections.
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


def test_help_explains_the_control_api(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("POST /control", "curl", '"mode": "slow"', "--delay-ms", "gone", "8099"):
        assert needle in text


def test_busy_port_is_an_error(sim, capsys):
    assert main(["--port", str(sim.port)]) == 1
    assert "fx-sim" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_command_serves_and_stops_on_signals(signum):
    process = subprocess.Popen(
        [sys.executable, "-m", "router.fxsim", "--port", "0", "--mode", "fail"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving on http://127.0.0.1:" in line, line
        url = line.split("serving on ")[1].split()[0]
        assert get(f"{url}/rates?from=EUR&to=USD")[0] == 503
        process.send_signal(signum)
        assert process.wait(timeout=10) == 0
        assert "stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
