"""Input and output shapes of the bot API."""

from __future__ import annotations

from typing import Any

import langcodes
from rest_framework import serializers

from . import selectors
from .models import Conversation, Message


class StrictCharField(serializers.CharField):
    """A string, not a number or a boolean quietly turned into one."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class StrictRegexField(serializers.RegexField):
    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class LanguageTagField(StrictRegexField):
    """A BCP 47 tag whose every subtag is registered with IANA (`sv`, `sv-SE`, `pt-BR`, `zh-Hant`):
    a tag no agent can have (`zz-NOPE`) would wait in a queue no one serves."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$", max_length=16, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if value and not langcodes.tag_is_valid(value):
            raise serializers.ValidationError("Not a known language tag (BCP 47, e.g. sv or sv-SE).")
        return value


class CustomerSerializer(serializers.Serializer):
    """Known fields are checked; other short scalar fields the bot sends are kept as they are."""

    id = StrictCharField(max_length=200, required=False, allow_blank=True)
    name = StrictCharField(max_length=200, required=False, allow_blank=True)
    locale = StrictCharField(max_length=35, required=False, allow_blank=True)
    email = serializers.EmailField(required=False, allow_blank=True)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        validated = dict(super().to_internal_value(data))
        extras = {
            str(key)[:64]: value
            for key, value in data.items()
            if key not in self.fields and isinstance(value, (str, int, float, bool)) and len(str(value)) <= 500
        }
        return {**dict(list(extras.items())[:20]), **validated}


class TranscriptEntrySerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["customer", "bot", "agent", "system"])
    text = StrictCharField(max_length=20_000, allow_blank=True, trim_whitespace=False)
    at = serializers.DateTimeField(required=False)


class EscalationInputSerializer(serializers.Serializer):
    external_id = StrictCharField(max_length=200)
    language = LanguageTagField(required=False, allow_blank=True)
    topic = StrictCharField(max_length=64, required=False, allow_blank=True)
    priority = serializers.ChoiceField(choices=Conversation.Priority.choices, default=Conversation.Priority.NORMAL)
    reason = StrictCharField(max_length=64, required=False, allow_blank=True)
    customer = CustomerSerializer(required=False)
    summary = StrictCharField(max_length=5_000, required=False, allow_blank=True)
    transcript = TranscriptEntrySerializer(many=True, required=False, max_length=1_000)


class MessageInputSerializer(serializers.Serializer):
    text = StrictCharField(max_length=20_000, trim_whitespace=False)
    external_message_id = StrictCharField(max_length=200, required=False, allow_blank=False)


class RatingInputSerializer(serializers.Serializer):
    score = serializers.IntegerField(min_value=1, max_value=5)
    comment = StrictCharField(max_length=5_000, required=False, allow_blank=True, default="")


class ReopenInputSerializer(serializers.Serializer):
    reason = StrictCharField(max_length=200, required=False, allow_blank=True, default="")


class AgentPublicSerializer(serializers.Serializer):
    display_name = serializers.CharField()


class ConversationOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    external_id = serializers.CharField()
    status = serializers.ChoiceField(choices=Conversation.Status.choices)
    queue_position = serializers.IntegerField(allow_null=True, help_text="1 = next; null once no longer waiting")
    estimated_wait_seconds = serializers.IntegerField(
        allow_null=True, help_text="null when no estimate can be made honestly (see wait_estimate_basis)"
    )
    wait_estimate_basis = serializers.ChoiceField(
        choices=["free_capacity", "handle_time", "no_agents_online"], allow_null=True
    )
    agent = AgentPublicSerializer(allow_null=True)
    language = serializers.CharField()
    topic = serializers.CharField()
    priority = serializers.CharField()
    outcome = serializers.CharField(allow_null=True)
    rating = serializers.DictField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def to_representation(self, instance: Conversation) -> dict[str, Any]:
        estimate = instance.told_estimate or selectors.wait_estimate(instance)
        agent = instance.assigned_agent
        return super().to_representation(
            {
                "id": instance.id,
                "external_id": instance.external_id,
                "status": instance.status,
                "queue_position": estimate.queue_position,
                "estimated_wait_seconds": estimate.seconds,
                "wait_estimate_basis": estimate.basis,
                "agent": {"display_name": agent.display_name} if agent else None,
                "language": instance.language,
                "topic": instance.topic,
                "priority": instance.priority,
                "outcome": instance.outcome or None,
                "rating": {"score": instance.rating_score, "comment": instance.rating_comment}
                if instance.rating_score is not None
                else None,
                "created_at": instance.created_at,
                "updated_at": instance.updated_at,
            }
        )


class MessageOutputSerializer(serializers.ModelSerializer):
    external_message_id = serializers.CharField(source="external_id", allow_null=True)

    class Meta:
        model = Message
        fields = ["id", "conversation", "role", "text", "external_message_id", "created_at"]
