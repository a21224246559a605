"""The agent's own profile over REST (besides the WebSocket): who am I, what I speak and handle, what I
have earned today. It reads payouts, so it sits in dispatch, above both (login and logout are the
marketplace's, in marketplace/agent_api.py)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace import services as marketplace_services
from marketplace.agent_api import agent_for
from marketplace.models import Agent
from marketplace.serializers import StrictCharField, StrictRegexField
from payouts import pricing, selectors


def me_payload(agent: Agent) -> dict[str, Any]:
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
            agent = marketplace_services.agent_update_profile(
                agent_id=agent.pk,
                languages=data.get("languages", agent.languages),
                skills=data.get("skills", agent.skills),
            )
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from exc
        return Response(me_payload(agent))
