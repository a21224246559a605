"""What a conversation pays the agent who resolves it, quoted when it is offered.

base (the most specific active PayRule, else the policy's default)
  x surge (from queue pressure: waiting conversations per free slot of the
           agents online in that language, taken at offer time)
  + a quality bonus when the customer rates the resolution 4 or 5 (quoted
    upfront, earned only with the rating).
The accepted offer's quote is locked on the assignment and is what is paid.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.core.cache import cache

from marketplace import selectors as marketplace_selectors
from marketplace.models import Conversation

from .models import PayPolicy, PayRule

SURGE_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class Quote:
    amount: int  # minor units, surge included
    currency: str
    base: int
    surge: Decimal
    quality_bonus: int


def base_amount(conversation: Conversation, policy: PayPolicy) -> int:
    best: tuple[int, int] | None = None
    for rule in PayRule.objects.filter(active=True).only("topic", "priority", "language", "amount"):
        if (
            (rule.topic and rule.topic != conversation.topic)
            or (rule.priority and rule.priority != conversation.priority)
            or (rule.language and rule.language != conversation.language)
        ):
            continue
        specificity = 4 * bool(rule.topic) + 2 * bool(rule.priority) + bool(rule.language)
        if best is None or specificity > best[0]:
            best = (specificity, rule.amount)
    return best[1] if best else policy.default_amount


def queue_pressure(language: str) -> float:
    """Waiting conversations per free slot (a slot-less pool counts as one free slot)."""
    key = f"pay.pressure.{language or '-'}"
    cached = cache.get(key)
    if cached is not None:
        return float(cached)
    waiting = marketplace_selectors.waiting_conversations()
    if language:
        waiting = waiting.filter(language__in=[language, ""])
    pressure = waiting.count() / max(marketplace_selectors.pool_capacity(language).free, 1)
    cache.set(key, pressure, SURGE_CACHE_SECONDS)
    return pressure


def surge_multiplier(pressure: float, policy: PayPolicy) -> Decimal:
    if not policy.surge_enabled or pressure <= policy.surge_threshold:
        return Decimal("1.00")
    raw = 1 + policy.surge_per_unit * (pressure - policy.surge_threshold)
    return Decimal(str(min(raw, max(policy.surge_max, 1.0)))).quantize(Decimal("0.01"))


def current_surge(language: str) -> Decimal:
    """What an offer in this language would be multiplied by now (shown in the agent app)."""
    return surge_multiplier(queue_pressure(language), PayPolicy.current())


def quote(conversation: Conversation) -> Quote:
    policy = PayPolicy.current()
    base = base_amount(conversation, policy)
    surge = surge_multiplier(queue_pressure(conversation.language), policy)
    amount = int((Decimal(base) * surge).quantize(Decimal("1"), rounding=ROUND_HALF_UP))
    return Quote(
        amount=amount,
        currency=settings.PLATFORM_CURRENCY,
        base=base,
        surge=surge,
        quality_bonus=policy.quality_bonus_amount,
    )


def handling_share(quote_amount: int, policy: PayPolicy | None = None) -> int:
    """What an agent who transfers a conversation earns for the work done: a share of its own quote
    (`PayPolicy.transfer_share_percent`), rounded half up. The resolver's pay is not reduced by it."""
    percent = (policy or PayPolicy.current()).transfer_share_percent
    share = Decimal(quote_amount) * Decimal(percent) / Decimal(100)
    return int(share.quantize(Decimal("1"), rounding=ROUND_HALF_UP))
