"""Internal notes on a conversation: written by its agents and by supervisors, never sent to the bot.

A note is a ConversationNote row, not a Message: nothing that reaches the bot or the customer
(callbacks, the escalation's answer, `message` frames) reads that table. The assigned agent gets
each note live (`note`); a later assignee gets them all in `conversation.assigned` `notes` (and in
`hello`); supervisors see them in admin.

`note_file` is the one way a note is written and pushed, for any verb that files one (a transfer's
note, a help request, a whisper) while it holds the conversation's lock.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from marketplace.models import Agent, Conversation

from .. import events, payloads
from ..models import ConversationNote
from .errors import ConversationIsClosed, InvalidNote, NotAssignedToAgent

NOTE_MAX_LENGTH = 5_000


def note_text(text: str) -> str:
    """The note's text as stored: stripped of surrounding blanks, not empty, not over NOTE_MAX_LENGTH."""
    cleaned = (text or "").strip()
    if not cleaned:
        raise InvalidNote("text: a non-empty string is required.")
    if len(cleaned) > NOTE_MAX_LENGTH:
        raise InvalidNote(f"text: at most {NOTE_MAX_LENGTH} characters.")
    if "\x00" in cleaned:
        raise InvalidNote("text: NUL characters are not allowed.")
    return cleaned


def note_recipients(conversation: Conversation) -> list[str]:
    """The agents working the conversation now, who see its notes live: its assigned agent."""
    if conversation.status == Conversation.Status.ASSIGNED and conversation.assigned_agent_id:
        return [conversation.assigned_agent_id]
    return []


def note_send_on_commit(note: ConversationNote, *, also: tuple[str, ...] = ()) -> None:
    """Push the note to every agent on its conversation (and to `also`), after commit."""
    frame = payloads.note_frame(note)
    for agent_id in dict.fromkeys([*note_recipients(note.conversation), *also]):
        events.send_on_commit(agent_id, frame)


def note_file(
    *,
    conversation: Conversation,
    text: str,
    kind: str = ConversationNote.Kind.NOTE,
    agent: Agent | None = None,
    supervisor: Any = None,
    client_id: str | None = None,
) -> ConversationNote:
    """Write a note on a conversation the caller has locked and push it to its agents after commit.

    The author is an agent or a supervisor (a staff user). No check of who may write: the
    caller's verb has made it (conversation_note_add, a transfer, a supervisor's whisper).
    """
    if (agent is None) == (supervisor is None):
        raise ValueError("a note has one author: an agent or a supervisor")
    note = ConversationNote.objects.create(
        conversation=conversation,
        kind=kind,
        text=note_text(text),
        agent=agent,
        supervisor=supervisor,
        author_name=agent.display_name if agent is not None else supervisor_name(supervisor),
        client_id=client_id,
    )
    # The author's devices show it too, even when it no longer holds the conversation (a transfer's note).
    note_send_on_commit(note, also=(agent.pk,) if agent is not None else ())
    return note


def supervisor_name(user: Any) -> str:
    return (user.get_full_name() or user.get_username())[:150]


def _holds(conversation: Conversation, agent: Agent) -> bool:
    return conversation.status == Conversation.Status.ASSIGNED and conversation.assigned_agent_id == agent.pk


@transaction.atomic
def conversation_note_add(*, conversation_id: str, agent: Agent, text: str, client_id: str) -> ConversationNote:
    """An agent's internal note on a conversation it holds; deduped on the app's client_id."""
    conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
    existing = ConversationNote.objects.filter(conversation=conversation, client_id=client_id).first()
    if existing is not None:
        if existing.agent_id != agent.pk:  # another agent's key: not this agent's note to see
            raise NotAssignedToAgent()
        return existing
    if conversation.is_closed:
        raise ConversationIsClosed()
    if not _holds(conversation, agent):
        raise NotAssignedToAgent()
    return note_file(conversation=conversation, text=text, agent=agent, client_id=client_id)
