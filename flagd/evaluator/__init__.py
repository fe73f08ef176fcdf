"""Flag evaluation: JsonLogic rules compiled once per configuration into plain closures.

Public surface (everything else in this package is private):

- ``compile_flag(flag, fractional="v3") -> CompiledFlag``: done once per configuration change.
- ``CompiledFlag.evaluate(context) -> Resolution``: variant choice, no type check.
- ``resolve(compiled, context, flag_type) -> Resolution``: ``evaluate`` plus the type rules
  of spec A.4 (what the Resolve RPCs need).
"""
