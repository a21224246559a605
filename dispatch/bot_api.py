"""The AI bot's API (docs/API.md, the bot's API): thin views over the services."""

from __future__ import annotations

from typing import cast

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.parsers import AnyContentTypeJSONParser, SafeJSONParser
from marketplace import selectors
from marketplace import services as marketplace_services
from marketplace.bot_auth import BotRateThrottle, BotSignatureAuthentication, IsBotIntegration
from marketplace.models import BotIntegration, Conversation
from marketplace.serializers import (
    ConversationOutputSerializer,
    EscalationInputSerializer,
    MessageInputSerializer,
    MessageOutputSerializer,
    RatingInputSerializer,
    ReopenInputSerializer,
)

from .services import conversations, escalations

# Bodies are JSON. The parser also takes JSON sent with another Content-Type (a bot's HTTP library may
# not set it), which is leniency, not a promise: the schema must not offer `*/*` (XML, YAML...) to clients.
JSON = "application/json"

_ERRORS = {
    400: OpenApiResponse(description="Malformed JSON or an invalid field (named in `error.field`)"),
    401: OpenApiResponse(
        description=(
            "Missing or wrong v2 signature (it binds method, path and body), unknown integration, a timestamp "
            "outside 300 s, or `signature_version`: only v1 was sent"
        )
    ),
    404: OpenApiResponse(description="No such conversation for this integration"),
    413: OpenApiResponse(description="Body larger than BOT_MAX_BODY_BYTES"),
    429: OpenApiResponse(
        description=(
            "`rate_limited`: the integration's token bucket is empty (BOT_RATE_BURST at once, "
            "BOT_RATE_LIMIT_PER_MINUTE sustained, or the integration's own). Nothing was done; `Retry-After` "
            "(whole seconds, at least 1) and `error.retry_after_seconds` say when a token is back"
        ),
        examples=[
            OpenApiExample(
                "rate_limited",
                value={
                    "error": {
                        "code": "rate_limited",
                        "detail": "Request was throttled. Expected available in 1 second.",
                        "retry_after_seconds": 1,
                    }
                },
                response_only=True,
                status_codes=["429"],
            )
        ],
    ),
}

# Only a new escalation can be refused for load: calls about existing conversations never are.
_OVERLOADED = OpenApiResponse(
    description=(
        "`overloaded`: a new escalation (an external_id not seen before) that would wait past "
        "ADMISSION_SLA_SECONDS; `error.estimated_wait_seconds` is the wait it would have been told, "
        "`Retry-After` and `error.retry_after_seconds` when to try again. Nothing was stored. The same code "
        "without an estimate: the web process was full at its edge (INTAKE_MAX_IN_FLIGHT, INTAKE_MAX_WAITING)"
    ),
    examples=[
        OpenApiExample(
            "overloaded",
            value={
                "error": {
                    "code": "overloaded",
                    "detail": (
                        "More conversations are waiting than the agents online can answer within 600 s: this one "
                        "would wait about 842 s. Nothing was stored; escalate again after Retry-After seconds."
                    ),
                    "estimated_wait_seconds": 842,
                    "retry_after_seconds": 60,
                }
            },
            response_only=True,
            status_codes=["503"],
        )
    ],
)


class BotApi(APIView):
    parser_classes = [SafeJSONParser, AnyContentTypeJSONParser]
    authentication_classes = [BotSignatureAuthentication]
    permission_classes = [IsBotIntegration]
    throttle_classes = [BotRateThrottle]

    def integration(self) -> BotIntegration:
        return cast(BotIntegration, self.request.auth)  # IsBotIntegration checked it

    def actor(self) -> str:
        return f"bot:{self.integration().pk}"

    def conversation(self, conversation_id: str) -> Conversation:
        conversation = selectors.conversation_for_integration(
            integration=self.integration(), conversation_id=conversation_id
        )
        if conversation is None:
            raise NotFound("No conversation with this id.")
        return conversation

    @staticmethod
    def render(conversation: Conversation, code: int = status.HTTP_200_OK) -> Response:
        return Response(ConversationOutputSerializer(conversation).data, status=code)


class EscalationCreateApi(BotApi):
    @extend_schema(
        operation_id="escalation_create",
        request={JSON: EscalationInputSerializer},
        responses={
            201: ConversationOutputSerializer,
            200: ConversationOutputSerializer,
            409: OpenApiResponse(description="The same external_id with another body (`idempotency_mismatch`)"),
            **_ERRORS,
            503: _OVERLOADED,
        },
        description=(
            "Hand a conversation to a human. The same external_id with the same body again answers 200 with that "
            "conversation (even while new ones are refused); with another body 409 `idempotency_mismatch`. "
            "A new one that would wait past ADMISSION_SLA_SECONDS is refused with 503 `overloaded`."
        ),
    )
    def post(self, request: Request) -> Response:
        serializer = EscalationInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        conversation, created = escalations.conversation_escalate(
            integration=self.integration(), data=marketplace_services.EscalationInput(**serializer.validated_data)
        )
        return self.render(conversation, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class EscalationDetailApi(BotApi):
    @extend_schema(operation_id="escalation_retrieve", responses={200: ConversationOutputSerializer, **_ERRORS})
    def get(self, request: Request, conversation_id: str) -> Response:
        return self.render(self.conversation(conversation_id))


class EscalationMessageApi(BotApi):
    @extend_schema(
        operation_id="escalation_message_create",
        request={JSON: MessageInputSerializer},
        responses={
            201: MessageOutputSerializer,
            200: MessageOutputSerializer,
            409: OpenApiResponse(description="Closed"),
            **_ERRORS,
        },
        description="A customer's message. Idempotent on external_message_id (200 with the stored message).",
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        conversation = self.conversation(conversation_id)
        serializer = MessageInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        message, created = escalations.conversation_add_customer_message(
            conversation=conversation,
            text=serializer.validated_data["text"],
            external_message_id=serializer.validated_data.get("external_message_id"),
        )
        return Response(
            MessageOutputSerializer(message).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class EscalationCancelApi(BotApi):
    @extend_schema(
        operation_id="escalation_cancel",
        request=None,
        responses={200: ConversationOutputSerializer, **_ERRORS},
        description=(
            "The customer left. Any offer is withdrawn and the agent's chat is closed. "
            "On a conversation already closed it changes nothing and answers 200 with it as it is."
        ),
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        conversation = self.conversation(conversation_id)
        return self.render(escalations.conversation_cancel(conversation_id=conversation.pk, actor=self.actor()))


class EscalationReopenApi(BotApi):
    @extend_schema(
        operation_id="escalation_reopen",
        request={JSON: ReopenInputSerializer},
        responses={
            200: ConversationOutputSerializer,
            409: OpenApiResponse(description="Not resolved, or past the reopen window"),
            **_ERRORS,
        },
        description=(
            "The customer came back: the resolution did not hold. The conversation waits again at the front "
            "of the queue with its whole history, and the resolution's pay is disputed (withheld inside the "
            "payout hold, clawed back after it)."
        ),
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        conversation = self.conversation(conversation_id)
        serializer = ReopenInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        reopened = conversations.conversation_reopen(
            conversation_id=conversation.pk, actor=self.actor(), reason=serializer.validated_data["reason"]
        )
        return self.render(reopened)


class EscalationRatingApi(BotApi):
    @extend_schema(
        operation_id="escalation_rating_create",
        request={JSON: RatingInputSerializer},
        responses={
            201: ConversationOutputSerializer,
            409: OpenApiResponse(description="Not resolved yet, or already rated"),
            **_ERRORS,
        },
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        conversation = self.conversation(conversation_id)
        serializer = RatingInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rated = escalations.conversation_rate(
            conversation_id=conversation.pk, actor=self.actor(), **serializer.validated_data
        )
        return self.render(rated, status.HTTP_201_CREATED)
