"""What a conversation pays the agent who resolves it, quoted at offer time."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from marketplace.models import Conversation


@dataclass(frozen=True)
class Quote:
    amount: int  # minor units
    currency: str


def quote(conversation: Conversation) -> Quote:
    """A flat default until pay rules exist (payouts, issue 4)."""
    return Quote(amount=settings.DEFAULT_PAY_AMOUNT, currency=settings.PLATFORM_CURRENCY)
