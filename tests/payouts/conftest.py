"""Payouts tests talk to the Stripe stand-in over real HTTP with the real stripe library."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import Client

from dispatch.models import Offer
from dispatch.services import conversations, offers
from dispatch.services import errors as dispatch_errors
from marketplace.models import Agent, Conversation
from payouts.models import ConnectedAccount, LedgerLine, StripeEvent, Transfer
from payouts.services import accounts, stripe_events

from ..conftest import wait_for
from ..stripe_standin import StripeStandIn, serve


@pytest.fixture
def standin() -> Iterator[StripeStandIn]:
    yield from serve()


@pytest.fixture
def stripe_on(settings: Any, standin: StripeStandIn) -> StripeStandIn:
    """The platform is configured for Stripe, and Stripe is the stand-in."""
    settings.STRIPE_SECRET_KEY = "sk_test_standin"
    settings.STRIPE_API_BASE = standin.base
    settings.STRIPE_WEBHOOK_SECRET = standin.webhook_secret
    settings.STRIPE_MAX_NETWORK_RETRIES = 2
    settings.STRIPE_TIMEOUT_SECONDS = 2
    settings.TRANSFER_RETRY_BASE_SECONDS = 0.05
    settings.TRANSFER_RETRY_MAX_SECONDS = 0.5
    settings.TRANSFER_LEASE_SECONDS = 30
    return standin


def emit(standin: StripeStandIn, type_: str, obj: dict[str, Any], account: str | None = None, **fields: Any) -> Any:
    """Stripe sends a signed event to our webhook endpoint (through Django's test client)."""
    event = standin.event(type_, obj, account=account)
    event.update(fields)
    payload = json.dumps(event).encode()
    return Client().generic(
        "POST",
        "/webhooks/stripe/",
        payload,
        content_type="application/json",
        headers={"Stripe-Signature": standin.sign(payload)},
    )


def onboard(agent: Agent, standin: StripeStandIn, *, activate: bool = True) -> ConnectedAccount:
    """The agent gets a connected account; with activate, finishes onboarding (Stripe says so by webhook)."""
    accounts.onboarding_link(agent=agent)
    account = ConnectedAccount.objects.get(agent=agent)
    if activate:
        response = emit(standin, "account.updated", standin.account_activate(account.stripe_account_id))
        assert response.status_code == 200, response.content
        for event_id in StripeEvent.objects.filter(processed_at=None).values_list("pk", flat=True):
            stripe_events.stripe_event_process(
                event_id=event_id
            )  # also when a test records jobs instead of running them
        wait_for(lambda: ConnectedAccount.objects.get(pk=account.pk).can_receive_transfers)
    account.refresh_from_db()
    return account


def offer_for(conversation: Conversation, agent: Agent) -> Offer:
    """The agent's offer for the conversation: the background dispatcher's, or one made now."""
    deadline = time.monotonic() + 10
    while True:
        pending = Offer.objects.filter(conversation=conversation, agent=agent, state=Offer.State.PENDING).first()
        if pending is not None:
            return pending
        try:
            return offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)
        except (dispatch_errors.OfferNotOpen, dispatch_errors.AgentUnavailable):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # a dispatch job is offering it right now


@pytest.fixture
def resolve(escalate: Callable[..., Conversation]) -> Callable[..., Conversation]:
    """An agent accepts an offer for a new conversation and resolves it (through the services)."""

    def run(agent: Agent, outcome: str = "resolved", **fields: Any) -> Conversation:
        conversation = escalate(**fields)
        Agent.objects.filter(pk=agent.pk).update(status=Agent.Status.ONLINE)
        offers.offer_accept(offer_id=offer_for(conversation, agent).pk, agent=agent)
        return conversations.conversation_resolve(conversation_id=conversation.pk, agent=agent, outcome=outcome)

    return run


def ledger_sums_to_zero() -> None:
    from payouts.selectors import ledger_imbalances, ledger_totals

    assert ledger_imbalances() == []
    assert all(total == 0 for total in ledger_totals().values())


def balance(account: str) -> int:
    return sum(LedgerLine.objects.filter(account=account).values_list("amount", flat=True))


def paid_transfers(agent: Agent) -> list[Transfer]:
    return list(Transfer.objects.filter(agent=agent, state=Transfer.State.PAID))
