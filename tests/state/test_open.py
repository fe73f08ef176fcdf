"""StateStore.open: URLs, SQLite settings, table creation and the schema version anchor."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import update

from flagd.state import SCHEMA_VERSION, StateStore
from flagd.state.schema import schema_version
from tests.state.conftest import OpenStore, flag, put


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root@localhost/x",
        "sqlite://",
        "sqlite:///:memory:",
        "not a url",
        "postgresql+asyncpg://u@h/db",
    ],
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        StateStore.open(url)


def test_sqlite_creates_the_directory_and_uses_wal_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "flagd.db"
    store = StateStore.open(f"sqlite:///{path}")
    try:
        put(store, "a", flag())
        assert path.is_file()
        with store._engine.connect() as conn:  # the store's own connections
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        store.close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        raw.close()


def test_open_is_idempotent(open_store: OpenStore, state_url: str) -> None:
    first = open_store()
    put(first, "a", flag())
    stores = [open_store(state_url) for _ in range(3)]
    assert all(s.head_version() == 1 for s in stores)


def test_threads_opening_a_fresh_store_together(state_url: str) -> None:
    barrier = threading.Barrier(4)
    opened: list[StateStore] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            opened.append(StateStore.open(state_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert not errors, errors
        assert len(opened) == 4
        assert [put(s, "a", flag()).version for s in opened] == [1, 2, 3, 4]
    finally:
        for s in opened:
            s.close()


def test_newer_schema_version_is_refused(open_store: OpenStore, state_url: str) -> None:
    store = open_store()
    with store._engine.begin() as conn:
        conn.execute(update(schema_version).values(version=SCHEMA_VERSION + 1))
    with pytest.raises(RuntimeError, match="newer"):
        StateStore.open(state_url)
