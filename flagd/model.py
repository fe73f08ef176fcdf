"""Plain data shared by every layer of the daemon: a parsed flag and an evaluation result."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JsonValue = Any
"""A value decoded from JSON/YAML: None, bool, int, float, str, list or dict."""

MetadataValue = str | int | float | bool


class Reason(StrEnum):
    """Reason strings flagd puts on the wire (spec A.5)."""

    STATIC = "STATIC"
    TARGETING_MATCH = "TARGETING_MATCH"
    DEFAULT = "DEFAULT"
    DISABLED = "DISABLED"
    ERROR = "ERROR"


class ErrorCode(StrEnum):
    """OpenFeature error codes the evaluator can produce (spec A.6)."""

    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    PARSE_ERROR = "PARSE_ERROR"
    GENERAL = "GENERAL"


class FlagType(StrEnum):
    """What the caller asked for: one per Resolve RPC."""

    BOOLEAN = "boolean"
    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    OBJECT = "object"


@dataclass(frozen=True, slots=True)
class Flag:
    """One flag definition after parsing, `$ref` expansion and metadata merge (spec C.2)."""

    key: str
    state: str  # "ENABLED" | "DISABLED"
    variants: dict[str, JsonValue]
    default_variant: str | None  # None when missing, null or "" (the "code default" case)
    targeting: JsonValue | None  # None when absent or exactly {}
    source: str = ""
    # Flag-set metadata overlaid by the flag's own metadata (flag keys win).
    metadata: dict[str, MetadataValue] = field(default_factory=dict)

    @property
    def flag_set_id(self) -> str | None:
        """The flag set this flag belongs to, or None for the unnamed set (spec C.4)."""
        value = self.metadata.get("flagSetId")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of evaluating one flag for one context.

    ``variant`` is None (and ``value`` meaningless) for the code-default and disabled cases;
    ``error`` is set when ``reason`` is ERROR.
    """

    reason: Reason
    variant: str | None = None
    value: JsonValue = None
    error: ErrorCode | None = None
    error_message: str = ""
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
