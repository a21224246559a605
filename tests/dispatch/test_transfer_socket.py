"""`conversation.transfer` over real WebSocket clients: the first agent, the next one, the frames each
sees, and the `error` frames that bad transfers get (the socket stays open, nothing is lost)."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async

from dispatch.models import ConversationTransfer
from marketplace.models import Agent, Conversation

from ..conftest import BotClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def async_bot(integration):
    bot = BotClient(integration)

    class AsyncBot:
        async def escalate(self, external_id: str, **fields: Any) -> dict[str, Any]:
            response = await sync_to_async(bot.escalate)(external_id, **fields)
            assert response.status_code in (200, 201), response.content
            return response.json()

    return AsyncBot()


async def holding(socket, async_bot, external_id: str) -> str:
    """Given: the agent behind `socket` has accepted a new conversation and written to the customer."""
    created = await async_bot.escalate(external_id, language="en", summary="Refund for order 7")
    offer = await socket.expect("offer", conversation_id=created["id"])
    await socket.send(type="offer.accept", offer_id=offer["offer_id"])
    await socket.expect("conversation.assigned")
    await socket.send(type="message.send", conversation_id=created["id"], text="Looking into it", client_id="c1")
    await socket.expect("message")
    return created["id"]


async def test_a_transfer_to_a_named_agent_over_the_socket(make_agent, online_socket, async_bot):
    ann = await sync_to_async(make_agent)(username="ann")
    phone_a = await online_socket(ann)
    conversation_id = await holding(phone_a, async_bot, "xfer-1")
    bob = await sync_to_async(make_agent)(username="bob", online=False)
    phone_b = await online_socket(bob)

    await phone_a.send(
        type="conversation.transfer", conversation_id=conversation_id, to={"agent": "bob"}, note="Wants a refund"
    )

    pending = await phone_a.expect("conversation.transfer_pending")
    assert pending["to"] == {"agent": "bob"} and pending["conversation_id"] == conversation_id
    assert pending["handling_share"]["eligible"] is True and pending["handling_share"]["amount"] > 0
    offer = await phone_b.expect("offer", conversation_id=conversation_id)
    assert offer["transfer_note"] == "Wants a refund"
    assert offer["transfer"]["from"] == {"display_name": "ann"}
    assert offer["transfer"]["handling_share"]["amount"] == pending["handling_share"]["amount"]
    assert offer["pay"]["amount"] > 0

    await phone_b.send(type="offer.accept", offer_id=offer["offer_id"])

    assigned = await phone_b.expect("conversation.assigned")
    assert assigned["conversation"]["id"] == conversation_id
    assert [m["text"] for m in assigned["conversation"]["messages"]] == ["Looking into it"]
    transferred = await phone_a.expect("conversation.transferred")
    assert transferred["conversation_id"] == conversation_id and transferred["to"] == {"agent": "bob"}
    assert transferred["handling_share"]["amount"] == pending["handling_share"]["amount"]
    closed = await phone_a.expect("conversation.closed")
    assert closed["reason"] == "transferred"
    conversation = await Conversation.objects.aget(pk=conversation_id)
    assert (conversation.status, conversation.assigned_agent_id) == ("assigned", bob.pk)
    await phone_a.close()
    await phone_b.close()


async def test_a_transfer_to_a_queue_over_the_socket_releases_at_once(make_agent, online_socket, async_bot):
    ann = await sync_to_async(make_agent)(username="ann")
    phone_a = await online_socket(ann)
    conversation_id = await holding(phone_a, async_bot, "xfer-2")

    await phone_a.send(
        type="conversation.transfer",
        conversation_id=conversation_id,
        to={"queue": {"language": "sv", "skills": ["refunds"]}},
        note="Speaks Swedish",
    )

    transferred = await phone_a.expect("conversation.transferred")
    assert transferred["to"] == {"queue": {"language": "sv", "skills": ["refunds"]}}
    await phone_a.expect("conversation.closed", reason="transferred")
    sven = await sync_to_async(make_agent)(username="sven", languages=("sv",), skills=("refunds",), online=False)
    phone_s = await online_socket(sven)
    offer = await phone_s.expect("offer", conversation_id=conversation_id)
    assert offer["transfer_note"] == "Speaks Swedish"
    await phone_a.close()
    await phone_s.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"to": {"agent": "nobody"}}, "unknown_agent"),
        ({"to": {"agent": "ann"}}, "transfer_to_self"),
        ({"to": {"agent": "off"}}, "agent_offline"),
        ({"conversation_id": "conv_nope", "to": {"agent": "off"}}, "not_found"),
        ({"to": {}}, "invalid_request"),
        ({"to": "bob"}, "invalid_request"),
        ({"to": {"agent": "off", "queue": {}}}, "invalid_request"),
        ({"to": {"queue": {"language": "not a language"}}}, "invalid_request"),
        ({"to": {"queue": {"skills": "billing"}}}, "invalid_request"),
        ({"to": {"queue": {"skills": [""]}}}, "invalid_request"),
        ({"to": {"queue": {"skills": ["x"] * 11}}}, "invalid_request"),
        ({"to": {"queue": {}}, "note": 7}, "invalid_request"),
    ],
)
async def test_bad_transfers_get_an_error_frame_and_nothing_is_lost(make_agent, online_socket, async_bot, frame, code):
    ann = await sync_to_async(make_agent)(username="ann")
    await sync_to_async(make_agent)(username="off", online=False)
    phone = await online_socket(ann)
    conversation_id = await holding(phone, async_bot, "xfer-bad")

    await phone.send(**{"type": "conversation.transfer", "conversation_id": conversation_id, **frame})

    error = await phone.expect("error")
    assert (error["code"], error["ref"]) == (code, "conversation.transfer"), error
    assert error["detail"]
    conversation = await Conversation.objects.aget(pk=conversation_id)
    assert (conversation.status, conversation.assigned_agent_id) == ("assigned", ann.pk)
    assert not await ConversationTransfer.objects.aexists()
    await phone.send(type="ping")
    await phone.expect("pong")  # still open
    await phone.close()


async def test_a_conversation_one_does_not_hold_cannot_be_transferred(make_agent, online_socket, async_bot):
    ann = await sync_to_async(make_agent)(username="ann")
    phone_a = await online_socket(ann)
    conversation_id = await holding(phone_a, async_bot, "xfer-3")
    eve = await sync_to_async(make_agent)(username="eve", online=False)
    phone_e = await online_socket(eve)

    await phone_e.send(type="conversation.transfer", conversation_id=conversation_id, to={"agent": "ann"}, note="")
    assert (await phone_e.expect("error"))["code"] == "not_assigned"
    await phone_e.send(type="conversation.transfer", conversation_id=conversation_id, to={"queue": {}}, note="")
    assert (await phone_e.expect("error"))["code"] == "not_assigned"
    assert (await Agent.objects.aget(pk=ann.pk)).active_count == 1
    await phone_a.close()
    await phone_e.close()
