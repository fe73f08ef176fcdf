"""The JsonLogic compiler: operator semantics, compile errors, context analysis.

Expected values are those of the reference engine flagd-core uses (`panzi-json-logic`
1.0.1); ``test_matches_reference_engine`` also checks random rules against it directly.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from json_logic import (  # type: ignore[import-untyped]  # test-only oracle: flagd-core's engine
    jsonLogic as reference_apply,
)
from openfeature.contrib.tools.flagd.core.targeting.targeting import OPERATORS as CORE_OPERATORS

from flagd.evaluator.compiled import CUSTOM_OPERATORS
from flagd.evaluator.jsonlogic import RuleError, compile_rule

DATA: dict[str, Any] = {
    "name": "alice",
    "n": 5,
    "f": 2.5,
    "zero": 0,
    "empty": "",
    "nothing": None,
    "yes": True,
    "no": False,
    "user": {"name": "bob", "tags": ["a", "b"], "address": {"city": "Oslo"}},
    "arr": [1, 2, 3],
    "words": ["x", None, "z"],
    "objs": [{"v": 1}, {"v": 0}, {"v": 3}],
    "email": "jobs@orange.com",
    "version": "1.2.3",
}


def run(rule: Any, data: Any = DATA, flag_key: str = "flag") -> Any:
    node, _ = compile_rule(rule, CUSTOM_OPERATORS, flag_key=flag_key)
    return node.fn(data)


def same(a: Any, b: Any) -> bool:
    """Equality that tells 1 from 1.0 and True, and NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


CASES: list[tuple[Any, Any]] = [
    # literals: scalars, arrays evaluated element-wise, objects with != 1 key are data
    (1, 1),
    ("s", "s"),
    (None, None),
    ([1, {"var": "n"}], [1, 5]),
    ({}, {}),
    ({"a": 1, "b": 2}, {"a": 1, "b": 2}),
    # var: dotted paths, indices, defaults, missing values
    ({"var": "name"}, "alice"),
    ({"var": ["name"]}, "alice"),
    ({"var": "user.name"}, "bob"),
    ({"var": "user.address.city"}, "Oslo"),
    ({"var": "user.tags.1"}, "b"),
    ({"var": "user.tags.length"}, 2),
    ({"var": "name.0"}, "a"),
    ({"var": "arr.01"}, None),  # not a canonical index
    ({"var": "arr.-1"}, None),
    ({"var": "arr.9"}, None),
    ({"var": 1}, None),  # numeric key on an object: the default
    ({"var": "missing"}, None),
    ({"var": ["missing", "dflt"]}, "dflt"),
    ({"var": ["nothing", "dflt"]}, "dflt"),  # null counts as missing
    ({"var": ["zero", "dflt"]}, 0),
    ({"var": ["empty", "dflt"]}, ""),
    ({"var": "user.name.x"}, None),
    ({"var": ["n.x", 7]}, 7),
    ({"var": ["missing", {"var": "n"}]}, 5),
    ({"var": {"cat": ["us", "er.name"]}}, "bob"),
    # missing / missing_some
    ({"missing": ["name", "nope", "empty", "nothing"]}, ["nope", "empty", "nothing"]),
    ({"missing": [["name", "nope"]]}, ["nope"]),
    ({"missing": "user.name"}, []),
    ({"missing_some": [1, ["name", "nope"]]}, []),
    ({"missing_some": [2, ["name", "nope", "nada"]]}, ["nope", "nada"]),
    ({"missing_some": [1, "name"]}, []),
    # if: chains, missing else, single argument
    ({"if": [True, "a", "b"]}, "a"),
    ({"if": [False, "a", "b"]}, "b"),
    ({"if": [False, "a"]}, None),
    ({"if": [False, "a", False, "b", "c"]}, "c"),
    ({"if": [False, "a", True, "b", "c"]}, "b"),
    ({"if": [False, "a", False, "b"]}, None),
    ({"if": []}, None),
    ({"if": ["only"]}, "only"),
    ({"?:": [{"var": "yes"}, 1, 2]}, 1),
    ({"if": [{"var": "empty"}, "t", "f"]}, "f"),
    ({"if": [{"var": "words"}, "t", "f"]}, "t"),
    ({"if": [[], "t", "f"]}, "f"),
    ({"if": [{}, "t", "f"]}, "t"),  # objects are truthy, even empty ones
    ({"if": ["0", "t", "f"]}, "t"),
    ({"if": [0.0, "t", "f"]}, "f"),
    # ==, !=: loose equality of the reference engine
    ({"==": [1, 1.0]}, True),
    ({"==": ["1", 1]}, True),
    ({"==": ["abc", 0]}, False),
    ({"==": ["", 0]}, False),  # JavaScript says true; the reference says false
    ({"==": [True, 1]}, True),
    ({"==": ["1", True]}, True),
    ({"==": [None, None]}, True),
    ({"==": [None, 0]}, True),  # null coerces to 0 against a number
    ({"==": [None, ""]}, False),
    ({"==": [None, False]}, True),  # false is a number to the reference: 0 == 0
    ({"==": [[1], [1]]}, False),  # arrays compare by identity
    ({"==": [{"var": "arr"}, {"var": "arr"}]}, True),
    ({"==": ["1,2,3", {"var": "arr"}]}, True),
    ({"==": [{"var": "email"}, "jobs@orange.com"]}, True),
    ({"==": ["jobs@orange.com", {"var": "email"}]}, True),
    ({"==": [{"var": "missing"}, "x"]}, False),
    ({"==": [{"var": "n"}, "5"]}, True),
    ({"==": []}, True),  # null == null
    ({"!=": [{"var": "email"}, "x"]}, True),
    ({"!=": [{"var": "n"}, "5"]}, False),
    # ===, !==: Python equality in the reference
    ({"===": [1, 1.0]}, True),
    ({"===": [1, "1"]}, False),
    ({"===": [[1], [1]]}, True),
    ({"!==": [1, "1"]}, True),
    # ordering with coercion; 3-argument "between"
    ({"<": [1, 2]}, True),
    ({"<": ["10", 9]}, False),
    ({"<": ["a", "b"]}, True),
    ({"<": ["a", 1]}, False),  # NaN
    ({"<": [None, 1]}, True),
    ({"<": [1, 2, 3]}, True),
    ({"<": [1, 3, 3]}, False),
    ({"<=": [1, 3, 3]}, True),
    ({"<": [1, 2, None]}, True),  # a null third argument means two-argument form
    ({">": [3, 2, 1]}, True),
    ({">": [{"var": "n"}, 4]}, True),
    ({">=": [{"var": "f"}, 2.5]}, True),
    ({">=": ["b", "a"]}, True),
    ({">": [[2], 1]}, True),
    # logic
    ({"!": [True]}, False),
    ({"!": []}, True),
    ({"!": [[]]}, True),
    ({"!": {"var": "name"}}, False),
    ({"!!": ["0"]}, True),
    ({"!!": [0]}, False),
    ({"!!": [[[]]]}, True),
    ({"or": [False, 0, "x"]}, "x"),
    ({"or": [False, 0]}, 0),
    ({"or": []}, None),
    ({"and": [1, "a", [1]]}, [1]),
    ({"and": [1, "", 2]}, ""),
    ({"and": []}, None),
    ({"and": [True]}, True),
    # arithmetic
    ({"+": [1, 2]}, 3),
    ({"+": ["1", 2]}, 3.0),
    ({"+": []}, 0),
    ({"+": [None, [2]]}, 2),
    ({"*": [2, "3"]}, 6.0),
    ({"*": []}, 1),
    ({"-": [5, 2]}, 3),
    ({"-": [5]}, -5),
    ({"-": ["x", 1]}, float("nan")),
    ({"/": [7, 2]}, 3.5),
    ({"%": [7, 3]}, 1),
    ({"%": [-1, 3]}, 2),  # Python's sign rule, as in the reference
    ({"max": [1, "3", 2]}, 3.0),
    ({"min": [1, -2, 2]}, -2),
    ({"min": []}, float("nan")),
    # strings
    ({"cat": ["a", 1, 2.5, None, True, [1, 2]]}, "a12.5nullTrue1,2"),
    ({"cat": [1.0, 0.1]}, "10.1"),
    ({"cat": [{"var": "$flagd.flagKey"}, "-", {"var": "name"}]}, "flag-alice"),
    ({"substr": ["jsonlogic", 4]}, "logic"),
    ({"substr": ["jsonlogic", -5]}, "logic"),
    ({"substr": ["jsonlogic", 1, 3]}, "son"),
    ({"substr": ["jsonlogic", 4, -2]}, "log"),
    ({"substr": ["jsonlogic", 20]}, ""),
    ({"substr": ["jsonlogic", "x", 2]}, "js"),
    ({"substr": [12345, 1, 2]}, "23"),
    ({"in": ["Spring", "Springfield"]}, True),
    ({"in": [1, "a1"]}, True),
    ({"in": ["x", ["a", "x"]]}, True),
    ({"in": [1.0, [1, 2]]}, True),
    ({"in": [{"var": "name"}, ["bob", "alice"]]}, True),
    ({"in": [{"var": "arr"}, [[1, 2, 3]]]}, True),  # unhashable needle
    ({"in": [{"var": "missing"}, ["a", None]]}, True),
    ({"in": ["a", None]}, False),
    ({"in": ["a", 5]}, False),
    ({"merge": [1, [2, 3], [[4]]]}, [1, 2, 3, [4]]),
    ({"merge": []}, []),
    # iteration: the sub-rule sees each item as its data
    ({"map": [{"var": "arr"}, {"*": [{"var": ""}, 2]}]}, [2, 4, 6]),
    ({"map": [{"var": "missing"}, {"var": ""}]}, []),
    ({"map": [{"var": "arr"}]}, [None, None, None]),
    ({"filter": [{"var": "objs"}, {"var": "v"}]}, [{"v": 1}, {"v": 3}]),
    ({"filter": [{"var": "arr"}]}, []),
    (
        {"reduce": [{"var": "arr"}, {"+": [{"var": "current"}, {"var": "accumulator"}]}, 10]},
        16,
    ),
    ({"reduce": [{"var": "missing"}, {"var": "current"}, 7]}, 7),
    ({"reduce": [{"var": "arr"}, {"var": "current"}, {"var": "n"}]}, 3),
    ({"all": [{"var": "arr"}, {">": [{"var": ""}, 0]}]}, True),
    ({"all": [[], True]}, False),  # all of nothing is false in JsonLogic
    ({"all": [{"var": "arr"}]}, False),
    ({"some": [{"var": "objs"}, {"==": [{"var": "v"}, 0]}]}, True),
    ({"some": [{"var": "missing"}, True]}, False),
    ({"none": [{"var": "arr"}, {">": [{"var": ""}, 5]}]}, True),
    ({"none": [{"var": "arr"}]}, True),
    # custom operators used as values
    ({"starts_with": [{"var": "email"}, "jobs"]}, True),
    ({"sem_ver": [{"var": "version"}, ">=", "1.2.0"]}, True),
]


@pytest.mark.parametrize(("rule", "expected"), CASES, ids=[json.dumps(c[0]) for c in CASES])
def test_operator(rule: Any, expected: Any) -> None:
    assert same(run(rule), expected)


@pytest.mark.parametrize(
    "rule",
    [
        {"nope": [1]},
        {"$ref": "is_ballmer"},
        {"if": [True, "a", {"$ref": "unused_branch"}]},  # unknown even when unreachable
        {"map": [[1], {"bogus": []}]},
        {"fractional": [{"unknown": 1}, ["a", 1]]},
        {"log": ["x"]},  # not in the flagd operator set
        {"a.b": [1]},
    ],
)
def test_unknown_operator_fails_compilation(rule: Any) -> None:
    with pytest.raises(RuleError):
        compile_rule(rule, CUSTOM_OPERATORS)


@pytest.mark.parametrize(
    "rule",
    [{"/": [1, 0]}, {"%": [{"var": "n"}, 0]}, {"substr": ["abc", "1e999"]}],
)
def test_runtime_failures_raise(rule: Any) -> None:
    node, _ = compile_rule(rule, CUSTOM_OPERATORS)
    with pytest.raises((ArithmeticError, ValueError)):
        node.fn(DATA)


def test_constant_rules_are_folded() -> None:
    node, _ = compile_rule({"if": [{"==": [1, 1]}, {"cat": ["a", "b"]}, "c"]}, CUSTOM_OPERATORS)
    assert node.is_const and node.value == "ab"
    node, _ = compile_rule({"if": [{"var": "x"}, "a", "b"]}, CUSTOM_OPERATORS)
    assert not node.is_const


@pytest.mark.parametrize(
    ("rule", "needs_flagd"),
    [
        ({"==": [{"var": "email"}, "x"]}, False),
        ({"var": "$flagd.flagKey"}, False),  # folded to the flag key
        ({"var": "$flagd.timestamp"}, True),
        ({"var": "$flagd"}, True),
        ({"var": ""}, True),  # the whole context
        ({"var": {"var": "k"}}, True),  # a key known only at evaluation time
        ({"missing": ["a", "$flagd.timestamp"]}, True),
        ({"missing": ["a", "b"]}, False),
        ({"map": [{"var": "arr"}, {"var": ""}]}, False),  # "" is the item there
        ({"fractional": [["a", 1]]}, False),
    ],
)
def test_context_analysis(rule: Any, needs_flagd: bool) -> None:
    _, state = compile_rule(rule, CUSTOM_OPERATORS, flag_key="k")
    assert state.needs_flagd is needs_flagd


def test_flag_key_is_folded_only_at_top_level() -> None:
    rule = {"map": [{"var": "items"}, {"var": "$flagd.flagKey"}]}
    data = {"items": [{"$flagd": {"flagKey": "inner"}}, {}]}
    assert run(rule, data, flag_key="outer") == ["inner", None]


def test_non_dict_data() -> None:
    assert run({"var": "x"}, None) is None
    assert run({"var": ""}, [1]) == [1]
    assert run({"var": 1}, ["a", "b"]) == "b"
    assert run({"var": 1.5}, ["a", "b"]) is None
    assert run({"var": "length"}, "abc") == 3
    assert run({"==": [{"var": "x"}, "a"]}, "abc") is False


# --------------------------------------------------------------------------- differential


_SCALARS: list[Any] = [
    None, True, False, 0, 1, -1, 2.5, 0.0, float("nan"), "", "a", "abc", "1", "0",
    " 12 ", "true", "1e999", [], [1], [1, 2], {}, {"a": 1, "b": 2},
]  # fmt: skip
_KEYS: list[Any] = [
    "a", "b", "a.b", "a.0", "arr", "arr.1", "arr.length", "s", "s.0", "n", "", None, 0, 1,
    1.5, True, "missing", "a.c.d", "$flagd.flagKey", "targetingKey", "arr.-1", "arr.01",
]  # fmt: skip
_OPS = [
    "==", "!=", "===", "!==", "<", ">", "<=", ">=", "in", "+", "-", "*", "/", "%",
    "min", "max", "cat", "substr", "merge", "!", "!!",
]  # fmt: skip


class _RuleMaker:
    """Random rules over every operator; custom operators only at the top level."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def scalar(self) -> Any:
        value = self.r.choice(_SCALARS)
        return value if isinstance(value, float) else json.loads(json.dumps(value))

    def leaf(self) -> Any:
        pick = self.r.random()
        if pick < 0.4:
            return self.scalar()
        if pick < 0.8:
            return {"var": self.r.choice(_KEYS)}
        return {"var": [self.r.choice(_KEYS), self.scalar()]}

    def rule(self, depth: int = 0) -> Any:
        r = self.r
        if depth > 3 or r.random() < 0.3:
            return self.leaf()
        k = r.random()
        if k < 0.45:
            args = [self.rule(depth + 1) for _ in range(r.choice([0, 1, 2, 2, 2, 3]))]
            op = r.choice(_OPS)
            return {op: args[0] if len(args) == 1 and r.random() < 0.5 else args}
        if k < 0.6:
            return {"if": [self.rule(depth + 1) for _ in range(r.choice([0, 1, 2, 3, 4, 5]))]}
        if k < 0.7:
            return {r.choice(["and", "or"]): [self.rule(depth + 1) for _ in range(r.randint(0, 3))]}
        if k < 0.8:
            items = r.choice([{"var": "arr"}, [1, 2, 3], {"var": "objs"}, "x"])
            args = [items, self.rule(depth + 1)][: r.choice([0, 1, 2, 2, 2])]
            return {r.choice(["map", "filter", "all", "some", "none"]): args}
        if k < 0.85:
            sub = {"+": [{"var": "current"}, {"var": "accumulator"}]}
            args = [r.choice([{"var": "arr"}, [1, 2, 3]]), sub, r.choice([0, 1, "s", None])]
            return {"reduce": args[: r.choice([1, 2, 3, 3])]}
        if k < 0.9:
            keys = r.choice([["a", "b"], [1, ["a", "missing", "s"]], [["a", "zz"]], "a"])
            return {r.choice(["missing", "missing_some"]): keys}
        if depth:
            return self.leaf()
        return self.custom()

    def custom(self) -> Any:
        r = self.r
        op = r.choice(["sem_ver", "starts_with", "ends_with", "fractional"])
        args: list[Any]
        if op == "sem_ver":
            args = [
                r.choice([{"var": "v"}, "1.2.3", 1.2, "v2", None, "1.0.0-rc.1"]),
                r.choice(["=", "^", "~", ">", "<=", "!=", "x"]),
                r.choice(["1.2.0", "2", {"var": "v"}, "1.0.0-rc.1"]),
            ]
            return {op: args[: r.choice([2, 3, 3, 3])]}
        if op in ("starts_with", "ends_with"):
            args = [self.rule(1), r.choice(["a", "", {"var": "s"}, 1])]
            return {op: args[: r.choice([1, 2, 2, 2, 3])]}
        keyed = {"cat": [{"var": "$flagd.flagKey"}, {"var": "s"}]}
        firsts: list[Any] = [
            {"var": "s"}, {"var": "n"}, {"var": "a"}, {"var": "targetingKey"}, ["x", 1],
            {"var": "arr"}, "const", None, 3, keyed,
        ]  # fmt: skip
        first = r.choice(firsts)
        variants = ["x", "y", True, 1, None, {"var": "s"}]
        weights = [1, 0, -5, 50, 2.0, True, None, {"var": "n"}]
        buckets = [
            [r.choice(variants), r.choice(weights)][: r.choice([1, 2, 2, 2])]
            for _ in range(r.choice([0, 1, 2, 3]))
        ]
        return {op: [first, *buckets]}

    def data(self) -> dict[str, Any]:
        r = self.r
        data: dict[str, Any] = {
            "a": r.choice([{"b": 1, "c": {"d": "x"}}, [5, 6], "str", None, 3]),
            "arr": r.choice([[1, 2, 3], [], ["a", None], "xy"]),
            "s": r.choice(["abc", "", "1.2.3", "user-1"]),
            "n": r.choice([0, 1.0, 3, -2, 2.5]),
            "v": r.choice(["1.2.3", "v1.2", 1.2, "bad", "1.0.0-rc.2"]),
            "objs": [{"a": 1}, {"a": 0}],
            "targetingKey": r.choice(["tk", "", None, 5]),
        }
        if r.random() < 0.3:
            del data["targetingKey"]
        data["$flagd"] = {"flagKey": "fk", "timestamp": 1}
        return data


def _reference(rule: Any, data: Any) -> tuple[str, Any]:
    try:
        return "value", reference_apply(rule, data, CORE_OPERATORS)
    except Exception:
        return "error", None


def _ours(rule: Any, data: Any) -> tuple[str, Any]:
    node, _ = compile_rule(rule, CUSTOM_OPERATORS, flag_key="fk")
    try:
        return "value", node.fn(data)
    except Exception:
        return "error", None


@pytest.mark.parametrize("seed", range(8))
def test_matches_reference_engine(seed: int) -> None:
    """Random rules give what flagd-core's engine (panzi-json-logic + its ops) gives."""
    maker = _RuleMaker(seed)
    for _ in range(2500):
        rule, data = maker.rule(), maker.data()
        expected, actual = _reference(rule, data), _ours(rule, data)
        assert expected[0] == actual[0] and same(expected[1], actual[1]), (rule, data)
