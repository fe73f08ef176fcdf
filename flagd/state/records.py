"""What the state layer hands out: audit records, a consistent snapshot, and its errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Definition = dict[str, Any]
"""One flag in flagd JSON: state, variants, defaultVariant, targeting, metadata."""

FlagId = tuple[str, str]
"""(flag_set_id, key); flag_set_id is "" for the unnamed flag set."""


@dataclass(frozen=True)
class ChangeRecord:
    """One audited change: every version from 1 to the head has exactly one."""

    version: int
    at: datetime  # UTC, tz-aware
    actor: str  # token principal, or "file:<source>"
    action: str  # set_state | set_default_variant | set_rollout | put | delete | file | release
    flag_set_id: str
    flag_key: str
    reason: str
    before: Definition | None
    after: Definition | None


@dataclass(frozen=True)
class StateSnapshot:
    """Head version, overrides and last changes read in one transaction (so they agree)."""

    version: int
    overrides: dict[FlagId, Definition | None]  # None = tombstone (deleted by an admin)
    last_changes: dict[FlagId, ChangeRecord]


class StaleVersionError(Exception):
    """`expected_version` is not the flag's last change version; nothing was written."""

    def __init__(self, flag_set_id: str, key: str, current: int, expected: int) -> None:
        self.flag_set_id = flag_set_id
        self.key = key
        self.current = current
        self.expected = expected
        super().__init__(
            f"flag {key!r} (flag set {flag_set_id!r}) is at version {current}, "
            f"expected version {expected}"
        )


class NoOverrideError(LookupError):
    """`release_override` on a flag that has no admin override; nothing was written."""

    def __init__(self, flag_set_id: str, key: str) -> None:
        self.flag_set_id = flag_set_id
        self.key = key
        super().__init__(f"flag {key!r} (flag set {flag_set_id!r}) has no admin override")


def encode(definition: Definition | None, name: str) -> str | None:
    """Canonical JSON text for a TEXT column (sorted keys, so equal flags store equal text)."""
    if definition is None:
        return None
    if not isinstance(definition, dict):
        raise TypeError(f"{name} must be a dict (one flag definition) or None")
    try:
        return json.dumps(definition, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not JSON-serialisable: {exc}") from None


def decode(text: str | None) -> Definition | None:
    """Inverse of `encode`."""
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"stored definition is not a JSON object: {text[:80]!r}")
    return value
