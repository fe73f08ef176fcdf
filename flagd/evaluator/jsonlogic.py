"""A JsonLogic compiler: a rule (decoded JSON) becomes a tree of Python closures, once.

Evaluating the result never looks at the rule's JSON again: constants are folded, `var`
paths are split ahead of time and operators are bound directly. Semantics follow the
engine flagd-core uses (`panzi-json-logic` 1.0.1; see ``coercion``) with three deliberate
differences:

- an unknown operator anywhere in the rule (an unexpanded `{"$ref": ...}` included) fails
  compilation, so the flag evaluates to PARSE_ERROR even on paths that never reach it
  (the reference only fails when evaluation reaches it);
- `log` is not an operator: it is outside flagd's operator set and would write to stdout;
- `reduce` evaluates its initial value like JavaScript and Go do (the reference engine
  uses the raw JSON as the accumulator).

Custom operators (`fractional`, `sem_ver`, ...) are registered by name as ``OpBuilder``s:
they receive the compiled argument nodes and return a node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Literal

from flagd.evaluator.coercion import (
    NAN,
    less_equal,
    less_than,
    loose_equals,
    to_number,
    to_string,
    truthy,
)

Evaluator = Callable[[Any], Any]
"""A compiled rule: takes the data (the context, or the item inside map/filter/...)."""

FractionalVersion = Literal["v2", "v3"]


class RuleError(ValueError):
    """The rule cannot be compiled (unknown operator); the flag evaluates to PARSE_ERROR."""


class Node:
    """One compiled sub-rule; ``value`` is meaningful only when ``is_const``."""

    __slots__ = ("fn", "is_const", "prop", "value")

    def __init__(self, fn: Evaluator, is_const: bool = False, value: Any = None) -> None:
        self.fn = fn
        self.is_const = is_const
        self.value = value
        # Set for `{"var": "<prop>"}` (one step, no default): with dict data the node is
        # exactly `data.get(prop)`, so parents inline it instead of calling ``fn``.
        self.prop: str | None = None


def const(value: Any) -> Node:
    """A node that always yields ``value`` without looking at the data."""
    return Node(lambda _data: value, True, value)


NULL = const(None)


def discard(nodes: list[Node], result: Node = NULL) -> Node:
    """``result``, after evaluating ``nodes`` for their errors (arguments are always evaluated)."""
    fns = tuple(node.fn for node in nodes if not node.is_const)
    if not fns:
        return result
    rf = result.fn

    def evaluate_then(data: Any) -> Any:
        for fn in fns:
            fn(data)
        return rf(data)

    return Node(evaluate_then)


class CompileState:
    """What a custom operator may need to know about the rule being compiled."""

    __slots__ = ("depth", "flag_key", "fractional", "needs_flagd")

    def __init__(self, flag_key: str, fractional: FractionalVersion) -> None:
        self.flag_key = flag_key
        self.fractional: FractionalVersion = fractional
        # >0 inside map/filter/reduce/all/some/none, where the data is the current item.
        self.depth = 0
        # The rule reads `$flagd` (or the whole context) at the top level, so the evaluator
        # must build the enriched context instead of passing the caller's dict through.
        self.needs_flagd = False


OpBuilder = Callable[[list[Node], CompileState], Node]


# --------------------------------------------------------------------------- var


Step = tuple[str, int | None]


@lru_cache(maxsize=512)
def _steps(path: str) -> tuple[Step, ...]:
    """Split a dotted path; each step keeps its list index (None when not a valid index)."""
    out: list[Step] = []
    for prop in path.split("."):
        index: int | None
        try:
            index = int(prop, 10)
        except ValueError:
            index = None
        else:
            if prop != str(index) or index < 0:
                index = None
        out.append((prop, index))
    return tuple(out)


def _walk(data: Any, steps: tuple[Step, ...], default: Any) -> Any:
    for prop, index in steps:
        if isinstance(data, dict):
            data = data.get(prop)
        elif isinstance(data, (list, str)):
            if prop == "length":  # JavaScript's .length, even mid-path
                return len(data)
            if index is None or index >= len(data):
                return default
            data = data[index]
        else:
            return default
    return default if data is None else data


def _var_number(data: Any, key: int | float, default: Any) -> Any:
    if isinstance(data, (list, str)):
        try:
            index = int(key)  # an infinite key raises OverflowError, as in the reference
        except ValueError:
            return default
        if index != key or index < 0 or index >= len(data):
            return default
        return data[index]
    if isinstance(data, dict):
        data = data.get(key)
        if data is None:
            return default
        return _walk(data, _steps(to_string(key)), default)
    return default


def get_var(data: Any, key: Any, default: Any = None) -> Any:
    """`{"var": [key, default]}` for a key known only at evaluation time."""
    if key is None or (isinstance(key, str) and key == ""):
        return data
    if isinstance(key, (int, float)):
        return _var_number(data, key, default)
    return _walk(data, _steps(to_string(key)), default)


def _missing_keys(data: Any, args: list[Any]) -> list[Any]:
    keys = args[0] if args and isinstance(args[0], list) else args
    out = []
    for key in keys:
        value = get_var(data, key)
        if value is None or (isinstance(value, str) and value == ""):
            out.append(key)
    return out


def _missing_some(data: Any, need: Any = 0, keys: Any = None, *_: Any) -> list[Any]:
    if not isinstance(keys, list):
        return []
    missing = _missing_keys(data, [keys])
    if len(keys) - len(missing) >= to_number(need):
        return []
    return missing


# --------------------------------------------------------------------------- plain operators
# Each takes already-evaluated arguments; missing ones default to None like the reference.


def _op_eq(a: Any = None, b: Any = None, *_: Any) -> bool:
    return loose_equals(a, b)


def _op_ne(a: Any = None, b: Any = None, *_: Any) -> bool:
    return not loose_equals(a, b)


def _op_strict_eq(a: Any = None, b: Any = None, *_: Any) -> bool:
    return bool(a == b)


def _op_strict_ne(a: Any = None, b: Any = None, *_: Any) -> bool:
    return bool(a != b)


def _op_lt(a: Any = None, b: Any = None, c: Any = None, *_: Any) -> bool:
    if c is None:
        return less_than(a, b)
    return less_than(a, b) and less_than(b, c)


def _op_le(a: Any = None, b: Any = None, c: Any = None, *_: Any) -> bool:
    if c is None:
        return less_equal(a, b)
    return less_equal(a, b) and less_equal(b, c)


def _op_gt(a: Any = None, b: Any = None, c: Any = None, *_: Any) -> bool:
    if c is None:
        return less_than(b, a)
    return less_than(b, a) and less_than(c, b)


def _op_ge(a: Any = None, b: Any = None, c: Any = None, *_: Any) -> bool:
    if c is None:
        return less_equal(b, a)
    return less_equal(b, a) and less_equal(c, b)


def _op_not(a: Any = None, *_: Any) -> bool:
    return not truthy(a)


def _op_truthy(a: Any = None, *_: Any) -> bool:
    return truthy(a)


def _op_add(*args: Any) -> int | float:
    total: int | float = 0
    for arg in args:
        total += to_number(arg)
    return total


def _op_mul(*args: Any) -> int | float:
    product: int | float = 1
    for arg in args:
        product *= to_number(arg)
    return product


def _op_sub(a: Any = None, b: Any = None, *_: Any) -> int | float:
    if b is None:
        return -to_number(a)
    return to_number(a) - to_number(b)


def _op_div(a: Any = None, b: Any = None, *_: Any) -> int | float:
    # Division by zero raises, as in the reference: the flag evaluates to an engine error.
    return to_number(a) / to_number(b)


def _op_mod(a: Any = None, b: Any = None, *_: Any) -> int | float:
    return to_number(a) % to_number(b)


def _op_min(*args: Any) -> int | float:
    return min(to_number(arg) for arg in args) if args else NAN


def _op_max(*args: Any) -> int | float:
    return max(to_number(arg) for arg in args) if args else NAN


def _op_cat(*args: Any) -> str:
    return "".join(to_string(arg) for arg in args)


def _op_in(needle: Any = None, haystack: Any = None, *_: Any) -> bool:
    if isinstance(haystack, list):
        return needle in haystack
    if isinstance(haystack, str):
        return to_string(needle) in haystack
    return False


def _op_merge(*args: Any) -> list[Any]:
    items: list[Any] = []
    for arg in args:
        if isinstance(arg, list):
            items.extend(arg)
        else:
            items.append(arg)
    return items


def _op_substr(string: Any = None, index: Any = None, length: Any = None, *_: Any) -> str:
    text = to_string(string)
    start = to_number(index)
    size = len(text)
    if start != start:  # NaN
        begin = 0
    elif start < 0:
        begin = 0 if -start >= size else size - int(-start)
    else:
        begin = min(int(start), size)
    if length is None:
        end = size
    else:
        count = to_number(length)
        if count != count:
            end = begin
        elif int(count) < 0:
            end = max(size + int(count), begin)
        else:
            end = begin + int(count)
    return text[begin:end]


_PLAIN: dict[str, Callable[..., Any]] = {
    "==": _op_eq,
    "!=": _op_ne,
    "===": _op_strict_eq,
    "!==": _op_strict_ne,
    "<": _op_lt,
    "<=": _op_le,
    ">": _op_gt,
    ">=": _op_ge,
    "!": _op_not,
    "!!": _op_truthy,
    "+": _op_add,
    "*": _op_mul,
    "-": _op_sub,
    "/": _op_div,
    "%": _op_mod,
    "min": _op_min,
    "max": _op_max,
    "cat": _op_cat,
    "in": _op_in,
    "merge": _op_merge,
    "substr": _op_substr,
}

_HASHABLE_SCALARS = (str, int, float, type(None))


def _membership(members: list[Any]) -> Callable[..., bool]:
    """`in` against a constant list: a set lookup, falling back to the list for odd needles."""
    table = frozenset(members)

    def op_in_const(needle: Any = None, *_: Any) -> bool:
        try:
            return needle in table
        except TypeError:  # unhashable needle (list/object): compare like the list would
            return needle in members

    return op_in_const


def _gt(a: Any, b: Any) -> bool:
    return less_than(b, a)


def _ge(a: Any, b: Any) -> bool:
    return less_equal(b, a)


def _ne(a: Any, b: Any) -> bool:
    return not loose_equals(a, b)


# Two-argument forms without the reference's optional-argument handling.
_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "==": loose_equals,
    "!=": _ne,
    "<": less_than,
    "<=": less_equal,
    ">": _gt,
    ">=": _ge,
}


def _unary(fn: Callable[..., Any], arg: Node) -> Node:
    f0, prop = arg.fn, arg.prop
    if prop is not None:
        return Node(lambda data: fn(data.get(prop) if type(data) is dict else f0(data)))
    return Node(lambda data: fn(f0(data)))


def _binary(op: str, fn: Callable[[Any, Any], Any], first: Node, second: Node) -> Node:
    """A two-argument operator, specialised for the usual `{"op": [{"var": x}, constant]}`."""
    if not (first.is_const or second.is_const):
        f0, f1 = first.fn, second.fn
        return Node(lambda data: fn(f0(data), f1(data)))
    var_first = second.is_const
    var, constant = (first, second.value) if var_first else (second, first.value)
    get, prop = var.fn, var.prop
    if op in ("==", "!=") and type(constant) is str:
        equal = op == "=="

        def compare_text(data: Any) -> Any:
            value = data.get(prop) if prop is not None and type(data) is dict else get(data)
            if type(value) is str:
                return (value == constant) is equal
            return fn(value, constant) if var_first else fn(constant, value)

        return Node(compare_text)
    if prop is not None:
        if var_first:
            return Node(
                lambda data: fn(data.get(prop) if type(data) is dict else get(data), constant)
            )
        return Node(lambda data: fn(constant, data.get(prop) if type(data) is dict else get(data)))
    if var_first:
        return Node(lambda data: fn(get(data), constant))
    return Node(lambda data: fn(constant, get(data)))


def _cat(nodes: list[Node]) -> Node:
    """`cat` with constant parts stringified once."""
    parts: list[tuple[bool, Any]] = [
        (True, to_string(node.value)) if node.is_const else (False, node.fn) for node in nodes
    ]
    if len(parts) == 2 and parts[0][0] and not parts[1][0]:
        prefix: str = parts[0][1]
        get = parts[1][1]

        def cat_suffix(data: Any) -> str:
            value = get(data)
            return prefix + (value if type(value) is str else to_string(value))

        return Node(cat_suffix)

    def cat_all(data: Any) -> str:
        out = []
        for is_text, part in parts:
            if is_text:
                out.append(part)
            else:
                value = part(data)
                out.append(value if type(value) is str else to_string(value))
        return "".join(out)

    return Node(cat_all)


# --------------------------------------------------------------------------- compiler


class RuleCompiler:
    """Compiles one rule. Not reusable: ``state`` describes the rule just compiled."""

    def __init__(
        self,
        custom_ops: Mapping[str, OpBuilder],
        *,
        flag_key: str = "",
        fractional: FractionalVersion = "v3",
    ) -> None:
        self.custom_ops = custom_ops
        self.state = CompileState(flag_key, fractional)
        self._special: dict[str, Callable[[list[Any]], Node]] = {
            "var": self._var,
            "missing": self._missing,
            "missing_some": self._missing_some,
            "if": self._if,
            "?:": self._if,
            "and": self._and,
            "or": self._or,
            "map": self._map,
            "filter": self._filter,
            "reduce": self._reduce,
            "all": self._all,
            "some": self._some,
            "none": self._none,
        }

    def compile(self, rule: Any) -> Node:
        """Compile ``rule``; raises RuleError for an unknown operator."""
        return self._compile(rule)

    def _compile(self, logic: Any) -> Node:
        if isinstance(logic, list):
            return self._list(logic)
        if not isinstance(logic, dict) or len(logic) != 1:
            return const(logic)  # scalars and objects with 0 or 2+ keys are data
        ((op, raw),) = logic.items()
        args = raw if isinstance(raw, list) else [raw]
        special = self._special.get(op)
        if special is not None:
            return special(args)
        plain = _PLAIN.get(op)
        if plain is not None:
            return self._call(op, plain, [self._compile(arg) for arg in args])
        builder = self.custom_ops.get(op)
        if builder is not None:
            return builder([self._compile(arg) for arg in args], self.state)
        raise RuleError(f"unknown JsonLogic operator {op!r}")

    def _nested(self, logic: Any) -> Node:
        """Compile a sub-rule that runs with each list item as its data."""
        self.state.depth += 1
        try:
            return self._compile(logic)
        finally:
            self.state.depth -= 1

    def _list(self, items: list[Any]) -> Node:
        nodes = [self._compile(item) for item in items]
        if all(node.is_const for node in nodes):
            return const([node.value for node in nodes])
        fns = tuple(node.fn for node in nodes)
        return Node(lambda data: [fn(data) for fn in fns])

    def _call(self, op: str, fn: Callable[..., Any], nodes: list[Node]) -> Node:
        if all(node.is_const for node in nodes):
            try:
                return const(fn(*[node.value for node in nodes]))
            except Exception:
                pass  # e.g. a constant division by zero: fail at evaluation, like the reference
        if (
            op == "in"
            and len(nodes) == 2
            and nodes[1].is_const
            and isinstance(nodes[1].value, list)
            and all(type(m) in _HASHABLE_SCALARS or type(m) is bool for m in nodes[1].value)
        ):
            return _unary(_membership(nodes[1].value), nodes[0])
        if op == "cat":
            return _cat(nodes)
        if len(nodes) == 1:
            return _unary(fn, nodes[0])
        if len(nodes) == 2:
            return _binary(op, _BINARY.get(op, fn), nodes[0], nodes[1])
        if len(nodes) == 3:
            f0, f1, f2 = (node.fn for node in nodes)
            return Node(lambda data: fn(f0(data), f1(data), f2(data)))
        fns = tuple(node.fn for node in nodes)
        return Node(lambda data: fn(*[f(data) for f in fns]))

    # ---- data access

    def _reads_context(self, key: Any) -> None:
        """Note a top-level read that can see `$flagd` or the whole context."""
        if self.state.depth:
            return
        whole = key is None or (isinstance(key, str) and key == "")
        if whole or (
            not isinstance(key, (int, float)) and to_string(key).split(".")[0] == "$flagd"
        ):
            self.state.needs_flagd = True

    def _var(self, args: list[Any]) -> Node:
        nodes = [self._compile(arg) for arg in args]
        node = self._var_node(nodes[:2])
        return discard(nodes[2:], node) if len(nodes) > 2 else node

    def _var_node(self, nodes: list[Node]) -> Node:
        key_node = nodes[0] if nodes else NULL
        default_node = nodes[1] if len(nodes) > 1 else NULL
        if not key_node.is_const:
            if not self.state.depth:
                self.state.needs_flagd = True
            kf, df = key_node.fn, default_node.fn
            return Node(lambda data: get_var(data, kf(data), df(data)))

        key = key_node.value
        if key is None or (isinstance(key, str) and key == ""):
            self._reads_context(key)
            return Node(lambda data: data)
        if isinstance(key, (int, float)):
            df = default_node.fn
            return Node(lambda data: _var_number(data, key, df(data)))

        path = to_string(key)
        steps = _steps(path)
        if not self.state.depth and steps[0][0] == "$flagd":
            if len(steps) > 1 and steps[1][0] == "flagKey" and default_node.is_const:
                # `$flagd` always overwrites the caller's, so the flag key is a constant.
                flagd = {"$flagd": {"flagKey": self.state.flag_key}}
                return const(_walk(flagd, steps, default_node.value))
            self.state.needs_flagd = True

        if not default_node.is_const:
            df = default_node.fn
            return Node(lambda data: _walk(data, steps, df(data)))
        default = default_node.value
        if len(steps) == 1:
            prop = steps[0][0]

            def var_top(data: Any) -> Any:
                if type(data) is dict:
                    value = data.get(prop)
                    return default if value is None else value
                return _walk(data, steps, default)

            node = Node(var_top)
            if default is None:
                node.prop = prop
            return node
        if len(steps) == 2:
            outer, inner = steps[0][0], steps[1][0]

            def var_nested(data: Any) -> Any:
                if type(data) is dict:
                    child = data.get(outer)
                    if type(child) is dict:
                        value = child.get(inner)
                        return default if value is None else value
                return _walk(data, steps, default)

            return Node(var_nested)
        return Node(lambda data: _walk(data, steps, default))

    def _missing(self, args: list[Any]) -> Node:
        nodes = [self._compile(arg) for arg in args]
        self._keys_read(nodes, list_first=True)
        fns = tuple(node.fn for node in nodes)
        return Node(lambda data: _missing_keys(data, [fn(data) for fn in fns]))

    def _missing_some(self, args: list[Any]) -> Node:
        nodes = [self._compile(arg) for arg in args]
        if len(nodes) > 1:
            self._keys_read([nodes[1]], list_first=True)
        fns = tuple(node.fn for node in nodes)
        return Node(lambda data: _missing_some(data, *[fn(data) for fn in fns]))

    def _keys_read(self, nodes: list[Node], *, list_first: bool) -> None:
        if self.state.depth:
            return
        if not all(node.is_const for node in nodes):
            self.state.needs_flagd = True
            return
        values = [node.value for node in nodes]
        keys = values[0] if list_first and values and isinstance(values[0], list) else values
        for key in keys:
            self._reads_context(key)

    # ---- control flow

    def _if(self, args: list[Any]) -> Node:
        nodes = [self._compile(arg) for arg in args]
        if not nodes:
            return NULL
        if len(nodes) == 1:
            return nodes[0]
        otherwise = nodes[-1] if len(nodes) % 2 else NULL
        branches: list[tuple[Node, Node]] = []
        for i in range(0, len(nodes) - 1, 2):
            cond, then = nodes[i], nodes[i + 1]
            if cond.is_const:
                if truthy(cond.value):
                    otherwise = then
                    break
                continue
            branches.append((cond, then))
        if not branches:
            return otherwise
        else_fn = otherwise.fn
        if len(branches) == 1:
            cf, tf = branches[0][0].fn, branches[0][1].fn

            def if_one(data: Any) -> Any:
                test = cf(data)
                if test is True or (test is not False and truthy(test)):
                    return tf(data)
                return else_fn(data)

            return Node(if_one)
        pairs = tuple((cond.fn, then.fn) for cond, then in branches)

        def if_chain(data: Any) -> Any:
            for cf, tf in pairs:
                if truthy(cf(data)):
                    return tf(data)
            return else_fn(data)

        return Node(if_chain)

    def _and(self, args: list[Any]) -> Node:
        nodes = [self._compile(arg) for arg in args]
        if not nodes:
            return NULL
        if len(nodes) == 1:
            return nodes[0]
        fns = tuple(node.fn for node in nodes)
        if len(fns) == 2:
            f0, f1 = fns

            def and_two(data: Any) -> Any:
                first = f0(data)
                if first is False or not truthy(first):
                    return first
                return f1(data)

            return Node(and_two)

        def and_all(data: Any) -> Any:
            value = None
            for fn in fns:
                value = fn(data)
                if not truthy(value):
                    return value
            return value

        return Node(and_all)

    def _or(self, args: list[Any]) -> Node:
        nodes = [self._compile(arg) for arg in args]
        if not nodes:
            return NULL
        if len(nodes) == 1:
            return nodes[0]
        fns = tuple(node.fn for node in nodes)

        def or_any(data: Any) -> Any:
            value = None
            for fn in fns:
                value = fn(data)
                if value is True or truthy(value):
                    return value
            return value

        return Node(or_any)

    # ---- iteration: the sub-rule sees each item as its data

    def _map(self, args: list[Any]) -> Node:
        if not args:
            return Node(lambda _data: [])
        items = self._compile(args[0]).fn
        sub = self._nested(args[1]).fn if len(args) > 1 else NULL.fn

        def map_items(data: Any) -> list[Any]:
            values = items(data)
            if not isinstance(values, list):
                return []
            return [sub(item) for item in values]

        return Node(map_items)

    def _filter(self, args: list[Any]) -> Node:
        if len(args) < 2:
            return Node(lambda _data: [])
        items = self._compile(args[0]).fn
        sub = self._nested(args[1]).fn

        def filter_items(data: Any) -> list[Any]:
            values = items(data)
            if not isinstance(values, list):
                return []
            return [item for item in values if truthy(sub(item))]

        return Node(filter_items)

    def _reduce(self, args: list[Any]) -> Node:
        if not args:
            return NULL
        items = self._compile(args[0]).fn
        sub = self._nested(args[1]).fn if len(args) > 1 else NULL.fn
        initial = self._compile(args[2]).fn if len(args) > 2 else NULL.fn

        def reduce_items(data: Any) -> Any:
            values = items(data)
            accumulator = initial(data)
            if not isinstance(values, list):
                return accumulator
            for item in values:
                accumulator = sub({"current": item, "accumulator": accumulator})
            return accumulator

        return Node(reduce_items)

    def _all(self, args: list[Any]) -> Node:
        if len(args) < 2:
            return const(False)
        items = self._compile(args[0]).fn
        sub = self._nested(args[1]).fn

        def all_items(data: Any) -> bool:
            values = items(data)
            # JsonLogic: "all" of an empty list is false.
            if not isinstance(values, list) or not values:
                return False
            return all(truthy(sub(item)) for item in values)

        return Node(all_items)

    def _some(self, args: list[Any]) -> Node:
        if len(args) < 2:
            return const(False)
        items = self._compile(args[0]).fn
        sub = self._nested(args[1]).fn

        def some_items(data: Any) -> bool:
            values = items(data)
            if not isinstance(values, list):
                return False
            return any(truthy(sub(item)) for item in values)

        return Node(some_items)

    def _none(self, args: list[Any]) -> Node:
        if len(args) < 2:
            return const(True)
        items = self._compile(args[0]).fn
        sub = self._nested(args[1]).fn

        def no_items(data: Any) -> bool:
            values = items(data)
            if not isinstance(values, list):
                return True
            return not any(truthy(sub(item)) for item in values)

        return Node(no_items)


def compile_rule(
    rule: Any,
    custom_ops: Mapping[str, OpBuilder],
    *,
    flag_key: str = "",
    fractional: FractionalVersion = "v3",
) -> tuple[Node, CompileState]:
    """Compile ``rule``; returns the root node and what the rule needs from the context."""
    compiler = RuleCompiler(custom_ops, flag_key=flag_key, fractional=fractional)
    return compiler.compile(rule), compiler.state
