"""Signed bot requests (X-Bot-Id, X-Bot-Signature) and the per-integration rate limit."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import RequestDataTooBig
from django.http.request import RawPostDataException
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions, throttling
from rest_framework.request import Request

from config.errors import PayloadTooLarge

from . import signing
from .models import BotIntegration


class BotPrincipal:
    """request.user for a signed bot request."""

    is_authenticated = True
    is_anonymous = False
    is_active = True

    def __init__(self, integration: BotIntegration) -> None:
        self.integration = integration
        self.pk = integration.pk

    def __str__(self) -> str:
        return f"bot:{self.integration.pk}"


_FAILED = "Invalid or missing signature."


class BotSignatureAuthentication(authentication.BaseAuthentication):
    """HMAC-SHA256 over "<t>.<raw body>", 300 s window, one message for every failure."""

    def authenticate(self, request: Request) -> tuple[BotPrincipal, BotIntegration]:
        bot_id = request.headers.get("X-Bot-Id", "")
        signature = request.headers.get("X-Bot-Signature", "")
        if not bot_id or not signature:
            raise exceptions.AuthenticationFailed(_FAILED)
        length = request.headers.get("Content-Length") or "0"
        if length.isdigit() and int(length) > settings.BOT_MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The request body is larger than {settings.BOT_MAX_BODY_BYTES} bytes.")
        try:
            body = request._request.body
        except RequestDataTooBig as exc:
            raise PayloadTooLarge() from exc
        except RawPostDataException as exc:  # pragma: no cover - body consumed elsewhere
            raise exceptions.AuthenticationFailed(_FAILED) from exc
        if len(body) > settings.BOT_MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The request body is larger than {settings.BOT_MAX_BODY_BYTES} bytes.")
        integration = BotIntegration.objects.filter(pk=bot_id, active=True).first()
        # Verify against a throwaway secret when the id is unknown, so the reply
        # takes as long and says the same as for a wrong signature.
        candidates = integration.valid_secrets() if integration else ["unknown-integration"]
        tolerance = settings.BOT_SIGNATURE_TOLERANCE_SECONDS
        valid = [signing.verify(secret, body, signature, tolerance) for secret in candidates]
        if integration is None or not any(valid):
            raise exceptions.AuthenticationFailed(_FAILED)
        return BotPrincipal(integration), integration

    def authenticate_header(self, request: Request) -> str:
        return 'Signature realm="bot", headers="X-Bot-Id X-Bot-Signature"'


class IsBotIntegration(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, BotIntegration)


class BotRateThrottle(throttling.BaseThrottle):
    """A fixed one-minute window per integration, counted atomically in the cache.

    `cache.add` + `cache.incr` are single atomic operations on Redis, so the
    limit holds across every web process.
    """

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        integration = request.auth
        if not isinstance(integration, BotIntegration):
            return True
        limit = integration.rate_limit_per_minute or settings.BOT_RATE_LIMIT_PER_MINUTE
        now = time.time()
        window = int(now // 60)
        key = f"bot-rate.{integration.pk}.{window}"
        cache.add(key, 0, timeout=120)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=120)
            count = 1
        if count > limit:
            self._wait = (window + 1) * 60 - now
            return False
        return True

    def wait(self) -> float | None:
        return self._wait


class BotSignatureScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "marketplace.bot_auth.BotSignatureAuthentication"
    name = "BotSignature"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-Bot-Signature",
            "description": (
                '`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`, together with '
                "`X-Bot-Id: <integration id>`. Requests more than 300 s from the server's clock are refused."
            ),
        }
