"""The routing decision: which engine serves a payment, from one flag snapshot. Pure, no I/O.

Order is the contract (DESIGN.md section 2):

1. ``payments.new-router.circuit-open``: when on, legacy, and NO other flag is evaluated: the
   circuit is the escape hatch, so a broken or misconfigured release, experiment or shadow
   flag must not be able to influence (or even be touched by) a payment once it is open,
   and an open circuit records no experiment exposure.
2. ``payments.new-router.enabled``: the fractional release split, bucketed on the merchant.
3. ``payments.dynamic-currency.enabled``: the DCC experiment, for opted-in customers of the
   new engine only (legacy has no DCC: assigning its customers would log exposures for a
   treatment they cannot get and dilute the experiment), bucketed on the customer.
4. ``payments.fx-provider.kill-switch``: static FX rates only.
5. ``payments.new-router.shadow`` (optional): also run the other engine, for comparison.

Why the merchant, not the customer, is the release key: the new engine changes acquirer
choice, and a merchant's settlement, reconciliation and acquirer fees must follow one policy;
with a per-merchant split a merchant-specific regression shows up as that merchant failing
(visible, attributable) rather than as a thin error rate smeared over every merchant; and
merchant ids are always present and stable, while customer ids can be absent (guest
checkout) or only unique within one merchant. The DCC experiment, in contrast, measures a
customer's choice, so it is bucketed on the customer.

Safe values when a flag is missing, DISABLED (flagd then returns no value and the caller's
code default applies), has no default variant, errors or is not boolean:

- circuit-open: open (legacy). If the circuit cannot be read it cannot be honoured.
- enabled: off (legacy). Before the first snapshot every flag is missing: legacy.
- DCC: not offered, no variant (no exposure).
- FX kill switch: ON (static rates). The switch exists to shed the live provider; when the
  flag is gone operators have lost that lever, so stay where no lever is needed. Static
  rates are versioned with a freshness bound and are the FX layer's fallback anyway, so the
  cost is at worst a stale-rate refusal, never a call to a provider nobody can switch off.
  With the circuit open (nothing evaluated) it is reported ON for the same reason.
- shadow: off (no extra work).

Decisions depend only on the snapshot and a handful of outcomes, so each distinct one is
built once per snapshot and shared: treat them as read-only values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from flagd.evaluator import resolve
from flagd.model import FlagType, Reason
from router.flags import FlagSnapshot

__all__ = [
    "CIRCUIT_OPEN",
    "DYNAMIC_CURRENCY",
    "FX_KILL_SWITCH",
    "NEW_ROUTER",
    "SHADOW",
    "Decision",
    "decide",
]

CIRCUIT_OPEN = "payments.new-router.circuit-open"
NEW_ROUTER = "payments.new-router.enabled"
DYNAMIC_CURRENCY = "payments.dynamic-currency.enabled"
FX_KILL_SWITCH = "payments.fx-provider.kill-switch"
SHADOW = "payments.new-router.shadow"

Engine = Literal["legacy", "new"]
# no-flags: empty snapshot (nothing received yet); circuit-open; flag-default: the circuit
# or release flag gave no value (DISABLED, no default variant); flag-error: it is missing,
# failed or is not boolean; release-split: the release flag chose the engine.
RouteReason = Literal["no-flags", "circuit-open", "flag-default", "flag-error", "release-split"]


@dataclass(frozen=True, slots=True)
class Decision:
    """How one payment is routed, and which flag configuration said so."""

    engine: Engine
    reason: RouteReason
    flag_version: int
    experiment_variant: str = ""  # DCC variant when the customer was assigned, else ""
    dcc_offered: bool = False
    fx_kill_switch: bool = True
    shadow: bool = False


# Module constants: attribute lookups on enums cost more than the evaluations they guard.
_BOOLEAN = FlagType.BOOLEAN
_ASSIGNED = frozenset((Reason.TARGETING_MATCH, Reason.STATIC))
_NO_FLAGS_KEY = ("legacy", "no-flags", "", False, True, False)
_CIRCUIT_KEY = ("legacy", "circuit-open", "", False, True, False)


def _decision(snapshot: FlagSnapshot, key: tuple[Any, ...]) -> Decision:
    """The shared Decision for ``key`` = (engine, reason, variant, dcc, fx, shadow)."""
    memo = snapshot.derived
    decision: Decision | None = memo.get(key)
    if decision is None:
        engine, reason, variant, dcc, fx, shadow = key
        decision = Decision(engine, reason, snapshot.version, variant, dcc, fx, shadow)
        memo[key] = decision  # a racing thread stores an equal object: harmless
    return decision


def decide(
    snapshot: FlagSnapshot, *, merchant_id: str, customer_id: str, dcc_opt_in: bool
) -> Decision:
    """Route one payment: circuit first, then release split, DCC, FX kill switch, shadow."""
    flags = snapshot.flags
    if not flags:
        return _decision(snapshot, _NO_FLAGS_KEY)
    static = snapshot.context
    # The daemon lets its static context override the request's (flagd/service/evaluation.py
    # merged_context): do the same so router and RPC answers agree.
    context = {"targetingKey": merchant_id, **static} if static else {"targetingKey": merchant_id}

    # 1. Circuit. A successful boolean resolution is exactly True or False; None means no
    # value (missing, DISABLED, no default variant, error, not boolean): legacy.
    circuit = resolve(flags.get(CIRCUIT_OPEN), context, _BOOLEAN)
    if circuit.value is not False:
        if circuit.value is True:
            return _decision(snapshot, _CIRCUIT_KEY)
        reason = "flag-error" if circuit.error is not None else "flag-default"
        return _decision(snapshot, ("legacy", reason, "", False, True, False))

    # 2. Release split on the merchant.
    release = resolve(flags.get(NEW_ROUTER), context, _BOOLEAN)
    if release.value is None:
        reason = "flag-error" if release.error is not None else "flag-default"
        engine = "legacy"
    else:
        reason = "release-split"
        engine = "new" if release.value else "legacy"

    # 3. DCC experiment: opted-in customers of the new engine only.
    variant = ""
    dcc = False
    if dcc_opt_in and engine == "new":
        dcc_context = {"targetingKey": customer_id, "dcc_opt_in": True}
        if static:
            dcc_context = {**dcc_context, **static}
        experiment = resolve(flags.get(DYNAMIC_CURRENCY), dcc_context, _BOOLEAN)
        # DEFAULT means "not enrolled" (the rule returned null, e.g. no targeting key).
        if experiment.variant is not None and experiment.reason in _ASSIGNED:
            variant = experiment.variant
            dcc = experiment.value is True

    # 4. FX kill switch: only a clean "off" allows the live provider.
    kill = resolve(flags.get(FX_KILL_SWITCH), context, _BOOLEAN)
    fx_kill = kill.value is not False

    # 5. Shadow comparison: optional flag, off unless cleanly on.
    shadow_flag = flags.get(SHADOW)
    shadow = shadow_flag is not None and resolve(shadow_flag, context, _BOOLEAN).value is True

    return _decision(snapshot, (engine, reason, variant, dcc, fx_kill, shadow))
