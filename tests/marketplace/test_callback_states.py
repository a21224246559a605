"""Any sequence of claims, outcomes, crashed workers and sweeps keeps the callback limits (issue 11.2).

A Hypothesis state machine on PostgreSQL drives the delivery steps directly (claim, record, a
worker dying with its lease, the sweeper) for two bots, and checks after every step: one bot never
has more deliveries in flight than its limit, no event has more attempts than its maximum, every
recorded attempt has its own number, and a delivered event was answered 2xx.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.db.models import Count, F
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dispatch.services import escalations
from marketplace import callbacks, services
from marketplace.models import BotIntegration, CallbackAttempt, CallbackEvent

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

LIMIT = 2
MAX_ATTEMPTS = 3


class Deliveries(RuleBasedStateMachine):
    @initialize()
    def bots(self) -> None:
        self.bots = [BotIntegration.objects.create(name=f"sm-{n}", callback_url="http://127.0.0.1:9/") for n in (1, 2)]
        self.conversations: list[str] = []
        self.held: list[CallbackEvent] = []  # claimed by a worker that has not reported yet
        self.count = 0

    @rule(bot=st.integers(0, 1), events=st.integers(1, 3))
    def escalate(self, bot: int, events: int) -> None:
        self.count += 1
        conversation, _ = escalations.conversation_escalate(
            integration=self.bots[bot], data=services.EscalationInput(external_id=f"sm-{self.count}")
        )
        for n in range(events - 1):  # more events of the conversation, in order behind the first
            with transaction.atomic():
                callbacks.callback_enqueue(conversation=conversation, type="message.created", data={"n": n})
        self.conversations.append(conversation.pk)

    @rule(data=st.data())
    def claim(self, data: Any) -> None:
        if not self.conversations:
            return
        conversation_id = data.draw(st.sampled_from(self.conversations))
        result = callbacks._claim_head(conversation_id)
        if isinstance(result, CallbackEvent):
            self.held.append(result)

    @rule(data=st.data(), ok=st.booleans())
    def report(self, data: Any, ok: bool) -> None:
        if not self.held:
            return
        event = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        outcome = callbacks._Outcome(ok, 200 if ok else 500, "" if ok else "HTTP 500", 5)
        callbacks._record(event, outcome, timezone.now())

    @rule(data=st.data())
    def worker_dies(self, data: Any) -> None:
        """A worker stops without a word; its lease runs out (time passes for it)."""
        if not self.held:
            return
        event = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        CallbackEvent.objects.filter(pk=event.pk, lease_until=event.lease_until).update(
            lease_until=timezone.now() - timedelta(seconds=1)
        )

    @rule()
    def sweep(self) -> None:
        callbacks.callbacks_sweep()

    @rule()
    def retries_come_due(self) -> None:
        CallbackEvent.objects.filter(state="pending").update(next_attempt_at=timezone.now() - timedelta(seconds=1))

    @invariant()
    def limits_hold(self) -> None:
        if not hasattr(self, "bots"):
            return
        now = timezone.now()
        for bot in self.bots:
            events = CallbackEvent.objects.filter(integration=bot)
            assert events.filter(state="pending", lease_until__gt=now).count() <= LIMIT
            assert not events.filter(attempts__gt=F("max_attempts")).exists()
            attempts = CallbackAttempt.objects.filter(event__integration=bot)
            assert not attempts.values("event", "number").annotate(n=Count("id")).filter(n__gt=1).exists()
            assert not attempts.filter(number__gt=MAX_ATTEMPTS).exists()
            for event in events.filter(state="delivered"):
                assert attempts.filter(event=event, ok=True).exists()


@pytest.fixture
def machine_settings(settings: Any, recorded_jobs: Any) -> Any:
    settings.CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION = LIMIT
    settings.CALLBACK_MAX_ATTEMPTS = MAX_ATTEMPTS
    settings.CALLBACK_BACKOFF_BASE_SECONDS = 0.001
    settings.CALLBACK_BACKOFF_MAX_SECONDS = 0.001
    return settings


@pytest.mark.timeout(600)  # shrinking a failure takes a while on a loaded machine
def test_deliveries_state_machine(machine_settings: Any) -> None:
    Deliveries.TestCase.settings = hypothesis_settings(
        max_examples=25,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    Deliveries.TestCase().runTest()
