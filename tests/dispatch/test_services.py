"""The dispatcher's rules, step by step (background jobs recorded and run by hand)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from dispatch import payloads, selectors
from dispatch.models import AgentConnection, DispatchWeights, Offer, ServerHeartbeat
from dispatch.services import conversations as dispatch_conversations
from dispatch.services import errors as dispatch_errors
from dispatch.services import escalations, matching, offers, presence
from marketplace.models import Agent, CallbackEvent, Conversation

pytestmark = pytest.mark.django_db(transaction=True)


def refresh(*objs):
    for obj in objs:
        obj.refresh_from_db()


def offer_of(conversation) -> Offer:
    return Offer.objects.get(conversation=conversation, state="pending")


def test_a_new_escalation_is_offered_to_a_fitting_agent(escalate, make_agent, recorded_jobs):
    agent = make_agent(languages=("sv",), skills=("refunds",))
    conversation = escalate(language="sv", topic="refunds", summary="Charged twice")
    assert "dispatch_conversation" in recorded_jobs.names()

    recorded_jobs.run("dispatch_conversation")

    offer = offer_of(conversation)
    refresh(conversation)
    assert offer.agent == agent
    assert conversation.status == "offered"
    assert offer.pay_amount > 0 and offer.pay_currency == "usd"
    assert timedelta(seconds=19) < offer.expires_at - offer.created_at <= timedelta(seconds=21)
    assert ("expire_offer", (offer.pk,)) in [(t.name.rsplit(".")[-1], a) for t, a, _ in recorded_jobs.calls]


@pytest.mark.parametrize(
    ("agent_fields", "reason"),
    [
        ({"languages": ("en",)}, "wrong language"),
        ({"online": False}, "offline"),
        ({"skills": ("billing",)}, "no skill yet"),
    ],
)
def test_agents_who_do_not_fit_get_nothing(escalate, make_agent, recorded_jobs, agent_fields, reason):
    make_agent(**{"languages": ("sv",), "skills": ("refunds",), **agent_fields})
    conversation = escalate(language="sv", topic="refunds")
    recorded_jobs.run("dispatch_conversation")
    refresh(conversation)
    assert conversation.status == "queued", reason


def test_unapproved_and_full_agents_get_nothing(escalate, make_agent, recorded_jobs):
    pending = make_agent()
    Agent.objects.filter(pk=pending.pk).update(approval="pending")
    full = make_agent()
    Agent.objects.filter(pk=full.pk).update(active_count=1)  # capacity 1, busy
    conversation = escalate(language="en", topic="billing")
    recorded_jobs.run("dispatch_conversation")
    refresh(conversation)
    assert conversation.status == "queued"


def test_skills_widen_after_the_configured_wait(escalate, make_agent, recorded_jobs, settings):
    settings.SKILL_WIDEN_AFTER_SECONDS = 60
    generalist = make_agent(languages=("sv",), skills=("billing",))
    conversation = escalate(language="sv", topic="refunds")
    recorded_jobs.run()
    refresh(conversation)
    assert conversation.status == "queued"

    a_minute_ago = timezone.now() - timedelta(seconds=61)
    Conversation.objects.filter(pk=conversation.pk).update(created_at=a_minute_ago, queued_at=a_minute_ago)
    matching.dispatch_sweep()

    assert offer_of(conversation).agent == generalist


def test_one_open_offer_per_agent(escalate, make_agent, recorded_jobs):
    agent = make_agent(capacity=3)
    first, second = escalate(), escalate()
    recorded_jobs.run("dispatch_conversation")
    refresh(first, second)
    assert (first.status, second.status) == ("offered", "queued")
    assert Offer.objects.filter(agent=agent, state="pending").count() == 1


def test_accept_assigns_and_tells_the_agent_and_the_bot(escalate, make_agent, recorded_jobs):
    agent = make_agent()
    conversation = escalate(transcript=[{"role": "customer", "text": "help"}])
    recorded_jobs.run("dispatch_conversation")

    offers.offer_accept(offer_id=offer_of(conversation).pk, agent=agent)

    refresh(conversation, agent)
    assert conversation.status == "assigned" and conversation.assigned_agent == agent
    assert agent.active_count == 1 and agent.offers_accepted == 1
    assert CallbackEvent.objects.filter(conversation=conversation, type="conversation.assigned").exists()


def test_decline_passes_the_conversation_on_at_once(escalate, make_agent, recorded_jobs):
    first = make_agent()
    second = make_agent()
    Agent.objects.filter(pk=first.pk).update(idle_since=timezone.now() - timedelta(hours=1))  # first in line
    conversation = escalate()
    recorded_jobs.run("dispatch_conversation")
    offer = offer_of(conversation)
    assert offer.agent_id == first.pk

    offers.offer_decline(offer_id=offer.pk, agent=first, reason="not my area")
    recorded_jobs.run("dispatch_conversation")

    assert offer_of(conversation).agent_id == second.pk
    offer.refresh_from_db()
    assert (offer.state, offer.reason) == ("declined", "not my area")
    # The decliner is never offered the same conversation again.
    assert first.pk not in selectors.ranked_candidates(conversation)


def test_expiry_passes_it_on_and_repeated_misses_set_the_agent_away(escalate, make_agent, recorded_jobs, settings):
    settings.MISSES_BEFORE_AWAY = 2
    agent = make_agent(capacity=2)
    for _ in range(2):
        conversation = escalate()
        recorded_jobs.run("dispatch_conversation")
        offer = offer_of(conversation)
        Offer.objects.filter(pk=offer.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
        assert offers.offer_expire(offer_id=offer.pk) is True
        offer.refresh_from_db()
        assert offer.state == "expired"
        refresh(conversation)
        assert conversation.status == "queued"
        recorded_jobs.clear()

    agent.refresh_from_db()
    assert agent.status == "away"
    assert (agent.offers_missed, agent.consecutive_misses) == (2, 2)


def test_an_early_timer_does_not_expire_the_offer(escalate, make_agent, recorded_jobs):
    make_agent()
    conversation = escalate()
    recorded_jobs.run("dispatch_conversation")
    offer = offer_of(conversation)
    assert offers.offer_expire(offer_id=offer.pk) is False
    offer.refresh_from_db()
    assert offer.state == "pending"


def test_the_sweeper_expires_offers_whose_timer_was_lost(escalate, make_agent, recorded_jobs):
    make_agent()
    conversation = escalate()
    recorded_jobs.run("dispatch_conversation")
    recorded_jobs.clear()  # the expiry timer is lost
    Offer.objects.filter(conversation=conversation).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert offers.offers_sweep() == 1
    assert Offer.objects.get(conversation=conversation).state == "expired"


def test_queue_order_is_priority_then_age_and_capacity_goes_to_the_head(escalate, make_agent, recorded_jobs):
    normal = escalate(priority="normal")
    low = escalate(priority="low")
    urgent = escalate(priority="urgent")
    recorded_jobs.clear()
    agent = make_agent(online=False)

    presence.agent_set_status(agent_id=agent.pk, status="online", actor="test")
    recorded_jobs.run("dispatch_agent")

    assert offer_of(urgent).agent_id == agent.pk
    refresh(normal, low)
    assert (normal.status, low.status) == ("queued", "queued")


def test_resolving_frees_the_slot_and_offers_the_next_at_once(escalate, make_agent, recorded_jobs):
    agent = make_agent(capacity=1)
    first = escalate()
    waiting = escalate()
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=offer_of(first).pk, agent=agent)
    recorded_jobs.run("dispatch_conversation")
    refresh(waiting)
    assert waiting.status == "queued"  # no room

    dispatch_conversations.conversation_resolve(conversation_id=first.pk, agent=agent, outcome="resolved")
    recorded_jobs.run("dispatch_agent")

    assert offer_of(waiting).agent_id == agent.pk
    agent.refresh_from_db()
    assert (agent.active_count, agent.resolved_count) == (0, 1)


def test_the_resolve_itself_offers_the_freed_agent_the_next_conversation_with_no_job(
    escalate, make_agent, recorded_jobs
):
    """Issue 13.5: the hand-off is part of the resolve's transaction, sent on its commit."""
    agent = make_agent(capacity=1)
    first = escalate()
    waiting = escalate()
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=offer_of(first).pk, agent=agent)
    recorded_jobs.clear()

    dispatch_conversations.conversation_resolve(conversation_id=first.pk, agent=agent, outcome="resolved")

    assert offer_of(waiting).agent_id == agent.pk  # no job was run
    assert "dispatch_agent" not in recorded_jobs.names()  # and none is needed
    refresh(waiting)
    assert waiting.status == "offered"


def test_with_nothing_to_offer_the_resolve_leaves_the_agent_to_its_dispatch_job(escalate, make_agent, recorded_jobs):
    agent = make_agent(capacity=1)
    first = escalate()
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=offer_of(first).pk, agent=agent)
    recorded_jobs.clear()

    dispatch_conversations.conversation_resolve(conversation_id=first.pk, agent=agent, outcome="resolved")

    # a conversation that arrives while the resolve is open is seen by the job after its commit
    assert "dispatch_agent" in recorded_jobs.names()


def test_ranking_weighs_quality_not_just_idle_time(escalate, make_agent):
    long_idle_poor = make_agent()
    recent_excellent = make_agent()
    now = timezone.now()
    Agent.objects.filter(pk=long_idle_poor.pk).update(
        idle_since=now - timedelta(minutes=10), rating_count=40, rating_sum=80, resolved_count=20, unresolved_count=20
    )
    Agent.objects.filter(pk=recent_excellent.pk).update(
        idle_since=now - timedelta(minutes=2), rating_count=40, rating_sum=196, resolved_count=38, unresolved_count=2
    )
    conversation = escalate()
    assert selectors.ranked_candidates(conversation)[0] == recent_excellent.pk

    DispatchWeights.objects.create(fairness=1.0, quality=0.0, reliability=0.0)  # an admin puts fairness first
    assert selectors.ranked_candidates(conversation)[0] == long_idle_poor.pk


def test_the_database_computes_the_documented_score(escalate, make_agent):
    """The ranking runs in SQL (only the best few rows are fetched); its figures are DISPATCH.md's formula."""
    agent = make_agent()
    now = timezone.now()
    Agent.objects.filter(pk=agent.pk).update(
        idle_since=now - timedelta(seconds=100), rating_count=10, rating_sum=45, resolved_count=7,
        unresolved_count=3, offers_received=20, offers_accepted=15,
    )  # fmt: skip
    conversation = escalate(topic="billing")
    weights = DispatchWeights(fairness=0.5, quality=0.3, reliability=0.2, skill_bonus=1.0, idle_half_seconds=300)
    k = weights.prior_weight
    rating, resolution, acceptance = (45 + 4 * k) / (10 + k), (7 + 0.8 * k) / (10 + k), (15 + 0.9 * k) / (20 + k)
    expected = 0.5 * 100 / 400 + 0.3 * (0.7 * (rating - 1) / 4 + 0.3 * resolution) + 0.2 * acceptance + 1.0

    scored = Agent.objects.annotate(score=selectors.score_expression(conversation, weights, now)).get(pk=agent.pk)
    assert scored.score == pytest.approx(expected, rel=1e-6)  # SQLite: julianday, ms

    Agent.objects.filter(pk=agent.pk).update(active_count=1, skills=["refunds"])  # busy: no idle term; no skill
    scored = Agent.objects.annotate(score=selectors.score_expression(conversation, weights, now)).get(pk=agent.pk)
    assert scored.score == pytest.approx(expected - 0.5 * 100 / 400 - 1.0, rel=1e-6)


def test_going_away_withdraws_the_open_offer_and_passes_it_on(escalate, make_agent, recorded_jobs):
    agent = make_agent()
    other = make_agent()
    Agent.objects.filter(pk=agent.pk).update(idle_since=timezone.now() - timedelta(hours=1))
    conversation = escalate()
    recorded_jobs.run("dispatch_conversation")
    offer = offer_of(conversation)
    assert offer.agent_id == agent.pk

    presence.agent_set_status(agent_id=agent.pk, status="away", actor="test")
    recorded_jobs.run("dispatch_conversation")

    offer.refresh_from_db()
    assert offer.state == "revoked"
    assert offer_of(conversation).agent_id == other.pk


def test_only_approved_agents_go_online(make_agent):
    agent = make_agent(online=False)
    Agent.objects.filter(pk=agent.pk).update(approval="pending")
    with pytest.raises(dispatch_errors.NotApproved):
        presence.agent_set_status(agent_id=agent.pk, status="online", actor="test")


def test_disconnect_keeps_work_through_the_grace_period_then_requeues_at_the_front(
    escalate, make_agent, recorded_jobs, settings
):
    settings.PRESENCE_GRACE_SECONDS = 30
    agent = make_agent()
    older = escalate()
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=offer_of(older).pk, agent=agent)
    newer_waiting = escalate()
    presence.connection_open(agent_id=agent.pk, channel_name="c1", server_id="s1")
    presence.connection_close(channel_name="c1")

    assert presence.presence_release_if_gone(agent_id=agent.pk) is False  # within grace
    refresh(older)
    assert older.status == "assigned"

    Agent.objects.filter(pk=agent.pk).update(disconnected_at=timezone.now() - timedelta(seconds=31))
    assert presence.presence_release_if_gone(agent_id=agent.pk) is True

    refresh(older, agent, newer_waiting)
    assert (agent.status, agent.active_count) == ("offline", 0)
    assert older.status == "queued" and older.assigned_agent is None
    assert older.queue_key < newer_waiting.queue_key  # at the front
    told = CallbackEvent.objects.filter(conversation=older, type="conversation.queued").order_by("seq").last()
    assert told.payload["data"]["reason"] == "agent_disconnected"


def test_a_reconnect_within_grace_keeps_everything(escalate, make_agent, recorded_jobs):
    agent = make_agent()
    conversation = escalate()
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=offer_of(conversation).pk, agent=agent)
    presence.connection_open(agent_id=agent.pk, channel_name="c1", server_id="s1")
    presence.connection_close(channel_name="c1")
    presence.connection_open(agent_id=agent.pk, channel_name="c2", server_id="s2")
    Agent.objects.filter(pk=agent.pk).update(disconnected_at=None)

    recorded_jobs.run("release_if_gone")

    refresh(conversation, agent)
    assert conversation.status == "assigned" and agent.status == "online"


def test_a_dead_web_process_is_noticed_through_its_heartbeat(make_agent, recorded_jobs, settings):
    settings.SERVER_DEAD_AFTER_SECONDS = 20
    agent = make_agent()
    presence.connection_open(agent_id=agent.pk, channel_name="c1", server_id="dead-server")
    ServerHeartbeat.objects.create(server_id="dead-server", seen_at=timezone.now() - timedelta(seconds=30))

    assert presence.presence_sweep() == 1

    assert not AgentConnection.objects.exists()
    agent.refresh_from_db()
    assert agent.disconnected_at is not None  # the grace period has started


def test_admin_reassign_moves_the_conversation(escalate, make_agent, recorded_jobs):
    first = make_agent()
    conversation = escalate()
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=offer_of(conversation).pk, agent=first)
    second = make_agent()

    dispatch_conversations.conversation_reassign(
        conversation_id=conversation.pk, agent_id=second.pk, actor="admin:root"
    )

    refresh(conversation, first, second)
    assert conversation.assigned_agent == second
    assert (first.active_count, second.active_count) == (0, 1)


def test_admin_force_offline_requeues_the_agents_work(escalate, make_agent, recorded_jobs):
    agent = make_agent()
    conversation = escalate()
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=offer_of(conversation).pk, agent=agent)

    presence.agent_force_offline(agent_id=agent.pk, actor="admin:root")

    refresh(conversation, agent)
    assert agent.status == "offline"
    assert conversation.status == "queued"


def test_queue_updates_are_pushed_when_the_position_changes_and_throttled(escalate, recorded_jobs, settings):
    settings.QUEUE_UPDATE_MIN_SECONDS = 15
    first, second = escalate(), escalate()
    Conversation.objects.update(notified_at=timezone.now() - timedelta(seconds=60))
    assert escalations.queue_updates_push() == 0  # nothing changed

    escalations.conversation_cancel(conversation_id=first.pk, actor="bot")
    assert escalations.queue_updates_push() == 1
    second.refresh_from_db()
    assert second.notified_position == 1

    Conversation.objects.filter(pk=second.pk).update(notified_position=7)  # changed, but told just now
    assert escalations.queue_updates_push() == 0


def test_an_agent_with_room_left_is_offered_the_next_one_after_accepting(escalate, make_agent, recorded_jobs):
    agent = make_agent(capacity=2)
    first, second = escalate(), escalate()
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=offer_of(first).pk, agent=agent)

    recorded_jobs.run("dispatch_agent")

    assert offer_of(second).agent_id == agent.pk


def test_the_sweeper_repairs_a_lost_dispatch_but_leaves_fresh_ones_alone(escalate, make_agent, recorded_jobs, settings):
    settings.DISPATCH_SWEEP_MIN_WAIT_SECONDS = 2
    agent = make_agent()
    conversation = escalate()
    recorded_jobs.clear()  # its dispatch job is lost

    assert matching.dispatch_sweep() == 0  # too fresh: its own job may still be on its way

    Conversation.objects.filter(pk=conversation.pk).update(queued_at=timezone.now() - timedelta(seconds=3))
    assert matching.dispatch_sweep() == 1
    assert offer_of(conversation).agent_id == agent.pk


def test_an_agent_whose_offer_is_withdrawn_by_a_cancel_gets_other_work(escalate, make_agent, recorded_jobs):
    agent = make_agent()
    first, waiting = escalate(), escalate()
    recorded_jobs.run("dispatch_conversation")
    assert offer_of(first).agent_id == agent.pk

    escalations.conversation_cancel(conversation_id=first.pk, actor="bot")
    recorded_jobs.run("dispatch_agent")

    assert offer_of(waiting).agent_id == agent.pk


def test_hello_says_why_the_server_set_the_status_until_the_agent_picks_one(make_agent, recorded_jobs, settings):
    """Issue 11.11: an agent released after the grace period had no socket to hear `presence`; `hello` tells it."""
    settings.PRESENCE_GRACE_SECONDS = 30
    agent = make_agent()
    presence.connection_open(agent_id=agent.pk, channel_name="c1", server_id="s1")
    presence.connection_close(channel_name="c1")
    Agent.objects.filter(pk=agent.pk).update(disconnected_at=timezone.now() - timedelta(seconds=31))
    assert presence.presence_release_if_gone(agent_id=agent.pk) is True

    hello = payloads.hello_payload(agent.pk)
    assert (hello["status"], hello["status_reason"]) == ("offline", "disconnected")

    # The agent picks a status itself: no server reason any more.
    presence.agent_set_status(agent_id=agent.pk, status="away", actor=f"agent:{agent.pk}")
    assert payloads.hello_payload(agent.pk)["status_reason"] is None
    # An operator's force offline is remembered too.
    presence.agent_force_offline(agent_id=agent.pk, actor="admin:ops")
    assert payloads.hello_payload(agent.pk)["status_reason"] == "operator"


def vanished_with_work(escalate, make_agent, recorded_jobs, *, assigned: int, offered: bool) -> tuple:
    """An agent with `assigned` conversations (and an open offer when `offered`) whose phone is gone past grace."""
    agent = make_agent(capacity=assigned + int(offered))
    conversations = []
    for _ in range(assigned + int(offered)):
        conversation = escalate()
        offer = offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)
        if len(conversations) < assigned:
            offers.offer_accept(offer_id=offer.pk, agent=agent)
        conversations.append(conversation)
    recorded_jobs.clear()
    presence.connection_open(agent_id=agent.pk, channel_name=f"phone-{agent.pk}", server_id="web-1")
    presence.connection_close(channel_name=f"phone-{agent.pk}")
    Agent.objects.filter(pk=agent.pk).update(disconnected_at=timezone.now() - timedelta(seconds=45))
    return agent, conversations


def test_the_release_of_a_vanished_agent_is_all_or_nothing_and_the_sweeper_retries_it(
    escalate, make_agent, recorded_jobs, monkeypatch, settings
):
    """Issue 11.1: a release that failed half way left the agent offline with a conversation still assigned."""
    settings.PRESENCE_GRACE_SECONDS = 30
    agent, (first, second, offered) = vanished_with_work(escalate, make_agent, recorded_jobs, assigned=2, offered=True)
    calls = []

    def fail_on_the_second(conversation, **kwargs):  # the second conversation's re-queue breaks
        calls.append(conversation.pk)
        if len(calls) == 2:
            raise RuntimeError("the database refused a write")
        return notify(conversation, **kwargs)

    notify = dispatch_conversations.conversation_notify_queued
    monkeypatch.setattr(dispatch_conversations, "conversation_notify_queued", fail_on_the_second)
    with pytest.raises(RuntimeError):
        presence.presence_release_if_gone(agent_id=agent.pk)

    refresh(agent, first, second, offered)  # nothing changed
    assert (agent.status, agent.active_count, agent.disconnected_at is not None) == ("online", 2, True)
    assert [c.status for c in (first, second, offered)] == ["assigned", "assigned", "offered"]
    assert all(c.assignments.filter(ended_at=None).exists() for c in (first, second))
    assert offer_of(offered).agent_id == agent.pk

    monkeypatch.setattr(dispatch_conversations, "conversation_notify_queued", notify)
    presence.presence_sweep()  # the next sweep does it all

    refresh(agent, first, second, offered)
    assert (agent.status, agent.active_count, agent.disconnected_at) == ("offline", 0, None)
    assert [c.status for c in (first, second, offered)] == ["queued", "queued", "queued"]
    assert not Offer.objects.filter(agent=agent, state="pending").exists()
    assert not any(c.assignments.filter(ended_at=None).exists() for c in (first, second))


def test_one_release_that_fails_does_not_stop_the_sweep_for_the_others(
    escalate, make_agent, recorded_jobs, monkeypatch, settings
):
    settings.PRESENCE_GRACE_SECONDS = 30
    broken, (stuck,) = vanished_with_work(escalate, make_agent, recorded_jobs, assigned=1, offered=False)
    other, (moved,) = vanished_with_work(escalate, make_agent, recorded_jobs, assigned=1, offered=False)
    notify = dispatch_conversations.conversation_notify_queued

    def fail_for_one(conversation, **kwargs):
        if conversation.pk == stuck.pk:
            raise RuntimeError("the database refused a write")
        return notify(conversation, **kwargs)

    monkeypatch.setattr(dispatch_conversations, "conversation_notify_queued", fail_for_one)
    presence.presence_sweep()

    refresh(broken, other, stuck, moved)
    assert (broken.status, stuck.status) == ("online", "assigned")  # left for the next sweep
    assert (other.status, moved.status) == ("offline", "queued")
