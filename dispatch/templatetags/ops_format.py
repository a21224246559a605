"""Formatting for the operations page: durations and shares (with no-break spaces, so they never wrap)."""

from __future__ import annotations

from django import template

register = template.Library()

NBSP = "\u00a0"


@register.filter
def duration(seconds: float | int | None) -> str:
    """45 s, 1 m, 2 m 05 s, 1 h 02 m; an em dash when there is nothing to show."""
    if seconds is None or seconds == "":
        return "—"
    total = int(round(float(seconds)))
    if total < 60:
        parts = [f"{total} s"]
    elif total < 3600:
        parts = [f"{total // 60} m"] + ([f"{total % 60:02d} s"] if total % 60 else [])
    else:
        parts = [f"{total // 3600} h", f"{total % 3600 // 60:02d} m"]
    return NBSP.join(parts).replace(" ", NBSP)


@register.filter
def percent(ratio: float | None) -> str:
    """0.8125 -> 81 %; an em dash when there is no figure."""
    if ratio is None or ratio == "":
        return "—"
    return f"{float(ratio) * 100:.0f}{NBSP}%"
