"""`ripcord fx-sim`: an FX rate provider simulator that can be made slow, failing or gone live.

Rates come from the static table with a small fixed drift per pair, so every answer is
reproducible and differs visibly from the fallback. ``FxSimulator`` runs the same server
in-process for tests; ``main`` is the command.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import struct
import sys
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from router.fx import DEFAULT_TABLE, StaticRates
from router.money import format_decimal

MODES = ("ok", "slow", "fail", "gone", "malformed")
DEFAULT_PORT = 8099
DEFAULT_DELAY_MS = 1000
MAX_DELAY_MS = 600_000
# The drift is at most +-0.20 %, fixed per pair; rates carry 8 significant digits.
MAX_DRIFT_BP = 20
_RATE = Context(prec=8, rounding=ROUND_HALF_UP)

HELP_EPILOG = f"""\
modes:
  ok         answer every GET /rates (a fraction error_rate of them with HTTP 500)
  slow       like ok, but wait delay_ms before each answer
  fail       answer every GET /rates with HTTP 503
  gone       reset every /rates connection without answering (the control API still works)
  malformed  answer HTTP 200 with bodies that are not a valid rate

endpoints:
  GET  /rates?from=EUR&to=USD  {{"from": "EUR", "to": "USD", "rate": "1.1598...", "as_of": "..."}}
  GET  /control                the mode, delay_ms, error_rate and request counts
  POST /control                change any of mode, delay_ms, error_rate; "reset": true zeroes counts
  GET  /healthz                {{"status": "ok"}}

examples:
  curl 'http://127.0.0.1:{DEFAULT_PORT}/rates?from=EUR&to=USD'
  curl -X POST http://127.0.0.1:{DEFAULT_PORT}/control -d '{{"mode": "slow", "delay_ms": 400}}'
  curl -X POST http://127.0.0.1:{DEFAULT_PORT}/control -d '{{"mode": "ok", "error_rate": 0.2}}'
  curl -X POST http://127.0.0.1:{DEFAULT_PORT}/control -d '{{"mode": "gone"}}'
  curl http://127.0.0.1:{DEFAULT_PORT}/control
"""


def simulated_rate(table: StaticRates, from_ccy: str, to_ccy: str) -> Decimal:
    """The simulator's rate for a pair: the table's cross rate with a fixed per-pair drift."""
    drift_bp = zlib.crc32(f"{from_ccy}/{to_ccy}".encode()) % (2 * MAX_DRIFT_BP + 1) - MAX_DRIFT_BP
    factor = 1 + Decimal(drift_bp).scaleb(-4)
    return _RATE.multiply(table.rate(from_ccy, to_ccy), factor)


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _State:
    mode: str
    delay_ms: int
    error_rate: float
    rate_requests: int = 0
    total_requests: int = 0

    def snapshot(self, table_version: str) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "delay_ms": self.delay_ms,
            "error_rate": self.error_rate,
            "requests": {"rates": self.rate_requests, "total": self.total_requests},
            "table_version": table_version,
        }


def _check_settings(mode: Any, delay_ms: Any, error_rate: Any) -> None:
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    if delay_ms is not None and (
        isinstance(delay_ms, bool)
        or not isinstance(delay_ms, int)
        or not 0 <= delay_ms <= MAX_DELAY_MS
    ):
        raise ValueError(f"delay_ms must be an integer in [0, {MAX_DELAY_MS}]")
    if error_rate is not None and (
        isinstance(error_rate, bool)
        or not isinstance(error_rate, int | float)
        or not 0 <= error_rate <= 1
    ):
        raise ValueError("error_rate must be a number in [0, 1]")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], table: StaticRates, state: _State, seed: int, verbose: bool
    ) -> None:
        self.table = table
        self.state = state
        self.lock = threading.Lock()
        self.random = random.Random(seed)
        self.stopping = threading.Event()
        self.verbose = verbose
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (the router's timeout) is the point of slow mode, not an error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "ripcord-fx-sim"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: dict[str, Any] | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _count(self, rates: bool) -> tuple[str, int, float, int, float]:
        server = self.server
        with server.lock:
            state = server.state
            state.total_requests += 1
            if rates:
                state.rate_requests += 1
            # Only /rates draws, so the error sequence for a seed ignores control traffic.
            draw = server.random.random() if rates else 1.0
            return state.mode, state.delay_ms, state.error_rate, state.rate_requests, draw

    def do_GET(self) -> None:
        """Serve /rates, /control and /healthz."""
        url = urlsplit(self.path)
        if url.path == "/rates":
            self._rates(parse_qs(url.query))
            return
        self._count(rates=False)
        if url.path == "/control":
            with self.server.lock:
                snapshot = self.server.state.snapshot(self.server.table.version)
            self._send(200, snapshot)
        elif url.path == "/healthz":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": f"no such path {url.path}"})

    def do_POST(self) -> None:
        """Change the simulator's behaviour: POST /control {"mode": ..., ...}."""
        self._count(rates=False)
        if urlsplit(self.path).path != "/control":
            self._send(404, {"error": "POST only to /control"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= 4096:
                raise ValueError("send a JSON object of at most 4096 bytes")
            doc = json.loads(self.rfile.read(length))
            if not isinstance(doc, dict):
                raise ValueError("send a JSON object")
            unknown = set(doc) - {"mode", "delay_ms", "error_rate", "reset"}
            if unknown:
                raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
            _check_settings(doc.get("mode"), doc.get("delay_ms"), doc.get("error_rate"))
        except ValueError as exc:
            self._send(400, {"error": str(exc)})
            return
        with self.server.lock:
            state = self.server.state
            state.mode = doc.get("mode", state.mode)
            state.delay_ms = doc.get("delay_ms", state.delay_ms)
            state.error_rate = float(doc.get("error_rate", state.error_rate))
            if doc.get("reset"):
                state.rate_requests = state.total_requests = 0
            snapshot = state.snapshot(self.server.table.version)
        self._send(200, snapshot)

    def _rates(self, query: dict[str, list[str]]) -> None:
        mode, delay_ms, error_rate, number, draw = self._count(rates=True)
        if mode == "gone":
            # RST instead of an answer: what a crashed or unreachable provider looks like.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if mode == "slow" and self.server.stopping.wait(delay_ms / 1000):
            return
        if mode == "fail" or (mode in ("ok", "slow") and draw < error_rate):
            self._send(503 if mode == "fail" else 500, {"error": f"simulated {mode} failure"})
            return
        pair = [query.get("from", []), query.get("to", [])]
        if any(len(values) != 1 for values in pair):
            self._send(400, {"error": "give exactly one from= and one to= currency"})
            return
        from_ccy, to_ccy = pair[0][0], pair[1][0]
        try:
            rate = simulated_rate(self.server.table, from_ccy, to_ccy)
        except KeyError as exc:
            self._send(404, {"error": str(exc.args[0])})
            return
        answer = {
            "from": from_ccy,
            "to": to_ccy,
            "rate": format_decimal(rate),
            "as_of": _now_text(),
        }
        if mode == "malformed":
            self._send(200, _malformed(answer, number))
            return
        self._send(200, answer)


def _malformed(answer: dict[str, Any], number: int) -> bytes:
    """One of several broken answers, chosen in turn by request number."""
    variants: list[dict[str, Any] | bytes] = [
        b'{"from": "EUR", "to": ',
        {**answer, "rate": float(answer["rate"])},
        {**answer, "rate": "NaN"},
        {**answer, "rate": "-1.5"},
        {key: value for key, value in answer.items() if key != "as_of"},
        {**answer, "to": "XXX"},
        b"[]",
    ]
    chosen = variants[number % len(variants)]
    return chosen if isinstance(chosen, bytes) else json.dumps(chosen).encode()


class FxSimulator:
    """The simulator as an in-process server: start on a free port, change its mode, stop."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        table: StaticRates | None = None,
        mode: str = "ok",
        delay_ms: int = DEFAULT_DELAY_MS,
        error_rate: float = 0.0,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        _check_settings(mode, delay_ms, error_rate)
        self._address = (host, port)
        self._table = table if table is not None else StaticRates.load()
        self._state = _State(mode, delay_ms, error_rate)
        self._seed = seed
        self._verbose = verbose
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FxSimulator:
        """Bind and serve in a background thread."""
        server = _Server(self._address, self._table, self._state, self._seed, self._verbose)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (later connections are refused)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FxSimulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL for ``FxProvider``."""
        return f"http://{self._address[0]}:{self.port}"

    def set_mode(
        self, mode: str, *, delay_ms: int | None = None, error_rate: float | None = None
    ) -> None:
        """Change behaviour (the same as POST /control)."""
        _check_settings(mode, delay_ms, error_rate)
        lock = self._server.lock if self._server is not None else threading.Lock()
        with lock:
            self._state.mode = mode
            if delay_ms is not None:
                self._state.delay_ms = delay_ms
            if error_rate is not None:
                self._state.error_rate = float(error_rate)

    @property
    def rate_requests(self) -> int:
        """How many GET /rates requests arrived (whatever the mode did with them)."""
        return self._state.rate_requests

    def state(self) -> dict[str, Any]:
        """What GET /control returns."""
        return self._state.snapshot(self._table.version)


def main(argv: Sequence[str] | None = None, *, prog: str = "ripcord fx-sim") -> int:
    """Run the simulator until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Simulated FX rate provider for the payment router (HTTP, JSON).",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8099)")
    parser.add_argument("--mode", choices=MODES, default="ok", help="initial mode (default ok)")
    parser.add_argument(
        "--delay-ms", type=int, default=DEFAULT_DELAY_MS, help="delay in slow mode (default 1000)"
    )
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of 500s (0..1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the error-rate draws")
    parser.add_argument("--rates", type=Path, default=DEFAULT_TABLE, help="rate table JSON")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    try:
        table = StaticRates.load(args.rates)
        sim = FxSimulator(
            host=args.host,
            port=args.port,
            table=table,
            mode=args.mode,
            delay_ms=args.delay_ms,
            error_rate=args.error_rate,
            seed=args.seed,
            verbose=args.verbose,
        ).start()
    except (OSError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"{prog}: serving on {sim.url} (mode {args.mode}, table {table.version})", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"{prog}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
