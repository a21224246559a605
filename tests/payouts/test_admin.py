"""Payouts in admin: every page opens with data in it; dispute and retry go through the services."""

from __future__ import annotations

import pytest
from django.contrib.admin.utils import quote
from django.urls import reverse

from payouts.models import (
    ConnectedAccount,
    Earning,
    Journal,
    LedgerLine,
    Payout,
    PayPolicy,
    PayRule,
    StripeEvent,
    Transfer,
)
from payouts.services import earnings, transfers

from .conftest import ledger_sums_to_zero

pytestmark = pytest.mark.django_db


@pytest.fixture
def earned(make_agent, resolve, recorded_jobs):
    """Without Stripe: a resolution earned, released, and its transfer waits, visibly."""
    agent = make_agent()
    earning = resolve(agent).earnings.get()
    earnings.earning_release(earning_id=earning.pk)
    assert transfers.transfer_submit(transfer_id=earning.transfer.pk) == "held"
    PayRule.objects.create(topic="billing", amount=450)
    PayPolicy.objects.create()
    account = ConnectedAccount.objects.create(agent=agent, stripe_account_id="acct_admin1")
    StripeEvent.objects.create(id="evt_admin1", type="account.updated", created="2026-11-23T00:00:00Z", payload={})
    Payout.objects.create(stripe_payout_id="po_admin1", account=account, amount=100, currency="usd", status="paid")
    return earning


def test_every_payouts_page_lists_and_opens(admin_client, earned):
    for model in (Earning, Transfer, Journal, LedgerLine, PayRule, PayPolicy, ConnectedAccount, StripeEvent, Payout):
        meta = model._meta
        listing = admin_client.get(reverse(f"admin:payouts_{meta.model_name}_changelist"))
        assert listing.status_code == 200, meta.label
        instance = model.objects.first()
        detail = admin_client.get(reverse(f"admin:payouts_{meta.model_name}_change", args=[quote(instance.pk)]))
        assert detail.status_code == 200, meta.label
    held = admin_client.get(reverse("admin:payouts_transfer_changelist"), {"hold_reason": "stripe_not_configured"})
    assert earned.transfer.id in held.content.decode()


def test_dispute_action_voids_an_unsent_transfer(admin_client, earned):
    response = admin_client.post(
        reverse("admin:payouts_earning_changelist"),
        {"action": "dispute", "_selected_action": [earned.pk]},
        follow=True,
    )

    assert response.status_code == 200 and "Disputed 1 earning" in response.content.decode()
    earned.refresh_from_db()
    assert earned.state == "disputed" and earned.transfer.state == "failed"
    ledger_sums_to_zero()


def test_retry_action_sends_a_failed_transfer_again_but_not_a_disputed_one(
    admin_client, earned, recorded_jobs, django_capture_on_commit_callbacks
):
    Transfer.objects.filter(pk=earned.transfer.pk).update(state="failed", last_error="refused")
    recorded_jobs.clear()

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse("admin:payouts_transfer_changelist"), {"action": "retry", "_selected_action": [earned.transfer.pk]}
        )

    assert Transfer.objects.get(pk=earned.transfer.pk).state == "pending"
    assert recorded_jobs.names() == ["submit_transfer"]
    earnings.earning_dispute(earning_id=earned.pk, reason="refund", actor="test")
    response = admin_client.post(
        reverse("admin:payouts_transfer_changelist"),
        {"action": "retry", "_selected_action": [earned.transfer.pk]},
        follow=True,
    )
    assert "stays cancelled" in response.content.decode()
    assert Transfer.objects.get(pk=earned.transfer.pk).state == "failed"


def test_a_pay_rule_written_in_capitals_or_with_a_region_still_matches(admin_client):
    response = admin_client.post(
        reverse("admin:payouts_payrule_add"),
        {"topic": " Billing ", "priority": "", "language": "sv-SE", "amount": 900, "active": "on"},
    )

    assert response.status_code == 302, response.content
    rule = PayRule.objects.get()
    assert (rule.topic, rule.language) == ("billing", "sv")


# --- labels and money for people (issue 11.11) -------------------------------------------------------


def test_a_transfer_cancelled_by_a_dispute_is_labelled_so_not_failed(admin_client, earned):
    from payouts.selectors import transfer_state_label

    # given: a transfer Stripe refused, and one a dispute cancelled (both are stored as `failed`)
    assert transfer_state_label(Transfer.objects.select_related("earning").get(pk=earned.transfer.pk)).startswith(
        "Held"
    )
    earnings.earning_dispute(earning_id=earned.pk, reason="refund", actor="test")
    cancelled = Transfer.objects.select_related("earning").get(pk=earned.transfer.pk)
    assert cancelled.state == "failed"

    # then: the label and the admin list say what happened
    assert transfer_state_label(cancelled) == "Cancelled (disputed)"
    refused = Transfer(state="failed", earning=Earning(state="released"), amount=1, currency="usd")
    assert transfer_state_label(refused) == "Failed"
    listing = admin_client.get(reverse("admin:payouts_transfer_changelist")).content.decode()
    assert 'field-status">Cancelled (disputed)<' in listing and 'field-status">Failed<' not in listing


def test_paid_and_clawed_back_transfers_are_labelled():
    from payouts.selectors import transfer_state_label

    disputed = Earning(state="disputed")
    assert transfer_state_label(Transfer(state="paid", earning=disputed, amount=5, amount_reversed=5)) == (
        "Paid, clawed back (disputed)"
    )
    assert transfer_state_label(Transfer(state="paid", earning=disputed, amount=5)) == (
        "Paid, clawback pending (disputed)"
    )
    assert transfer_state_label(Transfer(state="paid", earning=Earning(state="released"), amount=5)) == "Paid"


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (1234, "usd", "$12.34"),
        (1234, "sek", "12.34 SEK"),
        (500, "jpy", "500 JPY"),
        (123456789, "eur", "€1,234,567.89"),
        (-250, "gbp", "-£2.50"),
        (1, "kwd", "0.001 KWD"),
        (None, "usd", "—"),
    ],
)
def test_money_is_formatted_from_minor_units(amount, currency, shown):
    from core.display import format_money

    assert format_money(amount, currency) == shown


def test_admin_lists_show_money_not_minor_units(admin_client, earned):
    for name in ("earning", "transfer"):
        listing = admin_client.get(reverse(f"admin:payouts_{name}_changelist")).content.decode()
        assert format_amount(earned.amount) in listing, name


def format_amount(minor: int) -> str:
    return f"${minor // 100}.{minor % 100:02d}"
