"""Help and supervision: an agent asks for help; a supervisor whispers, joins the chat or takes it over.

A help request raises a flag on the admin live page (an open HelpRequest) and files a `help` note
the conversation's agents see. Whatever a supervisor does on the conversation lowers the flags it
has open. Every step is in the conversation's event log, the supervisor's as `admin:<username>`.

Supervisors are staff users and need not be agents: a whisper is a note in their name, a join is a
message to the customer in their name (role `supervisor`), and a take-over gives the conversation to
the agent the supervisor chooses (by default the supervisor's own approved agent profile), or puts it
back first in line for the next agent (docs/API.md, "Help and supervision").
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from marketplace import callbacks
from marketplace.models import Agent, Conversation, Message
from marketplace.services import conversation_log

from .. import events, payloads
from ..models import ConversationNote, HelpRequest
from . import conversations, notes
from .errors import AgentUnavailable, ConversationIsClosed, InvalidNote, NotAssignedToAgent

MESSAGE_MAX_LENGTH = 20_000


def supervisor_actor(user: Any) -> str:
    return f"admin:{user.get_username()}"


def _lock_open(conversation_id: str) -> Conversation:
    conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
    if conversation.is_closed:
        raise ConversationIsClosed()
    return conversation


def help_requests_answer(*, conversation: Conversation, actor: str, answer: str) -> int:
    """Lower the conversation's open help flags (the caller holds its lock); how many were open."""
    return HelpRequest.objects.filter(conversation=conversation, answered_at=None).update(
        answered_at=timezone.now(), answered_by=actor[:80], answer=answer
    )


@transaction.atomic
def help_request_raise(*, conversation_id: str, agent: Agent, text: str) -> HelpRequest:
    """The agent holding the conversation asks a supervisor for help: a flag on the live page and a note."""
    conversation = _lock_open(conversation_id)
    if conversation.status != Conversation.Status.ASSIGNED or conversation.assigned_agent_id != agent.pk:
        raise NotAssignedToAgent()
    note = notes.note_file(conversation=conversation, text=text, kind=ConversationNote.Kind.HELP, agent=agent)
    request = HelpRequest.objects.create(conversation=conversation, agent=agent, note=note)
    conversation_log(
        conversation=conversation,
        kind="help_requested",
        actor=f"agent:{agent.pk}",
        data={"help_request_id": request.pk, "note_id": note.pk, "text": note.text[:200]},
    )
    return request


@transaction.atomic
def supervisor_whisper(*, conversation_id: str, user: Any, text: str) -> ConversationNote:
    """A supervisor's note to the conversation's agent (pushed live); the customer and the bot never see it."""
    conversation = _lock_open(conversation_id)
    note = notes.note_file(conversation=conversation, text=text, kind=ConversationNote.Kind.WHISPER, supervisor=user)
    actor = supervisor_actor(user)
    help_requests_answer(conversation=conversation, actor=actor, answer=HelpRequest.Answer.WHISPER)
    conversation_log(conversation=conversation, kind="supervisor_whisper", actor=actor, data={"note_id": note.pk})
    return note


@transaction.atomic
def supervisor_message(*, conversation_id: str, user: Any, text: str) -> Message:
    """A supervisor joins the chat: a message to the customer in the supervisor's name.

    The bot gets it as `message.created` with `data.author.role` `supervisor` (a second human);
    the agent sees it live as a `message` with role `supervisor`.
    """
    conversation = _lock_open(conversation_id)
    if conversation.status != Conversation.Status.ASSIGNED:
        raise NotAssignedToAgent("Only a conversation with an agent can be joined.")
    cleaned = (text or "").strip()
    if not cleaned or len(cleaned) > MESSAGE_MAX_LENGTH or "\x00" in cleaned:
        raise InvalidNote(f"text: a non-empty text of at most {MESSAGE_MAX_LENGTH} characters.")
    actor = supervisor_actor(user)
    name = notes.supervisor_name(user)
    if not conversation.events.filter(kind="supervisor_joined", actor=actor).exists():
        conversation_log(conversation=conversation, kind="supervisor_joined", actor=actor, data={"name": name})
    message = Message.objects.create(
        conversation=conversation, role=Message.Role.SUPERVISOR, text=cleaned, author_name=name
    )
    callbacks.callback_enqueue(
        conversation=conversation,
        type="message.created",
        data={
            "message_id": message.id,
            "text": cleaned,
            "created_at": message.created_at,
            "agent": {"display_name": name},
            "author": {"role": "supervisor", "display_name": name},
        },
    )
    help_requests_answer(conversation=conversation, actor=actor, answer=HelpRequest.Answer.JOIN)
    conversation_log(conversation=conversation, kind="supervisor_message", actor=actor, data={"message_id": message.pk})
    if conversation.assigned_agent_id:
        events.send_on_commit(conversation.assigned_agent_id, payloads.message_payload(message))
    return message


@transaction.atomic
def conversation_take_over(*, conversation_id: str, user: Any, to: str = "") -> str:
    """A supervisor takes the conversation from its agent; says where it went (`agent:<id>` or `queue`).

    `to` is an agent's id (given to that agent now, as an admin reassignment: it needs a free slot),
    `queue` (back to the queue, first in line, for the next free agent who fits), or empty: the
    supervisor's own approved agent profile when there is one (answer in the agent app), else the
    queue. The agent it leaves gets `conversation.closed` either way (`reassigned` or `requeued`).
    """
    conversation = _lock_open(conversation_id)
    actor = supervisor_actor(user)
    if not to:
        own = Agent.objects.filter(user=user, approval=Agent.Approval.APPROVED).values_list("pk", flat=True).first()
        to = own or "queue"
    if to == "queue":
        conversations.conversation_requeue(conversation_id=conversation.pk, actor=actor, reason="requeued")
        where = "queue"
    else:
        if not Agent.objects.filter(pk=to).exists():
            raise AgentUnavailable("No such agent.")
        conversations.conversation_reassign(conversation_id=conversation.pk, agent_id=to, actor=actor)
        where = f"agent:{to}"
    conversation.refresh_from_db()
    help_requests_answer(conversation=conversation, actor=actor, answer=HelpRequest.Answer.TAKE_OVER)
    conversation_log(conversation=conversation, kind="supervisor_take_over", actor=actor, data={"to": where})
    return where
