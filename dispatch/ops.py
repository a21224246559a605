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

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypedDict

from django.conf import settings
from django.db.models import Count, F, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from marketplace.models import Agent, CallbackEvent, Conversation, ConversationEvent
from payouts import selectors as payout_selectors
from payouts.models import Transfer

from .models import Offer
from .windows import WindowFigures, window_figures

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

PRIORITIES: tuple[str, ...] = tuple(Conversation.Priority.values[::-1])  # urgent first
BREACH_LIST_LIMIT = 50

_WAITING = frozenset(Conversation.WAITING)


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
