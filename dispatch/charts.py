"""Geometry for small server-rendered SVG bar charts (the admin's operations page).

The template draws what these return; no charting library, nothing from a CDN.
Sizes are in the SVG's own units: the chart scales with its box (viewBox).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .ops import PRIORITIES, OperationsSnapshot

WIDTH = 360
FONT_GAP = 4


@dataclass(frozen=True)
class LegendItem:
    label: str
    css: str


@dataclass(frozen=True)
class Segment:
    x: float
    width: float
    value: int
    css: str
    title: str


@dataclass(frozen=True)
class Row:
    label: str
    y: float
    text_y: float
    segments: list[Segment]
    total: int
    total_x: float
    note: str


@dataclass(frozen=True)
class HBars:
    """Horizontal bars, each split into stacked segments."""

    title: str
    width: int
    height: int
    label_width: int
    label_x: int
    bar_height: int
    rows: list[Row]
    legend: list[LegendItem]
    empty: bool


@dataclass(frozen=True)
class Column:
    x: float
    y: float
    width: float
    height: float
    center: float
    value: int
    value_y: float
    label: str
    css: str
    title: str


@dataclass(frozen=True)
class VBars:
    """Vertical bars (a histogram or a distribution)."""

    title: str
    width: int
    height: int
    baseline: float
    label_y: float
    columns: list[Column]
    legend: list[LegendItem]
    empty: bool


# (label, value, css class) for one part of a bar.
Part = tuple[str, int, str]


def hbars(
    title: str,
    rows: Sequence[tuple[str, Sequence[Part], str]],
    *,
    legend: Sequence[LegendItem] = (),
    label_width: int = 64,
    value_width: int = 48,
    bar_height: int = 18,
    gap: int = 8,
    width: int = WIDTH,
) -> HBars:
    """rows: (label, parts, note); the note (such as "3 free"), or else the total, is written after the bar."""
    room = width - label_width - value_width
    scale_max = max((sum(value for _, value, _ in parts) for _, parts, _ in rows), default=0) or 1
    drawn = []
    for i, (label, parts, note) in enumerate(rows):
        y = gap / 2 + i * (bar_height + gap)
        x = float(label_width)
        segments = []
        for part_label, value, css in parts:
            if value <= 0:
                continue
            length = room * value / scale_max
            segments.append(Segment(x=round(x, 2), width=round(length, 2), value=value, css=css, title=part_label))
            x += length
        drawn.append(
            Row(
                label=label,
                y=y,
                text_y=y + bar_height / 2 + FONT_GAP,
                segments=segments,
                total=sum(value for _, value, _ in parts),
                total_x=round(x + FONT_GAP, 2),
                note=note,
            )
        )
    height = max(len(rows), 1) * (bar_height + gap)
    return HBars(
        title=title,
        width=width,
        height=height,
        label_width=label_width,
        label_x=label_width - FONT_GAP * 2,
        bar_height=bar_height,
        rows=drawn,
        legend=list(legend),
        empty=not any(r.total for r in drawn),
    )


def vbars(
    title: str,
    items: Sequence[Part],
    *,
    legend: Sequence[LegendItem] = (),
    height: int = 150,
    width: int = WIDTH,
    gap: int = 6,
) -> VBars:
    """items: (label under the bar, value, css class)."""
    top, bottom = 16, 20  # room for the value above and the label below
    baseline = height - bottom
    room = baseline - top
    scale_max = max((value for _, value, _ in items), default=0) or 1
    step = width / max(len(items), 1)
    columns = []
    for i, (label, value, css) in enumerate(items):
        bar = room * value / scale_max
        x = i * step + gap / 2
        columns.append(
            Column(
                x=round(x, 2),
                y=round(baseline - bar, 2),
                width=round(step - gap, 2),
                height=round(bar, 2),
                center=round(x + (step - gap) / 2, 2),
                value=value,
                value_y=round(baseline - bar - FONT_GAP, 2),
                label=label,
                css=css,
                title=f"{label}: {value}",
            )
        )
    return VBars(
        title=title,
        width=width,
        height=height,
        baseline=baseline,
        label_y=height - 6,
        columns=columns,
        legend=list(legend),
        empty=not any(c.value for c in columns),
    )


# --- the operations page's charts -------------------------------------------------------------


def operations_charts(snapshot: OperationsSnapshot) -> dict[str, HBars | VBars]:
    priorities = [LegendItem(p, f"ops-p-{p}") for p in PRIORITIES]
    day = snapshot.windows["day"]
    offers_rows = []
    for window in snapshot.windows.values():
        a = window.acceptance
        note = f"{a.rate * 100:.0f}\u00a0% accepted" if a.rate is not None else "no offers"
        parts = [("accepted", a.accepted, "ops-accepted"), ("declined", a.declined, "ops-declined")]
        offers_rows.append((window.label, [*parts, ("expired", a.expired, "ops-expired")], note))
    return {
        "queue": hbars(
            "Waiting conversations by language and priority",
            [
                (q.language or "any", [(p, q.by_priority.get(p, 0), f"ops-p-{p}") for p in PRIORITIES], "")
                for q in snapshot.queue.by_language
            ],
            legend=priorities,
        ),
        "capacity": hbars(
            "Online capacity by language",
            [
                (
                    c.language or "any",
                    [("busy", c.busy, "ops-busy"), ("free", c.free, "ops-free")],
                    f"{c.free} free · {c.waiting} waiting",
                )
                for c in snapshot.agents.by_language
            ],
            value_width=112,
            legend=[LegendItem("busy slots", "ops-busy"), LegendItem("free slots", "ops-free")],
        ),
        "offers": hbars(
            "Offers by outcome",
            offers_rows,
            label_width=100,
            value_width=100,
            legend=[
                LegendItem("accepted", "ops-accepted"),
                LegendItem("declined", "ops-declined"),
                LegendItem("expired", "ops-expired"),
            ],
        ),
        "waits": vbars(
            f"Time to answer, {day.label.lower()}",
            [(b.label, b.count, "ops-over" if b.over_target else "ops-within") for b in day.waits.histogram],
            legend=[LegendItem("within target", "ops-within"), LegendItem("over target", "ops-over")],
        ),
        "ratings": vbars(
            f"Customer ratings, {day.label.lower()}",
            [(f"{score}★", n, f"ops-r-{score}") for score, n in day.ratings.distribution.items()],
        ),
        "transfers": hbars(
            "Transfers by state",
            [(state, [(state, n, f"ops-t-{state}")], "") for state, n in snapshot.payouts.transfers_by_state.items()],
            label_width=80,
        ),
    }
