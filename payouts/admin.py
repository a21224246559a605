"""Payouts in admin: pay rules and policy, earnings (dispute), transfers (retry, dispute), the ledger, Stripe events."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.display import format_money, format_when
from core.errors import ApiError
from marketplace.admin import ReadOnlyAdmin, ReadOnlyInline

from . import selectors
from .models import (
    ConnectedAccount,
    Earning,
    Journal,
    LedgerLine,
    Payout,
    PayPolicy,
    PayRule,
    Reversal,
    StripeEvent,
    Transfer,
)
from .services import accounts, earnings, transfers


def _run(request: HttpRequest, what: str, fn: Any, **kwargs: Any) -> bool:
    try:
        fn(**kwargs)
        return True
    except ApiError as exc:
        messages.warning(request, f"{what}: {exc.detail}")
        return False


def _agent_name(obj: Any) -> str:
    return obj.agent.display_name


class TransferInline(ReadOnlyInline):
    model = Transfer
    fields = ("id", "state", "amount", "hold_reason", "stripe_transfer_id", "last_error")
    readonly_fields = fields


@admin.register(PayRule)
class PayRuleAdmin(admin.ModelAdmin):
    list_display = ("topic", "priority", "language", "amount", "money", "active", "updated_at")
    list_editable = ("amount", "active")
    list_filter = ("active", "priority", "language")
    search_fields = ("topic",)

    @admin.display(description="As money")
    def money(self, rule: PayRule) -> str:
        return format_money(rule.amount, settings.PLATFORM_CURRENCY)


@admin.register(PayPolicy)
class PayPolicyAdmin(admin.ModelAdmin):
    list_display = (
        "default_amount",
        "surge_enabled",
        "surge_max",
        "quality_bonus_amount",
        "floor_hourly_amount",
        "transfer_share_percent",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not PayPolicy.objects.exists()  # one row


@admin.register(ConnectedAccount)
class ConnectedAccountAdmin(ReadOnlyAdmin):
    list_display = (
        "stripe_account_id",
        "agent",
        "transfers_status",
        "details_submitted",
        "payouts_enabled",
        "disabled_reason",
        "deauthorized_at",
        "state_as_of",
    )
    list_filter = ("transfers_status", "details_submitted", "payouts_enabled")
    search_fields = ("stripe_account_id", "agent__display_name", "agent__id")
    list_select_related = ("agent",)
    actions = ("refresh",)

    @admin.action(description="Refresh from Stripe")
    def refresh(self, request: HttpRequest, queryset: QuerySet[ConnectedAccount]) -> None:
        done = sum(_run(request, a.stripe_account_id, accounts.account_refresh, agent=a.agent) for a in queryset)
        self.message_user(request, f"Refreshed {done} account(s).", messages.SUCCESS)


@admin.register(Earning)
class EarningAdmin(ReadOnlyAdmin):
    list_display = ("id", "agent_name", "kind", "money", "status", "conversation_id", "created")
    list_filter = ("state", "kind", "currency")
    search_fields = ("id", "agent__display_name", "agent__id", "conversation__id")
    list_select_related = ("agent", "conversation")
    date_hierarchy = "created_at"
    inlines = (TransferInline,)
    actions = ("dispute",)

    @admin.display(description="Agent", ordering="agent__display_name")
    def agent_name(self, earning: Earning) -> str:
        return _agent_name(earning)

    @admin.display(description="Amount", ordering="amount")
    def money(self, earning: Earning) -> str:
        return format_money(earning.amount, earning.currency)

    @admin.display(description="State", ordering="state")
    def status(self, earning: Earning) -> str:
        if earning.state == Earning.State.HELD:
            return f"Held until {format_when(earning.payable_at)}"
        return Earning.State(earning.state).label

    @admin.display(description="Created", ordering="created_at")
    def created(self, earning: Earning) -> str:
        return format_when(earning.created_at)

    @admin.action(description="Dispute (withhold inside the hold, claw back after)")
    def dispute(self, request: HttpRequest, queryset: QuerySet[Earning]) -> None:
        actor = f"admin:{request.user}"
        done = sum(
            _run(request, e.pk, earnings.earning_dispute, earning_id=e.pk, reason="disputed by an admin", actor=actor)
            for e in queryset
        )
        self.message_user(request, f"Disputed {done} earning(s).", messages.SUCCESS)


@admin.register(Transfer)
class TransferAdmin(ReadOnlyAdmin):
    list_display = ("id", "agent_name", "money", "status", "stripe_transfer_id", "attempts", "created")
    list_filter = ("state", "hold_reason", "currency")
    search_fields = ("id", "stripe_transfer_id", "destination", "agent__display_name", "earning__id")
    list_select_related = ("agent", "earning")
    date_hierarchy = "created_at"
    actions = ("retry", "dispute")

    @admin.display(description="Agent", ordering="agent__display_name")
    def agent_name(self, transfer: Transfer) -> str:
        return _agent_name(transfer)

    @admin.display(description="Amount", ordering="amount")
    def money(self, transfer: Transfer) -> str:
        return format_money(transfer.amount, transfer.currency)

    @admin.display(description="State", ordering="state")
    def status(self, transfer: Transfer) -> str:
        return selectors.transfer_state_label(transfer)

    @admin.display(description="Created", ordering="created_at")
    def created(self, transfer: Transfer) -> str:
        return format_when(transfer.created_at)

    @admin.action(description="Retry (failed or held transfers)")
    def retry(self, request: HttpRequest, queryset: QuerySet[Transfer]) -> None:
        actor = f"admin:{request.user}"
        done = sum(_run(request, t.pk, transfers.transfer_retry, transfer_id=t.pk, actor=actor) for t in queryset)
        self.message_user(request, f"Queued {done} transfer(s) again.", messages.SUCCESS)

    @admin.action(description="Dispute the earning (cancel an unsent transfer, claw back a paid one)")
    def dispute(self, request: HttpRequest, queryset: QuerySet[Transfer]) -> None:
        actor = f"admin:{request.user}"
        done = sum(
            _run(
                request,
                t.pk,
                earnings.earning_dispute,
                earning_id=t.earning_id,
                reason="disputed by an admin",
                actor=actor,
            )
            for t in queryset
        )
        self.message_user(request, f"Disputed the earnings of {done} transfer(s).", messages.SUCCESS)


@admin.register(Reversal)
class ReversalAdmin(ReadOnlyAdmin):
    list_display = ("id", "transfer_id", "money", "state", "stripe_reversal_id", "last_error", "created_at")
    list_filter = ("state", "currency")
    search_fields = ("id", "transfer__id", "stripe_reversal_id", "earning__id", "transfer__agent__display_name")
    date_hierarchy = "created_at"

    @admin.display(description="Amount", ordering="amount")
    def money(self, reversal: Reversal) -> str:
        return format_money(reversal.amount, reversal.currency)


class LedgerLineInline(ReadOnlyInline):
    model = LedgerLine
    fields = ("account", "amount", "currency")
    readonly_fields = fields


@admin.register(Journal)
class JournalAdmin(ReadOnlyAdmin):
    list_display = ("key", "kind", "agent", "earning", "transfer", "memo", "created_at")
    list_filter = ("kind",)
    search_fields = ("key", "agent__display_name", "agent__id", "earning__id", "transfer__id")
    date_hierarchy = "created_at"
    inlines = (LedgerLineInline,)


@admin.register(LedgerLine)
class LedgerLineAdmin(ReadOnlyAdmin):
    list_display = ("journal", "account", "money")
    list_filter = ("currency",)
    search_fields = ("account", "journal__key")
    list_select_related = ("journal",)

    @admin.display(description="Amount (debit +, credit -)", ordering="amount")
    def money(self, line: LedgerLine) -> str:
        return format_money(line.amount, line.currency)


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "type", "account", "created", "received_at", "processed_at", "deliveries", "outcome")
    list_filter = ("type", ("processed_at", admin.EmptyFieldListFilter))
    search_fields = ("id", "account", "outcome")
    date_hierarchy = "received_at"


@admin.register(Payout)
class PayoutAdmin(ReadOnlyAdmin):
    list_display = ("stripe_payout_id", "account", "money", "status", "arrival_date")
    list_filter = ("status", "currency")
    search_fields = ("stripe_payout_id", "account__stripe_account_id", "account__agent__display_name")

    @admin.display(description="Amount", ordering="amount")
    def money(self, payout: Payout) -> str:
        return format_money(payout.amount, payout.currency)
