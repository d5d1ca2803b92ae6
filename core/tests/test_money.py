"""core.money: exact USD <-> nano-USD conversion and display. Pure functions, no database."""

from decimal import Decimal

import pytest

from core.money import MoneyError, ceil_nanousd, format_usd, usd_to_nanousd


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2.00", 2_000_000_000),
        ("0.000000001", 1),
        ("12.50", 12_500_000_000),
        ("0", 0),
        ("-1", -1_000_000_000),
        (Decimal("3.5"), 3_500_000_000),
        (Decimal("0.000000007"), 7),
        (5, 5_000_000_000),
        (0, 0),
    ],
)
def test_usd_to_nanousd_converts_decimal_amounts_exactly(value, expected):
    result = usd_to_nanousd(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize("value", [2.0, 0.1, 1e-9])
def test_usd_to_nanousd_refuses_floats(value):
    with pytest.raises(MoneyError, match="float"):
        usd_to_nanousd(value)


@pytest.mark.parametrize("value", [True, False])
def test_usd_to_nanousd_refuses_booleans(value):
    with pytest.raises(MoneyError):
        usd_to_nanousd(value)


@pytest.mark.parametrize("value", ["0.0000000001", "1.0000000005", Decimal("0.0000000001")])
def test_usd_to_nanousd_refuses_amounts_finer_than_one_nanousd(value):
    with pytest.raises(MoneyError, match="nano-USD"):
        usd_to_nanousd(value)


@pytest.mark.parametrize("value", ["abc", "", "1,00", "$2.00", None])
def test_usd_to_nanousd_refuses_text_that_is_not_a_number(value):
    with pytest.raises(MoneyError, match="not a decimal USD amount"):
        usd_to_nanousd(value)


@pytest.mark.parametrize("value", ["NaN", "sNaN", "Infinity", "-Infinity", Decimal("NaN")])
def test_usd_to_nanousd_refuses_non_finite_amounts(value):
    with pytest.raises(MoneyError, match="not a finite USD amount"):
        usd_to_nanousd(value)


def test_money_error_is_a_value_error():
    with pytest.raises(ValueError):
        usd_to_nanousd("abc")


@pytest.mark.parametrize("value", [0, 1, 7, 2_000_000_000, -3])
def test_ceil_nanousd_passes_integers_through_unchanged(value):
    result = ceil_nanousd(value)
    assert result == value
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.2, 2),
        (1.0, 1),
        (0.0001, 1),
        (Decimal("0.1"), 1),
        (Decimal("5"), 5),
        (Decimal("5.000000001"), 6),
        (-1.5, -1),
    ],
)
def test_ceil_nanousd_rounds_fractions_up_to_a_whole_nanousd(value, expected):
    result = ceil_nanousd(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize("value", [True, False])
def test_ceil_nanousd_refuses_booleans(value):
    with pytest.raises(MoneyError, match="boolean"):
        ceil_nanousd(value)


@pytest.mark.parametrize(
    ("nanousd", "expected"),
    [
        (2_000_000_000, "$2.00"),
        (1, "$0.000000001"),
        (-500_000_000, "-$0.50"),
        (0, "$0.00"),
        (50_000_000_000, "$50.00"),
        (12_500_000_000, "$12.50"),
        (1_234_567_891, "$1.234567891"),
        (100_000_000_000, "$100.00"),
        (-1, "-$0.000000001"),
    ],
)
def test_format_usd_shows_dollars_with_at_least_two_decimals(nanousd, expected):
    assert format_usd(nanousd) == expected


@pytest.mark.parametrize("text", ["2.00", "0.000000001", "12.5", "1.234567891", "0"])
def test_format_usd_round_trips_through_usd_to_nanousd(text):
    nanousd = usd_to_nanousd(text)
    assert usd_to_nanousd(format_usd(nanousd).removeprefix("$")) == nanousd
