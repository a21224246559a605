"""Dispatch: presence, offers, assignment, re-queueing. One function per verb.

Lock order (as in marketplace.services): Conversation, then Offer, then Agent.
A verb that starts from an agent reads the ids it needs without locks, then
locks in that order. Capacity is taken with a conditional UPDATE
(active_count < capacity), so an agent never holds more conversations than its
capacity, whoever races. Messages to agents, callbacks and follow-up jobs go out
only after commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core import jobs
from core.errors import Conflict
from marketplace import callbacks
from marketplace.models import Agent, Conversation, Message
from marketplace.services import (
    agent_release_slot,
    agent_set_approval,
    conversation_notify_queued,
    conversation_transition,
    queue_key_for,
)
from payouts import pricing
from payouts import selectors as payout_selectors
from payouts.services import earnings

from . import events, selectors, tasks
from .models import AgentConnection, Assignment, Offer, ServerHeartbeat

logger = logging.getLogger(__name__)

T = TypeVar("T")


class OfferNotOpen(Conflict):
    default_code = "offer_not_open"
    default_detail = "The offer is no longer open."


class AgentUnavailable(Conflict):
    default_code = "agent_unavailable"
    default_detail = "The agent cannot take this conversation now."


class NotAssignedToAgent(Conflict):
    default_code = "not_assigned"
    default_detail = "The conversation is not assigned to this agent."


class NotApproved(Conflict):
    default_code = "not_approved"
    default_detail = "Only approved agents can go online."


class PayoutsNotReady(Conflict):
    default_code = "payouts_not_ready"
    default_detail = "Finish payouts onboarding before going online."


class NotReopenable(Conflict):
    default_code = "not_reopenable"
    default_detail = "Only a resolved conversation can be reopened, within the reopen window."


# --- payloads sent to agents ----------------------------------------------------------


def _iso(value: Any) -> str:
    return value.isoformat().replace("+00:00", "Z")


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
        "pay": {
            "amount": offer.pay_amount,
            "currency": offer.pay_currency,
            "base": offer.pay_base,
            "surge": float(offer.pay_surge),
            "quality_bonus": offer.pay_bonus,
        },
        "expires_at": _iso(offer.expires_at),
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
        "assigned_at": _iso(conversation.assigned_at) if conversation.assigned_at else None,
    }


# Why the server (not the agent) last set the status, kept for `hello`: the app that reconnects after
# `disconnected` (the agent had no socket then) still learns why it is offline. Informational only:
# the status itself lives on the agent row.
STATUS_REASON_TTL_SECONDS = 24 * 3600


def _status_reason_key(agent_id: str) -> str:
    return f"dispatch.status_reason.{agent_id}"


def _presence_on_commit(agent_id: str, status: str, reason: str = "") -> None:
    """Tell the agent's devices the status now in force, with the reason when the agent did not choose it."""

    def remember() -> None:
        try:
            if reason:
                cache.set(_status_reason_key(agent_id), reason, STATUS_REASON_TTL_SECONDS)
            else:
                cache.delete(_status_reason_key(agent_id))
        except Exception:  # the cache is a convenience; the status was saved and is sent regardless
            logger.warning("could not remember the status reason of %s", agent_id, exc_info=True)

    transaction.on_commit(remember, robust=True)
    events.send_on_commit(agent_id, {"type": "presence", "status": status, **({"reason": reason} if reason else {})})


def _status_reason(agent_id: str) -> str | None:
    try:
        reason = cache.get(_status_reason_key(agent_id))
    except Exception:
        logger.warning("could not read the status reason of %s", agent_id, exc_info=True)
        return None
    return reason if isinstance(reason, str) else None


def hello_payload(agent_id: str) -> dict[str, Any]:
    agent = Agent.objects.get(pk=agent_id)
    offer = selectors.pending_offer(agent_id)
    return {
        "type": "hello",
        "agent": {
            "id": agent.id,
            "display_name": agent.display_name,
            "languages": agent.languages,
            "skills": agent.skills,
            "capacity": agent.capacity,
            "approval": agent.approval,
        },
        "payouts": payout_selectors.account_status(agent),
        "status": agent.status,
        "status_reason": None if agent.status == Agent.Status.ONLINE else _status_reason(agent.pk),
        "active_conversations": [conversation_payload(c) for c in selectors.active_conversations(agent_id)],
        "pending_offer": offer_payload(offer) if offer is not None else None,
    }


# --- offers -----------------------------------------------------------------------------


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
            )
    except IntegrityError as exc:  # the partial unique indexes: one open offer per agent and conversation
        raise AgentUnavailable() from exc
    Agent.objects.filter(pk=agent.pk).update(offers_received=F("offers_received") + 1)
    conversation_transition(
        conversation=conversation, to=Conversation.Status.OFFERED, actor="system", data={"offer_id": offer.id}
    )
    events.send_on_commit(agent.pk, offer_payload(offer))
    jobs.enqueue_on_commit(tasks.expire_offer, offer.id, countdown=settings.OFFER_TIMEOUT_SECONDS)
    return offer


def _lock_offer(offer_id: str) -> tuple[Conversation, Offer]:
    """Lock an offer's conversation, then the offer (the fixed order)."""
    conversation_id = Offer.objects.filter(pk=offer_id).values_list("conversation_id", flat=True).first()
    if conversation_id is None:
        raise OfferNotOpen("No such offer.")
    conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
    return conversation, Offer.objects.select_for_update().get(pk=offer_id)


def _close_offer(offer: Offer, state: str, reason: str = "") -> None:
    offer.state = state
    offer.responded_at = timezone.now()
    offer.reason = reason[:200]
    offer.save(update_fields=["state", "responded_at", "reason"])


def _back_to_queue(conversation: Conversation, actor: str, data: dict[str, Any]) -> None:
    """An offered conversation whose offer ended goes back to waiting, and to the next agent."""
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
            or conversation.status != Conversation.Status.OFFERED
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
            _assign(conversation, agent, actor=f"agent:{agent.pk}", data={"offer_id": offer.id}, offer=offer)
            if Agent.objects.filter(pk=agent.pk, active_count__lt=F("capacity")).exists():
                jobs.enqueue_on_commit(tasks.dispatch_agent, agent.pk)  # room for more: offer the next one now
            return conversation
        # Another conversation took the last slot (an admin's reassignment): this offer is over.
        _close_offer(offer, Offer.State.REVOKED, "no capacity left")
        _back_to_queue(conversation, f"agent:{agent.pk}", {"offer_id": offer.id, "reason": "no_capacity"})
        events.send_on_commit(agent.pk, {"type": "offer.revoked", "offer_id": offer.id, "reason": "taken"})
    raise AgentUnavailable("No free capacity left.")


def _assign(
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
        agent.pk, {"type": "conversation.assigned", "conversation": conversation_payload(conversation)}
    )


def offer_decline(*, offer_id: str, agent: Agent, reason: str = "") -> Offer:
    """The agent says no: the conversation goes to the next candidate at once."""
    with transaction.atomic():
        conversation, offer = _lock_offer(offer_id)
        if offer.agent_id != agent.pk or offer.state != Offer.State.PENDING:
            raise OfferNotOpen()
        _close_offer(offer, Offer.State.DECLINED, reason)
        Agent.objects.filter(pk=agent.pk).update(offers_declined=F("offers_declined") + 1, consecutive_misses=0)
        _back_to_queue(conversation, f"agent:{agent.pk}", {"offer_id": offer.id, "declined": reason[:200]})
        jobs.enqueue_on_commit(tasks.dispatch_agent, agent.pk)
    return offer


def offer_expire(*, offer_id: str) -> bool:
    """The timer ran out. Repeated misses set the agent away (and tell them)."""
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
            _presence_on_commit(agent.pk, Agent.Status.AWAY, "missed_offers")
        agent.save(update_fields=fields)
        _back_to_queue(conversation, "system", {"offer_id": offer.id, "expired": True})
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
        _back_to_queue(conversation, "system", {"offer_id": offer.id, "withdrawn": detail})
    return offer


# --- dispatching ------------------------------------------------------------------------


def conversation_dispatch(*, conversation_id: str) -> Offer | None:
    """Offer a queued conversation to the best eligible agent, if any."""
    conversation = Conversation.objects.filter(pk=conversation_id, status=Conversation.Status.QUEUED).first()
    if conversation is None:
        return None
    # First come, first served: while an older conversation waits, a free agent is handed the
    # oldest one it may take (a newcomer's job can run before that of an agent just freed).
    older_waiting = Conversation.objects.filter(
        status=Conversation.Status.QUEUED, queue_key__lt=conversation.queue_key
    ).exists()
    for agent_id in selectors.ranked_candidates(conversation):
        if older_waiting:
            # Each free agent, best first, takes the oldest conversation it may take, until one takes
            # this one: no agent stays idle beside a waiting customer (one offer per job left the
            # newcomer waiting for the sweeper while a second free agent sat idle: bench/queueing.py).
            offer = agent_dispatch(agent_id=agent_id)
            if offer is not None and offer.conversation_id == conversation_id:
                return offer
            continue
        try:
            return offer_create(conversation_id=conversation_id, agent_id=agent_id)
        except AgentUnavailable:
            continue  # someone else was faster; the next candidate
        except OfferNotOpen:
            return None  # offered, assigned or cancelled meanwhile
    return None


def agent_dispatch(*, agent_id: str, wait_for_agent: bool = False) -> Offer | None:
    """An agent has room: offer it the first waiting conversation it may take.

    When several agents free up at once they all want the head of the queue;
    each claims a conversation with SKIP LOCKED and moves on past the ones
    another dispatcher holds, so none of them gives up while work waits.
    `wait_for_agent` (the agent's own job, `tasks.dispatch_agent`) waits for the
    agent's row rather than skip it: skipping it gave up on the only agent the job
    is for, and a freed agent waited for the sweeper (issue 11.3).
    """
    agent = selectors.available_agents().filter(pk=agent_id).first()
    if agent is None:
        return None
    for conversation_id in selectors.conversations_for(agent):
        try:
            with transaction.atomic():
                claimed = (
                    Conversation.objects.select_for_update(skip_locked=True)
                    .filter(pk=conversation_id, status=Conversation.Status.QUEUED)
                    .values_list("pk", flat=True)
                    .first()
                )
                if claimed is None:
                    continue  # another dispatcher has it, or it is no longer waiting
                return offer_create(conversation_id=conversation_id, agent_id=agent_id, wait_for_agent=wait_for_agent)
        except OfferNotOpen:
            continue
        except AgentUnavailable:
            return None  # the agent got an offer or lost its room meanwhile
    return None


def dispatch_sweep(*, limit: int = 200) -> int:
    """Work conservation's safety net: conversations that waited past the events that should
    have placed them get another try, oldest first.

    Covers what no event triggers (the skill filter widening with time) and any
    dispatch job lost with a crashed worker. It costs one query while nobody
    has room, and leaves fresh conversations to their own dispatch jobs.
    """
    if not selectors.available_agents().exists():
        return 0
    stale = timezone.now() - timedelta(seconds=settings.DISPATCH_SWEEP_MIN_WAIT_SECONDS)
    waiting = Conversation.objects.filter(status=Conversation.Status.QUEUED, queued_at__lte=stale).order_by(
        "queue_key", "id"
    )
    offered = 0
    for conversation_id in list(waiting.values_list("pk", flat=True)[:limit]):
        if conversation_dispatch(conversation_id=conversation_id) is not None:
            offered += 1
        elif not selectors.available_agents().exists():
            break
    return offered


def offers_sweep() -> int:
    """Expire every overdue offer (timers are the fast path; this is the safety net)."""
    overdue = Offer.objects.filter(state=Offer.State.PENDING, expires_at__lte=timezone.now()).values_list(
        "pk", flat=True
    )
    return sum(offer_expire(offer_id=offer_id) for offer_id in list(overdue[:500]))


# --- the conversation with the agent ---------------------------------------------------


@transaction.atomic
def conversation_resolve(*, conversation_id: str, agent: Agent, outcome: str, note: str = "") -> Conversation:
    """The agent closes the conversation with an outcome; its slot frees at once."""
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
    assignment = assignment_end(conversation_id=conversation.id, reason=outcome)
    if assignment is not None and outcome == Conversation.Outcome.RESOLVED:
        earnings.earning_accrue_resolution(**selectors.assignment_pay(assignment))  # no pay for `unresolved`
    agent_release_slot(agent.pk)
    callbacks.callback_enqueue(conversation=conversation, type="conversation.resolved", data={"outcome": outcome})
    events.send_on_commit(
        agent.pk, {"type": "conversation.closed", "conversation_id": conversation.id, "reason": outcome}
    )
    jobs.enqueue_on_commit(tasks.dispatch_agent, agent.pk)
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
    # Every device of the agent shows it; the sender recognises its client_id.
    events.send_on_commit(agent.pk, events.message_payload(message))
    return message


def conversation_requeue(*, conversation_id: str, actor: str, reason: str, front: bool = True) -> Conversation:
    """Put an offered or assigned conversation back in the queue, at the front by default.

    Its transcript and messages stay; the next agent sees them all. The agent who
    had it is told, and so is the bot (`conversation.queued` with the reason).
    """
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
        if conversation.status not in (Conversation.Status.OFFERED, Conversation.Status.ASSIGNED):
            raise Conflict(f"A {conversation.status} conversation cannot be re-queued.", code="not_requeueable")
        offers_revoke_for_conversation(conversation=conversation, reason="cancelled")
        previous_agent = conversation.assigned_agent_id if conversation.status == Conversation.Status.ASSIGNED else None
        now = timezone.now()
        conversation.assigned_agent = None
        conversation.queue_key = (
            now - timedelta(seconds=settings.QUEUE_FRONT_HEAD_START_SECONDS)
            if front
            else queue_key_for(conversation.priority, now)
        )
        conversation_transition(
            conversation=conversation,
            to=Conversation.Status.QUEUED,
            actor=actor,
            data={"reason": reason, "previous_agent": previous_agent},
            extra_fields=("assigned_agent", "queue_key"),
        )
        if previous_agent:
            assignment_end(conversation_id=conversation.id, reason=Assignment.End.REQUEUED)
            agent_release_slot(previous_agent)
            events.send_on_commit(
                previous_agent, {"type": "conversation.closed", "conversation_id": conversation.id, "reason": reason}
            )
            jobs.enqueue_on_commit(tasks.dispatch_agent, previous_agent)
            conversation_notify_queued(conversation, reason=reason)
        jobs.enqueue_on_commit(tasks.dispatch_conversation, conversation.id)
    return conversation


@transaction.atomic
def conversation_reassign(*, conversation_id: str, agent_id: str, actor: str) -> Conversation:
    """Admin: give the conversation to this agent now, without an offer."""
    conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
    if conversation.is_closed:
        raise Conflict("The conversation is closed.", code="conversation_closed")
    if conversation.assigned_agent_id == agent_id and conversation.status == Conversation.Status.ASSIGNED:
        return conversation
    offers_revoke_for_conversation(conversation=conversation, reason="taken", detail="reassigned")
    agent = Agent.objects.select_for_update().get(pk=agent_id)
    if agent.approval != Agent.Approval.APPROVED:
        raise AgentUnavailable("The agent is not approved.")
    took_slot = Agent.objects.filter(pk=agent.pk, active_count__lt=F("capacity")).update(
        active_count=F("active_count") + 1, idle_since=None
    )
    if not took_slot:
        raise AgentUnavailable("The agent has no free capacity.")
    previous_agent = conversation.assigned_agent_id if conversation.status == Conversation.Status.ASSIGNED else None
    if previous_agent:
        assignment_end(conversation_id=conversation.id, reason=Assignment.End.REASSIGNED)
        agent_release_slot(previous_agent)
        events.send_on_commit(
            previous_agent, {"type": "conversation.closed", "conversation_id": conversation.id, "reason": "reassigned"}
        )
        jobs.enqueue_on_commit(tasks.dispatch_agent, previous_agent)
    _assign(conversation, agent, actor=actor, data={"reassigned_from": previous_agent})
    return conversation


def assignment_end(*, conversation_id: str, reason: str) -> Assignment | None:
    """Close the conversation's open assignment (the caller holds the conversation's lock)."""
    assignment = Assignment.objects.select_for_update().filter(conversation_id=conversation_id, ended_at=None).first()
    if assignment is not None:
        assignment.ended_at = timezone.now()
        assignment.end_reason = reason
        assignment.save(update_fields=["ended_at", "end_reason"])
    return assignment


def conversation_reopen(*, conversation_id: str, actor: str, reason: str) -> Conversation:
    """The bot says the customer is back: the resolution did not hold.

    The resolution's pay is disputed (voided inside the hold, clawed back after),
    and the conversation waits again at the front of the queue with its history.
    """
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
        window = timedelta(seconds=settings.REOPEN_WINDOW_SECONDS)
        if conversation.status != Conversation.Status.RESOLVED or (
            conversation.resolved_at and conversation.resolved_at + window < timezone.now()
        ):
            raise NotReopenable()
        last = conversation.assignments.order_by("-started_at").first()
        now = timezone.now()
        conversation.outcome = ""
        conversation.rating_score = None
        conversation.rating_comment = ""
        conversation.rated_at = None
        conversation.queue_key = now - timedelta(seconds=settings.QUEUE_FRONT_HEAD_START_SECONDS)
        conversation_transition(
            conversation=conversation,
            to=Conversation.Status.QUEUED,
            actor=actor,
            data={"reason": "reopened", "detail": reason[:200], "previous_agent": last.agent_id if last else None},
            extra_fields=("outcome", "rating_score", "rating_comment", "rated_at", "queue_key"),
        )
        conversation_notify_queued(conversation, reason="reopened")
        jobs.enqueue_on_commit(tasks.dispatch_conversation, conversation.id)
        if last is not None:
            earnings.earnings_dispute_for_assignment(
                assignment_id=last.pk, reason=f"reopened: {reason}" if reason else "reopened", actor=actor
            )
    return conversation


# --- presence ---------------------------------------------------------------------------


def agent_set_status(*, agent_id: str, status: str, actor: str, reason: str = "") -> Agent:
    """online / away / offline, chosen by the agent (on any of its devices) or an admin.

    `reason`, when the agent did not choose it (e.g. `operator`), goes to the app with the status.
    """
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent_id)
        if status == Agent.Status.ONLINE and agent.approval != Agent.Approval.APPROVED:
            raise NotApproved()
        if status == Agent.Status.ONLINE:
            readiness = payout_selectors.payout_readiness(agent)
            if not readiness.ready:
                raise PayoutsNotReady(readiness.detail)
        if agent.status != status:
            now = timezone.now()
            if status == Agent.Status.ONLINE:
                agent.consecutive_misses = 0
                if agent.active_count == 0:
                    agent.idle_since = now  # fairness counts idle time while online
            agent.status = status
            agent.status_changed_at = now
            agent.save(update_fields=["status", "status_changed_at", "consecutive_misses", "idle_since"])
        _presence_on_commit(agent.pk, agent.status, reason)
        if status == Agent.Status.ONLINE:
            jobs.enqueue_on_commit(tasks.dispatch_agent, agent.pk)
    if status != Agent.Status.ONLINE:
        offer_withdraw_for_agent(agent_id=agent_id, detail=f"agent_{status}")
    return agent


class _WorkChanged(Exception):
    """The agent's work changed between reading it and locking it: roll back and read it again."""


def _work_of(agent_id: str) -> set[str]:
    """Ids of the conversations assigned to the agent or offered to it now."""
    assigned = selectors.active_conversations(agent_id).values_list("pk", flat=True)
    offered = Offer.objects.filter(agent_id=agent_id, state=Offer.State.PENDING).values_list(
        "conversation_id", flat=True
    )
    return {*assigned, *offered}


def _with_agent_and_work_locked(agent_id: str, body: Callable[[Agent], T], *, tries: int = 5) -> T:
    """Run `body(agent)` in ONE transaction that holds the locks of the agent's conversations, then the agent's.

    The verb starts from the agent, but the lock order is Conversation, then Offer,
    then Agent: so its work is read without locks, its conversations are locked (in
    id order), then the agent, and the work read again. While the agent's row is held
    nobody can give it more (an offer skips a locked agent; an acceptance waits for
    it), so if the work is still what was locked, it stays so until the commit; if
    it grew in between, everything rolls back and it starts over. Whatever `body`
    does commits together or not at all.
    """
    for _ in range(tries):
        try:
            with transaction.atomic():
                work = _work_of(agent_id)
                list(Conversation.objects.select_for_update().filter(pk__in=work).order_by("pk").values_list("pk"))
                agent = Agent.objects.select_for_update().get(pk=agent_id)
                if not _work_of(agent_id) <= work:
                    raise _WorkChanged()
                return body(agent)
        except _WorkChanged:
            continue
    raise Conflict("The agent's work kept changing; try again.", code="agent_busy")


def agent_release_work(*, agent_id: str, reason: str) -> int:
    """Withdraw the agent's offer and re-queue its conversations at the front.

    Called inside `_with_agent_and_work_locked` (it does not lock on its own in the
    fixed order): one transaction, so the agent never ends up offline with work.
    """
    offer_withdraw_for_agent(agent_id=agent_id, detail=reason)
    conversation_ids = list(selectors.active_conversations(agent_id).values_list("pk", flat=True))
    for conversation_id in conversation_ids:
        conversation_requeue(conversation_id=conversation_id, actor="system", reason=reason, front=True)
    return len(conversation_ids)


def agent_force_offline(*, agent_id: str, actor: str) -> Agent:
    """Admin: take the agent offline now and pass its work on (all or nothing)."""

    def force(agent: Agent) -> Agent:
        agent = agent_set_status(agent_id=agent_id, status=Agent.Status.OFFLINE, actor=actor, reason="operator")
        agent_release_work(agent_id=agent_id, reason="agent_offline")
        return agent

    return _with_agent_and_work_locked(agent_id, force)


def agent_suspend(*, agent_id: str, actor: str) -> Agent:
    """Admin: suspend the agent (it goes offline and cannot come back) and pass its work on (all or nothing)."""

    def suspend(agent: Agent) -> Agent:
        agent = agent_set_approval(agent_id=agent_id, approval=Agent.Approval.SUSPENDED, actor=actor)
        agent_release_work(agent_id=agent_id, reason="agent_suspended")
        return agent

    return _with_agent_and_work_locked(agent_id, suspend)


class TooManySockets(Conflict):
    default_code = "too_many_sockets"
    default_detail = "Too many sockets open for this agent: close one first."


@transaction.atomic
def connection_open(*, agent_id: str, channel_name: str, server_id: str) -> None:
    """Record an open socket; at most AGENT_MAX_SOCKETS per agent (counted under the agent's row lock)."""
    Agent.objects.select_for_update().filter(pk=agent_id).update(disconnected_at=None)
    others = AgentConnection.objects.filter(agent_id=agent_id).exclude(pk=channel_name)
    if others.count() >= settings.AGENT_MAX_SOCKETS:
        raise TooManySockets(f"At most {settings.AGENT_MAX_SOCKETS} sockets per agent: close one first.")
    AgentConnection.objects.update_or_create(
        channel_name=channel_name, defaults={"agent_id": agent_id, "server_id": server_id}
    )


def connection_close(*, channel_name: str) -> None:
    """A socket closed. When it was the agent's last, the grace period starts."""
    with transaction.atomic():
        agent_id = AgentConnection.objects.filter(pk=channel_name).values_list("agent_id", flat=True).first()
        if agent_id is None:
            return
        agent = Agent.objects.select_for_update().get(pk=agent_id)
        AgentConnection.objects.filter(pk=channel_name).delete()
        if AgentConnection.objects.filter(agent_id=agent_id).exists():
            return
        agent.disconnected_at = timezone.now()
        agent.save(update_fields=["disconnected_at"])
        jobs.enqueue_on_commit(tasks.release_if_gone, agent_id, countdown=settings.PRESENCE_GRACE_SECONDS)


def presence_release_if_gone(*, agent_id: str) -> bool:
    """After the grace period: an agent still without a connection goes offline and its work moves on.

    One transaction: the agent goes offline together with the withdrawal of its
    offer and the re-queue of each of its conversations, or nothing happens and
    the agent keeps `disconnected_at`, so the presence sweeper tries again.
    """

    def release(agent: Agent) -> tuple[str, int] | None:
        grace = timedelta(seconds=settings.PRESENCE_GRACE_SECONDS)
        if agent.disconnected_at is None or timezone.now() - agent.disconnected_at < grace:
            return None
        if AgentConnection.objects.filter(agent_id=agent_id).exists():
            return None
        was = agent.status
        agent.disconnected_at = None
        agent.status = Agent.Status.OFFLINE
        agent.status_changed_at = timezone.now()
        agent.save(update_fields=["disconnected_at", "status", "status_changed_at"])
        _presence_on_commit(agent.pk, Agent.Status.OFFLINE, "disconnected")
        return was, agent_release_work(agent_id=agent_id, reason="agent_disconnected")

    released = _with_agent_and_work_locked(agent_id, release)
    if released is None:
        return False
    logger.info("%s gone past the grace period (was %s): offline, %s conversation(s) re-queued", agent_id, *released)
    return True


def server_heartbeat(*, server_id: str) -> None:
    ServerHeartbeat.objects.update_or_create(server_id=server_id, defaults={"seen_at": timezone.now()})


def presence_sweep() -> int:
    """Close the connections of web processes that stopped beating; release agents past grace."""
    cutoff = timezone.now() - timedelta(seconds=settings.SERVER_DEAD_AFTER_SECONDS)
    dead = list(ServerHeartbeat.objects.filter(seen_at__lt=cutoff).values_list("server_id", flat=True))
    closed = 0
    for channel_name in AgentConnection.objects.filter(server_id__in=dead).values_list("pk", flat=True):
        connection_close(channel_name=channel_name)
        closed += 1
    ServerHeartbeat.objects.filter(server_id__in=dead, seen_at__lt=cutoff).delete()
    # Connections whose process never beat at all (it died before its first beat).
    orphans = AgentConnection.objects.exclude(server_id__in=ServerHeartbeat.objects.values("server_id")).filter(
        opened_at__lt=cutoff
    )
    for channel_name in orphans.values_list("pk", flat=True):
        connection_close(channel_name=channel_name)
        closed += 1
    grace_cutoff = timezone.now() - timedelta(seconds=settings.PRESENCE_GRACE_SECONDS)
    for agent_id in Agent.objects.filter(disconnected_at__lt=grace_cutoff).values_list("pk", flat=True):
        try:
            presence_release_if_gone(agent_id=agent_id)
        except Exception:  # nothing of it was written; the next sweep tries again, the others go on now
            logger.exception("releasing %s failed; the next sweep retries", agent_id)
    return closed


def queue_updates_push() -> int:
    """Tell bots of changed queue positions and waits, at most every QUEUE_UPDATE_MIN_SECONDS each."""
    from marketplace import selectors as queue

    cutoff = timezone.now() - timedelta(seconds=settings.QUEUE_UPDATE_MIN_SECONDS)
    pushed = 0
    for conversation_id, estimate in queue.wait_estimates_for_waiting().items():
        with transaction.atomic():
            conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
            if not conversation.is_waiting or (conversation.notified_at and conversation.notified_at > cutoff):
                continue
            if (conversation.notified_position, conversation.notified_wait_seconds) == (
                estimate.queue_position,
                estimate.seconds,
            ):
                continue
            conversation_notify_queued(conversation, estimate=estimate)
            pushed += 1
    return pushed
