"""The sweeper: the safety net that starts again whatever job was lost or whose worker died."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from core import outbox

from .. import tasks
from ..models import (
    Earning,
    Reversal,
    StripeEvent,
    Transfer,
)


def payouts_sweep(*, limit: int = 500) -> int:
    """The safety net behind every timer and job: nothing waits forever, nothing is started twice at once.

    A row is started again when its job was lost (started longer than
    PAYOUT_REKICK_SECONDS ago and still not done), when the worker running it
    died (its lease ran out after the job started), and, for transfers held
    until Stripe says something changed, every PAYOUT_HELD_RETRY_SECONDS in
    case that webhook was lost.
    """
    now = timezone.now()
    lost = Q(kicked_at__lt=now - timedelta(seconds=settings.PAYOUT_REKICK_SECONDS))
    died = Q(lease_until__lt=now, lease_until__gte=F("kicked_at"))
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    waiting = Q(hold_reason__in=["", Transfer.Hold.RETRYING])
    held_long = Q(kicked_at__lt=now - timedelta(seconds=settings.PAYOUT_HELD_RETRY_SECONDS))
    started = outbox.kick(
        Earning.objects.filter(lost, state=Earning.State.HELD, payable_at__lte=now), tasks.release_earning, limit=limit
    )
    transfers = Transfer.objects.filter(free, due, state__in=[Transfer.State.PENDING, Transfer.State.SUBMITTED]).filter(
        (waiting & (lost | died)) | (~waiting & (held_long | died))
    )
    started += outbox.kick(transfers, tasks.submit_transfer, limit=limit)
    reversals = Reversal.objects.filter(free, due, state__in=[Reversal.State.PENDING, Reversal.State.SUBMITTED])
    started += outbox.kick(reversals.filter(lost | died), tasks.submit_reversal, limit=limit)
    started += outbox.kick(
        StripeEvent.objects.filter(lost, processed_at__isnull=True), tasks.process_stripe_event, limit=limit
    )
    return started
