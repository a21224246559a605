"""Liveness, readiness and the OpenAPI document."""

from __future__ import annotations

import pytest
import yaml
from django.test import Client

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_touching_anything(client: Client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_checks_database_channel_layer_and_broker(client: Client, settings):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    checks = response.json()["checks"]
    assert set(checks) == {"database", "channel_layer", "broker"}
    assert all(check["ok"] for check in checks.values())
    expected_layer = "RedisChannelLayer" if settings.REDIS_URL else "InMemoryChannelLayer"
    assert checks["channel_layer"]["backend"] == expected_layer


def test_readyz_is_503_when_the_broker_is_unreachable(client: Client, settings):
    from config.celery import app

    settings.TASK_RUNNER = "celery"
    previous = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens there
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_url = previous
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def test_openapi_schema_describes_the_bot_api(client: Client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    paths = schema["paths"]
    for path in [
        "/api/v1/escalations",
        "/api/v1/escalations/{conversation_id}",
        "/api/v1/escalations/{conversation_id}/messages",
        "/api/v1/escalations/{conversation_id}/cancel",
        "/api/v1/escalations/{conversation_id}/rating",
        "/api/v1/auth/token",
    ]:
        assert path in paths, path
    create = paths["/api/v1/escalations"]["post"]
    assert {"201", "200", "400", "401", "429"} <= set(create["responses"])
    assert create["security"] == [{"BotSignature": []}]
    fields = schema["components"]["schemas"]["EscalationInputRequest"]["properties"]
    assert {"external_id", "language", "topic", "priority", "customer", "transcript"} <= set(fields)


def test_swagger_ui_is_served_without_a_cdn(client: Client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    assert "cdn" not in html.lower()


def test_unknown_api_path_is_a_json_404(client: Client, settings):
    settings.DEBUG = False
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
