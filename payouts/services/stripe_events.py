"""Stripe events (webhooks): recorded once, processed once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from core import jobs

from .. import tasks
from ..models import (
    ConnectedAccount,
    Payout,
    StripeEvent,
    Transfer,
)
from .accounts import account_apply, kick_account_holds
from .transfers import transfer_settle_paid, transfers_kick


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


Handler = Callable[[StripeEvent, dict[str, Any]], str]


def _handle_event(event: StripeEvent) -> str:
    obj = (event.payload.get("data") or {}).get("object") or {}
    kind = event.type
    handler = _HANDLERS.get(kind) or _PREFIX_HANDLERS.get(kind.split(".", 1)[0] + ".")
    return handler(event, obj) if handler is not None else "ignored"


def _account_updated(event: StripeEvent, obj: dict[str, Any]) -> str:
    account = ConnectedAccount.objects.select_for_update().filter(stripe_account_id=obj.get("id")).first()
    if account is None:
        return "unknown account"
    account_apply(account, obj, event.created)
    return f"account {account.stripe_account_id}: transfers {account.transfers_status}"


def _capability_updated(event: StripeEvent, obj: dict[str, Any]) -> str:
    account = ConnectedAccount.objects.select_for_update().filter(stripe_account_id=obj.get("account")).first()
    if account is None or obj.get("id") != "transfers":
        return "ignored"
    if account.state_as_of is None or event.created >= account.state_as_of:
        account.transfers_status = obj.get("status") or "inactive"
        account.state_as_of = event.created
        account.save(update_fields=["transfers_status", "state_as_of", "updated_at"])
        if account.can_receive_transfers:
            agent_id = account.agent_id
            transaction.on_commit(lambda: kick_account_holds(agent_id))
    return f"transfers capability {account.transfers_status}"


def _account_deauthorized(event: StripeEvent, obj: dict[str, Any]) -> str:
    account_id = event.account or obj.get("account") or ""
    updated = ConnectedAccount.objects.filter(stripe_account_id=account_id, deauthorized_at__isnull=True).update(
        deauthorized_at=event.created, transfers_status="inactive", updated_at=timezone.now()
    )
    return "deauthorized" if updated else "already deauthorized or unknown"


def _balance_available(event: StripeEvent, obj: dict[str, Any]) -> str:
    count = transfers_kick(hold_reasons=[Transfer.Hold.BALANCE_INSUFFICIENT])
    return f"{count} held transfers sent again"


def _transfer_event(event: StripeEvent, obj: dict[str, Any]) -> str:
    transfer_id = (obj.get("metadata") or {}).get("transfer_id") or obj.get("transfer_group") or ""
    transfer = Transfer.objects.filter(pk=transfer_id).first()
    if transfer is None:
        return "not ours"
    if transfer.state == Transfer.State.SUBMITTED and event.type == "transfer.created":
        transfer_settle_paid(transfer_id=transfer.id, stripe_transfer=obj)
        return "settled"
    return f"transfer {transfer.state}"


def _payout_event(event: StripeEvent, obj: dict[str, Any]) -> str:
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


# One handler per event type; anything else is recorded as "ignored".
_HANDLERS: dict[str, Handler] = {
    "account.updated": _account_updated,
    "capability.updated": _capability_updated,
    "account.application.deauthorized": _account_deauthorized,
    "balance.available": _balance_available,
}
# Whole families of events, by the prefix of their type.
_PREFIX_HANDLERS: dict[str, Handler] = {
    "transfer.": _transfer_event,
    "payout.": _payout_event,
}

_PAYOUT_STAGE = {"pending": 1, "in_transit": 2, "paid": 3, "failed": 3, "canceled": 3}
