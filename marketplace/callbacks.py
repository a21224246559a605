"""Callbacks to bots: an outbox written with the change, delivered after commit.

Guarantees: at least once (the bot dedupes on the event id), in order per
conversation (an event is sent only when every earlier one of the same
conversation is delivered or dead), every attempt recorded, exponential backoff
with jitter, and a dead-letter state after settings.CALLBACK_MAX_ATTEMPTS.

Only one delivery per conversation runs at a time: a worker claims the head
event with a conditional UPDATE that sets a lease and counts the attempt (never
past max_attempts), posts without holding any lock, then records the outcome. A
worker that dies mid-delivery leaves a lease that runs out; the periodic sweeper
then starts the next attempt (or dead-letters the event if that was its last).

One attempt is bounded by marketplace.callback_http: a total deadline
(CALLBACK_TIMEOUT_SECONDS, shorter than the lease, so attempts never overlap),
a few KiB of the answer read, and only allowed addresses (CALLBACK_ALLOWED_NETWORKS).
One integration holds at most CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION deliveries at
once (a bulkhead); its other events wait without spending an attempt.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from core import jobs, outbox

from . import callback_http, signing, tasks
from .models import BotIntegration, CallbackAttempt, CallbackEvent, Conversation

logger = logging.getLogger(__name__)


def callback_enqueue(*, conversation: Conversation, type: str, data: dict[str, Any]) -> CallbackEvent:
    """Record an event for the conversation's bot; delivery starts after commit.

    Call it inside the transaction that made the change, holding the
    conversation's row lock (or having just created it), so `seq` follows the
    order in which the changes commit.
    """
    now = timezone.now()
    seq = (CallbackEvent.objects.filter(conversation=conversation).aggregate(m=Max("seq"))["m"] or 0) + 1
    event = CallbackEvent(
        integration_id=conversation.integration_id,
        conversation=conversation,
        seq=seq,
        type=type,
        next_attempt_at=now,
        kicked_at=now,
        max_attempts=settings.CALLBACK_MAX_ATTEMPTS,
        payload={},
    )
    event.payload = {
        "id": event.id,
        "type": type,
        "created_at": now,
        "conversation_id": conversation.id,
        "external_id": conversation.external_id,
        "data": data,
    }
    event.payload = json.loads(json.dumps(event.payload, cls=DjangoJSONEncoder))
    event.save(force_insert=True)
    jobs.enqueue_on_commit(tasks.deliver_callbacks, conversation.id)
    return event


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with equal jitter: half fixed, half random."""
    return outbox.backoff_seconds(
        attempt, base=settings.CALLBACK_BACKOFF_BASE_SECONDS, cap=settings.CALLBACK_BACKOFF_MAX_SECONDS
    )


class _Busy:
    """The integration already has its maximum of deliveries in flight."""


BUSY = _Busy()


def _in_flight(integration_id: str, now: datetime) -> int:
    return CallbackEvent.objects.filter(
        integration_id=integration_id, state=CallbackEvent.State.PENDING, lease_until__gt=now
    ).count()


def _lease_seconds() -> float:
    # settings refuse a shorter lease at start-up; this keeps it so under overrides too
    return max(
        settings.CALLBACK_LEASE_SECONDS, settings.CALLBACK_TIMEOUT_SECONDS + settings.CALLBACK_LEASE_MARGIN_SECONDS
    )


def _bury_lost_last_attempt(head: CallbackEvent, now: datetime) -> bool:
    """An event whose last allowed attempt never reported back (its worker died) is dead, not tried again."""
    return bool(
        CallbackEvent.objects.filter(pk=head.pk, state=CallbackEvent.State.PENDING, attempts__gte=F("max_attempts"))
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(
            state=CallbackEvent.State.DEAD,
            lease_until=None,
            last_error=f"attempt {head.attempts} (the last allowed) never reported back: its worker stopped",
        )
    )


def _claim_head(conversation_id: str) -> CallbackEvent | _Busy | None:
    """Claim the conversation's next due event: a lease, and one more attempt (never past max_attempts).

    BUSY when the integration already has CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION
    deliveries in flight; the count and the claim happen under the integration's
    row lock, so racing workers cannot go over it.
    """
    while True:
        now = timezone.now()
        head = (
            CallbackEvent.objects.select_related("integration")
            .filter(conversation_id=conversation_id, state=CallbackEvent.State.PENDING)
            .order_by("seq")
            .first()
        )
        if head is None or head.next_attempt_at > now:
            return None
        if head.attempts < head.max_attempts:
            break
        if not _bury_lost_last_attempt(head, now):
            return None  # its last attempt is still in flight
    limit = settings.CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION
    with transaction.atomic():
        # FOR NO KEY UPDATE: serializes claims per integration without blocking inserts that reference it.
        list(BotIntegration.objects.select_for_update(no_key=True).filter(pk=head.integration_id).values_list("pk"))
        now = timezone.now()
        if _in_flight(head.integration_id, now) >= limit:
            return BUSY
        lease_seconds = _lease_seconds()
        claimed = outbox.claim(
            CallbackEvent.objects.filter(
                pk=head.pk,
                state=CallbackEvent.State.PENDING,
                next_attempt_at__lte=now,
                attempts=head.attempts,  # as read: so the claimed row's attempts and lease are known here
                attempts__lt=F("max_attempts"),
            ),
            lease_seconds=lease_seconds,
            now=now,
        )
    if not claimed:
        return None  # another worker holds it
    head.attempts += 1
    head.lease_until = now + timedelta(seconds=lease_seconds)
    return head


def _wait_for_room(conversation_id: str) -> None:
    """Look at the conversation again shortly; one waiting job per conversation, not one per event."""
    head = (
        CallbackEvent.objects.filter(conversation_id=conversation_id, state=CallbackEvent.State.PENDING)
        .order_by("seq")
        .only("pk", "kicked_at")
        .first()
    )
    if head is None:
        return
    wait = settings.CALLBACK_BULKHEAD_WAIT_SECONDS * random.uniform(0.5, 1.5)  # noqa: S311 - jitter
    # kicked_at also tells the sweeper that a job is on its way; only the job that moves it waits on.
    moved = CallbackEvent.objects.filter(pk=head.pk, kicked_at=head.kicked_at).update(
        kicked_at=timezone.now() + timedelta(seconds=wait)
    )
    if moved:
        jobs.enqueue(tasks.deliver_callbacks, conversation_id, countdown=wait)


@dataclass
class _Outcome:
    ok: bool
    status_code: int | None
    error: str
    duration_ms: int
    permanent: bool = False  # refused by policy: no use trying again


def _post(event: CallbackEvent) -> _Outcome:
    body = json.dumps(event.payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "marketplace-callbacks/1",
        "X-Platform-Signature": signing.callback_header(event.integration.valid_secrets(), body),
        "X-Platform-Event-Id": event.id,
    }
    started = time.monotonic()
    deadline = started + settings.CALLBACK_TIMEOUT_SECONDS

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        destination = callback_http.resolve(event.integration.callback_url, timeout=deadline - time.monotonic())
    except callback_http.CallbackRefused as exc:
        return _Outcome(False, None, str(exc)[:500], elapsed(), permanent=True)
    except callback_http.CallbackUnresolved as exc:
        return _Outcome(False, None, f"DNS: {exc}"[:500], elapsed())
    try:
        answer = callback_http.post(destination, body, headers, deadline=deadline)
    except callback_http.DeadlineExceeded:
        limit = settings.CALLBACK_TIMEOUT_SECONDS
        return _Outcome(False, None, f"Timeout: no answer within the {limit:g} s deadline", elapsed())
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return _Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500], elapsed())
    if 200 <= answer.status < 300:
        return _Outcome(True, answer.status, "", elapsed())
    text = answer.body_head[:200].decode("utf-8", "replace")
    return _Outcome(False, answer.status, f"HTTP {answer.status}: {text}", elapsed())


@transaction.atomic
def _record(event: CallbackEvent, outcome: _Outcome, started_at: Any) -> float | None:
    """Store the attempt and the event's new state; returns the retry delay, if any."""
    CallbackAttempt.objects.create(
        event=event,
        number=event.attempts,
        started_at=started_at,
        duration_ms=outcome.duration_ms,
        status_code=outcome.status_code,
        ok=outcome.ok,
        error=outcome.error,
    )
    now = timezone.now()
    # Only the holder of this claim may settle it: a worker that outlived its
    # lease must not overwrite what the next attempt decided.
    mine = CallbackEvent.objects.filter(
        pk=event.pk, state=CallbackEvent.State.PENDING, attempts=event.attempts, lease_until=event.lease_until
    )
    if outcome.ok:
        if not mine.update(state=CallbackEvent.State.DELIVERED, delivered_at=now, lease_until=None, last_error=""):
            logger.warning("callback %s delivered after its lease ran out (the bot dedupes on the id)", event.id)
        return None
    if event.attempts >= event.max_attempts or outcome.permanent:
        mine.update(state=CallbackEvent.State.DEAD, lease_until=None, last_error=outcome.error)
        logger.warning("callback %s dead after %s attempts: %s", event.id, event.attempts, outcome.error)
        return 0.0  # the next event of the conversation may go now
    delay = backoff_seconds(event.attempts)
    retry_at = now + timedelta(seconds=delay)
    if not mine.update(next_attempt_at=retry_at, kicked_at=retry_at, lease_until=None, last_error=outcome.error):
        return None
    return delay


def callbacks_deliver(*, conversation_id: str) -> int:
    """Deliver the conversation's due events in order; returns how many were sent."""
    delivered = 0
    while (event := _claim_head(conversation_id)) is not None:
        if isinstance(event, _Busy):  # the bot has its share of workers: wait, no attempt spent
            _wait_for_room(conversation_id)
            break
        started_at = timezone.now()
        outcome = _post(event)
        delay = _record(event, outcome, started_at)
        if outcome.ok:
            delivered += 1
        elif delay:
            jobs.enqueue(tasks.deliver_callbacks, conversation_id, countdown=delay)
            break
    return delivered


def callbacks_sweep(*, limit: int = 500) -> int:
    """Start delivery for every conversation with a due event that nothing is delivering.

    An event whose job was started recently (kicked_at) is left to that job, so a
    backlog of queued jobs does not grow more duplicates every sweep; an expired
    lease means the worker holding it died, and is taken over at once.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.CALLBACK_REKICK_SECONDS)
    due = CallbackEvent.objects.filter(state=CallbackEvent.State.PENDING, next_attempt_at__lte=now).filter(
        # a claim whose lease ran out (its worker died), or a job started long ago and never run
        Q(lease_until__lt=now)
        | Q(lease_until__isnull=True, kicked_at__isnull=True)
        | Q(lease_until__isnull=True, kicked_at__lt=stale)
    )
    pending = CallbackEvent.objects.filter(state=CallbackEvent.State.PENDING)
    return outbox.kick(due, tasks.deliver_callbacks, limit=limit, key="conversation_id", marked=pending)


@transaction.atomic
def callback_retry(*, event_id: str) -> CallbackEvent:
    """Admin: give a dead event a fresh set of attempts (numbering goes on from the last)."""
    event = CallbackEvent.objects.select_for_update().get(pk=event_id)
    if event.state == CallbackEvent.State.DEAD:
        now = timezone.now()
        event.state = CallbackEvent.State.PENDING
        event.max_attempts = event.attempts + settings.CALLBACK_MAX_ATTEMPTS
        event.next_attempt_at = event.kicked_at = now
        event.lease_until = None
        event.save(update_fields=["state", "max_attempts", "next_attempt_at", "kicked_at", "lease_until"])
        jobs.enqueue_on_commit(tasks.deliver_callbacks, event.conversation_id)
    return event
