"""Reads: conversations for an integration, queue position and the wait estimate.

How the wait estimate is made (also in docs/BOT_API.md):

* The pool is the approved agents online now who speak the conversation's
  language (any language when it has none). `slots` is their total capacity,
  `free` the slots not taken by an active conversation.
* The handle time is the mean span of the last HANDLE_TIME_SAMPLE assignments
  of the last day that ended in a resolution (resolved or unresolved), each
  from its own start to its own end (DEFAULT_HANDLE_SECONDS until there is any
  history); the answer time likewise, from each accepted offer's creation to
  its acceptance (DEFAULT_ANSWER_SECONDS until there is any history). Spans are
  per offer and per assignment, never between two timestamps of a conversation
  that later events overwrite, so neither can be negative; the estimate is
  clamped at zero all the same.
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
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, QuerySet, Sum, Value
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


def _mean_span(name: str, which: dict[str, Any], start: str, end: str, default: float) -> float:
    """Mean of the most recent spans (the last day, at most HANDLE_TIME_SAMPLE), in seconds.

    Each span is one offer's or one assignment's own start and end, each on its
    own row, so nothing that happens later in the conversation's life (an offer
    again after a disconnect, a re-queue, a reopen, a reassignment) can make it
    negative; a span negative all the same (a clock stepped back) counts as zero.
    The spans are read through the conversation's relations (one row per offer or
    assignment, `which` selecting them, in the same filter so that one join
    serves them all): marketplace does not import dispatch.
    """
    cache_key = f"mean-seconds.{name}"
    cached = cache.get(cache_key)
    if cached is not None:
        return float(cached)
    since = timezone.now() - timedelta(days=1)
    recent = (
        Conversation.objects.filter(**which, **{f"{end}__gte": since, f"{start}__isnull": False})
        .annotate(span=ExpressionWrapper(F(end) - F(start), output_field=DurationField()))
        .order_by(f"-{end}")
        .values_list("span", flat=True)[: settings.HANDLE_TIME_SAMPLE]
    )
    spans = [max(span.total_seconds(), 0.0) for span in recent if span is not None]
    value = sum(spans) / len(spans) if spans else max(default, 0.0)
    cache.set(cache_key, value, timeout=10)
    return value


def handle_seconds() -> float:
    """Mean time an agent holds a slot: an assignment's start to its resolution (resolved or not)."""
    return _mean_span(
        "handle",
        {"assignments__end_reason__in": ["resolved", "unresolved"]},
        "assignments__started_at",
        "assignments__ended_at",
        settings.DEFAULT_HANDLE_SECONDS,
    )


def answer_seconds() -> float:
    """Mean time from an offer to its acceptance, over accepted offers."""
    return _mean_span(
        "answer",
        {"offers__state": "accepted"},
        "offers__created_at",
        "offers__responded_at",
        settings.DEFAULT_ANSWER_SECONDS,
    )


@dataclass(frozen=True)
class WaitEstimate:
    queue_position: int | None
    seconds: int | None
    basis: str | None


def _estimate(position: int, pool: PoolCapacity) -> WaitEstimate:
    if pool.slots == 0:
        return WaitEstimate(position, None, "no_agents_online")
    # Never below zero, whatever the history says: a wait is not negative, and the
    # estimate is stored in a column that refuses a negative number.
    answer = max(answer_seconds(), 0.0)
    if position <= pool.free:
        return WaitEstimate(position, math.ceil(answer), "free_capacity")
    ahead = position - pool.free
    wait = answer + ahead * max(handle_seconds(), 0.0) / pool.slots
    return WaitEstimate(position, math.ceil(wait), "handle_time")


def wait_estimate(conversation: Conversation) -> WaitEstimate:
    position = queue_position(conversation)
    if position is None:
        return WaitEstimate(None, None, None)
    return _estimate(position, pool_capacity(conversation.language))


def wait_estimate_for_new(*, language: str, queue_key: datetime) -> WaitEstimate:
    """The estimate a conversation would get if it joined the queue now with this language and queue_key.

    The same rule as `wait_estimate`, for a conversation not stored yet (the admission check on a
    new escalation): its place is behind every waiting conversation of its language (or none) whose
    queue_key is not later than its own. One aggregate for the pool, one count for the place (none
    when nobody is online: there is no estimate to make); the mean spans are cached.
    """
    pool = pool_capacity(language)
    if pool.slots == 0:
        return WaitEstimate(None, None, "no_agents_online")
    ahead = waiting_conversations().filter(queue_key__lte=queue_key)
    if language:
        ahead = ahead.filter(language__in=[language, ""])
    return _estimate(ahead.count() + 1, pool)


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
