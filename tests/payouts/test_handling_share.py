"""The handling share: what an agent who transfers a conversation earns for the work done (a share of
its own quote, PayPolicy.transfer_share_percent), once, on the ledger, in the earnings API and in admin;
the resolver's pay is not reduced by it."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from dispatch.models import Assignment
from dispatch.services import conversations, offers, transfers
from payouts import pricing
from payouts.models import Earning, Journal, PayPolicy
from payouts.services import earnings

from .conftest import ledger_sums_to_zero

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("percent", "quote", "share"),
    [(20, 400, 80), (25, 450, 113), (33, 100, 33), (0, 400, 0), (100, 400, 400), (15, 5, 1), (10, 4, 0)],
)
def test_the_share_is_a_percentage_of_the_quote_rounded_half_up(percent, quote, share):
    assert pricing.handling_share(quote, PayPolicy(transfer_share_percent=percent)) == share


def test_the_share_is_set_in_admin_and_at_most_100(admin_client):
    PayPolicy.objects.create()
    policy = PayPolicy.current()
    url = reverse("admin:payouts_paypolicy_change", args=[policy.pk])
    form = {
        "default_amount": 400,
        "surge_enabled": "on",
        "surge_threshold": 1.0,
        "surge_per_unit": 0.25,
        "surge_max": 2.0,
        "quality_bonus_amount": 100,
        "quality_bonus_min_score": 4,
        "floor_hourly_amount": 1200,
    }
    assert admin_client.get(url).status_code == 200
    refused = admin_client.post(url, {**form, "transfer_share_percent": 150})
    assert refused.status_code == 200 and "transfer_share_percent" in refused.context["adminform"].form.errors
    saved = admin_client.post(url, {**form, "transfer_share_percent": 30})
    assert saved.status_code == 302
    assert PayPolicy.current().transfer_share_percent == 30


def test_the_share_is_earned_exactly_once_and_posted_to_the_ledger(make_agent, escalate, recorded_jobs):
    agent = make_agent()
    conversation = escalate()
    fields: dict[str, Any] = {
        "assignment_id": 4242,
        "agent_id": agent.pk,
        "conversation_id": conversation.pk,
        "amount": 80,
        "currency": "usd",
        "detail": {"transfer_id": "xfr_1"},
    }

    first = earnings.earning_accrue_handling_share(**fields)
    again = earnings.earning_accrue_handling_share(**fields)

    assert first is not None and again is None
    share = Earning.objects.get(agent=agent)
    assert (share.kind, share.amount, share.state) == ("handling_share", 80, "held")
    assert Journal.objects.filter(earning=share, kind="earning").count() == 1
    assert earnings.earning_accrue_handling_share(**{**fields, "assignment_id": 4243, "amount": 0}) is None
    ledger_sums_to_zero()


def test_both_agents_see_their_pay_in_the_earnings_api(make_agent, escalate, recorded_jobs, settings):
    settings.PAYOUT_HOLD_SECONDS = 0
    PayPolicy.objects.create(transfer_share_percent=25)
    ann = make_agent(username="ann")
    conversation = escalate()
    offer = offers.offer_create(conversation_id=conversation.pk, agent_id=ann.pk)
    offers.offer_accept(offer_id=offer.pk, agent=ann)
    conversations.conversation_add_agent_message(conversation_id=conversation.pk, agent=ann, text="hi", client_id="1")
    bob = make_agent(username="bob")
    transfers.conversation_transfer(conversation_id=conversation.pk, agent=ann, to_agent="bob", note="over to you")
    transferred = conversation.offers.get(state="pending")
    offers.offer_accept(offer_id=transferred.pk, agent=bob)
    conversations.conversation_resolve(conversation_id=conversation.pk, agent=bob, outcome="resolved")

    def items(agent) -> list[dict[str, Any]]:
        token = Token.objects.create(user=agent.user)
        response = Client(headers={"Authorization": f"Token {token.key}"}).get("/api/v1/agent/earnings")
        assert response.status_code == 200, response.content
        return response.json()["items"]

    (ann_item,) = items(ann)
    quote = Assignment.objects.get(agent=ann).pay_amount
    assert (ann_item["kind"], ann_item["amount"]) == ("handling_share", round(quote * 0.25))
    assert ann_item["detail"]["share_percent"] == 25.0 and ann_item["detail"]["quote"] == quote
    assert ann_item["conversation_id"] == conversation.pk
    (bob_item,) = items(bob)
    assert (bob_item["kind"], bob_item["amount"]) == ("resolution", transferred.pay_amount)  # not reduced
    ledger_sums_to_zero()
