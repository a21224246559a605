"""Offers and assignment: the conversation's life between queue and resolution.

Lock order (as in marketplace.services): Conversation, then Offer, then Agent.
Capacity is taken with a conditional UPDATE (active_count < capacity), so an
agent never holds more conversations than its capacity, whoever races.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from config.errors import Conflict
from marketplace import callbacks
from marketplace.models import Agent, Conversation, Message
from marketplace.services import agent_release_slot, conversation_log, conversation_transition

from . import events
from .models import Offer


class OfferNotOpen(Conflict):
    default_code = "offer_not_open"
    default_detail = "The offer is no longer open."


class AgentUnavailable(Conflict):
    default_code = "agent_unavailable"
    default_detail = "The agent cannot take this conversation now."


class NotAssignedToAgent(Conflict):
    default_code = "not_assigned"
    default_detail = "The conversation is not assigned to this agent."


def offer_payload(offer: Offer) -> dict[str, Any]:
    conversation = offer.conversation
    return {
        "type": "offer",
        "offer_id": offer.id,
        "conversation_id": conversation.id,
        "language": conversation.language,
        "topic": conversation.topic,
        "priority": conversation.priority,
        "summary": conversation.summary,
        "pay": {"amount": offer.pay_amount, "currency": offer.pay_currency},
        "expires_at": offer.expires_at.isoformat().replace("+00:00", "Z"),
    }


def conversation_payload(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "external_id": conversation.external_id,
        "language": conversation.language,
        "topic": conversation.topic,
        "priority": conversation.priority,
        "summary": conversation.summary,
        "customer": conversation.customer,
        "transcript": conversation.transcript,
        "messages": [events.message_payload(m)["message"] for m in conversation.messages.all()],
    }


@transaction.atomic
def offer_create(*, conversation_id: str, agent_id: str, pay_amount: int, pay_currency: str) -> Offer:
    """Offer a queued conversation to an agent who can take it now."""
    conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
    if conversation.status != Conversation.Status.QUEUED:
        raise OfferNotOpen("The conversation is not waiting for an offer.")
    agent = Agent.objects.select_for_update().get(pk=agent_id)
    if (
        agent.approval != Agent.Approval.APPROVED
        or agent.status != Agent.Status.ONLINE
        or agent.active_count >= agent.capacity
        or Offer.objects.filter(agent=agent, state=Offer.State.PENDING).exists()
    ):
        raise AgentUnavailable()
    offer = Offer.objects.create(
        conversation=conversation,
        agent=agent,
        expires_at=timezone.now() + timedelta(seconds=settings.OFFER_TIMEOUT_SECONDS),
        pay_amount=pay_amount,
        pay_currency=pay_currency,
    )
    Agent.objects.filter(pk=agent.pk).update(offers_received=F("offers_received") + 1)
    conversation_transition(
        conversation=conversation, to=Conversation.Status.OFFERED, actor="system", data={"offer_id": offer.id}
    )
    events.send_on_commit(agent.pk, offer_payload(offer))
    return offer


@transaction.atomic
def offer_accept(*, offer_id: str, agent: Agent) -> Conversation:
    """The agent takes the conversation. Exactly one outcome under any race."""
    conversation_id = Offer.objects.filter(pk=offer_id, agent=agent).values_list("conversation_id", flat=True).first()
    if conversation_id is None:
        raise OfferNotOpen()
    conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
    offer = Offer.objects.select_for_update().get(pk=offer_id)
    if offer.state != Offer.State.PENDING or offer.is_expired() or conversation.status != Conversation.Status.OFFERED:
        raise OfferNotOpen()
    took_slot = Agent.objects.filter(pk=agent.pk, active_count__lt=F("capacity")).update(
        active_count=F("active_count") + 1,
        offers_accepted=F("offers_accepted") + 1,
        consecutive_misses=0,
        idle_since=None,
    )
    if not took_slot:
        raise AgentUnavailable("No free capacity left.")
    offer.state = Offer.State.ACCEPTED
    offer.responded_at = timezone.now()
    offer.save(update_fields=["state", "responded_at"])
    conversation.assigned_agent = agent
    conversation_transition(
        conversation=conversation,
        to=Conversation.Status.ASSIGNED,
        actor=f"agent:{agent.pk}",
        data={"offer_id": offer.id},
        extra_fields=("assigned_agent",),
    )
    callbacks.callback_enqueue(
        conversation=conversation,
        type="conversation.assigned",
        data={"agent": {"display_name": agent.display_name}},
    )
    events.send_on_commit(
        agent.pk, {"type": "conversation.assigned", "conversation": conversation_payload(conversation)}
    )
    return conversation


def offers_revoke_for_conversation(*, conversation: Conversation, reason: str) -> list[Offer]:
    """Withdraw the conversation's open offer (the caller holds its lock)."""
    offers = list(Offer.objects.select_for_update().filter(conversation=conversation, state=Offer.State.PENDING))
    now = timezone.now()
    for offer in offers:
        offer.state = Offer.State.REVOKED
        offer.responded_at = now
        offer.reason = reason
        offer.save(update_fields=["state", "responded_at", "reason"])
        events.send_on_commit(offer.agent_id, {"type": "offer.revoked", "offer_id": offer.id, "reason": reason})
    return offers


@transaction.atomic
def conversation_resolve(*, conversation_id: str, agent: Agent, outcome: str, note: str = "") -> Conversation:
    """The agent closes the conversation with an outcome."""
    conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
    if conversation.status != Conversation.Status.ASSIGNED or conversation.assigned_agent_id != agent.pk:
        raise NotAssignedToAgent()
    conversation.outcome = outcome
    conversation.resolution_note = note
    conversation_transition(
        conversation=conversation,
        to=Conversation.Status.RESOLVED,
        actor=f"agent:{agent.pk}",
        data={"outcome": outcome},
        extra_fields=("outcome", "resolution_note"),
    )
    counter = "resolved_count" if outcome == Conversation.Outcome.RESOLVED else "unresolved_count"
    Agent.objects.filter(pk=agent.pk).update(**{counter: F(counter) + 1})
    agent_release_slot(agent.pk)
    callbacks.callback_enqueue(conversation=conversation, type="conversation.resolved", data={"outcome": outcome})
    events.send_on_commit(
        agent.pk, {"type": "conversation.closed", "conversation_id": conversation.id, "reason": outcome}
    )
    return conversation


@transaction.atomic
def conversation_add_agent_message(*, conversation_id: str, agent: Agent, text: str, client_id: str) -> Message:
    """An agent's message to the customer; deduped on the app's client_id."""
    conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
    existing = Message.objects.filter(conversation=conversation, client_id=client_id).first()
    if existing is not None:
        return existing
    if conversation.status != Conversation.Status.ASSIGNED or conversation.assigned_agent_id != agent.pk:
        raise NotAssignedToAgent()
    message = Message.objects.create(
        conversation=conversation, role=Message.Role.AGENT, text=text, agent=agent, client_id=client_id
    )
    conversation_log(
        conversation=conversation, kind="message.agent", actor=f"agent:{agent.pk}", data={"id": message.id}
    )
    callbacks.callback_enqueue(
        conversation=conversation,
        type="message.created",
        data={
            "message_id": message.id,
            "text": text,
            "created_at": message.created_at,
            "agent": {"display_name": agent.display_name},
        },
    )
    return message
