"""The conversation with its agent: messages, resolution, re-queue, reassignment, reopening.

Lock order (core.locks): Conversation, then Offer, then Agent. Payouts is told plain values (an
assignment's id and quote) and locks its own rows after these.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from core import jobs
from core.errors import Conflict
from marketplace import callbacks
from marketplace.models import Agent, Conversation, Message
from marketplace.services import (
    agent_release_slot,
    conversation_notify_queued,
    conversation_transition,
    queue_key_for,
)
from payouts.services import earnings

from .. import events, payloads, selectors, tasks
from ..models import Assignment, ConversationTransfer, Offer
from . import matching, offers
from .errors import (
    AgentUnavailable,
    NotAssignedToAgent,
    NotReopenable,
)

logger = logging.getLogger(__name__)


@transaction.atomic
def conversation_resolve(*, conversation_id: str, agent: Agent, outcome: str, note: str = "") -> Conversation:
    """The agent closes the conversation with an outcome; its slot frees at once."""
    conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
    if conversation.status != Conversation.Status.ASSIGNED or conversation.assigned_agent_id != agent.pk:
        raise NotAssignedToAgent()
    if ConversationTransfer.objects.filter(
        conversation=conversation, state=ConversationTransfer.State.OFFERED
    ).exists():
        # The agent finished it after all: its transfer, not yet accepted, is withdrawn.
        offers.offers_revoke_for_conversation(conversation=conversation, reason="cancelled", detail="resolved")
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
    if _next_offer_now(agent.pk) is None:
        jobs.enqueue_on_commit(tasks.dispatch_agent, agent.pk)
    return conversation


def _next_offer_now(agent_id: str) -> Offer | None:
    """The freed agent's next offer, made in the resolve's own transaction and sent on its commit.

    The hand-off from a resolution to the next offer then costs no job and no second
    transaction (issue 13: it was ~30 ms, and a queue's every wait pays it). The agent's row
    is already this transaction's, and the next conversation is claimed with SKIP LOCKED, so
    nothing here waits on another transaction's lock. When there is nothing to offer (or the
    attempt fails), the agent's dispatch job runs after the commit as before: it also sees the
    conversations that arrive while this transaction is open.
    """
    try:
        with transaction.atomic():
            return matching.agent_dispatch(agent_id=agent_id)
    except DatabaseError:
        logger.warning("the next offer for %s is left to its dispatch job", agent_id, exc_info=True)
        return None


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
    events.send_on_commit(agent.pk, payloads.message_payload(message))
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
        offers.offers_revoke_for_conversation(conversation=conversation, reason="cancelled")
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
    offers.offers_revoke_for_conversation(conversation=conversation, reason="taken", detail="reassigned")
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
    offers.assign(conversation, agent, actor=actor, data={"reassigned_from": previous_agent})
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
