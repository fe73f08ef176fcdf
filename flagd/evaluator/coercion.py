"""JsonLogic's loose typing: truthiness, number/string coercion, `==` and ordering.

Each function reproduces the reference Python engine used by flagd-core
(`panzi-json-logic` 1.0.1, `json_logic/builtins.py`) value for value, including where that
engine differs from JavaScript (e.g. `"" == 0` is false, `%` follows Python's sign rule).
"""

from __future__ import annotations

from math import isnan
from typing import Any

NAN = float("nan")
_JS_INFINITIES = frozenset(("inf", "-inf", "+inf"))


def truthy(value: Any) -> bool:
    """JsonLogic truthiness: null, false, 0, NaN, "" and [] are false; objects are true."""
    if value is True:
        return True
    if value is False or value is None:
        return False
    if isinstance(value, float):
        return not (value != value or value == 0.0)
    if isinstance(value, (str, int, list)):
        return bool(value)
    return True


def to_number(value: Any) -> int | float:
    """Numeric coercion: null -> 0, [] -> 0, [x] -> x, bad strings and objects -> NaN."""
    if isinstance(value, (int, float)):
        return value
    if value is None:
        return 0
    if isinstance(value, list):
        if not value:
            return 0
        if len(value) > 1:
            return NAN
        return to_number(value[0])
    if isinstance(value, dict):
        return NAN
    if isinstance(value, str):
        # Python's float() takes "inf"; JavaScript's Number() does not.
        if value.strip().lower() in _JS_INFINITIES:
            return NAN
        try:
            return float(value)
        except ValueError:
            return NAN
    return NAN


def to_string(value: Any) -> str:
    """String coercion: floats as `%.15g`, null as "null", lists comma-joined, objects opaque."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.15g}"
    if isinstance(value, int):
        # bool is an int here too: the reference gives "True"/"False", not "true"/"false".
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return ",".join(to_string(item) for item in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def loose_equals(a: Any, b: Any) -> bool:
    """`==`: same type compares directly (lists/objects by identity), else coerce."""
    if type(a) is type(b):
        if isinstance(a, (list, dict)):
            return a is b
        return bool(a == b)
    if isinstance(a, (int, float)):
        return bool(a == to_number(b))
    if isinstance(b, (int, float)):
        return bool(to_number(a) == b)
    if a is None or b is None:
        return False
    if isinstance(a, str):
        if isinstance(b, bool):
            return to_number(a) == to_number(b)
        if isinstance(b, (list, dict)):
            return a == to_string(b)
        return False
    if isinstance(a, bool):
        return to_number(a) == to_number(b)
    if isinstance(a, (list, dict)):
        if isinstance(b, (list, dict)):
            return False
        if isinstance(b, str):
            return to_string(a) == b
        if isinstance(b, bool):
            return to_number(a) == to_number(b)
    # The reference raises TypeError here; no pair of JSON values gets this far.
    return False


def less_than(a: Any, b: Any) -> bool:
    """`<`: numeric if either side is a number, else string if either is a string."""
    if isinstance(a, (int, float)):
        return bool(a < to_number(b))
    if isinstance(b, (int, float)):
        return bool(to_number(a) < b)
    if isinstance(a, str):
        return a < to_string(b)
    if isinstance(b, str):
        return to_string(a) < b
    return to_number(a) < to_number(b)


def less_equal(a: Any, b: Any) -> bool:
    """`<=` with the coercion rules of `less_than`."""
    if isinstance(a, (int, float)):
        return bool(a <= to_number(b))
    if isinstance(b, (int, float)):
        return bool(to_number(a) <= b)
    if isinstance(a, str):
        return a <= to_string(b)
    if isinstance(b, str):
        return to_string(a) <= b
    return to_number(a) <= to_number(b)


def is_nan(value: int | float) -> bool:
    """True for a float NaN (ints are never NaN)."""
    return isinstance(value, float) and isnan(value)
