"""The weekly earnings floor: engaged hours x the hourly minimum, topped up."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from ..models import (
    Earning,
    PayPolicy,
)
from .earnings import accrue


def week_bounds(week_start: date) -> tuple[datetime, datetime]:
    start = datetime.combine(week_start, time.min, tzinfo=UTC)
    return start, start + timedelta(days=7)


def floor_close_week(*, week_start: date, engaged_seconds: Mapping[str, float]) -> list[Earning]:
    """Top up each agent's week to the floor: engaged hours x the hourly minimum, less what was earned.

    `engaged_seconds` maps each agent engaged that week to its engaged time (dispatch measures it).
    """
    policy = PayPolicy.current()
    if policy.floor_hourly_amount <= 0:
        return []
    start, end = week_bounds(week_start)
    topups = []
    for agent_id in sorted(engaged_seconds):
        if Earning.objects.filter(agent_id=agent_id, kind=Earning.Kind.FLOOR_TOPUP, week_start=week_start).exists():
            continue
        seconds = engaged_seconds[agent_id]
        minimum = round(policy.floor_hourly_amount * seconds / 3600)
        earned = (
            Earning.objects.filter(
                agent_id=agent_id,
                kind__in=[Earning.Kind.RESOLUTION, Earning.Kind.QUALITY_BONUS, Earning.Kind.HANDLING_SHARE],
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
