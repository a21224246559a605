"""The demo bot: `make demo-escalation` signs with v2, and the demo callback receiver verifies v2 only."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time

import pytest
from django.core.management import call_command

from marketplace import signing
from marketplace.models import BotIntegration, Conversation

pytestmark = pytest.mark.django_db(transaction=True)

RECEIVER = "http://testserver/demo/bot/callbacks"


@pytest.fixture
def demo(settings, make_integration):
    settings.DEMO_ENDPOINTS = True
    return make_integration(name="Demo bot", callback_url=RECEIVER)


def test_demo_escalation_is_accepted_by_a_running_server(live_server, demo):
    out = io.StringIO()
    call_command("demo_escalation", "--base-url", live_server.url, stdout=out)
    result = json.loads(out.getvalue())
    assert result["status"] == 201, result
    assert Conversation.objects.filter(integration=demo, pk=result["body"]["id"]).exists()


def callback_to_demo(client, header: str, body: bytes):
    return client.generic(
        "POST", "/demo/bot/callbacks", body, content_type="application/json", headers={"X-Platform-Signature": header}
    )


def test_the_demo_receiver_takes_a_callback_signed_as_the_platform_signs_it(client, demo: BotIntegration):
    body = json.dumps({"id": "evt_1", "type": "conversation.queued"}).encode()
    assert callback_to_demo(client, signing.callback_header(demo.secret, body), body).status_code == 204
    assert client.get("/demo/bot/callbacks").json()["received"][0]["id"] == "evt_1"


def test_the_demo_receiver_refuses_v1_alone_and_a_bot_request_signature(client, demo: BotIntegration):
    body = json.dumps({"id": "evt_2", "type": "conversation.queued"}).encode()
    t = int(time.time())
    v1 = hmac.new(demo.secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert callback_to_demo(client, f"t={t},v1={v1}", body).status_code == 401
    as_request = signing.request_header(demo.secret, "POST", "/demo/bot/callbacks", body)
    assert callback_to_demo(client, as_request, body).status_code == 401
    assert all(e["id"] != "evt_2" for e in client.get("/demo/bot/callbacks").json()["received"])
