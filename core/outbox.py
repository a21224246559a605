"""The leased outbox, shared by every app that hands rows to jobs (callbacks, transfers, reversals).

A row is worked on by one worker at a time: the worker claims it with a
conditional UPDATE that sets a lease and counts the attempt, and nobody else
can claim it until the lease runs out (the worker died) or is cleared. A sweeper
kicks rows whose job was lost; a failed attempt waits an exponential backoff.
Works on any model: pass the queryset and, where they differ, the field names.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, Q, QuerySet
from django.utils import timezone

from core import jobs


def claim(
    queryset: QuerySet[Any],
    *,
    lease_seconds: float,
    now: datetime | None = None,
    lease_field: str = "lease_until",
    attempts_field: str = "attempts",
) -> bool:
    """Take the lease on the row(s) of `queryset` that nobody holds, counting one more attempt."""
    now = now or timezone.now()
    free = Q(**{f"{lease_field}__isnull": True}) | Q(**{f"{lease_field}__lt": now})
    return bool(
        queryset.filter(free).update(
            **{lease_field: now + timedelta(seconds=lease_seconds), attempts_field: F(attempts_field) + 1}
        )
    )


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, never above `cap`.

    Attempt n (from 1) waits between c/2 and c, where c = min(cap, base * 2**(n-1)).
    """
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto


def kick(
    queryset: QuerySet[Any],
    task: Any,
    *,
    limit: int,
    key: str = "pk",
    marked: QuerySet[Any] | None = None,
    kicked_field: str = "kicked_at",
) -> int:
    """Start a job for each row (or each distinct `key`), and remember when, so the sweeper does not pile up jobs.

    `marked` is what gets the new kicked_at (by default the kicked rows themselves).
    """
    values = queryset.values_list(key, flat=True)
    ids = list((values if key == "pk" else values.distinct())[:limit])
    if ids:
        target = marked if marked is not None else queryset.model.objects.all()
        target.filter(**{f"{key}__in": ids}).update(**{kicked_field: timezone.now()})
        for value in ids:
            jobs.enqueue(task, value)
    return len(ids)
