"""Signed bot requests: every way of getting the signature wrong is a plain 401."""

from __future__ import annotations

import json
import math
import time

import pytest

from marketplace import signing
from marketplace.models import Conversation

pytestmark = pytest.mark.django_db

BODY = json.dumps({"external_id": "c-1"}).encode()
GENERIC = {"error": {"code": "unauthorized", "detail": "Invalid or missing signature."}}


def post(client, headers, body=BODY):
    return client.generic("POST", "/api/v1/escalations", body, content_type="application/json", headers=headers)


def test_valid_signature_is_accepted(bot):
    response = bot.post("/api/v1/escalations", raw=BODY)
    assert response.status_code == 201


@pytest.mark.parametrize(
    "case",
    [
        "no headers",
        "no signature",
        "no bot id",
        "unknown bot",
        "wrong secret",
        "tampered body",
        "garbage",
        "no v1",
        "huge t",
        "negative t",
    ],  # fmt: skip
)
def test_bad_signatures_are_401_and_say_nothing_useful(client, integration, case):
    good = signing.header(integration.secret, BODY)
    headers = {
        "no headers": {},
        "no signature": {"X-Bot-Id": integration.id},
        "no bot id": {"X-Bot-Signature": good},
        "unknown bot": {"X-Bot-Id": "bot_nope", "X-Bot-Signature": good},
        "wrong secret": {"X-Bot-Id": integration.id, "X-Bot-Signature": signing.header("other", BODY)},
        "tampered body": {"X-Bot-Id": integration.id, "X-Bot-Signature": good},
        "garbage": {"X-Bot-Id": integration.id, "X-Bot-Signature": "t=abc,v1=zz"},
        "no v1": {"X-Bot-Id": integration.id, "X-Bot-Signature": f"t={int(time.time())}"},
        "huge t": {"X-Bot-Id": integration.id, "X-Bot-Signature": "t=" + "9" * 400 + ",v1=abc"},
        "negative t": {"X-Bot-Id": integration.id, "X-Bot-Signature": f"t=-{int(time.time())},v1=abc"},
    }[case]
    body = BODY.replace(b"c-1", b"c-2") if case == "tampered body" else BODY
    response = post(client, headers, body)
    assert response.status_code == 401
    assert response.json() == GENERIC
    assert response.headers["WWW-Authenticate"].startswith("Signature")
    assert not Conversation.objects.exists()


@pytest.mark.parametrize("skew", [-301, 301, -3600])
def test_timestamp_outside_300s_is_a_replay(bot, skew):
    # Rounded away from now, so that the server's clock (a moment later) still sees more than 300 s.
    now = time.time()
    timestamp = math.ceil(now) + skew if skew > 0 else math.floor(now) + skew
    response = bot.post("/api/v1/escalations", raw=BODY, timestamp=timestamp)
    assert response.status_code == 401
    assert not Conversation.objects.exists()


@pytest.mark.parametrize("skew", [-290, 290])
def test_timestamp_inside_the_window_is_fine(bot, skew):
    assert bot.post("/api/v1/escalations", raw=BODY, timestamp=int(time.time()) + skew).status_code == 201


def test_inactive_integration_is_refused(bot, integration):
    integration.active = False
    integration.save()
    assert bot.post("/api/v1/escalations", raw=BODY).status_code == 401


def test_one_of_several_v1_signatures_may_match(client, integration):
    t = int(time.time())
    header = f"t={t},v1={'0' * 64},v1={signing.compute(integration.secret, t, BODY)}"
    assert post(client, {"X-Bot-Id": integration.id, "X-Bot-Signature": header}).status_code == 201


def test_agent_token_cannot_call_the_bot_api(client, make_agent):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=make_agent().user)
    response = post(client, {"Authorization": f"Token {token.key}"})
    assert response.status_code == 401


def test_signing_roundtrip_and_tolerance():
    header = signing.header("s3cret", b"{}", timestamp=1_000)
    assert signing.verify("s3cret", b"{}", header, tolerance=300, now=1_200)
    assert not signing.verify("s3cret", b"{}", header, tolerance=300, now=1_301)
    assert not signing.verify("s3cret", b"{ }", header, tolerance=300, now=1_000)
    assert not signing.verify("other", b"{}", header, tolerance=300, now=1_000)


def test_after_a_rotation_the_old_secret_works_until_it_expires(bot, integration):
    from datetime import timedelta

    from django.utils import timezone

    from marketplace import services

    old = integration.secret
    rotated = services.integration_rotate_secret(integration_id=integration.pk)
    assert rotated.secret != old
    assert bot.post("/api/v1/escalations", raw=BODY, secret=old).status_code == 201
    assert bot.post("/api/v1/escalations", raw=BODY.replace(b"c-1", b"c-2"), secret=rotated.secret).status_code == 201

    type(integration).objects.filter(pk=integration.pk).update(
        previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert bot.post("/api/v1/escalations", raw=BODY.replace(b"c-1", b"c-3"), secret=old).status_code == 401
