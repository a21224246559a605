"""Reads: conversations for an integration, queue position and the wait estimate.

How the wait estimate is made (also in docs/BOT_API.md):

* The pool is the approved agents online now who speak the conversation's
  language (any language when it has none). `slots` is their total capacity,
  `free` the slots not taken by an active conversation.
* The handle time is the mean time from assignment to resolution over the last
  HANDLE_TIME_SAMPLE resolved conversations of the last day (DEFAULT_HANDLE_SECONDS
  until there is any history); the answer time likewise, from the last offer
  to its acceptance (DEFAULT_ANSWER_SECONDS until there is any history).
* Position p (1 = next) among the waiting conversations of the same language,
  in dispatch order. If p <= free, the wait is the answer time; otherwise the
  (p - free) conversations ahead of it must wait for a slot to free up, and slots
  free at slots / handle_time per second: wait = answer + (p - free) * handle / slots.
* With nobody in the pool the estimate is null with basis `no_agents_online`:
  we say so rather than invent a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from .models import Agent, BotIntegration, Conversation


def conversation_for_integration(*, integration: BotIntegration, conversation_id: str) -> Conversation | None:
    return (
        Conversation.objects.select_related("assigned_agent")
        .filter(integration=integration, pk=conversation_id)
        .first()
    )


def waiting_conversations() -> QuerySet[Conversation]:
    """Waiting conversations in dispatch order."""
    return Conversation.objects.filter(status__in=Conversation.WAITING).order_by("queue_key", "id")


def queue_position(conversation: Conversation) -> int | None:
    """1 = next in line among waiting conversations that need the same language."""
    if not conversation.is_waiting:
        return None
    ahead = waiting_conversations().filter(
        Q(queue_key__lt=conversation.queue_key) | Q(queue_key=conversation.queue_key, id__lt=conversation.id)
    )
    if conversation.language:
        ahead = ahead.filter(language__in=[conversation.language, ""])
    return ahead.count() + 1


@dataclass(frozen=True)
class PoolCapacity:
    agents: int
    slots: int
    free: int


def _online_rows() -> list[tuple[list[str], int, int]]:
    return list(
        Agent.objects.filter(status=Agent.Status.ONLINE, approval=Agent.Approval.APPROVED).values_list(
            "languages", "capacity", "active_count"
        )
    )


def pool_capacity(language: str, rows: list[tuple[list[str], int, int]] | None = None) -> PoolCapacity:
    """Online approved agents who speak `language` (any, when blank)."""
    if rows is None and connection.features.supports_json_field_contains:
        # One aggregate in the database (jsonb containment) instead of every online agent in Python.
        online = Agent.objects.filter(status=Agent.Status.ONLINE, approval=Agent.Approval.APPROVED)
        if language:
            online = online.filter(languages__contains=[language])
        totals = online.aggregate(
            agents=Count("pk"),
            slots=Coalesce(Sum("capacity"), 0),
            free=Coalesce(Sum(Greatest(F("capacity") - F("active_count"), Value(0))), 0),
        )
        return PoolCapacity(agents=totals["agents"], slots=totals["slots"], free=totals["free"])
    agents = slots = free = 0
    for languages, capacity, active in _online_rows() if rows is None else rows:
        if language and language not in (languages or []):
            continue
        agents += 1
        slots += capacity
        free += max(capacity - active, 0)
    return PoolCapacity(agents=agents, slots=slots, free=free)


def _mean_seconds(start: str, end: str, queryset: QuerySet[Conversation], default: float) -> float:
    cache_key = f"mean-seconds.{start}.{end}"
    cached = cache.get(cache_key)
    if cached is not None:
        return float(cached)
    since = timezone.now() - timedelta(days=1)
    recent = queryset.filter(**{f"{end}__gte": since, f"{start}__isnull": False}).order_by(f"-{end}")
    sample = recent.values_list("pk", flat=True)[: settings.HANDLE_TIME_SAMPLE]
    mean = (
        Conversation.objects.filter(pk__in=list(sample))
        .annotate(span=ExpressionWrapper(F(end) - F(start), output_field=DurationField()))
        .aggregate(mean=Avg("span"))["mean"]
    )
    value = mean.total_seconds() if mean is not None else default
    cache.set(cache_key, value, timeout=10)
    return value


def handle_seconds() -> float:
    return _mean_seconds(
        "assigned_at",
        "resolved_at",
        Conversation.objects.filter(status=Conversation.Status.RESOLVED),
        settings.DEFAULT_HANDLE_SECONDS,
    )


def answer_seconds() -> float:
    return _mean_seconds("offered_at", "assigned_at", Conversation.objects.all(), settings.DEFAULT_ANSWER_SECONDS)


@dataclass(frozen=True)
class WaitEstimate:
    queue_position: int | None
    seconds: int | None
    basis: str | None


def _estimate(position: int, pool: PoolCapacity) -> WaitEstimate:
    if pool.slots == 0:
        return WaitEstimate(position, None, "no_agents_online")
    answer = answer_seconds()
    if position <= pool.free:
        return WaitEstimate(position, math.ceil(answer), "free_capacity")
    ahead = position - pool.free
    return WaitEstimate(position, math.ceil(answer + ahead * handle_seconds() / pool.slots), "handle_time")


def wait_estimate(conversation: Conversation) -> WaitEstimate:
    position = queue_position(conversation)
    if position is None:
        return WaitEstimate(None, None, None)
    return _estimate(position, pool_capacity(conversation.language))


def wait_estimates_for_waiting(limit: int = 5000) -> dict[str, WaitEstimate]:
    """Every waiting conversation's estimate with three queries, not three per conversation."""
    rows = _online_rows()
    pools: dict[str, PoolCapacity] = {}
    ahead_by_language: dict[str, int] = {}
    ahead_any = 0
    estimates: dict[str, WaitEstimate] = {}
    for conversation_id, language in waiting_conversations().values_list("id", "language")[:limit]:
        # Same rule as queue_position: the ones ahead that need this language or none.
        if language:
            position = ahead_by_language.get(language, 0) + ahead_any + 1
            ahead_by_language[language] = ahead_by_language.get(language, 0) + 1
        else:
            position = ahead_any + sum(ahead_by_language.values()) + 1
            ahead_any += 1
        if language not in pools:
            pools[language] = pool_capacity(language, rows)
        estimates[conversation_id] = _estimate(position, pools[language])
    return estimates
