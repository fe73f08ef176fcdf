"""Exactly one charge per idempotency key against a running router, on SQLite and PostgreSQL:
concurrent duplicates from separate connections, and a router killed with SIGKILL under load
(no acknowledged payment lost; retries after the restart replay instead of charging twice)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from psycopg import sql

from flagd.process import REPO, DaemonProcess, free_port
from ripcord_pb.ripcord.payments.v1 import payments_pb2 as pb
from ripcord_pb.ripcord.payments.v1 import payments_pb2_grpc
from router.ledger import Ledger
from tests.conftest import PG_URL
from tests.router.test_service import FLAGS

DUPLICATES = 16
KILL_CLIENTS = 8
KILL_AFTER_ACKS = 60


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    state = tmp_path_factory.mktemp("flagd")
    d = DaemonProcess("--uri", f"file:{FLAGS}", "--state-dir", str(state)).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh payments database: a SQLite file, or a new schema on the test PG database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'payments.db'}"
        return
    schema = f"rcdup_{secrets.token_hex(4)}"
    try:
        conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required ({PG_URL}): {exc}")
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield f"{PG_URL}?schema={schema}"
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        conn.close()


class Router:
    """One `python -m router serve` on the given database."""

    def __init__(self, daemon: DaemonProcess, db_url: str, cwd: Path):
        self.port, self.metrics_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--metrics-port", str(self.metrics_port),
             "--flagd", f"127.0.0.1:{daemon.sync_port}", "--db", db_url, "--log-level", "WARNING"],
            cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 20.0) -> None:
        """gRPC up and the first flag snapshot applied."""
        deadline = time.monotonic() + timeout
        with channel_to(self.port) as channel:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        while True:
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
            if any(
                line.startswith("payments_flags") and 'what="version"' in line
                and float(line.rsplit(" ", 1)[1]) >= 1
                for line in text.splitlines()
            ):  # fmt: skip
                return
            assert self.proc.poll() is None, "router exited"
            assert time.monotonic() < deadline, "router did not apply the first flag snapshot"
            time.sleep(0.02)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


@pytest.fixture
def start_router(daemon: DaemonProcess, tmp_path: Path) -> Iterator[Callable[[str], Router]]:
    routers: list[Router] = []

    def start(db_url: str) -> Router:
        router = Router(daemon, db_url, tmp_path)
        routers.append(router)
        router.wait_ready()
        return router

    yield start
    for router in routers:
        if router.proc.poll() is None:
            router.proc.kill()
            router.proc.wait()


def channel_to(port: int) -> grpc.Channel:
    # Its own TCP connection (no shared global subchannel pool): really separate clients.
    return grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


def request(key: str, merchant: str = "m-dup") -> Any:
    return pb.AuthorizeRequest(
        idempotency_key=key, merchant_id=merchant, customer_id="c-1", amount_minor=4200,
        currency="EUR", card=pb.Card(token="tok_dup", bin="424242", last4="4242"),
    )  # fmt: skip


@contextmanager
def open_ledger(url: str) -> Iterator[Ledger]:
    ledger = Ledger.open(url)
    try:
        yield ledger
    finally:
        ledger.close()


def run_threads(threads: list[threading.Thread], timeout: float) -> None:
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a client hung"


def test_concurrent_duplicates_charge_once(
    db_url: str, start_router: Callable[[str], Router]
) -> None:
    router = start_router(db_url)
    key = f"dup-{secrets.token_hex(4)}"
    channels = [channel_to(router.port) for _ in range(DUPLICATES)]
    for channel in channels:  # connected before the race starts
        grpc.channel_ready_future(channel).result(timeout=10)
    go = threading.Barrier(DUPLICATES)
    replies: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(channel: grpc.Channel) -> None:
        try:
            stub = payments_pb2_grpc.PaymentRouterStub(channel)
            go.wait(10)
            reply = stub.Authorize(request(key), timeout=15)
            with lock:
                replies.append(reply)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    try:
        run_threads([threading.Thread(target=client, args=(c,)) for c in channels], 30)
    finally:
        for channel in channels:
            channel.close()
    assert not errors, errors
    assert len(replies) == DUPLICATES
    assert len({r.payment_id for r in replies}) == 1, {r.payment_id for r in replies}
    assert {(r.status, r.engine) for r in replies} == {("APPROVED", "legacy")}
    # The one caller whose request committed got replayed=false; every other one a replay.
    assert sorted(r.replayed for r in replies) == [False] + [True] * (DUPLICATES - 1)
    assert router.stop() == 0
    with open_ledger(db_url) as ledger:
        assert ledger.count_payments() == 1
        assert ledger.reconcile([("m-dup", key)]) == {("m-dup", key): 1}
        stored = ledger.get_payment(replies[0].payment_id)
        assert stored is not None and stored.payment.amount_minor == 4200


def test_sigkill_under_load_loses_no_acknowledged_payment(
    db_url: str, start_router: Callable[[str], Router]
) -> None:
    router = start_router(db_url)
    acked: dict[str, str] = {}  # idempotency key -> payment_id the client was given
    attempted: list[str] = []  # every key a client sent (acknowledged or not)
    lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()
    unexpected: list[BaseException] = []

    def client(c: int) -> None:
        channel = channel_to(router.port)
        stub = payments_pb2_grpc.PaymentRouterStub(channel)
        try:
            i = 0
            while not stop.is_set():
                key = f"load-{c}-{i}"
                i += 1
                with lock:
                    attempted.append(key)
                try:
                    reply = stub.Authorize(request(key, f"m-{c}"), timeout=10)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    return  # the router is gone: this key may or may not have committed
                with lock:
                    acked[key] = reply.payment_id
                    if len(acked) >= KILL_AFTER_ACKS:
                        enough.set()
        except BaseException as exc:
            with lock:
                unexpected.append(exc)
        finally:
            channel.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(KILL_CLIENTS)]
    for t in threads:
        t.start()
    try:
        assert enough.wait(20), f"only {len(acked)} payments acknowledged"
        router.proc.send_signal(signal.SIGKILL)
        assert router.proc.wait(10) == -signal.SIGKILL
    finally:
        stop.set()
        deadline = time.monotonic() + 20
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not unexpected, unexpected
    with lock:
        acked_now, attempted_now = dict(acked), list(attempted)
    in_flight = [k for k in attempted_now if k not in acked_now]
    assert len(in_flight) <= KILL_CLIENTS

    def merchant(key: str) -> str:
        return f"m-{key.split('-')[1]}"

    with open_ledger(db_url) as ledger:
        for key, payment_id in acked_now.items():
            stored = ledger.get_payment(payment_id)
            assert stored is not None, f"acknowledged payment {payment_id} ({key}) lost"
            assert stored.payment.idempotency_key == key
        counts = ledger.reconcile((merchant(k), k) for k in attempted_now)
        assert all(counts[merchant(k), k] == 1 for k in acked_now)
        # Unacknowledged in-flight keys committed at most once (or not at all).
        assert all(counts[merchant(k), k] in (0, 1) for k in in_flight)
        assert ledger.count_payments() == sum(counts.values())
        committed_unacked = sum(counts[merchant(k), k] for k in in_flight)

    # Clients retry after the restart with the same keys: acknowledged ones replay the same
    # payment, in-flight ones complete (or replay what committed before the kill); one row each.
    again = start_router(db_url)
    with channel_to(again.port) as channel:
        stub = payments_pb2_grpc.PaymentRouterStub(channel)
        for key in attempted_now:
            reply = stub.Authorize(request(key, merchant(key)), timeout=10)
            if key in acked_now:
                assert reply.replayed and reply.payment_id == acked_now[key]
    assert again.stop() == 0
    with open_ledger(db_url) as ledger:
        counts = ledger.reconcile((merchant(k), k) for k in attempted_now)
        assert set(counts.values()) == {1}
        assert ledger.count_payments() == len(attempted_now)
    print(
        f"\nkilled after {len(acked_now)} acknowledged payments, {len(in_flight)} in flight, "
        f"{committed_unacked} of those committed before the kill"
    )
