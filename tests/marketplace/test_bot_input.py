"""Bad input to the bot API is a 4xx naming the field, never a 500 (issue 11.9)."""

from __future__ import annotations

import json

import pytest

from marketplace.models import Conversation

pytestmark = pytest.mark.django_db

GOOD = {
    "external_id": "bot-conv-1",
    "language": "sv",
    "topic": "refunds",
    "priority": "high",
    "reason": "customer_requested",
    "customer": {"id": "c-19", "name": "Anna", "locale": "sv-SE", "tier": 3},
    "summary": "Wants a refund",
    "transcript": [
        {"role": "customer", "text": "I was charged twice", "at": "2026-11-22T10:00:00Z"},
        {"role": "bot", "text": "Let me get you a human", "at": "2026-11-22T10:00:04Z"},
        {"role": "customer", "text": "ok"},
    ],
}


def raw_body(**overrides: str) -> bytes:
    """GOOD as JSON text, with some fields' JSON replaced by raw text (NaN, "\\ud800": what json.dumps won't write)."""
    text = json.dumps(GOOD)
    for placeholder, raw in overrides.items():
        text = text.replace(json.dumps(placeholder), raw)
    return text.encode()


def assert_400_naming(response, field: str) -> None:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["detail"].startswith(f"{field}: ")
    assert not Conversation.objects.exists()


@pytest.mark.parametrize(
    ("placeholder_at", "raw", "field"),
    [
        (("customer", "tier"), '"gold\\u0000"', "customer.tier"),
        (("customer", "tier"), '"\\ud800"', "customer.tier"),
        (("customer", "tier"), '"x\\udfffy"', "customer.tier"),
        (("customer", "tier"), "NaN", "customer.tier"),
        (("customer", "tier"), "Infinity", "customer.tier"),
        (("customer", "tier"), "-Infinity", "customer.tier"),
        (("customer", "tier"), "1e400", "customer.tier"),
        (("customer", "name"), '"An\\u0000na"', "customer.name"),
        (("customer", "name"), '"\\udc00"', "customer.name"),
        (("summary",), '"a\\u0000b"', "summary"),
        (("transcript", 2, "text"), '"\\u0000"', "transcript[2].text"),
        (("transcript", 2, "text"), '"\\ud83d"', "transcript[2].text"),
        (("transcript", 2, "text"), "NaN", "transcript[2].text"),
    ],
)
def test_unstorable_values_are_400_naming_the_field(bot, placeholder_at, raw, field):
    body = json.loads(json.dumps(GOOD))
    *parents, last = placeholder_at
    target = body
    for key in parents:
        target = target[key]
    target[last] = "PLACEHOLDER"
    text = json.dumps(body).replace('"PLACEHOLDER"', raw).encode()

    assert_400_naming(bot.post("/api/v1/escalations", raw=text), field)


def test_a_key_with_nul_is_400_naming_its_object(bot):
    text = json.dumps(GOOD).replace('"tier"', '"ti\\u0000er"').encode()
    response = bot.post("/api/v1/escalations", raw=text)
    assert response.status_code == 400
    assert response.json()["error"]["field"].startswith("customer.")
    assert not Conversation.objects.exists()


def test_non_finite_numbers_in_other_bodies_are_400_naming_the_field(bot):
    conversation_id = bot.escalate("c-1").json()["id"]
    response = bot.post(f"/api/v1/escalations/{conversation_id}/rating", raw=b'{"score": NaN}')
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "score"


def test_paired_surrogates_are_an_ordinary_emoji(bot):
    text = json.dumps({**GOOD, "summary": "PLACEHOLDER"}).replace('"PLACEHOLDER"', '"ok \\ud83d\\ude00"').encode()
    response = bot.post("/api/v1/escalations", raw=text)
    assert response.status_code == 201
    assert Conversation.objects.get().summary == "ok \U0001f600"


@pytest.mark.parametrize("language", ["zz-NOPE", "zz", "en-NOPE", "qq", "xx-YY"])
def test_an_unknown_language_is_400_naming_language(bot, language):
    assert_400_naming(bot.escalate(language=language), "language")


@pytest.mark.parametrize(
    ("language", "stored"),
    [("en", "en"), ("sv", "sv"), ("sv-SE", "sv"), ("pt-BR", "pt"), ("zh-Hant", "zh"), ("EN-gb", "en"), ("", "")],
)
def test_known_languages_are_kept_normalised_as_before(bot, language, stored):
    response = bot.escalate(language=language)
    assert response.status_code == 201, response.content
    assert Conversation.objects.get().language == stored


def test_the_same_external_id_with_the_same_body_is_200_with_the_same_conversation(bot):
    first = bot.post("/api/v1/escalations", GOOD)
    again = bot.post("/api/v1/escalations", GOOD)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]


def test_the_same_body_written_differently_is_still_the_same_request(bot):
    bot.post("/api/v1/escalations", GOOD)
    # Same meaning: keys in another order, the default priority spelt out or not, "Z" or "+00:00".
    reordered = dict(reversed(list(GOOD.items())))
    reordered["transcript"] = [
        {**GOOD["transcript"][0], "at": "2026-11-22T10:00:00+00:00"},
        *GOOD["transcript"][1:],
    ]
    assert bot.post("/api/v1/escalations", reordered).status_code == 200
    bot.escalate("plain")
    assert bot.escalate("plain", priority="normal").status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"language": "en"},
        {"topic": "billing"},
        {"priority": "urgent"},
        {"reason": "other"},
        {"summary": "Something else"},
        {"customer": {"id": "c-20", "name": "Anna", "locale": "sv-SE", "tier": 3}},
        {"customer": {"id": "c-19", "name": "Anna", "locale": "sv-SE", "tier": 4}},
        {"transcript": GOOD["transcript"][:2]},
        {"transcript": [*GOOD["transcript"][:2], {"role": "customer", "text": "OK"}]},
    ],
)
def test_the_same_external_id_with_another_body_is_409_idempotency_mismatch(bot, change):
    first = bot.post("/api/v1/escalations", GOOD)
    assert first.status_code == 201

    response = bot.post("/api/v1/escalations", {**GOOD, **change})

    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "idempotency_mismatch"
    conversation = Conversation.objects.get()
    assert (conversation.pk, conversation.summary, conversation.priority) == (
        first.json()["id"],
        "Wants a refund",
        "high",
    )


def test_a_conversation_from_before_the_fingerprint_is_compared_on_its_stored_fields(bot):
    # Given: a conversation stored before request_hash existed (blank), as the migration leaves old rows.
    first = bot.post("/api/v1/escalations", GOOD).json()["id"]
    Conversation.objects.filter(pk=first).update(request_hash="")

    assert bot.post("/api/v1/escalations", GOOD).status_code == 200
    response = bot.post("/api/v1/escalations", {**GOOD, "summary": "Something else"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_mismatch"
