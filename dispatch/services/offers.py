"""Offers: made to one agent with the pay quoted, accepted, declined, expired, revoked, withdrawn.

Lock order (core.locks): Conversation, then Offer, then Agent. Capacity is taken with a
conditional UPDATE (active_count < capacity), so an agent never holds more conversations than
its capacity, whoever races. Messages to agents, callbacks and follow-up jobs go out only after
commit.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core import jobs
from marketplace import callbacks
from marketplace.models import Agent, Conversation
from marketplace.services import conversation_transition
from payouts import pricing

from .. import events, payloads, selectors, tasks
from ..models import Assignment, ConversationTransfer, Offer
from .errors import (
    AgentUnavailable,
    OfferNotOpen,
)


@transaction.atomic
def offer_create(*, conversation_id: str, agent_id: str, wait_for_agent: bool = False) -> Offer:
    """Offer a queued conversation to an agent who can take it now, with the pay quoted.

    By default a locked agent row is skipped (AgentUnavailable): another dispatcher
    holding it is about to offer it something, so the caller moves on to the next
    candidate rather than queue behind it (dispatch jobs in parallel rank the same
    agents first). `wait_for_agent` waits for the lock instead: for the agent's own
    dispatch job, which has no other candidate, and whose agent row may be held for
    a reason that has nothing to do with offers (a rating counted, a second device
    connecting). Waiting is safe: the holders of an agent's row lock never wait
    for a conversation after it.
    """
    conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
    if conversation.status != Conversation.Status.QUEUED:
        raise OfferNotOpen("The conversation is not waiting for an offer.")
    # FOR NO KEY UPDATE: an offer never changes the agent's key, and this strength does not
    # conflict with the KEY SHARE lock that every insert referencing the agent takes (an
    # earning, a transfer, a message), which plain FOR UPDATE SKIP LOCKED would skip.
    agent = Agent.objects.select_for_update(skip_locked=not wait_for_agent, no_key=True).filter(pk=agent_id).first()
    if (
        agent is None
        or agent.approval != Agent.Approval.APPROVED
        or agent.status != Agent.Status.ONLINE
        or agent.active_count >= agent.capacity
        or Offer.objects.filter(agent=agent, state=Offer.State.PENDING).exists()
    ):
        raise AgentUnavailable()
    # A conversation transferred to a queue carries its transfer (the note, whom it comes from) to each offer.
    transfer = ConversationTransfer.objects.filter(
        conversation=conversation, state=ConversationTransfer.State.QUEUED
    ).first()
    offer = offer_make(conversation=conversation, agent=agent, transfer=transfer)
    conversation_transition(
        conversation=conversation, to=Conversation.Status.OFFERED, actor="system", data={"offer_id": offer.id}
    )
    return offer


def offer_make(*, conversation: Conversation, agent: Agent, transfer: ConversationTransfer | None = None) -> Offer:
    """The offer itself, with its pay quoted, sent and timed (the caller holds the conversation's lock and
    the agent's, and has checked that the agent can take it now)."""
    quote = pricing.quote(conversation)
    try:
        with transaction.atomic():
            offer = Offer.objects.create(
                conversation=conversation,
                agent=agent,
                expires_at=timezone.now() + timedelta(seconds=settings.OFFER_TIMEOUT_SECONDS),
                pay_amount=quote.amount,
                pay_currency=quote.currency,
                pay_base=quote.base,
                pay_surge=quote.surge,
                pay_bonus=quote.quality_bonus,
                transfer=transfer,
            )
    except IntegrityError as exc:  # the partial unique indexes: one open offer per agent and conversation
        raise AgentUnavailable() from exc
    Agent.objects.filter(pk=agent.pk).update(offers_received=F("offers_received") + 1)
    events.send_on_commit(agent.pk, payloads.offer_payload(offer))
    jobs.enqueue_on_commit(tasks.expire_offer, offer.id, countdown=settings.OFFER_TIMEOUT_SECONDS)
    return offer


def _lock_offer(offer_id: str) -> tuple[Conversation, Offer]:
    """Lock an offer's conversation, then the offer (the fixed order)."""
    conversation_id = Offer.objects.filter(pk=offer_id).values_list("conversation_id", flat=True).first()
    if conversation_id is None:
        raise OfferNotOpen("No such offer.")
    conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
    return conversation, Offer.objects.select_for_update().get(pk=offer_id)


def _status_while_offered(offer: Offer) -> str:
    """The conversation's status while this offer is open: `offered`, or for a transfer's offer to a
    named agent `assigned` (the first agent keeps it until the offer is accepted)."""
    if offer.transfer_id and offer.transfer is not None and offer.transfer.state == ConversationTransfer.State.OFFERED:
        return Conversation.Status.ASSIGNED
    return Conversation.Status.OFFERED


def _close_offer(offer: Offer, state: str, reason: str = "") -> None:
    offer.state = state
    offer.responded_at = timezone.now()
    offer.reason = reason[:200]
    offer.save(update_fields=["state", "responded_at", "reason"])


def _back_to_queue(conversation: Conversation, actor: str, data: dict[str, Any], offer: Offer | None = None) -> None:
    """An offered conversation whose offer ended goes back to waiting, and to the next agent.

    A transfer's offer to a named agent (the conversation still assigned to the first agent) falls
    back to the queue instead.
    """
    if offer is not None and offer.transfer_id and conversation.status == Conversation.Status.ASSIGNED:
        from . import transfers  # transfers builds on this module

        transfers.transfer_fall_back(conversation=conversation, offer=offer, actor=actor)
        return
    if conversation.status == Conversation.Status.OFFERED:
        conversation_transition(conversation=conversation, to=Conversation.Status.QUEUED, actor=actor, data=data)
        jobs.enqueue_on_commit(tasks.dispatch_conversation, conversation.pk)


def offer_accept(*, offer_id: str, agent: Agent) -> Conversation:
    """The agent takes the conversation. Exactly one outcome under any race."""
    with transaction.atomic():
        conversation, offer = _lock_offer(offer_id)
        if (
            offer.agent_id != agent.pk
            or offer.state != Offer.State.PENDING
            or offer.is_expired()
            or conversation.status != _status_while_offered(offer)
        ):
            raise OfferNotOpen()
        took_slot = Agent.objects.filter(pk=agent.pk, active_count__lt=F("capacity")).update(
            active_count=F("active_count") + 1,
            offers_accepted=F("offers_accepted") + 1,
            consecutive_misses=0,
            idle_since=None,
        )
        if took_slot:
            _close_offer(offer, Offer.State.ACCEPTED)
            data: dict[str, Any] = {"offer_id": offer.id}
            if offer.transfer_id:
                from . import transfers  # transfers builds on this module

                transfers.transfer_complete(conversation=conversation, offer=offer, agent=agent)
                data["transfer_id"] = offer.transfer_id
            assign(conversation, agent, actor=f"agent:{agent.pk}", data=data, offer=offer)
            if Agent.objects.filter(pk=agent.pk, active_count__lt=F("capacity")).exists():
                jobs.enqueue_on_commit(tasks.dispatch_agent, agent.pk)  # room for more: offer the next one now
            return conversation
        # Another conversation took the last slot (an admin's reassignment): this offer is over.
        _close_offer(offer, Offer.State.REVOKED, "no capacity left")
        _back_to_queue(conversation, f"agent:{agent.pk}", {"offer_id": offer.id, "reason": "no_capacity"}, offer)
        events.send_on_commit(agent.pk, {"type": "offer.revoked", "offer_id": offer.id, "reason": "taken"})
    raise AgentUnavailable("No free capacity left.")


def assign(
    conversation: Conversation, agent: Agent, *, actor: str, data: dict[str, Any], offer: Offer | None = None
) -> None:
    """The conversation (locked) becomes the agent's; the slot is already taken.

    The pay is locked here: the accepted offer's quote, or (an admin's
    reassignment, which has no offer) a quote taken now.
    """
    if offer is not None:
        pay = (offer.pay_amount, offer.pay_currency, offer.pay_bonus)
    else:
        quote = pricing.quote(conversation)
        pay = (quote.amount, quote.currency, quote.quality_bonus)
    Assignment.objects.create(
        conversation=conversation,
        agent=agent,
        offer=offer,
        pay_amount=pay[0],
        pay_currency=pay[1],
        quality_bonus=pay[2],
    )
    conversation.assigned_agent = agent
    conversation_transition(
        conversation=conversation,
        to=Conversation.Status.ASSIGNED,
        actor=actor,
        data=data,
        extra_fields=("assigned_agent",),
    )
    callbacks.callback_enqueue(
        conversation=conversation, type="conversation.assigned", data={"agent": {"display_name": agent.display_name}}
    )
    events.send_on_commit(
        agent.pk, {"type": "conversation.assigned", "conversation": payloads.conversation_payload(conversation)}
    )


def offer_decline(*, offer_id: str, agent: Agent, reason: str = "") -> Offer:
    """The agent says no: the conversation goes to the next candidate at once."""
    with transaction.atomic():
        conversation, offer = _lock_offer(offer_id)
        if offer.agent_id != agent.pk or offer.state != Offer.State.PENDING:
            raise OfferNotOpen()
        _close_offer(offer, Offer.State.DECLINED, reason)
        Agent.objects.filter(pk=agent.pk).update(offers_declined=F("offers_declined") + 1, consecutive_misses=0)
        _back_to_queue(conversation, f"agent:{agent.pk}", {"offer_id": offer.id, "declined": reason[:200]}, offer)
        jobs.enqueue_on_commit(tasks.dispatch_agent, agent.pk)
    return offer


def offer_expire(*, offer_id: str) -> bool:
    """The timer ran out. Repeated misses set the agent away (and tell them)."""
    if not Offer.objects.filter(pk=offer_id, state=Offer.State.PENDING).exists():
        return False  # answered or withdrawn: most timers end here, with one read and no transaction
    with transaction.atomic():
        try:
            conversation, offer = _lock_offer(offer_id)
        except OfferNotOpen:
            return False
        if offer.state != Offer.State.PENDING:
            return False
        if not offer.is_expired():  # a timer that fired early: try again when it is due
            jobs.enqueue_on_commit(
                tasks.expire_offer, offer.id, countdown=(offer.expires_at - timezone.now()).total_seconds()
            )
            return False
        _close_offer(offer, Offer.State.EXPIRED, "no answer in time")
        events.send_on_commit(offer.agent_id, {"type": "offer.revoked", "offer_id": offer.id, "reason": "expired"})
        agent = Agent.objects.select_for_update().get(pk=offer.agent_id)
        agent.offers_missed += 1
        agent.consecutive_misses += 1
        fields = ["offers_missed", "consecutive_misses"]
        if agent.consecutive_misses >= settings.MISSES_BEFORE_AWAY and agent.status == Agent.Status.ONLINE:
            agent.status = Agent.Status.AWAY
            agent.status_changed_at = timezone.now()
            fields += ["status", "status_changed_at"]
            events.presence_on_commit(agent.pk, Agent.Status.AWAY, "missed_offers")
        agent.save(update_fields=fields)
        _back_to_queue(conversation, "system", {"offer_id": offer.id, "expired": True}, offer)
        if agent.status == Agent.Status.ONLINE:
            jobs.enqueue_on_commit(tasks.dispatch_agent, agent.pk)
    return True


def offers_revoke_for_conversation(*, conversation: Conversation, reason: str, detail: str = "") -> list[Offer]:
    """Withdraw the conversation's open offer (the caller holds its lock); its agent is free for other work."""
    offers = list(Offer.objects.select_for_update().filter(conversation=conversation, state=Offer.State.PENDING))
    for offer in offers:
        _close_offer(offer, Offer.State.REVOKED, detail or reason)
        events.send_on_commit(offer.agent_id, {"type": "offer.revoked", "offer_id": offer.id, "reason": reason})
        jobs.enqueue_on_commit(tasks.dispatch_agent, offer.agent_id)
    # Whoever takes the conversation out of line or closes it overtakes a transfer not yet accepted.
    ConversationTransfer.objects.filter(conversation=conversation, state__in=ConversationTransfer.OPEN).update(
        state=ConversationTransfer.State.CANCELLED, ended_at=timezone.now()
    )
    return offers


def offer_withdraw_for_agent(*, agent_id: str, detail: str) -> Offer | None:
    """The agent went away or offline: its open offer lapses and passes on."""
    offer = selectors.pending_offer(agent_id)
    if offer is None:
        return None
    with transaction.atomic():
        conversation, offer = _lock_offer(offer.pk)
        if offer.state != Offer.State.PENDING:
            return None
        _close_offer(offer, Offer.State.REVOKED, detail)
        events.send_on_commit(
            agent_id, {"type": "offer.revoked", "offer_id": offer.id, "reason": "expired", "detail": detail}
        )
        _back_to_queue(conversation, "system", {"offer_id": offer.id, "withdrawn": detail}, offer)
    return offer


def offers_sweep() -> int:
    """Expire every overdue offer (timers are the fast path; this is the safety net)."""
    overdue = Offer.objects.filter(state=Offer.State.PENDING, expires_at__lte=timezone.now()).values_list(
        "pk", flat=True
    )
    return sum(offer_expire(offer_id=offer_id) for offer_id in list(overdue[:500]))
