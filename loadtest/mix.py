"""The payment request mix: currencies with 0, 2 and 3 decimals, approving, declining and
failing test cards, DCC opt-ins. Pure (a seeded `random.Random` in, plain values out).

Test cards are the router's simulated acquirer BINs (`router.engines`): 400002/400051/400069
decline, 400119 fails with UNAVAILABLE (the acquirer is "down"; a retry with the same key is
allowed and fails the same way), anything else approves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

CardKind = Literal["approve", "decline", "fail"]

# currency -> (decimals, share of payments, smallest and largest amount in minor units)
CURRENCIES: dict[str, tuple[int, float, int, int]] = {
    "EUR": (2, 0.40, 500, 50_000),
    "USD": (2, 0.20, 500, 80_000),
    "GBP": (2, 0.08, 500, 40_000),
    "CHF": (2, 0.04, 1_000, 40_000),
    "JPY": (0, 0.12, 300, 60_000),
    "KRW": (0, 0.04, 1_000, 500_000),
    "KWD": (3, 0.07, 1_000, 150_000),
    "BHD": (3, 0.05, 1_000, 150_000),
}
APPROVE_BINS = ("424242", "411111", "555555", "520082")
DECLINE_BINS = {"400002": "do_not_honor", "400051": "insufficient_funds", "400069": "expired_card"}
FAIL_BIN = "400119"
DECLINE_SHARE = 0.06
FAIL_SHARE = 0.01
DCC_OPT_IN_SHARE = 0.20
# Customers who see the checkout complete it with this probability, per experiment variant
# (`RecordConversion` ACCEPTED, else ABANDONED): an A/A test unless a run says otherwise.
ACCEPT_RATES = {"control": 0.70, "treatment": 0.70}
MERCHANTS = 200
CUSTOMERS = 100_000


@dataclass(frozen=True, slots=True)
class PaymentSpec:
    """One payment to send (without its idempotency key) and what the card should do."""

    merchant_id: str
    customer_id: str
    amount_minor: int
    currency: str
    card_token: str
    card_bin: str
    card_last4: str
    card_currency: str
    dcc_opt_in: bool
    kind: CardKind

    @property
    def expected_status(self) -> str | None:
        """APPROVED or DECLINED; None for a failing card (UNAVAILABLE, nothing recorded)."""
        return {"approve": "APPROVED", "decline": "DECLINED", "fail": None}[self.kind]


def _card_currency(currency: str, rng: random.Random) -> str:
    """A foreign card for a DCC opt-in: USD cards abroad, EUR or GBP cards in the US."""
    if currency == "USD":
        return rng.choice(("EUR", "GBP"))
    return "USD"


def next_payment(rng: random.Random, *, fail_share: float = FAIL_SHARE) -> PaymentSpec:
    """Draw one payment from the mix; ``fail_share`` of them on the failing card."""
    codes = list(CURRENCIES)
    currency = rng.choices(codes, [CURRENCIES[c][1] for c in codes])[0]
    _, _, low, high = CURRENCIES[currency]
    draw = rng.random()
    kind: CardKind
    if draw < fail_share:
        kind, card_bin = "fail", FAIL_BIN
    elif draw < fail_share + DECLINE_SHARE:
        kind, card_bin = "decline", rng.choice(sorted(DECLINE_BINS))
    else:
        kind, card_bin = "approve", rng.choice(APPROVE_BINS)
    dcc = rng.random() < DCC_OPT_IN_SHARE
    return PaymentSpec(
        merchant_id=f"m-{rng.randrange(MERCHANTS):03d}",
        customer_id=f"c-{rng.randrange(CUSTOMERS):06d}",
        amount_minor=rng.randint(low, high),
        currency=currency,
        card_token=f"tok_{rng.getrandbits(64):016x}",
        card_bin=card_bin,
        card_last4=f"{rng.randrange(10_000):04d}",
        card_currency=_card_currency(currency, rng) if dcc else currency,
        dcc_opt_in=dcc,
        kind=kind,
    )


def decimals(currency: str) -> int:
    """Minor-unit exponent of a currency in the mix."""
    return CURRENCIES[currency][0]


def parse_rates(text: str) -> dict[str, float]:
    """``control=0.7,treatment=0.75`` -> {variant: probability}; ValueError names the fault."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        variant, sep, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not sep or not variant or not 0 <= rate <= 1:
            raise ValueError(f"--accept-rates {item!r}: use VARIANT=P with P in 0..1")
        rates[variant] = rate
    return rates
