"""Money is an integer number of nano-USD (10**-9 USD). Never a float.

Decimal USD is parsed once, at the edge, with `usd_to_nanousd`; everything inside the system
adds and compares integers.
"""

from decimal import ROUND_CEILING, Decimal, InvalidOperation

NANOUSD_PER_USD = 1_000_000_000


class MoneyError(ValueError):
    pass


def usd_to_nanousd(value: str | int | Decimal) -> int:
    """Exact conversion of a decimal USD amount ("2.00", "0.000000001") to nano-USD.

    Floats are refused: they cannot represent most decimal amounts. An amount finer than one
    nano-USD is refused rather than silently rounded.
    """
    if isinstance(value, float | bool):
        raise MoneyError("USD amounts must be given as decimal strings, not floats")
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError) as exc:
        raise MoneyError(f"not a decimal USD amount: {value!r}") from exc
    if not amount.is_finite():
        raise MoneyError(f"not a finite USD amount: {value!r}")
    nanos = amount * NANOUSD_PER_USD
    if nanos != nanos.to_integral_value():
        raise MoneyError(f"{value!r} USD is not a whole number of nano-USD")
    return int(nanos)


def ceil_nanousd(value: int | Decimal | float) -> int:
    """Round a provider-reported cost up to a whole nano-USD (we never under-charge by rounding)."""
    if isinstance(value, bool):
        raise MoneyError("a boolean is not a cost")
    if isinstance(value, int):
        return value
    return int(Decimal(str(value)).to_integral_value(rounding=ROUND_CEILING))


def nanousd_to_usd(nanousd: int) -> Decimal:
    return Decimal(nanousd) / NANOUSD_PER_USD


def usd_text(nanousd: int) -> str:
    """Exact decimal USD, at least 2 decimals: 2_000_000_000 -> "2.00", 1 -> "0.000000001".

    What the APIs return for USD amounts: a string, since JSON numbers are floats to most
    clients."""
    text = f"{nanousd_to_usd(abs(nanousd)):.9f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{'-' if nanousd < 0 else ''}{whole}.{frac.ljust(2, '0')}"


def format_usd(nanousd: int) -> str:
    """Human display, e.g. 2_000_000_000 -> "$2.00", 1 -> "$0.000000001", -5e8 -> "-$0.50"."""
    text = usd_text(nanousd)
    return f"-${text[1:]}" if nanousd < 0 else f"${text}"
