"""The weekly earnings floor, run from dispatch: dispatch measures each agent's engaged time, payouts tops up.

payouts does not read dispatch's offers and assignments; this module hands it the
engaged seconds of every agent engaged in the week.
"""

from __future__ import annotations

from datetime import date, timedelta

from django.conf import settings
from django.utils import timezone

from payouts import selectors as payout_selectors
from payouts.models import Earning, PayPolicy
from payouts.services import floor

from . import selectors


def floor_close_week(*, week_start: date) -> list[Earning]:
    """Top up each agent's week to the floor: engaged hours x the hourly minimum, less what was earned."""
    if PayPolicy.current().floor_hourly_amount <= 0:
        return []
    start, end = floor.week_bounds(week_start)
    # Engaged time is measured only for the agents whose week is still open (a top-up is made once).
    open_agents = selectors.engaged_agent_ids(start=start, end=end) - payout_selectors.floor_topped_up(week_start)
    engaged = {agent_id: selectors.engaged_seconds(agent_id=agent_id, start=start, end=end) for agent_id in open_agents}
    return floor.floor_close_week(week_start=week_start, engaged_seconds=engaged)


def floor_close_due_weeks() -> int:
    """Close the last two finished weeks (the second covers a job that did not run)."""
    now = timezone.now() - timedelta(seconds=settings.FLOOR_CLOSE_AFTER_SECONDS)
    this_monday = (now - timedelta(days=now.weekday())).date()
    return sum(len(floor_close_week(week_start=this_monday - timedelta(days=7 * n))) for n in (2, 1))
