"""Signed bot requests (X-Bot-Id, X-Bot-Signature) and the per-integration rate limit."""

from __future__ import annotations

import math
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http.request import RawPostDataException
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions, status, throttling
from rest_framework.request import Request

from core import ratelimit
from core.errors import ApiError, PayloadTooLarge

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
_HEADER = "X-Bot-Signature"


_DIGITS = re.compile(r"[0-9]{1,18}")
_BOT_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class BadHeader(ApiError):
    """A 400 about one request header, named in `field`."""

    def __init__(self, detail: str, *, field: str) -> None:
        super().__init__(detail)
        self.field = field


class SignatureRejected(ApiError, exceptions.AuthenticationFailed):
    """A 401 that names the header at fault (core.errors puts `field` in the body)."""

    status_code = status.HTTP_401_UNAUTHORIZED
    default_code = "unauthorized"

    def __init__(self, detail: str, code: str = "unauthorized") -> None:
        super().__init__(f"{_HEADER}: {detail}", code)
        self.field = _HEADER


def signed_path(request: Request) -> str:
    """The request's path and query string exactly as the client sent them (docs/API.md, the bot API).

    Daphne hands over the raw path (still percent-encoded) in the ASGI scope; gunicorn and uWSGI put the
    request target in RAW_URI / REQUEST_URI. Without either (Django's test client), Django's own
    rendering of the path is the same string for every path the API has.
    """
    scope = getattr(request._request, "scope", None)
    if isinstance(scope, dict) and isinstance(scope.get("raw_path"), bytes):
        query = scope.get("query_string") or b""
        raw = scope["raw_path"] + (b"?" + query if query else b"")
        return raw.decode("latin-1")
    meta = request._request.META
    target = meta.get("RAW_URI") or meta.get("REQUEST_URI")
    if isinstance(target, str) and target.startswith("/"):
        return target
    return request._request.get_full_path()


class BotSignatureAuthentication(authentication.BaseAuthentication):
    """v2: HMAC-SHA256 over "<t>.<METHOD>.<path>.<raw body>", 300 s window, one message for every wrong secret."""

    def authenticate(self, request: Request) -> tuple[BotPrincipal, BotIntegration]:
        bot_id = request.headers.get("X-Bot-Id", "")
        header = request.headers.get(_HEADER, "")
        if not bot_id or not header:
            raise exceptions.AuthenticationFailed(_FAILED)
        try:
            # Only the header's form is checked here, the same for every integration: it tells a forger nothing.
            signature = signing.parse(header)
        except signing.SignatureFormatError as exc:
            raise SignatureRejected(str(exc), exc.code) from None
        length = request.headers.get("Content-Length") or "0"
        if not _DIGITS.fullmatch(length):  # Django's request.body would call int() on it: "²" was a 500
            raise BadHeader("Content-Length: not a number of bytes.", field="Content-Length")
        if int(length) > settings.BOT_MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The request body is larger than {settings.BOT_MAX_BODY_BYTES} bytes.")
        try:
            body = request._request.body
        except RequestDataTooBig as exc:
            raise PayloadTooLarge() from exc
        except RawPostDataException as exc:  # pragma: no cover - body consumed elsewhere
            raise exceptions.AuthenticationFailed(_FAILED) from exc
        if len(body) > settings.BOT_MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The request body is larger than {settings.BOT_MAX_BODY_BYTES} bytes.")
        # An id that no integration can have (NUL, non-ASCII, too long) is not sent to the database,
        # where NUL in a text parameter is an error: it is simply unknown.
        plausible = _BOT_ID.fullmatch(bot_id) is not None
        integration = BotIntegration.objects.filter(pk=bot_id, active=True).first() if plausible else None
        # Verify against a throwaway secret when the id is unknown, so the reply
        # takes as long and says the same as for a wrong signature.
        candidates = integration.valid_secrets() if integration else ["unknown-integration"]
        tolerance = settings.BOT_SIGNATURE_TOLERANCE_SECONDS
        method, path = request.method or "", signed_path(request)
        valid = [signing.verify_request(s, method, path, body, signature, tolerance) for s in candidates]
        if integration is None or not any(valid):
            raise exceptions.AuthenticationFailed(_FAILED)
        return BotPrincipal(integration), integration

    def authenticate_header(self, request: Request) -> str:
        return 'Signature realm="bot", headers="X-Bot-Id X-Bot-Signature"'


class IsBotIntegration(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, BotIntegration)


class BotRateThrottle(throttling.BaseThrottle):
    """A token bucket per integration: a sustained rate with a burst above it (core/ratelimit.py).

    The rate is the integration's `rate_limit_per_minute` (else BOT_RATE_LIMIT_PER_MINUTE); the
    burst its `rate_burst`, else BOT_RATE_BURST but never more than a minute's worth of the rate.
    On Redis the bucket is one atomic script, so the limit holds across every web process.
    """

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        integration = request.auth
        if not isinstance(integration, BotIntegration):
            return True
        per_minute = integration.rate_limit_per_minute or settings.BOT_RATE_LIMIT_PER_MINUTE
        burst = integration.rate_burst or min(settings.BOT_RATE_BURST, per_minute)
        wait = ratelimit.take(f"bot-rate.{integration.pk}", rate_per_second=per_minute / 60, burst=burst)
        if wait > 0:
            self._wait = max(1, math.ceil(wait))  # Retry-After is whole seconds, and 0 would mean "now"
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
                '`t=<unix seconds>,v2=<hex HMAC-SHA256(secret, "<t>.<METHOD>.<path>.<raw body>")>`, together '
                "with `X-Bot-Id: <integration id>`. METHOD is upper-case, path carries the query string exactly "
                "as sent, a GET signs the empty body. A header with only `v1=` (the first version, over "
                '`"<t>.<raw body>"`) is refused (401, code `signature_version`). Requests more than 300 s from '
                "the server's clock are refused."
            ),
        }
