"""Figures for the admin's operations page: the queue, capacity, offers, waits, the SLA, ratings, payouts.

Plain, typed data; the admin view renders it and serves it as JSON.

Waits come from the conversation's event log, not from `queued_at`/`assigned_at`:
`queued_at` is stamped again whenever a declined or lapsed offer puts the
conversation back in the queue, and `assigned_at` again on each reassignment,
so they would make waits look shorter than the customer lived them. A wait
starts when the conversation enters the queue from outside it (escalated,
re-queued from an agent, reopened) and ends when an agent gets it (answered)
or the customer leaves first (abandoned). Offers in between are part of the wait.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypedDict

from django.conf import settings
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from marketplace.models import Agent, CallbackEvent, Conversation, ConversationEvent
from payouts import selectors as payout_selectors
from payouts.models import Transfer

from .models import Offer

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

PRIORITIES: tuple[str, ...] = tuple(Conversation.Priority.values[::-1])  # urgent first
WINDOWS: tuple[tuple[str, str, timedelta], ...] = (
    ("hour", "Last hour", timedelta(hours=1)),
    ("day", "Last 24 hours", timedelta(days=1)),
)
# Upper edges (seconds) of the wait histogram's buckets; the last bucket is open-ended.
WAIT_BUCKET_EDGES: tuple[int, ...] = (10, 30, 60, 120, 300, 600)
BREACH_LIST_LIMIT = 50

_WAITING = frozenset(Conversation.WAITING)
_LEFT = frozenset((Conversation.Status.CANCELLED, Conversation.Status.ABANDONED))


# --- the shapes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LanguageQueue:
    language: str  # "" = any language
    by_priority: dict[str, int]
    total: int


@dataclass(frozen=True)
class QueueFigures:
    waiting: int
    queued: int
    offered: int
    in_conversation: int
    by_priority: dict[str, int]
    by_language: list[LanguageQueue]  # most waiting first
    oldest_wait_seconds: int | None


@dataclass(frozen=True)
class LanguageCapacity:
    language: str  # "" = conversations without a language (any agent may take them)
    agents: int  # online and approved, speaking it
    slots: int
    busy: int
    free: int
    waiting: int


@dataclass(frozen=True)
class AgentFigures:
    online: int
    away: int
    slots: int
    busy: int
    free: int
    holding_offer: int
    by_language: list[LanguageCapacity]


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
class Breach:
    conversation_id: str
    status: str
    language: str
    priority: str
    topic: str
    integration: str
    waiting_since: datetime
    waiting_seconds: int


@dataclass(frozen=True)
class PayoutFigures:
    transfers_by_state: dict[str, int]
    held_by_reason: dict[str, int]


@dataclass(frozen=True)
class OperationsSnapshot:
    generated_at: datetime
    sla_target_seconds: float
    sla_target_ratio: float
    queue: QueueFigures
    agents: AgentFigures
    windows: dict[str, WindowFigures]
    breaching: int
    breaches: list[Breach]  # the longest-waiting first, at most BREACH_LIST_LIMIT
    payouts: PayoutFigures
    dead_callbacks: int


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


# --- the queue and the agents ---------------------------------------------------------------


class WaitingSince(TypedDict):
    waiting_since: datetime


def waiting_since_annotated() -> QuerySet[WithAnnotations[Conversation, WaitingSince]]:
    """Waiting conversations with `waiting_since`: when they last entered the queue from outside it."""
    entered = (
        ConversationEvent.objects.filter(conversation=OuterRef("pk"), to_status=Conversation.Status.QUEUED)
        .exclude(from_status__in=list(_WAITING))
        .order_by("-id")
        .values("created_at")[:1]
    )
    return Conversation.objects.filter(status__in=Conversation.WAITING).annotate(
        waiting_since=Coalesce(Subquery(entered), F("created_at"))
    )


def sla_breaches(*, now: datetime, limit: int = BREACH_LIST_LIMIT) -> tuple[int, list[Breach]]:
    """Conversations waiting longer than SLA_ANSWER_SECONDS now: how many, and the longest-waiting ones."""
    threshold = now - timedelta(seconds=settings.SLA_ANSWER_SECONDS)
    breaching = waiting_since_annotated().filter(waiting_since__lt=threshold)
    rows = breaching.select_related("integration").order_by("waiting_since", "id")[:limit]
    return breaching.count(), [
        Breach(
            conversation_id=c.pk,
            status=c.status,
            language=c.language,
            priority=c.priority,
            topic=c.topic,
            integration=c.integration.name,
            waiting_since=c.waiting_since,
            waiting_seconds=max(int((now - c.waiting_since).total_seconds()), 0),
        )
        for c in rows
    ]


def queue_figures(*, now: datetime) -> QueueFigures:
    counts = (
        Conversation.objects.filter(
            status__in=[*Conversation.WAITING, Conversation.Status.ASSIGNED],
        )
        .values("status", "language", "priority")
        .annotate(n=Count("pk"))
        .order_by()
    )
    by_status: dict[str, int] = {}
    by_priority = dict.fromkeys(PRIORITIES, 0)
    cells: dict[str, dict[str, int]] = {}
    for row in counts:
        by_status[row["status"]] = by_status.get(row["status"], 0) + row["n"]
        if row["status"] == Conversation.Status.ASSIGNED:
            continue
        by_priority[row["priority"]] = by_priority.get(row["priority"], 0) + row["n"]
        cell = cells.setdefault(row["language"], dict.fromkeys(PRIORITIES, 0))
        cell[row["priority"]] = cell.get(row["priority"], 0) + row["n"]
    by_language = sorted(
        (LanguageQueue(language=lang, by_priority=cell, total=sum(cell.values())) for lang, cell in cells.items()),
        key=lambda q: (-q.total, q.language),
    )
    oldest = waiting_since_annotated().order_by("waiting_since").values_list("waiting_since", flat=True).first()
    queued = by_status.get(Conversation.Status.QUEUED, 0)
    offered = by_status.get(Conversation.Status.OFFERED, 0)
    return QueueFigures(
        waiting=queued + offered,
        queued=queued,
        offered=offered,
        in_conversation=by_status.get(Conversation.Status.ASSIGNED, 0),
        by_priority=by_priority,
        by_language=by_language,
        oldest_wait_seconds=max(int((now - oldest).total_seconds()), 0) if oldest else None,
    )


def agent_figures(*, waiting_by_language: dict[str, int]) -> AgentFigures:
    """Online approved agents and their free slots, overall and per language they speak.

    An agent who speaks two languages counts in both rows; the totals count it once.
    Languages with conversations waiting but nobody online to take them are listed too.
    """
    rows = list(
        Agent.objects.filter(status=Agent.Status.ONLINE, approval=Agent.Approval.APPROVED).values_list(
            "languages", "capacity", "active_count"
        )
    )
    per_language: dict[str, list[int]] = {}  # language -> [agents, slots, busy]
    slots = busy = 0
    for languages, capacity, active in rows:
        taken = min(active, capacity)
        slots += capacity
        busy += taken
        for language in {*(languages or []), ""}:  # "" = may take conversations without a language
            figures = per_language.setdefault(language, [0, 0, 0])
            figures[0] += 1
            figures[1] += capacity
            figures[2] += taken
    for language in waiting_by_language:
        per_language.setdefault(language, [0, 0, 0])
    by_language = sorted(
        (
            LanguageCapacity(
                language=language,
                agents=agents,
                slots=lang_slots,
                busy=lang_busy,
                free=lang_slots - lang_busy,
                waiting=waiting_by_language.get(language, 0),
            )
            for language, (agents, lang_slots, lang_busy) in per_language.items()
            # The "any language" row only matters when such conversations wait.
            if language or waiting_by_language.get("")
        ),
        key=lambda c: (-c.waiting, c.language),
    )
    return AgentFigures(
        online=len(rows),
        away=Agent.objects.filter(status=Agent.Status.AWAY).count(),
        slots=slots,
        busy=busy,
        free=slots - busy,
        holding_offer=Offer.objects.filter(state=Offer.State.PENDING).count(),
        by_language=by_language,
    )


# --- windows: offers, waits, the SLA, ratings -------------------------------------------------


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


# --- payouts and the whole page --------------------------------------------------------------


def payout_figures() -> PayoutFigures:
    by_state = dict.fromkeys(Transfer.State.values, 0)
    by_state.update(payout_selectors.transfers_by_state())
    return PayoutFigures(transfers_by_state=by_state, held_by_reason=payout_selectors.held_transfers_by_reason())


def operations_snapshot(*, now: datetime | None = None) -> OperationsSnapshot:
    now = now or timezone.now()
    queue = queue_figures(now=now)
    breaching, breaches = sla_breaches(now=now)
    return OperationsSnapshot(
        generated_at=now,
        sla_target_seconds=float(settings.SLA_ANSWER_SECONDS),
        sla_target_ratio=float(settings.SLA_TARGET_RATIO),
        queue=queue,
        agents=agent_figures(waiting_by_language={q.language: q.total for q in queue.by_language}),
        windows=window_figures(now=now),
        breaching=breaching,
        breaches=breaches,
        payouts=payout_figures(),
        dead_callbacks=CallbackEvent.objects.filter(state=CallbackEvent.State.DEAD).count(),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
