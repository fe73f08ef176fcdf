"""The `fractional` operator: the worked values of spec D.3 and both hash recipes' rules."""

from __future__ import annotations

import random
from typing import Any

import cbor2
import mmh3
import pytest
from openfeature.contrib.tools.flagd.core.targeting import custom_ops as core_ops

from flagd.evaluator.compiled import CUSTOM_OPERATORS
from flagd.evaluator.fractional import (
    cbor_encode,
    cbor_text,
    parse_buckets_v2,
    parse_buckets_v3,
    v2_hash,
    v3_hash,
)
from flagd.evaluator.jsonlogic import FractionalVersion, compile_rule

SUITS = [["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]
CARD_RULE = {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]}, *SUITS]}
SHORTHAND = {"fractional": [["heads"], ["tails", 1]]}
EDGE_RULE = {"fractional": [{"var": "targetingKey"}, ["lower", 50], ["upper", 50]]}


def run(rule: Any, data: Any, version: FractionalVersion, flag_key: str = "fractional-flag") -> Any:
    node, _ = compile_rule(rule, CUSTOM_OPERATORS, flag_key=flag_key, fractional=version)
    return node.fn(data)


# --------------------------------------------------------------------------- spec D.3 table


def test_worked_hashes_v2() -> None:
    assert v2_hash("fractional-flagjack") == 2682799072
    assert (2682799072 * 100) >> 32 == 62
    assert v2_hash("fractional-flag-shorthandjon@company.com") == 618039204


def test_worked_hashes_v3() -> None:
    encoded = cbor_encode("fractional-flagjack")
    assert (
        encoded is not None and encoded[:6] == bytes.fromhex("736672616374") and len(encoded) == 20
    )
    assert v3_hash("fractional-flagjack") == 1435348822
    assert (1435348822 * 100) >> 32 == 33
    pair = cbor_encode(["fractional-flag-shorthand", "jon@company.com"])
    assert pair is not None and pair[:3] == bytes.fromhex("827819")
    assert v3_hash(["fractional-flag-shorthand", "jon@company.com"]) == 3783143057
    assert (3783143057 * 2) >> 32 == 1


@pytest.mark.parametrize(("version", "expected"), [("v2", "hearts"), ("v3", "diamonds")])
def test_worked_card_bucket(version: FractionalVersion, expected: str) -> None:
    assert run(CARD_RULE, {"user": {"name": "jack"}}, version) == expected


@pytest.mark.parametrize(("version", "expected"), [("v2", "heads"), ("v3", "tails")])
def test_worked_shorthand(version: FractionalVersion, expected: str) -> None:
    data = {"targetingKey": "jon@company.com"}
    assert run(SHORTHAND, data, version, flag_key="fractional-flag-shorthand") == expected


@pytest.mark.parametrize(
    ("key", "hash32", "expected"),
    [
        ("ejOoVL", 0, "lower"),
        ("bY9fO-", 1, "lower"),
        ("SI7p-", 2147483647, "lower"),
        ("6LvT0", 2147483648, "upper"),
        ("ceQdGm", 4294967295, "upper"),
    ],
)
def test_murmur_edge_keys_v2(key: str, hash32: int, expected: str) -> None:
    assert v2_hash(key) == hash32
    assert run(EDGE_RULE, {"targetingKey": key}, "v2") == expected


# --------------------------------------------------------------------------- v3 encoding


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_cbor_text_matches_cbor2(size: int) -> None:
    for text in ("a" * size, ("é" * size)[:size], ("あ" * size)[:size]):
        assert cbor_text(text) == cbor2.dumps(text, canonical=True)


@pytest.mark.parametrize(
    ("value", "same_as"),
    [
        (1.0, 1),
        (-0.0, 0),
        (9007199254740992.0, 9007199254740992),
        ({"b": 2.0, "a": [1.0]}, {"a": [1], "b": 2}),
    ],
)
def test_whole_floats_hash_like_ints(value: Any, same_as: Any) -> None:
    assert v3_hash(value) == v3_hash(same_as)


def test_non_whole_and_huge_floats_stay_floats() -> None:
    assert v3_hash(1.5) != v3_hash(1)
    assert cbor_encode(1e19) == cbor2.dumps(10**19, canonical=True)  # within 2^64-1: an int
    assert cbor_encode(1e20) == cbor2.dumps(1e20, canonical=True)  # beyond it: stays a float
    assert cbor_encode(1e20) != cbor2.dumps(10**20, canonical=True)


def test_unencodable_text_is_null_not_a_crash() -> None:
    # mmh3 5.x segfaults on a str holding a lone surrogate; we must never pass one.
    lone = "\ud800"
    assert v3_hash(lone) is None
    assert v2_hash(lone) is None
    for version in ("v2", "v3"):
        assert run(EDGE_RULE, {"targetingKey": lone}, version) is None
        assert run(SHORTHAND, {"targetingKey": lone}, version) is None


# --------------------------------------------------------------------------- bucket rules


def test_v3_weights_must_be_ints() -> None:
    assert parse_buckets_v3([["a", 1], ["b"]]) is not None
    assert parse_buckets_v3([["a", 1.0]]) is None
    assert parse_buckets_v3([["a", True]]) is None
    assert parse_buckets_v3([["a", None]]) is None
    assert parse_buckets_v3([["a", 1, 2]]) is None
    assert parse_buckets_v3([[]]) is None
    assert parse_buckets_v3(["a"]) is None
    assert parse_buckets_v3([["a", 0]]) is None  # total 0
    assert parse_buckets_v3([["a", 2147483647], ["b", 1]]) is None  # total > MaxInt32
    clamped = parse_buckets_v3([["a", -5], ["b", 3]])
    assert clamped is not None and clamped.ends == [0, 3]


def test_v2_weights_are_whole_numbers() -> None:
    parsed = parse_buckets_v2([["a", 50.0], ["b", None], ["c", 2, "ignored"]])
    assert parsed is not None and parsed.ends == [50, 51, 53]
    assert parse_buckets_v2([["a", 50.5]]) is None
    assert parse_buckets_v2([["a", True]]) is None
    assert parse_buckets_v2([["a", "50"]]) is None
    assert parse_buckets_v2([["a", 2147483648]]) is None
    assert parse_buckets_v2([[{"obj": 1}, 1]]) is None  # variants are primitives in v2
    assert parse_buckets_v2([[None, 1], [2.5, 1], [True, 1]]) is not None
    assert parse_buckets_v2([["a", 0], ["b", 0]]) is None
    clamped = parse_buckets_v2([["a", -50], ["b", 100]])
    assert clamped is not None and clamped.ends == [0, 100]


def test_zero_weight_buckets_are_never_chosen() -> None:
    parsed = parse_buckets_v3([["never", 0], ["a", 1], ["never", 0], ["b", 1], ["never", 0]])
    assert parsed is not None
    picks = {parsed.pick(h) for h in (0, 1, 2**31 - 1, 2**31, 2**32 - 1)}
    assert picks == {"a", "b"}


# --------------------------------------------------------------------------- bucketing input


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_shorthand_needs_a_string_targeting_key(version: FractionalVersion) -> None:
    for data in ({}, {"targetingKey": None}, {"targetingKey": ""}, {"targetingKey": 5}):
        assert run(SHORTHAND, data, version) is None


def test_v2_null_bucketing_value_falls_back_to_targeting_key() -> None:
    rule = {"fractional": [{"var": "missing"}, ["a", 1], ["b", 1]]}
    assert run(rule, {}, "v2") is None
    tk = "user-7"
    expected = ["a", "b"][(v2_hash("fractional-flag" + tk) or 0) * 2 >> 32]
    assert run(rule, {"targetingKey": tk}, "v2") == expected


def test_v3_null_bucketing_value_is_null() -> None:
    rule = {"fractional": [{"var": "missing"}, ["a", 1], ["b", 1]]}
    assert run(rule, {"targetingKey": "user-7"}, "v3") is None


def test_v2_non_string_bucketing_value_is_null() -> None:
    rule = {"fractional": [{"var": "n"}, ["a", 1], ["b", 1]]}
    assert run(rule, {"n": 5, "targetingKey": "user-7"}, "v2") is None


def test_v3_hashes_non_string_values() -> None:
    rule = {"fractional": [{"var": "n"}, *[[f"b{i}", 1] for i in range(100)]]}
    got = {run(rule, {"n": n}, "v3") for n in range(20)}
    assert len(got) > 5
    assert run(rule, {"n": 3}, "v3") == run(rule, {"n": 3.0}, "v3")
    assert run(rule, {"n": True}, "v3") != run(rule, {"n": 1}, "v3")


def test_v3_array_bucketing_value_is_read_as_a_bucket() -> None:
    # A first argument that evaluates to an array is the shorthand form (flagd-core).
    rule = {"fractional": [{"var": "pick"}, ["b", 1]]}
    data = {"pick": ["a", 1], "targetingKey": "user-1"}
    assert run(rule, data, "v3") in ("a", "b")
    assert run(rule, {"pick": ["a", 1]}, "v3") is None  # no targeting key


def test_nested_rules_as_variant_and_weight() -> None:
    rule = {
        "fractional": [
            {"var": "targetingKey"},
            [{"var": "color"}, {"if": [{"var": "vip"}, 100, 0]}],
            ["blue", 10],
        ]
    }
    for version in ("v2", "v3"):
        assert run(rule, {"targetingKey": "u", "color": "red", "vip": True}, version) in (
            "red",
            "blue",
        )
        assert run(rule, {"targetingKey": "u", "color": "red", "vip": False}, version) == "blue"


def test_constant_bucketing_value_is_folded() -> None:
    rule = {"fractional": ["fixed", ["a", 1], ["b", 1]]}
    node, _ = compile_rule(rule, CUSTOM_OPERATORS, fractional="v3")
    assert node.is_const and node.value in ("a", "b")


def test_static_and_dynamic_buckets_agree() -> None:
    static = {"fractional": [{"var": "k"}, ["a", 10], ["b", 30], ["c", 60]]}
    dynamic = {"fractional": [{"var": "k"}, ["a", {"var": "w"}], ["b", 30], ["c", 60]]}
    for version in ("v2", "v3"):
        for i in range(200):
            data = {"k": f"user-{i}", "w": 10}
            assert run(static, data, version) == run(dynamic, data, version)


# --------------------------------------------------------------------------- v3 vs flagd-core


def _core(rule_args: list[Any], data: dict[str, Any]) -> Any:
    return core_ops.fractional(data, *rule_args)


@pytest.mark.parametrize("seed", range(4))
def test_v3_matches_flagd_core(seed: int) -> None:
    """Our v3 picks the same bucket as openfeature-flagd-core 2.0.0 for random inputs."""
    r = random.Random(seed)
    values: list[Any] = [
        "", "user", "ünïcode", "あいう" * 9, 0, -1, 24, 2**32, -(2**63), 1.5, -0.0, 1e300,
        True, False, {"b": 1, "a": [1.0, None]}, {"": {}}, [[[]]],
    ]  # fmt: skip
    for _ in range(300):
        weights = [[f"v{i}", r.choice([0, 1, 5, 50, -3])] for i in range(r.randint(1, 6))]
        value = r.choice([*values, f"user-{r.randint(0, 10**6)}"])
        data = {"x": value, "targetingKey": f"tk-{r.randint(0, 99)}", "$flagd": {"flagKey": "fk"}}
        keyed = {"fractional": [{"var": "x"}, *weights]}
        assert run(keyed, data, "v3", flag_key="fk") == _core([value, *weights], data)
        short = {"fractional": weights}
        assert run(short, data, "v3", flag_key="fk") == _core(weights, data)


def test_murmur_is_unsigned_seed_zero() -> None:
    assert v2_hash("ceQdGm") == mmh3.hash(b"ceQdGm", 0, False) == 4294967295
