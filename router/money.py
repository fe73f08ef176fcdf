"""Money: integer minor units of ISO 4217 currencies, decimal-string rates, FX conversion.

An amount is an ``int`` of minor units of a currency whose exponent (decimal places) comes
from the ``iso4217`` package (SIX's list-one, the edition in ``ISO4217_PUBLISHED``): JPY 0,
EUR 2, KWD 3. Binary floats never enter: rates and markups are parsed from decimal strings,
and every function here raises ``TypeError`` when handed a ``float``.

Rounding: ``convert`` multiplies exactly (amount x rate x (1 + markup), no intermediate
rounding, the rate is never truncated) and rounds once, to the target currency's minor unit,
with ``ROUND_HALF_UP`` (ties away from zero; amounts are positive). That is what the euro
conversion rules (Reg. 1103/97: nearest cent, an exact half rounds up, no rounding of the
rate) and acquirer DCC rules state, so the cardholder's amount can be recomputed by the
counterparty; Python's default ``ROUND_HALF_EVEN`` suits ledgers summing many roundings, not
one conversion shown to a customer. The result is within half a minor unit of the exact value.
(Elavon also truncates the marked-up rate to 6 places; we don't, so that bound holds, and a
quote stores rate and markup as given so any amount can be recomputed.)

Bounds: amounts are 1 <= amount_minor < ``MAX_AMOUNT_MINOR`` (10**15) in their own currency,
and ``convert`` applies the same bound to its result, so every amount fits int64 (~9.2e18)
with ample headroom and every product stays exact in a 60-digit context.
"""

from __future__ import annotations

import re
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
)
from typing import Any

from iso4217 import Currency, __published__

ISO4217_PUBLISHED = __published__
ROUNDING = ROUND_HALF_UP
MAX_AMOUNT_MINOR = 10**15
# Rates: 1e-9 <= rate < 1e9 with at most 12 significant digits (providers quote 5-8).
MIN_RATE = Decimal("1e-9")
MAX_RATE = Decimal("1e9")
MAX_RATE_DIGITS = 12
# Markups are fractions ("0.035" = 3.5 %). Below 1 so a percentage sent by mistake ("3.5")
# is refused instead of charging 350 %; 6 decimal places covers basis points and finer.
MAX_MARKUP = Decimal(1)
MAX_MARKUP_PLACES = 6

# Exact arithmetic: operands are bounded (15 + 12 + 7 digits), so 60 digits never round;
# Inexact/Rounded are trapped to prove it rather than trust it.
_EXACT = Context(prec=60, traps=[InvalidOperation, Overflow, Inexact, Rounded])
_ROUND = Context(prec=60, rounding=ROUNDING, traps=[InvalidOperation, Overflow])
_DECIMAL_TEXT = re.compile(r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?\Z")
_CODE = re.compile(r"[A-Z]{3}\Z")
_EXPONENTS: dict[str, int | None] = {c.value: c.exponent for c in Currency}


class MoneyError(ValueError):
    """A value the API must reject as INVALID_ARGUMENT; ``field`` names the offending field."""

    field = "amount"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field


class CurrencyError(MoneyError):
    """Not a current ISO 4217 code with a minor unit."""

    field = "currency"


class AmountError(MoneyError):
    """Non-positive, overflowing, or more precise than the currency allows."""

    field = "amount_minor"


class RateError(MoneyError):
    """A rate or markup that is not a bounded, positive decimal string."""

    field = "rate"


def _reject_non_int(value: Any, what: str) -> int:
    # bool is an int subclass; True as an amount is a bug, not one cent.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


def _reject_non_decimal(value: Any, what: str) -> Decimal:
    if not isinstance(value, Decimal):
        raise TypeError(f"{what} must be a Decimal, not {type(value).__name__}")
    return value


def exponent(currency: str) -> int:
    """Decimal places of ``currency`` (JPY 0, EUR 2, KWD 3); CurrencyError if unusable."""
    if not isinstance(currency, str):
        raise TypeError(f"currency must be a str, not {type(currency).__name__}")
    if not _CODE.match(currency):
        raise CurrencyError(f"currency {currency!r} is not an upper-case ISO 4217 code")
    if currency not in _EXPONENTS:
        raise CurrencyError(f"unknown or retired ISO 4217 currency {currency!r}")
    places = _EXPONENTS[currency]
    if places is None:
        # XAU, XDR, XTS, XXX...: ISO gives no minor unit, so no amount can be expressed.
        raise CurrencyError(f"ISO 4217 currency {currency!r} has no minor unit")
    return places


def validate_amount(amount_minor: int, currency: str) -> int:
    """Return ``amount_minor`` if it is a valid amount of ``currency``; raise otherwise."""
    amount = _reject_non_int(amount_minor, "amount_minor")
    exponent(currency)
    if amount <= 0:
        raise AmountError(f"amount_minor must be positive, got {amount}")
    if amount >= MAX_AMOUNT_MINOR:
        raise AmountError(f"amount_minor {amount} is not below the bound {MAX_AMOUNT_MINOR}")
    return amount


def _shift(value: Decimal, places: int) -> Decimal:
    # Moves the decimal point through the tuple form: exact at any size, no context involved.
    sign, digits, exp = value.as_tuple()
    assert isinstance(exp, int)
    return Decimal((sign, digits, exp + places))


def _significant(value: Decimal) -> tuple[int, int]:
    """(significant digits, decimal places) of a finite Decimal, trailing zeros ignored."""
    # Not normalize(): it rounds to the context's precision and would hide excess digits.
    _, digits, exp = value.as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digits)).lstrip("0")
    kept = text.rstrip("0")
    if not kept:
        return 0, 0
    return len(kept), max(-(exp + len(text) - len(kept)), 0)


def to_decimal(minor: int, currency: str) -> Decimal:
    """Exact major-unit value of ``minor``, e.g. 1050 EUR -> Decimal('10.50')."""
    return _shift(Decimal(_reject_non_int(minor, "minor")), -exponent(currency))


def from_decimal(amount: Decimal, currency: str) -> int:
    """Minor units of a major-unit amount; AmountError if ``currency`` can't hold it exactly.

    Trailing zeros are fine (Decimal('10.500') EUR is 1050); Decimal('10.505') EUR is refused,
    never rounded. The result is validated like any amount (positive, bounded).
    """
    value = _reject_non_decimal(amount, "amount")
    if not value.is_finite():
        raise AmountError(f"amount {value} is not finite")
    places = exponent(currency)
    # Bound before scaling so that an absurd exponent (1E+999999) costs nothing.
    if value.adjusted() > 18:
        raise AmountError(f"amount {value} is not below the bound {MAX_AMOUNT_MINOR}")
    minor = _shift(value, places)
    if _significant(minor)[1] > 0:
        raise AmountError(
            f"amount {value} has more precision than {currency} allows ({places} decimal places)"
        )
    return validate_amount(int(minor), currency)


def _check_rate(rate: Decimal, what: str) -> Decimal:
    if not rate.is_finite() or rate <= 0:
        raise RateError(f"{what} {rate} must be positive and finite", field=what)
    if not MIN_RATE <= rate < MAX_RATE:
        raise RateError(f"{what} {rate} is outside [{MIN_RATE}, {MAX_RATE})", field=what)
    if _significant(rate)[0] > MAX_RATE_DIGITS:
        raise RateError(
            f"{what} {rate} has more than {MAX_RATE_DIGITS} significant digits", field=what
        )
    return rate


def _check_markup(markup: Decimal) -> Decimal:
    if not markup.is_finite() or not 0 <= markup < MAX_MARKUP:
        raise RateError(f"markup {markup} must be a fraction in [0, {MAX_MARKUP})", field="markup")
    if _significant(markup)[1] > MAX_MARKUP_PLACES:
        raise RateError(
            f"markup {markup} has more than {MAX_MARKUP_PLACES} decimal places", field="markup"
        )
    return markup


def validate_rate(rate: Decimal) -> Decimal:
    """Return ``rate`` if it is a positive, finite Decimal within the rate bounds."""
    return _check_rate(_reject_non_decimal(rate, "rate"), "rate")


def validate_markup(markup: Decimal) -> Decimal:
    """Return ``markup`` if it is a Decimal fraction in [0, 1) with at most 6 places."""
    return _check_markup(_reject_non_decimal(markup, "markup"))


def _parse_decimal_text(text: Any, what: str) -> Decimal:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a decimal string, not {type(text).__name__}")
    # Plain notation only: no sign, exponent, whitespace, NaN or Infinity, and a bounded length
    # so a hostile provider can't make us parse a megabyte of digits.
    if len(text) > 40 or not _DECIMAL_TEXT.match(text):
        raise RateError(f"{what} {text!r} is not a plain decimal string", field=what)
    return Decimal(text)


def parse_rate(text: str) -> Decimal:
    """Parse a rate such as "1.0842": positive, finite, bounded magnitude and precision."""
    return _check_rate(_parse_decimal_text(text, "rate"), "rate")


def parse_markup(text: str) -> Decimal:
    """Parse a markup fraction such as "0.035" (3.5 %): 0 <= markup < 1, <= 6 places."""
    return _check_markup(_parse_decimal_text(text, "markup"))


def format_decimal(value: Decimal) -> str:
    """Plain-notation string of a Decimal (never "1E-7"), the form ``parse_rate`` accepts."""
    return format(_reject_non_decimal(value, "value"), "f")


def convert(amount_minor: int, from_ccy: str, to_ccy: str, rate: Decimal, markup: Decimal) -> int:
    """Convert with ``rate`` marked up by ``markup``; one ROUND_HALF_UP to ``to_ccy``'s unit.

    ``rate`` is units of ``to_ccy`` per unit of ``from_ccy`` before the markup.
    """
    validate_amount(amount_minor, from_ccy)
    exponent(to_ccy)
    exact = _exact_conversion(amount_minor, from_ccy, to_ccy, rate, markup)
    converted = int(exact.quantize(Decimal(1), context=_ROUND))
    if converted <= 0:
        raise AmountError(
            f"{amount_minor} {from_ccy} converts to less than one minor unit of {to_ccy}"
        )
    if converted >= MAX_AMOUNT_MINOR:
        raise AmountError(f"{amount_minor} {from_ccy} converts beyond the bound in {to_ccy}")
    return converted


def applied_rate(rate: Decimal, markup: Decimal) -> Decimal:
    """The rate the customer gets: ``rate * (1 + markup)``, exact, never truncated."""
    validate_rate(rate)
    validate_markup(markup)
    return _EXACT.multiply(rate, _EXACT.add(Decimal(1), markup))


def _exact_conversion(
    amount_minor: int, from_ccy: str, to_ccy: str, rate: Decimal, markup: Decimal
) -> Decimal:
    """The unrounded converted amount in minor units of ``to_ccy`` (what ``convert`` rounds)."""
    major = to_decimal(amount_minor, from_ccy)
    return _shift(_EXACT.multiply(major, applied_rate(rate, markup)), exponent(to_ccy))
