"""Fixtures for the state layer: every test runs on a fresh SQLite file AND a fresh PG schema.

PostgreSQL comes from $RIPCORD_TEST_PG_URL (default: the local trust-auth server). Each test
gets its own schema, named after this session; all of them are dropped when the session ends.
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flagd.state import ChangeRecord, StateStore
from tests.conftest import fresh_pg_url

REPO = Path(__file__).resolve().parents[2]

OpenStore = Callable[..., StateStore]


def pg_schema(url: str) -> str:
    """The `?schema=` of a test PG URL."""
    return url.rsplit("schema=", 1)[1]


@pytest.fixture
def fresh_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], str]:
    """Makes URLs of new, empty stores on the test's backend."""
    counter = itertools.count(1)

    def make() -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'state{next(counter)}' / 'flagd.db'}"
        request.getfixturevalue("pg_admin")
        return fresh_pg_url()

    return make


@pytest.fixture
def state_url(fresh_url: Callable[[], str]) -> str:
    """The URL of this test's store."""
    return fresh_url()


@pytest.fixture
def open_store(state_url: str) -> Iterator[OpenStore]:
    """Opens StateStores (on ``state_url`` unless told otherwise) and closes them afterwards."""
    stores: list[StateStore] = []

    def _open(url: str | None = None, **kwargs: Any) -> StateStore:
        store = StateStore.open(url or state_url, **kwargs)
        stores.append(store)
        return store

    yield _open
    for store in stores:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> StateStore:
    """A fresh store."""
    return open_store()


def flag(state: str = "ENABLED", default: str = "on", **metadata: Any) -> dict[str, Any]:
    """A small boolean flag definition in flagd JSON."""
    return {
        "state": state,
        "variants": {"on": True, "off": False},
        "defaultVariant": default,
        "metadata": metadata,
    }


def put(
    store: StateStore, key: str, definition: dict[str, Any] | None, **kwargs: Any
) -> ChangeRecord:
    """commit_change with test defaults."""
    kwargs.setdefault("flag_set_id", "")
    kwargs.setdefault("action", "put" if definition is not None else "delete")
    kwargs.setdefault("actor", "alice")
    kwargs.setdefault("reason", "test")
    kwargs.setdefault("before", None)
    return store.commit_change(key=key, after=definition, **kwargs)


def all_changes(store: StateStore) -> list[ChangeRecord]:
    """The whole audit trail."""
    return store.changes(limit=1_000_000)


def assert_gapless(store: StateStore) -> list[ChangeRecord]:
    """Every version 1..head has exactly one audit record; returns them."""
    records = all_changes(store)
    head = store.head_version()
    assert [r.version for r in records] == list(range(1, head + 1))
    return records


def spawn_writer(url: str, *args: str) -> subprocess.Popen[str]:
    """`python -m tests.state.writer URL ARGS…` with pipes (see writer.py)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.state.writer", url, *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def describe_ms(samples_s: list[float]) -> str:
    """p50/p99/max of seconds, in milliseconds."""
    ms = sorted(s * 1000 for s in samples_s)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (
        f"p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms (n={len(ms)})"
    )
