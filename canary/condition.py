"""The condition language of successCondition/failureCondition (spec 6): a safe subset of expr.

Parsed by a small precedence-climbing parser that mirrors expr's grammar (antonmedv/expr
v1.15 `parser/parser.go`: same operator table, precedences and associativity), type-checked
against the type of ``result`` the way expr compiles with a typed environment, then evaluated by
walking the tree. Nothing is ever handed to Python's eval/exec/compile.

Supported (spec 6.2): int/float/string literals, ``true false nil``, ``[a, b]``, ``result``,
``< <= > >= == !=``, ``&& || !`` and ``and or not``, ``+ - * / % **``, ``result[i]``,
``c ? a : b``, ``in`` / ``not in``, ``matches contains startsWith endsWith``, ``len``,
``all any none one (list, {# ...})``, ``isNaN isInf asInt asFloat isNil default``.
Anything else (member access, slices, ``??``, other builtins) is a ConditionSyntaxError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

__all__ = [
    "ConditionError",
    "ConditionSyntaxError",
    "ConditionTypeError",
    "Expression",
    "MeasurementPhase",
    "Value",
    "evaluate",
    "evaluate_result",
    "parse",
]

Value = bool | int | float | str | list["Value"] | None


class ConditionError(Exception):
    """A condition could not be compiled or evaluated (the measurement becomes Error, 6.1)."""


class ConditionSyntaxError(ConditionError):
    """The condition text is not in the supported language."""


class ConditionTypeError(ConditionError):
    """The condition does not type-check against the value's type (an expr compile error)."""


class MeasurementPhase(StrEnum):
    """Outcome of evaluating a value against the two conditions (6.1)."""

    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


# ----------------------------------------------------------------------------- lexer

_WORD_OPS = {"and", "or", "not", "in", "matches", "contains", "startsWith", "endsWith"}
_SYMBOLS = ("**", "==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", "/", "%", "!")
_PUNCT = ("?", ":", ",", "(", ")", "[", "]", "{", "}", "#")
# Recognised so the error names them, instead of "unexpected character".
_UNSUPPORTED = {
    "?.": "nil-safe member access",
    "??": "the ?? operator",
    "..": "ranges",
    ".": "member access",
    "|": "pipes",
    "&": "bitwise operators",
    "^": "the ^ operator",
    "~": "the ~ operator",
    "`": "raw strings",
}
_NUMBER = re.compile(r"\d[\d_]*(\.\d+)?([eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


@dataclass(frozen=True)
class _Token:
    kind: str  # "num", "str", "name", "op", "punct", "end"
    text: str
    pos: int
    value: Value = None


def _lex(src: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(src):
        c = src[i]
        if c.isspace():
            i += 1
            continue
        if c.isdigit():
            m = _NUMBER.match(src, i)
            assert m is not None
            text = m.group(0).replace("_", "")
            is_float = bool(m.group(1) or m.group(2))
            tokens.append(_Token("num", m.group(0), i, float(text) if is_float else int(text)))
            i = m.end()
            continue
        if c in "\"'":
            j, chars = i + 1, []
            while True:
                if j >= len(src):
                    raise ConditionSyntaxError(f"unterminated string at {i}")
                if src[j] == c:
                    break
                if src[j] == "\\":
                    j += 1
                    esc = src[j] if j < len(src) else ""
                    if esc == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", src[j + 1 : j + 5]):
                        chars.append(chr(int(src[j + 1 : j + 5], 16)))
                        j += 5
                        continue
                    if esc not in _ESCAPES:
                        raise ConditionSyntaxError(f"invalid escape \\{esc} at {j - 1}")
                    chars.append(_ESCAPES[esc])
                else:
                    chars.append(src[j])
                j += 1
            tokens.append(_Token("str", src[i : j + 1], i, "".join(chars)))
            i = j + 1
            continue
        m = _IDENT.match(src, i)
        if m:
            word = m.group(0)
            tokens.append(_Token("op" if word in _WORD_OPS else "name", word, i))
            i = m.end()
            continue
        sym = next((s for s in _SYMBOLS if src.startswith(s, i)), None)
        if sym:
            tokens.append(_Token("op", sym, i))
            i += len(sym)
            continue
        for bad, what in _UNSUPPORTED.items():  # after the symbols: "&&" is fine, "&" is not
            if src.startswith(bad, i):
                raise ConditionSyntaxError(f"unsupported syntax {bad!r} at {i}: {what}")
        if c in _PUNCT:
            tokens.append(_Token("punct", c, i))
            i += 1
            continue
        raise ConditionSyntaxError(f"unexpected character {c!r} at {i}")
    # expr lexes "not in" as one operator.
    merged: list[_Token] = []
    for tok in tokens:
        if tok.text == "in" and merged and merged[-1].text == "not" and merged[-1].kind == "op":
            prev = merged.pop()
            tok = _Token("op", "not in", prev.pos)
        merged.append(tok)
    merged.append(_Token("end", "", len(src)))
    return merged


# ----------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class _Lit:
    value: Value


@dataclass(frozen=True)
class _Name:
    name: str


@dataclass(frozen=True)
class _Elem:
    """``#``: the current element inside a predicate closure."""


@dataclass(frozen=True)
class _Array:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Unary:
    op: str
    operand: _Node


@dataclass(frozen=True)
class _Binary:
    op: str
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _Cond:
    test: _Node
    then: _Node
    other: _Node


@dataclass(frozen=True)
class _Index:
    target: _Node
    index: _Node


@dataclass(frozen=True)
class _Call:
    name: str
    args: tuple[_Node, ...]


@dataclass(frozen=True)
class _Predicate:
    name: str
    seq: _Node
    body: _Node


_Node = _Lit | _Name | _Elem | _Array | _Unary | _Binary | _Cond | _Index | _Call | _Predicate

# expr's tables (precedence, right-associative?); unary -/+ bind tighter than everything.
_BINARY = {
    "or": (10, False), "||": (10, False),
    "and": (15, False), "&&": (15, False),
    "==": (20, False), "!=": (20, False), "<": (20, False), ">": (20, False),
    "<=": (20, False), ">=": (20, False), "in": (20, False), "not in": (20, False),
    "matches": (20, False), "contains": (20, False),
    "startsWith": (20, False), "endsWith": (20, False),
    "+": (30, False), "-": (30, False),
    "*": (60, False), "/": (60, False), "%": (60, False),
    "**": (70, True),
}  # fmt: skip
_UNARY = {"not": 50, "!": 50, "-": 500, "+": 500}
_FUNCTIONS = {"len": 1, "isNaN": 1, "isInf": 1, "asInt": 1, "asFloat": 1, "isNil": 1, "default": 2}
_PREDICATES = {"all", "any", "none", "one"}
_NAMES = {"result"}


class _Parser:
    def __init__(self, src: str) -> None:
        self.tokens = _lex(src)
        self.i = 0
        self.depth = 0  # closure nesting: `#` is only valid inside {...}

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        if self.tok.text != text or self.tok.kind not in ("punct", "op"):
            raise self.error(f"expected {text!r}")
        self.advance()

    def error(self, what: str) -> ConditionSyntaxError:
        tok = self.tok
        found = "end of expression" if tok.kind == "end" else repr(tok.text)
        return ConditionSyntaxError(f"{what}, found {found} at {tok.pos}")

    def parse(self) -> _Node:
        node = self.expression(0)
        if self.tok.kind != "end":
            raise self.error("unexpected token")
        return node

    def expression(self, min_prec: int) -> _Node:
        left = self.primary()
        while self.tok.kind == "op" and self.tok.text in _BINARY:
            prec, right_assoc = _BINARY[self.tok.text]
            if prec < min_prec:
                break
            op = self.advance().text
            right = self.expression(prec if right_assoc else prec + 1)
            left = _Binary(op, left, right)
        # The ternary is only parsed at the outermost level of an expression, like expr.
        if min_prec == 0:
            while self.tok.text == "?" and self.tok.kind == "punct":
                self.advance()
                then = self.expression(0)
                self.expect(":")
                left = _Cond(left, then, self.expression(0))
        return left

    def primary(self) -> _Node:
        tok = self.tok
        if tok.kind == "op" and tok.text in _UNARY:
            self.advance()
            return self.postfix(_Unary(tok.text, self.expression(_UNARY[tok.text])))
        if tok.text == "(" and tok.kind == "punct":
            self.advance()
            node = self.expression(0)
            self.expect(")")
            return self.postfix(node)
        if tok.text == "#" and tok.kind == "punct":
            if self.depth == 0:
                raise self.error("'#' is only allowed inside a predicate closure {...}")
            self.advance()
            return self.postfix(_Elem())
        if tok.kind in ("num", "str"):
            self.advance()
            return self.postfix(_Lit(tok.value))
        if tok.text == "[" and tok.kind == "punct":
            self.advance()
            items: list[_Node] = []
            while not (self.tok.text == "]" and self.tok.kind == "punct"):
                if items:
                    self.expect(",")
                    if self.tok.text == "]":
                        break
                items.append(self.expression(0))
            self.expect("]")
            return self.postfix(_Array(tuple(items)))
        if tok.text == "{" and tok.kind == "punct":
            raise self.error("map literals are not supported")
        if tok.kind == "name":
            self.advance()
            return self.postfix(self.identifier(tok))
        raise self.error("unexpected token")

    def identifier(self, tok: _Token) -> _Node:
        name = tok.text
        if name in ("true", "false"):
            return _Lit(name == "true")
        if name == "nil":
            return _Lit(None)
        if not (self.tok.text == "(" and self.tok.kind == "punct"):
            if name not in _NAMES:
                raise ConditionSyntaxError(f"unknown name {name!r} at {tok.pos} (only 'result')")
            return _Name(name)
        if name in _PREDICATES:
            self.advance()
            seq = self.expression(0)
            self.expect(",")
            self.expect("{")
            self.depth += 1
            body = self.expression(0)
            self.depth -= 1
            self.expect("}")
            self.expect(")")
            return _Predicate(name, seq, body)
        if name not in _FUNCTIONS:
            supported = ", ".join(sorted([*_FUNCTIONS, *_PREDICATES]))
            raise ConditionSyntaxError(
                f"unsupported function {name!r} at {tok.pos} (supported: {supported})"
            )
        self.advance()
        args: list[_Node] = []
        while not (self.tok.text == ")" and self.tok.kind == "punct"):
            if args:
                self.expect(",")
            args.append(self.expression(0))
        self.expect(")")
        if len(args) != _FUNCTIONS[name]:
            raise ConditionSyntaxError(
                f"{name}() takes {_FUNCTIONS[name]} argument(s), got {len(args)} at {tok.pos}"
            )
        return _Call(name, tuple(args))

    def postfix(self, node: _Node) -> _Node:
        while self.tok.text == "[" and self.tok.kind == "punct":
            self.advance()
            if self.tok.text == ":":
                raise self.error("slices are not supported")
            index = self.expression(0)
            if self.tok.text == ":":
                raise self.error("slices are not supported")
            self.expect("]")
            node = _Index(node, index)
        return node


# ----------------------------------------------------------------------------- types
# A static pass like expr's checker: with `result` typed ([]float64 or float64 in Argo), a
# mismatch is a compile error even in a branch that short-circuiting would never reach
# (`len(result) == 0 || result < 1` is an Error in Argo, not a pass).

_ANY, _BOOL, _INT, _FLOAT, _STR, _NIL = "any", "bool", "int", "float", "string", "nil"
_Type = str | tuple[str, "_Type"]  # ("list", element type)


def _is_num(t: _Type) -> bool:
    return t in (_INT, _FLOAT)


def _list_of(t: _Type) -> _Type | None:
    return t[1] if isinstance(t, tuple) else None


def _type_of(value: Value) -> _Type:
    if value is None:
        return _ANY
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int):
        return _INT
    if isinstance(value, float):
        return _FLOAT
    if isinstance(value, str):
        return _STR
    if not value:
        return ("list", _FLOAT)  # `result` lists are Prometheus vectors: []float64 even when empty
    kinds = {_type_of(v) for v in value}
    return ("list", kinds.pop() if len(kinds) == 1 else _ANY)


def _name(t: _Type) -> str:
    if isinstance(t, tuple):
        return f"[]{_name(t[1])}"
    return {_FLOAT: "float64", _INT: "int", _ANY: "interface {}"}.get(t, t)  # Go's spelling


def _check(node: _Node, result: _Type, elem: _Type = _ANY) -> _Type:
    def mismatch(op: str, *types: _Type) -> ConditionTypeError:
        shown = " and ".join(_name(t) for t in types)
        return ConditionTypeError(f"invalid operation: {op} (mismatched types {shown})")

    match node:
        case _Lit(value):
            return _NIL if value is None else _type_of(value)
        case _Name():
            return result
        case _Elem():
            return elem
        case _Array(items):
            kinds = {_check(i, result, elem) for i in items}
            return ("list", kinds.pop() if len(kinds) == 1 else _ANY)
        case _Unary(op, operand):
            t = _check(operand, result, elem)
            if op in ("!", "not"):
                if t not in (_BOOL, _ANY):
                    raise mismatch(op, t)
                return _BOOL
            if not (_is_num(t) or t == _ANY):
                raise mismatch(op, t)
            return t
        case _Cond(test, then, other):
            if _check(test, result, elem) not in (_BOOL, _ANY):
                raise ConditionTypeError("non-bool expression used as condition of ?:")
            a, b = _check(then, result, elem), _check(other, result, elem)
            return a if a == b else _ANY
        case _Index(target, index):
            t, i = _check(target, result, elem), _check(index, result, elem)
            if i not in (_INT, _ANY):
                raise ConditionTypeError(f"array index must be an integer, not {_name(i)}")
            if t == _ANY:
                return _ANY
            inner = _list_of(t)
            if inner is None:
                raise ConditionTypeError(f"type {_name(t)} does not support indexing")
            return inner
        case _Call(name, args):
            types = [_check(a, result, elem) for a in args]
            if name == "len":
                if not (types[0] in (_STR, _ANY) or _list_of(types[0]) is not None):
                    raise ConditionTypeError(f"invalid argument for len (type {_name(types[0])})")
                return _INT
            if name in ("isNaN", "isInf"):
                if not (_is_num(types[0]) or types[0] == _ANY):
                    raise ConditionTypeError(f"cannot use {_name(types[0])} as argument to {name}")
                return _BOOL
            return {"asInt": _INT, "asFloat": _FLOAT, "isNil": _BOOL}.get(name, _ANY)
        case _Predicate(_, seq, body):
            t = _check(seq, result, elem)
            if t != _ANY and _list_of(t) is None:
                raise ConditionTypeError(f"builtin predicates need an array, not {_name(t)}")
            inner = _list_of(t)
            b = _check(body, result, _ANY if inner is None else inner)
            if b not in (_BOOL, _ANY):
                raise ConditionTypeError(f"predicate should return boolean (got {_name(b)})")
            return _BOOL
        case _Binary(op, left, right):
            a, b = _check(left, result, elem), _check(right, result, elem)
            return _check_binary(op, a, b, mismatch)
    raise AssertionError(node)  # pragma: no cover


def _check_binary(
    op: str, a: _Type, b: _Type, mismatch: Callable[..., ConditionTypeError]
) -> _Type:
    unknown = _ANY in (a, b)
    if op in ("&&", "||", "and", "or"):
        if a not in (_BOOL, _ANY) or b not in (_BOOL, _ANY):
            raise mismatch(op, a, b)
        return _BOOL
    if op in ("==", "!="):
        if unknown or _NIL in (a, b) or a == b or (_is_num(a) and _is_num(b)):
            return _BOOL
        if _list_of(a) is not None and _list_of(b) is not None:
            return _BOOL
        raise mismatch(op, a, b)
    if op in ("<", "<=", ">", ">="):
        if unknown or (_is_num(a) and _is_num(b)) or (a == b == _STR):
            return _BOOL
        raise mismatch(op, a, b)
    if op in ("in", "not in"):
        if b != _ANY and _list_of(b) is None:
            raise mismatch(op, a, b)
        return _BOOL
    if op in ("matches", "contains", "startsWith", "endsWith"):
        if a not in (_STR, _ANY) or b not in (_STR, _ANY):
            raise mismatch(op, a, b)
        return _BOOL
    if op == "+" and a == b == _STR:
        return _STR
    if op == "%":
        if a not in (_INT, _ANY) or b not in (_INT, _ANY):
            raise mismatch(op, a, b)
        return _INT
    if not ((_is_num(a) or a == _ANY) and (_is_num(b) or b == _ANY)):
        raise mismatch(op, a, b)
    if op in ("/", "**"):
        return _FLOAT
    if unknown:
        return _ANY
    return _INT if a == b == _INT else _FLOAT


# ----------------------------------------------------------------------------- evaluation


def _is_number(v: Value) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _kind(v: Value) -> str:
    return "nil" if v is None else _name(_type_of(v))


def _num(v: Value, op: str) -> float | int:
    if not _is_number(v):
        raise ConditionError(f"invalid operation: {op} on {_kind(v)}")
    assert isinstance(v, int | float)
    return v


def _bool(v: Value, what: str) -> bool:
    if not isinstance(v, bool):
        raise ConditionError(f"{what} needs a bool, got {_kind(v)}")
    return v


def _equal(a: Value, b: Value) -> bool:
    if _is_number(a) and _is_number(b):
        return a == b  # NaN != NaN, 1 == 1.0 (expr compares numbers numerically)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        raise ConditionError(f"invalid operation: == (mismatched types {_kind(a)} and {_kind(b)})")
    return a == b


def _loose_equal(a: Value, b: Value) -> bool:
    try:
        return _equal(a, b)
    except ConditionError:  # `in` over a mixed array: other kinds simply do not match
        return False


def _divide(a: float, b: float) -> float:
    # Go float division: x/0 is ±Inf, 0/0 is NaN (no exception).
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _power(a: float, b: float) -> float:
    try:
        return math.pow(a, b)
    except ValueError:  # Go's math.Pow returns NaN for e.g. (-8) ** 0.5
        return math.nan
    except OverflowError:
        return math.inf


def _as_int(v: Value) -> int:
    if isinstance(v, str):
        if not re.fullmatch(r"[+-]?\d+", v):
            raise ConditionError(f'asInt: strconv.ParseInt: parsing "{v}": invalid syntax')
        return int(v)
    if _is_number(v):
        assert isinstance(v, int | float)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConditionError(f"asInt() not supported on {v}")
        return int(v)  # truncates toward zero, like Go's int64(f)
    raise ConditionError(f"asInt() not supported on {_kind(v)}")


_GO_FLOAT = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf(inity)?|nan)", re.IGNORECASE)


def _as_float(v: Value) -> float:
    if isinstance(v, str):
        if not _GO_FLOAT.fullmatch(v):
            raise ConditionError(f'asFloat: strconv.ParseFloat: parsing "{v}": invalid syntax')
        return float(v)
    if _is_number(v):
        assert isinstance(v, int | float)
        return float(v)
    raise ConditionError(f"asFloat() not supported on {_kind(v)}")


def _eval(node: _Node, result: Value, elem: Value) -> Value:
    match node:
        case _Lit(value):
            return value
        case _Name():
            return result
        case _Elem():
            return elem
        case _Array(items):
            return [_eval(i, result, elem) for i in items]
        case _Unary(op, operand):
            v = _eval(operand, result, elem)
            if op in ("!", "not"):
                return not _bool(v, op)
            n = _num(v, op)
            return -n if op == "-" else n
        case _Cond(test, then, other):
            chosen = then if _bool(_eval(test, result, elem), "?:") else other
            return _eval(chosen, result, elem)
        case _Index(target, index):
            seq, i = _eval(target, result, elem), _eval(index, result, elem)
            if not isinstance(seq, list):
                raise ConditionError(f"cannot index {_kind(seq)}")
            if not isinstance(i, int) or isinstance(i, bool):
                raise ConditionError(f"index must be an integer, got {_kind(i)}")
            if not -len(seq) <= i < len(seq):
                raise ConditionError(f"index out of range: {i} (array length {len(seq)})")
            return seq[i]
        case _Call(name, args):
            return _call(name, [_eval(a, result, elem) for a in args], result)
        case _Predicate(name, seq_node, body):
            seq = _eval(seq_node, result, elem)
            if not isinstance(seq, list):
                raise ConditionError(f"{name}() needs an array, got {_kind(seq)}")
            hits = 0
            for item in seq:
                ok = _bool(_eval(body, result, item), f"{name}() predicate")
                hits += ok
                # Short-circuit like expr: all stops at the first false, any/none at the first true.
                if name == "all" and not ok:
                    return False
                if name in ("any", "none") and ok:
                    return name == "any"
            if name == "one":
                return hits == 1
            return name in ("all", "none")
        case _Binary(op, left, right):
            return _binary(op, left, right, result, elem)
    raise AssertionError(node)  # pragma: no cover


def _call(name: str, args: list[Value], result: Value) -> Value:
    arg = args[0]
    if name == "len":
        if not isinstance(arg, list | str):
            raise ConditionError(f"invalid argument for len (type {_kind(arg)})")
        return len(arg)
    if name in ("isNaN", "isInf"):
        x = float(_num(arg, name))
        return math.isnan(x) if name == "isNaN" else math.isinf(x)
    if name == "asInt":
        return _as_int(arg)
    if name == "asFloat":
        return _as_float(arg)
    # isNil/default ignore their first argument and look at the whole measurement (spec 6.2).
    if name == "isNil":
        return result is None
    return args[1] if result is None else result


def _binary(op: str, left: _Node, right: _Node, result: Value, elem: Value) -> Value:
    a = _eval(left, result, elem)
    if op in ("&&", "and", "||", "or"):
        # Short-circuit: what makes `len(result) > 0 && result[0] < 0.2` safe (6.2).
        first = _bool(a, op)
        if first == (op in ("||", "or")):
            return first
        return _bool(_eval(right, result, elem), op)
    b = _eval(right, result, elem)
    if op == "==":
        return _equal(a, b)
    if op == "!=":
        return not _equal(a, b)
    if op in ("in", "not in"):
        if not isinstance(b, list):
            raise ConditionError(f"invalid operation: {op} (right side is {_kind(b)})")
        found = any(_loose_equal(a, x) for x in b)
        return found if op == "in" else not found
    if op in ("matches", "contains", "startsWith", "endsWith"):
        if not (isinstance(a, str) and isinstance(b, str)):
            raise ConditionError(f"invalid operation: {op} on {_kind(a)} and {_kind(b)}")
        if op == "matches":
            try:
                return re.search(b, a) is not None  # Go's MatchString is unanchored
            except re.error as e:
                raise ConditionError(f"invalid regular expression {b!r}: {e}") from None
        return {"contains": b in a, "startsWith": a.startswith(b), "endsWith": a.endswith(b)}[op]
    if op in ("<", "<=", ">", ">="):
        # Any comparison with NaN is false, in Python as in Go (6.3).
        if isinstance(a, str) and isinstance(b, str):
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
        x, y = _num(a, op), _num(b, op)
        return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        return a + b
    x, y = _num(a, op), _num(b, op)
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "/":
        return _divide(float(x), float(y))
    if op == "**":
        return _power(float(x), float(y))
    # %: integers only, Go semantics (truncated; sign follows the dividend).
    if not (isinstance(x, int) and isinstance(y, int)):
        raise ConditionError(f"invalid operation: % on {_kind(a)} and {_kind(b)}")
    if y == 0:
        raise ConditionError("integer divide by zero")
    r = abs(x) % abs(y)
    return -r if x < 0 else r


# ----------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class Expression:
    """A parsed condition; evaluate it against a measurement value with ``evaluate``."""

    source: str
    _tree: _Node

    def evaluate(self, result: Value) -> Value:
        """Type-check against ``result``'s type, then evaluate (raises ConditionError)."""
        _check(self._tree, _type_of(result))
        return _eval(self._tree, result, None)


@lru_cache(maxsize=256)
def parse(source: str) -> Expression:
    """Parse a condition (raises ConditionSyntaxError for anything outside spec 6.2)."""
    if not source.strip():
        raise ConditionSyntaxError("empty condition")
    return Expression(source, _Parser(source).parse())


def evaluate(source: str, result: Value) -> bool:
    """Evaluate one condition; it must produce a bool (6.1)."""
    out = parse(source).evaluate(result)
    if not isinstance(out, bool):
        raise ConditionError(f"expected bool, but got {_kind(out)}")
    return out


def _is_empty(result: Value) -> bool:
    return result is None or (isinstance(result, list) and not result)


def evaluate_result(
    result: Value, success_condition: str = "", failure_condition: str = ""
) -> MeasurementPhase:
    """Combine the two conditions into a measurement phase (table in 6.1).

    Raises ConditionError (measurement Error) when a set condition cannot be evaluated.
    """
    outcomes: dict[str, bool] = {}
    for which, source in (("successCondition", success_condition),
                          ("failureCondition", failure_condition)):  # fmt: skip
        if not source:
            continue
        try:
            outcomes[which] = evaluate(source, result)
        except ConditionError as e:
            # The v1.10/master wording for the most common case, a run-time error on no data
            # (`result[0]` of an empty vector, 6.1 and 6.3); compile errors keep their own text.
            no_data = _is_empty(result) and not isinstance(
                e, ConditionSyntaxError | ConditionTypeError
            )
            reason = (
                "metric result is nil or empty: no data returned from the metric provider"
                if no_data
                else str(e)
            )
            raise ConditionError(f'could not evaluate {which} "{source}": {reason}') from e
    success = outcomes.get("successCondition")
    failure = outcomes.get("failureCondition")
    if success is None and failure is None:
        return MeasurementPhase.SUCCESSFUL
    if failure is None:
        failure = not success
    if success is None:
        success = not failure
    if failure:
        return MeasurementPhase.FAILED
    return MeasurementPhase.SUCCESSFUL if success else MeasurementPhase.INCONCLUSIVE
