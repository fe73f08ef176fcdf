"""The `starts_with` / `ends_with` operators (spec D.5)."""

from __future__ import annotations

from typing import Any

import pytest

from flagd.evaluator.compiled import CUSTOM_OPERATORS
from flagd.evaluator.jsonlogic import compile_rule


def run(rule: Any, data: Any) -> Any:
    node, _ = compile_rule(rule, CUSTOM_OPERATORS)
    return node.fn(data)


@pytest.mark.parametrize(
    ("op", "text", "affix", "expected"),
    [
        ("starts_with", "abcdef", "abc", True),
        ("starts_with", "abcdef", "ABC", False),  # case-sensitive
        ("starts_with", "abcdef", "", True),
        ("starts_with", "", "a", False),
        ("ends_with", "uvwxyz", "xyz", True),
        ("ends_with", "uvwxyz", "XYZ", False),
        ("ends_with", "abc", "abcd", False),
        ("starts_with", 123, "1", None),  # non-strings: null, not false
        ("ends_with", 123.0, "0", None),
        ("starts_with", None, "a", None),
        ("starts_with", ["abc"], "a", None),
        ("starts_with", "abc", 1, None),
        ("ends_with", "abc", None, None),
    ],
)
def test_string_comparison(op: str, text: Any, affix: Any, expected: bool | None) -> None:
    assert run({op: [{"var": "s"}, affix]}, {"s": text}) is expected
    assert run({op: [{"var": "s"}, {"var": "t"}]}, {"s": text, "t": affix}) is expected
    assert run({op: [text, affix]}, {}) is expected


@pytest.mark.parametrize("op", ["starts_with", "ends_with"])
@pytest.mark.parametrize("args", [[], ["abc"], ["abc", "a", "b"]])
def test_wrong_argument_count_is_null(op: str, args: list[Any]) -> None:
    assert run({op: args}, {}) is None


def test_missing_value_is_null() -> None:
    assert run({"starts_with": [{"var": "nope"}, "a"]}, {}) is None
    assert run({"starts_with": [{"var": "s"}, "a"]}, ["not", "a", "dict"]) is None
