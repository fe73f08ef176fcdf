"""Pure decisions behind the admin API: how each mutation turns one flag definition into the
next, and why a request is refused. No I/O here; the admin service does the committing.

Definitions are flagd JSON objects of one flag (``state``, ``variants``, ``defaultVariant``,
``targeting``, ``metadata``), as ``flagd.definitions.flag_to_json`` produces them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

ROLLOUT_TOTAL = 100


class MutationError(ValueError):
    """A request that cannot be applied. ``kind`` picks the gRPC status, ``field`` is named."""

    def __init__(self, kind: str, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.kind = kind  # "invalid" | "precondition"
        self.field = field


@dataclass(frozen=True, slots=True)
class Weight:
    """One bucket of a fractional split."""

    variant: str
    weight: int


def normalize_numbers(value: Any) -> Any:
    """Integral floats to ints, recursively: a google.protobuf.Struct carries every number as a
    double, and fractional weights must be integers (spec D.3), as they are in a JSON file."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: normalize_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_numbers(v) for v in value]
    return value


def set_state(definition: dict[str, Any], state: str) -> dict[str, Any]:
    """The definition with ``state`` replaced (ENABLED or DISABLED)."""
    if state not in ("ENABLED", "DISABLED"):
        raise MutationError("invalid", "state", f"must be ENABLED or DISABLED, not {state!r}")
    out = copy.deepcopy(definition)
    out["state"] = state
    return out


def set_default_variant(definition: dict[str, Any], variant: str) -> dict[str, Any]:
    """The definition with a new default variant, which must exist."""
    variants = definition.get("variants", {})
    if variant not in variants:
        known = ", ".join(sorted(variants))
        raise MutationError("invalid", "variant", f"{variant!r} is not a variant ({known})")
    out = copy.deepcopy(definition)
    out["defaultVariant"] = variant
    return out


def _fractional_nodes(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "fractional":
                yield f"{path}.fractional", node
            yield from _fractional_nodes(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _fractional_nodes(item, f"{path}[{i}]")


def _split(definition: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The one `fractional` node of the targeting, and its arguments."""
    nodes = list(_fractional_nodes(definition.get("targeting"), "$.targeting"))
    if not nodes:
        raise MutationError(
            "precondition", "key", "the flag's targeting has no fractional split to weigh"
        )
    if len(nodes) > 1:
        where = ", ".join(p for p, _ in nodes)
        raise MutationError(
            "precondition", "key", f"the targeting has {len(nodes)} fractional splits ({where})"
        )
    node = nodes[0][1]
    args = node["fractional"]
    if not isinstance(args, list):
        raise MutationError("precondition", "key", "the fractional split is not a list")
    return node, args


def _is_bucket(item: Any) -> bool:
    return isinstance(item, list) and 1 <= len(item) <= 2 and isinstance(item[0], str)


def rollout_of(definition: dict[str, Any]) -> list[Weight]:
    """The current weights of the flag's fractional split, or [] when it has none."""
    try:
        _, args = _split(definition)
    except MutationError:
        return []
    weights = []
    for item in args:
        if _is_bucket(item):
            weight = item[1] if len(item) == 2 and isinstance(item[1], int | float) else 1
            weights.append(Weight(item[0], int(weight)))
    return weights


def set_rollout(definition: dict[str, Any], weights: Sequence[Weight]) -> dict[str, Any]:
    """The definition with its fractional buckets replaced by ``weights`` (summing to 100)."""
    if not weights:
        raise MutationError("invalid", "weights", "at least one variant weight is required")
    variants = definition.get("variants", {})
    seen: set[str] = set()
    for i, w in enumerate(weights):
        if w.variant not in variants:
            known = ", ".join(sorted(variants))
            raise MutationError(
                "invalid", f"weights[{i}].variant", f"{w.variant!r} is not a variant ({known})"
            )
        if w.variant in seen:
            raise MutationError("invalid", f"weights[{i}].variant", f"{w.variant!r} given twice")
        seen.add(w.variant)
        if w.weight < 0:
            raise MutationError("invalid", f"weights[{i}].weight", "must not be negative")
    total = sum(w.weight for w in weights)
    if total != ROLLOUT_TOTAL:
        raise MutationError(
            "invalid", "weights", f"weights must sum to {ROLLOUT_TOTAL} (percent), not {total}"
        )
    out = copy.deepcopy(definition)
    node, args = _split(out)
    # Keep a leading bucketing expression (anything that is not a bucket) as it is.
    head = [item for item in args[:1] if not _is_bucket(item)]
    node["fractional"] = head + [[w.variant, w.weight] for w in weights]
    return out
