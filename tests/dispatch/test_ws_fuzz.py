"""Hostile input on the agents' WebSocket: whatever a client sends, it gets an `error` with a code or a
closed socket with a documented close code; the consumer never dies of it, and another agent's offers
and conversations never change.

Most cases run the real consumer in-process (Channels' communicator; an exception in the consumer
surfaces in the test). Frame sizes and floods need the real server: they run over a Daphne process
with the `websockets` client (tests/processes.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token

from dispatch.models import Offer
from dispatch.services import escalations, offers
from marketplace import services
from marketplace.models import Agent, Conversation, Message

from ..processes import AgentClient, daphne, service_env
from .conftest import Socket, connect

pytestmark = pytest.mark.django_db(transaction=True)

ERROR_CODES = {
    "invalid_json", "unknown_type", "invalid_request", "too_large", "rate_limited", "not_found",
    "offer_not_open", "agent_unavailable", "not_assigned", "not_approved", "conflict",
}  # fmt: skip


@pytest.fixture
def two_agents(make_agent, integration, recorded_jobs, settings):
    """Anna, whose socket is under test, with a chat of her own; Bert with a chat and a pending offer.

    Background jobs are recorded, not run: no dispatcher hands these out, no timer expires Bert's offer."""

    def escalate(external_id: str) -> Conversation:
        conversation, _ = escalations.conversation_escalate(
            integration=integration, data=services.EscalationInput(external_id=external_id)
        )
        return conversation

    anna, bert = make_agent(username="anna", capacity=3), make_agent(username="bert", capacity=3)
    own = escalate("anna-1")
    offers.offer_accept(offer_id=offers.offer_create(conversation_id=own.pk, agent_id=anna.pk).pk, agent=anna)
    theirs = escalate("bert-1")
    offers.offer_accept(offer_id=offers.offer_create(conversation_id=theirs.pk, agent_id=bert.pk).pk, agent=bert)
    offered = escalate("bert-2")
    offer = offers.offer_create(conversation_id=offered.pk, agent_id=bert.pk)
    return anna, bert, own, theirs, offer


def snapshot(bert: Agent, theirs: Conversation, offer: Offer) -> tuple[Any, ...]:
    """Everything of Bert's that Anna must not be able to change."""
    conversation = Conversation.objects.get(pk=theirs.pk)
    return (
        conversation.status,
        conversation.assigned_agent_id,
        list(Message.objects.filter(conversation=theirs).values_list("pk", flat=True)),
        Offer.objects.get(pk=offer.pk).state,
        Conversation.objects.get(pk=offer.conversation_id).status,
        Agent.objects.get(pk=bert.pk).status,
    )


async def answer_to(socket: Socket, frame: str | bytes) -> dict[str, Any]:
    """Send one frame; return the consumer's answer to it (an error), or {} when it answers nothing."""
    if isinstance(frame, bytes):
        await socket.communicator.send_to(bytes_data=frame)
    else:
        await socket.communicator.send_to(text_data=frame)
    await socket.send(type="ping")  # the consumer handles frames in order: the pong comes after the answer
    answer: dict[str, Any] = {}
    while True:
        message = await socket.communicator.receive_json_from(timeout=5)
        if message["type"] == "pong":
            return answer
        if message["type"] == "error":
            answer = message


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE_FRAMES = [
    ("not json", "{oops", "invalid_json"),
    ("a string", '"offer.accept"', "invalid_json"),
    ("null", "null", "invalid_json"),
    ("a number", "1e400", "invalid_json"),
    ("a huge integer", "9" * 5000, "invalid_json"),
    ("nested too deep", nested(30_000), "invalid_json"),
    ("an object nested too deep", '{"a":' * 10_000 + "1" + "}" * 10_000, "invalid_json"),
    ("binary, not utf-8", b"\xff\xfe\x00", "invalid_json"),
    ("binary JSON", json.dumps({"type": "teleport"}).encode(), "unknown_type"),
    ("type is a list", json.dumps({"type": ["ping"]}), "unknown_type"),
    ("type is very long", json.dumps({"type": "x" * 60_000}), "unknown_type"),
    ("duplicate keys", '{"type": "ping", "type": "teleport"}', "unknown_type"),
    ("offer_id an object", json.dumps({"type": "offer.accept", "offer_id": {"$gt": ""}}), "invalid_request"),
    ("offer_id too long", json.dumps({"type": "offer.accept", "offer_id": "o" * 201}), "invalid_request"),
    ("offer_id with NUL", json.dumps({"type": "offer.accept", "offer_id": "ofr_\u0000"}), "invalid_request"),
    ("offer_id a lone surrogate", '{"type": "offer.decline", "offer_id": "\\ud800"}', "invalid_request"),
    ("20 Ki characters, 80 KB", json.dumps({"type": "ping", "pad": "\U0001f600" * 20_000}, ensure_ascii=False),
     "too_large"),
    ("status a list", json.dumps({"type": "presence", "status": ["online"]}), "invalid_request"),
    ("status an object", json.dumps({"type": "presence", "status": {}}), "invalid_request"),
    ("outcome a number", json.dumps({"type": "conversation.resolve", "conversation_id": "c", "outcome": 1}),
     "invalid_request"),
    ("note a number",
     json.dumps({"type": "conversation.resolve", "conversation_id": "c", "outcome": "resolved", "note": 5}),
     "invalid_request"),
    ("conversation_id with NUL",
     json.dumps({"type": "message.send", "conversation_id": "conv_\u0000", "text": "hi", "client_id": "c"}),
     "invalid_request"),
]  # fmt: skip


async def test_every_hostile_frame_gets_an_error_and_the_socket_stays_up(two_agents, online_socket):
    anna, *_ = two_agents
    socket = await online_socket(anna, go_online=False)
    wrong = {}
    for name, frame, code in HOSTILE_FRAMES:  # one socket for all: each answer is checked before the next frame
        answer = await answer_to(socket, frame)
        if answer.get("code") != code or not isinstance(answer.get("detail"), str):
            wrong[name] = answer
    assert wrong == {}
    await socket.close()


async def test_text_the_database_cannot_store_is_refused_not_a_crash(two_agents, online_socket):
    """NUL and lone surrogates are valid JSON strings but not storable text (PostgreSQL, UTF-8)."""
    anna, _, own, *_ = two_agents
    socket = await online_socket(anna, go_online=False)
    for text in ["nul \u0000 inside", "\ud800 lone surrogate"]:
        for frame in [
            {"type": "message.send", "conversation_id": own.pk, "text": text, "client_id": "c-1"},
            {"type": "message.send", "conversation_id": own.pk, "text": "fine", "client_id": text},
            {"type": "conversation.resolve", "conversation_id": own.pk, "outcome": "resolved", "note": text},
        ]:
            answer = await answer_to(socket, json.dumps(frame))
            assert answer.get("code") == "invalid_request", (frame, answer)
    assert await Message.objects.filter(conversation_id=own.pk, role="agent").acount() == 0
    assert (await Conversation.objects.aget(pk=own.pk)).status == "assigned"
    await socket.close()


async def test_another_agents_ids_change_nothing(two_agents, online_socket):
    anna, bert, _, theirs, offer = two_agents
    before = await sync_to_async(snapshot)(bert, theirs, offer)
    socket = await online_socket(anna)
    frames = [
        ({"type": "offer.accept", "offer_id": offer.pk}, "offer_not_open"),
        ({"type": "offer.decline", "offer_id": offer.pk, "reason": "mine now"}, "offer_not_open"),
        ({"type": "message.send", "conversation_id": theirs.pk, "text": "hi", "client_id": "x"}, "not_assigned"),
        ({"type": "conversation.resolve", "conversation_id": theirs.pk, "outcome": "resolved"}, "not_assigned"),
        ({"type": "conversation.resolve", "conversation_id": offer.conversation_id, "outcome": "unresolved"},
         "not_assigned"),
    ]  # fmt: skip
    for frame, code in frames:
        answer = await answer_to(socket, json.dumps(frame))
        assert answer.get("code") == code, (frame, answer)
    assert await sync_to_async(snapshot)(bert, theirs, offer) == before

    # Nor does Anna see any of it: not in her snapshot, not when Bert's customer writes to him.
    hello = json.dumps(next(m for m in socket.seen if m["type"] == "hello"))
    assert theirs.pk not in hello and offer.pk not in hello and offer.conversation_id not in hello
    bert_socket = await online_socket(bert, go_online=False)
    await sync_to_async(escalations.conversation_add_customer_message)(
        conversation=theirs, text="for Bert only", external_message_id=None
    )
    await bert_socket.expect("message")  # delivered to Bert: it would have reached Anna by now too
    await socket.send(type="ping")
    await socket.expect("pong")
    assert not [m for m in socket.seen if theirs.pk in json.dumps(m) or "for Bert only" in json.dumps(m)]
    await bert_socket.close()
    await socket.close()


# Arbitrary frames: a known or unknown type, known field names with any JSON value, the ids of both agents.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
FIELDS = ["offer_id", "conversation_id", "text", "client_id", "outcome", "note", "reason", "status"]
TYPES = ["ping", "presence", "offer.accept", "offer.decline", "message.send", "conversation.resolve", "hello"]


def frames(ids: list[str]) -> st.SearchStrategy[str]:
    # Text that is valid JSON but not storable (NUL, unpaired surrogates) is drawn on purpose.
    unstorable = st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfffy"])
    values = st.one_of(JSON_VALUES, st.sampled_from(ids), st.sampled_from(["online", "away", "resolved"]), unstorable)
    objects = st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(TYPES), JSON_VALUES)},
        optional={name: values for name in FIELDS},
    )
    # (No empty frame: the communicator cannot send one; the Daphne test does.)
    return st.one_of(objects.map(json.dumps), JSON_VALUES.map(json.dumps), st.text(min_size=1, max_size=30))


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same frames on every run
    # The agents are made once and shared by every example on purpose: Anna's own chat may change (she may
    # well resolve it), Bert's never may.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_arbitrary_frames_never_crash_the_consumer(data, two_agents, token_for, settings):
    anna, bert, own, theirs, offer = two_agents
    settings.WS_RATE_PER_SECOND, settings.WS_RATE_BURST = 10_000, 10_000
    ids = [own.pk, theirs.pk, offer.pk, offer.conversation_id, "conv_nope", "ofr_nope"]
    sent = data.draw(st.lists(frames(ids), min_size=1, max_size=8))

    async def run() -> list[dict[str, Any]]:
        connected, code, socket = await connect(f"/ws/agent/?token={await token_for(anna)}")
        assert connected, code
        await socket.expect("hello")
        answers = [await answer_to(socket, frame) for frame in sent]
        await socket.close()
        return answers

    for answer in async_to_sync(run)():
        assert not answer or answer["code"] in ERROR_CODES, answer
    # Bert's things are Bert's: nothing Anna sent reached them (his offer may only have expired).
    conversation = Conversation.objects.get(pk=theirs.pk)
    assert (conversation.status, conversation.assigned_agent_id) == ("assigned", bert.pk)
    assert not Message.objects.filter(conversation=theirs, role="agent").exclude(agent_id=bert.pk).exists()
    assert Offer.objects.get(pk=offer.pk).state == Offer.State.PENDING


# --- over a real Daphne process: frame sizes and floods ------------------------------------------

DAPHNE_MAX_MESSAGE_BYTES = 1024 * 1024  # Daphne's default --websocket-max-message-size (and frame size)


def close_code(client: AgentClient, within: float = 10) -> int | None:
    """Read until the server closes the socket; its close code (1006 when it drops the connection)."""
    from websockets.exceptions import ConnectionClosed

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            client.seen.append(json.loads(client.ws.recv(timeout=deadline - time.monotonic())))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else 1006  # dropped without a close frame, as browsers say
        except TimeoutError:
            break
    raise AssertionError(f"still open after {within}s; saw {[m['type'] for m in client.seen][-5:]}")


@pytest.mark.postgres
@pytest.mark.redis
def test_daphne_refuses_huge_frames_and_floods_and_keeps_serving_everyone_else(make_agent, tmp_path):
    tokens = {
        name: Token.objects.create(user=make_agent(username=name, online=False).user).key
        for name in ("anna", "bert", "cleo", "dora")
    }
    log = tmp_path / "daphne.log"
    with daphne(service_env(WS_RATE_PER_SECOND="20", WS_RATE_BURST="60"), log) as base:
        anna, bert = AgentClient(base, tokens["anna"]), AgentClient(base, tokens["bert"])

        # Between the consumer's 64 KiB and Daphne's 1 MiB: read, refused with an error, socket up.
        anna.ws.send(json.dumps({"type": "ping", "pad": "x" * 100_000}))
        assert anna.expect("error")["code"] == "too_large"
        anna.ws.send("")  # an empty text frame (the in-process communicator cannot send one)
        assert anna.expect("error")["code"] == "invalid_json"
        anna.ws.send(b"\xff" * 10)  # a binary frame, not UTF-8
        assert anna.expect("error")["code"] == "invalid_json"
        anna.ws.send(nested(30_000))  # it was a RecursionError that killed the consumer
        assert anna.expect("error")["code"] == "invalid_json"
        anna.send(type="ping")
        anna.expect("pong")

        # Over 1 MiB, in one frame or in many small fragments: Daphne (autobahn) stops reading at the limit
        # and drops the connection (autobahn fails connections by dropping them: the client sees 1006); the
        # consumer never sees the message, and nothing is buffered past the limit.
        cleo = AgentClient(base, tokens["cleo"])
        cleo.ws.send("x" * (DAPHNE_MAX_MESSAGE_BYTES + 1))
        assert close_code(cleo) == 1006
        dora = AgentClient(base, tokens["dora"])
        dora.ws.send("x" * 64_000 for _ in range(20))  # one message of 1.28 MB in 20 fragments
        assert close_code(dora) == 1006

        # A flood: the first WS_RATE_BURST messages are served, then `rate_limited`, then close 4429 ...
        for _ in range(400):
            anna.send(type="ping")
        bert.send(type="ping")  # ... while the server answers everyone else all along,
        bert.expect("pong")
        assert close_code(anna) == 4429
        answers = [m.get("code", m["type"]) for m in anna.seen]
        assert answers.count("pong") >= 60 - 5  # the burst, less the five messages sent before
        assert 1 <= answers.count("rate_limited") <= 60 + 1  # then closed: a flood is not read on and on
        bert.send(type="ping")  # ... and after.
        bert.expect("pong")
        bert.close()

    output = log.read_text()
    assert "Traceback" not in output and "ERROR" not in output, output[-3000:]
