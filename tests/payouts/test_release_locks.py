"""The payouts' per-agent lock is not the agent's row (issue 11.3), and still serialises one agent's releases
and disputes (offsets against what the agent owes back), on PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import OperationalError, connections, transaction

from dispatch.models import Offer
from dispatch.services import conversations, offers
from marketplace.models import Agent
from payouts.models import Earning
from payouts.services import earnings

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def earned(escalate, agent, recorded_jobs) -> Earning:
    """A resolution's earning, past its hold and not yet released (its release job recorded, not run)."""
    conversation = escalate()
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=Offer.objects.get(conversation=conversation).pk, agent=agent)
    conversations.conversation_resolve(conversation_id=conversation.pk, agent=agent, outcome="resolved")
    recorded_jobs.clear()
    return Earning.objects.get(conversation=conversation)


def held_open(call, started: threading.Event, finish: threading.Event) -> threading.Thread:
    """Run `call` in a transaction of another connection, kept open until `finish` is set."""

    def run() -> None:
        try:
            with transaction.atomic():
                call()
                started.set()
                finish.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(10)
    return thread


def test_releasing_an_earning_leaves_the_agents_row_free_for_dispatch(escalate, make_agent, recorded_jobs, settings):
    settings.PAYOUT_HOLD_SECONDS = 0
    agent = make_agent()
    earning = earned(escalate, agent, recorded_jobs)
    started, finish = threading.Event(), threading.Event()
    releasing = held_open(lambda: earnings.earning_release(earning_id=earning.pk), started, finish)
    try:
        with transaction.atomic():  # what offer_create does; it must not find the row held
            Agent.objects.select_for_update(nowait=True).get(pk=agent.pk)
    except OperationalError as exc:
        pytest.fail(f"the earning release holds the agent's row: {exc}")
    finally:
        finish.set()
        releasing.join(10)
    earning.refresh_from_db()
    assert earning.state == "released"


def test_one_agents_release_and_dispute_still_wait_for_each_other(escalate, make_agent, recorded_jobs, settings):
    settings.PAYOUT_HOLD_SECONDS = 0
    agent = make_agent(capacity=2)
    first, second = earned(escalate, agent, recorded_jobs), earned(escalate, agent, recorded_jobs)
    started, finish = threading.Event(), threading.Event()
    releasing = held_open(lambda: earnings.earning_release(earning_id=first.pk), started, finish)
    disputed = threading.Event()

    def dispute() -> None:
        try:
            earnings.earning_dispute(earning_id=second.pk, reason="test", actor="admin:root")
            disputed.set()
        finally:
            connections.close_all()

    disputing = threading.Thread(target=dispute)
    disputing.start()
    time.sleep(0.5)
    assert not disputed.is_set()  # it waits for the release's lock
    finish.set()
    releasing.join(10)
    disputing.join(10)
    assert disputed.is_set()
