"""Shared fixtures. Must not import ripcord_pb: tests/provider shares this conftest's directory
tree but runs the official provider, whose protos clash with ours in one process."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
PG_URL = os.environ.get("RIPCORD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Every PostgreSQL test works in a schema of its own named after this run; `pg_admin` drops
# them all at the end of the session.
SESSION_TAG = f"rctest_{os.getpid()}_{secrets.token_hex(3)}"
_schemas = itertools.count(1)


def fresh_pg_url() -> str:
    """A PostgreSQL URL on a new schema of this run (request `pg_admin` so it is dropped)."""
    return f"{PG_URL}?schema={SESSION_TAG}_{next(_schemas)}"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared/` (reference data: spec, conformance suites, schemas)."""
    if not SHARED.is_dir():
        pytest.fail(f"reference data not found at {SHARED}: the repo must sit beside shared/")
    return SHARED


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection to the test database; drops this run's schemas at the end."""
    try:
        conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for these tests ({PG_URL}): {exc}")
    yield conn
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (SESSION_TAG + "%",)
    ).fetchall()
    for (name,) in rows:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on."""
    return str(request.param)
