"""Presence: the agent's status, its sockets, the grace period after the last one closes, and the
admin's force offline and suspend, each of which passes the agent's work on in one transaction.

A verb that starts from an agent reads the ids it needs without locks, then locks in the fixed
order (core.locks): its conversations, then the agent (`_with_agent_and_work_locked`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import jobs
from core.errors import Conflict
from marketplace.models import Agent, Conversation
from marketplace.services import agent_set_approval
from payouts import selectors as payout_selectors

from .. import events, selectors, tasks
from ..models import AgentConnection, Offer, ServerHeartbeat
from . import conversations, offers
from .errors import (
    NotApproved,
    PayoutsNotReady,
    TooManySockets,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


def agent_set_status(*, agent_id: str, status: str, actor: str, reason: str = "") -> Agent:
    """online / away / offline, chosen by the agent (on any of its devices) or an admin.

    `reason`, when the agent did not choose it (e.g. `operator`), goes to the app with the status.
    """
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent_id)
        if status == Agent.Status.ONLINE and agent.approval != Agent.Approval.APPROVED:
            raise NotApproved()
        if status == Agent.Status.ONLINE:
            readiness = payout_selectors.payout_readiness(agent)
            if not readiness.ready:
                raise PayoutsNotReady(readiness.detail)
        if agent.status != status:
            now = timezone.now()
            if status == Agent.Status.ONLINE:
                agent.consecutive_misses = 0
                if agent.active_count == 0:
                    agent.idle_since = now  # fairness counts idle time while online
            agent.status = status
            agent.status_changed_at = now
            agent.save(update_fields=["status", "status_changed_at", "consecutive_misses", "idle_since"])
        events.presence_on_commit(agent.pk, agent.status, reason)
        if status == Agent.Status.ONLINE:
            jobs.enqueue_on_commit(tasks.dispatch_agent, agent.pk)
    if status != Agent.Status.ONLINE:
        offers.offer_withdraw_for_agent(agent_id=agent_id, detail=f"agent_{status}")
    return agent


class _WorkChanged(Exception):
    """The agent's work changed between reading it and locking it: roll back and read it again."""


def _work_of(agent_id: str) -> set[str]:
    """Ids of the conversations assigned to the agent or offered to it now."""
    assigned = selectors.active_conversations(agent_id).values_list("pk", flat=True)
    offered = Offer.objects.filter(agent_id=agent_id, state=Offer.State.PENDING).values_list(
        "conversation_id", flat=True
    )
    return {*assigned, *offered}


def _with_agent_and_work_locked(agent_id: str, body: Callable[[Agent], T], *, tries: int = 5) -> T:
    """Run `body(agent)` in ONE transaction that holds the locks of the agent's conversations, then the agent's.

    The verb starts from the agent, but the lock order is Conversation, then Offer,
    then Agent: so its work is read without locks, its conversations are locked (in
    id order), then the agent, and the work read again. While the agent's row is held
    nobody can give it more (an offer skips a locked agent; an acceptance waits for
    it), so if the work is still what was locked, it stays so until the commit; if
    it grew in between, everything rolls back and it starts over. Whatever `body`
    does commits together or not at all.
    """
    for _ in range(tries):
        try:
            with transaction.atomic():
                work = _work_of(agent_id)
                list(Conversation.objects.select_for_update().filter(pk__in=work).order_by("pk").values_list("pk"))
                agent = Agent.objects.select_for_update().get(pk=agent_id)
                if not _work_of(agent_id) <= work:
                    raise _WorkChanged()
                return body(agent)
        except _WorkChanged:
            continue
    raise Conflict("The agent's work kept changing; try again.", code="agent_busy")


def agent_release_work(*, agent_id: str, reason: str) -> int:
    """Withdraw the agent's offer and re-queue its conversations at the front.

    Called inside `_with_agent_and_work_locked` (it does not lock on its own in the
    fixed order): one transaction, so the agent never ends up offline with work.
    """
    offers.offer_withdraw_for_agent(agent_id=agent_id, detail=reason)
    conversation_ids = list(selectors.active_conversations(agent_id).values_list("pk", flat=True))
    for conversation_id in conversation_ids:
        conversations.conversation_requeue(conversation_id=conversation_id, actor="system", reason=reason, front=True)
    return len(conversation_ids)


def agent_force_offline(*, agent_id: str, actor: str) -> Agent:
    """Admin: take the agent offline now and pass its work on (all or nothing)."""

    def force(agent: Agent) -> Agent:
        agent = agent_set_status(agent_id=agent_id, status=Agent.Status.OFFLINE, actor=actor, reason="operator")
        agent_release_work(agent_id=agent_id, reason="agent_offline")
        return agent

    return _with_agent_and_work_locked(agent_id, force)


def agent_suspend(*, agent_id: str, actor: str) -> Agent:
    """Admin: suspend the agent (it goes offline and cannot come back) and pass its work on (all or nothing)."""

    def suspend(agent: Agent) -> Agent:
        if agent.status != Agent.Status.OFFLINE:
            events.send_on_commit(agent_id, {"type": "presence", "status": Agent.Status.OFFLINE, "reason": "suspended"})
        agent = agent_set_approval(agent_id=agent_id, approval=Agent.Approval.SUSPENDED, actor=actor)
        agent_release_work(agent_id=agent_id, reason="agent_suspended")
        return agent

    return _with_agent_and_work_locked(agent_id, suspend)


@transaction.atomic
def connection_open(*, agent_id: str, channel_name: str, server_id: str) -> None:
    """Record an open socket; at most AGENT_MAX_SOCKETS per agent (counted under the agent's row lock).

    The row is written in one statement (INSERT ... ON CONFLICT DO UPDATE), not a locked read, a
    savepoint and an insert: every agent of a restarted process comes through here at once.
    """
    Agent.objects.select_for_update().filter(pk=agent_id).update(disconnected_at=None)
    others = AgentConnection.objects.filter(agent_id=agent_id).exclude(pk=channel_name)
    if others.count() >= settings.AGENT_MAX_SOCKETS:
        raise TooManySockets(f"At most {settings.AGENT_MAX_SOCKETS} sockets per agent: close one first.")
    AgentConnection.objects.bulk_create(
        [AgentConnection(channel_name=channel_name, agent_id=agent_id, server_id=server_id)],
        update_conflicts=True,
        unique_fields=["channel_name"],
        update_fields=["agent", "server_id"],
    )


def connection_close(*, channel_name: str) -> None:
    """A socket closed. When it was the agent's last, the grace period starts."""
    with transaction.atomic():
        agent_id = AgentConnection.objects.filter(pk=channel_name).values_list("agent_id", flat=True).first()
        if agent_id is None:
            return
        agent = Agent.objects.select_for_update().get(pk=agent_id)
        AgentConnection.objects.filter(pk=channel_name).delete()
        if AgentConnection.objects.filter(agent_id=agent_id).exists():
            return
        agent.disconnected_at = timezone.now()
        agent.save(update_fields=["disconnected_at"])
        jobs.enqueue_on_commit(tasks.release_if_gone, agent_id, countdown=settings.PRESENCE_GRACE_SECONDS)


def presence_release_if_gone(*, agent_id: str) -> bool:
    """After the grace period: an agent still without a connection goes offline and its work moves on.

    One transaction: the agent goes offline together with the withdrawal of its
    offer and the re-queue of each of its conversations, or nothing happens and
    the agent keeps `disconnected_at`, so the presence sweeper tries again.
    """

    def release(agent: Agent) -> tuple[str, int] | None:
        grace = timedelta(seconds=settings.PRESENCE_GRACE_SECONDS)
        if agent.disconnected_at is None or timezone.now() - agent.disconnected_at < grace:
            return None
        if AgentConnection.objects.filter(agent_id=agent_id).exists():
            return None
        was = agent.status
        agent.disconnected_at = None
        agent.status = Agent.Status.OFFLINE
        agent.status_changed_at = timezone.now()
        agent.save(update_fields=["disconnected_at", "status", "status_changed_at"])
        events.presence_on_commit(agent.pk, Agent.Status.OFFLINE, "disconnected")
        return was, agent_release_work(agent_id=agent_id, reason="agent_disconnected")

    released = _with_agent_and_work_locked(agent_id, release)
    if released is None:
        return False
    logger.info("%s gone past the grace period (was %s): offline, %s conversation(s) re-queued", agent_id, *released)
    return True


def server_heartbeat(*, server_id: str) -> None:
    ServerHeartbeat.objects.update_or_create(server_id=server_id, defaults={"seen_at": timezone.now()})


def presence_sweep() -> int:
    """Close the connections of web processes that stopped beating; release agents past grace."""
    cutoff = timezone.now() - timedelta(seconds=settings.SERVER_DEAD_AFTER_SECONDS)
    dead = list(ServerHeartbeat.objects.filter(seen_at__lt=cutoff).values_list("server_id", flat=True))
    closed = 0
    for channel_name in AgentConnection.objects.filter(server_id__in=dead).values_list("pk", flat=True):
        connection_close(channel_name=channel_name)
        closed += 1
    ServerHeartbeat.objects.filter(server_id__in=dead, seen_at__lt=cutoff).delete()
    # Connections whose process never beat at all (it died before its first beat).
    orphans = AgentConnection.objects.exclude(server_id__in=ServerHeartbeat.objects.values("server_id")).filter(
        opened_at__lt=cutoff
    )
    for channel_name in orphans.values_list("pk", flat=True):
        connection_close(channel_name=channel_name)
        closed += 1
    grace_cutoff = timezone.now() - timedelta(seconds=settings.PRESENCE_GRACE_SECONDS)
    for agent_id in Agent.objects.filter(disconnected_at__lt=grace_cutoff).values_list("pk", flat=True):
        try:
            presence_release_if_gone(agent_id=agent_id)
        except Exception:  # nothing of it was written; the next sweep tries again, the others go on now
            logger.exception("releasing %s failed; the next sweep retries", agent_id)
    return closed
