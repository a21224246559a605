"""Racing workers on PostgreSQL: the bulkhead and the attempt limit hold under concurrent claims (issue 11.2)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from dispatch.services import escalations
from marketplace import callbacks, services
from marketplace.models import CallbackEvent

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls at once, each in its own thread with its own database connection."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = calls[i]()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_racing_claims_never_put_more_than_the_limit_of_one_bot_in_flight(make_integration, settings, lost_tasks):
    settings.CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION = 2
    integration = make_integration()
    ids = [
        escalations.conversation_escalate(integration=integration, data=services.EscalationInput(external_id=f"r{n}"))[
            0
        ].pk
        for n in range(12)
    ]
    for _round in range(5):
        results = race([lambda conversation_id=cid: callbacks._claim_head(conversation_id) for cid in ids])

        claimed = [r for r in results if isinstance(r, CallbackEvent)]
        assert len(claimed) == 2, [type(r).__name__ for r in results]
        assert sum(r is callbacks.BUSY for r in results) == 10
        in_flight = CallbackEvent.objects.filter(integration=integration, lease_until__gt=timezone.now())
        assert in_flight.count() == 2
        # the deliveries end (as failures due again at once); the next round races again
        CallbackEvent.objects.update(lease_until=None)
    assert sum(CallbackEvent.objects.values_list("attempts", flat=True)) == 10  # only claims count an attempt


def test_racing_deliveries_of_one_event_never_go_past_its_maximum(integration, settings, lost_tasks):
    settings.CALLBACK_MAX_ATTEMPTS = 3
    conversation, _ = escalations.conversation_escalate(
        integration=integration, data=services.EscalationInput(external_id="last")
    )
    CallbackEvent.objects.update(attempts=2)  # two attempts failed already

    results = race([lambda: callbacks._claim_head(conversation.pk) for _ in range(8)])
    assert sum(isinstance(r, CallbackEvent) for r in results) == 1
    assert CallbackEvent.objects.get().attempts == 3

    # Its worker dies; the lease runs out; the sweeper's jobs race again: nobody sends a fourth attempt.
    CallbackEvent.objects.update(lease_until=timezone.now() - timedelta(seconds=1))
    results = race([lambda: callbacks._claim_head(conversation.pk) for _ in range(8)])
    assert results == [None] * 8
    event = CallbackEvent.objects.get()
    assert (event.state, event.attempts) == ("dead", 3)
