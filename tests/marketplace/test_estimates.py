"""Queue position and wait estimate: honest when nobody is online, from handle times otherwise."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from dispatch.services import escalations
from marketplace import selectors, services
from marketplace.models import Conversation

pytestmark = pytest.mark.django_db


def escalate(integration, external_id: str, **fields) -> Conversation:
    conversation, _ = escalations.conversation_escalate(
        integration=integration, data=services.EscalationInput(external_id=external_id, **fields)
    )
    return conversation


def test_nobody_online_means_no_number(integration, make_agent):
    make_agent(languages=("sv",))  # online, but speaks another language
    make_agent(online=False)
    estimate = selectors.wait_estimate(escalate(integration, "a", language="en"))
    assert (estimate.queue_position, estimate.seconds, estimate.basis) == (1, None, "no_agents_online")


def test_free_capacity_means_the_answer_time(integration, make_agent, settings):
    settings.DEFAULT_ANSWER_SECONDS = 7
    make_agent(capacity=2)
    first = escalate(integration, "a", language="en")
    second = escalate(integration, "b", language="en")
    assert selectors.wait_estimate(first).seconds == 7
    assert selectors.wait_estimate(second).basis == "free_capacity"


def test_beyond_free_capacity_it_waits_for_handle_time_over_slots(integration, make_agent, settings):
    settings.DEFAULT_ANSWER_SECONDS = 10
    settings.DEFAULT_HANDLE_SECONDS = 300
    make_agent(capacity=2)  # 2 slots, both free
    conversations = [escalate(integration, f"c{n}", language="en") for n in range(5)]
    estimate = selectors.wait_estimate(conversations[4])  # position 5: 3 ahead of the free slots
    assert estimate.basis == "handle_time"
    assert estimate.seconds == 10 + 3 * 300 // 2


def handled(integration, agent, clock, external_id: str, *, answer: float, handle: float, outcome="resolved"):
    """A conversation offered to the agent, accepted after `answer` s and closed after `handle` s more."""
    from dispatch.services import conversations as dispatch_conversations
    from dispatch.services import offers

    conversation = escalate(integration, external_id)
    offer = offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)
    clock.advance(answer)
    offers.offer_accept(offer_id=offer.pk, agent=agent)
    clock.advance(handle)
    dispatch_conversations.conversation_resolve(conversation_id=conversation.pk, agent=agent, outcome=outcome)
    cache.clear()  # the means are cached for 10 s
    return conversation


def test_handle_and_answer_times_come_from_each_offer_and_assignment(integration, make_agent, clock, settings):
    settings.DEFAULT_HANDLE_SECONDS = 999
    settings.DEFAULT_ANSWER_SECONDS = 99
    agent = make_agent()
    handled(integration, agent, clock, "a", answer=6, handle=120)
    handled(integration, agent, clock, "b", answer=10, handle=240, outcome="unresolved")
    assert selectors.handle_seconds() == pytest.approx(180, abs=1)
    assert selectors.answer_seconds() == pytest.approx(8, abs=1)


def test_a_spell_cut_short_by_a_requeue_is_not_a_handle_time(integration, make_agent, clock, settings):
    from dispatch.services import conversations as dispatch_conversations
    from dispatch.services import offers

    settings.DEFAULT_HANDLE_SECONDS = 999
    agent = make_agent()
    handled(integration, agent, clock, "a", answer=5, handle=100)
    conversation = escalate(integration, "b")
    offer = offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)
    offers.offer_accept(offer_id=offer.pk, agent=agent)
    clock.advance(3000)
    dispatch_conversations.conversation_requeue(conversation_id=conversation.pk, actor="admin:root", reason="requeued")
    cache.clear()
    assert selectors.handle_seconds() == pytest.approx(100, abs=1)


def test_an_offer_again_after_the_assignment_leaves_the_answer_time_alone(integration, make_agent, clock, settings):
    """The conversation's own offered_at/assigned_at are overwritten by later events; the offers are not."""
    from dispatch.services import conversations as dispatch_conversations
    from dispatch.services import escalations, offers

    first, second = make_agent(), make_agent()
    conversation = escalate(integration, "a")
    offer = offers.offer_create(conversation_id=conversation.pk, agent_id=first.pk)
    clock.advance(4)
    offers.offer_accept(offer_id=offer.pk, agent=first)
    clock.advance(600)
    dispatch_conversations.conversation_requeue(
        conversation_id=conversation.pk, actor="system", reason="agent_disconnected"
    )
    offers.offer_create(conversation_id=conversation.pk, agent_id=second.pk)  # offered after it was assigned
    escalations.conversation_cancel(conversation_id=conversation.pk, actor="bot")
    cache.clear()
    assert selectors.answer_seconds() == pytest.approx(4, abs=1)
    assert selectors.wait_estimate(escalate(integration, "b")).seconds in (4, 5)  # rounded up


def test_history_from_a_clock_stepped_back_counts_as_zero_never_below(integration, make_agent, clock, settings):
    from dispatch.models import Offer

    agent = make_agent()
    handled(integration, agent, clock, "a", answer=2, handle=60)
    # given: the host's clock stepped back while an offer was open
    Offer.objects.filter(state="accepted").update(created_at=timezone.now() + timedelta(minutes=5))
    cache.clear()
    assert selectors.answer_seconds() == 0
    estimate = selectors.wait_estimate(escalate(integration, "b"))
    assert (estimate.seconds, estimate.basis) == (0, "free_capacity")


def test_position_follows_priority_head_start_then_age(integration, settings):
    settings.QUEUE_PRIORITY_HEAD_START_SECONDS = {"low": 0, "normal": 60, "high": 300, "urgent": 900}
    low = escalate(integration, "low", priority="low")
    urgent = escalate(integration, "urgent", priority="urgent")
    # An old low-priority conversation beats a new urgent one once it has waited longer than the head start.
    Conversation.objects.filter(pk=low.pk).update(queue_key=timezone.now() - timedelta(seconds=1000))
    low.refresh_from_db()
    assert selectors.queue_position(low) == 1
    assert selectors.queue_position(urgent) == 2


@pytest.mark.django_db(transaction=True)
def test_a_phone_offline_45s_then_a_cancel_keeps_the_next_escalation_working(
    bot, make_agent, recorded_jobs, clock, settings
):
    """Issue 11.1 as reported: one agent's phone loses its connection for 45 s (past the 30 s grace),
    its conversation is offered again after the reconnect, the customer leaves; the next escalation
    used to answer 500 (a negative wait estimate broke the check on notified_wait_seconds)."""
    from dispatch.models import Offer
    from dispatch.services import escalations, offers, presence

    settings.PRESENCE_GRACE_SECONDS = 30
    agent = make_agent()
    first = bot.escalate("first").json()
    recorded_jobs.run()
    offers.offer_accept(offer_id=Offer.objects.get(conversation_id=first["id"]).pk, agent=agent)
    presence.connection_open(agent_id=agent.pk, channel_name="phone-1", server_id="web-1")
    presence.connection_close(channel_name="phone-1")

    clock.advance(45)  # the phone is gone for 45 s
    presence.presence_sweep()  # grace over: offline, the conversation back at the front of the queue
    presence.connection_open(agent_id=agent.pk, channel_name="phone-2", server_id="web-1")
    presence.agent_set_status(agent_id=agent.pk, status="online", actor="agent")
    recorded_jobs.run()
    assert Conversation.objects.get(pk=first["id"]).status == "offered"  # offered again, after its assignment
    assert bot.post(f"/api/v1/escalations/{first['id']}/cancel").status_code == 200
    recorded_jobs.run()
    cache.clear()  # the estimates are cached for 10 s: the next request computes them afresh

    second = bot.escalate("second")
    assert second.status_code == 201, second.content
    assert second.json()["estimated_wait_seconds"] >= 0
    assert selectors.answer_seconds() >= 0
    escalations.queue_updates_push()  # the periodic job that failed every 5 s
