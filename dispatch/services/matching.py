"""Matching: which waiting conversation goes to which free agent, first come first served.

The ranking itself is a query (dispatch.selectors.ranked_candidates, conversations_for); this
module walks it and makes the offer (dispatch.services.offers).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from marketplace.models import Agent, Conversation

from .. import selectors
from ..models import Offer
from . import offers
from .errors import (
    AgentUnavailable,
    OfferNotOpen,
)


def conversation_dispatch(*, conversation_id: str) -> Offer | None:
    """Offer a queued conversation to the best eligible agent, if any."""
    conversation = Conversation.objects.filter(pk=conversation_id, status=Conversation.Status.QUEUED).first()
    if conversation is None:
        return None
    # First come, first served: while an older conversation waits, a free agent is handed the
    # oldest one it may take (a newcomer's job can run before that of an agent just freed).
    older_waiting = Conversation.objects.filter(
        status=Conversation.Status.QUEUED, queue_key__lt=conversation.queue_key
    ).exists()
    for agent_id in selectors.ranked_candidates(conversation):
        if older_waiting:
            # Each free agent, best first, takes the oldest conversation it may take, until one takes
            # this one: no agent stays idle beside a waiting customer (one offer per job left the
            # newcomer waiting for the sweeper while a second free agent sat idle: bench/queueing.py).
            offer = agent_dispatch(agent_id=agent_id)
            if offer is not None and offer.conversation_id == conversation_id:
                return offer
            continue
        try:
            return offers.offer_create(conversation_id=conversation_id, agent_id=agent_id)
        except AgentUnavailable:
            continue  # someone else was faster; the next candidate
        except OfferNotOpen:
            return None  # offered, assigned or cancelled meanwhile
    return None


def agent_dispatch(*, agent_id: str, wait_for_agent: bool = False) -> Offer | None:
    """An agent has room: offer it the first waiting conversation it may take.

    When several agents free up at once they all want the head of the queue;
    each claims a conversation with SKIP LOCKED and moves on past the ones
    another dispatcher holds, so none of them gives up while work waits.
    `wait_for_agent` (the agent's own job, `tasks.dispatch_agent`) waits for the
    agent's row rather than skip it: skipping it gave up on the only agent the job
    is for, and a freed agent waited for the sweeper (issue 11.3).
    """
    # available_agents() for one agent, in two plain queries: its correlated subquery costs more to
    # build in Python than both cost to run (the dispatch profile of issue 13).
    if Offer.objects.filter(agent_id=agent_id, state=Offer.State.PENDING).exists():
        return None
    agent = (
        Agent.objects.filter(
            pk=agent_id,
            status=Agent.Status.ONLINE,
            approval=Agent.Approval.APPROVED,
            active_count__lt=F("capacity"),
        )
        .only("pk", "languages", "skills")
        .first()
    )
    if agent is None:
        return None
    for conversation_id in selectors.conversations_for(agent):
        try:
            with transaction.atomic():
                claimed = (
                    Conversation.objects.select_for_update(skip_locked=True)
                    .filter(pk=conversation_id, status=Conversation.Status.QUEUED)
                    .values_list("pk", flat=True)
                    .first()
                )
                if claimed is None:
                    continue  # another dispatcher has it, or it is no longer waiting
                return offers.offer_create(
                    conversation_id=conversation_id, agent_id=agent_id, wait_for_agent=wait_for_agent
                )
        except OfferNotOpen:
            continue
        except AgentUnavailable:
            return None  # the agent got an offer or lost its room meanwhile
    return None


def dispatch_sweep(*, limit: int = 200) -> int:
    """Work conservation's safety net: conversations that waited past the events that should
    have placed them get another try, oldest first.

    Covers what no event triggers (the skill filter widening with time) and any
    dispatch job lost with a crashed worker. It costs one query while nobody
    has room, and leaves fresh conversations to their own dispatch jobs.
    """
    if not selectors.available_agents().exists():
        return 0
    stale = timezone.now() - timedelta(seconds=settings.DISPATCH_SWEEP_MIN_WAIT_SECONDS)
    waiting = Conversation.objects.filter(status=Conversation.Status.QUEUED, queued_at__lte=stale).order_by(
        "queue_key", "id"
    )
    offered = 0
    for conversation_id in list(waiting.values_list("pk", flat=True)[:limit]):
        if conversation_dispatch(conversation_id=conversation_id) is not None:
            offered += 1
        elif not selectors.available_agents().exists():
            break
    return offered
