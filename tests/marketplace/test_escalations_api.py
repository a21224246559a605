"""The bot's escalation API, as docs/API.md (the bot's API) writes it."""

from __future__ import annotations

import json
import re

import pytest
from django.test import override_settings

from dispatch.services import conversations, offers
from marketplace.models import CallbackEvent, Conversation, ConversationEvent, Message

from ..conftest import BotClient

pytestmark = pytest.mark.django_db

FULL = {
    "external_id": "bot-conv-8812",
    "language": "sv",
    "topic": "refunds",
    "priority": "normal",
    "reason": "customer_requested",
    "customer": {"id": "c-19", "name": "Anna", "locale": "sv-SE"},
    "summary": "Wants a refund for a duplicate charge",
    "transcript": [
        {"role": "customer", "text": "I was charged twice", "at": "2026-11-22T10:00:00Z"},
        {"role": "bot", "text": "Let me get you a human", "at": "2026-11-22T10:00:04Z"},
    ],
}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def assign(conversation_id: str, agent) -> Conversation:
    """Given: the conversation offered to and accepted by `agent`."""
    offer = offers.offer_create(conversation_id=conversation_id, agent_id=agent.pk)
    return offers.offer_accept(offer_id=offer.pk, agent=agent)


def test_escalation_is_created_queued_with_the_contracts_shape(bot):
    response = bot.post("/api/v1/escalations", FULL)

    assert response.status_code == 201
    body = response.json()
    assert set(body) >= {
        "id",
        "external_id",
        "status",
        "queue_position",
        "estimated_wait_seconds",
        "agent",
        "created_at",
    }
    assert body["id"].startswith("conv_")
    assert body["external_id"] == "bot-conv-8812"
    assert body["status"] == "queued"
    assert body["queue_position"] == 1
    assert body["agent"] is None
    assert ISO_UTC.match(body["created_at"])
    conversation = Conversation.objects.get(pk=body["id"])
    assert conversation.customer == FULL["customer"]
    assert conversation.transcript[0]["text"] == "I was charged twice"
    assert conversation.queued_at is not None
    assert ConversationEvent.objects.filter(conversation=conversation, kind="status.queued").count() == 1


def test_only_external_id_is_required(bot):
    response = bot.escalate("minimal")
    assert response.status_code == 201
    assert response.json()["status"] == "queued"
    assert Conversation.objects.get(external_id="minimal").priority == "normal"


def test_same_external_id_again_is_200_with_the_same_conversation(bot):
    first = bot.post("/api/v1/escalations", FULL)
    again = bot.post("/api/v1/escalations", FULL)
    # Another body under the same external_id is refused (issue 11.9; test_bot_input.py has every field).
    changed = bot.post("/api/v1/escalations", {**FULL, "summary": "changed"})

    assert (first.status_code, again.status_code, changed.status_code) == (201, 200, 409)
    assert again.json()["id"] == first.json()["id"]
    assert changed.json()["error"]["code"] == "idempotency_mismatch"
    assert Conversation.objects.count() == 1
    assert CallbackEvent.objects.count() == 1  # one conversation.queued, not two


def test_same_external_id_from_another_integration_is_another_conversation(bot, make_integration):
    other = BotClient(make_integration())
    assert bot.escalate("shared-id").status_code == 201
    assert other.escalate("shared-id").status_code == 201
    assert Conversation.objects.count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "external_id"),
        ({"external_id": ""}, "external_id"),
        ({"external_id": 5 * "x" * 100}, "external_id"),
        ({"external_id": "a", "priority": "asap"}, "priority"),
        ({"external_id": "a", "language": "not a language"}, "language"),
        ({"external_id": "a", "customer": "Anna"}, "customer"),
        ({"external_id": "a", "customer": {"email": "nope"}}, "customer.email"),
        ({"external_id": "a", "transcript": {"role": "bot"}}, "transcript"),
        ({"external_id": "a", "transcript": [{"role": "robot", "text": "hi"}]}, "transcript[0].role"),
        ({"external_id": "a", "transcript": [{"role": "bot"}]}, "transcript[0].text"),
        ({"external_id": "a", "transcript": [{"role": "bot", "text": "x", "at": "yesterday"}]}, "transcript[0].at"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(bot, body, field):
    response = bot.post("/api/v1/escalations", body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["field"] == field
    assert error["detail"].startswith(f"{field}: ")
    assert not Conversation.objects.exists()


@pytest.mark.parametrize("raw", [b"{not json", b"", b'"a string"', b"[1, 2]", b"\xff\xfe"])
def test_malformed_json_is_400(bot, raw):
    response = bot.post("/api/v1/escalations", raw=raw)
    assert response.status_code == 400
    assert response.json()["error"]["code"] in {"invalid_json", "invalid_request"}
    assert not Conversation.objects.exists()


@override_settings(BOT_MAX_BODY_BYTES=1024)
def test_body_over_the_limit_is_413(bot):
    response = bot.escalate("big", summary="x" * 2000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert not Conversation.objects.exists()


def test_unknown_and_foreign_conversations_are_404(bot, make_integration):
    other = BotClient(make_integration())
    theirs = other.escalate("theirs").json()["id"]

    for path in [f"/api/v1/escalations/{theirs}", "/api/v1/escalations/conv_nope"]:
        response = bot.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    for action, body in [("messages", {"text": "hi"}), ("cancel", {}), ("rating", {"score": 5})]:
        assert bot.post(f"/api/v1/escalations/{theirs}/{action}", body).status_code == 404
    assert Conversation.objects.get(pk=theirs).status == "queued"


def test_get_shows_the_current_queue_position(bot):
    ids = [bot.escalate(f"c{n}", language="en").json()["id"] for n in range(3)]
    assert [bot.get(f"/api/v1/escalations/{i}").json()["queue_position"] for i in ids] == [1, 2, 3]

    bot.post(f"/api/v1/escalations/{ids[0]}/cancel")

    assert bot.get(f"/api/v1/escalations/{ids[0]}").json()["queue_position"] is None
    assert [bot.get(f"/api/v1/escalations/{i}").json()["queue_position"] for i in ids[1:]] == [1, 2]


def test_priority_goes_ahead_and_languages_queue_apart(bot):
    normal = bot.escalate("n", language="en").json()["id"]
    urgent = bot.escalate("u", language="en", priority="urgent").json()["id"]
    swedish = bot.escalate("s", language="sv").json()["id"]

    assert bot.get(f"/api/v1/escalations/{urgent}").json()["queue_position"] == 1
    assert bot.get(f"/api/v1/escalations/{normal}").json()["queue_position"] == 2
    assert bot.get(f"/api/v1/escalations/{swedish}").json()["queue_position"] == 1


def test_customer_message_is_kept_and_idempotent(bot):
    conversation_id = bot.escalate("m").json()["id"]
    path = f"/api/v1/escalations/{conversation_id}/messages"

    first = bot.post(path, {"text": "Still there?", "external_message_id": "m-77"})
    again = bot.post(path, {"text": "Still there?", "external_message_id": "m-77"})

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert first.json()["role"] == "customer"
    assert Message.objects.filter(conversation_id=conversation_id).count() == 1


def test_message_without_text_is_400(bot):
    conversation_id = bot.escalate("m").json()["id"]
    response = bot.post(f"/api/v1/escalations/{conversation_id}/messages", {"external_message_id": "m-1"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "text"


def test_message_to_a_closed_conversation_is_409(bot):
    conversation_id = bot.escalate("m").json()["id"]
    bot.post(f"/api/v1/escalations/{conversation_id}/cancel")
    response = bot.post(f"/api/v1/escalations/{conversation_id}/messages", {"text": "hello?"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conversation_closed"
    assert not Message.objects.exists()


def test_cancel_withdraws_the_offer_and_is_idempotent(bot, make_agent):
    agent = make_agent()
    conversation_id = bot.escalate("c").json()["id"]
    offer = offers.offer_create(conversation_id=conversation_id, agent_id=agent.pk)

    first = bot.post(f"/api/v1/escalations/{conversation_id}/cancel")
    again = bot.post(f"/api/v1/escalations/{conversation_id}/cancel")

    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["status"] == "cancelled"
    offer.refresh_from_db()
    assert offer.state == "revoked"
    assert CallbackEvent.objects.filter(conversation_id=conversation_id, type="conversation.cancelled").count() == 1


def test_cancel_of_an_assigned_conversation_frees_the_agent(bot, make_agent):
    agent = make_agent()
    conversation_id = bot.escalate("c").json()["id"]
    assign(conversation_id, agent)
    agent.refresh_from_db()
    assert agent.active_count == 1

    assert bot.post(f"/api/v1/escalations/{conversation_id}/cancel").status_code == 200

    agent.refresh_from_db()
    assert agent.active_count == 0


def test_rating_before_resolution_is_409_then_201_once(bot, make_agent):
    agent = make_agent()
    conversation_id = bot.escalate("r").json()["id"]
    path = f"/api/v1/escalations/{conversation_id}/rating"

    early = bot.post(path, {"score": 5})
    assert early.status_code == 409
    assert early.json()["error"]["code"] == "not_resolved"

    assign(conversation_id, agent)
    conversations.conversation_resolve(conversation_id=conversation_id, agent=agent, outcome="resolved")
    rated = bot.post(path, {"score": 4, "comment": "quick and kind"})
    twice = bot.post(path, {"score": 1})

    assert rated.status_code == 201
    assert rated.json()["rating"] == {"score": 4, "comment": "quick and kind"}
    assert rated.json()["agent"] == {"display_name": agent.display_name}
    assert twice.status_code == 409
    assert twice.json()["error"]["code"] == "already_rated"
    agent.refresh_from_db()
    assert (agent.rating_count, agent.rating_sum) == (1, 4)


@pytest.mark.parametrize("score", [0, 6, "five", None])
def test_rating_score_must_be_1_to_5(bot, score):
    conversation_id = bot.escalate("r").json()["id"]
    response = bot.post(f"/api/v1/escalations/{conversation_id}/rating", {"score": score})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "score"


def test_cancel_after_resolution_is_200_and_changes_nothing(bot, make_agent):
    agent = make_agent()
    conversation_id = bot.escalate("x").json()["id"]
    assign(conversation_id, agent)
    conversations.conversation_resolve(conversation_id=conversation_id, agent=agent, outcome="resolved")
    response = bot.post(f"/api/v1/escalations/{conversation_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "resolved"
    assert Conversation.objects.get(pk=conversation_id).status == "resolved"
    assert not CallbackEvent.objects.filter(conversation_id=conversation_id, type="conversation.cancelled").exists()


@override_settings(BOT_RATE_LIMIT_PER_MINUTE=3)
def test_rate_limit_is_429_with_retry_after(bot, make_integration):
    statuses = [bot.escalate(f"r{n}").status_code for n in range(4)]
    limited = bot.escalate("r9")

    assert statuses == [201, 201, 201, 429]
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.json()["error"]["code"] == "rate_limited"
    assert Conversation.objects.count() == 3
    # The limit is per integration.
    assert BotClient(make_integration()).escalate("r0").status_code == 201


def test_an_integrations_own_limit_overrides_the_default(bot, integration):
    integration.rate_limit_per_minute = 1
    integration.save()
    assert [bot.escalate(f"o{n}").status_code for n in range(2)] == [201, 429]


def test_content_type_does_not_matter_but_the_body_must_be_json(bot):
    form = b"external_id=a"
    response = bot.client.generic(
        "POST",
        "/api/v1/escalations",
        form,
        content_type="application/x-www-form-urlencoded",
        headers=bot.headers("POST", "/api/v1/escalations", form),
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    body = json.dumps({"external_id": "plain"}).encode()
    response = bot.client.generic(
        "POST",
        "/api/v1/escalations",
        body,
        content_type="text/plain",
        headers=bot.headers("POST", "/api/v1/escalations", body),
    )
    assert response.status_code == 201


def test_wrong_method_is_405_in_the_error_shape(bot):
    body = json.dumps({}).encode()
    response = bot.client.generic(
        "PUT", "/api/v1/escalations", body, headers=bot.headers("PUT", "/api/v1/escalations", body)
    )
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_json_nested_too_deep_is_400_not_500(bot):
    raw = b'{"external_id": "deep", "customer": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = bot.post("/api/v1/escalations", raw=raw)
    assert response.status_code in (400, 413)
    assert not Conversation.objects.exists()


@pytest.mark.parametrize("path", ["/api/v1/escalations/abc%00def", "/api/v1/escalations/" + "x" * 65, "/api/v1/nope"])
def test_odd_ids_and_unknown_api_paths_are_json_404(bot, path):
    response = bot.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_region_tagged_languages_match_agents_of_the_language(bot, make_agent):
    make_agent(languages=("sv",))
    body = bot.escalate("region", language="sv-SE").json()
    assert Conversation.objects.get(pk=body["id"]).language == "sv"
    assert body["wait_estimate_basis"] == "free_capacity"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"external_id": 123}, "external_id"),
        ({"external_id": "a", "summary": 5}, "summary"),
        ({"external_id": "a", "topic": True}, "topic"),
        ({"external_id": "a", "customer": {"name": ["x"]}}, "customer.name"),
    ],
)
def test_wrong_types_are_refused_not_coerced(bot, body, field):
    response = bot.post("/api/v1/escalations", body)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == field


def test_extra_customer_fields_are_kept(bot):
    body = bot.escalate("extra", customer={"name": "Anna", "phone": "+46 70", "tier": 3}).json()
    assert Conversation.objects.get(pk=body["id"]).customer == {"name": "Anna", "phone": "+46 70", "tier": 3}
