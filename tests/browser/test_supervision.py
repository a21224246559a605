"""An agent on a phone asks for help; a supervisor on a desktop sees the flag on the live page,
whispers (the phone shows the note, marked internal) and takes the conversation over (it leaves the phone)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from dispatch.models import HelpRequest
from marketplace.models import CallbackEvent, Conversation, ConversationEvent

from ..processes import HttpBot
from .conftest import screenshot
from .test_agent_app import PASSWORD, log_in

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

DESKTOP = {"viewport": {"width": 1280, "height": 900}}


def test_help_whisper_and_take_over_between_a_phone_and_the_admin(browser, server, phone, make_agent, integration):
    # Sam supervises, and is an agent too (offline): a take-over makes the conversation his.
    sam = make_agent(username="sam", online=False)
    get_user_model().objects.filter(pk=sam.user_id).update(is_staff=True, is_superuser=True, first_name="Sam")
    make_agent(username="maria", online=False)
    bot = HttpBot(server, integration)

    # The agent takes a conversation on the phone.
    log_in(phone, "maria")
    phone.get_by_role("radio", name="Online").click()
    expect(phone.locator("#status-chip")).to_have_text("Online")
    created = bot.escalate(
        "help-1", language="en", topic="billing", summary="Wants two refunds", customer={"name": "Anna"}
    )
    phone.get_by_role("button", name="Accept").click()
    chat = phone.locator(f"#panel-{created['id']}")
    expect(chat).to_be_visible()

    # A note of its own, marked internal.
    expect(chat.get_by_text("Internal — the customer does not see this")).to_be_visible()
    chat.get_by_label("Internal note (the customer does not see this)").fill("Second charge is from the app store")
    chat.get_by_role("button", name="Add note").click()
    expect(chat.locator(".internal-notes li.note")).to_contain_text("Second charge is from the app store")

    # The agent asks for help; the app says it was sent.
    chat.get_by_text("Ask for help…").click()
    chat.get_by_label("What do you need? A supervisor sees it at once.").fill("May I refund both charges?")
    chat.get_by_role("button", name="Ask a supervisor").click()
    expect(chat.locator(".help-status")).to_contain_text("a supervisor has been alerted")
    expect(chat.locator(".internal-notes li.help")).to_contain_text("May I refund both charges?")

    # The supervisor's live page shows the flag.
    admin = browser.new_context(base_url=server, **DESKTOP).new_page()
    admin.set_default_timeout(15_000)
    admin.goto("/admin/login/?next=/admin/marketplace/conversation/live/")
    admin.get_by_label("Username").fill("sam")
    admin.get_by_label("Password").fill(PASSWORD)
    admin.get_by_role("button", name="Log in").click()
    flag = admin.locator("tr.help-request", has_text="May I refund both charges?")
    expect(flag).to_be_visible()
    expect(flag).to_contain_text("maria")
    screenshot(admin, "supervision-live-help-flag")

    # The supervisor whispers; the phone shows it at once, among the internal notes.
    flag.get_by_role("link", name="Supervise: whisper, join or take over").click()
    expect(admin.get_by_text("Second charge is from the app store")).to_be_visible()  # the agent's note
    admin.get_by_label("Text").fill("Yes, refund both; the app store one is ours too")
    admin.get_by_role("button", name="Whisper to the agent").click()
    expect(admin.get_by_text("Whispered to the agent.")).to_be_visible()
    whisper = chat.locator(".internal-notes li.whisper")
    expect(whisper).to_contain_text("Yes, refund both")
    expect(whisper).to_contain_text("Sam")
    expect(chat.locator(".live li", has_text="Yes, refund both")).to_have_count(0)  # not in the chat
    screenshot(phone, "supervision-phone-notes")

    # The flag is down.
    admin.goto("/admin/marketplace/conversation/live/")
    expect(admin.get_by_text("Nobody is asking for help.")).to_be_visible()

    # The supervisor takes it over, as agent: it leaves the phone.
    admin.goto(f"/admin/marketplace/conversation/live/{created['id']}/supervise/")
    expect(admin.get_by_label("Give it to")).to_have_value(sam.pk)  # "Me, as agent sam" comes first
    screenshot(admin, "supervision-admin-page")
    admin.get_by_role("button", name="Take over").click()
    expect(admin.get_by_text("Taken over.")).to_be_visible()
    expect(chat).to_have_count(0)
    expect(phone.locator("#no-chats")).to_be_visible()
    expect(phone.get_by_text("Given to another agent by an operator")).to_be_visible()
    assert Conversation.objects.get(pk=created["id"]).assigned_agent_id == sam.pk

    kinds = list(
        ConversationEvent.objects.filter(conversation_id=created["id"], actor="admin:sam").values_list(
            "kind", flat=True
        )
    )
    assert "supervisor_whisper" in kinds and "supervisor_take_over" in kinds
    assert HelpRequest.objects.get(conversation_id=created["id"]).answer == "whisper"
    payloads = " ".join(str(p) for p in CallbackEvent.objects.values_list("payload", flat=True))
    assert "refund both" not in payloads and "app store" not in payloads
    admin.context.close()
