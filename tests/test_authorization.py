"""Nothing leaks: agent A against agent B's data, bot X against bot Y's conversations,
and anonymous callers against everything (HTTP; the WebSocket side is in
tests/dispatch/test_consumers.py)."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token

from payouts.models import Earning

from .conftest import BotClient

pytestmark = pytest.mark.django_db

AGENT_ENDPOINTS = [
    ("get", "/api/v1/agent/me"),
    ("patch", "/api/v1/agent/me"),
    ("get", "/api/v1/agent/earnings"),
    ("get", "/api/v1/agent/payouts"),
    ("post", "/api/v1/agent/payouts/onboarding"),
]


def agent_client(agent) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=agent.user).key}")


@pytest.fixture
def two_agents(make_agent, integration, recorded_jobs):
    from dispatch.services import conversations, escalations, offers
    from marketplace import services

    a, b = make_agent(username="anna"), make_agent(username="bert")
    conversation, _ = escalations.conversation_escalate(
        integration=integration, data=services.EscalationInput(external_id="b-1", summary="B's customer")
    )
    offer = offers.offer_create(conversation_id=conversation.pk, agent_id=b.pk)
    offers.offer_accept(offer_id=offer.pk, agent=b)
    conversations.conversation_resolve(conversation_id=conversation.pk, agent=b, outcome="resolved")
    return a, b, conversation


def test_an_agent_sees_only_its_own_earnings_and_profile(two_agents):
    a, b, conversation = two_agents
    assert Earning.objects.filter(agent=b).exists()

    as_a = agent_client(a)
    earnings = as_a.get("/api/v1/agent/earnings").json()
    me = as_a.get("/api/v1/agent/me").json()

    assert earnings["items"] == [] and earnings["pending"] == 0
    assert me["id"] == a.id
    body = (str(earnings) + str(me)).lower()
    assert b.id.lower() not in body and conversation.id.lower() not in body
    # Query parameters cannot point at someone else's data either.
    assert as_a.get(f"/api/v1/agent/earnings?agent={b.id}&agent_id={b.id}").json()["items"] == []


@pytest.mark.parametrize(("method", "path"), AGENT_ENDPOINTS)
def test_anonymous_gets_401_from_every_agent_endpoint(method, path):
    response = getattr(Client(), method)(path, content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "path"), AGENT_ENDPOINTS)
def test_a_bad_token_gets_401_and_a_non_agent_403(method, path, django_user_model):
    bad = getattr(Client(HTTP_AUTHORIZATION="Token nope"), method)(path, content_type="application/json")
    assert bad.status_code == 401
    user = django_user_model.objects.create_user("staffer", password="staff-pass-123")
    token = Token.objects.create(user=user).key
    other = getattr(Client(HTTP_AUTHORIZATION=f"Token {token}"), method)(path, content_type="application/json")
    assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"


def test_an_agent_token_opens_no_bot_endpoint_and_a_bot_signature_no_agent_endpoint(two_agents, integration):
    a, _, conversation = two_agents
    as_a = agent_client(a)
    assert as_a.get(f"/api/v1/escalations/{conversation.pk}").status_code == 401
    assert as_a.post("/api/v1/escalations", {"external_id": "x"}, content_type="application/json").status_code == 401

    bot = BotClient(integration)
    response = bot.client.get("/api/v1/agent/earnings", headers=bot.headers("GET", "/api/v1/agent/earnings", b""))
    assert response.status_code == 401


@pytest.mark.parametrize("action", ["", "/messages", "/cancel", "/rating", "/reopen"])
def test_one_bot_cannot_touch_another_bots_conversation(two_agents, make_integration, action):
    _, _, conversation = two_agents
    other = BotClient(make_integration())

    response = (
        other.get(f"/api/v1/escalations/{conversation.pk}")
        if not action
        else other.post(f"/api/v1/escalations/{conversation.pk}{action}", {"text": "x", "score": 5})
    )

    assert response.status_code == 404
    assert conversation.id not in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.status == "resolved" and conversation.rating_score is None


def test_admin_pages_and_the_operations_page_need_staff(two_agents):
    a, _, _ = two_agents
    client = Client()
    client.force_login(a.user)
    for path in ("/admin/", "/admin/marketplace/conversation/operations/", "/admin/payouts/transfer/"):
        response = client.get(path)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], path


def test_the_stripe_webhook_trusts_nothing_unsigned(settings):
    settings.STRIPE_WEBHOOK_SECRET = "whsec_test"
    response = Client().post(
        "/webhooks/stripe/", {"id": "evt_1", "type": "balance.available"}, content_type="application/json"
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_signature"


def test_a_logged_in_browser_gets_json_errors_from_the_api_never_a_csrf_page(two_agents):
    a, _, _ = two_agents
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(a.user)

    unknown = browser.post("/api/v1/escalations/%C2%84/cancel", {}, content_type="application/json")
    no_token = browser.post("/api/v1/agent/payouts/onboarding", {}, content_type="application/json")

    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert no_token.status_code == 403 and "CSRF" in no_token.json()["error"]["detail"]


def test_anonymous_gets_401_from_every_operation_in_the_schema(two_agents):
    """Straight from the OpenAPI schema, so an endpoint added later is covered without touching this test."""
    from drf_spectacular.generators import SchemaGenerator

    _, _, conversation = two_agents
    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    checked = []
    for path, operations in paths.items():
        for method in operations:
            if path == "/api/v1/auth/token":  # the login itself needs no credentials
                continue
            url = path.replace("{conversation_id}", conversation.pk)
            response = Client().generic(method.upper(), url, b"{}", content_type="application/json")
            assert response.status_code == 401, (method, path, response.status_code)
            assert conversation.pk not in response.content.decode()
            checked.append(f"{method.upper()} {path}")
    assert len(checked) >= 11, checked
