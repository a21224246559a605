"""Reads for dispatch: who may take a conversation, in what order, and what an agent sees."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import (
    BooleanField,
    Case,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    FloatField,
    Func,
    OuterRef,
    Q,
    QuerySet,
    Value,
    When,
)
from django.db.models.functions import Cast
from django.utils import timezone

from marketplace.models import Agent, Conversation, Message

from .models import Assignment, ConversationTransfer, DispatchWeights, Offer

_REFUSED = (Offer.State.DECLINED, Offer.State.EXPIRED)


def skills_widened(conversation: Conversation, now: datetime) -> bool:
    """After SKILL_WIDEN_AFTER_SECONDS of waiting, agents without the topic's skill may take it."""
    return now - conversation.created_at >= timedelta(seconds=settings.SKILL_WIDEN_AFTER_SECONDS)


def available_agents() -> QuerySet[Agent]:
    """Online, approved, with a free slot and no open offer."""
    return Agent.objects.filter(
        status=Agent.Status.ONLINE, approval=Agent.Approval.APPROVED, active_count__lt=F("capacity")
    ).exclude(Exists(Offer.objects.filter(agent=OuterRef("pk"), state=Offer.State.PENDING)))


class JsonListHas(Func):
    """True when a JSON list column holds `value`: jsonb containment on PostgreSQL, json_each on SQLite."""

    output_field = BooleanField()

    def __init__(self, column: str, value: str) -> None:
        super().__init__(F(column))
        self.value = value

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        column, params = compiler.compile(self.source_expressions[0])
        sql = f"EXISTS (SELECT 1 FROM json_each({column}) WHERE json_each.value = %s)"  # noqa: S608 (a column, a parameter)
        return sql, (*params, self.value)

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        column, params = compiler.compile(self.source_expressions[0])
        return f"({column} @> %s::jsonb)", (*params, json.dumps([self.value]))


class SecondsSince(Func):
    """Seconds from a timestamp column to `now` (a parameter, so every row is scored at the same instant)."""

    output_field = FloatField()
    template = "((julianday(%(expressions)s)) * 86400.0)"  # SQLite
    arg_joiner = ") - julianday("

    def __init__(self, column: str, now: datetime) -> None:
        super().__init__(Value(now, output_field=DateTimeField()), F(column))

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        template = "EXTRACT(EPOCH FROM (%(expressions)s))::float"
        return self.as_sql(compiler, connection, template=template, arg_joiner=" - ", **extra)


def _ratio(numerator: Any, denominator: Any) -> Any:
    return ExpressionWrapper(numerator / denominator, output_field=FloatField())


def score_expression(conversation: Conversation, weights: DispatchWeights, now: datetime) -> Any:
    """Higher is better; each term is in [0, 1] (docs/DISPATCH.md). Computed by the database,
    so ranking fetches the best few agents instead of scoring every available one in Python."""
    k = float(weights.prior_weight)

    def num(column: str) -> Any:
        return Cast(column, FloatField())

    idle = SecondsSince("idle_since", now)
    half = Value(max(float(weights.idle_half_seconds), 1e-6))
    idle_term = Case(
        When(Q(active_count=0, idle_since__isnull=False, idle_since__lt=now), then=_ratio(idle, idle + half)),
        default=Value(0.0),
        output_field=FloatField(),
    )
    rating = _ratio(num("rating_sum") + Value(4.0 * k), num("rating_count") + Value(k))  # prior: 4 stars
    closed = num("resolved_count") + num("unresolved_count")
    resolution = _ratio(num("resolved_count") + Value(0.8 * k), closed + Value(k))  # prior: 80 % resolved
    quality_term = Value(0.7 / 4) * (rating - Value(1.0)) + Value(0.3) * resolution
    acceptance = _ratio(num("offers_accepted") + Value(0.9 * k), num("offers_received") + Value(k))  # prior: 90 %
    skill = (
        Case(When(JsonListHas("skills", conversation.topic), then=Value(weights.skill_bonus)), default=Value(0.0))
        if conversation.topic
        else Value(weights.skill_bonus)
    )
    return ExpressionWrapper(
        Value(weights.fairness) * idle_term
        + Value(weights.quality) * quality_term
        + Value(weights.reliability) * acceptance
        + skill,
        output_field=FloatField(),
    )


def ranked_candidates(conversation: Conversation, now: datetime | None = None, limit: int = 20) -> list[str]:
    """Ids of the agents who may be offered the conversation now, best first (at most `limit`)."""
    now = now or timezone.now()
    refused = Offer.objects.filter(conversation=conversation, state__in=_REFUSED).values("agent_id")
    agents = available_agents().exclude(pk__in=refused)
    transfer = queued_transfer(conversation.pk)
    if transfer is not None:  # transferred to a queue: its language and skills, never back to its first agent
        agents = agents.exclude(pk=transfer.from_agent_id)
        if transfer.language:
            agents = agents.filter(JsonListHas("languages", transfer.language))
        if transfer.skills and not transfer_skills_widened(transfer, now):
            for skill in transfer.skills:
                agents = agents.filter(JsonListHas("skills", skill))
        elif conversation.topic and not skills_widened(conversation, now):
            agents = agents.filter(JsonListHas("skills", conversation.topic))
        ranked = agents.annotate(score=score_expression(conversation, DispatchWeights.current(), now))
        return list(ranked.order_by("-score", "pk").values_list("pk", flat=True)[:limit])
    if conversation.language:
        agents = agents.filter(JsonListHas("languages", conversation.language))
    if conversation.topic and not skills_widened(conversation, now):
        agents = agents.filter(JsonListHas("skills", conversation.topic))
    ranked = agents.annotate(score=score_expression(conversation, DispatchWeights.current(), now))
    return list(ranked.order_by("-score", "pk").values_list("pk", flat=True)[:limit])


def conversations_for(agent: Agent, now: datetime | None = None, limit: int = 10) -> list[str]:
    """Ids of the first queued conversations this agent may take, in queue order (filtered in SQL)."""
    now = now or timezone.now()
    refused = Offer.objects.filter(agent=agent, state__in=_REFUSED).values("conversation_id")
    widened = now - timedelta(seconds=settings.SKILL_WIDEN_AFTER_SECONDS)
    queued = (
        Conversation.objects.filter(status=Conversation.Status.QUEUED, language__in=[*(agent.languages or []), ""])
        .filter(Q(topic__in=[*(agent.skills or []), ""]) | Q(created_at__lte=widened))
        .exclude(pk__in=refused)
        .order_by("queue_key", "id")
    )
    transferred = list(
        ConversationTransfer.objects.filter(
            state=ConversationTransfer.State.QUEUED, conversation__status=Conversation.Status.QUEUED
        ).select_related("conversation")
    )
    if not transferred:  # the usual case: one small indexed query more, the main query as it was
        return list(queued.values_list("pk", flat=True)[:limit])
    # Conversations transferred to a queue are routed by the transfer's language and skills, not their own.
    refused_ids = set(Offer.objects.filter(agent=agent, state__in=_REFUSED).values_list("conversation_id", flat=True))
    rows = list(queued.exclude(pk__in=[t.conversation_id for t in transferred]).values_list("queue_key", "pk")[:limit])
    rows += [
        (t.conversation.queue_key, t.conversation_id)
        for t in transferred
        if t.conversation_id not in refused_ids and transfer_fits(agent, t, now)
    ]
    return [pk for _, pk in sorted(rows)[:limit]]


def queued_transfer(conversation_id: str) -> ConversationTransfer | None:
    """The transfer a queued conversation waits under, if it was transferred to a queue."""
    return ConversationTransfer.objects.filter(
        conversation_id=conversation_id, state=ConversationTransfer.State.QUEUED
    ).first()


def transfer_skills_widened(transfer: ConversationTransfer, now: datetime) -> bool:
    """A transfer's skills are required for SKILL_WIDEN_AFTER_SECONDS from when it joined the queue, then
    widen as a topic does: a transfer to a queue nobody staffs does not strand the customer."""
    since = transfer.queued_at or transfer.created_at
    return now - since >= timedelta(seconds=settings.SKILL_WIDEN_AFTER_SECONDS)


def transfer_fits(agent: Agent, transfer: ConversationTransfer, now: datetime) -> bool:
    """May this agent be offered the conversation transferred to a queue (`ranked_candidates`, in Python)?"""
    conversation = transfer.conversation
    if agent.pk == transfer.from_agent_id:
        return False
    if transfer.language and transfer.language not in (agent.languages or []):
        return False
    skills = set(agent.skills or [])
    if transfer.skills and not transfer_skills_widened(transfer, now):
        return set(transfer.skills) <= skills
    return not conversation.topic or conversation.topic in skills or skills_widened(conversation, now)


def transfer_author_wrote(transfer: ConversationTransfer) -> bool:
    """Real work done: the transferring agent sent at least one message to the customer in its spell."""
    assignment = transfer.from_assignment
    messages = Message.objects.filter(
        conversation_id=transfer.conversation_id,
        role=Message.Role.AGENT,
        agent_id=transfer.from_agent_id,
        created_at__gte=assignment.started_at,
    )
    if assignment.ended_at is not None:
        messages = messages.filter(created_at__lte=assignment.ended_at)
    return messages.exists()


def pending_offer(agent_id: str) -> Offer | None:
    return Offer.objects.select_related("conversation").filter(agent_id=agent_id, state=Offer.State.PENDING).first()


def active_conversations(agent_id: str) -> QuerySet[Conversation]:
    return (
        Conversation.objects.filter(assigned_agent_id=agent_id, status=Conversation.Status.ASSIGNED)
        .prefetch_related("messages", "notes")
        .order_by("assigned_at")
    )


def agent_for_user(user: Any) -> Agent | None:
    return Agent.objects.filter(user=user).first()


# --- what payouts is told about an agent's work (payouts does not read dispatch) --------------


def assignment_pay(assignment: Assignment) -> dict[str, Any]:
    """The plain values a resolution earning is made of: the locked quote and where it was made."""
    offer: Offer | None = assignment.offer
    detail: dict[str, Any] = (
        {"quoted_at": "assignment"}
        if offer is None
        else {"quoted_at": "offer", "offer_id": offer.id, "base": offer.pay_base, "surge": str(offer.pay_surge)}
    )
    return {
        "assignment_id": assignment.pk,
        "agent_id": assignment.agent_id,
        "conversation_id": assignment.conversation_id,
        "amount": assignment.pay_amount,
        "currency": assignment.pay_currency,
        "detail": detail,
    }


def engaged_seconds(*, agent_id: str, start: datetime, end: datetime) -> float:
    """Time holding an offer or at least one conversation, overlaps counted once."""
    now = timezone.now()
    spans: list[tuple[datetime, datetime]] = []
    for created, responded, expires in Offer.objects.filter(
        agent_id=agent_id, created_at__lt=end, expires_at__gt=start - timedelta(hours=1)
    ).values_list("created_at", "responded_at", "expires_at"):
        # An offer cannot be taken after it expires, however late the expiry was recorded.
        spans.append((created, min(responded or expires, expires, now)))
    for began, ended in (
        Assignment.objects.filter(agent_id=agent_id, started_at__lt=end)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=start))
        .values_list("started_at", "ended_at")
    ):
        spans.append((began, ended or now))
    total = 0.0
    cursor = start
    for began, ended in sorted((max(b, start), min(e, end)) for b, e in spans):
        if ended <= cursor:
            continue
        total += (ended - max(began, cursor)).total_seconds()
        cursor = ended
    return total


def engaged_agent_ids(*, start: datetime, end: datetime) -> set[str]:
    """Agents who held a conversation or an offer between start and end."""
    return set(
        Assignment.objects.filter(started_at__lt=end)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=start))
        .values_list("agent_id", flat=True)
    ) | set(
        Offer.objects.filter(created_at__gte=start - timedelta(hours=1), created_at__lt=end).values_list(
            "agent_id", flat=True
        )
    )


def quality_bonuses(conversation_id: str) -> dict[int, int]:
    """The quality bonus locked on each of the conversation's assignments, by assignment id."""
    return dict(Assignment.objects.filter(conversation_id=conversation_id).values_list("pk", "quality_bonus"))
