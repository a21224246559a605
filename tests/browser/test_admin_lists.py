"""The admin's main lists fit a 1280 px screen and show money as money (issue 11.11)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect

from marketplace.models import Agent, BotIntegration, Conversation
from payouts.models import Earning, Transfer
from payouts.services import earnings

from .conftest import SCREENSHOTS
from .test_admin_operations import DESKTOP, PASSWORD, busy_with, history, log_in

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

LISTS = {
    "conversations": "/admin/marketplace/conversation/",
    "agents": "/admin/marketplace/agent/",
    "transfers": "/admin/payouts/transfer/",
    "earnings": "/admin/payouts/earning/",
    "offers": "/admin/dispatch/offer/",
}


def data(integration: BotIntegration, make_agent: Any) -> Earning:
    """A working day's worth of rows, with realistic long values; returns an earning disputed before its transfer."""
    agents = [
        make_agent(
            username=name, languages=("en", "sv", "de", "fr"), skills=("billing", "refunds", "login", "shipping")
        )
        for name in ("margareta.lindqvist", "bartholomew.okonkwo", "carla")
    ]
    Agent.objects.filter(pk=agents[0].pk).update(display_name="Margareta Lindqvist-Johansson")
    busy_with(integration, agents[1], 1, timezone.now())
    history(integration, agents, timezone.now())
    for conversation in Conversation.objects.filter(integration=integration):
        conversation.external_id = f"support-widget-conversation-{conversation.pk}"
        conversation.topic = "billing-and-refunds"
        conversation.save(update_fields=["external_id", "topic"])
    conversations = list(Conversation.objects.filter(integration=integration, status="resolved"))
    for earning, conversation in zip(Earning.objects.all(), conversations, strict=False):
        Earning.objects.filter(pk=earning.pk).update(conversation=conversation)
    disputed = Earning.objects.create(
        agent=agents[2], kind="resolution", amount=1234, currency="usd", state="released", payable_at=timezone.now()
    )
    Transfer.objects.create(agent=agents[2], earning=disputed, amount=1234, currency="usd", state="pending")
    earnings.earning_dispute(earning_id=disputed.pk, reason="the customer came back", actor="test")
    return disputed


def test_the_main_lists_fit_1280_px_and_show_money(browser, server, integration, make_agent):
    get_user_model().objects.create_superuser("ops", "ops@example.com", PASSWORD)
    disputed = data(integration, make_agent)
    page = browser.new_context(base_url=server, **DESKTOP).new_page()
    page.set_default_timeout(15_000)
    log_in(page)

    wide = {}
    for name, url in LISTS.items():
        page.goto(url)
        expect(page.locator("#result_list")).to_be_visible()
        # Neither the page nor the results box (Django scrolls it on its own) scrolls sideways.
        overflow = page.evaluate(
            """() => [document.documentElement, document.querySelector('#changelist .results')]
                .map(e => e.scrollWidth - e.clientWidth)"""
        )
        if max(overflow) > 0:
            wide[name] = overflow
    assert wide == {}, f"px of sideways scrolling (page, results) at 1280 px: {wide}"

    # Amounts are money, not minor units.
    page.goto(LISTS["earnings"])
    row = page.locator("#result_list tbody tr", has_text=disputed.pk)
    expect(row).to_contain_text("$12.34")
    expect(row).not_to_contain_text("1234")
    page.goto(LISTS["transfers"])
    row = page.locator("#result_list tbody tr", has_text="$12.34")
    expect(row).to_be_visible()
    # A transfer the dispute cancelled says so; it is not a Stripe failure.
    expect(row).to_contain_text("Cancelled (disputed)")
    expect(row).not_to_contain_text("Failed")
    page.screenshot(path=str(SCREENSHOTS / "admin-transfers.png"))
    page.goto(LISTS["offers"])
    expect(page.locator("#result_list tbody tr").first).to_contain_text("$5.00")
    page.context.close()
