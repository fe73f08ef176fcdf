"""The condition language (spec 6): the spec's own conditions, operators, errors, no eval."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from canary import condition
from canary.condition import (
    ConditionError,
    ConditionSyntaxError,
    ConditionTypeError,
    MeasurementPhase,
    evaluate,
    evaluate_result,
    parse,
)

NAN, INF = math.nan, math.inf

# (condition, result, expected) - the spec's conditions first (12.2, 12.3, 6.3).
TRUTH = [
    ("len(result) > 0 && result[0] <= 0.01", [0.020708412397216953], False),
    ("len(result) > 0 && result[0] <= 0.01", [0.001962264150943396], True),
    ("len(result) > 0 && result[0] <= 0.01", [], False),  # short-circuit: no index error
    ("len(result) > 0 && result[0] > 0.01", [0.0207], True),
    ("len(result) > 0 && result[0] < 0.2", [0.0992], True),
    ("len(result) > 0 && result[0] >= 0.2", [0.415], True),
    ("len(result) > 0 && all(result, {# < 0.2})", [0.1, 0.15], True),
    ("len(result) > 0 && all(result, {# < 0.2})", [0.1, 0.25], False),
    ("len(result) > 0 && any(result, {# >= 0.2})", [0.1, 0.25], True),
    ("len(result) == 0 || result[0] < 0.2", [], True),
    ("result[0] < 0.2", [0.1], True),
    ("result[0] <= 0.01", [NAN], False),  # any comparison with NaN is false (6.3)
    ("result[0] > 0.01", [NAN], False),
    ("result[0] == result[0]", [NAN], False),
    ("isNaN(result[0])", [NAN], True),
    ("isNaN(result[0]) || result[0] <= 0.01", [NAN], True),
    ("isInf(result[0])", [-INF], True),
    ("isInf(result)", 1.0, False),
    ("result == 72.29", 72.29, True),  # scalars are a float, not a list (9.3)
    ("result < 1", 0.5, True),  # mixed int/float comparison
    ("isNil(result)", [], False),  # an empty vector is an empty list, not nil (6.3)
    ("isNil(result)", None, True),
    ("len(default(result, [1])) == 0", [], True),  # default ignores x and returns the value
    ("default(result, 5) == 5", None, True),
    # operators and precedence as in expr
    ("1 + 2 * 3 == 7", 0.0, True),
    ("2 ** 3 ** 2 == 512", 0.0, True),  # ** is right-associative
    ("-2 ** 2 == 4", 0.0, True),  # unary minus binds tighter
    ("7 / 2 == 3.5", 0.0, True),  # / is float division
    ("7 % 3 == 1 and -7 % 3 == -1", 0.0, True),  # Go's truncated modulo
    ("1 / 0 > 1000", 0.0, True),  # float division by zero is +Inf, not an exception
    ("not true == false", 0.0, True),  # (not true) == false, like expr
    ("!(1 > 2) and (true or false)", 0.0, True),
    ("result > 1 ? result < 3 : false", 2.0, True),
    ("result > 1 ? false : true", 2.0, False),
    ("result[-1] == 3", [1.0, 3.0], True),
    ("2 in [1, 2, 3]", 0.0, True),
    ("4 not in [1, 2, 3]", 0.0, True),
    ("'payment-router' matches '^pay.*er$'", 0.0, True),
    ("'error-rate' contains 'rate' && 'a' + 'b' == 'ab'", 0.0, True),
    ("'p99' startsWith 'p' && \"p99\" endsWith '9'", 0.0, True),
    ("none(result, {# > 1}) && one(result, {# == 1})", [0.5, 1.0], True),
    ("all(result, {# > 1})", [], True),  # all([]) is true: guard with len() (6.2)
    ("any(result, {all([#], {# > 0})})", [1.0], True),  # nested closures: innermost #
    ("asInt('42') == 42 && asInt(2.9) == 2 && asFloat('0.5') == 0.5", 0.0, True),
    ("asFloat('NaN') != asFloat('NaN')", 0.0, True),
    ("1_000 == 1000 && 1e3 == 1000", 0.0, True),
    ("nil == nil && result != nil", 1.0, True),
    ('"a\\"b" == \'a"b\'', 0.0, True),
]


@pytest.mark.parametrize(("source", "result", "expected"), TRUTH, ids=[t[0] for t in TRUTH])
def test_conditions_evaluate_like_expr(source: str, result: condition.Value, expected: bool) -> None:  # fmt: skip
    assert evaluate(source, result) is expected


RUNTIME_ERRORS = [
    ("result[0] <= 0.01", [], "index out of range"),  # the #1 reported problem (6.3)
    ("asInt('x') > 0", 0.0, "invalid syntax"),
    ("asFloat(true) > 0", 0.0, "not supported"),
    ("1 % 0 == 0", 0.0, "divide by zero"),
    ("'a' matches '('", 0.0, "regular expression"),
    ("result[0] + 1", [1.0], "expected bool"),  # a condition must be a bool
]


@pytest.mark.parametrize(("source", "result", "message"), RUNTIME_ERRORS)
def test_runtime_errors_raise(source: str, result: condition.Value, message: str) -> None:
    with pytest.raises(ConditionError, match=message):
        evaluate(source, result)


TYPE_ERRORS = [
    ("result >= 0", [0.5]),  # vector vs scalar confusion (notes item 2)
    ("len(result) == 0 || result < 1", []),  # compile error even where short-circuit skips it
    ("result[0] < 'a'", [1.0]),
    ("len(result)", 1.0),
    ("result[0] && true", [1.0]),
    ("isNaN(result)", [1.0]),
    ("result[0.5] > 1", [1.0]),
    ("1 < 2 < 3", 0.0),
    ("2.5 % 2 == 1", 0.0),
    ("all(result, {# + 1})", [1.0]),
]


@pytest.mark.parametrize(("source", "result"), TYPE_ERRORS)
def test_type_errors_follow_the_result_type(source: str, result: condition.Value) -> None:
    with pytest.raises(ConditionTypeError):
        evaluate(source, result)


UNSUPPORTED = [
    ("result.value > 1", "member access"),
    ("result?.x", "nil-safe"),
    ("result ?? 1", "??"),
    ("result[1:] == []", "slices"),
    ("1..3", "ranges"),
    ("filter(result, {# > 1})", "unsupported function 'filter'"),
    ("__import__('os')", "unsupported function '__import__'"),
    ("__import__('os').system('true')", "member access"),
    ("exec('1')", "unsupported function 'exec'"),
    ("foo > 1", "unknown name 'foo'"),
    ("# > 1", "only allowed inside a predicate"),
    ("{a: 1}", "map literals"),
    ("result[0] <", "unexpected token, found end of expression"),
    ("(result", "expected ')'"),
    ("len(result, 1)", "takes 1 argument"),
    ("1 & 2", "bitwise"),
    ("`raw`", "raw strings"),
    ("'open", "unterminated string"),
    ("result[0] < 0.2 result", "unexpected token"),
    ("", "empty condition"),
]


@pytest.mark.parametrize(("source", "message"), UNSUPPORTED)
def test_unsupported_syntax_is_a_clear_error(source: str, message: str) -> None:
    with pytest.raises(ConditionSyntaxError, match=re.escape(message)):
        parse(source)


# Table 6.1: how the two conditions combine.
COMBINE = [
    ("", "", [0.5], MeasurementPhase.SUCCESSFUL),
    ("result[0] < 1", "", [0.5], MeasurementPhase.SUCCESSFUL),
    ("result[0] < 1", "", [2.0], MeasurementPhase.FAILED),
    ("", "result[0] > 1", [2.0], MeasurementPhase.FAILED),
    ("", "result[0] > 1", [0.5], MeasurementPhase.SUCCESSFUL),
    ("result[0] < 1", "result[0] > 1", [0.5], MeasurementPhase.SUCCESSFUL),
    ("result[0] < 1", "result[0] > 1", [2.0], MeasurementPhase.FAILED),
    ("result[0] > 0", "result[0] > 1", [2.0], MeasurementPhase.FAILED),  # failure wins
    ("result[0] < 1", "result[0] > 1", [1.0], MeasurementPhase.INCONCLUSIVE),  # both false
    # NaN (6.3): Failed with a success-only condition, Inconclusive with both.
    ("result[0] <= 0.01", "", [NAN], MeasurementPhase.FAILED),
    ("result[0] <= 0.01", "result[0] > 0.01", [NAN], MeasurementPhase.INCONCLUSIVE),
    # empty vector with the spec's guarded conditions (12.2): Inconclusive, not Error.
    ("len(result) > 0 && result[0] <= 0.01", "len(result) > 0 && result[0] > 0.01", [],
     MeasurementPhase.INCONCLUSIVE),
]  # fmt: skip


@pytest.mark.parametrize(("success", "failure", "result", "phase"), COMBINE)
def test_success_and_failure_conditions_combine_as_table_6_1(
    success: str, failure: str, result: condition.Value, phase: MeasurementPhase
) -> None:
    assert evaluate_result(result, success, failure) is phase


def test_evaluation_errors_name_the_condition_and_no_data() -> None:
    with pytest.raises(ConditionError) as info:
        evaluate_result([], "result[0] <= 0.01")
    assert str(info.value) == (
        'could not evaluate successCondition "result[0] <= 0.01": metric result is nil or '
        "empty: no data returned from the metric provider"
    )
    with pytest.raises(ConditionError, match='failureCondition "result >= 1": invalid operation'):
        evaluate_result([0.5], "", "result >= 1")
    # A compile error keeps its own text even on an empty vector.
    with pytest.raises(ConditionError, match="mismatched types"):
        evaluate_result([], "len(result) == 0 || result < 1")


def test_the_module_never_hands_text_to_python() -> None:
    source = Path(condition.__file__).read_text()
    for forbidden in ("eval(", "exec(", "compile(", "__import__", "ast."):
        assert forbidden not in source.replace("_eval(", "").replace("re.compile(", "")
