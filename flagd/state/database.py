"""Turn a state URL into a configured engine: SQLite (WAL, FULL sync) or PostgreSQL (psycopg 3).

SQLite: ``sqlite:///relative/state.db`` or ``sqlite:////abs/state.db``.
PostgreSQL: ``postgresql://user[:password]@host:port/db[?schema=name]``; ``schema`` puts the
tables in that PG schema (created if missing) and scopes the NOTIFY channel to it, which is how
tests (or several deployments) share one database without seeing each other.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from flagd.state.schema import ensure_schema

CHANNEL = "ripcord_flag_changes"
"""The NOTIFY channel (for the default schema; `?schema=x` uses ``ripcord_flag_changes.x``)."""

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any fixed 64-bit key: serialises concurrent `open`s of one PG database while they create tables.
_PG_DDL_LOCK_KEY = 0x52495043_4F524400  # "RIPCORD\0"
_WRITE = "ripcord_write"  # execution option: SQLite starts the transaction with BEGIN IMMEDIATE


@dataclass(frozen=True)
class Database:
    """An engine plus what the notifier needs to watch it."""

    engine: Engine
    dialect: Literal["sqlite", "postgresql"]
    schema: str | None  # PG schema, None = the search_path default
    channel: str  # PG NOTIFY channel
    libpq_url: str | None  # PG: the URL for a raw psycopg connection (LISTEN)


def write_options() -> dict[str, Any]:
    """Execution options for a connection that will write (BEGIN IMMEDIATE on SQLite)."""
    return {_WRITE: True}


def open_database(url: str) -> Database:
    """Parse ``url``, build the engine and create the tables if missing."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"not a database URL: {url!r}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.get_driver_name() in ("pysqlite", ""):
        db = _open_sqlite(parsed)
    elif backend == "postgresql" and parsed.get_driver_name() in ("psycopg", ""):
        db = _open_postgresql(parsed)
    else:
        raise ValueError(f"unsupported state URL {parsed!r}: use sqlite:/// or postgresql://")
    try:
        _create_tables(db)
    except BaseException:
        db.engine.dispose()
        raise
    return db


def _open_sqlite(url: URL) -> Database:
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        # Each pooled connection would get its own private database: nothing durable.
        raise ValueError("the SQLite state URL must name a file: sqlite:///path/to/state.db")
    path = Path(url.database)
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url.set(drivername="sqlite+pysqlite"),
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Take transaction control from the sqlite3 module (it would not BEGIN before a
        # SELECT); `_on_begin` emits BEGIN itself.
        dbapi_conn.isolation_level = None
        dbapi_conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _set_wal(dbapi_conn)
        # FULL: fsync the WAL on every commit, so an acknowledged change survives power loss.
        dbapi_conn.execute("PRAGMA synchronous = FULL")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the database write lock up front (no deferred-upgrade deadlocks);
        # readers get a consistent WAL snapshot for the whole transaction.
        mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return Database(engine, "sqlite", None, CHANNEL, None)


def _set_wal(dbapi_conn: sqlite3.Connection) -> None:
    # Switching a fresh file to WAL needs an exclusive lock and can answer "locked" without
    # waiting on the busy handler when several processes open it at once: retry.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = dbapi_conn.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if mode is None or str(mode[0]).lower() != "wal":
            raise RuntimeError(f"SQLite refused WAL journal mode (got {mode!r})")
        return


def _open_postgresql(url: URL) -> Database:
    schema = url.query.get("schema")
    if isinstance(schema, tuple):
        raise ValueError("give ?schema= once")
    url = url.difference_update_query(["schema"])
    channel = CHANNEL if schema is None else f"{CHANNEL}.{schema}"
    if len(channel.encode()) > 63:  # PG truncates identifiers: LISTEN would miss NOTIFY
        raise ValueError(f"schema name too long for a NOTIFY channel: {schema!r}")
    engine = create_engine(
        url.set(drivername="postgresql+psycopg"),
        # A restarted or failed-over server leaves dead pooled connections: test on checkout.
        pool_pre_ping=True,
        connect_args={"application_name": "ripcord-state", "connect_timeout": 10},
        execution_options={"schema_translate_map": {None: schema}} if schema else {},
    )
    libpq_url = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return Database(engine, "postgresql", schema, channel, libpq_url)


def _create_tables(db: Database) -> None:
    """Idempotent, and safe when several processes open a fresh database at the same moment."""
    with db.engine.connect() as conn:
        conn.execution_options(**write_options())
        with conn.begin():
            if db.dialect == "postgresql":
                # DDL is transactional in PG: whoever waits here then sees the tables.
                conn.execute(select(func.pg_advisory_xact_lock(_PG_DDL_LOCK_KEY)))
                if db.schema is not None:
                    quoted = conn.dialect.identifier_preparer.quote_identifier(db.schema)
                    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            # SQLite: BEGIN IMMEDIATE already serialises openers.
            ensure_schema(conn)
