"""The `fractional` operator (spec D.3): deterministic percentage bucketing.

Two hash recipes, chosen when the rule is compiled:

- v2 (flagd 0.15-0.16): murmur3 over the UTF-8 bucketing string, or over
  ``flagKey + targetingKey`` in the shorthand form;
- v3 (flagd-core 2.0.0, the default): murmur3 over the deterministic CBOR encoding of the
  bucketing value, or of ``[flagKey, targetingKey]`` in the shorthand form.

Both map the unsigned 32-bit hash ``h`` to ``(h * total) >> 32`` and pick the first bucket
whose running weight sum exceeds it. Any bad input yields None (the default variant).
Buckets that are constants in the rule (the usual case) are parsed once, at compile time.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

import cbor2
import mmh3

from flagd.evaluator.jsonlogic import NULL, CompileState, Node, const

MAX_WEIGHT_SUM = 2_147_483_647


class Buckets:
    """Parsed buckets: variants with cumulative weight ends; ``total`` > 0."""

    __slots__ = ("ends", "total", "variants")

    def __init__(self, variants: list[Any], ends: list[int]) -> None:
        self.variants = variants
        self.ends = ends
        self.total = ends[-1]

    def pick(self, hash32: int) -> Any:
        """The variant whose weight range holds this unsigned 32-bit hash."""
        return self.variants[bisect_right(self.ends, (hash32 * self.total) >> 32)]


def _murmur(data: bytes) -> int:
    # Always bytes: mmh3 5.x crashes the interpreter on a str holding a lone surrogate.
    return int(mmh3.hash(data, 0, False))


# --------------------------------------------------------------------------- bucket parsing


def parse_buckets_v3(items: list[Any]) -> Buckets | None:
    """v3 buckets: `[variant]` or `[variant, int weight]`; bool/float/null weights are errors."""
    variants: list[Any] = []
    ends: list[int] = []
    total = 0
    for item in items:
        if not isinstance(item, list) or not item or len(item) > 2:
            return None
        weight = 1
        if len(item) == 2:
            weight = item[1]
            if type(weight) is not int:
                return None
            weight = max(weight, 0)  # negative weights come from rollout maths: clamp
        total += weight
        variants.append(item[0])
        ends.append(total)
    if total <= 0 or total > MAX_WEIGHT_SUM:
        return None
    return Buckets(variants, ends)


def parse_buckets_v2(items: list[Any]) -> Buckets | None:
    """v2 buckets: whole-number weights (50.0 is fine), null weight = 1, variant a primitive."""
    variants: list[Any] = []
    ends: list[int] = []
    total = 0
    for item in items:
        if not isinstance(item, list) or not item:
            return None
        variant = item[0]
        if variant is not None and not isinstance(variant, (str, bool, int, float)):
            return None
        weight = 1
        if len(item) >= 2 and item[1] is not None:
            raw = item[1]
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                return None
            if isinstance(raw, float):
                if not math.isfinite(raw) or not raw.is_integer():
                    return None
                raw = int(raw)
            if raw > MAX_WEIGHT_SUM:
                return None
            weight = max(raw, 0)
        total += weight
        variants.append(variant)
        ends.append(total)
    if total <= 0 or total > MAX_WEIGHT_SUM:
        return None
    return Buckets(variants, ends)


# --------------------------------------------------------------------------- v3 encoding


def cbor_text(text: str) -> bytes:
    """Deterministic CBOR of a text string (same bytes as `cbor2.dumps(text, canonical=True)`)."""
    raw = text.encode("utf-8")
    size = len(raw)
    if size < 24:
        return bytes((0x60 | size,)) + raw
    if size < 0x100:
        return bytes((0x78, size)) + raw
    if size < 0x10000:
        return b"\x79" + size.to_bytes(2, "big") + raw
    if size < 0x100000000:
        return b"\x7a" + size.to_bytes(4, "big") + raw
    return b"\x7b" + size.to_bytes(8, "big") + raw


def normalize_numbers(value: Any) -> Any:
    """Whole floats within [-2^63, 2^64-1] become ints, recursively (`-0.0` -> 0)."""
    if isinstance(value, dict):
        return {k: normalize_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer() and -(2**63) <= value <= 2**64 - 1:
        return int(value)
    return value


def cbor_encode(value: Any) -> bytes | None:
    """The v3 hash input for a bucketing value; None when it cannot be encoded."""
    try:
        if type(value) is str:
            return cbor_text(value)
        return bytes(cbor2.dumps(normalize_numbers(value), canonical=True))
    except Exception:
        return None


def v3_hash(value: Any) -> int | None:
    """murmur3 of the CBOR encoding of ``value``; None if it cannot be encoded."""
    data = cbor_encode(value)
    return None if data is None else _murmur(data)


def v2_hash(key: str) -> int | None:
    """murmur3 of the UTF-8 bytes of ``key``; None for text that is not valid Unicode."""
    try:
        return _murmur(key.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _targeting_key(data: Any) -> str | None:
    key = data.get("targetingKey") if isinstance(data, dict) else None
    return key if isinstance(key, str) and key else None


# --------------------------------------------------------------------------- operator builders


def build_fractional(args: list[Node], state: CompileState) -> Node:
    """Compile `{"fractional": [...]}` with the recipe chosen in ``state``."""
    if state.fractional == "v2":
        return _build(args, _V2(state.flag_key))
    return _build(args, _V3(state.flag_key))


class _V3:
    """v3: hash the CBOR of the first argument unless it is an array (the shorthand)."""

    parse = staticmethod(parse_buckets_v3)

    def __init__(self, flag_key: str) -> None:
        try:
            self.shorthand_prefix: bytes | None = b"\x82" + cbor_text(flag_key)
        except UnicodeEncodeError:
            self.shorthand_prefix = None

    def split(self, first: Any) -> tuple[bool, bool]:
        """(first argument is a bucket, bucketing value is unusable)."""
        if isinstance(first, list):
            return True, False
        return False, first is None

    def hash_value(self, first: Any) -> int | None:
        return v3_hash(first)

    def hash_shorthand(self, data: Any) -> int | None:
        key = _targeting_key(data)
        if key is None or self.shorthand_prefix is None:
            return None
        try:
            return _murmur(self.shorthand_prefix + cbor_text(key))
        except UnicodeEncodeError:
            return None


class _V2:
    """v2: a string first argument is the key; anything else falls back to the targeting key."""

    parse = staticmethod(parse_buckets_v2)

    def __init__(self, flag_key: str) -> None:
        self.flag_key = flag_key

    def split(self, first: Any) -> tuple[bool, bool]:
        # A null bucketing value is dropped and the targeting key used instead; other
        # non-strings stay in the bucket list, where they fail parsing (result null).
        if isinstance(first, str):
            return False, False
        return True, False

    def hash_value(self, first: Any) -> int | None:
        return v2_hash(first)

    def hash_shorthand(self, data: Any) -> int | None:
        key = _targeting_key(data)
        return None if key is None else v2_hash(self.flag_key + key)


def _runtime(values: list[Any], data: Any, recipe: _V2 | _V3) -> Any:
    """The operator on fully evaluated arguments (the slow, general path)."""
    if not values:
        return None
    first = values[0]
    is_bucket, unusable = recipe.split(first)
    if unusable:
        return None
    if is_bucket:
        buckets_in = values[1:] if first is None else values
        hash32 = recipe.hash_shorthand(data)
    else:
        buckets_in = values[1:]
        hash32 = recipe.hash_value(first)
    if hash32 is None:
        return None
    buckets = recipe.parse(buckets_in)
    return None if buckets is None else buckets.pick(hash32)


def _build(args: list[Node], recipe: _V2 | _V3) -> Node:
    if not args:
        return NULL
    first, rest = args[0], args[1:]
    if not all(node.is_const for node in rest):
        fns = tuple(node.fn for node in args)
        return Node(lambda data: _runtime([fn(data) for fn in fns], data, recipe))

    rest_values = [node.value for node in rest]
    if first.is_const:
        is_bucket, unusable = recipe.split(first.value)
        if unusable:
            return NULL
        if not is_bucket:
            # Constant bucketing value and buckets: the answer never changes.
            return const(_runtime([first.value, *rest_values], None, recipe))
        buckets_in = rest_values if first.value is None else [first.value, *rest_values]
        shorthand = recipe.parse(buckets_in)
        if shorthand is None:
            return NULL
        return Node(_shorthand(recipe, shorthand))

    # Dynamic bucketing value, constant buckets: parse the buckets once.
    static = recipe.parse(rest_values)
    first_fn, split, hash_value = first.fn, recipe.split, recipe.hash_value
    hash_text = _text_hasher(recipe)
    variants, ends, total = (static.variants, static.ends, static.total) if static else ([], [], 0)

    def fractional_static(data: Any) -> Any:
        value = first_fn(data)
        if type(value) is str:  # the common case: a string key, never a bucket
            if static is None:
                return None
            try:
                hash32 = hash_text(value)
            except UnicodeEncodeError:
                return None
            return variants[bisect_right(ends, (hash32 * total) >> 32)]
        is_bucket, unusable = split(value)
        if unusable:
            return None
        if is_bucket:
            return _runtime([value, *rest_values], data, recipe)
        if static is None:
            return None
        other = hash_value(value)
        return None if other is None else static.pick(other)

    return Node(fractional_static)


# CBOR text-string heads for UTF-8 lengths 0..23 (one byte: major type 3 | length).
_SHORT_TEXT_HEADS = [bytes((0x60 | size,)) for size in range(24)]


def _text_hasher(recipe: _V2 | _V3) -> Callable[[str], int]:
    """The recipe's hash of a string bucketing value; raises UnicodeEncodeError."""
    murmur = mmh3.hash
    if isinstance(recipe, _V2):

        def hash_v2(text: str) -> int:
            hash32: int = murmur(text.encode("utf-8"), 0, False)
            return hash32

        return hash_v2
    heads = _SHORT_TEXT_HEADS

    def hash_v3(text: str) -> int:
        raw = text.encode("utf-8")
        size = len(raw)
        hash32: int = murmur(heads[size] + raw if size < 24 else cbor_text(text), 0, False)
        return hash32

    return hash_v3


def _shorthand(recipe: _V2 | _V3, buckets: Buckets) -> Callable[[Any], Any]:
    """Bucketing on the targeting key (`[flagKey, targetingKey]` in v3, concatenated in v2)."""
    murmur = mmh3.hash
    variants, ends, total = buckets.variants, buckets.ends, buckets.total
    to_bytes: Callable[[str], bytes]
    if isinstance(recipe, _V2):
        prefix = recipe.flag_key

        def concatenated(key: str) -> bytes:
            return (prefix + key).encode("utf-8")

        to_bytes = concatenated
    else:
        head = recipe.shorthand_prefix
        if head is None:
            return lambda _data: None
        heads = _SHORT_TEXT_HEADS

        def cbor_pair(key: str) -> bytes:
            raw = key.encode("utf-8")
            size = len(raw)
            return head + (heads[size] + raw if size < 24 else cbor_text(key))

        to_bytes = cbor_pair

    def fractional_shorthand(data: Any) -> Any:
        key = data.get("targetingKey") if isinstance(data, dict) else None
        if type(key) is not str or not key:
            return None
        try:
            hash32: int = murmur(to_bytes(key), 0, False)
        except UnicodeEncodeError:
            return None
        return variants[bisect_right(ends, (hash32 * total) >> 32)]

    return fractional_shorthand
