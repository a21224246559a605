"""Two parties at once, on PostgreSQL: each dispatch transition has exactly one outcome."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db.models import Count
from django.utils import timezone

from dispatch.models import Offer
from dispatch.services import conversations, escalations, matching, presence
from dispatch.services import errors as dispatch_errors
from dispatch.services import offers as dispatch_offers
from marketplace import services
from marketplace.models import Agent, Conversation

from ..marketplace.test_races import together

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def offered(escalate, agent, recorded_jobs) -> tuple[Conversation, Offer]:
    conversation = escalate()
    offer = dispatch_offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)
    recorded_jobs.clear()
    return conversation, offer


def test_accept_racing_the_expiry_has_one_outcome(escalate, make_agent, recorded_jobs):
    outcomes = set()
    for _ in range(8):
        agent = make_agent()
        conversation, offer = offered(escalate, agent, recorded_jobs)
        deadline = timezone.now() + timedelta(milliseconds=30)
        Offer.objects.filter(pk=offer.pk).update(expires_at=deadline)
        time.sleep(max((deadline - timezone.now()).total_seconds(), 0))

        accept, expire = together(
            lambda o=offer, a=agent: dispatch_offers.offer_accept(offer_id=o.pk, agent=a),
            lambda o=offer: dispatch_offers.offer_expire(offer_id=o.pk),
        )

        offer.refresh_from_db()
        conversation.refresh_from_db()
        agent.refresh_from_db()
        if isinstance(accept, Exception):
            assert isinstance(accept, dispatch_errors.OfferNotOpen)
            assert (offer.state, conversation.status, agent.active_count) == ("expired", "queued", 0)
        else:
            assert expire is False
            assert (offer.state, conversation.status, agent.active_count) == ("accepted", "assigned", 1)
        outcomes.add(offer.state)
    assert outcomes <= {"accepted", "expired"}


def test_decline_racing_the_expiry_counts_once(escalate, make_agent, recorded_jobs):
    for _ in range(8):
        agent = make_agent()
        conversation, offer = offered(escalate, agent, recorded_jobs)
        Offer.objects.filter(pk=offer.pk).update(expires_at=timezone.now())

        together(
            lambda o=offer, a=agent: dispatch_offers.offer_decline(offer_id=o.pk, agent=a, reason="no"),
            lambda o=offer: dispatch_offers.offer_expire(offer_id=o.pk),
        )

        agent.refresh_from_db()
        conversation.refresh_from_db()
        assert agent.offers_declined + agent.offers_missed == 1
        assert conversation.status == "queued"
        assert conversation.events.filter(kind="status.queued").count() == 2  # escalated, then back once


def test_accept_racing_a_reassignment_into_the_agents_last_slot(escalate, make_agent, recorded_jobs):
    for _ in range(8):
        agent = make_agent(capacity=1)
        _, offer = offered(escalate, agent, recorded_jobs)
        other = escalate()

        accept, reassign = together(
            lambda o=offer, a=agent: dispatch_offers.offer_accept(offer_id=o.pk, agent=a),
            lambda c=other, a=agent: conversations.conversation_reassign(
                conversation_id=c.pk, agent_id=a.pk, actor="admin"
            ),
        )

        agent.refresh_from_db()
        assert agent.active_count == 1
        assert Conversation.objects.filter(assigned_agent=agent, status="assigned").count() == 1
        assert isinstance(accept, Exception) != isinstance(reassign, Exception)
        offer.refresh_from_db()
        assert offer.state in {"accepted", "revoked"}


def test_two_dispatchers_never_give_one_agent_two_offers(escalate, make_agent, recorded_jobs, settings):
    # 16 conversations pile up behind one agent online at a time: past the admission SLA, which is not
    # what this test is about.
    settings.ADMISSION_CONTROL = False
    for _ in range(8):
        agent = make_agent(capacity=3)
        first, second = escalate(), escalate()
        recorded_jobs.clear()

        together(
            lambda c=first: matching.conversation_dispatch(conversation_id=c.pk),
            lambda c=second: matching.conversation_dispatch(conversation_id=c.pk),
            lambda a=agent: matching.agent_dispatch(agent_id=a.pk),
        )

        assert Offer.objects.filter(agent=agent, state="pending").count() == 1
        Offer.objects.filter(agent=agent, state="pending").update(state="revoked")
        Agent.objects.filter(pk=agent.pk).update(status="offline")


def test_resolve_racing_a_cancel_closes_once_and_frees_the_slot_once(escalate, make_agent, recorded_jobs):
    for _ in range(8):
        agent = make_agent()
        conversation, offer = offered(escalate, agent, recorded_jobs)
        dispatch_offers.offer_accept(offer_id=offer.pk, agent=agent)

        resolve, cancel = together(
            lambda c=conversation, a=agent: conversations.conversation_resolve(
                conversation_id=c.pk, agent=a, outcome="resolved"
            ),
            lambda c=conversation: escalations.conversation_cancel(conversation_id=c.pk, actor="bot"),
        )

        conversation.refresh_from_db()
        agent.refresh_from_db()
        assert conversation.status in {"resolved", "cancelled"}
        assert agent.active_count == 0
        closing = conversation.events.filter(kind__in=["status.resolved", "status.cancelled"]).count()
        assert closing == 1


def test_a_reconnect_racing_the_end_of_grace_leaves_a_consistent_agent(escalate, make_agent, recorded_jobs, settings):
    settings.PRESENCE_GRACE_SECONDS = 0
    for n in range(8):
        agent = make_agent()
        conversation, offer = offered(escalate, agent, recorded_jobs)
        dispatch_offers.offer_accept(offer_id=offer.pk, agent=agent)
        presence.connection_open(agent_id=agent.pk, channel_name=f"old-{n}", server_id="s")
        presence.connection_close(channel_name=f"old-{n}")

        together(
            lambda a=agent: presence.presence_release_if_gone(agent_id=a.pk),
            lambda a=agent, n=n: presence.connection_open(agent_id=a.pk, channel_name=f"new-{n}", server_id="s"),
        )

        agent.refresh_from_db()
        conversation.refresh_from_db()
        if agent.status == "offline":  # released first: the work moved on
            assert conversation.status == "queued" and agent.active_count == 0
        else:  # back in time: everything kept
            assert conversation.status == "assigned" and agent.active_count == 1


def test_many_agents_and_conversations_at_once_never_assign_twice(integration, make_agent, settings):
    """Background dispatch, agents accepting as fast as offers come: no double assignment, no over-capacity."""
    settings.OFFER_TIMEOUT_SECONDS = 5
    agents = [make_agent(capacity=2) for _ in range(6)]
    for n in range(30):
        escalations.conversation_escalate(
            integration=integration, data=services.EscalationInput(external_id=f"bulk-{n}")
        )

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and Conversation.objects.filter(status__in=["queued", "offered"]).count() > 18:
        pending = list(Offer.objects.filter(state="pending").select_related("agent"))
        together(
            *[lambda o=o: dispatch_offers.offer_accept(offer_id=o.pk, agent=o.agent) for o in pending] or [lambda: None]
        )
        time.sleep(0.05)

    assigned = Conversation.objects.filter(status="assigned")
    state = list(Agent.objects.values_list("status", "active_count", "offers_received", "offers_missed"))
    offers = list(Offer.objects.values_list("state", "reason"))
    assert assigned.count() == 12, (state, offers)  # 6 agents x capacity 2
    assert not Offer.objects.filter(state="accepted").values("conversation").annotate(n=Count("id")).filter(n__gt=1)
    for agent in Agent.objects.filter(pk__in=[a.pk for a in agents]):
        assert agent.active_count == assigned.filter(assigned_agent=agent).count() <= agent.capacity
