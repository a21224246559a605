"""Offers: a conversation proposed to one agent, with a deadline and a pay quote."""

from __future__ import annotations

import secrets

from django.db import models
from django.db.models import Q
from django.utils import timezone


def new_offer_id() -> str:
    return f"ofr_{secrets.token_hex(12)}"


class Offer(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        ACCEPTED = "accepted"
        DECLINED = "declined"
        EXPIRED = "expired"
        REVOKED = "revoked"

    id = models.CharField(primary_key=True, max_length=32, default=new_offer_id, editable=False)
    conversation = models.ForeignKey("marketplace.Conversation", on_delete=models.CASCADE, related_name="offers")
    agent = models.ForeignKey("marketplace.Agent", on_delete=models.CASCADE, related_name="offers")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    responded_at = models.DateTimeField(null=True, blank=True)
    pay_amount = models.PositiveIntegerField(help_text="Minor units")
    pay_currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=200, blank=True, help_text="Why it was declined or revoked")

    class Meta:
        constraints = [
            # The database itself guarantees one open offer per agent and per conversation.
            models.UniqueConstraint(fields=["agent"], condition=Q(state="pending"), name="offer_one_open_per_agent"),
            models.UniqueConstraint(
                fields=["conversation"], condition=Q(state="pending"), name="offer_one_open_per_conversation"
            ),
        ]
        indexes = [models.Index(fields=["state", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.conversation_id} -> {self.agent_id} ({self.state})"

    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()
