"""Help and supervision: an agent asks for help; a supervisor whispers, joins the chat or takes it over."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from dispatch.models import ConversationNote, HelpRequest, Offer
from dispatch.services import conversations, offers, supervision
from dispatch.services import errors as dispatch_errors
from marketplace.models import Agent, CallbackEvent, Conversation, ConversationEvent, Message

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def held(escalate, make_agent, recorded_jobs):
    agent = make_agent()
    conversation = escalate(language="en", topic="billing")
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=Offer.objects.get(conversation=conversation).pk, agent=agent)
    recorded_jobs.clear()
    return conversation, agent


@pytest.fixture
def supervisor(db):
    return get_user_model().objects.create_user(
        "sam", password="sup-pass-123", is_staff=True, first_name="Sam", last_name="Super"
    )


def log_of(conversation: Conversation) -> list[tuple[str, str]]:
    return list(ConversationEvent.objects.filter(conversation=conversation).values_list("kind", "actor"))


def test_a_help_request_raises_a_flag_files_a_note_and_is_logged(held):
    conversation, agent = held
    request = supervision.help_request_raise(conversation_id=conversation.pk, agent=agent, text="Refund over limit?")

    assert request.answered_at is None and request.agent_id == agent.pk
    assert (request.note.kind, request.note.text) == ("help", "Refund over limit?")
    assert ("help_requested", f"agent:{agent.pk}") in log_of(conversation)
    assert not CallbackEvent.objects.filter(conversation=conversation, type__startswith="help").exists()


def test_help_on_someone_elses_or_a_closed_conversation_is_refused(held, make_agent):
    conversation, agent = held
    other = make_agent(username="other")
    with pytest.raises(dispatch_errors.NotAssignedToAgent):
        supervision.help_request_raise(conversation_id=conversation.pk, agent=other, text="help")
    with pytest.raises(dispatch_errors.InvalidNote):
        supervision.help_request_raise(conversation_id=conversation.pk, agent=agent, text=" ")
    with pytest.raises(Conversation.DoesNotExist):
        supervision.help_request_raise(conversation_id="conv_nope", agent=agent, text="help")
    conversations.conversation_resolve(conversation_id=conversation.pk, agent=agent, outcome="resolved")
    with pytest.raises(dispatch_errors.ConversationIsClosed):
        supervision.help_request_raise(conversation_id=conversation.pk, agent=agent, text="help")
    assert not HelpRequest.objects.exists() and not ConversationNote.objects.exists()


def test_a_whisper_is_a_supervisors_note_and_lowers_the_flag(held, supervisor):
    conversation, agent = held
    supervision.help_request_raise(conversation_id=conversation.pk, agent=agent, text="Help")
    callbacks_before = CallbackEvent.objects.filter(conversation=conversation).count()

    note = supervision.supervisor_whisper(conversation_id=conversation.pk, user=supervisor, text="Offer 20% back")

    assert (note.kind, note.author_name, note.author_role, note.agent_id) == (
        "whisper",
        "Sam Super",
        "supervisor",
        None,
    )
    flag = HelpRequest.objects.get()
    assert (flag.answer, flag.answered_by) == ("whisper", "admin:sam") and flag.answered_at is not None
    assert ("supervisor_whisper", "admin:sam") in log_of(conversation)
    assert CallbackEvent.objects.filter(conversation=conversation).count() == callbacks_before
    assert not Message.objects.filter(text__contains="20%").exists()


def test_joining_sends_the_supervisors_messages_to_the_customer_as_a_second_human(held, supervisor):
    conversation, agent = held
    supervision.help_request_raise(conversation_id=conversation.pk, agent=agent, text="Angry customer")

    supervision.supervisor_message(conversation_id=conversation.pk, user=supervisor, text="Hi, I'm Sam, a supervisor.")
    supervision.supervisor_message(conversation_id=conversation.pk, user=supervisor, text="We will refund you today.")

    messages = list(Message.objects.filter(conversation=conversation, role="supervisor"))
    assert [m.author_name for m in messages] == ["Sam Super", "Sam Super"]
    sent = [e.payload["data"] for e in CallbackEvent.objects.filter(conversation=conversation, type="message.created")]
    assert [d["text"] for d in sent] == ["Hi, I'm Sam, a supervisor.", "We will refund you today."]
    assert sent[0]["author"] == {"role": "supervisor", "display_name": "Sam Super"}
    assert sent[0]["agent"] == {"display_name": "Sam Super"}
    kinds = [kind for kind, actor in log_of(conversation) if actor == "admin:sam"]
    assert kinds == ["supervisor_joined", "supervisor_message", "supervisor_message"]
    assert HelpRequest.objects.get().answer == "join"
    # the agent is still on it
    conversation.refresh_from_db()
    assert conversation.assigned_agent_id == agent.pk


def test_joining_a_conversation_without_an_agent_or_with_nothing_to_say_is_refused(held, supervisor, escalate):
    conversation, _ = held
    waiting = escalate(language="en", external_id="waiting-1")
    with pytest.raises(dispatch_errors.NotAssignedToAgent):
        supervision.supervisor_message(conversation_id=waiting.pk, user=supervisor, text="Hello")
    with pytest.raises(dispatch_errors.InvalidNote):
        supervision.supervisor_message(conversation_id=conversation.pk, user=supervisor, text="  ")
    assert not Message.objects.filter(role="supervisor").exists()


def test_take_over_without_an_agent_profile_puts_it_first_in_line(held, supervisor, escalate):
    conversation, agent = held
    supervision.help_request_raise(conversation_id=conversation.pk, agent=agent, text="Take it please")
    earlier = escalate(language="en", external_id="earlier")  # waiting already

    to = supervision.conversation_take_over(conversation_id=conversation.pk, user=supervisor)

    assert to == "queue"
    conversation.refresh_from_db()
    agent.refresh_from_db()
    earlier.refresh_from_db()
    assert conversation.status == "queued" and conversation.assigned_agent_id is None
    assert conversation.queue_key < earlier.queue_key  # first in line
    assert agent.active_count == 0
    assert HelpRequest.objects.get().answer == "take_over"
    assert ("supervisor_take_over", "admin:sam") in log_of(conversation)
    assert ConversationEvent.objects.get(conversation=conversation, kind="supervisor_take_over").data == {"to": "queue"}


def test_take_over_by_a_supervisor_who_is_an_agent_gives_it_to_them(held, make_agent):
    conversation, agent = held
    boss = make_agent(username="boss")
    get_user_model().objects.filter(pk=boss.user_id).update(is_staff=True)

    to = supervision.conversation_take_over(conversation_id=conversation.pk, user=boss.user)

    assert to == f"agent:{boss.pk}"
    conversation.refresh_from_db()
    assert conversation.assigned_agent_id == boss.pk and conversation.status == "assigned"
    assert Agent.objects.get(pk=agent.pk).active_count == 0
    assert ("supervisor_take_over", "admin:boss") in log_of(conversation)


def test_supervisor_actions_on_a_closed_conversation_are_refused(held, supervisor):
    conversation, agent = held
    conversations.conversation_resolve(conversation_id=conversation.pk, agent=agent, outcome="resolved")
    for action in (supervision.supervisor_whisper, supervision.supervisor_message):
        with pytest.raises(dispatch_errors.ConversationIsClosed):
            action(conversation_id=conversation.pk, user=supervisor, text="x")
    with pytest.raises(dispatch_errors.ConversationIsClosed):
        supervision.conversation_take_over(conversation_id=conversation.pk, user=supervisor)
    assert not ConversationEvent.objects.filter(kind__startswith="supervisor").exists()
