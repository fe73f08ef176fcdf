"""The `starts_with` / `ends_with` operators (spec D.5): case-sensitive, strings only.

Exactly two arguments that both evaluate to strings; anything else gives None (not False),
so a misconfigured rule selects the default variant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flagd.evaluator.jsonlogic import CompileState, Node, const, discard


def starts_with(text: Any, prefix: Any) -> bool | None:
    """`text.startswith(prefix)` for two strings, else None."""
    if isinstance(text, str) and isinstance(prefix, str):
        return text.startswith(prefix)
    return None


def ends_with(text: Any, suffix: Any) -> bool | None:
    """`text.endswith(suffix)` for two strings, else None."""
    if isinstance(text, str) and isinstance(suffix, str):
        return text.endswith(suffix)
    return None


def _builder(
    test: Callable[[Any, Any], bool | None], method: Callable[[str, str], bool]
) -> Callable[[list[Node], CompileState], Node]:
    def build(args: list[Node], state: CompileState) -> Node:
        if len(args) != 2:
            return discard(args)
        text, affix = args
        if text.is_const and affix.is_const:
            return const(test(text.value, affix.value))
        tf, af = text.fn, affix.fn
        if not affix.is_const:
            return Node(lambda data: test(tf(data), af(data)))
        if not isinstance(affix.value, str):
            return discard([text])
        value, prop = affix.value, text.prop

        def compare(data: Any) -> bool | None:
            subject = data.get(prop) if prop is not None and type(data) is dict else tf(data)
            return method(subject, value) if type(subject) is str else test(subject, value)

        return Node(compare)

    return build


build_starts_with = _builder(starts_with, str.startswith)
build_ends_with = _builder(ends_with, str.endswith)
