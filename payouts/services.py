"""Payouts: earnings, the ledger, transfers and reversals through Stripe, onboarding, Stripe events.

Lock order inside payouts: the agent's payouts lock (an advisory lock, not the
agent's row, which dispatch uses), then Earning, then Transfer, then Reversal
(after dispatch's Conversation, Offer, Agent when called from there). No lock
is held across a Stripe call: a transfer is claimed with a conditional UPDATE
(a lease), marked `submitted` and committed before the request goes out, and
its outcome is written afterwards. A `submitted` transfer whose outcome is
unknown (a timeout, a killed worker) is settled by looking it up at Stripe by
our own id (`transfer_group`), never by sending a second one; when it is not
there, it is sent again with the same Idempotency-Key.

Ledger accounts (debits positive, credits negative; every journal sums to zero):
  platform:pay_expense      what agents' work costs the platform
  platform:stripe_balance   the platform's Stripe balance
  agent:<id>:payable        owed to the agent (a credit balance)
  agent:<id>:receivable     owed by the agent after a clawback that could not be reversed
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from core import jobs
from core.errors import ApiError, Conflict
from core.locks import advisory_xact_lock
from dispatch.models import Assignment, Offer
from marketplace.models import Agent, Conversation

from . import stripe_api, tasks
from .models import (
    ConnectedAccount,
    Earning,
    Journal,
    LedgerLine,
    Payout,
    PayPolicy,
    Reversal,
    StripeEvent,
    Transfer,
)

if TYPE_CHECKING:
    from stripe.params import TransferCreateParams

logger = logging.getLogger(__name__)

PAY_EXPENSE = "platform:pay_expense"
STRIPE_BALANCE = "platform:stripe_balance"


def as_dict(obj: Any) -> dict[str, Any]:
    """Stripe's objects are not dicts (stripe-python 15+); events and our code use plain dicts."""
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def payable_account(agent_id: str) -> str:
    return f"agent:{agent_id}:payable"


def receivable_account(agent_id: str) -> str:
    return f"agent:{agent_id}:receivable"


class StripeUnavailable(ApiError):
    status_code = 502
    default_code = "stripe_unavailable"
    default_detail = "Stripe could not be reached; try again shortly."


class StripeNotConfigured(ApiError):
    status_code = 503
    default_code = "stripe_not_configured"
    default_detail = "Payouts are not configured on this platform yet (no STRIPE_SECRET_KEY)."


class NotDisputable(Conflict):
    default_code = "not_disputable"
    default_detail = "This earning cannot be disputed."


# --- the ledger -------------------------------------------------------------------------


def ledger_post(
    *,
    key: str,
    kind: str,
    currency: str,
    lines: Iterable[tuple[str, int]],
    agent_id: str | None = None,
    earning: Earning | None = None,
    transfer: Transfer | None = None,
    memo: str = "",
) -> Journal:
    """Post one business event once: a second post with the same key returns the first."""
    lines = [(account, amount) for account, amount in lines if amount]
    if sum(amount for _, amount in lines) != 0:
        raise ValueError(f"journal {key} does not balance: {lines}")
    existing = Journal.objects.filter(key=key).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            journal = Journal.objects.create(
                key=key, kind=kind, agent_id=agent_id, earning=earning, transfer=transfer, memo=memo[:200]
            )
            LedgerLine.objects.bulk_create(
                LedgerLine(journal=journal, account=account, amount=amount, currency=currency)
                for account, amount in lines
            )
    except IntegrityError:
        return Journal.objects.get(key=key)
    return journal


def account_balance(account: str, currency: str | None = None) -> int:
    lines = LedgerLine.objects.filter(account=account)
    if currency:
        lines = lines.filter(currency=currency)
    return int(lines.aggregate(total=Sum("amount"))["total"] or 0)


# --- earnings ---------------------------------------------------------------------------


def _hold_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.PAYOUT_HOLD_SECONDS)


def _accrue(earning: Earning, memo: str) -> None:
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


def earning_accrue_resolution(*, assignment: Assignment) -> Earning | None:
    """A resolved assignment earns its locked quote (once), payable after the hold."""
    if assignment.pay_amount <= 0:
        return None
    now = timezone.now()
    try:
        with transaction.atomic():
            earning = Earning.objects.create(
                agent_id=assignment.agent_id,
                kind=Earning.Kind.RESOLUTION,
                conversation_id=assignment.conversation_id,
                assignment=assignment,
                amount=assignment.pay_amount,
                currency=assignment.pay_currency,
                payable_at=_hold_until(now),
                kicked_at=_hold_until(now),
                detail=_quote_detail(assignment),
            )
    except IntegrityError:  # already earned
        return None
    _accrue(earning, memo=f"resolution of {assignment.conversation_id}")
    return earning


def _quote_detail(assignment: Assignment) -> dict[str, Any]:
    offer: Offer | None = assignment.offer
    if offer is None:
        return {"quoted_at": "assignment"}
    return {"quoted_at": "offer", "offer_id": offer.id, "base": offer.pay_base, "surge": str(offer.pay_surge)}


def earning_accrue_bonus(*, conversation: Conversation, score: int) -> Earning | None:
    """A rating of 4 or 5 on a paid resolution earns the bonus quoted with it."""
    policy = PayPolicy.current()
    if score < policy.quality_bonus_min_score:
        return None
    resolution = (
        Earning.objects.filter(conversation=conversation, kind=Earning.Kind.RESOLUTION)
        .exclude(state=Earning.State.DISPUTED)
        .select_related("assignment")
        .order_by("-created_at")
        .first()
    )
    if resolution is None or resolution.assignment is None or resolution.assignment.quality_bonus <= 0:
        return None
    try:
        with transaction.atomic():
            bonus = Earning.objects.create(
                agent_id=resolution.agent_id,
                kind=Earning.Kind.QUALITY_BONUS,
                conversation=conversation,
                assignment=resolution.assignment,
                amount=resolution.assignment.quality_bonus,
                currency=resolution.currency,
                payable_at=max(resolution.payable_at, timezone.now()),
                kicked_at=max(resolution.payable_at, timezone.now()),
                detail={"rating": score},
            )
    except IntegrityError:
        return None
    _accrue(bonus, memo=f"quality bonus for {conversation.id} (rated {score})")
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


# --- transfers --------------------------------------------------------------------------


def _claim(model: type[Transfer] | type[Reversal], pk: str) -> bool:
    """Take the lease on a row not being worked on: only one worker runs a transfer at a time."""
    now = timezone.now()
    return bool(
        model.objects.filter(pk=pk, state__in=["pending", "submitted"])
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + timedelta(seconds=settings.TRANSFER_LEASE_SECONDS), attempts=F("attempts") + 1)
    )


def _backoff(attempts: int) -> float:
    base = settings.TRANSFER_RETRY_BASE_SECONDS * (2 ** max(attempts - 1, 0))
    return min(base, settings.TRANSFER_RETRY_MAX_SECONDS) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter


def _transition(row: Transfer | Reversal, from_state: str, **fields: Any) -> bool:
    """A conditional UPDATE ... WHERE state = from_state; True if it applied."""
    changed = type(row).objects.filter(pk=row.pk, state=from_state).update(**fields, updated_at=timezone.now())
    if changed:
        for name, value in fields.items():
            setattr(row, name, value)
    return bool(changed)


def _update(row: Transfer | Reversal, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(row, name, value)
    type(row).objects.filter(pk=row.pk).update(**fields, updated_at=timezone.now())


def _transfer_params(transfer: Transfer) -> TransferCreateParams:
    earning = transfer.earning
    return {
        "amount": transfer.amount,
        "currency": transfer.currency,
        "destination": transfer.destination,
        "transfer_group": transfer.id,
        "description": f"{earning.get_kind_display()} {earning.conversation_id or earning.week_start or ''}".strip(),
        "metadata": {
            "transfer_id": transfer.id,
            "earning_id": earning.id,
            "agent_id": transfer.agent_id,
            "conversation_id": earning.conversation_id or "",
        },
    }


def _find_at_stripe(client: stripe.StripeClient, transfer: Transfer) -> stripe.Transfer | None:
    """The transfer we may already have made: Stripe's list filtered by our id as transfer_group."""
    found = client.v1.transfers.list(params={"transfer_group": transfer.id, "limit": 10})
    for candidate in found.data:
        if (as_dict(candidate).get("metadata") or {}).get("transfer_id") == transfer.id:
            return candidate
    return None


def transfer_submit(*, transfer_id: str) -> str:
    """Send one transfer to Stripe, exactly once, whatever fails on the way. Returns what happened."""
    if not _claim(Transfer, transfer_id):
        return "busy_or_done"
    transfer = Transfer.objects.select_related("earning").get(pk=transfer_id)
    try:
        return _transfer_submit(transfer)
    finally:
        Transfer.objects.filter(pk=transfer_id).update(lease_until=None)


def _transfer_submit(transfer: Transfer) -> str:
    if not stripe_api.configured():
        _update(transfer, hold_reason=Transfer.Hold.STRIPE_NOT_CONFIGURED)
        return "held"
    client = stripe_api.client()
    if transfer.state == Transfer.State.SUBMITTED or transfer.key_generation:
        # An earlier attempt's outcome may be unknown (or its key was spent): look before sending.
        try:
            existing = _find_at_stripe(client, transfer)
        except stripe.StripeError as exc:
            return _transfer_retry_later(transfer, exc)
        if existing is not None:
            transfer_settle_paid(transfer_id=transfer.id, stripe_transfer=existing)
            return "paid"
    if transfer.state == Transfer.State.PENDING:
        if transfer.earning.state == Earning.State.DISPUTED:
            # Disputed while it was out and then refused (held): it will never go now,
            # so the clawback waiting for it has nothing to reverse.
            _transition(
                transfer,
                Transfer.State.PENDING,
                state=Transfer.State.FAILED,
                hold_reason=Transfer.Hold.NONE,
                last_error="cancelled: the earning was disputed",
            )
            for reversal_id in Reversal.objects.filter(transfer=transfer).values_list("pk", flat=True):
                jobs.enqueue(tasks.submit_reversal, reversal_id)
            return "cancelled"
        account = ConnectedAccount.objects.filter(agent_id=transfer.agent_id).first()
        if account is None:
            _update(transfer, hold_reason=Transfer.Hold.NO_ACCOUNT)
            return "held"
        if not account.can_receive_transfers:
            _update(transfer, hold_reason=Transfer.Hold.ACCOUNT_NOT_READY)
            return "held"
        # Marked (and committed) before the request: a crash from here on leaves an
        # ambiguous transfer that is looked up, not sent blindly again. Conditional:
        # a dispute that cancelled it a moment ago wins.
        if not _transition(
            transfer,
            Transfer.State.PENDING,
            state=Transfer.State.SUBMITTED,
            destination=account.stripe_account_id,
            submitted_at=timezone.now(),
            hold_reason=Transfer.Hold.NONE,
        ):
            return "cancelled"
    try:
        created = client.v1.transfers.create(
            params=_transfer_params(transfer),
            options={"idempotency_key": transfer.idempotency_key},
        )
    except stripe.StripeError as exc:
        if stripe_api.is_retryable(exc):
            return _transfer_retry_later(transfer, exc)
        return _transfer_refused(transfer, exc)
    transfer_settle_paid(transfer_id=transfer.id, stripe_transfer=created)
    return "paid"


def _transfer_retry_later(transfer: Transfer, exc: Exception) -> str:
    delay = _backoff(transfer.attempts)
    _update(
        transfer,
        hold_reason=Transfer.Hold.RETRYING,
        last_error=f"{type(exc).__name__}: {exc}"[:2000],
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
        kicked_at=timezone.now() + timedelta(seconds=delay),
    )
    jobs.enqueue(tasks.submit_transfer, transfer.id, countdown=delay)
    return "retrying"


def _transfer_refused(transfer: Transfer, exc: stripe.StripeError) -> str:
    """Stripe said no (a 4xx): nothing was created, so the next try may use a fresh key."""
    code = getattr(exc, "code", None) or ""
    error = f"{code or type(exc).__name__}: {exc.user_message or exc}"[:2000]
    fields: dict[str, Any] = {
        "state": Transfer.State.PENDING,
        "last_error": error,
        "key_generation": transfer.key_generation + 1,
        "next_attempt_at": None,
    }
    submitted = Transfer.State.SUBMITTED
    if code == "balance_insufficient":
        _transition(transfer, submitted, hold_reason=Transfer.Hold.BALANCE_INSUFFICIENT, **fields)
        return "held"  # until balance.available
    if code in ("insufficient_capabilities_for_transfer", "account_invalid") or "capabilit" in error:
        ConnectedAccount.objects.filter(agent_id=transfer.agent_id).update(transfers_status="inactive")
        _transition(transfer, submitted, hold_reason=Transfer.Hold.ACCOUNT_NOT_READY, **fields)
        return "held"  # until account.updated
    fields["state"] = Transfer.State.FAILED
    _transition(transfer, submitted, hold_reason=Transfer.Hold.NONE, **fields)
    logger.error("transfer %s refused by Stripe: %s", transfer.id, error)
    return "failed"


@transaction.atomic
def transfer_settle_paid(*, transfer_id: str, stripe_transfer: Any) -> Transfer:
    """Stripe has the transfer: record it (once) and post it to the ledger."""
    stripe_transfer = as_dict(stripe_transfer)
    transfer = Transfer.objects.select_for_update().get(pk=transfer_id)
    if transfer.state == Transfer.State.PAID:
        return transfer
    transfer.state = Transfer.State.PAID
    transfer.stripe_transfer_id = stripe_transfer["id"]
    transfer.destination = stripe_transfer.get("destination") or transfer.destination
    transfer.paid_at = timezone.now()
    transfer.hold_reason = Transfer.Hold.NONE
    transfer.last_error = ""
    transfer.save(
        update_fields=[
            "state",
            "stripe_transfer_id",
            "destination",
            "paid_at",
            "hold_reason",
            "last_error",
            "updated_at",
        ]
    )
    ledger_post(
        key=f"transfer:{transfer.id}",
        kind="transfer",
        currency=transfer.currency,
        lines=[(payable_account(transfer.agent_id), transfer.amount), (STRIPE_BALANCE, -transfer.amount)],
        agent_id=transfer.agent_id,
        earning=transfer.earning,
        transfer=transfer,
        memo=f"Stripe {stripe_transfer['id']} to {transfer.destination}",
    )
    # Disputed while it was on its way: the clawback can go now.
    for reversal_id in Reversal.objects.filter(transfer=transfer, state=Reversal.State.PENDING).values_list(
        "pk", flat=True
    ):
        jobs.enqueue_on_commit(tasks.submit_reversal, reversal_id)
    return transfer


def transfer_retry(*, transfer_id: str, actor: str) -> Transfer:
    """Admin: send a failed or held transfer again (not one whose earning was disputed)."""
    with transaction.atomic():
        transfer = Transfer.objects.select_for_update().select_related("earning").get(pk=transfer_id)
        if transfer.earning.state == Earning.State.DISPUTED:
            raise Conflict("The earning was disputed; this transfer stays cancelled.", code="disputed")
        if transfer.state in (Transfer.State.PAID, Transfer.State.SUBMITTED):
            return transfer
        transfer.state = Transfer.State.PENDING
        transfer.next_attempt_at = None
        transfer.kicked_at = timezone.now()
        transfer.save(update_fields=["state", "next_attempt_at", "kicked_at", "updated_at"])
        logger.info("transfer %s retried by %s", transfer_id, actor)
        jobs.enqueue_on_commit(tasks.submit_transfer, transfer.id)
    return transfer


def transfers_kick(*, hold_reasons: Iterable[str], agent_id: str | None = None) -> int:
    """Send again the pending transfers held for these reasons (a webhook said things changed)."""
    held = Transfer.objects.filter(state=Transfer.State.PENDING, hold_reason__in=list(hold_reasons))
    if agent_id:
        held = held.filter(agent_id=agent_id)
    return _kick(held, tasks.submit_transfer, limit=1000)


# --- reversals (clawbacks) ---------------------------------------------------------------


def reversal_submit(*, reversal_id: str) -> str:
    if not _claim(Reversal, reversal_id):
        return "busy_or_done"
    try:
        return _reversal_submit(Reversal.objects.select_related("transfer").get(pk=reversal_id))
    finally:
        Reversal.objects.filter(pk=reversal_id).update(lease_until=None)


def _reversal_submit(reversal: Reversal) -> str:
    transfer = reversal.transfer
    if transfer.state == Transfer.State.FAILED:
        return _reversal_not_needed(reversal)
    if transfer.state != Transfer.State.PAID or not transfer.stripe_transfer_id or not stripe_api.configured():
        return "waiting_for_transfer"  # settle_paid (or the sweeper) starts it again
    stripe_transfer_id: str = transfer.stripe_transfer_id
    client = stripe_api.client()
    if reversal.state == Reversal.State.SUBMITTED:
        try:
            listed = client.v1.transfers.reversals.list(stripe_transfer_id, params={"limit": 100})
        except stripe.StripeError as exc:
            return _reversal_retry_later(reversal, exc)
        for candidate in listed.data:
            if (as_dict(candidate).get("metadata") or {}).get("reversal_id") == reversal.id:
                reversal_settle(reversal_id=reversal.id, stripe_reversal_id=candidate.id)
                return "succeeded"
    else:
        _update(reversal, state=Reversal.State.SUBMITTED)
    try:
        created = client.v1.transfers.reversals.create(
            stripe_transfer_id,
            params={
                "amount": reversal.amount,
                "metadata": {"reversal_id": reversal.id, "earning_id": reversal.earning_id},
            },
            options={"idempotency_key": reversal.idempotency_key},
        )
    except stripe.StripeError as exc:
        if stripe_api.is_retryable(exc):
            return _reversal_retry_later(reversal, exc)
        # Could not be reversed (the agent already paid it out, ...): the debt stays in
        # the agent's receivable and is kept back from the next earnings.
        _update(reversal, state=Reversal.State.FAILED, last_error=f"{exc.code or ''}: {exc.user_message or exc}"[:2000])
        return "failed"
    reversal_settle(reversal_id=reversal.id, stripe_reversal_id=created.id)
    return "succeeded"


def _reversal_retry_later(reversal: Reversal, exc: Exception) -> str:
    delay = _backoff(reversal.attempts)
    _update(
        reversal,
        last_error=f"{type(exc).__name__}: {exc}"[:2000],
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
        kicked_at=timezone.now() + timedelta(seconds=delay),
    )
    jobs.enqueue(tasks.submit_reversal, reversal.id, countdown=delay)
    return "retrying"


@transaction.atomic
def _reversal_not_needed(reversal: Reversal) -> str:
    """The transfer it would reverse was never made: what we owed cancels what they owe."""
    reversal = Reversal.objects.select_for_update().get(pk=reversal.pk)
    if reversal.state in (Reversal.State.SUCCEEDED, Reversal.State.FAILED):
        return reversal.state
    agent_id = reversal.transfer.agent_id
    ledger_post(
        key=f"reversal:{reversal.id}",
        kind="reversal",
        currency=reversal.currency,
        lines=[(payable_account(agent_id), reversal.amount), (receivable_account(agent_id), -reversal.amount)],
        agent_id=agent_id,
        earning=reversal.earning,
        transfer=reversal.transfer,
        memo="transfer never made; nothing to reverse",
    )
    reversal.state = Reversal.State.SUCCEEDED
    reversal.last_error = "not needed: the transfer failed"
    reversal.save(update_fields=["state", "last_error", "updated_at"])
    return "succeeded"


@transaction.atomic
def reversal_settle(*, reversal_id: str, stripe_reversal_id: str) -> Reversal:
    reversal = Reversal.objects.select_for_update().select_related("transfer").get(pk=reversal_id)
    if reversal.state == Reversal.State.SUCCEEDED:
        return reversal
    agent_id = reversal.transfer.agent_id
    reversal.state = Reversal.State.SUCCEEDED
    reversal.stripe_reversal_id = stripe_reversal_id
    reversal.save(update_fields=["state", "stripe_reversal_id", "updated_at"])
    Transfer.objects.filter(pk=reversal.transfer_id).update(amount_reversed=F("amount_reversed") + reversal.amount)
    ledger_post(
        key=f"reversal:{reversal.id}",
        kind="reversal",
        currency=reversal.currency,
        lines=[(STRIPE_BALANCE, reversal.amount), (receivable_account(agent_id), -reversal.amount)],
        agent_id=agent_id,
        earning=reversal.earning,
        transfer=reversal.transfer,
        memo=f"Stripe reversal {stripe_reversal_id}",
    )
    return reversal


# --- the sweeper ---------------------------------------------------------------------------


def _kick(queryset: Any, task: Any, *, limit: int) -> int:
    """Start a job for each row, and remember when (so that the sweeper does not pile up jobs)."""
    ids = list(queryset.values_list("pk", flat=True)[:limit])
    if ids:
        queryset.model.objects.filter(pk__in=ids).update(kicked_at=timezone.now())
        for pk in ids:
            jobs.enqueue(task, pk)
    return len(ids)


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
    started = _kick(
        Earning.objects.filter(lost, state=Earning.State.HELD, payable_at__lte=now), tasks.release_earning, limit=limit
    )
    transfers = Transfer.objects.filter(free, due, state__in=[Transfer.State.PENDING, Transfer.State.SUBMITTED]).filter(
        (waiting & (lost | died)) | (~waiting & (held_long | died))
    )
    started += _kick(transfers, tasks.submit_transfer, limit=limit)
    reversals = Reversal.objects.filter(free, due, state__in=[Reversal.State.PENDING, Reversal.State.SUBMITTED])
    started += _kick(reversals.filter(lost | died), tasks.submit_reversal, limit=limit)
    started += _kick(
        StripeEvent.objects.filter(lost, processed_at__isnull=True), tasks.process_stripe_event, limit=limit
    )
    return started


# --- connected accounts and onboarding -------------------------------------------------------


def _stripe_call(call: Any) -> Any:
    if not stripe_api.configured():
        raise StripeNotConfigured()
    try:
        return call(stripe_api.client())
    except stripe.StripeError as exc:
        logger.warning("Stripe call failed: %s", exc)
        raise StripeUnavailable() from exc


def _account_apply(account: ConnectedAccount, obj: Any, as_of: datetime | None) -> ConnectedAccount:
    """Stripe's account object, applied unless we already hold a newer state."""
    obj = as_dict(obj)
    if as_of is not None and account.state_as_of is not None:
        if as_of < account.state_as_of:
            return account  # an older event arriving late
        if as_of == account.state_as_of and stripe_api.configured():
            # Two states within one second (Stripe's timestamps are whole seconds):
            # which one is newer is unknown, so ask Stripe once this is applied.
            jobs.enqueue_on_commit(tasks.refresh_account, account.agent_id)
    requirements = obj.get("requirements") or {}
    capabilities = obj.get("capabilities") or {}
    account.transfers_status = capabilities.get("transfers") or "inactive"
    account.details_submitted = bool(obj.get("details_submitted"))
    account.payouts_enabled = bool(obj.get("payouts_enabled"))
    account.requirements_due = list(requirements.get("currently_due") or [])
    account.requirements_past_due = list(requirements.get("past_due") or [])
    account.disabled_reason = requirements.get("disabled_reason") or ""
    account.state_as_of = as_of or _whole_second(timezone.now())
    account.save()
    if account.can_receive_transfers:
        agent_id = account.agent_id
        transaction.on_commit(lambda: _kick_account_holds(agent_id))
    return account


def _kick_account_holds(agent_id: str) -> int:
    """The agent's account can take transfers now: send what waited for it."""
    return transfers_kick(hold_reasons=[Transfer.Hold.ACCOUNT_NOT_READY, Transfer.Hold.NO_ACCOUNT], agent_id=agent_id)


def _whole_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def account_ensure(*, agent: Agent) -> ConnectedAccount:
    """The agent's connected account, created at Stripe on first use (once, even if asked twice at once)."""
    existing = ConnectedAccount.objects.filter(agent=agent).first()
    if existing is not None:
        return existing
    created = _stripe_call(
        lambda client: client.v1.accounts.create(
            params={
                "type": "express",
                "country": settings.STRIPE_ACCOUNT_COUNTRY,
                "email": agent.user.email or None,
                "business_type": "individual",
                "capabilities": {"transfers": {"requested": True}},
                "metadata": {"agent_id": agent.id},
            },
            options={"idempotency_key": f"account-{agent.id}"},
        )
    )
    with transaction.atomic():
        account, _ = ConnectedAccount.objects.get_or_create(agent=agent, defaults={"stripe_account_id": created.id})
        return _account_apply(ConnectedAccount.objects.select_for_update().get(pk=account.pk), created, None)


def onboarding_link(*, agent: Agent) -> dict[str, Any]:
    """A fresh Stripe-hosted onboarding link; refresh and return lead back into the agent app."""
    account = account_ensure(agent=agent)
    base = settings.APP_BASE_URL
    link = _stripe_call(
        lambda client: client.v1.account_links.create(
            params={
                "account": account.stripe_account_id,
                "type": "account_onboarding",
                "refresh_url": f"{base}/app/payouts?onboarding=refresh",
                "return_url": f"{base}/app/payouts?onboarding=return",
            }
        )
    )
    return {
        "url": link.url,
        "expires_at": datetime.fromtimestamp(link.expires_at, tz=UTC),
        "account_id": account.stripe_account_id,
    }


def account_refresh(*, agent: Agent) -> ConnectedAccount | None:
    """Ask Stripe for the account's state now (the agent is back from onboarding)."""
    account = ConnectedAccount.objects.filter(agent=agent).first()
    if account is None or not stripe_api.configured():
        return account
    obj = _stripe_call(lambda client: client.v1.accounts.retrieve(account.stripe_account_id))
    with transaction.atomic():
        locked = ConnectedAccount.objects.select_for_update().get(pk=account.pk)
        locked.state_as_of = None  # what Stripe says now wins over any event
        return _account_apply(locked, obj, None)


# --- Stripe events (webhooks) -----------------------------------------------------------------


def stripe_event_record(*, event: dict[str, Any]) -> tuple[StripeEvent, bool]:
    """Store a verified event once by its id; the work happens in a job after commit."""
    with transaction.atomic():
        stored, created = StripeEvent.objects.get_or_create(
            id=event["id"],
            defaults={
                "type": event.get("type", ""),
                "account": event.get("account") or "",
                "created": datetime.fromtimestamp(int(event.get("created") or 0), tz=UTC),
                "payload": event,
            },
        )
        if not created:
            StripeEvent.objects.filter(pk=stored.pk).update(deliveries=F("deliveries") + 1)
        if created or stored.processed_at is None:
            jobs.enqueue_on_commit(tasks.process_stripe_event, stored.id)
    return stored, created


def stripe_event_process(*, event_id: str) -> str:
    with transaction.atomic():
        event = StripeEvent.objects.select_for_update(skip_locked=True).filter(pk=event_id).first()
        if event is None or event.processed_at is not None:
            return "skipped"
        outcome = _handle_event(event)
        event.processed_at = timezone.now()
        event.outcome = outcome[:200]
        event.save(update_fields=["processed_at", "outcome"])
    return outcome


def _handle_event(event: StripeEvent) -> str:
    obj = (event.payload.get("data") or {}).get("object") or {}
    kind = event.type
    if kind == "account.updated":
        account = ConnectedAccount.objects.select_for_update().filter(stripe_account_id=obj.get("id")).first()
        if account is None:
            return "unknown account"
        _account_apply(account, obj, event.created)
        return f"account {account.stripe_account_id}: transfers {account.transfers_status}"
    if kind == "capability.updated":
        account = ConnectedAccount.objects.select_for_update().filter(stripe_account_id=obj.get("account")).first()
        if account is None or obj.get("id") != "transfers":
            return "ignored"
        if account.state_as_of is None or event.created >= account.state_as_of:
            account.transfers_status = obj.get("status") or "inactive"
            account.state_as_of = event.created
            account.save(update_fields=["transfers_status", "state_as_of", "updated_at"])
            if account.can_receive_transfers:
                agent_id = account.agent_id
                transaction.on_commit(lambda: _kick_account_holds(agent_id))
        return f"transfers capability {account.transfers_status}"
    if kind == "account.application.deauthorized":
        account_id = event.account or obj.get("account") or ""
        updated = ConnectedAccount.objects.filter(stripe_account_id=account_id, deauthorized_at__isnull=True).update(
            deauthorized_at=event.created, transfers_status="inactive", updated_at=timezone.now()
        )
        return "deauthorized" if updated else "already deauthorized or unknown"
    if kind == "balance.available":
        count = transfers_kick(hold_reasons=[Transfer.Hold.BALANCE_INSUFFICIENT])
        return f"{count} held transfers sent again"
    if kind.startswith("transfer."):
        transfer_id = (obj.get("metadata") or {}).get("transfer_id") or obj.get("transfer_group") or ""
        transfer = Transfer.objects.filter(pk=transfer_id).first()
        if transfer is None:
            return "not ours"
        if transfer.state == Transfer.State.SUBMITTED and kind == "transfer.created":
            transfer_settle_paid(transfer_id=transfer.id, stripe_transfer=obj)
            return "settled"
        return f"transfer {transfer.state}"
    if kind.startswith("payout."):
        account = ConnectedAccount.objects.filter(stripe_account_id=event.account).first()
        if account is None:
            return "unknown account"
        payout, _ = Payout.objects.get_or_create(
            stripe_payout_id=obj["id"],
            defaults={"account": account, "amount": obj.get("amount", 0), "currency": obj.get("currency", "")},
        )
        if (
            payout.state_as_of is None
            or event.created > payout.state_as_of
            or (
                # The same second: a payout only moves forward (pending -> in_transit -> paid/failed/canceled).
                event.created == payout.state_as_of
                and _PAYOUT_STAGE.get(obj.get("status", ""), 0) >= _PAYOUT_STAGE.get(payout.status, 0)
            )
        ):
            arrival = obj.get("arrival_date")
            payout.status = obj.get("status", "")
            payout.amount = obj.get("amount", payout.amount)
            payout.arrival_date = datetime.fromtimestamp(arrival, tz=UTC) if arrival else None
            payout.state_as_of = event.created
            payout.save()
        return f"payout {payout.status}"
    return "ignored"


_PAYOUT_STAGE = {"pending": 1, "in_transit": 2, "paid": 3, "failed": 3, "canceled": 3}


# --- the earnings floor ----------------------------------------------------------------------


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
            _accrue(topup, memo=f"earnings floor, week of {week_start.isoformat()}")
        topups.append(topup)
    return topups


def floor_close_due_weeks() -> int:
    """Close the last two finished weeks (the second covers a job that did not run)."""
    now = timezone.now() - timedelta(seconds=settings.FLOOR_CLOSE_AFTER_SECONDS)
    this_monday = (now - timedelta(days=now.weekday())).date()
    return sum(len(floor_close_week(week_start=this_monday - timedelta(days=7 * n))) for n in (2, 1))
