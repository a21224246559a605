"""Reads for dispatch: who may take a conversation, in what order, and what an agent sees."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db.models import Exists, F, OuterRef, QuerySet
from django.utils import timezone

from marketplace.models import Agent, Conversation

from .models import DispatchWeights, Offer

_REFUSED = (Offer.State.DECLINED, Offer.State.EXPIRED)


def skills_widened(conversation: Conversation, now: datetime) -> bool:
    """After SKILL_WIDEN_AFTER_SECONDS of waiting, agents without the topic's skill may take it."""
    return now - conversation.created_at >= timedelta(seconds=settings.SKILL_WIDEN_AFTER_SECONDS)


def speaks(agent: Agent | Candidate, conversation: Conversation) -> bool:
    return not conversation.language or conversation.language in (agent.languages or [])


def has_skill(agent: Agent | Candidate, conversation: Conversation) -> bool:
    return not conversation.topic or conversation.topic in (agent.skills or [])


def available_agents() -> QuerySet[Agent]:
    """Online, approved, with a free slot and no open offer."""
    return Agent.objects.filter(
        status=Agent.Status.ONLINE, approval=Agent.Approval.APPROVED, active_count__lt=F("capacity")
    ).exclude(Exists(Offer.objects.filter(agent=OuterRef("pk"), state=Offer.State.PENDING)))


_RANK_FIELDS = (
    "pk",
    "languages",
    "skills",
    "active_count",
    "idle_since",
    "rating_sum",
    "rating_count",
    "resolved_count",
    "unresolved_count",
    "offers_accepted",
    "offers_received",
)


class Candidate(NamedTuple):
    """The figures ranking needs, without building a model instance per agent."""

    pk: str
    languages: list[str]
    skills: list[str]
    active_count: int
    idle_since: datetime | None
    rating_sum: int
    rating_count: int
    resolved_count: int
    unresolved_count: int
    offers_accepted: int
    offers_received: int


def score(agent: Agent | Candidate, conversation: Conversation, weights: DispatchWeights, now: datetime) -> float:
    """Higher is better. Each term is in [0, 1]; see docs/DISPATCH.md."""
    idle = (now - agent.idle_since).total_seconds() if agent.active_count == 0 and agent.idle_since else 0.0
    idle_term = idle / (idle + weights.idle_half_seconds) if idle > 0 else 0.0
    k = weights.prior_weight
    rating = (agent.rating_sum + 4.0 * k) / (agent.rating_count + k)  # prior: 4 stars
    closed = agent.resolved_count + agent.unresolved_count
    resolution = (agent.resolved_count + 0.8 * k) / (closed + k)  # prior: 80 % resolved
    quality_term = 0.7 * (rating - 1) / 4 + 0.3 * resolution
    acceptance = (agent.offers_accepted + 0.9 * k) / (agent.offers_received + k)  # prior: 90 % accepted
    skill = weights.skill_bonus if has_skill(agent, conversation) else 0.0
    return weights.fairness * idle_term + weights.quality * quality_term + weights.reliability * acceptance + skill


def ranked_candidates(conversation: Conversation, now: datetime | None = None) -> list[Candidate]:
    """Agents who may be offered the conversation now, best first."""
    now = now or timezone.now()
    refused = Offer.objects.filter(conversation=conversation, state__in=_REFUSED).values("agent_id")
    widened = skills_widened(conversation, now)
    rows = available_agents().exclude(pk__in=refused).values_list(*_RANK_FIELDS)
    candidates = [
        agent
        for agent in map(Candidate._make, rows)
        if speaks(agent, conversation) and (widened or has_skill(agent, conversation))
    ]
    weights = DispatchWeights.current()
    return sorted(candidates, key=lambda a: (-score(a, conversation, weights, now), a.pk))


def conversations_for(agent: Agent, now: datetime | None = None, scan: int = 200) -> list[str]:
    """Ids of the queued conversations this agent may take, in queue order."""
    now = now or timezone.now()
    refused = Offer.objects.filter(agent=agent, state__in=_REFUSED).values("conversation_id")
    queued = (
        Conversation.objects.filter(status=Conversation.Status.QUEUED, language__in=[*(agent.languages or []), ""])
        .exclude(pk__in=refused)
        .only("id", "topic", "created_at")
        .order_by("queue_key", "id")
    )
    return [c.pk for c in queued[:scan] if has_skill(agent, c) or skills_widened(c, now)]


def pending_offer(agent_id: str) -> Offer | None:
    return Offer.objects.select_related("conversation").filter(agent_id=agent_id, state=Offer.State.PENDING).first()


def active_conversations(agent_id: str) -> QuerySet[Conversation]:
    return (
        Conversation.objects.filter(assigned_agent_id=agent_id, status=Conversation.Status.ASSIGNED)
        .prefetch_related("messages")
        .order_by("assigned_at")
    )


def agent_for_user(user: Any) -> Agent | None:
    return Agent.objects.filter(user=user).first()
