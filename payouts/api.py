"""The agent's payouts API (docs/API.md, Agents and Payouts) and Stripe's webhook endpoint."""

from __future__ import annotations

import json
import logging
from typing import Any

import stripe
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.agent_api import agent_for
from marketplace.models import Agent

from . import selectors
from .services import accounts, stripe_events

logger = logging.getLogger(__name__)


class AgentApi(APIView):
    def agent(self) -> Agent:
        return agent_for(self.request)


_STATUS = inline_serializer(
    "PayoutAccountStatus",
    {
        "stripe_configured": serializers.BooleanField(),
        "account_id": serializers.CharField(allow_null=True),
        "transfers": serializers.CharField(allow_null=True, help_text="active, inactive or pending"),
        "details_submitted": serializers.BooleanField(),
        "payouts_enabled": serializers.BooleanField(),
        "requirements_due": serializers.ListField(child=serializers.CharField()),
        "requirements_past_due": serializers.ListField(child=serializers.CharField()),
        "disabled_reason": serializers.CharField(allow_null=True),
        "can_receive_transfers": serializers.BooleanField(),
        "can_go_online": serializers.BooleanField(),
        "reason": serializers.CharField(allow_null=True),
        "detail": serializers.CharField(allow_null=True),
    },
)


class _StatusQuerySerializer(serializers.Serializer):
    refresh = serializers.BooleanField(default=False, help_text="Ask Stripe now (back from onboarding)")


class _PageSerializer(serializers.Serializer):
    """The query of GET /earnings; also its documented parameters, so the schema states these very limits."""

    limit = serializers.IntegerField(min_value=1, max_value=200, default=50, help_text="Items per page")
    before = serializers.DateTimeField(required=False, help_text="ISO timestamp: items created before it")
    before_id = serializers.RegexField(
        r"^[A-Za-z0-9_]{1,32}$", required=False, help_text="With before: the next page after that item (see `next`)"
    )


class OnboardingApi(AgentApi):
    @extend_schema(
        operation_id="payouts_onboarding",
        request=None,
        responses={
            200: inline_serializer(
                "OnboardingLink",
                {
                    "url": serializers.URLField(),
                    "expires_at": serializers.DateTimeField(),
                    "account_id": serializers.CharField(),
                },
            ),
            401: OpenApiResponse(description="Not logged in"),
            403: OpenApiResponse(description="Not an agent"),
            502: OpenApiResponse(description="Stripe could not be reached"),
            503: OpenApiResponse(description="Stripe is not configured on this platform"),
        },
        description=(
            "Creates the agent's Stripe Connect Express account on first use (transfers capability only) "
            "and returns a fresh, single-use Stripe-hosted onboarding link. Refresh and return lead back "
            "to /app/payouts."
        ),
    )
    def post(self, request: Request) -> Response:
        return Response(accounts.onboarding_link(agent=self.agent()))


class PayoutStatusApi(AgentApi):
    @extend_schema(
        operation_id="payouts_status",
        parameters=[_StatusQuerySerializer],
        responses={
            200: _STATUS,
            400: OpenApiResponse(description="refresh is not a boolean (true/false, 1/0)"),
            401: OpenApiResponse(description="Not logged in"),
            403: OpenApiResponse(description="Not an agent"),
            502: OpenApiResponse(description="Stripe could not be reached (refresh=1)"),
        },
        description="Whether the agent's account can receive transfers, what Stripe still needs, and why not.",
    )
    def get(self, request: Request) -> Response:
        agent = self.agent()
        params = _StatusQuerySerializer(data=request.query_params.dict())  # a dict: `?refresh=` is a 400, not absent
        params.is_valid(raise_exception=True)
        if params.validated_data["refresh"]:
            accounts.account_refresh(agent=agent)
        return Response(selectors.account_status(agent))


class EarningsApi(AgentApi):
    @extend_schema(
        operation_id="earnings",
        parameters=[_PageSerializer],
        responses={
            200: inline_serializer(
                "Earnings",
                {
                    "currency": serializers.CharField(),
                    "pending": serializers.IntegerField(help_text="Earned, not yet transferred (minor units)"),
                    "transferred": serializers.IntegerField(
                        help_text="Transferred to the Stripe account, net of reversals"
                    ),
                    "paid_out": serializers.IntegerField(help_text="Paid out by Stripe to the agent's bank"),
                    "today": serializers.IntegerField(),
                    "owed_back": serializers.IntegerField(help_text="Clawed back, to be kept from later earnings"),
                    "has_more": serializers.BooleanField(),
                    "next": serializers.DictField(allow_null=True, help_text="before and before_id of the next page"),
                    "items": serializers.ListField(child=serializers.DictField()),
                },
            ),
            400: OpenApiResponse(description="An invalid limit, before or before_id (named in error.field)"),
            401: OpenApiResponse(description="Not logged in"),
            403: OpenApiResponse(description="Not an agent"),
        },
    )
    def get(self, request: Request) -> Response:
        params = _PageSerializer(data=request.query_params.dict())  # a dict: `?limit=` is a 400, not absent
        params.is_valid(raise_exception=True)
        return Response(selectors.earnings_summary(self.agent(), **params.validated_data))


_LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the last moment a datetime can hold


def _unstorable(event: dict[str, Any], body: bytes) -> str | None:
    """Why a signed event cannot be stored as it is (found by fuzzing: each of these was a 500), or None."""
    if len(event["id"]) > 64:
        return "The event id is longer than 64 characters."
    for name in ("type", "account"):
        value = event.get(name) or ""
        if not isinstance(value, str) or len(value) > 64:
            return f"{name}: a string of at most 64 characters."
    if not 0 <= int(event.get("created") or 0) <= _LAST_SECOND:
        return "created: a unix timestamp."
    if b"\\u0000" in body:  # PostgreSQL's jsonb cannot hold NUL
        return "The event contains a NUL character."
    return None


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "detail": detail}}, status=status)


@method_decorator(csrf_exempt, name="dispatch")
class StripeWebhookView(View):
    """Verify, store once, answer at once; a job does the work."""

    def post(self, request: HttpRequest) -> JsonResponse:
        if not settings.STRIPE_WEBHOOK_SECRET:
            return _error(503, "stripe_not_configured", "STRIPE_WEBHOOK_SECRET is not set.")
        if len(request.body) > settings.STRIPE_WEBHOOK_MAX_BYTES:
            return _error(413, "payload_too_large", "The event is too large.")
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "invalid_json", "The body is not JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("created", 0), int):
            return _error(400, "invalid_event", "The body is not a Stripe event.")
        try:
            event = stripe.Webhook.construct_event(
                request.body, request.headers.get("Stripe-Signature", ""), settings.STRIPE_WEBHOOK_SECRET
            )
        except stripe.SignatureVerificationError:
            return _error(400, "invalid_signature", "The Stripe-Signature header does not verify.")
        except ValueError:
            return _error(400, "invalid_json", "The body is not a Stripe event.")
        payload: dict[str, Any] = event.to_dict()
        if not isinstance(payload.get("id"), str) or not payload["id"].startswith("evt_"):
            return _error(400, "invalid_event", "The event has no id.")
        problem = _unstorable(payload, request.body)
        if problem:
            return _error(400, "invalid_event", problem)
        stored, created = stripe_events.stripe_event_record(event=payload)
        return JsonResponse({"received": True, "duplicate": not created, "id": stored.id})
