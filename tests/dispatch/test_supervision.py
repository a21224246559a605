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


def test_take_over_to_a_chosen_agent_or_the_queue(held, supervisor, make_agent):
    conversation, agent = held
    other = make_agent(username="other")
    with pytest.raises(dispatch_errors.AgentUnavailable):
        supervision.conversation_take_over(conversation_id=conversation.pk, user=supervisor, to="agt_nobody")
    assert not ConversationEvent.objects.filter(kind="supervisor_take_over").exists()

    assert supervision.conversation_take_over(conversation_id=conversation.pk, user=supervisor, to=other.pk) == (
        f"agent:{other.pk}"
    )
    conversation.refresh_from_db()
    assert conversation.assigned_agent_id == other.pk
    assert supervision.conversation_take_over(conversation_id=conversation.pk, user=supervisor, to="queue") == "queue"
    conversation.refresh_from_db()
    assert conversation.status == "queued"


def test_supervisor_actions_on_a_closed_conversation_are_refused(held, supervisor):
    conversation, agent = held
    conversations.conversation_resolve(conversation_id=conversation.pk, agent=agent, outcome="resolved")
    for action in (supervision.supervisor_whisper, supervision.supervisor_message):
        with pytest.raises(dispatch_errors.ConversationIsClosed):
            action(conversation_id=conversation.pk, user=supervisor, text="x")
    with pytest.raises(dispatch_errors.ConversationIsClosed):
        supervision.conversation_take_over(conversation_id=conversation.pk, user=supervisor)
    assert not ConversationEvent.objects.filter(kind__startswith="supervisor").exists()


# --- from admin: the live page's flag and the supervise page ---------------------------------------


def supervise_url(conversation: Conversation) -> str:
    from django.urls import reverse

    return reverse("admin:dispatch_supervise", args=[conversation.pk])


def test_the_live_page_flags_help_until_a_supervisor_acts(admin_client, held):
    from django.urls import reverse

    conversation, agent = held
    live = reverse("admin:dispatch_live")
    assert b"Nobody is asking for help" in admin_client.get(live).content

    supervision.help_request_raise(conversation_id=conversation.pk, agent=agent, text="Refund over the limit?")
    html = admin_client.get(live).content.decode()
    assert "Refund over the limit?" in html and agent.display_name in html
    assert supervise_url(conversation) in html

    admin_client.post(supervise_url(conversation), {"do": "whisper", "text": "Go ahead"})
    assert b"Nobody is asking for help" in admin_client.get(live).content


def test_the_supervise_page_shows_the_chat_and_the_notes_and_whispers(admin_client, admin_user, held):
    conversation, agent = held
    supervision.help_request_raise(conversation_id=conversation.pk, agent=agent, text="Help me")

    response = admin_client.post(supervise_url(conversation), {"do": "whisper", "text": "Offer a voucher"}, follow=True)

    assert response.status_code == 200
    html = response.content.decode()
    assert "Whispered to the agent." in html and "Offer a voucher" in html and "Help me" in html
    note = ConversationNote.objects.get(kind="whisper")
    assert (note.text, note.supervisor_id, note.author_name) == ("Offer a voucher", admin_user.pk, "admin")
    assert ConversationEvent.objects.filter(
        conversation=conversation, kind="supervisor_whisper", actor="admin:admin"
    ).exists()
    # the conversation's admin record links here and lists the notes
    from django.contrib.admin.utils import quote
    from django.urls import reverse

    change = admin_client.get(reverse("admin:marketplace_conversation_change", args=[quote(conversation.pk)]))
    assert supervise_url(conversation) in change.content.decode() and "Offer a voucher" in change.content.decode()


def test_join_and_take_over_from_the_supervise_page(admin_client, held):
    conversation, agent = held
    admin_client.post(supervise_url(conversation), {"do": "message", "text": "Hello, I am a supervisor"})
    message = Message.objects.get(conversation=conversation, role="supervisor")
    assert message.text == "Hello, I am a supervisor"
    assert CallbackEvent.objects.filter(conversation=conversation, type="message.created").count() == 1

    page = admin_client.get(supervise_url(conversation)).content.decode()
    assert "Back to the queue, first in line" in page and "Me, as agent" not in page  # the admin is no agent
    response = admin_client.post(supervise_url(conversation), {"do": "take_over", "to": "queue"}, follow=True)
    assert b"Taken over." in response.content
    conversation.refresh_from_db()
    assert conversation.status == "queued"
    assert ConversationEvent.objects.filter(conversation=conversation, kind="supervisor_take_over").exists()


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        ({"do": "whisper", "text": ""}, b"non-empty"),
        ({"do": "whisper", "text": "x" * 5_001}, b"at most 5000 characters"),
        ({"do": "dance", "text": "x"}, b"Choose whisper, message or take over."),
    ],
)
def test_bad_supervisor_input_is_answered_on_the_page_and_nothing_is_done(admin_client, held, data, shown):
    conversation, _ = held
    response = admin_client.post(supervise_url(conversation), data, follow=True)
    assert response.status_code == 200 and shown in response.content
    assert not ConversationNote.objects.exists()
    assert not ConversationEvent.objects.filter(kind__startswith="supervisor").exists()


def test_the_supervise_page_of_a_closed_or_unknown_conversation(admin_client, held):
    from django.urls import reverse

    conversation, agent = held
    conversations.conversation_resolve(conversation_id=conversation.pk, agent=agent, outcome="resolved")
    page = admin_client.get(supervise_url(conversation))
    assert page.status_code == 200 and b"The conversation is closed." in page.content
    refused = admin_client.post(supervise_url(conversation), {"do": "whisper", "text": "late"}, follow=True)
    assert b"closed" in refused.content and not ConversationNote.objects.exists()
    assert admin_client.get(reverse("admin:dispatch_supervise", args=["conv_nope"])).status_code == 404


def test_supervising_needs_permission_and_a_csrf_token(client, held):
    from django.contrib.auth.models import Permission
    from django.test import Client

    conversation, _ = held
    viewer = get_user_model().objects.create_user("viewer", password="view-pass-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    client.force_login(viewer)
    assert client.get(supervise_url(conversation)).status_code == 200
    assert client.post(supervise_url(conversation), {"do": "whisper", "text": "x"}).status_code == 403  # view only

    admin = get_user_model().objects.create_superuser("boss", password="boss-pass-123")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin)
    assert strict.post(supervise_url(conversation), {"do": "whisper", "text": "x"}).status_code == 403
    assert not ConversationNote.objects.exists()


@pytest.mark.postgres
def test_take_over_racing_the_agents_resolve_has_one_outcome(escalate, make_agent, recorded_jobs, supervisor):
    from ..marketplace.test_races import together

    outcomes = set()
    for i in range(6):
        agent = make_agent(username=f"racer{i}")
        conversation = escalate(language="en", topic="billing", external_id=f"race-{i}")
        offer = offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)
        offers.offer_accept(offer_id=offer.pk, agent=agent)
        supervision.help_request_raise(conversation_id=conversation.pk, agent=agent, text="help")
        recorded_jobs.clear()

        take, resolve = together(
            lambda c=conversation: supervision.conversation_take_over(conversation_id=c.pk, user=supervisor),
            lambda c=conversation, a=agent: conversations.conversation_resolve(
                conversation_id=c.pk, agent=a, outcome="resolved"
            ),
        )
        recorded_jobs.clear()

        conversation.refresh_from_db()
        agent.refresh_from_db()
        took_over = ConversationEvent.objects.filter(conversation=conversation, kind="supervisor_take_over").exists()
        if isinstance(take, Exception):
            assert isinstance(take, dispatch_errors.ConversationIsClosed)
            assert conversation.status == "resolved" and not took_over
            outcomes.add("resolved")
        else:
            assert isinstance(resolve, dispatch_errors.NotAssignedToAgent)
            assert conversation.status == "queued" and took_over
            assert HelpRequest.objects.get(conversation=conversation).answer == "take_over"
            outcomes.add("taken")
        assert agent.active_count == 0
    assert outcomes  # each run had exactly one winner (which one is up to the scheduler)
