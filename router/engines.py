"""The two routing engines and the simulated acquirers they route to.

Both engines take the same input and return the same kind of answer, so the service can
swap them per payment and run one in the shadow of the other. Acquirers are simulated
deterministically from the card's BIN, so every result is reproducible in tests and drills.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Protocol

# Test card BINs (first six digits) with a fixed outcome; any other BIN approves.
DECLINE_BINS = {
    "400002": "do_not_honor",
    "400051": "insufficient_funds",
    "400069": "expired_card",
}
FAIL_BINS = {"400119": "acquirer_unavailable"}

# Acquirer -> (currencies it settles, fee in basis points). The new engine picks the
# cheapest acquirer that settles the payment's currency; legacy routes by card scheme.
ACQUIRERS: dict[str, tuple[frozenset[str], int]] = {
    "acq-global": (frozenset({"USD", "EUR", "GBP", "JPY", "KWD", "BHD", "CHF", "SEK"}), 290),
    "acq-eu": (frozenset({"EUR", "GBP", "CHF", "SEK"}), 180),
    "acq-us": (frozenset({"USD"}), 210),
    "acq-gulf": (frozenset({"KWD", "BHD", "AED"}), 240),
}

FAULTS_ENV = "RIPCORD_FAULT_INJECTION"
FAULTS_ENV_VALUE = "i-know-this-breaks-payments"


@dataclass(frozen=True, slots=True)
class PaymentInput:
    """What an engine needs to know about a payment."""

    merchant_id: str
    amount_minor: int
    currency: str
    card_bin: str


@dataclass(frozen=True, slots=True)
class Route:
    """An engine's answer: where the payment went and what the acquirer said."""

    acquirer: str
    status: str  # APPROVED | DECLINED | FAILED
    decline_reason: str = ""


class Engine(Protocol):
    """A routing engine: a pure function from payment to route."""

    name: str

    def route(self, payment: PaymentInput) -> Route:
        """Choose an acquirer and return its (simulated) answer."""
        ...


def acquirer_answer(acquirer: str, card_bin: str) -> Route:
    """The simulated acquirer's verdict, decided by the card's BIN."""
    bin6 = card_bin[:6]
    if bin6 in FAIL_BINS:
        return Route(acquirer, "FAILED", FAIL_BINS[bin6])
    if bin6 in DECLINE_BINS:
        return Route(acquirer, "DECLINED", DECLINE_BINS[bin6])
    return Route(acquirer, "APPROVED")


class LegacyEngine:
    """Today's rules: route by card scheme, ignoring currency and cost."""

    name = "legacy"

    def route(self, payment: PaymentInput) -> Route:
        """Visa (4) to acq-global, Mastercard (5) to acq-us for USD else acq-global."""
        if payment.card_bin.startswith("5") and payment.currency == "USD":
            return acquirer_answer("acq-us", payment.card_bin)
        return acquirer_answer("acq-global", payment.card_bin)


class NewEngine:
    """Cost- and currency-aware: the cheapest acquirer that settles the currency."""

    name = "new"

    def route(self, payment: PaymentInput) -> Route:
        """Lowest fee among acquirers settling ``payment.currency``; acq-global otherwise."""
        candidates = [
            (fee, name)
            for name, (currencies, fee) in ACQUIRERS.items()
            if payment.currency in currencies
        ]
        acquirer = min(candidates)[1] if candidates else "acq-global"
        return acquirer_answer(acquirer, payment.card_bin)


def shadow_mismatch(primary: Route, shadow: Route) -> str | None:
    """The kind of disagreement between two routes (None when they agree)."""
    if primary.status != shadow.status:
        return "status"
    if primary.acquirer != shadow.acquirer:
        return "acquirer"
    return None


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault injection for one engine: extra latency and an error rate (drills and gates)."""

    latency_s: float = 0.0
    error_rate: float = 0.0

    @property
    def active(self) -> bool:
        """Whether anything is injected."""
        return self.latency_s > 0 or self.error_rate > 0

    def should_fail(self, rng: random.Random) -> bool:
        """Draw whether this call fails."""
        return self.error_rate > 0 and rng.random() < self.error_rate


class FaultConfigError(ValueError):
    """A fault-injection spec that is malformed or not explicitly allowed."""


def parse_faults(specs: list[str], environ: dict[str, str] | None = None) -> dict[str, Faults]:
    """``["new:latency=50ms,errors=0.05"]`` -> per-engine Faults.

    Refused unless the environment says ``RIPCORD_FAULT_INJECTION=i-know-this-breaks-payments``:
    a fault knob must be impossible to enable by accident (a stray flag in a manifest).
    """
    if not specs:
        return {}
    env = os.environ if environ is None else environ
    if env.get(FAULTS_ENV) != FAULTS_ENV_VALUE:
        raise FaultConfigError(
            f"--inject-faults needs {FAULTS_ENV}={FAULTS_ENV_VALUE} in the environment "
            "(fault injection breaks payments on purpose)"
        )
    out: dict[str, Faults] = {}
    for spec in specs:
        engine, sep, rest = spec.partition(":")
        if not sep or engine not in ("legacy", "new"):
            raise FaultConfigError(f"--inject-faults {spec!r}: expected legacy:… or new:…")
        latency, errors = 0.0, 0.0
        for part in rest.split(","):
            key, _, value = part.partition("=")
            try:
                if key == "latency":
                    latency = float(value.removesuffix("ms")) / 1000
                elif key == "errors":
                    errors = float(value)
                else:
                    raise ValueError(key)
            except ValueError as exc:
                raise FaultConfigError(
                    f"--inject-faults {spec!r}: use latency=<ms>ms,errors=<0..1>"
                ) from exc
        if not (0 <= errors <= 1) or latency < 0:
            raise FaultConfigError(f"--inject-faults {spec!r}: errors in 0..1, latency >= 0")
        out[engine] = Faults(latency, errors)
    return out
