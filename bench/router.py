"""The payment router: `Authorize` throughput and latency with durable writes (SQLite, then
PostgreSQL) against the bare grpcio aio echo of `bench.rpc`, same client, same request bytes,
one run; and the cost of the routing decision (`router.routing.decide`) on the request path.

The stack is the one the service tests start: a flag daemon, the FX simulator and a
``python -m router serve`` subprocess per database, with the payment flags mid-rollout (25/75
release split, 50/50 DCC experiment), so both engines, the experiment and live FX quotes are
on the path. Every call carries a fresh idempotency key: each one is a committed payment."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
from psycopg import sql

from bench.rpc import ECHO_SERVER, _cpu_seconds
from bench.rpc import METHOD as ECHO_METHOD
from bench.timing import percentile
from flagd.process import REPO, DaemonProcess, free_port
from ripcord_pb.ripcord.payments.v1 import payments_pb2 as pb
from router.engines import DECLINE_BINS
from router.flags import FlagSnapshot, compile_snapshot
from router.routing import CIRCUIT_OPEN, DYNAMIC_CURRENCY, NEW_ROUTER, Decision, decide

FLAGS = REPO / "deploy" / "flags" / "payments.flagd.json"
AUTHORIZE = "/ripcord.payments.v1.PaymentRouter/Authorize"
PG_URL = os.environ.get("RIPCORD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
DECIDE_TARGET_US = 5.0

# Request mix: currency -> (share, smallest and largest amount in minor units).
CURRENCIES = {"EUR": (0.70, 500, 50_000), "JPY": (0.20, 300, 60_000), "KWD": (0.10, 1_000, 150_000)}
DECLINE_SHARE = 0.06
DCC_OPT_IN_SHARE = 0.20  # opted-in customers pay with a USD card: DCC is quoted when assigned
APPROVE_BINS = ("424242", "411111", "555555")


# ---- flags ---------------------------------------------------------------------------------


def mid_rollout_document(*, circuit_open: bool = False) -> dict[str, Any]:
    """The checked-in payment flags with a 25/75 release split and a 50/50 DCC experiment."""
    doc: dict[str, Any] = json.loads(FLAGS.read_text())
    flags = doc["flags"]
    flags[NEW_ROUTER]["targeting"] = {"fractional": [["on", 25], ["off", 75]]}
    flags[DYNAMIC_CURRENCY]["targeting"]["if"][1] = {
        "fractional": [["treatment", 50], ["control", 50]]
    }
    if circuit_open:
        flags[CIRCUIT_OPEN]["defaultVariant"] = "on"
    return doc


# ---- 1. Authorize over gRPC ----------------------------------------------------------------


def _templates(count: int = 1000, seed: int = 7) -> list[bytes]:
    """Serialized AuthorizeRequests without an idempotency key (it is prepended per call)."""
    rng = random.Random(seed)
    codes = list(CURRENCIES)
    weights = [CURRENCIES[c][0] for c in codes]
    out = []
    for _ in range(count):
        currency = rng.choices(codes, weights)[0]
        _, low, high = CURRENCIES[currency]
        declined = rng.random() < DECLINE_SHARE
        card_bin = rng.choice(sorted(DECLINE_BINS) if declined else APPROVE_BINS)
        dcc = rng.random() < DCC_OPT_IN_SHARE
        request = pb.AuthorizeRequest(
            merchant_id=f"m-{rng.randrange(200):03d}",
            customer_id=f"c-{rng.randrange(100_000):06d}",
            amount_minor=rng.randint(low, high),
            currency=currency,
            card=pb.Card(
                token=f"tok_{rng.getrandbits(64):016x}",
                bin=card_bin,
                last4=f"{rng.randrange(10_000):04d}",
                currency="USD" if dcc else currency,
            ),
            dcc_opt_in=dcc,
        )
        out.append(request.SerializeToString())
    return out


class Payloads:
    """Request bytes with a unique idempotency key each: field 1 prepended to a template
    (protobuf fields may come in any order). Echo and router get the very same stream."""

    def __init__(self) -> None:
        self.templates = _templates()
        self.prefix = f"bench-{secrets.token_hex(4)}-"
        self.count = 0

    def next(self) -> bytes:
        """The next request; every key is 25 characters, so every payload has one size."""
        self.count += 1
        key = f"{self.prefix}{self.count:010d}".encode()
        return b"\x0a" + bytes((len(key),)) + key + self.templates[self.count % 1000]


@dataclass
class Round:
    """One closed-loop round against one server."""

    rate: float  # completed calls per second
    p50_ms: float
    p99_ms: float
    server_us: float  # server process CPU per call
    client_cores: float  # this (client) process's CPU while driving
    db_us: float = 0.0  # PostgreSQL processes' CPU per call (PG only)

    @property
    def server_cores(self) -> float:
        return self.server_us * self.rate / 1e6


async def _drive(
    port: int, method: str, payloads: Payloads, seconds: float, conc: int, keep: bool = False
) -> tuple[int, float, list[float], list[bytes]]:
    """Closed loop, ``conc`` callers on one channel: (calls, wall s, latencies, responses)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(method)
        await call(payloads.next(), timeout=10)  # connect
        latencies: list[float] = []
        responses: list[bytes] = []
        clock = time.perf_counter
        stop_at = clock() + seconds

        async def worker() -> None:
            while clock() < stop_at:
                payload = payloads.next()
                t0 = clock()
                reply = await call(payload, timeout=10)
                latencies.append(clock() - t0)
                if keep:
                    responses.append(reply)

        t0 = clock()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return len(latencies), clock() - t0, latencies, responses


def _postgres_cpu() -> float:
    """CPU seconds used so far by every local ``postgres`` process (backends, WAL writer…)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if (stat.parent / "comm").read_text().strip() == "postgres":
                total += _cpu_seconds(int(stat.parent.name))
        except (OSError, ValueError):
            pass  # exited meanwhile
    return total


def _measure(pid: int, port: int, method: str, payloads: Payloads, seconds: float, conc: int,
             pg: bool = False) -> Round:  # fmt: skip
    """One measured round: rate, latency percentiles and CPU per call."""
    cpu0, db0, client0 = _cpu_seconds(pid), _postgres_cpu() if pg else 0.0, time.process_time()
    calls, wall, latencies, _ = asyncio.run(_drive(port, method, payloads, seconds, conc))
    server = _cpu_seconds(pid) - cpu0
    db = _postgres_cpu() - db0 if pg else 0.0
    client = time.process_time() - client0
    return Round(
        rate=calls / wall,
        p50_ms=1e3 * percentile(latencies, 50),
        p99_ms=1e3 * percentile(latencies, 99),
        server_us=1e6 * server / calls,
        client_cores=client / wall,
        db_us=1e6 * db / calls,
    )


@dataclass
class Target:
    label: str
    pid: int
    port: int
    method: str
    pg: bool = False


@contextmanager
def _subprocess(cmd: list[str], ready: str | None, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> Iterator[subprocess.Popen[str]]:  # fmt: skip
    """A child process, stopped (SIGTERM, then SIGKILL) on exit; waits for a ``ready`` line."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE if ready else None, text=True, env=env, cwd=cwd
    )
    try:
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert ready in line, f"{cmd[:4]} did not start: {line!r}"
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _flag_version(metrics_port: int) -> int:
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("payments_flags") and 'what="version"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


@contextmanager
def _router(
    db: str, daemon: DaemonProcess, fx_url: str, workdir: Path
) -> Iterator[tuple[int, int]]:
    """A router subprocess on ``db``: (pid, port) once it serves with the daemon's flags."""
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "router", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--metrics-port", str(metrics_port), "--flagd", f"127.0.0.1:{daemon.sync_port}",
           "--db", db, "--fx", fx_url, "--log-level", "WARNING"]  # fmt: skip
    with _subprocess(cmd, None, env=env, cwd=workdir) as proc:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
        deadline = time.monotonic() + 10
        while _flag_version(metrics_port) < 1:
            assert time.monotonic() < deadline, "the router received no flags"
            time.sleep(0.02)
        yield proc.pid, port


@contextmanager
def _pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards; yields the router's --db URL."""
    name = f"bench_router_{secrets.token_hex(4)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield f"{PG_URL}?schema={name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def _mix(responses: list[bytes]) -> str:
    """What the warm-up calls actually did: a benchmark of the wrong path is worth nothing."""
    tally: Counter[str] = Counter()
    for raw in responses:
        r = pb.AuthorizeResponse.FromString(raw)
        assert r.status in ("APPROVED", "DECLINED") and not r.replayed, r
        tally[r.status] += 1
        tally[r.engine] += 1
        tally["dcc"] += r.HasField("fx_quote")
        tally["live"] += r.fx_quote.source == "live"
    n = max(len(responses), 1)
    return (
        f"{100 * tally['APPROVED'] / n:.0f}% approved, {100 * tally['DECLINED'] / n:.0f}% "
        f"declined, {100 * tally['new'] / n:.0f}% new engine, {100 * tally['dcc'] / n:.1f}% "
        f"with a DCC quote ({tally['live']} live)"
    )


def run_authorize(
    seconds: float = 4.0, concurrency: int = 32, rounds: int = 2, warmup: float = 1.0
) -> tuple[dict[str, Round], dict[str, Round], dict[str, str]]:
    """Per server (echo, SQLite, PostgreSQL): the best round (highest rate) with
    ``concurrency`` in flight, one round with 1 in flight, and the warm-up's mix."""
    payloads = Payloads()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-router-")))
        flags_file = tmp / "payments.flagd.json"
        flags_file.write_text(json.dumps(mid_rollout_document()))
        state = str(tmp / "flagd")
        daemon_args = (
            "--uri",
            f"file:{flags_file}",
            "--state-dir",
            state,
            "--log-level",
            "WARNING",
        )
        daemon = stack.enter_context(DaemonProcess(*daemon_args))
        fx_port = free_port()
        fx_cmd = [sys.executable, "-m", "router.fxsim", "--port", str(fx_port)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        stack.enter_context(_subprocess(fx_cmd, "serving on", env=env))
        fx_url = f"http://127.0.0.1:{fx_port}"
        echo_port = free_port()
        echo = stack.enter_context(
            _subprocess([sys.executable, "-c", ECHO_SERVER, str(echo_port)], "ready")
        )
        targets = [Target("echo", echo.pid, echo_port, ECHO_METHOD)]
        sqlite_db = f"sqlite:///{tmp / 'payments.db'}"
        pid, port = stack.enter_context(_router(sqlite_db, daemon, fx_url, tmp))
        targets.append(Target("SQLite", pid, port, AUTHORIZE))
        pid, port = stack.enter_context(
            _router(stack.enter_context(_pg_schema()), daemon, fx_url, tmp)
        )
        targets.append(Target("PostgreSQL", pid, port, AUTHORIZE, pg=True))

        mixes = {}
        for t in targets:  # warm up: connections, pools, worker threads, both engines, FX
            keep = t.method == AUTHORIZE
            *_, responses = asyncio.run(
                _drive(t.port, t.method, payloads, warmup, concurrency, keep)
            )
            if keep:
                mixes[t.label] = _mix(responses)
        best: dict[str, Round] = {}
        for r in range(rounds):  # alternate, and reverse the order every other round
            for t in targets if r % 2 == 0 else targets[::-1]:
                got = _measure(t.pid, t.port, t.method, payloads, seconds, concurrency, t.pg)
                if t.label not in best or got.rate > best[t.label].rate:
                    best[t.label] = got
        single = {}  # unloaded latency: one call at a time, half-length rounds
        for t in targets[::-1]:
            single[t.label] = _measure(t.pid, t.port, t.method, payloads, seconds / 2, 1, t.pg)
        return best, single, mixes


def _limit(r: Round) -> str:
    """Which resource bounds a closed-loop rate on 2 cores shared by client and server."""
    if r.server_cores >= 0.85:
        return "server CPU"
    if r.client_cores >= 0.85:
        return "client CPU"
    if r.server_cores + r.client_cores + r.db_us * r.rate / 1e6 >= 1.6:
        return "both cores"
    return "no CPU saturated"


# ---- 2. The routing decision ---------------------------------------------------------------


def _no_decision(
    snapshot: FlagSnapshot, *, merchant_id: str, customer_id: str, dcc_opt_in: bool
) -> None:
    """Same signature as `decide`, no work: measures the benchmark loop's own cost."""


def run_decide(n: int = 50_000, rounds: int = 7) -> list[tuple[str, float]]:
    """(case, microseconds per `decide` call), best of ``rounds`` interleaved rounds, loop
    overhead included; the last case is that overhead alone (a no-op with decide's signature)."""
    mid = compile_snapshot(json.dumps(mid_rollout_document()))
    circuit = compile_snapshot(json.dumps(mid_rollout_document(circuit_open=True)))
    empty = FlagSnapshot()
    merchants = [f"m-{i:04d}" for i in range(2000)]
    # The full path: merchants the release split sends to the new engine, opted-in customers.
    new = [
        m for m in merchants
        if decide(mid, merchant_id=m, customer_id="c", dcc_opt_in=False).engine == "new"
    ][:256]  # fmt: skip
    customers = [f"c-{i:06d}" for i in range(256)]
    arms = Counter(
        decide(mid, merchant_id=m, customer_id=c, dcc_opt_in=True).experiment_variant
        for m, c in zip(new, customers, strict=True)
    )
    assert len(new) == 256 and arms["treatment"] > 64 and arms["control"] > 64, arms

    def case(
        snapshot: FlagSnapshot,
        ms: list[str],
        expect: Callable[[Decision], bool],
        fn: Callable[..., object] = decide,
    ) -> Callable[[int], None]:
        assert all(expect(decide(snapshot, merchant_id=m, customer_id=c, dcc_opt_in=True))
                   for m, c in zip(ms, customers, strict=True))  # fmt: skip

        def loop(count: int) -> None:
            for i in range(count):
                j = i & 255
                fn(snapshot, merchant_id=ms[j], customer_id=customers[j], dcc_opt_in=True)

        return loop

    cases = [
        ("circuit open", case(circuit, merchants[:256], lambda d: d.reason == "circuit-open")),
        ("full path", case(mid, new, lambda d: d.engine == "new" and d.experiment_variant != "")),
        ("empty snapshot", case(empty, merchants[:256], lambda d: d.reason == "no-flags")),
        ("loop only", case(mid, new, lambda d: True, _no_decision)),
    ]
    best = dict.fromkeys((label for label, _ in cases), float("inf"))
    for _, loop in cases:
        loop(n // 5)  # warm up
    for _ in range(rounds):  # interleaved, so a noisy moment hits every case alike
        for label, loop in cases:
            t0 = time.perf_counter()
            loop(n)
            best[label] = min(best[label], time.perf_counter() - t0)
    return [(label, 1e6 * seconds / n) for label, seconds in best.items()]


# ---- report --------------------------------------------------------------------------------


def report() -> None:
    """Print both tables."""
    seconds, concurrency, rounds = 4.0, 32, 2
    best, single, mixes = run_authorize(seconds, concurrency, rounds)
    echo = best["echo"]
    print("\n## Router: Authorize with durable writes vs bare grpcio aio echo, same client")
    print(
        f"closed loop, unique idempotency keys, same request bytes to both; {concurrency} in "
        f"flight: {seconds:.0f} s rounds, best of {rounds} alternating, after a warm-up; "
        f"1 in flight: one {seconds / 2:.0f} s round"
    )
    for label, mix in mixes.items():
        print(f"  {label} mix (warm-up replies): {mix}")
    print(
        f"{'server':<11}{'calls/s':>8}{'vs echo':>8}{'p50/p99 ms':>14}{'@1: p50/p99':>14}"
        f"{'CPU us/call':>12}{'vs echo':>8}{'cores srv/cli':>14}  limit"
    )
    for label, r in best.items():
        one = single[label]
        db = f" (+{r.db_us:.0f} us/call in postgres)" if r.db_us else ""
        print(
            f"{label:<11}{r.rate:>8,.0f}{r.rate / echo.rate:>8.0%}"
            f"{f'{r.p50_ms:.1f}/{r.p99_ms:.1f}':>14}{f'{one.p50_ms:.2f}/{one.p99_ms:.2f}':>14}"
            f"{r.server_us:>12,.0f}{r.server_us / echo.server_us:>7.1f}x"
            f"{f'{r.server_cores:.2f}/{r.client_cores:.2f}':>14}  {_limit(r)}{db}"
        )
    print(
        "2 cores shared by client and server: CPU per call is the client-free view; "
        "'limit' is the side near one full core (each is one Python process)"
    )

    print("\n## Router: flag decision (decide) per payment, mid-rollout snapshot (25/75, 50/50)")
    results = run_decide()
    overhead = results.pop()[1]
    print(f"{'path':<16}{'us/call':>9}{'vs 5 us target':>16}")
    for label, us in results:
        print(f"{label:<16}{us:>9.2f}{us / DECIDE_TARGET_US:>15.0%}")
    print(
        f"best of 7 interleaved rounds x 50,000 calls; includes {overhead:.2f} us of loop "
        "and call overhead (a no-op with the same arguments)"
    )
