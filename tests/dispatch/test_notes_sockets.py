"""Notes, help and supervision over the agents' WebSocket (real consumer and channel layer), and the
proof that nothing internal reaches the bot: its callbacks as delivered over HTTP, its GET, the
chat messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from dispatch.models import ConversationNote, HelpRequest
from dispatch.services import conversations, supervision
from marketplace.models import CallbackEvent, Conversation, Message

from ..conftest import BotClient, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

NOTE = "internal: card flagged by risk team"
HELP = "internal: can I refund twice?"
WHISPER = "internal: yes, refund both"


@pytest.fixture
def integration(make_integration, callback_receiver):
    """The bot's callbacks go to a real HTTP receiver: what it gets is what a bot would get."""
    return make_integration(callback_url=callback_receiver.url)


@pytest.fixture
def bot(integration):
    return BotClient(integration)


@pytest.fixture
def supervisor(db):
    return get_user_model().objects.create_user("sam", password="sup-pass-123", is_staff=True, first_name="Sam")


async def chatting(bot: BotClient, socket: Any, external_id: str, **fields: Any) -> str:
    response = await sync_to_async(bot.escalate)(external_id, language="en", **fields)
    assert response.status_code == 201, response.content
    offer = await socket.expect("offer", conversation_id=response.json()["id"])
    await socket.send(type="offer.accept", offer_id=offer["offer_id"])
    await socket.expect("conversation.assigned")
    return response.json()["id"]


async def test_a_note_reaches_every_device_of_the_agent_once(make_agent, online_socket, bot):
    agent = await sync_to_async(make_agent)()
    phone = await online_socket(agent)
    laptop = await online_socket(agent, go_online=False)
    conversation_id = await chatting(bot, phone, "note-1")

    for _ in range(2):  # a resend after a flaky network: same client_id
        await phone.send(type="note.send", conversation_id=conversation_id, text=NOTE, client_id="n-1")
    frame = await phone.expect("note")
    assert frame["conversation_id"] == conversation_id
    note = frame["note"]
    assert (note["text"], note["kind"], note["client_id"]) == (NOTE, "note", "n-1")
    assert note["author"] == {"role": "agent", "display_name": agent.display_name}
    assert note["id"].startswith("note_") and note["created_at"].endswith("Z")
    assert (await laptop.expect("note"))["note"]["id"] == note["id"]
    assert await ConversationNote.objects.filter(conversation_id=conversation_id).acount() == 1
    assert not any(m["type"] == "message" for m in phone.seen)  # a note is not a chat message
    await phone.close()
    await laptop.close()


async def test_a_later_agent_gets_the_notes_with_the_conversation(make_agent, online_socket, bot):
    first = await sync_to_async(make_agent)()
    socket = await online_socket(first)
    conversation_id = await chatting(bot, socket, "note-later")
    await socket.send(type="note.send", conversation_id=conversation_id, text=NOTE, client_id="n-1")
    await socket.expect("note")

    second = await sync_to_async(make_agent)(username="second")
    other = await online_socket(second, go_online=False)
    await sync_to_async(conversations.conversation_reassign)(
        conversation_id=conversation_id, agent_id=second.pk, actor="admin:ops"
    )
    assigned = await other.expect("conversation.assigned")
    assert [n["text"] for n in assigned["conversation"]["notes"]] == [NOTE]
    await socket.expect("conversation.closed", reason="reassigned")
    await other.close()
    # and after a reconnect, from `hello`
    again = await online_socket(second, go_online=False)
    hello = next(m for m in again.seen if m["type"] == "hello")
    assert [n["text"] for n in hello["active_conversations"][0]["notes"]] == [NOTE]
    await again.close()
    await socket.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"text": "", "client_id": "n-1"}, "invalid_request"),
        ({"text": "x" * 5_001, "client_id": "n-1"}, "invalid_request"),
        ({"text": "hello"}, "invalid_request"),  # no client_id
        ({"text": "hello", "client_id": "n-1", "conversation_id": "conv_nope"}, "not_found"),
    ],
)
async def test_bad_notes_get_an_error_and_nothing_is_stored(make_agent, online_socket, bot, frame, code):
    socket = await online_socket(await sync_to_async(make_agent)())
    conversation_id = await chatting(bot, socket, "bad-note")
    await socket.send(type="note.send", **{"conversation_id": conversation_id, **frame})
    error = await socket.expect("error")
    assert (error["code"], error["ref"]) == (code, "note.send")
    await socket.send(type="ping")
    await socket.expect("pong")  # still open
    assert await ConversationNote.objects.acount() == 0
    await socket.close()


async def test_a_note_or_help_on_someone_elses_conversation_is_refused(make_agent, online_socket, bot):
    owner = await online_socket(await sync_to_async(make_agent)())
    conversation_id = await chatting(bot, owner, "owned")
    intruder = await online_socket(await sync_to_async(make_agent)(username="intruder"), go_online=False)

    await intruder.send(type="note.send", conversation_id=conversation_id, text="peek", client_id="i-1")
    error = await intruder.expect("error")
    assert (error["code"], error["ref"]) == ("not_assigned", "note.send")
    await intruder.send(type="help.request", conversation_id=conversation_id, text="help")
    error = await intruder.expect("error")
    assert (error["code"], error["ref"]) == ("not_assigned", "help.request")
    assert await ConversationNote.objects.acount() == 0 and await HelpRequest.objects.acount() == 0
    assert not any(m["type"] == "note" for m in owner.seen)
    await intruder.close()
    await owner.close()


async def test_help_whisper_join_and_take_over_reach_the_agent_live(make_agent, online_socket, bot, supervisor):
    agent = await sync_to_async(make_agent)()
    socket = await online_socket(agent)
    conversation_id = await chatting(bot, socket, "help-1")

    await socket.send(type="help.request", conversation_id=conversation_id, text=HELP)
    asked = await socket.expect("note")
    assert (asked["note"]["kind"], asked["note"]["text"]) == ("help", HELP)
    assert await HelpRequest.objects.filter(conversation_id=conversation_id, answered_at=None).aexists()

    await sync_to_async(supervision.supervisor_whisper)(conversation_id=conversation_id, user=supervisor, text=WHISPER)
    whisper = await socket.expect("note", conversation_id=conversation_id)
    assert whisper["note"]["kind"] == "whisper" and whisper["note"]["text"] == WHISPER
    assert whisper["note"]["author"] == {"role": "supervisor", "display_name": "Sam"}

    await sync_to_async(supervision.supervisor_message)(conversation_id=conversation_id, user=supervisor, text="Hi!")
    joined = await socket.expect("message")
    assert joined["message"]["role"] == "supervisor" and joined["message"]["text"] == "Hi!"
    assert joined["message"]["author"] == {"role": "supervisor", "display_name": "Sam"}

    await sync_to_async(supervision.conversation_take_over)(conversation_id=conversation_id, user=supervisor)
    closed = await socket.expect("conversation.closed", conversation_id=conversation_id)
    assert closed["reason"] == "requeued"
    await socket.close()


async def test_nothing_internal_ever_reaches_the_bot(make_agent, online_socket, bot, supervisor, callback_receiver):
    agent = await sync_to_async(make_agent)()
    socket = await online_socket(agent)
    conversation_id = await chatting(
        bot, socket, "leak-1", transcript=[{"role": "customer", "text": "I was charged twice"}]
    )
    # given: every kind of internal text, beside ordinary chat both ways
    await socket.send(type="note.send", conversation_id=conversation_id, text=NOTE, client_id="n-1")
    await socket.expect("note")
    await socket.send(type="help.request", conversation_id=conversation_id, text=HELP)
    await socket.expect("note")
    await sync_to_async(supervision.supervisor_whisper)(conversation_id=conversation_id, user=supervisor, text=WHISPER)
    await socket.expect("note")
    await socket.send(type="message.send", conversation_id=conversation_id, text="Refunding now", client_id="m-1")
    await socket.expect("message")
    path = f"/api/v1/escalations/{conversation_id}/messages"
    assert (await sync_to_async(bot.post)(path, {"text": "Thanks", "external_message_id": "c-1"})).status_code == 201
    await socket.send(type="conversation.resolve", conversation_id=conversation_id, outcome="resolved", note="done")
    await socket.expect("conversation.closed")

    # then: the callbacks the bot received (over HTTP), its GET and the stored chat carry none of it
    wait_for(lambda: any(r.json["type"] == "conversation.resolved" for r in callback_receiver.ok()), timeout=15)
    delivered = [r.body.decode() for r in callback_receiver.received]
    assert [json.loads(b)["type"] for b in delivered].count("message.created") == 1
    outbox = [
        json.dumps(p)
        async for p in CallbackEvent.objects.filter(conversation_id=conversation_id).values_list("payload", flat=True)
    ]
    answer = (await sync_to_async(bot.get)(f"/api/v1/escalations/{conversation_id}")).content.decode()
    chat = [t async for t in Message.objects.filter(conversation_id=conversation_id).values_list("text", flat=True)]
    transcript = json.dumps((await Conversation.objects.aget(pk=conversation_id)).transcript)
    for secret in (NOTE, HELP, WHISPER, "internal"):
        for where, text in [("callbacks", delivered), ("outbox", outbox), ("GET", [answer]), ("chat", chat)]:
            assert not any(secret in t for t in text), f"{secret!r} leaked into {where}"
        assert secret not in transcript
    await socket.close()
