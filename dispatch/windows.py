"""Figures over a window of time for the operations page: offers answered, waits, the SLA, ratings.

Waits come from the conversation's event log (see dispatch/ops.py): a wait starts when the
conversation enters the queue from outside it and ends when an agent gets it (answered) or the
customer leaves first (abandoned).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Q, Subquery

from marketplace.models import Conversation, ConversationEvent

from .models import Offer

WINDOWS: tuple[tuple[str, str, timedelta], ...] = (
    ("hour", "Last hour", timedelta(hours=1)),
    ("day", "Last 24 hours", timedelta(days=1)),
)
# Upper edges (seconds) of the wait histogram's buckets; the last bucket is open-ended.
WAIT_BUCKET_EDGES: tuple[int, ...] = (10, 30, 60, 120, 300, 600)

_WAITING = frozenset(Conversation.WAITING)
_LEFT = frozenset((Conversation.Status.CANCELLED, Conversation.Status.ABANDONED))


@dataclass(frozen=True)
class Acceptance:
    accepted: int
    declined: int
    expired: int
    rate: float | None  # accepted / (accepted + declined + expired)


@dataclass(frozen=True)
class Bucket:
    label: str
    lower: int
    upper: int | None
    count: int
    over_target: bool


@dataclass(frozen=True)
class WaitFigures:
    answered: int
    p50: float | None
    p90: float | None
    p99: float | None
    longest: float | None
    histogram: list[Bucket]


@dataclass(frozen=True)
class SlaFigures:
    target_seconds: float
    target_ratio: float
    answered: int
    answered_within: int
    abandoned_after_target: int
    ratio: float | None  # answered_within / (answered + abandoned_after_target)
    met: bool | None


@dataclass(frozen=True)
class RatingFigures:
    count: int
    average: float | None
    distribution: dict[int, int]  # score 1..5 -> conversations


@dataclass(frozen=True)
class WindowFigures:
    key: str
    label: str
    since: datetime
    acceptance: Acceptance
    waits: WaitFigures
    sla: SlaFigures
    ratings: RatingFigures


@dataclass(frozen=True)
class Spell:
    """One stretch of waiting in the queue that has ended."""

    conversation_id: str
    started_at: datetime
    ended_at: datetime
    answered: bool  # False: the customer left while waiting

    @property
    def seconds(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()


def acceptance(*, since: datetime, now: datetime) -> Acceptance:
    """Offers made in the window, by how they ended. Withdrawn offers (revoked) and open ones do not count."""
    totals = Offer.objects.filter(created_at__gte=since, created_at__lte=now).aggregate(
        accepted=Count("pk", filter=Q(state=Offer.State.ACCEPTED)),
        declined=Count("pk", filter=Q(state=Offer.State.DECLINED)),
        expired=Count("pk", filter=Q(state=Offer.State.EXPIRED)),
    )
    answered = totals["accepted"] + totals["declined"] + totals["expired"]
    return Acceptance(
        accepted=totals["accepted"],
        declined=totals["declined"],
        expired=totals["expired"],
        rate=round(totals["accepted"] / answered, 4) if answered else None,
    )


def waiting_spells(*, since: datetime, now: datetime) -> list[Spell]:
    """Every wait that ended in [since, now], from the event logs of the conversations concerned."""
    concerned = Conversation.objects.filter(
        Q(assigned_at__gte=since) | Q(cancelled_at__gte=since) | Q(abandoned_at__gte=since)
    ).values("pk")
    events = (
        ConversationEvent.objects.filter(conversation_id__in=Subquery(concerned))
        .exclude(to_status="")
        .order_by("conversation_id", "id")
        .values_list("conversation_id", "from_status", "to_status", "created_at")
    )
    spells = [s for s in spells_from_log(events.iterator(chunk_size=2000)) if since <= s.ended_at <= now]
    return spells


def spells_from_log(events: Iterable[tuple[str, str, str, datetime]]) -> list[Spell]:
    """Walk (conversation, from, to, at) status changes, grouped by conversation and in order."""
    spells: list[Spell] = []
    current: str | None = None
    entered: datetime | None = None
    for conversation_id, from_status, to_status, at in events:
        if conversation_id != current:
            current, entered = conversation_id, None
        if to_status in _WAITING:
            if from_status not in _WAITING:
                entered = at  # escalated, re-queued from an agent, or reopened
            continue
        if entered is not None and from_status in _WAITING:
            if to_status == Conversation.Status.ASSIGNED:
                spells.append(Spell(conversation_id, entered, at, answered=True))
            elif to_status in _LEFT:
                spells.append(Spell(conversation_id, entered, at, answered=False))
        entered = None
    return spells


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least p % of the values at or below it."""
    if not sorted_values:
        return None
    rank = max(math.ceil(p / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def histogram(seconds: list[float], *, target: float) -> list[Bucket]:
    """Buckets (lower, upper], the first from 0 inclusive: a wait of exactly the target is within it."""
    edges = [0, *WAIT_BUCKET_EDGES]
    buckets = []
    for i, lower in enumerate(edges):
        upper = edges[i + 1] if i + 1 < len(edges) else None
        count = sum(1 for s in seconds if (s > lower or i == 0) and (upper is None or s <= upper))
        buckets.append(
            Bucket(
                label=_bucket_label(lower, upper), lower=lower, upper=upper, count=count, over_target=lower >= target
            )
        )
    return buckets


def _short(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds}s"


def _bucket_label(lower: int, upper: int | None) -> str:
    """≤10s, 10–30s, 30s–1m, 1–2m, >10m: short enough to sit under a bar on a phone."""
    if upper is None:
        return f">{_short(lower)}"
    if lower == 0:
        return f"≤{_short(upper)}"
    low, high = _short(lower), _short(upper)
    if low[-1] == high[-1]:  # same unit: write it once
        low = low[:-1]
    return f"{low}–{high}"


def wait_figures(spells: list[Spell]) -> WaitFigures:
    seconds = sorted(s.seconds for s in spells if s.answered)
    return WaitFigures(
        answered=len(seconds),
        p50=_round(percentile(seconds, 50)),
        p90=_round(percentile(seconds, 90)),
        p99=_round(percentile(seconds, 99)),
        longest=_round(seconds[-1] if seconds else None),
        histogram=histogram(seconds, target=settings.SLA_ANSWER_SECONDS),
    )


def sla_figures(spells: list[Spell]) -> SlaFigures:
    """Share answered within the target, counting customers who left after waiting past it as misses.

    Customers who left before the target are not counted either way (the usual
    service-level definition: nobody could have answered them in time to matter).
    """
    target = float(settings.SLA_ANSWER_SECONDS)
    answered = [s for s in spells if s.answered]
    within = sum(1 for s in answered if s.seconds <= target)
    abandoned_late = sum(1 for s in spells if not s.answered and s.seconds > target)
    counted = len(answered) + abandoned_late
    ratio = round(within / counted, 4) if counted else None
    return SlaFigures(
        target_seconds=target,
        target_ratio=float(settings.SLA_TARGET_RATIO),
        answered=len(answered),
        answered_within=within,
        abandoned_after_target=abandoned_late,
        ratio=ratio,
        met=None if ratio is None else ratio >= settings.SLA_TARGET_RATIO,
    )


def rating_figures(*, since: datetime, now: datetime) -> RatingFigures:
    rows = (
        Conversation.objects.filter(rated_at__gte=since, rated_at__lte=now, rating_score__isnull=False)
        .values("rating_score")
        .annotate(n=Count("pk"))
        .order_by()
    )
    distribution = dict.fromkeys(range(1, 6), 0)
    for row in rows:
        distribution[row["rating_score"]] = row["n"]
    count = sum(distribution.values())
    total = sum(score * n for score, n in distribution.items())
    return RatingFigures(count=count, average=round(total / count, 2) if count else None, distribution=distribution)


def window_figures(*, now: datetime) -> dict[str, WindowFigures]:
    longest = max(length for _, _, length in WINDOWS)
    spells = waiting_spells(since=now - longest, now=now)
    figures = {}
    for key, label, length in WINDOWS:
        since = now - length
        inside = [s for s in spells if s.ended_at >= since]
        figures[key] = WindowFigures(
            key=key,
            label=label,
            since=since,
            acceptance=acceptance(since=since, now=now),
            waits=wait_figures(inside),
            sla=sla_figures(inside),
            ratings=rating_figures(since=since, now=now),
        )
    return figures


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
