"""Queue position and wait estimate: honest when nobody is online, from handle times otherwise."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace import selectors, services
from marketplace.models import Conversation

pytestmark = pytest.mark.django_db


def escalate(integration, external_id: str, **fields) -> Conversation:
    conversation, _ = services.conversation_escalate(
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


def test_handle_time_comes_from_recent_resolutions(integration, make_agent, settings):
    settings.DEFAULT_HANDLE_SECONDS = 999
    now = timezone.now()
    for n, minutes in enumerate([2, 4]):
        done = escalate(integration, f"done{n}")
        # given: history of resolved conversations that took 2 and 4 minutes
        Conversation.objects.filter(pk=done.pk).update(
            status="resolved",
            assigned_at=now - timedelta(minutes=minutes),
            resolved_at=now,
            assigned_agent=make_agent(online=False),
        )
    assert selectors.handle_seconds() == pytest.approx(180)


def test_position_follows_priority_head_start_then_age(integration, settings):
    settings.QUEUE_PRIORITY_HEAD_START_SECONDS = {"low": 0, "normal": 60, "high": 300, "urgent": 900}
    low = escalate(integration, "low", priority="low")
    urgent = escalate(integration, "urgent", priority="urgent")
    # An old low-priority conversation beats a new urgent one once it has waited longer than the head start.
    Conversation.objects.filter(pk=low.pk).update(queue_key=timezone.now() - timedelta(seconds=1000))
    low.refresh_from_db()
    assert selectors.queue_position(low) == 1
    assert selectors.queue_position(urgent) == 2
