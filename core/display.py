"""Values for people to read, shared by every app's admin lists.

Money: integer minor units plus a lowercase ISO currency -> "$12.34", "12.34 SEK" (amounts
are stored and sent as minor units everywhere else). Times: short and sortable, so that a
list with two of them still fits a 1280 px screen.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

# Currencies whose minor unit is not a hundredth (ISO 4217, as Stripe lists them).
_ZERO_DECIMAL = frozenset(
    "bif clp djf gnf isk jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905 - reads as a list
)
_THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())  # noqa: SIM905
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


def minor_unit_digits(currency: str) -> int:
    code = currency.lower()
    if code in _ZERO_DECIMAL:
        return 0
    if code in _THREE_DECIMAL:
        return 3
    return 2


def format_money(amount: int | None, currency: str | None) -> str:
    """1234, "usd" -> "$12.34"; 1234, "sek" -> "12.34 SEK"; 500, "jpy" -> "500 JPY"; None -> "—"."""
    if amount is None:
        return "—"
    code = (currency or "").lower()
    digits = minor_unit_digits(code)
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**digits)
    number = f"{whole:,d}" + (f".{fraction:0{digits}d}" if digits else "")
    symbol = _SYMBOLS.get(code)
    if symbol:
        return f"{sign}{symbol}{number}"
    return f"{sign}{number} {code.upper()}".rstrip()


def format_when(value: datetime | None) -> str:
    """A moment in the server's time zone, to the minute: "2026-12-01 07:44"; None -> "—"."""
    if value is None:
        return "—"
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M")
