"""Transfers and reversals (clawbacks) through Stripe.

Lock order: the agent's payouts lock, then Earning, then Transfer, then Reversal
(after dispatch's Conversation, Offer, Agent when called from there). No lock
is held across a Stripe call: a transfer is claimed with a conditional UPDATE
(a lease), marked `submitted` and committed before the request goes out, and
its outcome is written afterwards. A `submitted` transfer whose outcome is
unknown (a timeout, a killed worker) is settled by looking it up at Stripe by
our own id (`transfer_group`), never by sending a second one; when it is not
there, it is sent again with the same Idempotency-Key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import stripe
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from core import jobs, outbox
from core.errors import Conflict

from .. import stripe_api, tasks
from ..models import (
    ConnectedAccount,
    Earning,
    Reversal,
    Transfer,
)
from ..stripe_api import as_dict
from .ledger import STRIPE_BALANCE, ledger_post, payable_account, receivable_account

if TYPE_CHECKING:
    from stripe.params import TransferCreateParams

logger = logging.getLogger(__name__)


def _claim(model: type[Transfer] | type[Reversal], pk: str) -> bool:
    """Take the lease on a row not being worked on: only one worker runs a transfer at a time."""
    return outbox.claim(
        model.objects.filter(pk=pk, state__in=["pending", "submitted"]),
        lease_seconds=settings.TRANSFER_LEASE_SECONDS,
    )


def _backoff(attempts: int) -> float:
    return outbox.backoff_seconds(
        attempts, base=settings.TRANSFER_RETRY_BASE_SECONDS, cap=settings.TRANSFER_RETRY_MAX_SECONDS
    )


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
    return outbox.kick(held, tasks.submit_transfer, limit=1000)


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
