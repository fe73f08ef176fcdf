"""Ripcord's Locust load test: gRPC payment users plus the kill-switch drill, in one run.

    locust -f loadtest/locustfile.py -H 127.0.0.1:50051 --admin-host 127.0.0.1:8013 \\
        --admin-token $TOKEN --router-db sqlite:///path/payments.db --headless -u 20 -t 60s

(`python -m loadtest` starts a stack and runs exactly that; `python -m loadtest --help`.)

- `PaymentUser`: one channel per user (its own TCP connection), a deadline on every call,
  the `loadtest.mix` payment mix, retries that reuse the key, replays and read-backs. Every
  call fires Locust's request event, so the console, web UI, --csv, --html and --json work.
- The drill operator runs once per run: in the local runner, or on the master in distributed
  mode (never on a worker). At test start it sets the release flag to 100 % through the admin
  API (so the circuit has something to turn off) and closes the circuit; then from
  --drill-start on, every --drill-interval seconds, it opens the circuit, collects every
  process's observations (workers answer over Locust's custom messages) until the load shows
  a quiet legacy-only tail, reports the flip as request type KILLSWITCH (latency: ack to the
  first request start after which only legacy served; `loadtest.drill`), and closes the
  circuit again. At the end it restores both flags. `loadtest.drill` has the definitions.
- At test stop every process drains (no new payments, in-flight ones finish), workers send
  their payment books to the master, and the combined book is reconciled with the router's
  database (--router-db). The run exits 3 when the drill fails (p99 over --drill-p99-ms, a
  flip that did not converge, too few flips, a worker that did not answer), 4 when a payment
  was lost or charged twice; otherwise Locust's own exit code (1 when a call failed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

_REPO = str(Path(__file__).resolve().parent.parent)
if _REPO not in sys.path:  # locust puts only this file's directory on the path
    sys.path.insert(0, _REPO)

import gevent  # noqa: E402  (locust has monkey-patched the standard library by now)
import grpc  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from grpc.experimental import gevent as grpc_gevent  # noqa: E402
from locust import User, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.rpc.protocol import Message  # noqa: E402
from locust.runners import LocalRunner, MasterRunner, Runner, WorkerRunner  # noqa: E402

from loadtest.book import PaymentBook, Reconciliation, reconcile  # noqa: E402
from loadtest.drill import (  # noqa: E402
    KILLSWITCH_NAME,
    KILLSWITCH_TYPE,
    DrillSummary,
    FlipResult,
    Recorder,
    Window,
    analyse_flip,
)
from loadtest.mix import ACCEPT_RATES, FAIL_SHARE, parse_rates  # noqa: E402
from loadtest.payer import Payer  # noqa: E402
from loadtest.stack import router_versions  # noqa: E402
from ripcord_pb.ripcord.admin.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402

# grpcio's C core must yield to gevent: after the monkey patching, before any gRPC object.
grpc_gevent.init_gevent()

log = logging.getLogger("loadtest")

CIRCUIT = "payments.new-router.circuit-open"
RELEASE = "payments.new-router.enabled"
EXIT_DRILL = 3
EXIT_MONEY = 4
QUERY_TIMEOUT_S = 2.0
BOOK_TIMEOUT_S = 60.0


class DrillFlipFailed(Exception):
    """A flip that did not give a valid measurement."""


class ProcessState:
    """What this Locust process knows about the run (one per process)."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:8]
        self.node = "local"
        self.recorder = Recorder()
        self.book = PaymentBook()
        self.payers: list[Payer] = []
        self.draining = False
        self.user_ids = itertools.count(1)
        self.operator: Operator | None = None
        self.summary: DrillSummary | None = None
        self.reconciliation: Reconciliation | None = None
        # master only: answers from workers
        self.windows: dict[int, dict[str, Window]] = {}
        self.books: dict[str, PaymentBook] = {}
        self.books_done: set[str] = set()

    def in_flight(self) -> int:
        return sum(p.in_flight for p in self.payers)

    def drain(self, timeout: float) -> None:
        """Stop new payments and wait for the ones in flight."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self.in_flight() and time.monotonic() < deadline:
            gevent.sleep(0.02)


STATE = ProcessState()


def _options(environment: Environment) -> Any:
    options = environment.parsed_options
    assert options is not None, "run this file with the locust command"
    return options


# ---- command line ----------------------------------------------------------------------


def _rates_text(rates: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in rates.items())


def _rates_arg(text: str) -> dict[str, float]:
    try:
        return parse_rates(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _share_arg(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0 <= share <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a share between 0 and 1")
    return share


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    # parser.add_argument, not groups: only the former puts an option in the web UI
    g = d = parser
    g.add_argument("--deadline-ms", type=float, default=2000.0, help="per-call deadline (2000)")
    g.add_argument("--max-retries", type=int, default=2, help="retries per payment, same key")
    g.add_argument(
        "--pace", type=float, default=0.0,
        help="payments per second per user, Poisson arrivals (0: closed loop, no wait)",
    )  # fmt: skip
    g.add_argument(
        "--failing-cards", type=_share_arg, default=FAIL_SHARE,
        help=f"share of payments on the acquirer-down test card ({FAIL_SHARE}; UNAVAILABLE)",
    )  # fmt: skip
    g.add_argument(
        "--accept-rates", type=_rates_arg, default=_rates_text(ACCEPT_RATES),
        help="per experiment variant, how often an enrolled customer completes the checkout "
        f"(RecordConversion ACCEPTED): VARIANT=P,... ({_rates_text(ACCEPT_RATES)})",
    )  # fmt: skip
    g.add_argument("--admin-host", default="", help="flag daemon admin API host:port")
    g.add_argument(
        "--admin-token", default="", env_var="RIPCORD_ADMIN_TOKEN", is_secret=True,
        help="operator bearer token for the admin API (env RIPCORD_ADMIN_TOKEN)",
    )  # fmt: skip
    g.add_argument(
        "--router-db", default="",
        help="the routers' database URL: acknowledged payments are reconciled with it",
    )  # fmt: skip
    g.add_argument(
        "--router-metrics", default="",
        help="comma-separated router /metrics URLs: server-side apply times in the drill",
    )  # fmt: skip
    d.add_argument("--no-drill", action="store_true", help="no circuit flips")
    d.add_argument("--drill-flips", type=int, default=0, help="flips to run (0: until the end)")
    d.add_argument("--drill-start", type=float, default=5.0, help="first flip, s after start")
    d.add_argument("--drill-interval", type=float, default=5.0, help="s between flips")
    d.add_argument("--drill-timeout", type=float, default=5.0, help="s for a flip to converge")
    d.add_argument(
        "--drill-min-samples", type=int, default=20,
        help="legacy answers after the last new-path one that make a flip converged",
    )  # fmt: skip
    d.add_argument("--drill-quiet-ms", type=float, default=100.0, help="legacy-only tail length")
    d.add_argument(
        "--drill-p99-ms", type=float, default=10.0, help="fail the run above this p99 (10)"
    )
    d.add_argument(
        "--drill-probes", type=int, default=4,
        help="operator-side channels that send payments from 0.3 s before each flip until it "
        "converges, so the switch is sampled densely at any load (0: users only)",
    )  # fmt: skip
    d.add_argument(
        "--drill-probe-rate", type=float, default=100.0,
        help="probe payments per second, open loop, round robin over the probe channels",
    )  # fmt: skip
    d.add_argument("--drill-json", default="", help="write the drill summary here (JSON)")


# ---- the payment user ------------------------------------------------------------------


class PaymentUser(User):
    """A checkout client: pays (mostly), sometimes resends or reads back a payment."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise ValueError("give the router address with --host, e.g. -H 127.0.0.1:50051")
        options = _options(environment)
        number = next(STATE.user_ids)
        self.pace = float(options.pace)
        self.payer = Payer(
            self.host,
            report=environment.events.request.fire,
            book=STATE.book,
            recorder=STATE.recorder,
            source=f"{STATE.node}/u{number}",
            key_prefix=f"lt-{STATE.run}-{STATE.node}-u{number}",
            deadline_s=options.deadline_ms / 1000,
            max_retries=options.max_retries,
            sleep=gevent.sleep,
            fail_share=options.failing_cards,
            accept_rates=options.accept_rates,
        )
        STATE.payers.append(self.payer)

    def wait_time(self) -> float:
        if STATE.draining:
            return 0.2
        return random.expovariate(self.pace) if self.pace > 0 else 0.0

    def on_stop(self) -> None:
        self.payer.close()
        if self.payer in STATE.payers:
            STATE.payers.remove(self.payer)

    @task(40)
    def pay(self) -> None:
        if not STATE.draining:
            self.payer.pay()

    @task(1)
    def replay(self) -> None:
        if not STATE.draining:
            self.payer.replay()

    @task(1)
    def read_back(self) -> None:
        if not STATE.draining:
            self.payer.read_back()


# ---- the operator (master or local runner only) ----------------------------------------


class Admin:
    """The flag daemon's admin API with the operator's token; every call is a Locust stat."""

    def __init__(self, environment: Environment, target: str, token: str) -> None:
        self.environment = environment
        self.channel = grpc.insecure_channel(target)
        self.stub = admin_pb2_grpc.FlagAdminStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    def call(self, method: str, request: Any, name: str) -> Any:
        start, t0 = time.time(), time.perf_counter()
        try:
            response = getattr(self.stub, method)(request, metadata=self.metadata, timeout=10)
        except grpc.RpcError as exc:
            self.environment.events.request.fire(
                request_type="admin", name=name, response_time=1000 * (time.perf_counter() - t0),
                response_length=0, exception=exc, context={}, start_time=start,
            )  # fmt: skip
            raise
        self.environment.events.request.fire(
            request_type="admin", name=name, response_time=1000 * (time.perf_counter() - t0),
            response_length=response.ByteSize(), exception=None, context={}, start_time=start,
        )  # fmt: skip
        return response

    def circuit(self, variant: str, reason: str) -> Any:
        request = admin_pb2.SetDefaultVariantRequest(key=CIRCUIT, variant=variant, reason=reason)
        return self.call("SetDefaultVariant", request, f"SetDefaultVariant circuit={variant}")

    def rollout(self, weights: dict[str, int], reason: str) -> Any:
        request = admin_pb2.SetRolloutRequest(
            key=RELEASE,
            reason=reason,
            weights=[admin_pb2.RolloutWeight(variant=v, weight=w) for v, w in weights.items()],
        )
        return self.call("SetRollout", request, "SetRollout release")

    def flag(self, key: str) -> Any:
        return self.call("GetFlag", admin_pb2.GetFlagRequest(key=key), f"GetFlag {key}").flag

    def close(self) -> None:
        self.channel.close()


class Operator:
    """Runs the drill in one greenlet: set up, flip on schedule, restore."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.options = _options(environment)
        self.runner: Runner | None = environment.runner
        o = self.options
        self.summary = DrillSummary(
            threshold_ms=o.drill_p99_ms, wanted_flips=0 if o.no_drill else o.drill_flips
        )
        self.metrics = [u for u in o.router_metrics.split(",") if u]
        self.stopping = False
        self.circuit_open = False
        self.queries = itertools.count(1)
        self.probes: list[Payer] = []
        self.probing = False
        self.greenlet = gevent.spawn(self.run)

    # -- collection

    def collect(self, t_from: float) -> tuple[list[Window], list[str]]:
        """Every process's observations since ``t_from``, and the workers that did not answer."""
        windows = [STATE.recorder.window(t_from)]
        runner = self.runner
        if not isinstance(runner, MasterRunner):
            return windows, []
        query = next(self.queries)
        STATE.windows[query] = {}
        workers = {c.id for c in runner.clients.ready + runner.clients.spawning}
        workers |= {c.id for c in runner.clients.running}
        runner.send_message("lt_window_query", {"id": query, "t_from": t_from})
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        while set(STATE.windows[query]) < workers and time.monotonic() < deadline:
            gevent.sleep(0.005)
        answers = STATE.windows.pop(query)
        windows += [answers[w] for w in workers if w in answers]
        missing = [f"worker {runner.get_worker_index(w)}" for w in workers if w not in answers]
        return windows, missing

    # -- probes (optional: samples for runs without much load)

    def _probe_loop(self, interval: float) -> None:
        """Open loop: a payment every ``interval`` s, round robin over the probe channels,
        whether or not earlier ones have been answered (so a slow router cannot thin out the
        samples right after a flip)."""
        pool = Pool(512)
        t0 = time.monotonic()
        for i in itertools.count():
            if not self.probing:
                break
            if not pool.full():
                pool.spawn(self.probes[i % len(self.probes)].pay)
            gevent.sleep(max(0.0, t0 + (i + 1) * interval - time.monotonic()))
        pool.join(timeout=self.options.deadline_ms / 1000 + 1)

    def start_probes(self) -> Any:
        n = self.options.drill_probes
        if n <= 0 or not self.environment.host:
            return None
        if not self.probes:
            for i in range(n):
                payer = Payer(
                    self.environment.host,
                    report=self.environment.events.request.fire,
                    book=STATE.book,
                    recorder=STATE.recorder,
                    source=f"{STATE.node}/probe{i}",
                    key_prefix=f"lt-{STATE.run}-{STATE.node}-probe{i}",
                    deadline_s=self.options.deadline_ms / 1000,
                    max_retries=self.options.max_retries,
                    sleep=gevent.sleep,
                    label=" (drill probe)",
                )
                self.probes.append(payer)
                STATE.payers.append(payer)
        self.probing = True
        return gevent.spawn(self._probe_loop, 1 / max(self.options.drill_probe_rate, 1e-3))

    def stop_probes(self, greenlet: Any) -> None:
        self.probing = False
        if greenlet is not None:
            greenlet.join(timeout=self.options.deadline_ms / 1000 + 2)

    # -- the drill

    def sleep_until(self, when: float) -> bool:
        """Sleep until ``when`` (time.time()); False when the run stops first."""
        while not self.stopping:
            left = when - time.time()
            if left <= 0:
                return True
            gevent.sleep(min(left, 0.1))
        return False

    def flip(self, admin: Admin, number: int) -> FlipResult | None:
        o = self.options
        probes = self.start_probes()
        try:
            if probes is not None:
                gevent.sleep(0.3)  # samples of the new engine before the flip
            t_call = time.time()
            self.circuit_open = True
            version = int(admin.circuit("on", f"load-test drill flip {number}").version)
            t_ack = time.time()
            deadline = t_ack + o.drill_timeout
            gevent.sleep(0.1)
            while True:
                windows, missing = self.collect(t_call - 1.0)
                result = analyse_flip(
                    number, version, t_call, t_ack, windows,
                    min_samples=o.drill_min_samples, quiet_s=o.drill_quiet_ms / 1000,
                )  # fmt: skip
                result.sources_missing = missing
                if (result.converged and not missing) or time.time() > deadline:
                    break
                if self.stopping:
                    return None
                gevent.sleep(0.1)
        finally:
            self.stop_probes(probes)
        if self.metrics:
            for v, applied in router_versions(self.metrics):
                if v == version:
                    result.applied_ms.append(1000 * (applied - t_ack))
        if result.pre_new == 0:
            result.error = (
                f"the new engine served none of the {result.pre_total} calls started in the "
                "second before the flip: nothing to switch off"
            )
        exception: Exception | None = None
        if not result.converged:
            result.error = result.error or (
                f"no {o.drill_min_samples} legacy answers over {o.drill_quiet_ms:g} ms after the "
                f"last new-path start within {o.drill_timeout:g} s "
                f"({result.samples_after} answered calls after the flip)"
            )
            result.latency_ms = max(result.latency_ms, 1000 * o.drill_timeout)
        if not result.ok:
            exception = DrillFlipFailed(result.error or f"missing {result.sources_missing}")
        self.environment.events.request.fire(
            request_type=KILLSWITCH_TYPE, name=KILLSWITCH_NAME, response_time=result.latency_ms,
            response_length=len(result.late), exception=exception,
            context={"flip": number, "version": version}, start_time=t_ack,
        )  # fmt: skip
        return result

    def run(self) -> None:
        o = self.options
        if not o.admin_host:
            if not o.no_drill:
                self.summary.notes.append("no --admin-host: the drill did not run")
                log.error("the drill needs --admin-host (and --admin-token); use --no-drill")
            return
        admin = Admin(self.environment, o.admin_host, o.admin_token)
        started = time.time()
        original_circuit, original_rollout = "off", {"on": 100, "off": 0}
        try:
            circuit, release = admin.flag(CIRCUIT), admin.flag(RELEASE)
            original_circuit = circuit.default_variant
            original_rollout = {w.variant: int(w.weight) for w in release.rollout}
            rollout = admin.rollout({"on": 100, "off": 0}, "load test: new engine for everyone")
            wanted = int(rollout.version)
            if original_circuit != "off":
                self.summary.notes.append(f"the circuit was {original_circuit}: closed for the run")
                wanted = int(admin.circuit("off", "load test: drill needs it closed").version)
            self.wait_routers(wanted)
            if not o.no_drill:
                self.drill(admin, started)
            while not self.stopping:  # keep the release at 100 % until the run ends
                gevent.sleep(0.1)
        except Exception as exc:
            log.exception("the drill operator failed")
            self.summary.notes.append(f"the operator failed: {type(exc).__name__}: {exc}")
        finally:
            try:
                if self.circuit_open or original_circuit != "off":
                    admin.circuit(original_circuit, "load test over: restore")
                if original_rollout != {"on": 100, "off": 0}:
                    admin.rollout(original_rollout, "load test over: restore")
            except grpc.RpcError as exc:
                self.summary.notes.append(f"could not restore the flags: {exc.details()}")
            admin.close()

    def drill(self, admin: Admin, started: float) -> None:
        o = self.options
        for number in itertools.count(1):
            if o.drill_flips and number > o.drill_flips:
                return
            if not self.sleep_until(started + o.drill_start + (number - 1) * o.drill_interval):
                return
            result = self.flip(admin, number)
            admin.circuit("off", f"load-test drill flip {number} done")
            self.circuit_open = False
            if result is None:
                self.summary.notes.append(f"flip {number} was cut off by the end of the run")
                return
            self.summary.flips.append(result)
            log.info(
                "drill flip %d: %.2f ms (%d late, %s)", number, result.latency_ms,
                len(result.late), "ok" if result.ok else result.error,
            )  # fmt: skip

    def wait_routers(self, version: int) -> None:
        """Until every router process serves ``version`` (needs --router-metrics; else 1 s)."""
        if not self.metrics:
            gevent.sleep(1.0)
            return
        deadline = time.monotonic() + 10
        while min(v for v, _ in router_versions(self.metrics)) < version:
            if time.monotonic() > deadline:
                self.summary.notes.append(f"routers did not report flag version {version}")
                return
            gevent.sleep(0.05)

    def stop(self) -> None:
        self.stopping = True
        self.greenlet.join(timeout=self.options.drill_timeout + 15)
        if not self.greenlet.dead:
            self.greenlet.kill()
        for payer in self.probes:
            payer.close()


# ---- Locust hooks ----------------------------------------------------------------------


def _on_window_query(environment: Environment, msg: Message, **_: Any) -> None:
    """Worker: send the master this process's observations since ``t_from``."""
    runner = environment.runner
    assert runner is not None
    window = STATE.recorder.window(float(msg.data["t_from"]))
    runner.send_message("lt_window", {"id": msg.data["id"], "window": window.to_wire()})


def _on_window(environment: Environment, msg: Message, **_: Any) -> None:
    """Master: a worker's observations."""
    answers = STATE.windows.get(int(msg.data["id"]))
    if answers is not None:
        answers[msg.node_id] = Window.from_wire(msg.data["window"])


def _on_drain(environment: Environment, msg: Message, **_: Any) -> None:
    """Worker: stop paying, let calls in flight finish, send the payment book."""
    runner = environment.runner
    assert runner is not None
    STATE.drain(_options(environment).deadline_ms / 1000 + 2)
    for chunk in STATE.book.chunks():
        runner.send_message("lt_book", chunk)
    runner.send_message("lt_book", {"done": True, "in_flight": STATE.in_flight()})


def _on_book(environment: Environment, msg: Message, **_: Any) -> None:
    """Master: a part of a worker's payment book."""
    STATE.books.setdefault(msg.node_id, PaymentBook()).merge(msg.data)
    if msg.data.get("done"):
        STATE.books_done.add(msg.node_id)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.register_message("lt_window_query", _on_window_query)
        runner.register_message("lt_drain", _on_drain, concurrent=True)
    elif isinstance(runner, MasterRunner):
        STATE.node = "master"
        runner.register_message("lt_window", _on_window)
        runner.register_message("lt_book", _on_book)
    app = environment.web_ui.app if environment.web_ui is not None else None
    if app is not None:

        @app.route("/drill")
        def drill() -> dict[str, Any]:
            summary = STATE.operator.summary if STATE.operator else STATE.summary
            return summary.to_dict() if summary else {"flips": []}


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        STATE.node = f"w{runner.worker_index}"
    STATE.book.clear()
    STATE.draining = False
    STATE.summary = STATE.reconciliation = None
    if isinstance(runner, (MasterRunner, LocalRunner)):
        STATE.operator = Operator(environment)


@events.test_stopping.add_listener
def _on_test_stopping(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if not isinstance(runner, (MasterRunner, LocalRunner)) or STATE.operator is None:
        return
    options = _options(environment)
    operator, STATE.operator = STATE.operator, None
    operator.stop()
    STATE.summary = operator.summary
    # Drain every process and combine the payment books.
    combined = PaymentBook()
    STATE.drain(options.deadline_ms / 1000 + 2)
    for chunk in STATE.book.chunks():
        combined.merge(chunk)
    if isinstance(runner, MasterRunner):
        STATE.books.clear()
        STATE.books_done.clear()
        workers = {c.id for c in runner.clients.all}
        runner.send_message("lt_drain", {})
        deadline = time.monotonic() + BOOK_TIMEOUT_S
        while STATE.books_done < workers and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for book in STATE.books.values():
            for chunk in book.chunks():
                combined.merge(chunk)
        missing = workers - STATE.books_done
        if missing:
            combined.mismatches.append(f"{len(missing)} worker(s) sent no payment book")
    if options.router_db:
        STATE.reconciliation = reconcile(combined, options.router_db)
    _report(environment)


def _report(environment: Environment) -> None:
    options = _options(environment)
    summary = STATE.summary
    if summary is not None:
        text = summary.text()
        print("\n" + text, flush=True)
        path = options.drill_json or (
            f"{options.csv_prefix}_drill.json" if options.csv_prefix else ""
        )
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(summary.to_dict(), indent=2))
    if STATE.reconciliation is not None:
        print(STATE.reconciliation.text(), flush=True)
    else:
        print("Reconciliation: skipped (no --router-db)", flush=True)


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    money = STATE.reconciliation
    if money is not None and not money.ok:
        environment.process_exit_code = EXIT_MONEY
    elif STATE.summary is not None and STATE.summary.problems:
        environment.process_exit_code = EXIT_DRILL
