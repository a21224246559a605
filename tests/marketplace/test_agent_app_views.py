"""The agent app's pages and the agent's own REST endpoint."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent_client(client, make_agent):
    agent = make_agent(username="ann", online=False, languages=("en",), skills=("billing",))
    client.force_login(agent.user)
    return client, agent


def test_the_app_asks_to_log_in_first_and_logs_in(client, make_agent):
    make_agent(username="ann", online=False)

    assert client.get("/app/")["Location"] == "/app/login?next=/app/"
    page = client.get("/app/login")
    assert page.status_code == 200 and b'autocomplete="current-password"' in page.content

    wrong = client.post("/app/login", {"username": "ann", "password": "nope"})
    assert wrong.status_code == 200 and b"do not match" in wrong.content
    right = client.post("/app/login", {"username": "ann", "password": "test-pass-123"})
    assert right.status_code == 302 and right["Location"] == "/app/"
    shell = client.get("/app/")
    assert shell.status_code == 200 and b'src="/static/app/app.js"' in shell.content
    assert "csrftoken" in shell.cookies  # for the app's own REST calls


def test_the_service_worker_and_manifest(client):
    worker = client.get("/app/sw.js")
    assert worker["Content-Type"].startswith("text/javascript")
    assert worker["Service-Worker-Allowed"] == "/app/"
    assert b"/static/app/app.js" in worker.content and b"/api/" not in worker.content
    manifest = json.loads(client.get("/app/manifest.webmanifest").content)
    assert manifest["display"] == "standalone" and manifest["scope"] == "/app/"


def test_me_shows_the_agent_with_today_and_the_surge(agent_client):
    client, agent = agent_client

    me = client.get("/api/v1/agent/me").json()

    assert me["id"] == agent.id and me["languages"] == ["en"] and me["status"] == "offline"
    assert (me["today"], me["currency"], me["surge"]) == (0, "usd", 1.0)
    assert me["payouts"]["stripe_configured"] is False


def test_an_agent_edits_its_languages_and_skills(agent_client):
    client, agent = agent_client

    response = client.patch(
        "/api/v1/agent/me", {"languages": ["sv-SE", "EN"], "skills": ["Refunds"]}, content_type="application/json"
    )

    assert response.status_code == 200, response.content
    agent.refresh_from_db()
    assert (agent.languages, agent.skills) == (["en", "sv"], ["refunds"])
    bad = client.patch("/api/v1/agent/me", {"languages": ["english!"]}, content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "languages[0]"  # the one that is wrong
    assert "ISO 639" in bad.json()["error"]["detail"]
    empty = client.patch("/api/v1/agent/me", {"languages": []}, content_type="application/json")
    assert empty.status_code == 400
    blanks = client.patch("/api/v1/agent/me", {"skills": ["billing", " ", "\x1f", ""]}, content_type="application/json")
    assert blanks.status_code == 200, blanks.content  # found by Schemathesis: "\x1f" is space to Python only
    agent.refresh_from_db()
    assert agent.skills == ["billing"]


def test_me_needs_an_agent(client, make_agent):
    assert client.get("/api/v1/agent/me").status_code == 401
    user = get_user_model().objects.create_user("ops", password="ops-pass-123")
    client.force_login(user)
    assert client.get("/api/v1/agent/me").json()["error"]["code"] == "forbidden"
    agent = make_agent(online=False)
    token = Token.objects.create(user=agent.user)
    client.logout()
    assert client.get("/api/v1/agent/me", HTTP_AUTHORIZATION=f"Token {token.key}").json()["id"] == agent.id


def test_a_user_who_is_not_an_agent_is_told_so_not_sent_round_in_circles(client):
    user = get_user_model().objects.create_user("ops", password="ops-pass-123")
    client.force_login(user)

    page = client.get("/app/")

    assert page.status_code == 403 and b"not an agent account" in page.content
    assert client.get("/app/login")["Location"] == "/app/"  # logged in: the login page sends back here
