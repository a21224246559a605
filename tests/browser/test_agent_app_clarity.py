"""The agent app says what is going on (issue 11.11): checked on what is VISIBLE, not on what is in the DOM.

A collapsed <details> keeps its text in the DOM, so `to_contain_text` passed while the
agent saw nothing of the AI's transcript; these tests look at visibility and boxes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from playwright.sync_api import expect

from payouts.models import Earning, Transfer

from ..conftest import wait_for
from ..processes import HttpBot, daphne, service_env
from .conftest import PHONE, screenshot
from .test_agent_app import log_in

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

TIME = re.compile(r"\d{1,2}[:.]\d{2}")


def box(locator: Any) -> dict[str, float]:
    found = locator.bounding_box()
    assert found is not None and found["height"] > 0, "not rendered"
    return found


def toast(page: Any, text: str) -> Any:
    return page.locator("#toasts .toast", has_text=text)


def admin_client() -> Client:
    user = get_user_model().objects.create_superuser("ops", "ops@example.com", "ops-pass-123")
    client = Client()
    client.force_login(user)
    return client


def test_the_app_says_what_is_going_on(phone, server, make_agent, make_integration, callback_receiver):
    page = phone
    agent = make_agent(username="nora", online=False, languages=("en",), skills=("billing",), capacity=2)
    bot = HttpBot(server, make_integration(callback_url=callback_receiver.url))
    log_in(page, "nora")

    # Offline: the hint to go online shows; online, it goes (and says what happens next instead).
    expect(page.locator("#home-hint")).to_be_visible()
    page.get_by_role("radio", name="Online").click()
    expect(page.locator("#status-chip")).to_have_text("Online")
    expect(page.locator("#home-hint")).to_be_hidden()
    expect(page.locator("#online-hint")).to_be_visible()

    # A decline is confirmed, not just a card that vanishes.
    bot.escalate("clarity-declined", language="en", topic="billing", summary="Wrong plan", customer={"name": "Ivo"})
    offer = page.get_by_role("alertdialog", name="New conversation")
    expect(offer).to_be_visible()
    page.get_by_role("button", name="Decline").click()
    expect(toast(page, "declined")).to_be_visible()
    expect(offer).to_be_hidden()

    # The AI's transcript is a marked, collapsed section with a count; the live chat has its own heading.
    created = bot.escalate(
        "clarity-1",
        language="en",
        topic="billing",
        summary="Charged twice for the March invoice",
        customer={"name": "Anna"},
        transcript=[
            {"role": "customer", "text": "I was charged twice", "at": "2026-11-22T10:00:00Z"},
            {"role": "bot", "text": "Let me get you a human", "at": "2026-11-22T10:00:04Z"},
        ],
    )
    expect(offer).to_contain_text("Charged twice")
    page.get_by_role("button", name="Accept").click()
    chat = page.locator(f"#panel-{created['id']}")
    expect(chat).to_be_visible()
    toggle = chat.locator("details.transcript > summary")
    expect(toggle).to_be_visible()
    expect(toggle).to_contain_text("AI conversation")
    expect(toggle).to_contain_text("2 messages")
    marker = toggle.evaluate("e => getComputedStyle(e, '::before').content")
    assert marker not in ("none", "normal", ""), "the collapsed section has no visible marker"
    expect(chat.locator(".transcript-list li").first).to_be_hidden()  # collapsed: not mistaken for the live chat
    live_title = chat.locator(".live-title")
    expect(live_title).to_be_visible()
    expect(live_title).to_contain_text("Live chat")
    assert box(live_title)["y"] > box(toggle)["y"]
    toggle.click()
    expect(chat.locator(".transcript-list li", has_text="I was charged twice")).to_be_visible()
    expect(chat.locator(".transcript-list li time").first).to_be_visible()
    assert box(chat.locator(".transcript-list")).get("y") < box(live_title)["y"]

    # Every message shows its time.
    chat.get_by_label("Message to the customer").fill("Hi Anna, I see both charges.")
    chat.get_by_role("button", name="Send").click()
    sent = chat.locator(".live li.agent:not(.pending)", has_text="I see both charges")
    expect(sent).to_be_visible()
    expect(sent.locator("time")).to_be_visible()
    expect(sent.locator("time")).to_have_text(TIME)
    bot.post(f"/api/v1/escalations/{created['id']}/messages", {"text": "Thanks!", "external_message_id": "c-1"})
    expect(chat.locator(".live li.customer time")).to_have_text(TIME)
    screenshot(page, "11-transcript-and-times")

    # The connection drops: the chip under the red banner no longer says Online.
    page.context.set_offline(True)
    page.evaluate("window.dispatchEvent(new Event('offline'))")
    expect(page.locator("#offline")).to_be_visible(timeout=20_000)
    expect(page.locator("#status-chip")).to_be_visible()
    expect(page.locator("#status-chip")).not_to_have_text("Online")
    expect(page.locator("#status-chip")).to_have_text(re.compile("Reconnecting|Offline"))
    page.context.set_offline(False)
    page.evaluate("window.dispatchEvent(new Event('online'))")
    expect(page.locator("#offline")).to_be_hidden(timeout=20_000)
    expect(page.locator("#status-chip")).to_have_text("Online")

    # An operator re-queues the other conversation: the agent is told it went back to the queue.
    second = bot.escalate(
        "clarity-2", language="en", topic="billing", summary="Cannot log in", customer={"name": "Olle"}
    )
    expect(offer).to_contain_text("Cannot log in")
    page.get_by_role("button", name="Accept").click()
    expect(page.locator(f"#panel-{second['id']}")).to_be_visible()
    response = admin_client().post(
        reverse("admin:marketplace_conversation_changelist"),
        {"action": "requeue_front", "_selected_action": [second["id"]]},
        follow=True,
    )
    assert "Re-queued 1 conversation" in response.content.decode()
    expect(toast(page, "Moved back to the queue by an operator")).to_be_visible()
    expect(page.locator("#toasts")).not_to_contain_text("Closed")
    expect(page.locator(f"#panel-{second['id']}")).to_have_count(0)
    expect(offer).to_contain_text("Cannot log in")  # back in line, it comes to the only agent online again
    page.get_by_role("button", name="Decline").click()
    expect(offer).to_be_hidden()

    # Resolve; the earning's row names the conversation and why its money waits.
    page.goto("/app/#chats")
    chat = page.locator(f"#panel-{created['id']}")
    chat.get_by_text("Resolve…").click()
    chat.get_by_role("button", name="Close the conversation").click()
    expect(chat).to_have_count(0)
    earning = wait_for(lambda: Earning.objects.filter(agent=agent).first())
    wait_for(lambda: Transfer.objects.filter(earning=earning, hold_reason="stripe_not_configured").first())
    page.get_by_role("link", name="Earnings").click()
    row = page.locator(f'#earn-items li[data-id="{earning.id}"]')
    expect(row.locator(".conversation")).to_be_visible()
    expect(row.locator(".conversation")).to_contain_text("Anna")
    expect(row.locator(".conversation")).to_contain_text("Charged twice for the March invoice")
    expect(row.locator(".why")).to_be_visible()
    expect(row.locator(".why")).to_contain_text("Payouts are not set up on this platform yet")


@pytest.fixture
def strict_server(tmp_path: Path) -> Iterator[str]:
    """Offers lapse after 5 s; one miss sets the agent away; earnings are held an hour."""
    env = service_env(
        TASK_RUNNER="thread",
        RUN_PERIODIC_IN_PROCESS="true",
        OFFER_TIMEOUT_SECONDS="5",
        MISSES_BEFORE_AWAY="1",
        PAYOUT_HOLD_SECONDS="3600",
        PRESENCE_GRACE_SECONDS="30",
    )
    with daphne(env, tmp_path / "daphne.log") as base:
        yield base


def test_an_automatic_away_says_why_and_a_held_earning_says_until_when(
    browser, strict_server, make_agent, make_integration, callback_receiver
):
    context = browser.new_context(base_url=strict_server, **PHONE)
    page = context.new_page()
    page.set_default_timeout(15_000)
    make_agent(username="omar", online=False)
    bot = HttpBot(strict_server, make_integration(callback_url=callback_receiver.url))
    log_in(page, "omar")
    page.get_by_role("radio", name="Online").click()
    expect(page.locator("#status-chip")).to_have_text("Online")

    # An offer lapses: the server sets the agent away, and the app says why.
    bot.escalate("strict-1", language="en", topic="billing", summary="Lapsed", customer={"name": "Lea"})
    expect(page.get_by_role("alertdialog", name="New conversation")).to_be_visible()
    expect(page.locator("#status-chip")).to_have_text("Away", timeout=20_000)
    note = page.locator("#presence-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("missed")
    screenshot(page, "10-away-reason")
    page.reload()  # `hello` carries the reason too (status_reason): a reload or reconnect still says why
    expect(page.locator('body[data-connected="true"]')).to_have_count(1)
    expect(page.locator("#status-chip")).to_have_text("Away")
    expect(note).to_be_visible()
    expect(note).to_contain_text("missed")
    # Going online again by hand clears it.
    page.get_by_role("radio", name="Online").click()
    expect(page.locator("#status-chip")).to_have_text("Online")
    expect(note).to_be_hidden()

    # A resolution inside the dispute window: its row says until when it is held.
    offer = page.get_by_role("alertdialog", name="New conversation")
    created = bot.escalate("strict-2", language="en", topic="billing", summary="Held pay", customer={"name": "Max"})
    expect(offer).to_contain_text("Held pay")
    page.get_by_role("button", name="Accept").click()
    chat = page.locator(f"#panel-{created['id']}")
    chat.get_by_text("Resolve…").click()
    chat.get_by_role("button", name="Close the conversation").click()
    expect(chat).to_have_count(0)
    page.get_by_role("link", name="Earnings").click()
    row = page.locator("#earn-items li", has_text="Max")
    expect(row.locator(".why")).to_be_visible()
    expect(row.locator(".why")).to_contain_text("On hold until")
    expect(row.locator(".conversation")).to_contain_text("Max · billing · Held pay")
    expect(page.locator("#toasts .toast")).to_have_count(0, timeout=15_000)
    screenshot(page, "12-earnings-why")
    context.close()
