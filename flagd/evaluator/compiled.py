"""A flag compiled for evaluation: variant choice per spec A.4, D.1 and D.2.

Every successful outcome of a flag (each variant as TARGETING_MATCH, the default variant,
STATIC, DISABLED, the code default) is a finite set, so the ``Resolution`` objects are built
once at compile time and shared: callers must treat them, and their values, as read-only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from flagd.evaluator.fractional import build_fractional
from flagd.evaluator.jsonlogic import FractionalVersion, OpBuilder, RuleError, compile_rule
from flagd.evaluator.semver_op import build_sem_ver
from flagd.evaluator.strings import build_ends_with, build_starts_with
from flagd.model import ErrorCode, Flag, Reason, Resolution

CUSTOM_OPERATORS: Mapping[str, OpBuilder] = {
    "fractional": build_fractional,
    "sem_ver": build_sem_ver,
    "starts_with": build_starts_with,
    "ends_with": build_ends_with,
}

Runner = Callable[[dict[str, Any], "int | None"], Resolution]


class CompiledFlag:
    """One flag ready to evaluate; ``flag`` is the definition it was compiled from."""

    __slots__ = ("_run", "coerced", "flag", "fractional")

    def __init__(self, flag: Flag, fractional: FractionalVersion, run: Runner) -> None:
        self.flag = flag
        self.fractional: FractionalVersion = fractional
        self._run = run
        # Filled by `resolve`: (id of a prebuilt resolution, flag type) -> (that resolution,
        # its converted or TYPE_MISMATCH form). The resolution is kept so the id stays valid.
        self.coerced: dict[tuple[int, str], tuple[Resolution, Resolution]] = {}

    @property
    def key(self) -> str:
        """The flag key."""
        return self.flag.key

    def evaluate(self, context: dict[str, Any], *, now: int | None = None) -> Resolution:
        """Choose the variant for ``context`` (no type check); ``now`` overrides the clock."""
        return self._run(context, now)

    def __repr__(self) -> str:
        return f"CompiledFlag({self.flag.key!r}, fractional={self.fractional!r})"


def compile_flag(flag: Flag, fractional: FractionalVersion = "v3") -> CompiledFlag:
    """Compile ``flag`` once per configuration; a bad rule compiles to a PARSE_ERROR flag."""
    return CompiledFlag(flag, fractional, _runner(flag, fractional))


def _always(resolution: Resolution) -> Runner:
    return lambda _context, _now: resolution


def _error(flag: Flag, code: ErrorCode, message: str) -> Resolution:
    return Resolution(
        reason=Reason.ERROR, error=code, error_message=message, metadata=flag.metadata
    )


def _runner(flag: Flag, fractional: FractionalVersion) -> Runner:
    metadata = flag.metadata
    if flag.state == "DISABLED":
        return _always(Resolution(reason=Reason.DISABLED, metadata=metadata))

    variants = flag.variants
    default_name = flag.default_variant or None
    if default_name is None:
        default = Resolution(reason=Reason.DEFAULT, metadata=metadata)  # the code default
        static = default
    elif default_name not in variants:
        default = static = _error(
            flag, ErrorCode.GENERAL, f"default variant {default_name!r} is not a variant"
        )
    else:
        value = variants[default_name]
        default = Resolution(Reason.DEFAULT, default_name, value, metadata=metadata)
        static = Resolution(Reason.STATIC, default_name, value, metadata=metadata)

    targeting = flag.targeting
    if targeting is None or targeting == {}:
        return _always(static)
    if not isinstance(targeting, dict):
        return _always(_error(flag, ErrorCode.PARSE_ERROR, "targeting must be a JsonLogic object"))
    try:
        node, state = compile_rule(
            targeting, CUSTOM_OPERATORS, flag_key=flag.key, fractional=fractional
        )
    except RuleError as exc:
        return _always(_error(flag, ErrorCode.PARSE_ERROR, str(exc)))
    except RecursionError:
        return _always(_error(flag, ErrorCode.PARSE_ERROR, "targeting rule is nested too deeply"))
    except Exception as exc:  # never let one odd rule stop the whole configuration loading
        return _always(_error(flag, ErrorCode.PARSE_ERROR, f"cannot compile targeting: {exc}"))

    matches = {
        name: Resolution(Reason.TARGETING_MATCH, name, value, metadata=metadata)
        for name, value in variants.items()
    }

    def outcome(result: Any) -> Resolution:
        """Spec D.2: the rule's result as a resolution."""
        if result is None:
            return default
        if isinstance(result, str):
            name = result
        elif isinstance(result, bool):
            name = "true" if result else "false"
        elif isinstance(result, (int, float)):
            name = json_number_text(result)
        else:
            return _error(flag, ErrorCode.GENERAL, f"targeting returned a {type(result).__name__}")
        match = matches.get(name)
        if match is None:
            return _error(flag, ErrorCode.GENERAL, f"targeting returned unknown variant {name!r}")
        return match

    if node.is_const:
        return _always(outcome(node.value))

    rule = node.fn
    key = flag.key

    if not state.needs_flagd:
        # The rule never reads `$flagd` or the whole context: pass the caller's dict through.
        def run_plain(context: dict[str, Any], now: int | None) -> Resolution:
            try:
                result = rule(context)
            except Exception as exc:
                return _engine_error(flag, exc)
            if type(result) is str:
                match = matches.get(result)
                if match is not None:
                    return match
            return outcome(result)

        return run_plain

    def run_enriched(context: dict[str, Any], now: int | None) -> Resolution:
        data = dict(context)
        # Spec D.1: flagd's own `$flagd` replaces anything the caller sent under that name.
        data["$flagd"] = {"flagKey": key, "timestamp": int(time.time()) if now is None else now}
        if "targetingKey" in data and data["targetingKey"] is None:
            del data["targetingKey"]  # a null targeting key is the same as none at all
        try:
            result = rule(data)
        except Exception as exc:
            return _engine_error(flag, exc)
        if type(result) is str:
            match = matches.get(result)
            if match is not None:
                return match
        return outcome(result)

    return run_enriched


def _engine_error(flag: Flag, exc: Exception) -> Resolution:
    # A rule that raises while running (division by zero, ...) is an engine error (D.2).
    return _error(flag, ErrorCode.PARSE_ERROR, f"targeting failed: {type(exc).__name__}: {exc}")


def json_number_text(number: int | float) -> str:
    """A number as Go's encoding/json writes it (flagd looks variants up by this text)."""
    if isinstance(number, int):
        return str(number)
    if number != number or number in (float("inf"), float("-inf")):
        return repr(number)  # not valid JSON; no variant can match it
    text = repr(number)
    magnitude = abs(number)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        mantissa, _, exponent = text.partition("e")
        power = int(exponent)
        return f"{mantissa}e{'-' if power < 0 else '+'}{abs(power)}"
    fixed = format(Decimal(text), "f")
    if "." in fixed:
        fixed = fixed.rstrip("0").rstrip(".")
    return fixed
