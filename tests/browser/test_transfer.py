"""A transfer between two phones: ann hands her conversation to bob with a note; bob sees the note on
the offer, accepts, and has the conversation; ann's screen lets go of it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from dispatch.models import ConversationTransfer
from marketplace.models import Conversation
from payouts.models import Earning

from ..conftest import wait_for
from ..processes import HttpBot
from .conftest import PHONE, screenshot
from .test_agent_app import callbacks_of, log_in

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def test_phone_a_transfers_to_phone_b_with_a_note(
    phone, browser, server, make_agent, make_integration, callback_receiver
):
    ann = make_agent(username="ann", online=False)
    bob = make_agent(username="bob", online=False)
    integration = make_integration(callback_url=callback_receiver.url)
    bot = HttpBot(server, integration)

    # Phone A: ann goes online, takes the conversation and writes to the customer.
    page_a = phone
    errors: list[str] = []
    page_a.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page_a, "ann")
    page_a.get_by_role("radio", name="Online").click()
    expect(page_a.locator("#status-chip")).to_have_text("Online")
    created = bot.escalate("xfer-phone", language="en", summary="Refund for order 7", customer={"name": "Anna"})
    expect(page_a.get_by_role("alertdialog", name="New conversation")).to_be_visible()
    page_a.get_by_role("button", name="Accept").click()
    chat_a = page_a.locator(f"#panel-{created['id']}")
    chat_a.get_by_label("Message to the customer").fill("Hi Anna, let me get our refunds expert.")
    chat_a.get_by_role("button", name="Send").click()
    expect(chat_a.locator(".live li.pending")).to_have_count(0)

    # Phone B: bob goes online (nothing for him yet).
    context_b = browser.new_context(base_url=server, **PHONE)
    page_b = context_b.new_page()
    page_b.set_default_timeout(15_000)
    page_b.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page_b, "bob")
    page_b.get_by_role("radio", name="Online").click()
    expect(page_b.locator("#status-chip")).to_have_text("Online")

    # Ann transfers to bob with a note.
    chat_a.get_by_text("Transfer…").click()
    chat_a.get_by_label("An agent").check()
    chat_a.get_by_label("Agent's username").fill("bob")
    chat_a.get_by_label("Note for the next agent").fill("Duplicate charge on order 7; she wants it refunded today.")
    screenshot(page_a, "09-transfer")
    chat_a.get_by_role("button", name="Transfer the conversation").click()
    expect(page_a.locator("#toasts")).to_contain_text("Offered to bob")

    # Bob sees the note on the offer, with who it comes from and the pay, and accepts.
    offer_b = page_b.get_by_role("alertdialog", name="Transferred conversation")
    expect(offer_b).to_be_visible()
    expect(page_b.locator("#offer-transfer-from")).to_have_text("From ann")
    expect(page_b.locator("#offer-transfer-note")).to_have_text(
        "Duplicate charge on order 7; she wants it refunded today."
    )
    expect(page_b.locator("#offer-transfer-share")).to_contain_text("You earn the full pay above")
    screenshot(page_b, "10-transferred-offer")
    page_b.get_by_role("button", name="Accept").click()

    # Bob has the conversation, with ann's message; ann's screen lets go of it.
    chat_b = page_b.locator(f"#panel-{created['id']}")
    expect(chat_b).to_be_visible()
    expect(chat_b.locator(".live li.agent")).to_contain_text("let me get our refunds expert")
    expect(page_a.locator(f"#panel-{created['id']}")).to_have_count(0)
    expect(page_a.locator("#toasts")).to_contain_text("Transferred to bob")
    conversation = Conversation.objects.get(pk=created["id"])
    assert (conversation.status, conversation.assigned_agent_id) == ("assigned", bob.pk)
    assert ConversationTransfer.objects.get(conversation=conversation).state == "completed"
    wait_for(lambda: callbacks_of(callback_receiver, "conversation.transferred"))
    assert Earning.objects.get(agent=ann).kind == "handling_share"
    context_b.close()
    assert errors == []
