"""Concurrent writers, in threads and in processes, get gapless versions and one record each."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable

import pytest

from flagd.state import ChangeRecord, StaleVersionError, StateStore
from tests.state.conftest import OpenStore, assert_gapless, flag, put, spawn_writer

THREADS = 8
PER_THREAD = 15


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Start all targets together, join them and re-raise the first failure."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait()
                target()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a writer thread hung"
    if errors:
        raise errors[0]


def test_threads_on_two_instances_get_gapless_versions(open_store: OpenStore) -> None:
    stores = [open_store(), open_store()]
    returned: list[ChangeRecord] = []
    lock = threading.Lock()

    def writer(n: int) -> Callable[[], None]:
        def run() -> None:
            store = stores[n % 2]
            for i in range(PER_THREAD):
                if i % 5 == 4:
                    new = store.record_file_changes(
                        source=f"t{n}.json", digest=str(i), changes=[("", f"t{n}", None, flag())]
                    )
                else:
                    new = [put(store, f"k{i % 3}", flag(thread=n, i=i), actor=f"t{n}")]
                with lock:
                    returned.extend(new)

        return run

    run_threads([writer(n) for n in range(THREADS)])
    total = THREADS * PER_THREAD
    assert sorted(r.version for r in returned) == list(range(1, total + 1))
    records = assert_gapless(stores[1])
    assert stores[0].head_version() == total
    # Each stored record is the one its writer was handed.
    assert sorted(records, key=lambda r: r.version) == sorted(returned, key=lambda r: r.version)


def test_concurrent_expected_version_writers_exactly_one_wins(open_store: OpenStore) -> None:
    stores = [open_store(), open_store()]
    base = put(stores[0], "gate", flag())
    for round_ in range(3):
        seen = stores[1].last_changes()[("", "gate")].version
        outcomes: list[str] = []
        lock = threading.Lock()

        def contender(
            n: int,
            seen: int = seen,
            round_: int = round_,
            outcomes: list[str] = outcomes,
            lock: threading.Lock = lock,
        ) -> Callable[[], None]:
            def run() -> None:
                try:
                    put(
                        stores[n % 2],
                        "gate",
                        flag(round=round_, n=n),
                        actor=f"op{n}",
                        expected_version=seen,
                    )
                    result = "won"
                except StaleVersionError:
                    result = "stale"
                with lock:
                    outcomes.append(result)

            return run

        run_threads([contender(n) for n in range(6)])
        assert Counter(outcomes) == {"won": 1, "stale": 5}
        assert stores[0].head_version() == base.version + round_ + 1
    records = assert_gapless(stores[0])
    assert len(records) == 4


def test_concurrent_file_reports_are_written_once(open_store: OpenStore) -> None:
    stores = [open_store() for _ in range(3)]
    results: list[list[ChangeRecord]] = []
    edit = [("", "a", None, flag()), ("", "b", None, flag())]

    def replica(n: int) -> Callable[[], None]:
        def run() -> None:
            results.append(
                stores[n % 3].record_file_changes(source="shared.json", digest="X", changes=edit)
            )

        return run

    run_threads([replica(n) for n in range(6)])
    assert sorted(len(r) for r in results) == [0, 0, 0, 0, 0, 2]
    assert len(assert_gapless(stores[0])) == 2


@pytest.mark.timeout(60)
def test_processes_open_and_write_concurrently(fresh_url: Callable[[], str]) -> None:
    # A brand-new database: the processes also race to create the tables.
    url = fresh_url()
    count = 40
    procs = [
        spawn_writer(url, "--count", str(count), "--key", f"p{n}", "--wait-go") for n in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=45) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    printed = {
        int(line.split()[0]): (f"p{n}", int(line.split()[1]))
        for n, (out, _) in enumerate(outputs)
        for line in out.splitlines()
    }
    assert sorted(printed) == list(range(1, 3 * count + 1))
    store = StateStore.open(url)
    try:
        records = assert_gapless(store)
        for record in records:
            assert record.after is not None
            assert (record.flag_key, record.after["metadata"]["i"]) == printed[record.version]
        # How much the writers overlapped (3 sequential writers would switch exactly twice).
        keys = [r.flag_key for r in records]
        switches = sum(a != b for a, b in itertools.pairwise(keys))
        print(f"\n{store.dialect}: 3 processes x {count} commits, writer switched {switches} times")
    finally:
        store.close()
