"""Earnings: accrual (resolution, quality bonus), release after the hold, disputes.

Lock order: the agent's payouts lock (advisory), then Earning, then Transfer, then Reversal.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from core import jobs
from core.locks import advisory_xact_lock
from marketplace.models import Conversation

from .. import tasks
from ..models import (
    Earning,
    PayPolicy,
    Reversal,
    Transfer,
)
from .errors import NotDisputable
from .ledger import PAY_EXPENSE, account_balance, ledger_post, payable_account, receivable_account


def _hold_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.PAYOUT_HOLD_SECONDS)


def accrue(earning: Earning, memo: str) -> None:
    ledger_post(
        key=f"accrue:{earning.id}",
        kind="earning",
        currency=earning.currency,
        lines=[(PAY_EXPENSE, earning.amount), (payable_account(earning.agent_id), -earning.amount)],
        agent_id=earning.agent_id,
        earning=earning,
        memo=memo,
    )
    countdown = max((earning.payable_at - timezone.now()).total_seconds(), 0)
    jobs.enqueue_on_commit(tasks.release_earning, earning.id, countdown=countdown)


def earning_accrue_resolution(
    *,
    assignment_id: int,
    agent_id: str,
    conversation_id: str,
    amount: int,
    currency: str,
    detail: dict[str, Any],
) -> Earning | None:
    """A resolved assignment earns its locked quote (once), payable after the hold.

    The caller (dispatch) reads the assignment: its id, agent, conversation, the
    quoted amount and currency, and where the quote was made (`detail`).
    """
    if amount <= 0:
        return None
    now = timezone.now()
    try:
        with transaction.atomic():
            earning = Earning.objects.create(
                agent_id=agent_id,
                kind=Earning.Kind.RESOLUTION,
                conversation_id=conversation_id,
                assignment_id=assignment_id,
                amount=amount,
                currency=currency,
                payable_at=_hold_until(now),
                kicked_at=_hold_until(now),
                detail=detail,
            )
    except IntegrityError:  # already earned
        return None
    accrue(earning, memo=f"resolution of {conversation_id}")
    return earning


def earning_accrue_handling_share(
    *,
    assignment_id: int,
    agent_id: str,
    conversation_id: str,
    amount: int,
    currency: str,
    detail: dict[str, Any],
) -> Earning | None:
    """The first agent of a transferred conversation earns its handling share (once per assignment).

    The caller (dispatch) decides that it is owed (another agent accepted the transfer, and this
    agent had written to the customer) and says how much; payable after the hold like a resolution.
    """
    if amount <= 0:
        return None
    now = timezone.now()
    try:
        with transaction.atomic():
            earning = Earning.objects.create(
                agent_id=agent_id,
                kind=Earning.Kind.HANDLING_SHARE,
                conversation_id=conversation_id,
                assignment_id=assignment_id,
                amount=amount,
                currency=currency,
                payable_at=_hold_until(now),
                kicked_at=_hold_until(now),
                detail=detail,
            )
    except IntegrityError:  # already earned
        return None
    accrue(earning, memo=f"handling share of {conversation_id} (transferred)")
    return earning


def earning_accrue_bonus(
    *, conversation: Conversation, score: int, quality_bonuses: Mapping[int, int]
) -> Earning | None:
    """A rating of 4 or 5 on a paid resolution earns the bonus quoted with it.

    `quality_bonuses`: the bonus locked on each of the conversation's assignments, by assignment id
    (dispatch's, read by dispatch: payouts reads none of its tables).
    """
    policy = PayPolicy.current()
    if score < policy.quality_bonus_min_score:
        return None
    resolution = (
        Earning.objects.filter(conversation=conversation, kind=Earning.Kind.RESOLUTION)
        .exclude(state=Earning.State.DISPUTED)
        .order_by("-created_at")
        .first()
    )
    amount = quality_bonuses.get(resolution.assignment_id, 0) if resolution and resolution.assignment_id else 0
    if resolution is None or amount <= 0:
        return None
    try:
        with transaction.atomic():
            bonus = Earning.objects.create(
                agent_id=resolution.agent_id,
                kind=Earning.Kind.QUALITY_BONUS,
                conversation=conversation,
                assignment_id=resolution.assignment_id,
                amount=amount,
                currency=resolution.currency,
                payable_at=max(resolution.payable_at, timezone.now()),
                kicked_at=max(resolution.payable_at, timezone.now()),
                detail={"rating": score},
            )
    except IntegrityError:
        return None
    accrue(bonus, memo=f"quality bonus for {conversation.id} (rated {score})")
    return bonus


def _lock_agent_payouts(agent_id: str) -> None:
    """Serialise one agent's releases and disputes (offsets against what it owes back).

    Not the agent's row: dispatch locks that row to offer the agent work, and the
    release that follows every resolve made the freed agent's dispatch skip it
    (docs/RELIABILITY.md, issue 11.3).
    """
    advisory_xact_lock(f"payouts.agent.{agent_id}")


def earning_release(*, earning_id: str) -> Transfer | None:
    """Past its hold and not disputed: offset any debt, then queue its transfer."""
    agent_id = Earning.objects.filter(pk=earning_id).values_list("agent_id", flat=True).first()
    if agent_id is None:
        return None
    with transaction.atomic():
        _lock_agent_payouts(agent_id)
        earning = Earning.objects.select_for_update().get(pk=earning_id)
        if earning.state != Earning.State.HELD or earning.payable_at > timezone.now():
            return None
        # What the agent owes, less what reversals under way will bring back (never recover it twice).
        recovering = Reversal.objects.filter(
            transfer__agent_id=agent_id,
            currency=earning.currency,
            state__in=[Reversal.State.PENDING, Reversal.State.SUBMITTED],
        ).aggregate(total=Sum("amount"))["total"]
        owed_back = account_balance(receivable_account(agent_id), earning.currency) - int(recovering or 0)
        offset = min(max(owed_back, 0), earning.amount)
        if offset:
            ledger_post(
                key=f"offset:{earning.id}",
                kind="offset",
                currency=earning.currency,
                lines=[(payable_account(agent_id), offset), (receivable_account(agent_id), -offset)],
                agent_id=agent_id,
                earning=earning,
                memo="kept back against a clawback that could not be reversed",
            )
        earning.state = Earning.State.RELEASED
        earning.released_at = timezone.now()
        earning.offset_amount = offset
        earning.save(update_fields=["state", "released_at", "offset_amount"])
        if earning.amount - offset <= 0:
            return None
        transfer = Transfer.objects.create(
            agent_id=agent_id, earning=earning, amount=earning.amount - offset, currency=earning.currency
        )
        jobs.enqueue_on_commit(tasks.submit_transfer, transfer.id)
        return transfer


def earning_dispute(*, earning_id: str, reason: str, actor: str) -> Earning:
    """Not owed after all. Before release it is voided; after, it is clawed back.

    The clawback reverses the transfer at Stripe; what cannot be reversed stays
    owed by the agent and is kept back from their next earnings.
    """
    agent_id = Earning.objects.filter(pk=earning_id).values_list("agent_id", flat=True).first()
    if agent_id is None:
        raise NotDisputable("No such earning.")
    reversal: Reversal | None = None
    with transaction.atomic():
        _lock_agent_payouts(agent_id)
        earning = Earning.objects.select_for_update().get(pk=earning_id)
        if earning.state == Earning.State.DISPUTED:
            return earning
        transfer = Transfer.objects.select_for_update().filter(earning=earning).first()
        memo = f"disputed by {actor}: {reason}"[:200]
        payable, receivable = payable_account(agent_id), receivable_account(agent_id)
        if earning.state == Earning.State.HELD:
            lines = [(payable, earning.amount), (PAY_EXPENSE, -earning.amount)]
        elif transfer is not None and transfer.state in (Transfer.State.PENDING, Transfer.State.FAILED):
            # Never sent: cancel it; what was offset becomes owed again.
            transfer.state = Transfer.State.FAILED
            transfer.hold_reason = Transfer.Hold.NONE
            transfer.last_error = "cancelled: the earning was disputed"
            transfer.save(update_fields=["state", "hold_reason", "last_error", "updated_at"])
            lines = [(payable, transfer.amount), (receivable, earning.offset_amount), (PAY_EXPENSE, -earning.amount)]
        else:
            # Sent (or entirely offset): the agent owes it back until the reversal lands.
            lines = [(receivable, earning.amount), (PAY_EXPENSE, -earning.amount)]
            if transfer is not None:
                reversal = Reversal.objects.create(
                    transfer=transfer, earning=earning, amount=transfer.amount, currency=transfer.currency
                )
        ledger_post(
            key=f"dispute:{earning.id}",
            kind="dispute",
            currency=earning.currency,
            lines=lines,
            agent_id=agent_id,
            earning=earning,
            memo=memo,
        )
        earning.state = Earning.State.DISPUTED
        earning.disputed_at = timezone.now()
        earning.dispute_reason = reason[:200]
        earning.save(update_fields=["state", "disputed_at", "dispute_reason"])
        if reversal is not None:
            jobs.enqueue_on_commit(tasks.submit_reversal, reversal.id)
    return earning


def earnings_dispute_for_assignment(*, assignment_id: int, reason: str, actor: str) -> list[Earning]:
    ids = list(Earning.objects.filter(assignment_id=assignment_id).values_list("pk", flat=True))
    return [earning_dispute(earning_id=earning_id, reason=reason, actor=actor) for earning_id in ids]
