"""subscribe(): callbacks after commits made by this store, another store, or another replica."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from flagd.state import StateStore
from tests.state.conftest import OpenStore, describe_ms, flag, pg_schema, put, spawn_writer


class Seen:
    """A subscriber that records (version, when) and lets a test wait for a version."""

    def __init__(self) -> None:
        self.events: list[tuple[int, float, str]] = []
        self.cond = threading.Condition()

    def __call__(self, version: int) -> None:
        with self.cond:
            self.events.append((version, time.perf_counter(), threading.current_thread().name))
            self.cond.notify_all()

    @property
    def versions(self) -> list[int]:
        with self.cond:
            return [v for v, _, _ in self.events]

    def wait_for(self, version: int, timeout: float = 5.0) -> float:
        """perf_counter() of the first callback with a version >= ``version``."""
        with self.cond:
            ok = self.cond.wait_for(lambda: any(v >= version for v, _, _ in self.events), timeout)
            assert ok, f"no callback for version {version} within {timeout}s: {self.events}"
            return next(t for v, t, _ in self.events if v >= version)


def test_own_commit_fires_callback_on_the_notify_thread(store: StateStore) -> None:
    seen = Seen()
    store.subscribe(seen)
    record = put(store, "a", flag())
    seen.wait_for(record.version)
    assert seen.versions == [1]
    assert seen.events[0][2] != threading.current_thread().name


def test_other_instance_commit_fires_callback_and_latency(
    open_store: OpenStore, backend: str
) -> None:
    watcher, writer = open_store(), open_store()
    seen = Seen()
    watcher.subscribe(seen)
    from_call, from_return = [], []
    for i in range(30):
        called = time.perf_counter()
        record = put(writer, "gate", flag(i=i))
        returned = time.perf_counter()
        delivered = seen.wait_for(record.version)
        from_call.append(delivered - called)
        # PG may deliver the NOTIFY before the writer's COMMIT round trip returns: clamp at 0.
        from_return.append(max(0.0, delivered - returned))
    print(
        f"\n{backend}: commit in one instance -> callback in another:"
        f"\n  from commit_change() call:   {describe_ms(from_call)}"
        f"\n  from commit_change() return: {describe_ms(from_return)}"
    )
    # Increasing, no repeats (bursts may be coalesced; here every commit waited for its own).
    assert seen.versions == list(range(1, 31))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_own_commit_does_not_wait_for_the_poll(
    open_store: OpenStore, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a 60 s poll, only the store's own wake-up can deliver in time.
    monkeypatch.setattr("flagd.state.store.SQLITE_POLL_S", 60.0)
    store = open_store()
    seen = Seen()
    store.subscribe(seen)
    latencies = []
    for i in range(20):
        record = put(store, "a", flag(i=i))
        returned = time.perf_counter()
        latencies.append(max(0.0, seen.wait_for(record.version, timeout=2) - returned))
    print(f"\nsqlite: own commit -> callback: {describe_ms(latencies)}")


def test_unsubscribe_and_several_subscribers(open_store: OpenStore) -> None:
    watcher, writer = open_store(), open_store()
    first, second = Seen(), Seen()
    stop_first = watcher.subscribe(first)
    watcher.subscribe(second)
    put(writer, "a", flag())
    first.wait_for(1)
    second.wait_for(1)
    stop_first()
    stop_first()  # idempotent
    put(writer, "a", flag("DISABLED"))
    second.wait_for(2)
    time.sleep(0.2)
    assert first.versions == [1]
    assert second.versions == [1, 2]


def test_failing_callback_does_not_stop_delivery(store: StateStore) -> None:
    calls: list[int] = []

    def broken(version: int) -> None:
        calls.append(version)
        raise RuntimeError("subscriber bug")

    seen = Seen()
    store.subscribe(broken)
    store.subscribe(seen)
    put(store, "a", flag())
    put(store, "a", flag("DISABLED"))
    seen.wait_for(2)
    # Both are called in turn for every version, the broken one first.
    assert calls == seen.versions


def test_close_from_a_callback(open_store: OpenStore) -> None:
    watcher, writer = open_store(), open_store()
    seen = Seen()

    def close_on_first(version: int) -> None:
        seen(version)
        watcher.close()

    watcher.subscribe(close_on_first)
    put(writer, "a", flag())
    seen.wait_for(1)
    put(writer, "a", flag("DISABLED"))
    time.sleep(0.2)
    assert seen.versions == [1]
    with pytest.raises(RuntimeError, match="closed"):
        watcher.head_version()


def test_commit_in_another_process_fires_callback(store: StateStore, state_url: str) -> None:
    seen = Seen()
    store.subscribe(seen)
    proc = spawn_writer(state_url, "--count", "3")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    seen.wait_for(3)
    assert out.split()[-2] == "3"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_pg_listener_reconnects_and_catches_up(
    open_store: OpenStore,
    backend: str,
    state_url: str,
    request: pytest.FixtureRequest,
) -> None:
    admin: psycopg.Connection[tuple[Any, ...]] = request.getfixturevalue("pg_admin")
    watcher, writer = open_store(), open_store()
    seen = Seen()
    watcher.subscribe(seen)
    put(writer, "a", flag())
    seen.wait_for(1)

    name = f"ripcord-listen:{pg_schema(state_url)}"
    killed = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (name,),
    ).fetchall()
    assert killed == [(True,)]
    # Committed while the listener is down: NOTIFY goes nowhere, the catch-up must find it.
    put(writer, "a", flag("DISABLED"))
    seen.wait_for(2, timeout=5)
    wait_until(lambda: _listening(admin, name), timeout=5)
    # And the new LISTEN works.
    put(writer, "a", flag())
    seen.wait_for(3, timeout=5)
    assert seen.versions == [1, 2, 3]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_pg_schemas_do_not_hear_each_other(
    open_store: OpenStore, backend: str, fresh_url: Callable[[], str]
) -> None:
    mine, theirs = open_store(), open_store(fresh_url())
    seen = Seen()
    mine.subscribe(seen)
    for _ in range(5):
        put(theirs, "x", flag())
    put(mine, "a", flag())
    seen.wait_for(1)
    time.sleep(0.2)
    assert seen.versions == [1]
    assert mine.head_version() == 1


def _listening(admin: psycopg.Connection[tuple[Any, ...]], name: str) -> bool:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
    ).fetchone()
    return row is not None and row[0] == 1


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    """Poll ``predicate`` until true or fail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
