"""The `sem_ver` operator (spec D.4): `{"sem_ver": [version, op, version]}`.

Versions are normalised like flagd-core: stringified, a leading `v`/`V` dropped, partial
versions padded (`1.2` -> `1.2.0`), then parsed strictly with `semver`. `^` compares the
major component only, `~` major and minor. Any bad input gives None, never False.

Parsed versions become precedence keys (cached per string) that order exactly like
`semver.Version.compare` (build metadata ignored, pre-releases first, identifiers compared
numerically or lexically), so a comparison is a tuple comparison.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import semver

from flagd.evaluator.jsonlogic import CompileState, Node, const, discard

# (major, minor, patch, 1 if no pre-release else 0, pre-release identifier keys)
VersionKey = tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]


def _same_major(a: VersionKey, b: VersionKey) -> bool:
    return a[0] == b[0]


def _same_minor(a: VersionKey, b: VersionKey) -> bool:
    return a[0] == b[0] and a[1] == b[1]


COMPARATORS: dict[str, Callable[[VersionKey, VersionKey], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "^": _same_major,
    "~": _same_minor,
}


def _identifier_key(identifier: str) -> tuple[int, int, str]:
    # Same key as semver 3.1's Version._nat_cmp: numbers by value, before any text.
    if not identifier.isdigit():
        return (1, 0, identifier)
    if not identifier.isascii():
        identifier = str(int(identifier))
    digits = identifier.lstrip("0") or "0"
    return (0, len(digits), digits)


@lru_cache(maxsize=4096)
def _parse_text(text: str) -> VersionKey | None:
    if text.startswith(("v", "V")):
        text = text[1:]
    numeric = text.split("-")[0].split("+")[0]
    dots = numeric.count(".")
    if dots < 2:
        text = numeric + ".0" * (2 - dots) + text[len(numeric) :]
    try:
        version = semver.Version.parse(text)
    except (ValueError, TypeError):
        return None
    pre = version.prerelease
    if pre is None:
        return (version.major, version.minor, version.patch, 1, ())
    keys = tuple(_identifier_key(part) for part in pre.split("."))
    return (version.major, version.minor, version.patch, 0, keys)


def parse_version(value: Any) -> VersionKey | None:
    """A context or rule value as a version key (`str()` of non-strings), None if invalid."""
    return _parse_text(value if isinstance(value, str) else str(value))


def sem_ver(left: Any, op: Any, right: Any) -> bool | None:
    """Compare two versions with ``op``; None on an invalid version or operator."""
    a, b = parse_version(left), parse_version(right)
    if a is None or b is None:
        return None
    compare = COMPARATORS.get(op) if isinstance(op, str) else None
    return None if compare is None else compare(a, b)


def build_sem_ver(args: list[Node], state: CompileState) -> Node:
    """Compile `sem_ver`; a constant operator and right-hand version are parsed once."""
    if len(args) != 3:
        return discard(args)
    left, op, right = args
    if left.is_const and op.is_const and right.is_const:
        return const(sem_ver(left.value, op.value, right.value))
    if not (op.is_const and right.is_const):
        lf, of, rf = left.fn, op.fn, right.fn
        return Node(lambda data: sem_ver(lf(data), of(data), rf(data)))
    compare = COMPARATORS.get(op.value) if isinstance(op.value, str) else None
    target = parse_version(right.value)
    if compare is None or target is None:
        return discard([left])
    get, prop = left.fn, left.prop

    def sem_ver_const(data: Any) -> bool | None:
        value = data.get(prop) if prop is not None and type(data) is dict else get(data)
        version = _parse_text(value if type(value) is str else str(value))
        return None if version is None else compare(version, target)

    return Node(sem_ver_const)
