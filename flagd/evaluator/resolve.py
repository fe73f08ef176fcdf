"""Resolution for a typed request: evaluation plus the type rules of spec A.4.

Integer rule (the conformance suites leave it open): a whole number is accepted, including
`10.0` (returned as 10); `3.14`, values outside int64 and booleans are TYPE_MISMATCH. That
is lossless like flagd-core (which also rejects `10.0`) without failing integer flags whose
JSON was re-encoded with floats, and unlike flagd 0.16 never silently truncates `3.14`.
Float accepts any number (returned as float); Object accepts only JSON objects.
"""

from __future__ import annotations

import math
from typing import Any

from flagd.evaluator.compiled import CompiledFlag
from flagd.model import ErrorCode, FlagType, Reason, Resolution

FLAG_NOT_FOUND = Resolution(
    reason=Reason.ERROR, error=ErrorCode.FLAG_NOT_FOUND, error_message="flag not found"
)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MISMATCH = object()

# Module constants: enum attribute access and enum hashing are slow on the hot path.
_BOOLEAN, _STRING, _INTEGER, _FLOAT, _OBJECT = (
    FlagType.BOOLEAN,
    FlagType.STRING,
    FlagType.INTEGER,
    FlagType.FLOAT,
    FlagType.OBJECT,
)


def resolve(
    compiled: CompiledFlag | None,
    context: dict[str, Any],
    flag_type: FlagType | None,
    *,
    now: int | None = None,
) -> Resolution:
    """Evaluate and type-check; None for ``compiled`` (unknown key) gives FLAG_NOT_FOUND."""
    if compiled is None:
        return FLAG_NOT_FOUND
    resolution = compiled._run(context, now)
    # DISABLED, the code default and errors carry no variant: no type check (spec A.4).
    if flag_type is None or resolution.variant is None:
        return resolution
    kind = type(resolution.value)
    if flag_type is _STRING:
        if kind is str:
            return resolution
    elif flag_type is _BOOLEAN:
        if kind is bool:
            return resolution
    elif flag_type is _FLOAT:
        if kind is float:
            return resolution
    elif flag_type is _INTEGER:
        if kind is int and _INT64_MIN <= resolution.value <= _INT64_MAX:
            return resolution
    elif kind is dict:
        return resolution
    # Coerced or mismatched: built once per (shared, prebuilt) resolution and type.
    key = (id(resolution), flag_type.value)
    cached = compiled.coerced.get(key)
    if cached is None or cached[0] is not resolution:
        cached = (resolution, _coerce(resolution, flag_type))
        compiled.coerced[key] = cached
    return cached[1]


def _coerce(resolution: Resolution, flag_type: FlagType) -> Resolution:
    value = _convert(resolution.value, flag_type)
    if value is _MISMATCH:
        return Resolution(
            reason=Reason.ERROR,
            error=ErrorCode.TYPE_MISMATCH,
            error_message=(
                f"variant {resolution.variant!r} is {_json_type(resolution.value)}, "
                f"not {flag_type.value}"
            ),
            metadata=resolution.metadata,
        )
    return Resolution(
        reason=resolution.reason,
        variant=resolution.variant,
        value=value,
        metadata=resolution.metadata,
    )


def _convert(value: Any, flag_type: FlagType) -> Any:
    if isinstance(value, bool):
        return value if flag_type is FlagType.BOOLEAN else _MISMATCH
    if flag_type is FlagType.FLOAT and isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return _MISMATCH
    if flag_type is FlagType.INTEGER:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
            return value
        return _MISMATCH
    exact = {_BOOLEAN: bool, _STRING: str, _OBJECT: dict}.get(flag_type)
    if exact is not None and isinstance(value, exact):
        return value
    return _MISMATCH


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
