"""The production shape, for real: Daphne and a Celery worker on PostgreSQL and Redis."""

from __future__ import annotations

import json

import pytest
import requests

from marketplace import signing
from marketplace.models import CallbackAttempt, CallbackEvent

from .conftest import wait_for
from .processes import celery_beat, celery_worker, daphne, service_env

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def signed_post(base: str, integration, path: str, payload: dict) -> requests.Response:
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Bot-Id": integration.id,
        "X-Bot-Signature": signing.request_header(integration.secret, "POST", path, body),
    }
    return requests.post(base + path, data=body, headers=headers, timeout=10)


def test_escalation_over_http_is_called_back_by_the_celery_worker(make_integration, callback_receiver, tmp_path):
    integration = make_integration(callback_url=callback_receiver.url)
    callback_receiver.script = [502]  # the first try fails: the worker retries with backoff
    env = service_env(CALLBACK_BACKOFF_BASE_SECONDS="0.2", CALLBACK_BACKOFF_MAX_SECONDS="1")

    with celery_worker(env, tmp_path / "worker.log"), daphne(env, tmp_path / "daphne.log") as base:
        ready = requests.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        assert checks["database"]["backend"] == "postgresql"
        assert checks["channel_layer"]["backend"] == "RedisChannelLayer"
        assert checks["broker"]["ok"]

        created = signed_post(base, integration, "/api/v1/escalations", {"external_id": "e2e-1", "language": "en"})
        assert created.status_code == 201, created.text
        again = signed_post(base, integration, "/api/v1/escalations", {"external_id": "e2e-1", "language": "en"})
        assert again.status_code == 200
        assert again.json()["id"] == created.json()["id"]

        event = wait_for(lambda: CallbackEvent.objects.filter(state="delivered").first(), timeout=30)

    assert event.type == "conversation.queued"
    assert list(CallbackAttempt.objects.filter(event=event).values_list("ok", flat=True)) == [False, True]
    assert len(callback_receiver.ok()) == 1
    assert "deliver_callbacks" in (tmp_path / "worker.log").read_text()


def test_a_lost_task_is_recovered_by_celery_beats_sweeper(integration, callback_receiver, tmp_path, lost_tasks):
    from django.utils import timezone

    from dispatch.services import escalations
    from marketplace import services

    integration.callback_url = callback_receiver.url
    integration.save()
    # Given: an event whose delivery task was lost (committed, but never sent to the broker).
    conversation, _ = escalations.conversation_escalate(
        integration=integration, data=services.EscalationInput(external_id="lost")
    )
    assert CallbackEvent.objects.filter(state="pending", next_attempt_at__lte=timezone.now()).count() == 1
    env = service_env(CALLBACK_SWEEP_SECONDS="1", CALLBACK_REKICK_SECONDS="2")

    with celery_worker(env, tmp_path / "worker.log"), celery_beat(env, tmp_path / "beat.log", tmp_path):
        event = wait_for(lambda: CallbackEvent.objects.filter(state="delivered").first(), timeout=45)

    assert event.conversation_id == conversation.pk
    assert "sweep_callbacks" in (tmp_path / "worker.log").read_text()
    assert len(callback_receiver.received) == 1


def test_v2_binds_the_path_and_query_as_daphne_receives_them(integration, tmp_path):
    """Behind Daphne the server signs over the raw path and query of the ASGI scope (issue 11.4)."""
    integration.rate_limit_per_minute = 1000
    integration.save()

    def get(base: str, path: str, signed_path: str, method: str = "GET") -> requests.Response:
        signature = signing.request_header(integration.secret, method, signed_path, b"")
        headers = {"X-Bot-Id": integration.id, "X-Bot-Signature": signature}
        return requests.request(method, base + path, headers=headers, timeout=10)

    with daphne(service_env(), tmp_path / "daphne.log") as base:
        created = signed_post(base, integration, "/api/v1/escalations", {"external_id": "raw-path"})
        assert created.status_code == 201, created.text
        path = f"/api/v1/escalations/{created.json()['id']}?b=2&a=%20x"

        assert get(base, path, path).status_code == 200
        reordered = path.replace("b=2&a=%20x", "a=%20x&b=2")
        assert get(base, path, reordered).status_code == 401
        decoded = path.replace("%20", " ")
        assert get(base, path, decoded).status_code == 401
        # The GET's headers replayed as a cancel: refused, and the conversation still waits.
        signature = signing.request_header(integration.secret, "GET", path, b"")
        cancel = requests.post(
            base + path.split("?")[0] + "/cancel",
            headers={"X-Bot-Id": integration.id, "X-Bot-Signature": signature},
            timeout=10,
        )
        assert cancel.status_code == 401
        assert get(base, path, path).json()["status"] == "queued"
