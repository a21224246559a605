"""The verbs that start and end a conversation from the bot's side: escalate, a customer's message,
cancel, rate, and the queue updates the bot is sent while it waits. They live here, at the top,
because each one reaches dispatch (jobs, offers, agents' sockets) or payouts (a rating's bonus);
marketplace keeps the rows and the event log they write.

Lock order, everywhere (core.locks): Conversation, then Offer, then Agent. Side effects (callbacks
to the bot, messages to agents, background jobs) are sent only after the transaction commits.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core import jobs
from marketplace import callbacks
from marketplace import selectors as marketplace_selectors
from marketplace import services as marketplace_services
from marketplace.models import Agent, BotIntegration, Conversation, Message
from payouts.services import earnings

from .. import events, payloads, selectors, tasks
from . import admission, conversations, offers


def conversation_escalate(
    *, integration: BotIntegration, data: marketplace_services.EscalationInput
) -> tuple[Conversation, bool]:
    """Create the conversation, or return the existing one for this external_id and this same body.

    Idempotent even when the same escalation arrives twice at the same moment:
    the unique constraint on (integration, external_id) lets one insert win and
    the other return the winner's row. The same external_id with another body is
    a 409 (`idempotency_mismatch`), as Stripe answers an idempotency key reused.

    A new one is refused (503 `overloaded`, nothing stored) when it would wait past the SLA
    (admission.py); a replay is answered as above whatever the queue.
    """
    fingerprint = marketplace_services.escalation_fingerprint(data)
    existing = Conversation.objects.filter(integration=integration, external_id=data.external_id).first()
    if existing is not None:
        return marketplace_services.same_request(existing, fingerprint), False
    admission.check_admission(language=marketplace_services.primary_language(data.language), priority=data.priority)
    try:
        with transaction.atomic():
            now = timezone.now()
            conversation = Conversation.objects.create(
                integration=integration,
                external_id=data.external_id,
                language=marketplace_services.primary_language(data.language),
                topic=data.topic.lower(),
                priority=data.priority,
                reason=data.reason,
                customer=data.customer or {},
                summary=data.summary,
                transcript=data.transcript or [],
                request_hash=fingerprint,
                status=Conversation.Status.QUEUED,
                queued_at=now,
                queue_key=marketplace_services.queue_key_for(data.priority, now),
            )
            marketplace_services.conversation_log(
                conversation=conversation,
                kind="status.queued",
                actor=f"bot:{integration.id}",
                data={"reason": data.reason},
                from_status="new",
            )
            marketplace_services.conversation_notify_queued(conversation)
            jobs.enqueue_on_commit(tasks.dispatch_conversation, conversation.pk)
    except IntegrityError:
        winner = Conversation.objects.filter(integration=integration, external_id=data.external_id).first()
        if winner is None:
            raise  # another constraint than the duplicate external_id: say which, not "no such row"
        return marketplace_services.same_request(winner, fingerprint), False
    return conversation, True


def _locked(conversation_id: str) -> Conversation:
    return Conversation.objects.select_for_update().get(pk=conversation_id)


def conversation_add_customer_message(
    *, conversation: Conversation, text: str, external_message_id: str | None
) -> tuple[Message, bool]:
    """A customer's message from the bot. Idempotent on external_message_id."""
    if external_message_id:
        existing = Message.objects.filter(conversation=conversation, external_id=external_message_id).first()
        if existing is not None:
            return existing, False
    try:
        with transaction.atomic():
            locked = _locked(conversation.pk)
            if locked.is_closed:
                raise marketplace_services.ConversationClosed()
            message = Message.objects.create(
                conversation=locked, role=Message.Role.CUSTOMER, text=text, external_id=external_message_id or None
            )
            if locked.status == Conversation.Status.ASSIGNED and locked.assigned_agent_id:
                events.send_on_commit(locked.assigned_agent_id, payloads.message_payload(message))
    except IntegrityError:
        return Message.objects.get(conversation=conversation, external_id=external_message_id), False
    return message, True


@transaction.atomic
def conversation_cancel(*, conversation_id: str, actor: str, reason: str = "customer_left") -> Conversation:
    """The customer left: withdraw any offer, free the agent, tell everyone.

    On a conversation that is already closed (cancelled, resolved, abandoned)
    it changes nothing and returns it as it is: the customer leaving after the
    end is not an error.
    """
    conversation = _locked(conversation_id)
    if conversation.is_closed:
        return conversation
    offers.offers_revoke_for_conversation(conversation=conversation, reason="cancelled")
    agent_id = conversation.assigned_agent_id if conversation.status == Conversation.Status.ASSIGNED else None
    marketplace_services.conversation_transition(
        conversation=conversation, to=Conversation.Status.CANCELLED, actor=actor, data={"reason": reason}
    )
    if agent_id:
        conversations.assignment_end(conversation_id=conversation.id, reason="cancelled")
        marketplace_services.agent_release_slot(agent_id)
        events.send_on_commit(
            agent_id,
            # `detail`: why it was cancelled (customer_left, abandoned, admin): the app tells an operator's apart.
            {
                "type": "conversation.closed",
                "conversation_id": conversation.id,
                "reason": "cancelled",
                "detail": reason,
            },
        )
    callbacks.callback_enqueue(conversation=conversation, type="conversation.cancelled", data={"reason": reason})
    return conversation


@transaction.atomic
def conversation_rate(*, conversation_id: str, score: int, comment: str, actor: str) -> Conversation:
    """The customer's rating, once, after resolution."""
    conversation = _locked(conversation_id)
    if conversation.status != Conversation.Status.RESOLVED:
        raise marketplace_services.NotResolved()
    if conversation.rating_score is not None:
        raise marketplace_services.AlreadyRated()
    conversation.rating_score = score
    conversation.rating_comment = comment
    conversation.rated_at = timezone.now()
    conversation.save(update_fields=["rating_score", "rating_comment", "rated_at", "updated_at"])
    if conversation.assigned_agent_id:
        Agent.objects.filter(pk=conversation.assigned_agent_id).update(
            rating_count=F("rating_count") + 1, rating_sum=F("rating_sum") + score
        )
    marketplace_services.conversation_log(conversation=conversation, kind="rated", actor=actor, data={"score": score})
    earnings.earning_accrue_bonus(
        conversation=conversation, score=score, quality_bonuses=selectors.quality_bonuses(conversation.pk)
    )
    return conversation


def queue_updates_push() -> int:
    """Tell bots of changed queue positions and waits, at most every QUEUE_UPDATE_MIN_SECONDS each."""
    cutoff = timezone.now() - timedelta(seconds=settings.QUEUE_UPDATE_MIN_SECONDS)
    pushed = 0
    for conversation_id, estimate in marketplace_selectors.wait_estimates_for_waiting().items():
        with transaction.atomic():
            conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
            if not conversation.is_waiting or (conversation.notified_at and conversation.notified_at > cutoff):
                continue
            if (conversation.notified_position, conversation.notified_wait_seconds) == (
                estimate.queue_position,
                estimate.seconds,
            ):
                continue
            marketplace_services.conversation_notify_queued(conversation, estimate=estimate)
            pushed += 1
    return pushed
