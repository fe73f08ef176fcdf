"""Money: ISO 4217 exponents, amount validation, decimal strings, and conversion rounding."""

from __future__ import annotations

import datetime
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from router.money import (
    ISO4217_PUBLISHED,
    MAX_AMOUNT_MINOR,
    MAX_RATE,
    MIN_RATE,
    AmountError,
    CurrencyError,
    RateError,
    applied_rate,
    convert,
    exponent,
    format_decimal,
    from_decimal,
    parse_markup,
    parse_rate,
    to_decimal,
    validate_amount,
    validate_markup,
    validate_rate,
)

# Zero-, two-, three- and four-decimal currencies.
CURRENCIES = ["JPY", "KRW", "ISK", "EUR", "USD", "GBP", "KWD", "BHD", "JOD", "CLF"]


# --- exponents -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "places"),
    [
        ("JPY", 0),
        ("KRW", 0),
        ("ISK", 0),
        ("EUR", 2),
        ("USD", 2),
        ("MGA", 2),
        ("KWD", 3),
        ("BHD", 3),
        ("TND", 3),
        ("CLF", 4),
    ],
)
def test_exponent_pins_iso_values(code, places):
    assert exponent(code) == places


def test_data_edition_is_pinned():
    # A new iso4217 release changes this date: re-check the pinned exponents above then.
    assert datetime.date(2026, 1, 1) == ISO4217_PUBLISHED


@pytest.mark.parametrize("code", ["ABC", "HRK", "DEM", "ZWL", "SLL"])
def test_unknown_or_retired_currency_is_named(code):
    with pytest.raises(CurrencyError, match=code) as info:
        exponent(code)
    assert info.value.field == "currency"


@pytest.mark.parametrize("code", ["eur", "Eur", "EU", "EURO", " EUR", ""])
def test_currency_must_be_an_upper_case_code(code):
    with pytest.raises(CurrencyError):
        exponent(code)


@pytest.mark.parametrize("code", ["XAU", "XDR", "XTS", "XXX"])
def test_currency_without_minor_unit_is_refused(code):
    with pytest.raises(CurrencyError, match="no minor unit"):
        exponent(code)


def test_currency_must_be_a_string():
    with pytest.raises(TypeError):
        exponent(978)  # type: ignore[arg-type]


# --- amounts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, -1, -(10**20), MAX_AMOUNT_MINOR, MAX_AMOUNT_MINOR + 1])
def test_invalid_amounts(amount):
    with pytest.raises(AmountError) as info:
        validate_amount(amount, "EUR")
    assert info.value.field == "amount_minor"


@pytest.mark.parametrize("amount", [1, 1050, MAX_AMOUNT_MINOR - 1])
def test_valid_amounts(amount):
    assert validate_amount(amount, "JPY") == amount


def test_bound_fits_int64_with_headroom():
    assert MAX_AMOUNT_MINOR * 1000 < 2**63


@pytest.mark.parametrize("amount", [10.5, True, Decimal(10), "10"])
def test_amount_must_be_an_int(amount):
    with pytest.raises(TypeError):
        validate_amount(amount, "EUR")


def test_amount_of_bad_currency():
    with pytest.raises(CurrencyError):
        validate_amount(100, "XYZ")


@pytest.mark.parametrize(
    ("minor", "code", "major"),
    [
        (1050, "EUR", "10.50"),
        (500, "JPY", "500"),
        (5124, "KWD", "5.124"),
        (1, "CLF", "0.0001"),
        (7, "USD", "0.07"),
    ],
)
def test_to_decimal(minor, code, major):
    value = to_decimal(minor, code)
    assert value == Decimal(major)
    assert str(value) == major  # keeps the currency's places


@pytest.mark.parametrize(
    ("major", "code", "minor"),
    [
        ("10.50", "EUR", 1050),
        ("10.5", "EUR", 1050),
        ("10.500", "EUR", 1050),
        ("500", "JPY", 500),
        ("100.0", "JPY", 100),
        ("5.124", "KWD", 5124),
        ("1E+2", "EUR", 10000),
    ],
)
def test_from_decimal(major, code, minor):
    assert from_decimal(Decimal(major), code) == minor


@pytest.mark.parametrize(
    ("major", "code"),
    [("10.505", "EUR"), ("100.5", "JPY"), ("5.1245", "KWD"), ("0.001", "USD"), ("1E-30", "EUR")],
)
def test_from_decimal_refuses_excess_precision(major, code):
    with pytest.raises(AmountError, match="more precision"):
        from_decimal(Decimal(major), code)


@pytest.mark.parametrize(
    "major", ["0", "-1.00", "NaN", "Infinity", "1E+999999", "10000000000000.00"]
)
def test_from_decimal_refuses_invalid_amounts(major):
    with pytest.raises(AmountError):
        from_decimal(Decimal(major), "EUR")


def test_from_decimal_refuses_floats():
    with pytest.raises(TypeError):
        from_decimal(10.5, "EUR")  # type: ignore[arg-type]


# --- rates and markups ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["1", "1.0842", "0.000000001", "155.42", "999999999.999", "0.30695", "1.00000000000000000000"],
)
def test_parse_rate(text):
    assert parse_rate(text) == Decimal(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1.0",
        "1.0 ",
        "1e3",
        "1E-2",
        "-1",
        "+1",
        "0",
        "0.000",
        "NaN",
        "Infinity",
        "inf",
        "1,5",
        "01.5",
        ".5",
        "5.",
        "0.0000000001",
        "1000000000",
        "1.00000000001234",
        "1" * 41,
    ],
)
def test_parse_rate_rejects(text):
    with pytest.raises(RateError) as info:
        parse_rate(text)
    assert info.value.field == "rate"


@pytest.mark.parametrize("value", [1.0842, 1, Decimal("1.0842"), None, b"1.0"])
def test_parse_rate_takes_strings_only(value):
    with pytest.raises(TypeError):
        parse_rate(value)


@pytest.mark.parametrize("text", ["0", "0.035", "0.0325", "0.999999", "0.1000000"])
def test_parse_markup(text):
    assert parse_markup(text) == Decimal(text)


@pytest.mark.parametrize("text", ["3.5", "1", "1.0", "-0.01", "0.0000001", "3%", "1e-2"])
def test_parse_markup_rejects(text):
    with pytest.raises(RateError) as info:
        parse_markup(text)
    assert info.value.field == "markup"


def test_validators_refuse_floats():
    with pytest.raises(TypeError):
        validate_rate(1.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        validate_markup(0.035)  # type: ignore[arg-type]


def test_validate_rate_catches_digits_a_context_would_hide():
    # normalize() under the default 28-digit context would round this to 1 and let it pass.
    with pytest.raises(RateError):
        validate_rate(Decimal("1." + "0" * 30 + "1"))


def test_format_decimal_is_plain():
    assert format_decimal(Decimal("1E-7")) == "0.0000001"
    assert parse_rate(format_decimal(Decimal("1.5E-7"))) == Decimal("1.5E-7")


# --- conversion -----------------------------------------------------------------------------


def test_elavon_worked_example():
    # payments-domain notes 1.3: EUR 150.00 at 0.749388 -> GBP 112.41.
    assert convert(15000, "EUR", "GBP", Decimal("0.749388"), Decimal(0)) == 11241


def test_markup_is_applied_to_the_rate():
    assert applied_rate(Decimal("1.1"), Decimal("0.035")) == Decimal("1.1385")
    assert convert(10000, "EUR", "USD", Decimal("1.1"), Decimal("0.035")) == 11385


@pytest.mark.parametrize(
    ("amount", "source", "target", "rate", "expected"),
    [
        (4955, "EUR", "USD", "1.5", 7433),  # 7432.5: half-up; half-even would give 7432
        (1, "KWD", "USD", "5", 1),  # 0.5 cent: half-up gives 1; half-even 0
        (3, "KWD", "USD", "5", 2),  # 1.5 cents -> 2 both ways
        (10000, "EUR", "JPY", "180.285", 18029),  # 18028.5 -> 18029
        (100, "USD", "KWD", "0.3065", 307),  # 306.5 fils: half-up 307; half-even 306
        (100, "USD", "KWD", "0.30649", 306),  # 306.49 -> 306
        (100, "USD", "KWD", "0.30695", 307),  # 306.95 -> 307
    ],
)
def test_rounding_is_half_up(amount, source, target, rate, expected):
    assert convert(amount, source, target, Decimal(rate), Decimal(0)) == expected


def test_conversion_ignores_the_ambient_decimal_context():
    with localcontext() as ctx:
        ctx.prec = 3
        ctx.rounding = ROUND_DOWN
        assert convert(4955, "EUR", "USD", Decimal("1.5"), Decimal(0)) == 7433
        ctx.rounding = ROUND_HALF_EVEN
        assert (
            convert(123456789012345, "JPY", "EUR", Decimal("0.00555"), Decimal("0.035"))
            == 70916666028416
        )


def test_conversion_below_one_minor_unit_is_refused():
    with pytest.raises(AmountError, match="less than one minor unit"):
        convert(1, "KRW", "KWD", Decimal("0.0002"), Decimal(0))


def test_conversion_beyond_the_bound_is_refused():
    with pytest.raises(AmountError, match="beyond the bound"):
        convert(MAX_AMOUNT_MINOR - 1, "USD", "KRW", Decimal("1468.5"), Decimal(0))


@pytest.mark.parametrize(
    ("rate", "markup"),
    [(1.1, Decimal(0)), (Decimal("1.1"), 0.035), ("1.1", Decimal(0)), (Decimal("1.1"), "0")],
)
def test_conversion_refuses_non_decimals(rate, markup):
    with pytest.raises(TypeError):
        convert(100, "EUR", "USD", rate, markup)


@pytest.mark.parametrize(
    ("rate", "markup"),
    [
        (Decimal(0), Decimal(0)),
        (Decimal(-1), Decimal(0)),
        (Decimal("NaN"), Decimal(0)),
        (Decimal(1), Decimal(1)),
        (Decimal(1), Decimal("-0.1")),
    ],
)
def test_conversion_refuses_bad_rates(rate, markup):
    with pytest.raises(RateError):
        convert(100, "EUR", "USD", rate, markup)


def test_conversion_validates_currencies_and_amount():
    with pytest.raises(CurrencyError, match="XYZ"):
        convert(100, "EUR", "XYZ", Decimal(1), Decimal(0))
    with pytest.raises(AmountError):
        convert(0, "EUR", "USD", Decimal(1), Decimal(0))


# --- properties -----------------------------------------------------------------------------

currencies = st.sampled_from(CURRENCIES)
# Rates of up to 12 significant digits across the whole allowed magnitude range.
rates = st.builds(
    lambda mantissa, scale: Decimal(mantissa).scaleb(scale),
    st.integers(1, 10**12 - 1),
    st.integers(-21, 8),
).filter(lambda rate: MIN_RATE <= rate < MAX_RATE)
markups = st.integers(0, 999_999).map(lambda n: Decimal(n).scaleb(-6))
amounts = st.one_of(st.integers(1, 10**6), st.integers(1, MAX_AMOUNT_MINOR - 1))


def exact_minor(amount, source, target, rate, markup):
    """The exact converted amount, computed with rationals (independent of the Decimal code)."""
    return (
        Fraction(amount)
        / 10 ** exponent(source)
        * Fraction(rate)
        * (1 + Fraction(markup))
        * 10 ** exponent(target)
    )


@given(amounts, currencies, currencies, rates, markups)
def test_conversion_is_within_half_a_minor_unit(amount, source, target, rate, markup):
    exact = exact_minor(amount, source, target, rate, markup)
    nearest = int(exact + Fraction(1, 2))  # floor(x + 1/2): half-up for positive x
    if nearest <= 0 or nearest >= MAX_AMOUNT_MINOR:
        with pytest.raises(AmountError):
            convert(amount, source, target, rate, markup)
        return
    converted = convert(amount, source, target, rate, markup)
    error = converted - exact
    assert abs(error) <= Fraction(1, 2)
    if abs(error) == Fraction(1, 2):
        assert error > 0  # ties go up
    assert converted == nearest


@given(st.integers(0, 10**6 - 1).map(lambda n: n * 2 + 1), st.sampled_from(["EUR", "USD"]))
def test_exact_ties_round_up(odd, target):
    # odd/2 minor units is an exact half: EUR x 0.5 with the amount in cents.
    assert convert(odd, "EUR", target, Decimal("0.5"), Decimal(0)) == (odd + 1) // 2


@given(st.integers(1, MAX_AMOUNT_MINOR - 1), currencies)
def test_minor_to_decimal_round_trip(amount, code):
    assert from_decimal(to_decimal(amount, code), code) == amount


@given(st.integers(1, MAX_AMOUNT_MINOR - 1), currencies, st.integers(1, 9))
def test_excess_precision_always_refused(amount, code, digit):
    value = Decimal(amount * 10 + digit).scaleb(-(exponent(code) + 1))
    with pytest.raises(AmountError):
        from_decimal(value, code)


@given(rates)
def test_rate_string_round_trip(rate):
    assert parse_rate(format_decimal(rate)) == rate


@given(markups)
def test_markup_string_round_trip(markup):
    assert parse_markup(format_decimal(markup)) == markup


@given(amounts, currencies, currencies, rates, markups, markups)
def test_a_bigger_markup_never_converts_to_less(amount, source, target, rate, low, high):
    low, high = sorted((low, high))
    try:
        small = convert(amount, source, target, rate, low)
        large = convert(amount, source, target, rate, high)
    except AmountError:
        assume(False)
    assert small <= large


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_are_always_type_errors(value):
    with pytest.raises(TypeError):
        parse_rate(value)
    with pytest.raises(TypeError):
        convert(100, "EUR", "USD", value, Decimal(0))
