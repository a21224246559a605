"""Load shedding on new escalations (issue 13.3, dispatch/services/admission.py).

A new escalation that would wait past ADMISSION_SLA_SECONDS is answered 503 with Retry-After and
its estimated wait, and nothing is stored for it; a replay of a stored one, and every call about
an existing conversation, is served as always.

With one agent of capacity 1 online and no history (answer 10 s, handle 300 s), the estimates
are 10 s for the first in line, 310 s for the second and 610 s for the third.
"""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dispatch.services import admission
from marketplace.models import CallbackEvent, Conversation, ConversationEvent

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def sla(settings):
    settings.ADMISSION_CONTROL = True
    settings.ADMISSION_SLA_SECONDS = 400
    settings.DEFAULT_ANSWER_SECONDS = 10
    settings.DEFAULT_HANDLE_SECONDS = 300
    return settings


@pytest.fixture
def shedding(sla, bot, make_agent):
    """One agent online and two conversations waiting: a third would wait 610 s, past the SLA of 400 s."""
    make_agent(capacity=1)
    assert [bot.escalate(f"x-{n}", language="en").status_code for n in (1, 2)] == [201, 201]
    return bot


def test_a_new_escalation_past_the_sla_is_503_with_its_estimate_and_nothing_is_stored(shedding, settings):
    refused = shedding.escalate("x-3", language="en")

    assert refused.status_code == 503
    assert refused["Retry-After"] == "60"  # 610 - 400 = 210 s, capped: agents may come online before
    error = refused.json()["error"]
    assert error["code"] == "overloaded"
    assert (error["estimated_wait_seconds"], error["retry_after_seconds"]) == (610, 60)
    assert "610" in error["detail"]
    # nothing of it is stored: no row, no event, no callback
    assert sorted(Conversation.objects.values_list("external_id", flat=True)) == ["x-1", "x-2"]
    assert not ConversationEvent.objects.filter(conversation__external_id="x-3").exists()
    assert CallbackEvent.objects.count() == 2  # the two accepted ones' conversation.queued

    # and the estimate was honest: taken in, it is what the bot is told
    settings.ADMISSION_CONTROL = False
    taken = shedding.escalate("x-3", language="en")
    assert (taken.status_code, taken.json()["estimated_wait_seconds"]) == (201, 610)


def test_a_replay_of_a_stored_escalation_is_still_200_under_shedding(shedding):
    assert shedding.escalate("x-4", language="en").status_code == 503

    replay = shedding.escalate("x-1", language="en")
    assert replay.status_code == 200
    assert replay.json()["external_id"] == "x-1"
    # another body under the same external_id is still the idempotency conflict, not a 503
    assert shedding.escalate("x-1", language="en", topic="refunds").status_code == 409
    assert Conversation.objects.count() == 2


def test_calls_about_existing_conversations_are_served_under_shedding(shedding):
    first, second = (Conversation.objects.get(external_id=e).pk for e in ("x-1", "x-2"))
    assert shedding.escalate("x-3", language="en").status_code == 503

    assert shedding.get(f"/api/v1/escalations/{first}").status_code == 200
    assert shedding.post(f"/api/v1/escalations/{first}/messages", {"text": "still there?"}).status_code == 201
    assert shedding.post(f"/api/v1/escalations/{second}/cancel").status_code == 200

    # the one that left frees its place: a new one fits within the SLA again
    assert shedding.escalate("x-3", language="en").status_code == 201


def test_new_escalations_are_taken_again_when_agents_come_online(shedding, make_agent):
    assert shedding.escalate("x-3", language="en").status_code == 503

    make_agent(capacity=2)  # three slots, three free: the next one is answered at once

    taken = shedding.escalate("x-3", language="en")
    assert taken.status_code == 201
    assert taken.json()["estimated_wait_seconds"] == 10


def test_urgent_is_placed_ahead_so_it_is_taken_while_normal_is_refused(shedding):
    assert shedding.escalate("x-3", language="en", priority="normal").status_code == 503

    urgent = shedding.escalate("x-4", language="en", priority="urgent")
    assert urgent.status_code == 201
    assert urgent.json()["queue_position"] == 1


def test_each_language_is_judged_by_its_own_queue_and_agents(shedding, make_agent):
    assert shedding.escalate("x-3", language="en").status_code == 503
    make_agent(languages=("sv",), capacity=1)

    assert shedding.escalate("x-4", language="sv").status_code == 201
    # nobody online speaks German: no estimate to refuse on, and it waits for the next agent as before
    assert shedding.escalate("x-5", language="de").status_code == 201


def test_with_nobody_online_escalations_are_taken(sla, bot):
    assert [bot.escalate(f"n-{n}").status_code for n in range(5)] == [201] * 5


def test_the_switch_turns_shedding_off(shedding, settings):
    settings.ADMISSION_CONTROL = False
    assert shedding.escalate("x-3", language="en").status_code == 201


def test_the_figure_is_kept_per_process_for_its_max_age(sla, make_agent, escalate, settings):
    settings.ADMISSION_ESTIMATE_MAX_AGE_SECONDS = 0.3
    make_agent(capacity=1)
    escalate(language="en")  # (its own admission check kept a figure from before it was stored)
    admission.forget()

    with CaptureQueriesContext(connection) as first:
        estimate = admission.estimate_for_new(language="en", priority="normal")
    with CaptureQueriesContext(connection) as again:
        assert admission.estimate_for_new(language="en", priority="normal") == estimate
    time.sleep(0.35)
    with CaptureQueriesContext(connection) as later:
        admission.estimate_for_new(language="en", priority="normal")

    assert estimate.seconds == 310
    assert len(first.captured_queries) <= 4  # the pool, the place (and the two mean spans, cached after)
    assert len(again.captured_queries) == 0
    assert len(later.captured_queries) == 2  # the pool and the place; the mean spans come from the cache
