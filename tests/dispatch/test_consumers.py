"""The agents' WebSocket, end to end inside one process: real consumer, real channel layer
(Redis when REDIS_URL is set), real background jobs, the bot's HTTP API beside it."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from dispatch import events
from dispatch.models import AgentConnection, Offer
from marketplace.models import Agent, CallbackEvent, Conversation, Message

from ..conftest import BotClient
from .conftest import connect

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def async_bot(integration):
    bot = BotClient(integration)

    class AsyncBot:
        async def escalate(self, external_id: str, **fields: Any) -> dict[str, Any]:
            response = await sync_to_async(bot.escalate)(external_id, **fields)
            assert response.status_code in (200, 201), response.content
            return response.json()

        async def post(self, path: str, data: Any = None) -> Any:
            return await sync_to_async(bot.post)(path, data)

    return AsyncBot()


async def test_anonymous_and_bad_tokens_are_refused():
    for path in ["/ws/agent/", "/ws/agent/?token=nope"]:
        connected, code, _ = await connect(path)
        assert (connected, code) == (False, 4401)


async def test_suspended_agents_and_non_agents_are_refused(make_agent, token_for):
    agent = await sync_to_async(make_agent)()
    await Agent.objects.filter(pk=agent.pk).aupdate(approval="suspended")
    connected, code, _ = await connect(f"/ws/agent/?token={await token_for(agent)}")
    assert (connected, code) == (False, 4403)

    user = await get_user_model().objects.acreate(username="admin-only")
    token = await Token.objects.acreate(user=user)
    connected, code, _ = await connect(f"/ws/agent/?token={token.key}")
    assert (connected, code) == (False, 4403)


async def test_session_cookie_works_only_from_our_own_origin(make_agent, client):
    agent = await sync_to_async(make_agent)()
    await sync_to_async(client.force_login)(await sync_to_async(lambda: agent.user)())
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    ours = [(b"cookie", cookie), (b"host", b"localhost"), (b"origin", b"http://localhost")]
    connected, _, socket = await connect("/ws/agent/", ours)
    assert connected
    assert (await socket.expect("hello"))["agent"]["id"] == agent.pk
    await socket.close()

    connected, code, _ = await connect("/ws/agent/", [(b"cookie", cookie), (b"origin", b"https://evil.example")])
    assert (connected, code) == (False, 4401)

    # our host on another port or scheme is another origin (issue 11.8)
    for origin in (b"http://localhost:8001", b"https://localhost"):
        other = [(b"cookie", cookie), (b"host", b"localhost"), (b"origin", origin)]
        connected, code, _ = await connect("/ws/agent/", other)
        assert (connected, code) == (False, 4401)


async def test_a_whole_conversation_over_the_socket(make_agent, online_socket, async_bot):
    agent = await sync_to_async(make_agent)(languages=("sv", "en"), skills=("refunds",))
    socket = await online_socket(agent)

    created = await async_bot.escalate(
        "ws-1", language="sv", topic="refunds", summary="Charged twice",
        transcript=[{"role": "customer", "text": "I was charged twice"}],
    )  # fmt: skip
    await async_bot.post(
        f"/api/v1/escalations/{created['id']}/messages", {"text": "Hello?", "external_message_id": "m1"}
    )
    offer = await socket.expect("offer")
    assert offer["conversation_id"] == created["id"]
    assert (offer["language"], offer["topic"], offer["summary"]) == ("sv", "refunds", "Charged twice")
    assert offer["pay"]["amount"] > 0 and offer["pay"]["currency"] == "usd"
    assert offer["expires_at"].endswith("Z")

    await socket.send(type="offer.accept", offer_id=offer["offer_id"])
    assigned = await socket.expect("conversation.assigned")
    conversation = assigned["conversation"]
    assert conversation["id"] == created["id"]
    assert conversation["transcript"][0]["text"] == "I was charged twice"
    assert [m["text"] for m in conversation["messages"]] == ["Hello?"]

    await async_bot.post(f"/api/v1/escalations/{created['id']}/messages", {"text": "Are you there?"})
    live = await socket.expect("message")
    assert live["message"]["text"] == "Are you there?" and live["message"]["role"] == "customer"

    for _ in range(2):  # a resend after a flaky network: same client_id
        await socket.send(type="message.send", conversation_id=created["id"], text="Hi Anna, on it", client_id="c-1")
    echo = await socket.expect("message")
    assert echo["message"]["client_id"] == "c-1" and echo["message"]["role"] == "agent"
    assert await Message.objects.filter(conversation_id=created["id"], role="agent").acount() == 1

    await socket.send(type="conversation.resolve", conversation_id=created["id"], outcome="resolved", note="refunded")
    closed = await socket.expect("conversation.closed")
    assert closed == {"type": "conversation.closed", "conversation_id": created["id"], "reason": "resolved"}
    types = [
        t
        async for t in CallbackEvent.objects.filter(conversation_id=created["id"])
        .order_by("seq")
        .values_list("type", flat=True)
    ]
    assert types == ["conversation.queued", "conversation.assigned", "message.created", "conversation.resolved"]
    await socket.close()


async def test_every_device_of_an_agent_sees_the_same_state(make_agent, online_socket, async_bot):
    agent = await sync_to_async(make_agent)()
    phone = await online_socket(agent)
    laptop = await online_socket(agent, go_online=False)

    await phone.send(type="presence", status="away")
    assert (await laptop.expect("presence"))["status"] == "away"
    await laptop.send(type="presence", status="online")
    assert (await phone.expect("presence", status="online"))["status"] == "online"

    await async_bot.escalate("two-devices")
    offer = await phone.expect("offer")
    assert (await laptop.expect("offer"))["offer_id"] == offer["offer_id"]
    await phone.close()
    await laptop.close()


async def test_a_declined_offer_goes_to_the_next_agent_at_once(make_agent, online_socket, async_bot):
    first_agent = await sync_to_async(make_agent)()
    first = await online_socket(first_agent)
    created = await async_bot.escalate("decline-me")
    offer = await first.expect("offer")
    second = await online_socket(await sync_to_async(make_agent)())

    await first.send(type="offer.decline", offer_id=offer["offer_id"], reason="busy")
    await first.expect("offer.declined", offer_id=offer["offer_id"])

    passed_on = await second.expect("offer")
    assert passed_on["conversation_id"] == created["id"]
    await first.close()
    await second.close()


async def test_an_unanswered_offer_expires_and_misses_set_the_agent_away(
    make_agent, online_socket, async_bot, settings
):
    settings.OFFER_TIMEOUT_SECONDS = 0.4
    settings.MISSES_BEFORE_AWAY = 1
    socket = await online_socket(await sync_to_async(make_agent)())
    await async_bot.escalate("lapse")
    offer = await socket.expect("offer")

    revoked = await socket.expect("offer.revoked", within=5)
    assert revoked == {"type": "offer.revoked", "offer_id": offer["offer_id"], "reason": "expired"}
    assert (await socket.expect("presence"))["status"] == "away"

    await socket.send(type="offer.accept", offer_id=offer["offer_id"])
    error = await socket.expect("error")
    assert error["code"] == "offer_not_open"
    await socket.close()


async def test_the_bot_cancelling_withdraws_the_offer_and_closes_the_chat(make_agent, online_socket, async_bot):
    socket = await online_socket(await sync_to_async(make_agent)(capacity=2))
    offered = await async_bot.escalate("cancel-offered")
    offer = await socket.expect("offer")
    await async_bot.post(f"/api/v1/escalations/{offered['id']}/cancel")
    assert (await socket.expect("offer.revoked"))["reason"] == "cancelled"

    chatting = await async_bot.escalate("cancel-assigned")
    offer = await socket.expect("offer", conversation_id=chatting["id"])
    await socket.send(type="offer.accept", offer_id=offer["offer_id"])
    await socket.expect("conversation.assigned")
    await async_bot.post(f"/api/v1/escalations/{chatting['id']}/cancel")
    closed = await socket.expect("conversation.closed")
    assert (closed["conversation_id"], closed["reason"]) == (chatting["id"], "cancelled")
    await socket.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        (json.dumps({"type": "teleport"}), "unknown_type"),
        (json.dumps({"no": "type"}), "unknown_type"),
        (json.dumps({"type": "offer.accept"}), "invalid_request"),
        (json.dumps({"type": "offer.accept", "offer_id": 42}), "invalid_request"),
        (json.dumps({"type": "offer.accept", "offer_id": "ofr_nope"}), "offer_not_open"),
        (json.dumps({"type": "presence", "status": "asleep"}), "invalid_request"),
        (
            json.dumps({"type": "message.send", "conversation_id": "conv_x", "text": "", "client_id": "c"}),
            "invalid_request",
        ),
        (
            json.dumps({"type": "message.send", "conversation_id": "conv_x", "text": "hi", "client_id": "c"}),
            "not_found",
        ),
        (
            json.dumps({"type": "conversation.resolve", "conversation_id": "conv_x", "outcome": "meh"}),
            "invalid_request",
        ),
        ("x" * 70_000, "too_large"),
    ],
)
async def test_bad_messages_get_an_error_and_the_socket_stays_up(make_agent, online_socket, frame, code):
    socket = await online_socket(await sync_to_async(make_agent)(), go_online=False)
    await socket.communicator.send_to(text_data=frame)
    error = await socket.expect("error")
    assert error["code"] == code
    await socket.send(type="ping")
    await socket.expect("pong")
    await socket.close()


async def test_another_agents_offer_and_conversation_are_out_of_reach(make_agent, online_socket, async_bot):
    owner = await online_socket(await sync_to_async(make_agent)())
    created = await async_bot.escalate("private")
    offer = await owner.expect("offer")
    intruder = await online_socket(await sync_to_async(make_agent)(), go_online=False)

    await intruder.send(type="offer.accept", offer_id=offer["offer_id"])
    assert (await intruder.expect("error"))["code"] == "offer_not_open"
    await owner.send(type="offer.accept", offer_id=offer["offer_id"])
    await owner.expect("conversation.assigned")
    await intruder.send(type="message.send", conversation_id=created["id"], text="hi", client_id="x")
    assert (await intruder.expect("error"))["code"] == "not_assigned"
    await intruder.send(type="conversation.resolve", conversation_id=created["id"], outcome="resolved")
    assert (await intruder.expect("error"))["code"] == "not_assigned"
    assert (await Conversation.objects.aget(pk=created["id"])).status == "assigned"
    await owner.close()
    await intruder.close()


async def test_a_flood_is_rate_limited_then_closed(make_agent, online_socket, settings):
    settings.WS_RATE_PER_SECOND = 1
    settings.WS_RATE_BURST = 5
    socket = await online_socket(await sync_to_async(make_agent)(), go_online=False)
    for _ in range(20):
        await socket.send(type="ping")
    error = await socket.expect("error")
    assert error["code"] == "rate_limited"
    output = None
    for _ in range(40):
        output = await socket.communicator.receive_output(timeout=2)
        if output["type"] == "websocket.close":
            break
    assert output == {"type": "websocket.close", "code": 4429}


async def test_a_heartbeat_is_answered_while_the_database_thread_is_busy(make_agent, online_socket):
    """Idle sockets ping every 25 s; a ping must not queue for the thread that runs the consumers' queries."""
    socket = await online_socket(await sync_to_async(make_agent)(), go_online=False)
    release = threading.Event()
    busy = asyncio.ensure_future(sync_to_async(release.wait)())  # holds the thread-sensitive (database) thread
    try:
        await socket.send(type="ping")
        await socket.expect("pong", within=5)
    finally:
        release.set()
        await busy
    await socket.close()


async def test_hello_after_a_reconnect_restores_the_work(make_agent, online_socket, async_bot):
    agent = await sync_to_async(make_agent)(capacity=2)
    socket = await online_socket(agent)
    first = await async_bot.escalate("resume-1")
    offer = await socket.expect("offer")
    await socket.send(type="offer.accept", offer_id=offer["offer_id"])
    await socket.expect("conversation.assigned")
    await async_bot.escalate("resume-2")
    pending = await socket.expect("offer")
    await socket.close()

    again = await online_socket(agent, go_online=False)
    hello = again.seen[0]
    assert hello["status"] == "online"
    assert [c["id"] for c in hello["active_conversations"]] == [first["id"]]
    assert hello["pending_offer"]["offer_id"] == pending["offer_id"]
    await again.close()


async def test_disconnect_past_the_grace_period_requeues_to_another_agent(
    make_agent, online_socket, async_bot, settings
):
    settings.PRESENCE_GRACE_SECONDS = 0.3
    leaving = await online_socket(await sync_to_async(make_agent)())
    created = await async_bot.escalate("grace")
    offer = await leaving.expect("offer")
    await leaving.send(type="offer.accept", offer_id=offer["offer_id"])
    await leaving.expect("conversation.assigned")
    staying = await online_socket(await sync_to_async(make_agent)())

    await leaving.close()

    passed_on = await staying.expect("offer", within=10)
    assert passed_on["conversation_id"] == created["id"]
    await staying.send(type="offer.accept", offer_id=passed_on["offer_id"])
    assigned = await staying.expect("conversation.assigned")
    assert assigned["conversation"]["id"] == created["id"]
    assert await AgentConnection.objects.acount() == 1
    assert await Offer.objects.filter(conversation_id=created["id"], state="accepted").acount() == 2
    await staying.close()


@pytest.mark.redis
async def test_an_idle_socket_on_the_redis_layer_outlives_the_redis_client_read_timeout(
    make_agent, online_socket, async_bot
):
    """redis-py 8 times reads out after 5 s unless told not to; the layer's blocking receive must not die."""
    socket = await online_socket(await sync_to_async(make_agent)())
    await asyncio.sleep(6.5)
    await socket.send(type="ping")
    await socket.expect("pong")
    await async_bot.escalate("after-idle")
    await socket.expect("offer")
    await socket.close()


async def test_a_ping_renews_the_sockets_group_membership(make_agent, online_socket, settings):
    """The channel layer forgets a group membership after `group_expiry` (channels_redis: a day);
    a socket that pings (the app does, every 20 s) stays in its group, a silent one drops out."""
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"group_expiry": 2}}
    }
    agent = await sync_to_async(make_agent)()
    pinging = await online_socket(agent)
    silent = await online_socket(agent, go_online=False)
    await asyncio.sleep(2.5)
    await pinging.send(type="ping")
    await pinging.expect("pong")
    await asyncio.sleep(1.1)  # past the joins' expiry (the layer counts whole seconds), within the renewal's

    await sync_to_async(events.send)(agent.pk, {"type": "probe"})

    await pinging.expect("probe")
    assert await silent.communicator.receive_nothing(timeout=1), "the silent socket should have dropped out"
    await pinging.close()
    await silent.close()


async def test_what_the_server_or_an_operator_does_to_an_agent_comes_with_a_reason(
    make_agent, online_socket, async_bot, admin_client
):
    """Issue 11.11: the app must say why (re-queued by an operator, set offline by one), not "Closed"."""
    from django.urls import reverse

    agent = await sync_to_async(make_agent)(capacity=2)
    socket = await online_socket(agent)
    chatting = await async_bot.escalate("operator-requeue")
    offer = await socket.expect("offer", conversation_id=chatting["id"])
    await socket.send(type="offer.accept", offer_id=offer["offer_id"])
    await socket.expect("conversation.assigned")

    # An operator re-queues it from the admin list.
    changelist = reverse("admin:marketplace_conversation_changelist")
    data = {"action": "requeue_front", "_selected_action": [chatting["id"]]}
    await sync_to_async(admin_client.post)(changelist, data)
    closed = await socket.expect("conversation.closed", conversation_id=chatting["id"])
    assert closed["reason"] == "requeued"

    # An operator takes the agent offline.
    agents = reverse("admin:marketplace_agent_changelist")
    await sync_to_async(admin_client.post)(agents, {"action": "force_offline", "_selected_action": [agent.pk]})
    presence = await socket.expect("presence", status="offline")
    assert presence["reason"] == "operator"
    await socket.close()
