"""The agent's login and logout, and who the agent behind a request is (dispatch/agent_api.py has `/agent/me`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from axes.handlers.proxy import AxesProxyHandler
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

from . import access
from .models import Agent

USERNAME_MAX_LENGTH = 150  # django.contrib.auth's User.username


def agent_for(request: Request) -> Agent:
    """The agent behind the request (token or session); 403 for any other user."""
    agent = Agent.objects.select_related("user").filter(user=request.user).first()
    if agent is None:
        raise PermissionDenied("This account is not an agent.")
    return agent


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
