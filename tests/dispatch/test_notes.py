"""Internal notes: written by the conversation's agent, seen by its later agents, never by the bot."""

from __future__ import annotations

import json

import pytest

from dispatch import payloads
from dispatch.models import ConversationNote, Offer
from dispatch.services import conversations, notes, offers
from dispatch.services import errors as dispatch_errors
from marketplace.models import CallbackEvent, Conversation, ConversationEvent, Message

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "Customer sounds like a known fraud pattern; check ticket 88"


@pytest.fixture
def held(escalate, make_agent, recorded_jobs):
    """A conversation assigned to an agent, and that agent."""
    agent = make_agent()
    conversation = escalate(language="en", topic="billing", transcript=[{"role": "customer", "text": "Hi"}])
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=Offer.objects.get(conversation=conversation).pk, agent=agent)
    recorded_jobs.clear()
    return conversation, agent


def test_an_agent_adds_a_note_to_its_conversation(held):
    conversation, agent = held
    callbacks_before = CallbackEvent.objects.filter(conversation=conversation).count()

    note = notes.conversation_note_add(
        conversation_id=conversation.pk, agent=agent, text=f"  {SECRET} ", client_id="n-1"
    )

    assert (note.kind, note.text, note.agent_id, note.author_name) == ("note", SECRET, agent.pk, agent.display_name)
    assert note.id.startswith("note_")
    # then: nothing for the bot, nothing in the chat
    assert CallbackEvent.objects.filter(conversation=conversation).count() == callbacks_before
    assert not Message.objects.filter(text__contains="fraud").exists()
    payload = payloads.note_payload(note)
    assert payload["author"] == {"role": "agent", "display_name": agent.display_name}
    assert payload["created_at"].endswith("Z") and payload["kind"] == "note"


def test_a_note_sent_twice_with_one_client_id_is_stored_once(held):
    conversation, agent = held
    first = notes.conversation_note_add(conversation_id=conversation.pk, agent=agent, text="one", client_id="n-1")
    again = notes.conversation_note_add(conversation_id=conversation.pk, agent=agent, text="one", client_id="n-1")
    assert first.pk == again.pk
    assert ConversationNote.objects.filter(conversation=conversation).count() == 1


def test_a_note_on_someone_elses_conversation_is_refused_and_nothing_is_stored(held, make_agent):
    conversation, _ = held
    other = make_agent(username="other")
    with pytest.raises(dispatch_errors.NotAssignedToAgent):
        notes.conversation_note_add(conversation_id=conversation.pk, agent=other, text="mine?", client_id="x-1")
    assert not ConversationNote.objects.exists()


def test_a_resent_client_id_of_another_agent_does_not_show_that_agents_note(held, make_agent):
    conversation, agent = held
    notes.conversation_note_add(conversation_id=conversation.pk, agent=agent, text=SECRET, client_id="n-1")
    other = make_agent(username="other")
    with pytest.raises(dispatch_errors.NotAssignedToAgent):
        notes.conversation_note_add(conversation_id=conversation.pk, agent=other, text="x", client_id="n-1")


def test_a_note_on_a_closed_or_unknown_conversation_is_refused(held):
    conversation, agent = held
    with pytest.raises(Conversation.DoesNotExist):
        notes.conversation_note_add(conversation_id="conv_nope", agent=agent, text="x", client_id="n-1")
    conversations.conversation_resolve(conversation_id=conversation.pk, agent=agent, outcome="resolved")
    with pytest.raises(dispatch_errors.ConversationIsClosed):
        notes.conversation_note_add(conversation_id=conversation.pk, agent=agent, text="late", client_id="n-2")
    assert not ConversationNote.objects.exists()


@pytest.mark.parametrize("text", ["", "   \n", "x" * (notes.NOTE_MAX_LENGTH + 1), "a\x00b"])
def test_an_empty_or_oversized_note_is_refused(held, text):
    conversation, agent = held
    with pytest.raises(dispatch_errors.InvalidNote):
        notes.conversation_note_add(conversation_id=conversation.pk, agent=agent, text=text, client_id="n-1")
    assert not ConversationNote.objects.exists()


def test_later_assignees_get_every_note_with_the_conversation(held, make_agent):
    conversation, first = held
    notes.conversation_note_add(
        conversation_id=conversation.pk, agent=first, text="Asked for the invoice", client_id="a"
    )
    notes.conversation_note_add(conversation_id=conversation.pk, agent=first, text=SECRET, client_id="b")
    # given: the conversation moves on to another agent
    second = make_agent(username="second")
    conversations.conversation_reassign(conversation_id=conversation.pk, agent_id=second.pk, actor="admin:ops")

    payload = payloads.conversation_payload(Conversation.objects.get(pk=conversation.pk))
    assert [n["text"] for n in payload["notes"]] == ["Asked for the invoice", SECRET]
    assert all(n["author"]["display_name"] == first.display_name for n in payload["notes"])
    assert SECRET not in json.dumps(payload["messages"])  # notes are not chat messages
    hello = payloads.hello_payload(second.pk)
    assert [n["text"] for n in hello["active_conversations"][0]["notes"]] == ["Asked for the invoice", SECRET]


def test_note_file_takes_a_transfer_note_from_its_verb(held):
    """Another verb (a transfer) files its note through note_file while it holds the conversation."""
    conversation, agent = held
    from django.db import transaction

    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        note = notes.note_file(conversation=locked, text="Over to billing", kind="transfer", agent=agent)
    assert ConversationNote.objects.get(pk=note.pk).kind == "transfer"
    assert not ConversationEvent.objects.filter(kind__contains="note").exists()  # the verb logs its own event
