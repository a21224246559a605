"""One error shape for every API response: {"error": {"code", "detail", ...}}."""

from __future__ import annotations

import logging
import math
from typing import Any, cast

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.csrf import csrf_failure as default_csrf_failure
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback

logger = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """A domain error with its own status and stable code."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    default_code = "bad_request"
    default_detail = "Bad request."


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The resource is not in a state that allows this."


class PayloadTooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


class Overloaded(ApiError):
    """A 503 with Retry-After: the service cannot take this on now; nothing was done or stored.

    `extra` goes into the error body beside `code` and `detail` (an estimate the client can act on).
    """

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "overloaded"
    default_detail = "The service is busy; nothing was done. Try again after Retry-After seconds."

    def __init__(self, detail: str | None = None, *, retry_after: int, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.wait = max(1, retry_after)  # DRF's handler sends it as Retry-After
        self.extra = extra or {}


_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ParseError: "invalid_json",
    exceptions.AuthenticationFailed: "unauthorized",
    exceptions.NotAuthenticated: "unauthorized",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "invalid_request",
}


def _flatten(errors: Any, prefix: str = "") -> dict[str, str]:
    """{"customer": {"name": ["..."]}} -> {"customer.name": "..."}."""
    flat: dict[str, str] = {}
    if isinstance(errors, dict):
        for key, value in errors.items():
            if isinstance(key, int):  # a list serializer's errors, keyed by index
                flat.update(_flatten(value, f"{prefix}[{key}]"))
                continue
            name = str(key) if key != "non_field_errors" else ""
            flat.update(_flatten(value, f"{prefix}.{name}".strip(".") if name else prefix))
    elif isinstance(errors, list):
        if errors and all(not isinstance(item, (dict, list)) for item in errors):
            flat[prefix or "body"] = " ".join(str(item) for item in errors)
        else:
            for index, item in enumerate(errors):
                flat.update(_flatten(item, f"{prefix}[{index}]" if prefix else f"[{index}]"))
    elif errors is not None:
        flat[prefix or "body"] = str(errors)
    return flat


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The database connection was lost under the request (a restart, a failover, a
        # dropped connection): nothing was committed, and the same request may simply be
        # sent again (escalations and messages are idempotent), so say so instead of a 500.
        set_rollback()
        logger.warning("database unavailable: %s", exc)
        detail = "The service is briefly unavailable; nothing was done. Retry the request."
        return Response({"error": {"code": "unavailable", "detail": detail}}, status=503, headers={"Retry-After": "1"})
    response = exception_handler(exc, context)
    if response is None:
        return None
    exc = cast(exceptions.APIException, exc)  # the default handler answers only for these
    if isinstance(exc, ApiError) or getattr(exc, "own_code", False):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
    else:
        code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), "error")
    body: dict[str, Any] = {"code": code}
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first_field, first_message = next(iter(fields.items()), ("body", "Invalid request."))
        body["detail"] = f"{first_field}: {first_message}"
        body["field"] = first_field
        body["fields"] = fields
    else:
        body["detail"] = str(exc.detail) if not isinstance(exc.detail, (dict, list)) else str(exc.detail)
        field = getattr(exc, "field", None)
        if isinstance(field, str):  # an error about one header or parameter names it, as validation errors do
            body["field"] = field
    if isinstance(exc, Overloaded):
        body.update(exc.extra)
    wait = getattr(exc, "wait", None)
    if isinstance(exc, (exceptions.Throttled, Overloaded)) and wait is not None:
        body["retry_after_seconds"] = math.ceil(wait)
    response.data = {"error": body}
    return response


@csrf_exempt  # an unknown path is a 404 whatever the cookies say, never a CSRF page
def json_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"error": {"code": "not_found", "detail": "No such resource."}}, status=404)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """The API answers in its own error shape; pages (admin, the app's login) keep Django's page."""
    if request.path.startswith("/api/"):
        detail = "CSRF check failed: send the X-CSRFToken header with a session, or use a token."
        return JsonResponse({"error": {"code": "csrf_failed", "detail": detail}}, status=403)
    return default_csrf_failure(request, reason)


def json_server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"error": {"code": "server_error", "detail": "Internal error."}}, status=500)


def json_bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"error": {"code": "bad_request", "detail": "Bad request."}}, status=400)
