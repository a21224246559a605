"""Callbacks to the bot over real HTTP: signed, retried with backoff, in order, dead-lettered."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace import callbacks, signing
from marketplace.models import CallbackAttempt, CallbackEvent, Conversation

from ..conftest import BotClient, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast_retries(settings):
    settings.CALLBACK_BACKOFF_BASE_SECONDS = 0.05
    settings.CALLBACK_BACKOFF_MAX_SECONDS = 0.2
    settings.CALLBACK_MAX_ATTEMPTS = 4
    settings.CALLBACK_TIMEOUT_SECONDS = 0.5
    settings.CALLBACK_LEASE_SECONDS = 2
    return settings


@pytest.fixture
def receiving_bot(make_integration, callback_receiver):
    return BotClient(make_integration(callback_url=callback_receiver.url))


def delivered(event_type: str) -> CallbackEvent | None:
    return CallbackEvent.objects.filter(type=event_type, state="delivered").first()


def test_queued_event_is_posted_signed_with_the_contracts_body(receiving_bot, callback_receiver, fast_retries):
    conversation_id = receiving_bot.escalate("cb-1", language="en").json()["id"]

    wait_for(lambda: delivered("conversation.queued"))

    (request,) = callback_receiver.received
    body = request.json
    assert body["id"].startswith("evt_")
    assert body["type"] == "conversation.queued"
    assert body["conversation_id"] == conversation_id
    assert body["external_id"] == "cb-1"
    assert body["created_at"].endswith("Z")
    assert body["data"]["queue_position"] == 1
    assert body["data"]["estimated_wait_seconds"] is None
    assert body["data"]["wait_estimate_basis"] == "no_agents_online"
    secret = receiving_bot.integration.secret
    header = request.headers["x-platform-signature"]
    assert signing.verify_callback(secret, request.body, header, tolerance=300)
    assert not signing.verify_callback("wrong", request.body, header, tolerance=300)
    # v1 (the first version, over "<t>.<body>") is still there for bots that verify it.
    t = int(header.split(",")[0].removeprefix("t="))
    v1 = hmac.new(secret.encode(), f"{t}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert f"v1={v1}" in header.split(",")


def test_a_captured_callback_replayed_as_a_bot_request_is_401(receiving_bot, callback_receiver, fast_retries):
    # Given: a callback seen on the wire (a log, a proxy), header and body.
    receiving_bot.escalate("replayed")
    wait_for(lambda: delivered("conversation.queued"))
    (request,) = callback_receiver.received
    header = request.headers["x-platform-signature"]

    # When: it is sent back as the bot, to every bot endpoint, within the 300 s window.
    conversation_id = request.json["conversation_id"]
    paths = ["/api/v1/escalations", *(f"/api/v1/escalations/{conversation_id}{a}" for a in ("/cancel", "/reopen"))]
    for path in paths:
        response = receiving_bot.client.generic(
            "POST",
            path,
            request.body,
            content_type="application/json",
            headers={"X-Bot-Id": receiving_bot.integration.id, "X-Bot-Signature": header},
        )
        # Then: refused, and the conversation is as it was.
        assert response.status_code == 401, (path, response.content)
    assert Conversation.objects.get(pk=conversation_id).status == "queued"
    assert Conversation.objects.count() == 1


def test_receiver_failing_twice_then_succeeding_gets_it_on_the_third_try(
    receiving_bot, callback_receiver, fast_retries
):
    callback_receiver.script = [500, 503]

    receiving_bot.escalate("cb-2")
    event = wait_for(lambda: delivered("conversation.queued"))

    assert event.attempts == 3
    attempts = list(CallbackAttempt.objects.filter(event=event).order_by("number"))
    assert [(a.number, a.ok, a.status_code) for a in attempts] == [(1, False, 500), (2, False, 503), (3, True, 200)]
    assert "HTTP 500" in attempts[0].error
    # Every try carried the same event id, so the bot can dedupe.
    assert len({r.json["id"] for r in callback_receiver.received}) == 1
    assert len(callback_receiver.received) == 3


def test_receiver_that_always_fails_ends_dead_lettered(receiving_bot, callback_receiver, fast_retries):
    callback_receiver.default = 500

    receiving_bot.escalate("cb-3")
    event = wait_for(lambda: CallbackEvent.objects.filter(state="dead").first())

    assert event.attempts == fast_retries.CALLBACK_MAX_ATTEMPTS
    assert CallbackAttempt.objects.filter(event=event, ok=False).count() == fast_retries.CALLBACK_MAX_ATTEMPTS
    assert "HTTP 500" in event.last_error
    time.sleep(0.5)  # and no further attempt happens
    assert len(callback_receiver.received) == fast_retries.CALLBACK_MAX_ATTEMPTS


def test_a_hanging_receiver_is_a_timeout_and_retried(receiving_bot, callback_receiver, fast_retries):
    callback_receiver.script = [("sleep", 1.0)]

    receiving_bot.escalate("cb-4")
    event = wait_for(lambda: delivered("conversation.queued"))

    first = CallbackAttempt.objects.get(event=event, number=1)
    assert not first.ok and first.status_code is None
    assert "Timeout" in first.error or "timed out" in first.error
    assert event.attempts == 2


def test_a_conversations_events_arrive_in_order_even_through_failures(receiving_bot, callback_receiver, fast_retries):
    callback_receiver.script = [500, 500]  # the first event struggles
    conversation_id = receiving_bot.escalate("cb-5").json()["id"]
    for n in range(3):
        receiving_bot.post(f"/api/v1/escalations/{conversation_id}/messages", {"text": f"m{n}"})
    receiving_bot.post(f"/api/v1/escalations/{conversation_id}/cancel")

    wait_for(lambda: delivered("conversation.cancelled"))

    types = [r.json["type"] for r in callback_receiver.ok()]
    assert types == ["conversation.queued", "conversation.cancelled"]
    seqs = list(
        CallbackEvent.objects.filter(conversation_id=conversation_id)
        .order_by("delivered_at")
        .values_list("seq", flat=True)
    )
    assert seqs == [1, 2]


def test_a_crashed_delivery_is_picked_up_by_the_sweeper(
    receiving_bot, callback_receiver, fast_retries, settings, request
):
    request.getfixturevalue("lost_tasks")  # given: the delivery task is lost
    receiving_bot.escalate("cb-6")
    event = CallbackEvent.objects.get()
    # and a worker that claimed it and died: the lease is taken, nothing was sent
    CallbackEvent.objects.filter(pk=event.pk).update(attempts=1, lease_until=event.created_at)
    settings.TASK_RUNNER = "thread"

    assert callbacks.callbacks_sweep() == 1

    event = wait_for(lambda: delivered("conversation.queued"))
    assert event.attempts == 2
    assert len(callback_receiver.received) == 1


def test_dead_event_can_be_retried_by_an_admin(receiving_bot, callback_receiver, fast_retries):
    callback_receiver.default = 500
    receiving_bot.escalate("cb-7")
    event = wait_for(lambda: CallbackEvent.objects.filter(state="dead").first())
    callback_receiver.default = 200

    callbacks.callback_retry(event_id=event.pk)

    event = wait_for(lambda: delivered("conversation.queued"))
    assert event.attempts == fast_retries.CALLBACK_MAX_ATTEMPTS + 1
    numbers = list(CallbackAttempt.objects.filter(event=event).order_by("number").values_list("number", flat=True))
    assert numbers == list(range(1, fast_retries.CALLBACK_MAX_ATTEMPTS + 2))


def test_backoff_grows_and_is_jittered(settings):
    settings.CALLBACK_BACKOFF_BASE_SECONDS = 2
    settings.CALLBACK_BACKOFF_MAX_SECONDS = 60
    delays = {attempt: [callbacks.backoff_seconds(attempt) for _ in range(200)] for attempt in (1, 2, 3, 10)}
    assert all(1 <= d <= 2 for d in delays[1])
    assert all(2 <= d <= 4 for d in delays[2])
    assert all(4 <= d <= 8 for d in delays[3])
    assert all(30 <= d <= 60 for d in delays[10])  # capped
    assert len({round(d, 6) for d in delays[3]}) > 100  # jittered


def test_nothing_is_sent_for_a_rolled_back_change(receiving_bot, callback_receiver, fast_retries):
    from django.db import transaction

    from dispatch.services import escalations
    from marketplace import services

    with pytest.raises(RuntimeError), transaction.atomic():
        escalations.conversation_escalate(
            integration=receiving_bot.integration, data=services.EscalationInput(external_id="rolled-back")
        )
        raise RuntimeError("the request failed after the write")

    time.sleep(0.3)
    assert not Conversation.objects.exists()
    assert callback_receiver.received == []


def test_the_sweeper_does_not_pile_up_jobs_for_events_already_on_their_way(receiving_bot, lost_tasks):
    receiving_bot.escalate("queued-job")  # its delivery job is queued (and, here, never runs)

    assert callbacks.callbacks_sweep() == 0  # started just now: left to that job

    CallbackEvent.objects.update(kicked_at=timezone.now() - timedelta(minutes=2))
    assert callbacks.callbacks_sweep() == 1
    assert callbacks.callbacks_sweep() == 0  # and not again right away


def test_a_worker_that_outlived_its_lease_cannot_overwrite_the_next_attempt(
    receiving_bot, callback_receiver, lost_tasks
):
    receiving_bot.escalate("slow-worker")
    slow = callbacks._claim_head(CallbackEvent.objects.get().conversation_id)
    # The lease runs out; another worker claims the event and delivers it.
    CallbackEvent.objects.update(lease_until=timezone.now() - timedelta(seconds=1))
    fast = callbacks._claim_head(slow.conversation_id)
    callbacks._record(fast, callbacks._Outcome(True, 200, "", 5), timezone.now())

    # The slow worker finally fails: it must not turn the delivered event back into a retry.
    callbacks._record(slow, callbacks._Outcome(False, 500, "HTTP 500", 9000), timezone.now())

    event = CallbackEvent.objects.get()
    assert (event.state, event.attempts) == ("delivered", 2)
    assert CallbackAttempt.objects.count() == 2


def test_during_a_rotation_callbacks_carry_a_signature_for_each_secret(receiving_bot, callback_receiver, fast_retries):
    from marketplace import services

    old = receiving_bot.integration.secret
    new = services.integration_rotate_secret(integration_id=receiving_bot.integration.pk).secret
    receiving_bot.integration.secret = new
    receiving_bot.escalate("rotating")

    wait_for(lambda: delivered("conversation.queued"))
    request = callback_receiver.received[0]
    header = request.headers["x-platform-signature"]
    assert header.count("v1=") == 2 and header.count("v2=") == 2
    assert signing.verify_callback(old, request.body, header, tolerance=300)
    assert signing.verify_callback(new, request.body, header, tolerance=300)
