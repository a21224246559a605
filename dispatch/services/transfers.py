"""Transfers: an agent hands its conversation to a named agent or to a queue, with a note (docs/API.md).

- To a named agent: that agent alone is offered it (an offer carrying the note and whom it comes
  from, its pay quoted as any offer's). The first agent keeps the conversation, and its slot, until
  the offer is accepted; a decline, a miss or the named agent leaving falls back to the queue.
- To a queue (a language, skills): the first agent is released at once, and the conversation waits
  for an agent who speaks the language and has the skills (dispatch.selectors).

Either way the conversation keeps its queue_key, so its place in line (its age). The bot hears
`conversation.transferred`; the first agent gets `conversation.transferred` when it is released.
When another agent accepts, the first earns its handling share (a share of its own quote, quoted
at the transfer) if it had written to the customer, exactly once (one transfer per assignment, and
the earning is unique per assignment and kind). A transfer counts as neither a decline nor a miss,
nor as a resolution or a non-resolution: the first agent's standing does not move.

Lock order (core.locks): Conversation, then Offer, then Agent; payouts locks its own rows after.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from core import jobs
from marketplace import callbacks
from marketplace.models import Agent, Conversation
from marketplace.services import (
    agent_release_slot,
    conversation_log,
    conversation_notify_queued,
    conversation_transition,
    primary_language,
)
from payouts import pricing
from payouts.services import earnings

from .. import events, payloads, selectors, tasks
from ..models import Assignment, ConversationNote, ConversationTransfer, Offer
from . import notes, offers
from .conversations import assignment_end
from .errors import (
    AgentOffline,
    AgentUnavailable,
    NotAssignedToAgent,
    TransferPending,
    TransferToSelf,
    UnknownAgent,
)


def conversation_transfer(
    *,
    conversation_id: str,
    agent: Agent,
    to_agent: str = "",
    language: str = "",
    skills: list[str] | None = None,
    note: str = "",
) -> ConversationTransfer:
    """The agent holding the conversation transfers it: to the agent named `to_agent` (a username), or
    else to the queue of `language` (blank: the conversation's) and `skills` (each required)."""
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
        if conversation.status != Conversation.Status.ASSIGNED or conversation.assigned_agent_id != agent.pk:
            raise NotAssignedToAgent()
        if ConversationTransfer.objects.filter(conversation=conversation, state__in=ConversationTransfer.OPEN).exists():
            raise TransferPending()
        assignment = Assignment.objects.get(conversation=conversation, ended_at=None)
        target = _named_agent(to_agent, agent) if to_agent else None
        transfer = ConversationTransfer(
            conversation=conversation,
            from_agent=agent,
            from_assignment=assignment,
            note=note,
            handling_amount=pricing.handling_share(assignment.pay_amount),
            handling_currency=assignment.pay_currency,
        )
        actor = f"agent:{agent.pk}"
        if note.strip():  # in the conversation too, for whoever holds it next and for supervisors
            notes.note_file(conversation=conversation, text=note, kind=ConversationNote.Kind.TRANSFER, agent=agent)
        if target is not None:
            transfer.to_agent = target
            transfer.state = ConversationTransfer.State.OFFERED
            transfer.language = conversation.language
            transfer.save(force_insert=True)
            offer = offers.offer_make(conversation=conversation, agent=target, transfer=transfer)
            conversation_log(
                conversation=conversation,
                kind="transfer.requested",
                actor=actor,
                data={"transfer_id": transfer.id, "to": {"agent": to_agent}, "note": note, "offer_id": offer.id},
            )
            events.send_on_commit(
                agent.pk,
                {
                    "type": "conversation.transfer_pending",
                    "conversation_id": conversation.id,
                    "transfer_id": transfer.id,
                    "to": {"agent": to_agent},
                    "expires_at": offer.expires_at.isoformat().replace("+00:00", "Z"),
                    "handling_share": payloads.handling_share_payload(transfer),
                },
            )
            return transfer
        transfer.state = ConversationTransfer.State.QUEUED
        transfer.language = primary_language(language) if language.strip() else conversation.language
        transfer.skills = sorted({s.strip().lower() for s in skills or [] if s.strip()})
        transfer.queued_at = timezone.now()
        transfer.save(force_insert=True)
        conversation_log(
            conversation=conversation,
            kind="transfer.requested",
            actor=actor,
            data={"transfer_id": transfer.id, "to": transfer.to_payload(), "note": note},
        )
        _release_to_queue(conversation, transfer, actor=actor)
        return transfer


def _named_agent(username: str, agent: Agent) -> Agent:
    """The agent to transfer to, locked, able to take an offer now; else a clear refusal."""
    target_id = Agent.objects.filter(user__username=username).values_list("pk", flat=True).first()
    if target_id is None:
        raise UnknownAgent(f"No agent with the username {username[:80]!r}.")
    if target_id == agent.pk:
        raise TransferToSelf()
    # Conversation (held), then Agent: the fixed order. FOR NO KEY UPDATE, as offer_create.
    target = Agent.objects.select_for_update(no_key=True).get(pk=target_id)
    if target.approval != Agent.Approval.APPROVED or target.status != Agent.Status.ONLINE:
        raise AgentOffline(f"{target.display_name} is not online: transfer to another agent or to a queue.")
    if target.active_count >= target.capacity or Offer.objects.filter(agent=target, state=Offer.State.PENDING).exists():
        raise AgentUnavailable(
            f"{target.display_name} has no free slot or is answering another offer: try again shortly, "
            "or transfer to a queue."
        )
    return target


def transfer_fall_back(*, conversation: Conversation, offer: Offer, actor: str) -> None:
    """The named agent declined, missed or left the offer (its offer is closed; the caller holds the
    conversation's lock): the conversation goes to the queue instead, and the first agent is released."""
    transfer = ConversationTransfer.objects.select_for_update().get(pk=offer.transfer_id)
    if transfer.state != ConversationTransfer.State.OFFERED:
        return
    transfer.state = ConversationTransfer.State.QUEUED
    transfer.fallback_reason = {
        Offer.State.DECLINED: "declined",
        Offer.State.EXPIRED: "expired",
    }.get(Offer.State(offer.state), "withdrawn")
    transfer.language = conversation.language
    transfer.skills = []
    transfer.queued_at = timezone.now()
    transfer.save(update_fields=["state", "fallback_reason", "language", "skills", "queued_at"])
    _release_to_queue(conversation, transfer, actor=actor)


def _release_to_queue(conversation: Conversation, transfer: ConversationTransfer, *, actor: str) -> None:
    """The first agent lets go now (a queue transfer, or a fallback): the conversation waits in line
    with its age (queue_key untouched) for an agent of the transfer's queue."""
    _let_go(conversation, transfer, actor=actor)
    conversation.assigned_agent = None
    conversation_transition(
        conversation=conversation,
        to=Conversation.Status.QUEUED,
        actor=actor,
        data={"reason": "transferred", "transfer_id": transfer.id},
        extra_fields=("assigned_agent",),
    )
    conversation_notify_queued(conversation, reason="transferred")
    jobs.enqueue_on_commit(tasks.dispatch_conversation, conversation.id)


def _let_go(conversation: Conversation, transfer: ConversationTransfer, *, actor: str) -> None:
    """End the first agent's spell (neither resolved nor unresolved: its figures do not move), free its
    slot, and tell it, the log and the bot where the conversation went."""
    from_agent_id = transfer.from_agent_id
    assignment_end(conversation_id=conversation.id, reason=Assignment.End.TRANSFERRED)
    agent_release_slot(from_agent_id)
    to = transfer.to_payload()
    named = transfer.to_agent
    fallback = (
        {"agent": named.user.username, "reason": transfer.fallback_reason}
        if named is not None and transfer.fallback_reason
        else None
    )
    conversation_log(
        conversation=conversation,
        kind="transferred",
        actor=actor,
        data={
            "transfer_id": transfer.id,
            "from_agent": from_agent_id,
            "to": to,
            "note": transfer.note,
            **({"fallback": fallback} if fallback else {}),
        },
    )
    bot_data: dict[str, Any] = {"from_agent": {"display_name": transfer.from_agent.display_name}}
    if named is not None and "agent" in to:
        bot_data["to"] = {"agent": {"display_name": named.display_name}}
    else:
        bot_data["to"] = {"queue": {"language": transfer.language}}
    callbacks.callback_enqueue(conversation=conversation, type="conversation.transferred", data=bot_data)
    frame: dict[str, Any] = {
        "type": "conversation.transferred",
        "conversation_id": conversation.id,
        "transfer_id": transfer.id,
        "to": to,
        "handling_share": payloads.handling_share_payload(transfer),
    }
    if fallback:
        frame["fallback"] = fallback
    events.send_on_commit(from_agent_id, frame)
    # For apps that know only this frame: the conversation has left this agent.
    events.send_on_commit(
        from_agent_id, {"type": "conversation.closed", "conversation_id": conversation.id, "reason": "transferred"}
    )
    jobs.enqueue_on_commit(tasks.dispatch_agent, from_agent_id)


def transfer_complete(*, conversation: Conversation, offer: Offer, agent: Agent) -> ConversationTransfer:
    """Another agent accepted the transfer's offer (closed as accepted; the caller holds the conversation's
    lock and assigns it next): the first agent lets go if it still holds it, and earns its share."""
    transfer = (
        ConversationTransfer.objects.select_for_update().select_related("from_assignment").get(pk=offer.transfer_id)
    )
    if transfer.state == ConversationTransfer.State.OFFERED:
        _let_go(conversation, transfer, actor=f"agent:{agent.pk}")
    transfer.state = ConversationTransfer.State.COMPLETED
    transfer.accepted_by = agent
    transfer.ended_at = timezone.now()
    transfer.save(update_fields=["state", "accepted_by", "ended_at"])
    if transfer.handling_amount > 0 and selectors.transfer_author_wrote(transfer):
        earnings.earning_accrue_handling_share(
            assignment_id=transfer.from_assignment_id,
            agent_id=transfer.from_agent_id,
            conversation_id=conversation.id,
            amount=transfer.handling_amount,
            currency=transfer.handling_currency,
            detail={
                "transfer_id": transfer.id,
                "quote": transfer.from_assignment.pay_amount,
                "share_percent": _share_percent(transfer),
                "accepted_by": agent.pk,
            },
        )
    return transfer


def _share_percent(transfer: ConversationTransfer) -> float:
    quote = transfer.from_assignment.pay_amount
    return round(100 * transfer.handling_amount / quote, 2) if quote else 0.0
