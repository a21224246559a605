"""Callbacks to bots: an outbox written with the change, delivered after commit.

Guarantees: at least once (the bot dedupes on the event id), in order per
conversation (an event is sent only when every earlier one of the same
conversation is delivered or dead), every attempt recorded, exponential backoff
with jitter, and a dead-letter state after settings.CALLBACK_MAX_ATTEMPTS.

Only one delivery per conversation runs at a time: a worker claims the head
event with a conditional UPDATE that sets a lease, posts without holding any
lock, then records the outcome. A worker that dies mid-delivery leaves a lease
that runs out; the periodic sweeper then starts the next attempt.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import requests
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from config import jobs

from . import signing, tasks
from .models import CallbackAttempt, CallbackEvent, Conversation

logger = logging.getLogger(__name__)

_session = requests.Session()


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
    ceiling = min(settings.CALLBACK_BACKOFF_MAX_SECONDS, settings.CALLBACK_BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto


def _claim_head(conversation_id: str) -> CallbackEvent | None:
    now = timezone.now()
    head = (
        CallbackEvent.objects.select_related("integration")
        .filter(conversation_id=conversation_id, state=CallbackEvent.State.PENDING)
        .order_by("seq")
        .first()
    )
    if head is None or head.next_attempt_at > now:
        return None
    lease = max(settings.CALLBACK_LEASE_SECONDS, settings.CALLBACK_TIMEOUT_SECONDS * 2)
    claimed = (
        CallbackEvent.objects.filter(pk=head.pk, state=CallbackEvent.State.PENDING, next_attempt_at__lte=now)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + timedelta(seconds=lease), attempts=F("attempts") + 1)
    )
    if not claimed:
        return None  # another worker holds it
    head.refresh_from_db(fields=["attempts", "lease_until"])
    return head


@dataclass
class _Outcome:
    ok: bool
    status_code: int | None
    error: str
    duration_ms: int


def _post(event: CallbackEvent) -> _Outcome:
    body = json.dumps(event.payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "marketplace-callbacks/1",
        "X-Platform-Signature": signing.callback_header(event.integration.valid_secrets(), body),
        "X-Platform-Event-Id": event.id,
    }
    started = time.monotonic()
    try:
        response = _session.post(
            event.integration.callback_url,
            data=body,
            headers=headers,
            timeout=settings.CALLBACK_TIMEOUT_SECONDS,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        return _Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500], int((time.monotonic() - started) * 1000))
    duration = int((time.monotonic() - started) * 1000)
    if 200 <= response.status_code < 300:
        return _Outcome(True, response.status_code, "", duration)
    return _Outcome(False, response.status_code, f"HTTP {response.status_code}: {response.text[:200]}", duration)


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
    if event.attempts >= event.max_attempts:
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
    due = (
        CallbackEvent.objects.filter(state=CallbackEvent.State.PENDING, next_attempt_at__lte=now)
        .filter(
            # a claim whose lease ran out (its worker died), or a job started long ago and never run
            Q(lease_until__lt=now)
            | Q(lease_until__isnull=True, kicked_at__isnull=True)
            | Q(lease_until__isnull=True, kicked_at__lt=stale)
        )
        .values_list("conversation_id", flat=True)
        .distinct()[:limit]
    )
    conversation_ids = list(due)
    CallbackEvent.objects.filter(conversation_id__in=conversation_ids, state=CallbackEvent.State.PENDING).update(
        kicked_at=now
    )
    for conversation_id in conversation_ids:
        jobs.enqueue(tasks.deliver_callbacks, conversation_id)
    return len(conversation_ids)


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
