"""Acknowledged changes survive kill -9; what a commit costs."""

from __future__ import annotations

import random
import signal
import time

import pytest

from flagd.state import StateStore
from tests.state.conftest import OpenStore, assert_gapless, describe_ms, flag, put, spawn_writer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("attempt", [1, 2])
def test_sigkill_keeps_every_acknowledged_change(state_url: str, attempt: int) -> None:
    proc = spawn_writer(state_url, "--count", "0", "--key", "k")
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        # Let it get going (the store opens, commits start), then kill it mid-stream.
        first = proc.stdout.readline()
        assert first, proc.stderr.read() if proc.stderr else ""
        time.sleep(random.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # The rest through the same buffered file object: readline() may already hold lines
        # it read ahead from the pipe, which communicate() (raw fd reads) would never see.
        rest = proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    acknowledged: dict[int, int] = {}
    for line in (first + rest).splitlines():
        version, i = map(int, line.split())
        acknowledged[version] = i
    assert len(acknowledged) >= 1

    store = StateStore.open(state_url)
    try:
        records = {r.version: r for r in assert_gapless(store)}
        for version, i in acknowledged.items():
            assert version in records, f"acknowledged version {version} lost"
            after = records[version].after
            assert after is not None and after["metadata"]["i"] == i
        # At most the one commit whose acknowledgement the kill cut off is extra.
        assert store.head_version() - max(acknowledged) in (0, 1)
        # The override is the last committed write, and the store keeps working.
        last = records[store.head_version()]
        assert store.overrides()[("", "k")] == last.after
        assert put(store, "k", flag()).version == store.head_version()
        print(
            f"\n{store.dialect}: killed after {len(acknowledged)} acknowledged commits, "
            f"head {store.head_version() - 1} before the check write"
        )
    finally:
        store.close()


def test_commit_cost(store: StateStore, backend: str) -> None:
    for i in range(5):  # warm up the pool and statement caches
        put(store, "warm", flag(i=i))
    costs = []
    for i in range(200):
        started = time.perf_counter()
        put(store, "k", flag(i=i), action="set_state")
        costs.append(time.perf_counter() - started)
    print(f"\n{backend}: durable commit_change, sequential: {describe_ms(costs)}")
    assert store.head_version() == 205


def test_reopen_after_writes_from_two_instances(open_store: OpenStore, state_url: str) -> None:
    one, two = open_store(), open_store()
    put(one, "a", flag())
    put(two, "b", None)
    one.close()
    two.close()
    again = open_store(state_url)
    assert again.overrides() == {("", "a"): flag(), ("", "b"): None}
    assert len(assert_gapless(again)) == 2
