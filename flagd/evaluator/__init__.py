"""Flag evaluation: JsonLogic rules compiled once per configuration into plain closures.

Public surface (everything else in this package is private):

- ``compile_flag(flag, fractional="v3") -> CompiledFlag``: done once per configuration change;
  a rule that cannot compile (unknown operator, unexpanded ``$ref``) yields a flag that
  evaluates to ERROR/PARSE_ERROR instead of failing the configuration.
- ``CompiledFlag.evaluate(context, *, now=None) -> Resolution``: variant choice, no type check.
  Results are shared, read-only objects.
- ``resolve(compiled, context, flag_type) -> Resolution``: ``evaluate`` plus the type rules
  of spec A.4 (what the Resolve RPCs need); ``compiled=None`` gives FLAG_NOT_FOUND.
"""

from flagd.evaluator.compiled import CompiledFlag, compile_flag
from flagd.evaluator.resolve import resolve

__all__ = ["CompiledFlag", "compile_flag", "resolve"]
