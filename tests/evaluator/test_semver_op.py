"""The `sem_ver` operator (spec D.4)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import semver

from flagd.evaluator.compiled import CUSTOM_OPERATORS
from flagd.evaluator.jsonlogic import compile_rule
from flagd.evaluator.semver_op import parse_version, sem_ver


@pytest.mark.parametrize(
    ("left", "op", "right", "expected"),
    [
        ("2.0.0", "=", "2.0.0", True),
        ("2.1.0", ">", "2.0.0", True),
        ("1.9.0", "<", "2.0.0", True),
        ("2.0.0-alpha", "<", "2.0.0", True),
        ("2.0.0-alpha", "<", "2.0.0-beta", True),
        ("1.0.0-rc.2", "<", "1.0.0-rc.10", True),  # numeric identifiers by value
        ("1.0.0-rc.1", "<", "1.0.0-rc.1.1", True),
        ("1.0.0-1", "<", "1.0.0-a", True),
        ("1.0.0", "!=", "1.0.1", True),
        ("1.0.0", "<=", "1.0.0", True),
        ("1.0.1", ">=", "1.0.0", True),
        ("1.0.0+other", "=", "1.0.0+build", True),  # build metadata ignored
        ("v1.0.0", "=", "1.0.0", True),
        ("V1.0.0", "=", "v1.0.0", True),
        ("1", "=", "1.0.0", True),
        ("1.2", "=", "1.2.0", True),
        ("1.2-beta", "=", "1.2.0-beta", True),
        (1, "=", "1.0.0", True),
        (1.0, "=", "1.0.0", True),  # "1.0" after str()
        (1.2, ">", "1.1", True),
        (2, ">", "1.1", True),
        ("1.0.0", "^", "1.9.0", True),  # same major, not an npm range
        ("2.0.0", "^", "1.9.0", False),
        ("3.0.1", "~", "3.0.0", True),
        ("3.1.0", "~", "3.0.0", False),
        ("2.0.0.0", "=", "2.0.0", None),
        ("not-a-version", "=", "1.0.0", None),
        ("01.0.0", "=", "1.0.0", None),
        (None, "=", "1.0.0", None),
        (True, "=", "1.0.0", None),
        ("1.0.0", "===", "1.0.0", None),
        ("1.0.0", None, "1.0.0", None),
        ("1.0.0", ["="], "1.0.0", None),
    ],
)
def test_sem_ver(left: Any, op: Any, right: Any, expected: bool | None) -> None:
    assert sem_ver(left, op, right) is expected
    rule = {"sem_ver": [{"var": "v"}, op, right]}
    node, _ = compile_rule(rule, CUSTOM_OPERATORS)
    assert node.fn({"v": left}) is expected
    dynamic = {"sem_ver": [{"var": "v"}, {"var": "op"}, {"var": "w"}]}
    node, _ = compile_rule(dynamic, CUSTOM_OPERATORS)
    assert node.fn({"v": left, "op": op, "w": right}) is expected


@pytest.mark.parametrize("args", [[], ["1.0.0"], ["1.0.0", "="], ["1.0.0", "=", "1.0.0", "x"]])
def test_wrong_argument_count_is_null(args: list[Any]) -> None:
    node, _ = compile_rule({"sem_ver": args}, CUSTOM_OPERATORS)
    assert node.fn({}) is None


def test_arguments_are_still_evaluated() -> None:
    node, _ = compile_rule({"sem_ver": [{"/": [1, {"var": "zero"}]}, "="]}, CUSTOM_OPERATORS)
    with pytest.raises(ZeroDivisionError):
        node.fn({"zero": 0})


VERSIONS = [
    "0.0.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0", "10.0.0", "1.0.0-alpha", "1.0.0-alpha.1",
    "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1",
    "1.0.0-0", "1.0.0-00a", "1.0.0-1", "1.0.0-a.1", "1.0.0+build", "1.0.0-alpha+b",
]  # fmt: skip


def test_precedence_matches_semver_compare() -> None:
    """Our cached keys order every pair exactly like `semver.Version.compare`."""
    for a, b in itertools.product(VERSIONS, repeat=2):
        ka, kb = parse_version(a), parse_version(b)
        assert ka is not None and kb is not None
        expected = semver.Version.parse(a).compare(b)
        assert ((ka > kb) - (ka < kb)) == expected, (a, b)
