"""What is sent to agents' sockets: the offer, the conversation, a message, and `hello`.

Built here and sent by dispatch.events after commit; the socket protocol is documented in
docs/API.md.
"""

from __future__ import annotations

from typing import Any

from marketplace.models import Agent, Conversation, Message
from payouts import selectors as payout_selectors

from . import events, selectors
from .models import ConversationNote, ConversationTransfer, Offer


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
        **(transfer_offer_fields(offer) if offer.transfer_id else {}),
    }


def transfer_offer_fields(offer: Offer) -> dict[str, Any]:
    """A transfer's offer: the note for the next agent, whom it comes from, and (upfront) the handling
    share the first agent earns on top when this one accepts; the offer's own pay is not reduced by it."""
    transfer = offer.transfer
    if transfer is None:
        return {}
    return {
        "transfer_note": transfer.note,
        "transfer": {
            "id": transfer.id,
            "from": {"display_name": transfer.from_agent.display_name},
            "note": transfer.note,
            "to": "agent" if transfer.to_agent_id and not transfer.fallback_reason else "queue",
            "handling_share": handling_share_payload(transfer, with_eligibility=False),
        },
    }


def handling_share_payload(transfer: ConversationTransfer, *, with_eligibility: bool = True) -> dict[str, Any] | None:
    """The transferring agent's handling share as shown upfront: the amount, and (to that agent) whether it
    is earned so far, i.e. it has written to the customer. Paid when another agent accepts."""
    if transfer.handling_amount <= 0:
        return None
    share: dict[str, Any] = {"amount": transfer.handling_amount, "currency": transfer.handling_currency}
    if with_eligibility:
        share["eligible"] = selectors.transfer_author_wrote(transfer)
        share["earned_when"] = "accepted"
    return share


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
        "messages": [message_payload(m)["message"] for m in conversation.messages.all()],
        "notes": [note_payload(n) for n in conversation.notes.all()],
        "assigned_at": _iso(conversation.assigned_at) if conversation.assigned_at else None,
    }


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
        "status_reason": None if agent.status == Agent.Status.ONLINE else events.status_reason(agent.pk),
        "active_conversations": [conversation_payload(c) for c in selectors.active_conversations(agent_id)],
        "pending_offer": offer_payload(offer) if offer is not None else None,
    }


def message_payload(message: Message) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": "message",
        "conversation_id": message.conversation_id,
        "message": {
            "id": message.id,
            "role": message.role,
            "text": message.text,
            "created_at": _iso(message.created_at),
            "client_id": message.client_id,
        },
    }
    if message.role == Message.Role.SUPERVISOR:  # a second human in the chat, by name
        payload["message"]["author"] = {"role": "supervisor", "display_name": message.author_name}
    return payload


def note_payload(note: ConversationNote) -> dict[str, Any]:
    """An internal note as agents see it (`note` frames, `conversation.assigned` `notes`); never the bot."""
    return {
        "id": note.id,
        "kind": note.kind,
        "author": {"role": note.author_role, "display_name": note.author_name},
        "text": note.text,
        "created_at": _iso(note.created_at),
        "client_id": note.client_id,
    }


def note_frame(note: ConversationNote) -> dict[str, Any]:
    return {"type": "note", "conversation_id": note.conversation_id, "note": note_payload(note)}
