"""Signed bot requests (v2, bound to method and path): every way of getting the signature wrong is a 401."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time

import pytest
from django.urls import get_resolver, resolve

from dispatch.bot_api import BotApi
from marketplace import signing
from marketplace.models import Conversation

pytestmark = pytest.mark.django_db

BODY = json.dumps({"external_id": "c-1"}).encode()
PATH = "/api/v1/escalations"
GENERIC = {"error": {"code": "unauthorized", "detail": "Invalid or missing signature."}}


def post(client, headers, body=BODY):
    return client.generic("POST", "/api/v1/escalations", body, content_type="application/json", headers=headers)


def test_valid_signature_is_accepted(bot):
    response = bot.post("/api/v1/escalations", raw=BODY)
    assert response.status_code == 201


def v2(secret, body=BODY, method="POST", path=PATH, t=None):
    return signing.request_header(secret, method, path, body, t)


def v1_only(secret, body=BODY, t=None):
    """The first version's header, as bots sent it before v2: HMAC over "<t>.<raw body>" only."""
    t = int(time.time()) if t is None else t
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


@pytest.mark.parametrize(
    "case",
    ["no headers", "no signature", "no bot id", "unknown bot", "wrong secret", "tampered body", "v1 key as v2"],
)
def test_bad_signatures_are_401_and_say_nothing_useful(client, integration, case):
    good = v2(integration.secret)
    t = int(time.time())
    v1_as_v2 = v1_only(integration.secret, t=t).replace("v1=", "v2=")
    headers = {
        "no headers": {},
        "no signature": {"X-Bot-Id": integration.id},
        "no bot id": {"X-Bot-Signature": good},
        "unknown bot": {"X-Bot-Id": "bot_nope", "X-Bot-Signature": good},
        "wrong secret": {"X-Bot-Id": integration.id, "X-Bot-Signature": v2("other")},
        "tampered body": {"X-Bot-Id": integration.id, "X-Bot-Signature": good},
        "v1 key as v2": {"X-Bot-Id": integration.id, "X-Bot-Signature": v1_as_v2},
    }[case]
    body = BODY.replace(b"c-1", b"c-2") if case == "tampered body" else BODY
    response = post(client, headers, body)
    assert response.status_code == 401
    assert response.json() == GENERIC
    assert response.headers["WWW-Authenticate"].startswith("Signature")
    assert not Conversation.objects.exists()


@pytest.mark.parametrize(
    "value",
    [
        "t=abc,v2=zz",
        f"t={int(time.time())}",
        "t=" + "9" * 400 + ",v2=abc",
        f"t=-{int(time.time())},v2=abc",
        "t=\u00b2,v2=abc",  # superscript two: str.isdigit() says yes, int() says no (it was a 500)
        "t=\u0661\u0662,v2=abc",  # Arabic-Indic digits: int() would read them, they are not unix seconds
        "v2=abc",
        ",,,=,t=",
    ],
)
def test_a_malformed_signature_header_is_401_naming_it(client, integration, value):
    headers = {"X-Bot-Id": integration.id, "X-Bot-Signature": value}
    response = post(client, headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    assert error["field"] == "X-Bot-Signature"
    assert error["detail"].startswith("X-Bot-Signature: ")
    assert not Conversation.objects.exists()


@pytest.mark.parametrize(
    ("signature", "length"),
    [(b"t=\xb2,v2=abc", b"0"), (b"t=1,v2=abc", b"\xb2")],
    ids=["superscript t", "superscript Content-Length"],
)
def test_superscript_digits_over_real_http_are_4xx_not_500(live_server, integration, signature, length):
    # Headers are latin-1 on the wire: "\xb2" is "²", which str.isdigit() takes and int() refuses.
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(live_server.url)
    request = (
        f"POST /api/v1/escalations HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\n".encode()
        + f"X-Bot-Id: {integration.id}\r\n".encode()
        + b"X-Bot-Signature: "
        + signature
        + b"\r\nContent-Length: "
        + length
        + b"\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        status_line = sock.makefile("rb").readline()
    assert status_line.split()[1] in (b"400", b"401"), status_line


def test_a_v1_only_header_is_refused_with_signature_version(client, integration):
    response = post(client, {"X-Bot-Id": integration.id, "X-Bot-Signature": v1_only(integration.secret)})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "signature_version"
    assert response.json()["error"]["field"] == "X-Bot-Signature"
    assert not Conversation.objects.exists()


def test_v1_beside_a_valid_v2_is_fine(bot):
    assert bot.post("/api/v1/escalations", raw=BODY, with_v1=True).status_code == 201


def test_a_valid_v2_with_a_wrong_v1_beside_it_is_fine(client, integration):
    header = v2(integration.secret) + ",v1=" + "0" * 64
    assert post(client, {"X-Bot-Id": integration.id, "X-Bot-Signature": header}).status_code == 201


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


def test_one_of_several_v2_signatures_may_match(client, integration):
    t = int(time.time())
    header = f"t={t},v2={'0' * 64}," + v2(integration.secret, t=t).split(",")[1]
    assert post(client, {"X-Bot-Id": integration.id, "X-Bot-Signature": header}).status_code == 201


def test_agent_token_cannot_call_the_bot_api(client, make_agent):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=make_agent().user)
    response = post(client, {"Authorization": f"Token {token.key}"})
    assert response.status_code == 401


def test_signing_roundtrip_and_tolerance():
    parsed = signing.parse(signing.request_header("s3cret", "POST", "/x", b"{}", timestamp=1_000))

    def ok(key="s3cret", method="POST", path="/x", body=b"{}", now=1_000):
        return signing.verify_request(key, method, path, body, parsed, tolerance=300, now=now)

    assert ok() and ok(now=1_200) and ok(method="post")
    assert not ok(now=1_301)
    assert not ok(body=b"{ }")
    assert not ok(key="other")
    assert not ok(method="GET")
    assert not ok(path="/x?")
    assert not ok(path="/y")


def test_a_callback_signature_never_verifies_as_a_request():
    header = signing.callback_header("s3cret", b"{}", timestamp=1_000)
    assert signing.verify_callback("s3cret", b"{}", header, tolerance=300, now=1_000)
    parsed = signing.parse(header)
    for method in ("POST", "GET", "CALLBACK", "callback"):
        for path in ("", "/api/v1/escalations"):
            assert not signing.verify_request("s3cret", method, path, b"{}", parsed, tolerance=300, now=1_000)
    # And the other way round: a bot request's header is no callback.
    request = signing.request_header("s3cret", "POST", "/api/v1/escalations", b"{}", timestamp=1_000)
    assert not signing.verify_callback("s3cret", b"{}", request, tolerance=300, now=1_000)


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


def bot_endpoints(conversation_id: str) -> list[tuple[str, str, bytes]]:
    """Every bot endpoint: method, path, a body it accepts."""
    base = f"/api/v1/escalations/{conversation_id}"
    return [
        ("POST", "/api/v1/escalations", json.dumps({"external_id": "c-new"}).encode()),
        ("GET", base, b""),
        ("POST", f"{base}/messages", json.dumps({"text": "hi", "external_message_id": "m-1"}).encode()),
        ("POST", f"{base}/rating", json.dumps({"score": 5}).encode()),
        ("POST", f"{base}/reopen", json.dumps({"reason": "came back"}).encode()),
        ("POST", f"{base}/cancel", b"{}"),
    ]


def send(client, integration, method, path, body, signature):
    headers = {"X-Bot-Id": integration.id, "X-Bot-Signature": signature}
    return client.generic(method, path, body, content_type="application/json", headers=headers)


def test_every_bot_endpoint_takes_v2_and_refuses_v1_only(client, bot, integration):
    conversation_id = bot.escalate("c-1").json()["id"]
    endpoints = bot_endpoints(conversation_id)
    # Every view of the URLconf that takes bot signatures is in the list (a new one must be added there).
    bot_views = {
        getattr(p.callback, "view_class", None)
        for p in get_resolver().url_patterns
        if issubclass(getattr(p.callback, "view_class", object), BotApi)
    }
    assert {resolve(path.split("?")[0]).func.view_class for _, path, _ in endpoints} == bot_views

    for method, path, body in endpoints:
        refused = send(client, integration, method, path, body, v1_only(integration.secret, body))
        assert refused.status_code == 401, (method, path)
        assert refused.json()["error"]["code"] == "signature_version"
        accepted = send(client, integration, method, path, body, v2(integration.secret, body, method, path))
        assert accepted.status_code != 401, (method, path, accepted.content)


def test_a_signature_is_good_for_one_method_on_one_path(client, bot, integration, make_integration):
    # Given: the headers of a GET seen on the wire (a log, a proxy), still inside the 300 s window.
    first = bot.escalate("c-1").json()["id"]
    second = bot.escalate("c-2").json()["id"]
    captured = v2(integration.secret, b"", "GET", f"/api/v1/escalations/{first}")
    assert send(client, integration, "GET", f"/api/v1/escalations/{first}", b"", captured).status_code == 200

    # When: they are replayed on other methods and paths, with the same (empty) body.
    replays = [
        ("POST", f"/api/v1/escalations/{first}/cancel"),
        ("POST", f"/api/v1/escalations/{first}/reopen"),
        ("POST", f"/api/v1/escalations/{first}"),
        ("GET", f"/api/v1/escalations/{second}"),
        ("GET", f"/api/v1/escalations/{first}?x=1"),
        ("POST", f"/api/v1/escalations/{second}/cancel"),
    ]
    for method, path in replays:
        response = send(client, integration, method, path, b"", captured)
        # Then: each is refused, and nothing changed.
        assert response.status_code == 401, (method, path)
        assert response.json() == GENERIC
    assert set(Conversation.objects.values_list("status", flat=True)) == {"queued"}


def test_the_query_string_is_signed_as_sent(client, bot, integration):
    conversation_id = bot.escalate("c-1").json()["id"]
    path = f"/api/v1/escalations/{conversation_id}?b=2&a=1"
    assert send(client, integration, "GET", path, b"", v2(integration.secret, b"", "GET", path)).status_code == 200
    reordered = v2(integration.secret, b"", "GET", f"/api/v1/escalations/{conversation_id}?a=1&b=2")
    assert send(client, integration, "GET", path, b"", reordered).status_code == 401
