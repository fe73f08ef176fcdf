"""Durable admin state: flag overrides, the audit trail and the configuration version.

See `flagd.state.store` for how admin overrides and file sources combine.
"""

from flagd.state.database import CHANNEL
from flagd.state.records import (
    ChangeRecord,
    Definition,
    FlagId,
    NoOverrideError,
    StaleVersionError,
    StateSnapshot,
)
from flagd.state.schema import SCHEMA_VERSION
from flagd.state.store import FileChange, StateStore

__all__ = [
    "CHANNEL",
    "SCHEMA_VERSION",
    "ChangeRecord",
    "Definition",
    "FileChange",
    "FlagId",
    "NoOverrideError",
    "StaleVersionError",
    "StateSnapshot",
    "StateStore",
]
