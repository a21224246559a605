"""Transfers (conversation.transfer): to a named agent or to a queue, with a note, keeping the
conversation's place in line; fair pay to both agents; bad input refused with nothing lost.

Background jobs are recorded and run by hand (tests/conftest.py `recorded_jobs`).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from dispatch import payloads, selectors
from dispatch.models import Assignment, ConversationTransfer, Offer
from dispatch.services import conversations, escalations, matching, offers, transfers
from dispatch.services import errors as dispatch_errors
from marketplace.models import Agent, CallbackEvent, Conversation, ConversationEvent
from payouts.models import Earning, Journal, PayPolicy

pytestmark = pytest.mark.django_db(transaction=True)

COUNTERS = (
    "offers_received",
    "offers_accepted",
    "offers_declined",
    "offers_missed",
    "consecutive_misses",
    "resolved_count",
    "unresolved_count",
    "rating_count",
    "rating_sum",
)


def held_by(escalate, agent, recorded_jobs, **fields) -> Conversation:
    """Given: a conversation the agent has accepted."""
    conversation = escalate(**fields)
    offer = offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)
    offers.offer_accept(offer_id=offer.pk, agent=agent)
    recorded_jobs.clear()
    conversation.refresh_from_db()
    return conversation


def write(conversation, agent, text="On it") -> None:
    conversations.conversation_add_agent_message(
        conversation_id=conversation.pk, agent=agent, text=text, client_id=f"c-{text}"
    )


def figures(agent) -> tuple[int, ...]:
    agent.refresh_from_db()
    return tuple(getattr(agent, name) for name in COUNTERS)


def callback_types(conversation) -> list[str]:
    return list(CallbackEvent.objects.filter(conversation=conversation).order_by("seq").values_list("type", flat=True))


def pending_offer(conversation) -> Offer:
    return Offer.objects.select_related("transfer").get(conversation=conversation, state="pending")


def test_a_transfer_to_a_named_agent_offers_it_to_that_agent_with_the_note_and_pays_both(
    escalate, make_agent, recorded_jobs
):
    first = make_agent(username="ann")
    conversation = held_by(escalate, first, recorded_jobs, summary="Refund question")
    write(conversation, first)
    second = make_agent(username="bob")
    queue_key = conversation.queue_key
    before = figures(first)

    transfer = transfers.conversation_transfer(
        conversation_id=conversation.pk, agent=first, to_agent="bob", note="Customer wants a refund of order 7"
    )

    # Offered to bob alone, with the note; ann keeps the conversation and her slot until bob accepts.
    offer = pending_offer(conversation)
    assert offer.agent == second and offer.transfer == transfer
    payload = payloads.offer_payload(offer)
    assert payload["transfer_note"] == "Customer wants a refund of order 7"
    assert payload["transfer"]["from"] == {"display_name": "ann"}
    assert payload["pay"]["amount"] == offer.pay_amount > 0
    quote = Assignment.objects.get(conversation=conversation, agent=first).pay_amount
    assert payload["transfer"]["handling_share"] == {"amount": quote * 20 // 100, "currency": "usd"}
    conversation.refresh_from_db()
    first.refresh_from_db()
    assert (conversation.status, conversation.assigned_agent_id, first.active_count) == ("assigned", first.pk, 1)
    assert "dispatch_conversation" not in recorded_jobs.names()  # nobody else is offered it

    offers.offer_accept(offer_id=offer.pk, agent=second)

    conversation.refresh_from_db()
    first.refresh_from_db()
    second.refresh_from_db()
    assert (conversation.status, conversation.assigned_agent_id) == ("assigned", second.pk)
    assert conversation.queue_key == queue_key  # its age is kept
    assert (first.active_count, second.active_count) == (0, 1)
    ended = Assignment.objects.get(conversation=conversation, agent=first)
    assert ended.end_reason == "transferred" and ended.ended_at is not None
    transfer.refresh_from_db()
    assert (transfer.state, transfer.accepted_by_id) == ("completed", second.pk)
    # Both shown in the log and to the bot, in order.
    logged = ConversationEvent.objects.get(conversation=conversation, kind="transferred")
    assert logged.data["to"] == {"agent": "bob"} and logged.data["note"] == "Customer wants a refund of order 7"
    assert callback_types(conversation)[-2:] == ["conversation.transferred", "conversation.assigned"]
    told = CallbackEvent.objects.get(conversation=conversation, type="conversation.transferred").payload["data"]
    assert told == {"from_agent": {"display_name": "ann"}, "to": {"agent": {"display_name": "bob"}}}
    # Pay: ann's handling share now, exactly once; bob's full quote when he resolves.
    share = Earning.objects.get(agent=first)
    assert (share.kind, share.amount, share.assignment_id) == ("handling_share", quote * 20 // 100, ended.pk)
    assert Journal.objects.filter(earning=share).count() == 1
    conversations.conversation_resolve(conversation_id=conversation.pk, agent=second, outcome="resolved")
    resolution = Earning.objects.get(agent=second)
    assert (resolution.kind, resolution.amount) == ("resolution", offer.pay_amount)
    # Ranking does not punish a transfer: ann's figures did not move.
    assert figures(first) == before


def test_the_transfer_note_is_an_internal_note_the_next_agent_gets_with_the_conversation(
    escalate, make_agent, recorded_jobs
):
    first = make_agent(username="ann")
    conversation = held_by(escalate, first, recorded_jobs)
    second = make_agent(username="bob")

    transfers.conversation_transfer(conversation_id=conversation.pk, agent=first, to_agent="bob", note="Order 7")
    offers.offer_accept(offer_id=pending_offer(conversation).pk, agent=second)

    # then: bob gets it among the conversation's notes, as a transfer note by ann; the bot never does
    payload = payloads.conversation_payload(Conversation.objects.get(pk=conversation.pk))
    assert [(n["kind"], n["text"], n["author"]["display_name"]) for n in payload["notes"]] == [
        ("transfer", "Order 7", "ann")
    ]
    told = CallbackEvent.objects.filter(conversation=conversation).values_list("payload", flat=True)
    assert not any("Order 7" in str(body) for body in told)


def test_a_declined_named_transfer_falls_back_to_the_queue_keeping_its_age(escalate, make_agent, recorded_jobs):
    first = make_agent(username="ann")
    older = held_by(escalate, first, recorded_jobs, language="en")
    waiting = escalate(language="en")  # arrived later, waits in line (ann is full, nobody else is online yet)
    second = make_agent(username="bob")
    before = figures(first)
    transfers.conversation_transfer(conversation_id=older.pk, agent=first, to_agent="bob", note="vip")
    offer = pending_offer(older)

    offers.offer_decline(offer_id=offer.pk, agent=second, reason="busy")

    older.refresh_from_db()
    first.refresh_from_db()
    assert (older.status, older.assigned_agent_id, first.active_count) == ("queued", None, 0)
    transfer = ConversationTransfer.objects.get(conversation=older)
    assert (transfer.state, transfer.fallback_reason) == ("queued", "declined")
    logged = ConversationEvent.objects.get(conversation=older, kind="transferred")
    assert logged.data["fallback"] == {"agent": "bob", "reason": "declined"}
    assert logged.data["to"] == {"queue": {"language": "en", "skills": []}}

    # The next free agent gets the older (transferred) conversation first, with the note; never ann or bob.
    assert figures(first) == before  # the transfer and its fallback count against nobody but bob's own answer
    third = make_agent(username="cat")
    assert selectors.conversations_for(third)[0] == older.pk
    assert first.pk not in selectors.ranked_candidates(older) and second.pk not in selectors.ranked_candidates(older)
    recorded_jobs.run()
    offer = pending_offer(older)
    assert offer.agent == third
    assert payloads.offer_payload(offer)["transfer_note"] == "vip"
    assert pending_offer(waiting).agent_id in (first.pk, second.pk)  # ann is free again


def test_a_missed_named_transfer_falls_back_to_the_queue(escalate, make_agent, recorded_jobs):
    first = make_agent(username="ann")
    conversation = held_by(escalate, first, recorded_jobs)
    second = make_agent(username="bob")
    transfers.conversation_transfer(conversation_id=conversation.pk, agent=first, to_agent="bob")
    offer = pending_offer(conversation)
    Offer.objects.filter(pk=offer.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert offers.offer_expire(offer_id=offer.pk) is True

    conversation.refresh_from_db()
    assert conversation.status == "queued"
    assert ConversationTransfer.objects.get(conversation=conversation).fallback_reason == "expired"
    second.refresh_from_db()
    assert second.offers_missed == 1  # the named agent's own miss counts as any miss


def test_a_named_agent_going_away_falls_back_to_the_queue(escalate, make_agent, recorded_jobs):
    first = make_agent(username="ann")
    conversation = held_by(escalate, first, recorded_jobs)
    second = make_agent(username="bob")
    transfers.conversation_transfer(conversation_id=conversation.pk, agent=first, to_agent="bob")

    from dispatch.services import presence

    presence.agent_set_status(agent_id=second.pk, status="away", actor="agent:x")

    conversation.refresh_from_db()
    assert conversation.status == "queued"
    assert ConversationTransfer.objects.get(conversation=conversation).fallback_reason == "withdrawn"


def test_a_queue_transfer_releases_the_first_agent_at_once_and_routes_by_language_and_skills(
    escalate, make_agent, recorded_jobs
):
    first = make_agent(username="ann", languages=("en",), skills=("billing",))
    conversation = held_by(escalate, first, recorded_jobs, language="en", topic="billing")
    write(conversation, first)
    queue_key = conversation.queue_key

    transfers.conversation_transfer(
        conversation_id=conversation.pk, agent=first, language="de", skills=["Refunds", "billing"], note="speaks German"
    )

    conversation.refresh_from_db()
    first.refresh_from_db()
    assert (conversation.status, conversation.queue_key, first.active_count) == ("queued", queue_key, 0)
    assert "conversation.transferred" in callback_types(conversation)
    assert Earning.objects.filter(agent=first).count() == 0  # earned when another agent accepts

    english = make_agent(languages=("en",), skills=("billing", "refunds"))
    no_skill = make_agent(languages=("de",), skills=("billing",))
    assert selectors.ranked_candidates(conversation) == []
    assert conversation.pk not in selectors.conversations_for(english)
    assert conversation.pk not in selectors.conversations_for(no_skill)
    fits = make_agent(languages=("de", "en"), skills=("billing", "refunds"))
    assert selectors.ranked_candidates(conversation) == [fits.pk]
    assert selectors.conversations_for(fits) == [conversation.pk]
    Agent.objects.filter(pk__in=[english.pk, no_skill.pk]).update(status="offline")

    recorded_jobs.run()
    offer = pending_offer(conversation)
    assert offer.agent == fits and payloads.offer_payload(offer)["transfer_note"] == "speaks German"
    offers.offer_accept(offer_id=offer.pk, agent=fits)

    share = Earning.objects.get(agent=first, kind="handling_share")
    assert share.amount == Assignment.objects.get(agent=first).pay_amount * 20 // 100
    assert ConversationTransfer.objects.get(conversation=conversation).state == "completed"


def test_skills_of_a_queue_transfer_widen_after_a_while(escalate, make_agent, recorded_jobs, settings, clock):
    settings.SKILL_WIDEN_AFTER_SECONDS = 60
    first = make_agent(username="ann")
    conversation = held_by(escalate, first, recorded_jobs)
    transfers.conversation_transfer(conversation_id=conversation.pk, agent=first, skills=["legal"])
    other = make_agent()
    assert selectors.ranked_candidates(conversation) == []
    clock.advance(61)
    assert selectors.ranked_candidates(conversation) == [other.pk]


def test_no_handling_share_without_a_message_or_with_the_share_turned_off(escalate, make_agent, recorded_jobs):
    first = make_agent(username="ann")
    conversation = held_by(escalate, first, recorded_jobs)
    second = make_agent(username="bob")
    transfers.conversation_transfer(conversation_id=conversation.pk, agent=first, to_agent="bob")
    offers.offer_accept(offer_id=pending_offer(conversation).pk, agent=second)
    assert not Earning.objects.filter(agent=first).exists()  # no message sent: no real work done

    PayPolicy.objects.create(transfer_share_percent=0)
    write(conversation, second)
    third = make_agent(username="cat")
    transfers.conversation_transfer(conversation_id=conversation.pk, agent=second, to_agent="cat")
    offers.offer_accept(offer_id=pending_offer(conversation).pk, agent=third)
    assert not Earning.objects.filter(agent=second).exists()


def test_the_first_agent_resolving_withdraws_its_pending_transfer(escalate, make_agent, recorded_jobs):
    first = make_agent(username="ann")
    conversation = held_by(escalate, first, recorded_jobs)
    second = make_agent(username="bob")
    transfers.conversation_transfer(conversation_id=conversation.pk, agent=first, to_agent="bob")
    offer = pending_offer(conversation)

    conversations.conversation_resolve(conversation_id=conversation.pk, agent=first, outcome="resolved")

    offer.refresh_from_db()
    assert offer.state == "revoked"
    assert ConversationTransfer.objects.get(conversation=conversation).state == "cancelled"
    with pytest.raises(dispatch_errors.OfferNotOpen):
        offers.offer_accept(offer_id=offer.pk, agent=second)
    assert Earning.objects.get(agent=first).kind == "resolution"


def test_the_customer_leaving_during_a_transfer_withdraws_it_and_frees_the_first_agent(
    escalate, make_agent, recorded_jobs
):
    first = make_agent(username="ann")
    conversation = held_by(escalate, first, recorded_jobs)
    second = make_agent(username="bob")
    transfers.conversation_transfer(conversation_id=conversation.pk, agent=first, to_agent="bob")
    offer = pending_offer(conversation)

    escalations.conversation_cancel(conversation_id=conversation.pk, actor="bot:x")

    offer.refresh_from_db()
    first.refresh_from_db()
    assert (offer.state, first.active_count) == ("revoked", 0)
    assert ConversationTransfer.objects.get(conversation=conversation).state == "cancelled"
    with pytest.raises(dispatch_errors.OfferNotOpen):
        offers.offer_accept(offer_id=offer.pk, agent=second)


def test_a_queue_transfer_cancelled_before_anyone_took_it_pays_no_share(escalate, make_agent, recorded_jobs):
    first = make_agent(username="ann")
    conversation = held_by(escalate, first, recorded_jobs)
    write(conversation, first)
    transfers.conversation_transfer(conversation_id=conversation.pk, agent=first, language="sv")
    escalations.conversation_cancel(conversation_id=conversation.pk, actor="bot:x")
    assert ConversationTransfer.objects.get(conversation=conversation).state == "cancelled"
    assert not Earning.objects.exists()


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("unknown", dispatch_errors.UnknownAgent),
        ("offline", dispatch_errors.AgentOffline),
        ("suspended", dispatch_errors.AgentOffline),
        ("self", dispatch_errors.TransferToSelf),
        ("busy", dispatch_errors.AgentUnavailable),
        ("not_mine", dispatch_errors.NotAssignedToAgent),
        ("queued", dispatch_errors.NotAssignedToAgent),
        ("pending", dispatch_errors.TransferPending),
    ],
)
def test_bad_transfers_are_refused_and_nothing_changes(escalate, make_agent, recorded_jobs, case, error):
    first = make_agent(username="ann")
    conversation = held_by(escalate, first, recorded_jobs)
    make_agent(username="off", online=False)
    suspended = make_agent(username="sus")
    Agent.objects.filter(pk=suspended.pk).update(approval="suspended")
    busy = make_agent(username="busy")
    Agent.objects.filter(pk=busy.pk).update(active_count=1)
    target, who, conversation_id = {
        "unknown": ("nobody", first, conversation.pk),
        "offline": ("off", first, conversation.pk),
        "suspended": ("sus", first, conversation.pk),
        "self": ("ann", first, conversation.pk),
        "busy": ("busy", first, conversation.pk),
        "not_mine": ("off", make_agent(username="eve"), conversation.pk),
        "queued": ("off", first, escalate().pk),
        "pending": ("bob", first, conversation.pk),
    }[case]
    if case == "pending":
        make_agent(username="bob")
        transfers.conversation_transfer(conversation_id=conversation.pk, agent=first, to_agent="bob")
    transfers_before = ConversationTransfer.objects.count()
    offers_before = list(Offer.objects.order_by("pk").values_list("pk", "state"))

    with pytest.raises(error):
        transfers.conversation_transfer(conversation_id=conversation_id, agent=who, to_agent=target, note="x")

    conversation.refresh_from_db()
    first.refresh_from_db()
    assert (conversation.status, conversation.assigned_agent_id, first.active_count) == ("assigned", first.pk, 1)
    assert ConversationTransfer.objects.count() == transfers_before
    assert list(Offer.objects.order_by("pk").values_list("pk", "state")) == offers_before


def test_a_transferred_conversation_keeps_its_place_ahead_of_later_arrivals(
    escalate, make_agent, recorded_jobs, settings
):
    settings.ADMISSION_CONTROL = False  # a queue behind one agent on purpose
    first = make_agent(username="ann")
    transferred = held_by(escalate, first, recorded_jobs)
    later = [escalate() for _ in range(3)]
    transfers.conversation_transfer(conversation_id=transferred.pk, agent=first, language="en")
    recorded_jobs.clear()
    other = make_agent()
    assert matching.agent_dispatch(agent_id=other.pk).conversation_id == transferred.pk
    assert all(Conversation.objects.get(pk=c.pk).status == "queued" for c in later)


def test_transfers_show_on_the_conversations_admin_page_and_in_their_own_list(
    admin_client, escalate, make_agent, recorded_jobs
):
    from django.contrib.admin.utils import quote
    from django.urls import reverse

    first = make_agent(username="ann")
    conversation = held_by(escalate, first, recorded_jobs)
    make_agent(username="bob")
    transfers.conversation_transfer(conversation_id=conversation.pk, agent=first, to_agent="bob", note="Needs a refund")
    offers.offer_decline(offer_id=pending_offer(conversation).pk, agent=Agent.objects.get(user__username="bob"))

    page = admin_client.get(reverse("admin:marketplace_conversation_change", args=[quote(conversation.pk)]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "transfer.requested" in text and "transferred" in text and "Needs a refund" in text
    listing = admin_client.get(reverse("admin:dispatch_conversationtransfer_changelist"))
    assert listing.status_code == 200 and "bob, then queue" in listing.content.decode()
