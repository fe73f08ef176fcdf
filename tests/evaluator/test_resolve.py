"""Variant choice and type rules: spec A.4 (outcomes), D.1 (context), D.2 (rule result)."""

from __future__ import annotations

from typing import Any

import pytest

from flagd.evaluator import CompiledFlag, compile_flag, resolve
from flagd.model import ErrorCode, Flag, FlagType, MetadataValue, Reason, Resolution

META: dict[str, MetadataValue] = {"flagSetId": "payments", "version": 3}


def flag(
    targeting: Any = None,
    *,
    variants: dict[str, Any] | None = None,
    default: str | None = "off",
    state: str = "ENABLED",
    key: str = "my-flag",
) -> Flag:
    return Flag(
        key=key,
        state=state,
        variants=variants if variants is not None else {"on": True, "off": False},
        default_variant=default,
        targeting=targeting,
        metadata=dict(META),
    )


def evaluate(f: Flag, context: dict[str, Any] | None = None, **kw: Any) -> Resolution:
    return compile_flag(f, **kw).evaluate(context or {})


# --------------------------------------------------------------------------- A.4 outcomes


def test_static() -> None:
    res = evaluate(flag())
    assert (res.reason, res.variant, res.value, res.error) == (Reason.STATIC, "off", False, None)
    assert res.metadata == META


def test_empty_targeting_is_static() -> None:
    assert evaluate(flag({})).reason is Reason.STATIC


def test_targeting_match_even_for_the_default_variant() -> None:
    res = evaluate(flag({"if": [True, "off"]}))
    assert (res.reason, res.variant, res.value) == (Reason.TARGETING_MATCH, "off", False)


def test_null_result_gives_default_variant() -> None:
    res = evaluate(flag({"if": [False, "on"]}))
    assert (res.reason, res.variant, res.value) == (Reason.DEFAULT, "off", False)


@pytest.mark.parametrize("targeting", [None, {"if": [False, "on"]}])
def test_code_default_without_default_variant(targeting: Any) -> None:
    res = evaluate(flag(targeting, default=None))
    assert (res.reason, res.variant, res.value, res.error) == (Reason.DEFAULT, None, None, None)
    assert res.metadata == META


def test_code_default_still_matches_targeting() -> None:
    res = evaluate(flag({"if": [True, "on"]}, default=None))
    assert (res.reason, res.variant, res.value) == (Reason.TARGETING_MATCH, "on", True)


def test_disabled_skips_targeting() -> None:
    res = evaluate(flag({"nonsense": []}, state="DISABLED"))
    assert (res.reason, res.variant, res.value, res.error) == (Reason.DISABLED, None, None, None)
    assert res.metadata == META


@pytest.mark.parametrize(
    "targeting",
    [
        {"nonsense": [1]},
        {"if": [{"$ref": "missing_evaluator"}, "on", "off"]},
        ["not", "an", "object"],
        "on",
    ],
)
def test_bad_rule_is_parse_error_but_compiles(targeting: Any) -> None:
    res = evaluate(flag(targeting))
    assert (res.reason, res.error, res.variant) == (Reason.ERROR, ErrorCode.PARSE_ERROR, None)
    assert res.error_message


def test_rule_failing_at_run_time_is_parse_error() -> None:
    res = evaluate(flag({"if": [{"/": [1, {"var": "d"}]}, "on"]}), {"d": 0})
    assert (res.reason, res.error) == (Reason.ERROR, ErrorCode.PARSE_ERROR)
    assert evaluate(flag({"if": [{"/": [1, {"var": "d"}]}, "on"]}), {"d": 1}).variant == "on"


def test_deeply_nested_rule_is_parse_error() -> None:
    rule: Any = "on"
    for _ in range(5000):
        rule = {"if": [{"var": "x"}, rule]}
    res = evaluate(flag(rule))
    assert res.error is ErrorCode.PARSE_ERROR


# --------------------------------------------------------------------------- D.2 results


@pytest.mark.parametrize(
    ("result", "variants", "variant"),
    [
        (True, {"true": 1, "false": 2}, "true"),
        (False, {"true": 1, "false": 2}, "false"),
        (1, {"1": "one"}, "1"),
        (1.0, {"1": "one"}, "1"),  # flagd looks up the JSON text of the number
        (2.5, {"2.5": "x"}, "2.5"),
    ],
)
def test_non_string_results_name_variants(
    result: Any, variants: dict[str, Any], variant: str
) -> None:
    res = evaluate(flag({"if": [True, result]}, variants=variants, default=None))
    assert (res.reason, res.variant) == (Reason.TARGETING_MATCH, variant)


@pytest.mark.parametrize("result", ["three", {"a": 1}, [1], 7, ""])
def test_results_that_are_not_variants_are_general_errors(result: Any) -> None:
    rule = {"if": [{"var": "go"}, {"var": "r"}]}
    res = evaluate(flag(rule, variants={"one": 1, "two": 2}, default="two"), {"go": 1, "r": result})
    assert (res.reason, res.error, res.variant) == (Reason.ERROR, ErrorCode.GENERAL, None)


def test_unknown_default_variant_is_general_error() -> None:
    res = evaluate(flag(default="missing"))
    assert res.error is ErrorCode.GENERAL


def test_constant_rule_result_is_precomputed() -> None:
    compiled = compile_flag(flag({"if": [{"==": [1, 1]}, "on", "off"]}))
    assert compiled.evaluate({}) is compiled.evaluate({"x": 1})


# --------------------------------------------------------------------------- D.1 context


def test_flagd_properties() -> None:
    rule = {"if": [{"==": [{"var": "$flagd.flagKey"}, "my-flag"]}, {"var": "$flagd.timestamp"}]}
    f = flag(rule, variants={"1700000000": "ts", "off": "off"})
    res = compile_flag(f).evaluate({}, now=1700000000)
    assert (res.variant, res.value) == ("1700000000", "ts")


def test_timestamp_defaults_to_the_clock() -> None:
    import time

    rule = {"if": [{">=": [{"var": "$flagd.timestamp"}, int(time.time())]}, "on"]}
    assert evaluate(flag(rule)).variant == "on"


def test_caller_flagd_is_overwritten_and_context_not_mutated() -> None:
    rule = {"if": [{"==": [{"var": "$flagd.timestamp"}, 42]}, "on"]}
    context: dict[str, Any] = {"$flagd": {"flagKey": "fake", "timestamp": 42}, "targetingKey": None}
    compiled = compile_flag(flag(rule))
    assert compiled.evaluate(context, now=7).variant == "off"
    assert compiled.evaluate(context, now=42).variant == "on"
    assert context == {"$flagd": {"flagKey": "fake", "timestamp": 42}, "targetingKey": None}
    # The flag key is the evaluated flag's, not the caller's.
    key_rule = {"if": [{"==": [{"var": "$flagd.flagKey"}, "fake"]}, "on"]}
    assert compile_flag(flag(key_rule)).evaluate(context).variant == "off"


@pytest.mark.parametrize(
    "rule",
    [
        {"if": [{"var": "targetingKey"}, "on"]},
        {"if": [{"missing": ["targetingKey"]}, "on"]},
        {"if": [{"==": [{"var": ""}, {"var": ""}]}, "on"]},
        {"if": [{"in": ["targetingKey", {"cat": [{"var": ""}]}]}, "on"]},
        {"if": [{"fractional": [["on", 1]]}, "on"]},
        {"fractional": [{"var": ""}, ["on", 1], ["off", 1]]},
    ],
)
def test_null_targeting_key_is_no_targeting_key(rule: Any) -> None:
    for version in ("v2", "v3"):
        compiled = compile_flag(flag(rule), version)
        assert compiled.evaluate({"a": 1, "targetingKey": None}, now=5) == compiled.evaluate(
            {"a": 1}, now=5
        )


def test_targeting_key_is_read() -> None:
    rule = {"if": [{"==": [{"var": "targetingKey"}, "u1"]}, "on"]}
    assert evaluate(flag(rule), {"targetingKey": "u1"}).variant == "on"


def test_fractional_mode_is_per_compile() -> None:
    key = {"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]}
    suits = [["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]
    rule = {"fractional": [key, *suits]}
    variants = {s: s for s in ("clubs", "diamonds", "hearts", "spades", "wild")}
    f = flag(rule, variants=variants, default="wild", key="fractional-flag")
    ctx = {"user": {"name": "jack"}}
    assert compile_flag(f).evaluate(ctx).value == "diamonds"  # v3 is the default
    assert compile_flag(f, "v2").evaluate(ctx).value == "hearts"
    assert compile_flag(f, "v2").fractional == "v2"


# --------------------------------------------------------------------------- resolve: types


def typed(value: Any, flag_type: FlagType, *, targeted: bool = False) -> Resolution:
    targeting = {"if": [True, "v"]} if targeted else None
    return resolve(compile_flag(flag(targeting, variants={"v": value}, default="v")), {}, flag_type)


@pytest.mark.parametrize(
    ("value", "flag_type", "expected"),
    [
        (True, FlagType.BOOLEAN, True),
        ("s", FlagType.STRING, "s"),
        ("", FlagType.STRING, ""),
        (10, FlagType.INTEGER, 10),
        (10.0, FlagType.INTEGER, 10),  # whole floats are lossless integers
        (-0.0, FlagType.INTEGER, 0),
        (2**63 - 1, FlagType.INTEGER, 2**63 - 1),
        (0.5, FlagType.FLOAT, 0.5),
        (3, FlagType.FLOAT, 3.0),
        ({"a": 1}, FlagType.OBJECT, {"a": 1}),
        ({}, FlagType.OBJECT, {}),
    ],
)
def test_type_accepted(value: Any, flag_type: FlagType, expected: Any) -> None:
    for targeted in (False, True):
        res = typed(value, flag_type, targeted=targeted)
        assert res.error is None and res.variant == "v"
        assert res.value == expected and type(res.value) is type(expected)
        assert res.reason is (Reason.TARGETING_MATCH if targeted else Reason.STATIC)


@pytest.mark.parametrize(
    ("value", "flag_type"),
    [
        (1, FlagType.BOOLEAN),
        ("true", FlagType.BOOLEAN),
        (True, FlagType.STRING),
        (1, FlagType.STRING),
        (3.14, FlagType.INTEGER),
        (True, FlagType.INTEGER),
        ("1", FlagType.INTEGER),
        (2**63, FlagType.INTEGER),
        (float("inf"), FlagType.INTEGER),
        (True, FlagType.FLOAT),
        ("0.5", FlagType.FLOAT),
        ([1], FlagType.OBJECT),  # arrays cannot be a Struct
        ("{}", FlagType.OBJECT),
    ],
)
def test_type_mismatch(value: Any, flag_type: FlagType) -> None:
    res = typed(value, flag_type)
    assert (res.reason, res.error, res.variant) == (Reason.ERROR, ErrorCode.TYPE_MISMATCH, None)
    assert res.metadata == META


def test_no_type_check_for_disabled_code_default_or_no_type() -> None:
    disabled = compile_flag(flag(state="DISABLED"))
    assert resolve(disabled, {}, FlagType.STRING).reason is Reason.DISABLED
    code_default = compile_flag(flag(default=None))
    assert resolve(code_default, {}, FlagType.OBJECT).reason is Reason.DEFAULT
    assert resolve(compile_flag(flag()), {}, None).value is False


def test_unknown_flag() -> None:
    res = resolve(None, {}, FlagType.BOOLEAN)
    assert (res.reason, res.error) == (Reason.ERROR, ErrorCode.FLAG_NOT_FOUND)


def test_coerced_results_are_reused() -> None:
    compiled: CompiledFlag = compile_flag(flag(variants={"v": 3}, default="v"))
    first = resolve(compiled, {}, FlagType.FLOAT)
    assert first.value == 3.0 and resolve(compiled, {}, FlagType.FLOAT) is first
    assert resolve(compiled, {}, FlagType.INTEGER).value == 3
