"""Reads for the agent app, the admin and reconciliation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from marketplace.models import Agent

from . import stripe_api
from .models import ConnectedAccount, Earning, LedgerLine, Payout, Transfer


@dataclass(frozen=True)
class PayoutReadiness:
    ready: bool  # may go online (as far as payouts go)
    can_receive_transfers: bool
    reason: str  # machine-readable when not ready
    detail: str  # for the agent


def payout_readiness(agent: Agent, account: ConnectedAccount | None = None) -> PayoutReadiness:
    account = account or ConnectedAccount.objects.filter(agent=agent).first()
    can_receive = bool(account and account.can_receive_transfers)
    required = settings.PAYOUTS_REQUIRED_TO_GO_ONLINE and stripe_api.configured()
    if can_receive:
        return PayoutReadiness(True, True, "", "")
    if not stripe_api.configured():
        return PayoutReadiness(
            True,
            False,
            "stripe_not_configured",
            "Payouts are not set up on this platform yet; earnings accrue meanwhile.",
        )
    if account is None:
        reason, detail = "onboarding_required", "Set up payouts with Stripe before going online."
    elif account.deauthorized_at is not None:
        reason, detail = "account_disconnected", "Your Stripe account was disconnected; connect it again."
    else:
        due = [*account.requirements_past_due, *account.requirements_due]
        reason = "requirements_due" if due else "transfers_inactive"
        detail = (
            "Stripe still needs: " + ", ".join(due) if due else "Stripe has not enabled transfers to your account yet."
        )
        if account.disabled_reason:
            detail += f" ({account.disabled_reason})"
    return PayoutReadiness(not required, False, reason, detail)


def account_status(agent: Agent) -> dict[str, Any]:
    account = ConnectedAccount.objects.filter(agent=agent).first()
    readiness = payout_readiness(agent, account)
    return {
        "stripe_configured": stripe_api.configured(),
        "account_id": account.stripe_account_id if account else None,
        "transfers": account.transfers_status if account else None,
        "details_submitted": account.details_submitted if account else False,
        "payouts_enabled": account.payouts_enabled if account else False,
        "requirements_due": account.requirements_due if account else [],
        "requirements_past_due": account.requirements_past_due if account else [],
        "disabled_reason": (account.disabled_reason or None) if account else None,
        "can_receive_transfers": readiness.can_receive_transfers,
        "can_go_online": readiness.ready,
        "reason": readiness.reason or None,
        "detail": readiness.detail or None,
    }


def earning_status(earning: Earning) -> str:
    """held, pending, submitted, paid, failed, offset or disputed (clawed back when it had been paid)."""
    if earning.state == Earning.State.HELD:
        return "held"
    if earning.state == Earning.State.DISPUTED:
        return "disputed"
    transfer = getattr(earning, "transfer", None)
    return transfer.state if transfer is not None else "offset"


def _sum(queryset: QuerySet[Any], field: str) -> int:
    return int(queryset.aggregate(total=Sum(field))["total"] or 0)


def earnings_summary(
    agent: Agent, *, limit: int = 50, before: datetime | None = None, before_id: str | None = None
) -> dict[str, Any]:
    """Totals and a page of items, newest first; (before, before_id) is where the previous page ended."""
    currency = settings.PLATFORM_CURRENCY
    earnings = Earning.objects.filter(agent=agent, currency=currency)
    live = earnings.exclude(state=Earning.State.DISPUTED)
    held = _sum(live.filter(state=Earning.State.HELD), "amount")
    in_flight = _sum(
        Transfer.objects.filter(
            agent=agent, currency=currency, state__in=[Transfer.State.PENDING, Transfer.State.SUBMITTED]
        ).exclude(earning__state=Earning.State.DISPUTED),
        "amount",
    )
    paid = Transfer.objects.filter(agent=agent, currency=currency, state=Transfer.State.PAID)
    transferred = _sum(paid, "amount") - _sum(paid, "amount_reversed")
    paid_out = _sum(Payout.objects.filter(account__agent=agent, currency=currency, status="paid"), "amount")
    midnight = datetime.combine(timezone.now().date(), time.min, tzinfo=timezone.now().tzinfo)
    today = _sum(live.filter(created_at__gte=midnight), "amount")
    owed_back = LedgerLine.objects.filter(account=f"agent:{agent.pk}:receivable", currency=currency).aggregate(
        total=Sum("amount")
    )["total"]
    page = earnings.select_related("transfer", "conversation").order_by("-created_at", "-id")
    if before is not None and before_id:
        page = page.filter(Q(created_at__lt=before) | Q(created_at=before, id__lt=before_id))
    elif before is not None:
        page = page.filter(created_at__lt=before)
    items = list(page[: limit + 1])
    last = items[limit - 1] if len(items) > limit else None
    return {
        "currency": currency,
        "pending": held + in_flight,
        "transferred": transferred,
        "paid_out": paid_out,
        "today": today,
        "owed_back": max(int(owed_back or 0), 0),
        "items": [earning_item(e) for e in items[:limit]],
        "has_more": last is not None,
        "next": {"before": last.created_at, "before_id": last.id} if last is not None else None,
    }


# Why a transfer that is not sent yet waits, in the agent's words (Transfer.hold_reason -> code, sentence).
_HOLD_WAITING: dict[str, tuple[str, str]] = {
    Transfer.Hold.STRIPE_NOT_CONFIGURED: (
        "payouts_not_set_up",
        "Payouts are not set up on this platform yet; it is sent once they are.",
    ),
    Transfer.Hold.NO_ACCOUNT: ("onboarding", "Waiting for you to set up payouts (Payouts tab)."),
    Transfer.Hold.ACCOUNT_NOT_READY: ("onboarding", "Waiting for Stripe to enable transfers to your account."),
    Transfer.Hold.BALANCE_INSUFFICIENT: (
        "platform_balance",
        "Waiting for the platform's Stripe balance; it is sent when funds arrive.",
    ),
    Transfer.Hold.RETRYING: ("retrying", "Stripe could not be reached; it is tried again."),
}


def earning_waiting(earning: Earning) -> dict[str, Any] | None:
    """Why the earning's money has not reached the agent yet, or None when it has (or never will by transfer).

    `reason` is a stable code, `detail` a sentence for the agent, `until` when the wait ends if known.
    """
    transfer = getattr(earning, "transfer", None)
    if earning.state == Earning.State.HELD:
        return {
            "reason": "on_hold",
            "detail": "On hold while the customer may still dispute the resolution.",
            "until": earning.payable_at,
        }
    if earning.state == Earning.State.DISPUTED:
        why = earning.dispute_reason or "the resolution was disputed"
        return {"reason": "disputed", "detail": f"Disputed: {why}. Not paid.", "until": None}
    if transfer is None:
        if earning.offset_amount:
            return {"reason": "offset", "detail": "Kept back against money you owe.", "until": None}
        return None
    if transfer.state == Transfer.State.PENDING:
        reason, detail = _HOLD_WAITING.get(transfer.hold_reason, ("queued", "Queued to be sent to Stripe."))
        until = transfer.next_attempt_at if transfer.hold_reason == Transfer.Hold.RETRYING else None
        return {"reason": reason, "detail": detail, "until": until}
    if transfer.state == Transfer.State.SUBMITTED:
        return {
            "reason": "in_flight",
            "detail": "Transfer in flight: sent to Stripe, waiting for its answer.",
            "until": None,
        }
    if transfer.state == Transfer.State.FAILED:
        return {"reason": "failed", "detail": "Stripe refused the transfer; support will send it again.", "until": None}
    return None


def _conversation_ref(earning: Earning) -> dict[str, Any] | None:
    conversation = earning.conversation
    if conversation is None:
        return None
    customer = conversation.customer if isinstance(conversation.customer, dict) else {}
    name = customer.get("name")
    return {
        "id": conversation.id,
        "customer_name": name if isinstance(name, str) and name else None,
        "topic": conversation.topic or None,
        "summary": conversation.summary[:200] or None,
    }


def earning_item(earning: Earning) -> dict[str, Any]:
    transfer = getattr(earning, "transfer", None)
    return {
        "id": earning.id,
        "kind": earning.kind,
        "conversation_id": earning.conversation_id,
        "conversation": _conversation_ref(earning),
        "waiting": earning_waiting(earning),
        "week_start": earning.week_start,
        "amount": earning.amount,
        "currency": earning.currency,
        "status": earning_status(earning),
        "offset_amount": earning.offset_amount,
        "created_at": earning.created_at,
        "payable_at": earning.payable_at,
        "disputed_at": earning.disputed_at,
        "detail": earning.detail,
        "transfer": None
        if transfer is None
        else {
            "id": transfer.id,
            "status": transfer.state,
            "amount": transfer.amount,
            "amount_reversed": transfer.amount_reversed,
            "hold_reason": transfer.hold_reason or None,
            "stripe_transfer_id": transfer.stripe_transfer_id,
            "paid_at": transfer.paid_at,
        },
    }


def ledger_imbalances() -> list[dict[str, Any]]:
    """Journals whose lines do not sum to zero (there should be none), and the grand total per currency."""
    bad = (
        LedgerLine.objects.values("journal_id", "currency")
        .annotate(total=Sum("amount"))
        .exclude(total=0)
        .order_by("journal_id")
    )
    return list(bad)


def ledger_totals() -> dict[str, int]:
    return {
        row["currency"]: int(row["total"] or 0)
        for row in LedgerLine.objects.values("currency").annotate(total=Sum("amount"))
    }


def transfers_by_state() -> dict[str, int]:
    return {row["state"]: row["n"] for row in Transfer.objects.values("state").annotate(n=Count("pk"))}


def held_transfers() -> QuerySet[Transfer]:
    return Transfer.objects.filter(Q(state=Transfer.State.PENDING) & ~Q(hold_reason=""))


def held_transfers_by_reason() -> dict[str, int]:
    """Pending transfers that wait on something (no account, no balance, ...), counted by what."""
    rows = held_transfers().values("hold_reason").annotate(n=Count("pk")).order_by("hold_reason")
    return {row["hold_reason"]: row["n"] for row in rows}


_HOLD_LABELS: dict[str, str] = {
    Transfer.Hold.STRIPE_NOT_CONFIGURED: "Stripe not configured",
    Transfer.Hold.NO_ACCOUNT: "no Stripe account",
    Transfer.Hold.ACCOUNT_NOT_READY: "account not ready",
    Transfer.Hold.BALANCE_INSUFFICIENT: "platform balance low",
    Transfer.Hold.RETRYING: "retrying",
}


def transfer_state_label(transfer: Transfer) -> str:
    """The transfer's state for people: a dispute's cancellation or clawback is not a Stripe failure.

    A dispute cancels an unsent transfer by setting it `failed` (it will never be sent);
    read together with its earning, that is "Cancelled (disputed)", not "Failed".
    """
    disputed = transfer.earning.state == Earning.State.DISPUTED
    state = transfer.state
    if disputed:
        if state == Transfer.State.FAILED:
            return "Cancelled (disputed)"
        if state == Transfer.State.PAID:
            if transfer.amount_reversed >= transfer.amount:
                return "Paid, clawed back (disputed)"
            return "Paid, clawback pending (disputed)"
        if state == Transfer.State.SUBMITTED:
            return "Sent, clawback pending (disputed)"
        return "Cancelling (disputed)"
    if state == Transfer.State.PENDING and transfer.hold_reason:
        return f"Held: {_HOLD_LABELS.get(transfer.hold_reason, transfer.hold_reason)}"
    if state == Transfer.State.PAID and transfer.amount_reversed:
        return "Paid, partly reversed"
    return Transfer.State(state).label


def floor_topped_up(week_start: date) -> set[str]:
    """Agents whose week starting `week_start` already has its floor top-up (it is made once)."""
    return set(
        Earning.objects.filter(kind=Earning.Kind.FLOOR_TOPUP, week_start=week_start).values_list("agent_id", flat=True)
    )
