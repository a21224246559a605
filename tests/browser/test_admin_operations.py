"""An admin sees and steers the live marketplace from Django admin, on a desktop and on a phone."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect

from dispatch.models import Offer
from dispatch.services import escalations
from marketplace import services
from marketplace.models import Agent, BotIntegration, Conversation, ConversationEvent
from payouts.models import Earning, Transfer

from .conftest import SCREENSHOTS, screenshot

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

PASSWORD = "ops-pass-123"
DESKTOP = {"viewport": {"width": 1280, "height": 900}}


def escalate(integration: BotIntegration, external_id: str, *, waited: float = 0, **fields: Any) -> Conversation:
    """As the bot does; `waited` moves its arrival back in time."""
    conversation, _ = escalations.conversation_escalate(
        integration=integration, data=services.EscalationInput(external_id=external_id, topic="billing", **fields)
    )
    if waited:
        at = timezone.now() - timedelta(seconds=waited)
        ConversationEvent.objects.filter(conversation=conversation).update(created_at=at)
        Conversation.objects.filter(pk=conversation.pk).update(created_at=at, queued_at=at)
    return conversation


def history(integration: BotIntegration, agents: list[Agent], now: datetime) -> None:
    """The last day: answered conversations with their waits, ratings, offers and transfers."""
    waits = [8, 12, 15, 22, 25, 31, 38, 44, 52, 58, 65, 75, 95, 140, 260]
    scores = [5, 5, 4, 5, 3, 4, 5, 2, 5, 4, 5, 4, None, 1, 5]
    for i, (wait, score) in enumerate(zip(waits, scores, strict=True)):
        agent = agents[i % len(agents)]
        end = now - timedelta(minutes=7 + i * 70)
        conversation = Conversation.objects.create(
            integration=integration,
            external_id=f"history-{i}",
            language="en",
            topic="billing",
            status="resolved",
            assigned_agent=agent,
            queue_key=end,
            rating_score=score,
            rated_at=end + timedelta(minutes=6) if score else None,
        )
        for from_status, to_status, at in [
            ("new", "queued", end - timedelta(seconds=wait)),
            ("queued", "offered", end - timedelta(seconds=min(wait, 10))),
            ("offered", "assigned", end),
            ("assigned", "resolved", end + timedelta(minutes=5)),
        ]:
            event = ConversationEvent.objects.create(
                conversation=conversation, kind=f"status.{to_status}", from_status=from_status, to_status=to_status
            )
            ConversationEvent.objects.filter(pk=event.pk).update(created_at=at)
        Conversation.objects.filter(pk=conversation.pk).update(
            created_at=end - timedelta(seconds=wait), assigned_at=end, resolved_at=end + timedelta(minutes=5)
        )
        for state in ["accepted"] + ["declined"] * (i % 4 == 1) + ["expired"] * (i % 5 == 2):
            offer = Offer.objects.create(
                conversation=conversation, agent=agent, state=state, expires_at=end, pay_amount=500, pay_currency="usd"
            )
            Offer.objects.filter(pk=offer.pk).update(created_at=end - timedelta(seconds=5))
        earning = Earning.objects.create(
            agent=agent, kind="resolution", amount=500, currency="usd", state="released", payable_at=end
        )
        state, hold = [("paid", ""), ("paid", ""), ("pending", "no_account"), ("failed", "")][i % 4]
        Transfer.objects.create(agent=agent, earning=earning, amount=500, currency="usd", state=state, hold_reason=hold)


def busy_with(integration: BotIntegration, agent: Agent, n: int, now: datetime) -> None:
    for i in range(n):
        Conversation.objects.create(
            integration=integration,
            external_id=f"busy-{agent.pk}-{i}",
            language="en",
            status="assigned",
            assigned_agent=agent,
            queue_key=now,
            assigned_at=now,
        )
    Agent.objects.filter(pk=agent.pk).update(active_count=n)


def log_in(page: Any) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("link", name="Operations")).to_be_visible()


def tile(page: Any, name: str) -> Any:
    return page.locator(f"#ops-{name} .ops-big")


def test_an_admin_sees_and_steers_the_live_marketplace(browser, server, phone, integration, make_agent):
    get_user_model().objects.create_superuser("ops", "ops@example.com", PASSWORD)
    now = timezone.now()
    # Online: Olivia (Swedish, free), Ben and Carla (English, full); Dan is away.
    olivia = make_agent(username="olivia", languages=("sv",), capacity=2)
    ben = make_agent(username="ben", languages=("en",), capacity=2)
    carla = make_agent(username="carla", languages=("en", "de"), capacity=1)
    dan = make_agent(username="dan", languages=("en",), online=False)
    Agent.objects.filter(pk=dan.pk).update(status="away")
    busy_with(integration, ben, 2, now)
    busy_with(integration, carla, 1, now)
    history(integration, [ben, carla], now)
    # Waiting: nobody online can take them, two of them for longer than the 60 s target.
    late = escalate(integration, "late-1", language="en", priority="urgent", waited=185)
    escalate(integration, "late-2", language="en", priority="normal", waited=75)
    escalate(integration, "fr-1", language="fr", priority="high", waited=20)
    escalate(integration, "en-1", language="en", priority="low")

    page = browser.new_context(base_url=server, **DESKTOP).new_page()
    page.set_default_timeout(15_000)
    log_in(page)
    page.get_by_role("link", name="Operations").first.click()
    expect(page.get_by_role("heading", name="Operations")).to_be_visible()

    # The queue, the breaches, the agents online and the charts.
    expect(tile(page, "waiting")).to_have_text("4")
    expect(tile(page, "breaching")).to_have_text("2")
    expect(tile(page, "online")).to_have_text("3")
    expect(tile(page, "free")).to_have_text("2")
    expect(page.locator("#ops-h-breaches + div")).to_contain_text(late.pk)
    expect(page.locator(".ops-chart svg")).to_have_count(6)
    expect(page.locator(".ops-chart", has_text="Online capacity by language")).to_contain_text("2 free · 0 waiting")

    # It refreshes itself: a new escalation shows up without a reload.
    escalate(integration, "nl-1", language="nl", priority="normal")
    expect(tile(page, "waiting")).to_have_text("5", timeout=15_000)
    expect(page.locator("#ops-status")).to_contain_text("Updated")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "admin-operations.png"), full_page=True)

    # Suspend Olivia from the agent list, through the admin action.
    page.get_by_role("link", name="Agents", exact=True).first.click()
    page.locator("tr", has_text="olivia").locator("input.action-select").check()
    page.locator("select[name=action]").select_option("suspend")
    page.get_by_role("button", name="Go").click()
    expect(page.locator(".messagelist")).to_contain_text("Suspended 1 agent(s).")
    olivia.refresh_from_db()
    assert (olivia.approval, olivia.status) == ("suspended", "offline")

    page.goto("/admin/marketplace/conversation/operations/")
    expect(tile(page, "online")).to_have_text("2")
    expect(tile(page, "free")).to_have_text("0")
    page.context.close()

    # On a phone: the same page, nothing wider than the screen.
    log_in(phone)
    phone.goto("/admin/marketplace/conversation/operations/")
    expect(tile(phone, "waiting")).to_have_text("5")
    overflow = phone.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow}px of sideways scrolling"
    screenshot(phone, "admin-operations-phone")
