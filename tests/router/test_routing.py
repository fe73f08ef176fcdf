"""`router.routing.decide`: evaluation order, the circuit short-circuit and every safe fallback."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from flagd.evaluator import CompiledFlag
from flagd.model import Flag
from router.flags import FlagSnapshot, compile_snapshot
from router.routing import (
    CIRCUIT_OPEN,
    DYNAMIC_CURRENCY,
    FX_KILL_SWITCH,
    NEW_ROUTER,
    SHADOW,
    Decision,
    decide,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOYED = json.loads((REPO / "deploy" / "flags" / "payments.flagd.json").read_text())


def boolean(
    default: str | None = "off", *, state: str = "ENABLED", targeting: Any = None
) -> dict[str, Any]:
    flag: dict[str, Any] = {"state": state, "variants": {"on": True, "off": False}}
    if default is not None:
        flag["defaultVariant"] = default
    if targeting is not None:
        flag["targeting"] = targeting
    return flag


def split(on: int) -> dict[str, Any]:
    return {"fractional": [["on", on], ["off", 100 - on]]}


def dcc(treatment: int) -> dict[str, Any]:
    flag: dict[str, Any] = copy.deepcopy(DEPLOYED["flags"][DYNAMIC_CURRENCY])
    flag["targeting"]["if"][1]["fractional"] = [
        ["treatment", treatment],
        ["control", 100 - treatment],
    ]
    return flag


MISSING = object()


def snapshot(
    version: int = 3, context: Mapping[str, Any] | None = None, **changes: Any
) -> FlagSnapshot:
    """The deployed payment flags, with the release at 100% and DCC 100% treatment, then ``changes``.

    Keyword names use `_` for `.` and `-`: circuit, release, dcc, fx, shadow.
    """
    names = {
        "circuit": CIRCUIT_OPEN,
        "release": NEW_ROUTER,
        "dcc": DYNAMIC_CURRENCY,
        "fx": FX_KILL_SWITCH,
        "shadow": SHADOW,
    }
    flags = copy.deepcopy(DEPLOYED["flags"])
    flags[NEW_ROUTER] = boolean(targeting=split(100))
    flags[DYNAMIC_CURRENCY] = dcc(100)
    for name, definition in changes.items():
        if definition is MISSING:
            flags.pop(names[name], None)
        else:
            flags[names[name]] = definition
    payload = json.dumps({"flags": flags, "$ripcord": {"configVersion": version}})
    return compile_snapshot(payload, context=context)


def route(
    snap: FlagSnapshot, merchant: str = "m-1", customer: str = "c-1", opt_in: bool = True
) -> Decision:
    return decide(snap, merchant_id=merchant, customer_id=customer, dcc_opt_in=opt_in)


# ----------------------------------------------------------------------------- the table

STRING_FLAG = {"state": "ENABLED", "variants": {"on": "yes", "off": "no"}, "defaultVariant": "on"}
BAD_RULE = boolean(targeting={"if": [True, "no-such-variant", "off"]})

# (case, changes, opt_in) -> (engine, reason, experiment_variant, dcc_offered, fx_kill_switch, shadow)
TABLE: list[tuple[str, dict[str, Any], bool, tuple[str, str, str, bool, bool, bool]]] = [
    ("everything on", {}, True, ("new", "release-split", "treatment", True, False, False)),
    # 1. circuit
    (
        "circuit open",
        {"circuit": boolean("on")},
        True,
        ("legacy", "circuit-open", "", False, True, False),
    ),
    (
        "circuit missing",
        {"circuit": MISSING},
        True,
        ("legacy", "flag-error", "", False, True, False),
    ),
    (
        "circuit disabled",
        {"circuit": boolean("off", state="DISABLED")},
        True,
        ("legacy", "flag-default", "", False, True, False),
    ),
    (
        "circuit no default",
        {"circuit": boolean(None)},
        True,
        ("legacy", "flag-default", "", False, True, False),
    ),
    (
        "circuit not boolean",
        {"circuit": STRING_FLAG},
        True,
        ("legacy", "flag-error", "", False, True, False),
    ),
    (
        "circuit rule error",
        {"circuit": BAD_RULE},
        True,
        ("legacy", "flag-error", "", False, True, False),
    ),
    # 2. release split
    (
        "release 0%",
        {"release": boolean(targeting=split(0))},
        True,
        ("legacy", "release-split", "", False, False, False),
    ),
    (
        "release missing",
        {"release": MISSING},
        True,
        ("legacy", "flag-error", "", False, False, False),
    ),
    (
        "release disabled",
        {"release": boolean("on", state="DISABLED")},
        True,
        ("legacy", "flag-default", "", False, False, False),
    ),
    (
        "release not boolean",
        {"release": STRING_FLAG},
        True,
        ("legacy", "flag-error", "", False, False, False),
    ),
    (
        "release rule error",
        {"release": BAD_RULE},
        True,
        ("legacy", "flag-error", "", False, False, False),
    ),
    (
        "release static on",
        {"release": boolean("on")},
        True,
        ("new", "release-split", "treatment", True, False, False),
    ),
    # 3. DCC experiment: opted-in customers of the new engine only
    ("not opted in", {}, False, ("new", "release-split", "", False, False, False)),
    (
        "legacy engine: no DCC",
        {"release": boolean(targeting=split(0))},
        True,
        ("legacy", "release-split", "", False, False, False),
    ),
    (
        "dcc 0% treatment",
        {"dcc": dcc(0)},
        True,
        ("new", "release-split", "control", False, False, False),
    ),
    ("dcc missing", {"dcc": MISSING}, True, ("new", "release-split", "", False, False, False)),
    (
        "dcc disabled",
        {"dcc": {**dcc(100), "state": "DISABLED"}},
        True,
        ("new", "release-split", "", False, False, False),
    ),
    (
        "dcc rule error",
        {"dcc": {**dcc(100), "targeting": {"if": [True, "bogus", None]}}},
        True,
        ("new", "release-split", "", False, False, False),
    ),
    # 4. FX kill switch: only a clean "off" allows live rates
    (
        "fx on",
        {"fx": boolean("on")},
        True,
        ("new", "release-split", "treatment", True, True, False),
    ),
    ("fx missing", {"fx": MISSING}, True, ("new", "release-split", "treatment", True, True, False)),
    (
        "fx disabled",
        {"fx": boolean("off", state="DISABLED")},
        True,
        ("new", "release-split", "treatment", True, True, False),
    ),
    (
        "fx not boolean",
        {"fx": STRING_FLAG},
        True,
        ("new", "release-split", "treatment", True, True, False),
    ),
    (
        "fx on, legacy",
        {"fx": boolean("on"), "release": boolean(targeting=split(0))},
        True,
        ("legacy", "release-split", "", False, True, False),
    ),
    # 5. shadow (optional flag)
    (
        "shadow on",
        {"shadow": boolean("on")},
        True,
        ("new", "release-split", "treatment", True, False, True),
    ),
    (
        "shadow on, legacy",
        {"shadow": boolean("on"), "release": boolean(targeting=split(0))},
        True,
        ("legacy", "release-split", "", False, False, True),
    ),
    (
        "shadow off",
        {"shadow": boolean("off")},
        True,
        ("new", "release-split", "treatment", True, False, False),
    ),
    (
        "shadow rule error",
        {"shadow": BAD_RULE},
        True,
        ("new", "release-split", "treatment", True, False, False),
    ),
    (
        "circuit open wins over shadow",
        {"circuit": boolean("on"), "shadow": boolean("on")},
        True,
        ("legacy", "circuit-open", "", False, True, False),
    ),
]


@pytest.mark.parametrize(
    ("changes", "opt_in", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_decision_table(
    changes: dict[str, Any], opt_in: bool, expected: tuple[str, str, str, bool, bool, bool]
) -> None:
    d = route(snapshot(version=9, **changes), opt_in=opt_in)
    assert (
        d.engine,
        d.reason,
        d.experiment_variant,
        d.dcc_offered,
        d.fx_kill_switch,
        d.shadow,
    ) == expected
    assert d.flag_version == 9


def test_empty_snapshot_is_legacy_fail_safe() -> None:
    d = route(FlagSnapshot())
    assert d == Decision("legacy", "no-flags", 0, "", False, True, False)


def test_deployed_definitions_route_everything_to_legacy() -> None:
    snap = compile_snapshot(json.dumps(DEPLOYED))
    for i in range(50):
        d = route(snap, merchant=f"m-{i}", customer=f"c-{i}")
        assert (d.engine, d.reason, d.experiment_variant, d.fx_kill_switch) == (
            "legacy",
            "release-split",
            "",
            False,
        )


# ----------------------------------------------------------------------------- the circuit


class Spy(dict[str, CompiledFlag]):
    """A flag mapping that records every key looked up."""

    def __init__(self, flags: Mapping[str, CompiledFlag]) -> None:
        super().__init__(flags)
        self.looked_up: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.looked_up.append(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> CompiledFlag:
        self.looked_up.append(key)
        return super().__getitem__(key)


def exploding(key: str) -> CompiledFlag:
    """A compiled flag that fails the test if anything evaluates it."""

    def run(context: dict[str, Any], now: int | None) -> Any:
        raise AssertionError(f"{key} evaluated while the circuit is open")

    flag = Flag(
        key=key,
        state="ENABLED",
        variants={"on": True, "off": False},
        default_variant="on",
        targeting=None,
    )
    return CompiledFlag(flag, "v3", run)


def test_open_circuit_evaluates_no_other_flag() -> None:
    real = snapshot(circuit=boolean("on"), shadow=boolean("on"))
    flags = Spy({key: exploding(key) for key in real.flags})
    flags[CIRCUIT_OPEN] = real.flags[CIRCUIT_OPEN]
    flags.looked_up.clear()
    snap = FlagSnapshot(flags=flags, version=4)
    d = route(snap)
    assert (d.engine, d.reason, d.flag_version) == ("legacy", "circuit-open", 4)
    assert flags.looked_up == [CIRCUIT_OPEN]


def test_closed_circuit_evaluates_in_contract_order() -> None:
    flags = Spy(snapshot(shadow=boolean("off")).flags)
    route(FlagSnapshot(flags=flags, version=1))
    assert flags.looked_up == [CIRCUIT_OPEN, NEW_ROUTER, DYNAMIC_CURRENCY, FX_KILL_SWITCH, SHADOW]


def test_circuit_targeting_sees_the_merchant() -> None:
    per_merchant = boolean(
        targeting={"if": [{"in": [{"var": "targetingKey"}, ["m-bad"]]}, "on", "off"]}
    )
    snap = snapshot(circuit=per_merchant)
    assert route(snap, merchant="m-bad").reason == "circuit-open"
    assert route(snap, merchant="m-good").engine == "new"


def test_static_context_from_the_daemon_overrides_like_the_daemon() -> None:
    by_region = boolean(targeting={"if": [{"==": [{"var": "region"}, "eu"]}, "on", "off"]})
    assert route(snapshot(circuit=by_region, context={"region": "eu"})).reason == "circuit-open"
    assert route(snapshot(circuit=by_region, context={"region": "us"})).engine == "new"


# ----------------------------------------------------------------------------- bucketing


def merchants(n: int) -> Iterator[str]:
    return (f"merchant-{i:04d}" for i in range(n))


def test_release_split_is_stable_per_merchant_whatever_the_customer() -> None:
    snap = snapshot(release=boolean(targeting=split(50)))
    engines = {m: route(snap, merchant=m).engine for m in merchants(400)}
    assert 150 < sum(e == "new" for e in engines.values()) < 250
    for m, engine in list(engines.items())[:50]:
        for customer in ("c-1", "c-2", "c-3"):
            assert route(snap, merchant=m, customer=customer).engine == engine


def test_dcc_assignment_is_stable_per_customer_whatever_the_merchant() -> None:
    snap = snapshot(dcc=dcc(50))
    variants = {
        c: route(snap, customer=c).experiment_variant for c in (f"cust-{i}" for i in range(400))
    }
    assert set(variants.values()) == {"treatment", "control"}
    assert 150 < sum(v == "treatment" for v in variants.values()) < 250
    for c, variant in list(variants.items())[:50]:
        assert route(snap, merchant="m-other", customer=c).experiment_variant == variant


def test_release_ramp_only_adds_merchants() -> None:
    # Weights grow; fractional keeps earlier buckets, so no merchant flips back to legacy.
    previous: set[str] = set()
    for pct in (1, 5, 25, 50, 100):
        snap = snapshot(release=boolean(targeting=split(pct)))
        on = {m for m in merchants(300) if route(snap, merchant=m).engine == "new"}
        assert previous <= on
        previous = on
    assert len(previous) == 300


# ----------------------------------------------------------------------------- decisions


def test_decisions_are_shared_per_snapshot_and_carry_its_version() -> None:
    snap = snapshot(version=5)
    assert route(snap, customer="a") is route(snap, customer="a")
    other = snapshot(version=6)
    assert route(other).flag_version == 6
    assert route(other) is not route(snap)
    with pytest.raises(AttributeError):
        route(snap).engine = "legacy"  # type: ignore[misc]
