"""The weekly earnings floor: engaged hours x the hourly minimum, topped up."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from dispatch.models import Assignment, Offer

from ..models import (
    Earning,
    PayPolicy,
)
from .earnings import accrue


def week_bounds(week_start: date) -> tuple[datetime, datetime]:
    start = datetime.combine(week_start, time.min, tzinfo=UTC)
    return start, start + timedelta(days=7)


def engaged_seconds(*, agent_id: str, start: datetime, end: datetime) -> float:
    """Time holding an offer or at least one conversation, overlaps counted once."""
    now = timezone.now()
    spans: list[tuple[datetime, datetime]] = []
    for created, responded, expires in Offer.objects.filter(
        agent_id=agent_id, created_at__lt=end, expires_at__gt=start - timedelta(hours=1)
    ).values_list("created_at", "responded_at", "expires_at"):
        # An offer cannot be taken after it expires, however late the expiry was recorded.
        spans.append((created, min(responded or expires, expires, now)))
    for began, ended in (
        Assignment.objects.filter(agent_id=agent_id, started_at__lt=end)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=start))
        .values_list("started_at", "ended_at")
    ):
        spans.append((began, ended or now))
    total = 0.0
    cursor = start
    for began, ended in sorted((max(b, start), min(e, end)) for b, e in spans):
        if ended <= cursor:
            continue
        total += (ended - max(began, cursor)).total_seconds()
        cursor = ended
    return total


def floor_close_week(*, week_start: date) -> list[Earning]:
    """Top up each agent's week to the floor: engaged hours x the hourly minimum, less what was earned."""
    policy = PayPolicy.current()
    if policy.floor_hourly_amount <= 0:
        return []
    start, end = week_bounds(week_start)
    agent_ids = set(
        Assignment.objects.filter(started_at__lt=end)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=start))
        .values_list("agent_id", flat=True)
    ) | set(
        Offer.objects.filter(created_at__gte=start - timedelta(hours=1), created_at__lt=end).values_list(
            "agent_id", flat=True
        )
    )
    topups = []
    for agent_id in sorted(agent_ids):
        if Earning.objects.filter(agent_id=agent_id, kind=Earning.Kind.FLOOR_TOPUP, week_start=week_start).exists():
            continue
        seconds = engaged_seconds(agent_id=agent_id, start=start, end=end)
        minimum = round(policy.floor_hourly_amount * seconds / 3600)
        earned = (
            Earning.objects.filter(
                agent_id=agent_id,
                kind__in=[Earning.Kind.RESOLUTION, Earning.Kind.QUALITY_BONUS],
                created_at__gte=start,
                created_at__lt=end,
            )
            .exclude(state=Earning.State.DISPUTED)
            .aggregate(total=Sum("amount"))["total"]
            or 0
        )
        if minimum - earned <= 0:
            continue
        with transaction.atomic():
            try:
                with transaction.atomic():
                    topup = Earning.objects.create(
                        agent_id=agent_id,
                        kind=Earning.Kind.FLOOR_TOPUP,
                        week_start=week_start,
                        amount=minimum - earned,
                        currency=settings.PLATFORM_CURRENCY,
                        payable_at=timezone.now(),
                        detail={
                            "engaged_seconds": round(seconds),
                            "hourly_minimum": policy.floor_hourly_amount,
                            "minimum": minimum,
                            "earned": earned,
                        },
                    )
            except IntegrityError:
                continue
            accrue(topup, memo=f"earnings floor, week of {week_start.isoformat()}")
        topups.append(topup)
    return topups


def floor_close_due_weeks() -> int:
    """Close the last two finished weeks (the second covers a job that did not run)."""
    now = timezone.now() - timedelta(seconds=settings.FLOOR_CLOSE_AFTER_SECONDS)
    this_monday = (now - timedelta(days=now.weekday())).date()
    return sum(len(floor_close_week(week_start=this_monday - timedelta(days=7 * n))) for n in (2, 1))
