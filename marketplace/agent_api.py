"""The agent's own REST endpoints (besides the WebSocket): who am I, my profile, what is going on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import NotAuthenticated, PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.parsers import SafeJSONParser

from . import access, services
from .models import Agent
from .serializers import StrictCharField, StrictRegexField

USERNAME_MAX_LENGTH = 150  # django.contrib.auth's User.username


def agent_for(request: Request) -> Agent:
    """The agent behind the request (token or session); 403 for any other user."""
    agent = Agent.objects.select_related("user").filter(user=request.user).first()
    if agent is None:
        raise PermissionDenied("This account is not an agent.")
    return agent


def me_payload(agent: Agent) -> dict[str, Any]:
    from payouts import pricing, selectors  # payouts builds on this app

    summary = selectors.earnings_summary(agent, limit=0)
    surge = max((pricing.current_surge(language) for language in agent.languages or [""]), default=1)
    return {
        "id": agent.id,
        "username": agent.user.username,
        "display_name": agent.display_name,
        "languages": agent.languages,
        "skills": agent.skills,
        "capacity": agent.capacity,
        "approval": agent.approval,
        "status": agent.status,
        "active_count": agent.active_count,
        "currency": summary["currency"],
        "today": summary["today"],
        "pending": summary["pending"],
        "surge": float(surge),
        "payouts": selectors.account_status(agent),
    }


class _ProfileSerializer(serializers.Serializer):
    # The schema says what the service accepts (ISO 639 codes, at least one), so a client can know it beforehand.
    languages = serializers.ListField(
        child=StrictRegexField(
            r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$",
            max_length=16,
            error_messages={"invalid": "ISO 639 codes such as en, sv, pt-BR."},
        ),
        min_length=1,
        max_length=20,
        required=False,
    )
    # Blank (or whitespace-only) entries are dropped by the service, as its docs say; refusing them here
    # would refuse what the schema allows (Python strips characters JSON Schema does not call space).
    skills = serializers.ListField(
        child=StrictCharField(max_length=64, allow_blank=True, trim_whitespace=False), max_length=50, required=False
    )


_ME = inline_serializer(
    "AgentMe",
    {
        "id": serializers.CharField(),
        "username": serializers.CharField(),
        "display_name": serializers.CharField(),
        "languages": serializers.ListField(child=serializers.CharField()),
        "skills": serializers.ListField(child=serializers.CharField()),
        "capacity": serializers.IntegerField(),
        "approval": serializers.CharField(),
        "status": serializers.CharField(),
        "active_count": serializers.IntegerField(),
        "currency": serializers.CharField(),
        "today": serializers.IntegerField(help_text="Earned today (minor units)"),
        "pending": serializers.IntegerField(),
        "surge": serializers.FloatField(help_text="Surge multiplier now in the agent's languages"),
        "payouts": serializers.DictField(),
    },
)


_AUTH_ERRORS = {
    401: OpenApiResponse(description="Not logged in"),
    403: OpenApiResponse(description="Not an agent"),
}


class AgentMeApi(APIView):
    @extend_schema(operation_id="agent_me", responses={200: _ME, **_AUTH_ERRORS})
    def get(self, request: Request) -> Response:
        return Response(me_payload(agent_for(request)))

    @extend_schema(
        operation_id="agent_me_update",
        request=_ProfileSerializer,
        responses={
            200: _ME,
            400: OpenApiResponse(description="An invalid field (named in error.field)"),
            **_AUTH_ERRORS,
        },
    )
    def patch(self, request: Request) -> Response:
        agent = agent_for(request)
        serializer = _ProfileSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            agent = services.agent_update_profile(
                agent_id=agent.pk,
                languages=data.get("languages", agent.languages),
                skills=data.get("skills", agent.skills),
            )
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from exc
        return Response(me_payload(agent))


class AuthTokenApi(ObtainAuthToken):
    """DRF's token login, with the API's JSON parser (too deep a body is a 400, not a 500) and its real schema.

    A token expired past AGENT_TOKEN_TTL_SECONDS is replaced. Failed logins are counted (django-axes) per
    username and per address: past LOGIN_FAILURE_LIMIT that username or address gets 429 with Retry-After.
    """

    parser_classes = [FormParser, MultiPartParser, SafeJSONParser]

    @extend_schema(
        operation_id="auth_token",
        auth=[],
        request=AuthTokenSerializer,
        responses={
            200: inline_serializer("AuthToken", {"token": serializers.CharField()}),
            400: OpenApiResponse(description="Missing fields, malformed body, or wrong username or password"),
            401: OpenApiResponse(description="The agent is suspended"),
            429: OpenApiResponse(description="Too many failed logins for this username or address (Retry-After)"),
        },
        description="Exchange an agent's username and password for its API and WebSocket token.",
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response | HttpResponse:
        username = request.data.get("username") if isinstance(request.data, Mapping) else None
        if isinstance(username, str) and ("\x00" in username or len(username) > USERNAME_MAX_LENGTH):
            # Refused before the lockout records it: no column can keep a NUL, nor more than 255 characters.
            raise ValidationError({"username": [f"At most {USERNAME_MAX_LENGTH} characters, without NUL."]})
        credentials = {"username": username if isinstance(username, str) else ""}
        if not AxesProxyHandler.is_allowed(request, credentials):
            return access.lockout_response(request)
        serializer = self.get_serializer(data=request.data)
        if not serializer.is_valid():
            # authenticate() counted the failure; the one that reaches the limit is answered 429 already.
            if getattr(request, "axes_locked_out", False) or not AxesProxyHandler.is_allowed(request, credentials):
                return access.lockout_response(request)
            raise ValidationError(serializer.errors)
        user = serializer.validated_data["user"]
        if access.is_suspended(user):
            raise access.AccountSuspended()
        return Response({"token": access.token_issue(user=user).key})


class LogoutApi(APIView):
    """Revoke the token this request carries; the sockets opened with it close within seconds."""

    @extend_schema(
        operation_id="auth_logout",
        request=None,
        responses={204: None, 401: OpenApiResponse(description="Not logged in with a token")},
    )
    def post(self, request: Request) -> Response:
        token = request.auth
        if not isinstance(token, Token):
            raise NotAuthenticated("Send the token to revoke as `Authorization: Token <token>`.")
        access.token_revoke(key=token.key)
        return Response(status=204)
