"""The tables (SQLAlchemy Core, one definition for SQLite and PostgreSQL) and their creation.

Tables carry a ``ripcord_`` prefix so they can share a database (or PG schema) with others.
JSON is stored as TEXT (canonical ``json.dumps``) so both backends take one code path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    TypeDecorator,
    insert,
    select,
)

SCHEMA_VERSION = 1
"""Bump with a migration in `ensure_schema` whenever a table changes."""

HEAD_ID = 1


class UtcDateTime(TypeDecorator[datetime]):
    """A tz-aware UTC datetime on both backends (SQLite has no time zone type: store naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be tz-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

schema_version = Table(
    "ripcord_schema_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    CheckConstraint("id = 1", name="ripcord_schema_version_one_row"),
)

# The single row every writer locks first: it serialises writers across processes and holds
# the configuration version (the last version handed out).
head = Table(
    "ripcord_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="ripcord_head_one_row"),
)

# One row per flag that ever changed: its last change version (admin or file; this is what
# `expected_version` is compared with) and its admin override, if any. A tombstone is
# overridden=true with definition NULL.
flags = Table(
    "ripcord_flags",
    metadata,
    Column("flag_set_id", Text, nullable=False),
    Column("flag_key", Text, nullable=False),
    Column("last_version", BigInteger, nullable=False),
    Column("overridden", Boolean, nullable=False),
    Column("definition", Text, nullable=True),
    PrimaryKeyConstraint("flag_set_id", "flag_key", name="ripcord_flags_pk"),
)

# The audit trail: versions 1..head, no gaps, one record each.
changes = Table(
    "ripcord_changes",
    metadata,
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("at", UtcDateTime, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("flag_set_id", Text, nullable=False),
    Column("flag_key", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("before", Text, nullable=True),
    Column("after", Text, nullable=True),
    Index("ripcord_changes_flag_key", "flag_key", "version"),
    # file_definitions(source): the latest file record of each flag from one source.
    Index("ripcord_changes_actor", "actor", "flag_set_id", "flag_key", "version"),
)

# The last recorded content digest of each source file: replicas watching the same file
# report the same edit, and only the first report of a digest is written.
sources = Table(
    "ripcord_sources",
    metadata,
    Column("source", Text, primary_key=True),
    Column("digest", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
)


def ensure_schema(conn: Connection) -> None:
    """Create missing tables and seed rows; the caller holds a lock that serialises openers."""
    metadata.create_all(conn, checkfirst=True)
    stored = conn.execute(select(schema_version.c.version)).scalar_one_or_none()
    if stored is None:
        conn.execute(insert(schema_version).values(id=1, version=SCHEMA_VERSION))
    elif stored > SCHEMA_VERSION:
        raise RuntimeError(
            f"state schema version {stored} is newer than this daemon supports "
            f"({SCHEMA_VERSION}); upgrade the daemon"
        )
    # stored < SCHEMA_VERSION: future migrations go here.
    if conn.execute(select(head.c.version)).first() is None:
        conn.execute(insert(head).values(id=HEAD_ID, version=0))
