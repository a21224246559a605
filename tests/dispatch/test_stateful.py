"""Random sequences of what bots, agents, admins and time do, on PostgreSQL (issue 11.1).

A Hypothesis state machine drives the bot through the real HTTP API (signed
requests, the conftest's BotClient), the agents through the services their
socket calls (connect, presence, accept, decline, resolve, disconnect), admins
through the services their actions call (re-queue, reassign, suspend, approve,
force offline), and time through a clock moved forward (offers lapse, grace
periods end) with the sweepers running as it passes; the background jobs a
step starts run right after it. After every step:

* no request answered 5xx, and each refusal of an agent or admin is a 4xx domain error;
* no wait estimate stored (on the conversation, in a `conversation.queued` callback)
  or computed now is negative;
* every conversation is in exactly one consistent state: its status agrees with its
  pending offer, its open assignment and its agent; each agent's `active_count` is
  the number of conversations assigned to it, within its capacity, with at most one
  pending offer, and none while it is not online.

Background jobs are recorded and run in order after each step: the races between
them are the business of test_races.py and test_handoff.py. Which rules may run
depends only on what the machine itself recorded, never on the database, whose
random ids can order ties differently when Hypothesis replays a case (a rule
that finds nothing to act on does nothing).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from rest_framework.exceptions import APIException

from dispatch.models import AgentConnection, Assignment, ConversationTransfer, Offer
from dispatch.services import conversations, escalations, matching, presence, transfers
from dispatch.services import errors as dispatch_errors
from dispatch.services import offers as dispatch_offers
from marketplace import selectors, services
from marketplace.models import Agent, CallbackEvent, Conversation
from payouts.models import Earning

from ..conftest import BotClient

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]

PRIORITIES = st.sampled_from(["low", "normal", "high", "urgent"])
PICK = st.integers(min_value=0, max_value=1_000)  # an index into what exists, modulo its length


def _truncate_app_tables() -> None:
    """A clean database for each run of the machine (TRUNCATE: the ledger refuses DELETE)."""
    models = [
        model
        for label in ("marketplace", "dispatch", "payouts", "authtoken")
        for model in apps.get_app_config(label).get_models(include_auto_created=True)
    ]
    models.append(get_user_model())
    tables = ", ".join(connection.ops.quote_name(model._meta.db_table) for model in models)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} CASCADE")  # noqa: S608 - our own table names


def settles(step: Callable[..., None]) -> Callable[..., None]:
    """After the step, the background jobs it started run (Marketplace.settle)."""

    @functools.wraps(step)
    def run(self: Marketplace, **kwargs: Any) -> None:
        step(self, **kwargs)
        self.settle()

    return run


class Marketplace(RuleBasedStateMachine):
    """One integration, three agents of capacities 1, 2 and 1, and whatever the rules make of them."""

    def __init__(self, make_integration: Any, make_agent: Any, recorded_jobs: Any, clock: Any) -> None:
        super().__init__()
        _truncate_app_tables()
        cache.clear()
        recorded_jobs.clear()
        self.jobs = recorded_jobs
        self.clock = clock
        self.bot = BotClient(make_integration())
        self.agents = [make_agent(online=False, capacity=capacity).pk for capacity in (1, 2, 1)]
        self.conversations: list[str] = []
        self.bodies: dict[str, dict[str, Any]] = {}  # what each conversation was escalated with
        self.sockets: dict[str, list[str]] = {agent_id: [] for agent_id in self.agents}
        self.channels = 0
        self.external = 0
        for agent_id in self.agents:  # the shift starts: every agent online on one phone
            self.connect_and_go_online(pick=self.agents.index(agent_id))

    # --- helpers ----------------------------------------------------------------------

    def answered(self, response: Any) -> Any:
        assert response.status_code < 500, (response.status_code, response.content)
        if response.status_code >= 400:
            assert set(response.json()["error"]) >= {"code", "detail"}, response.content
        return response

    def agent_does(self, call: Any, **kwargs: Any) -> Any:
        """A service the socket or an admin action calls: it succeeds or refuses with a 4xx domain error."""
        try:
            return call(**kwargs)
        except APIException as exc:
            assert 400 <= exc.status_code < 500, exc
            return None

    def settle(self) -> None:
        """The background jobs the step started run now, as a worker would run them at once.

        Jobs with a countdown (offer timers, grace timers) are dropped: the sweepers
        that run when time passes call the same services. Callbacks to the bot are
        left out: they have their own tests.
        """
        for _ in range(10):
            due = [call for call in self.jobs.calls if not call[2] and not call[0].name.endswith(".deliver_callbacks")]
            self.jobs.clear()
            if not due:
                return
            for task, args, _ in due:
                task.run(*args)

    def conversation(self, pick: int) -> str:
        return self.conversations[pick % len(self.conversations)]

    def agent(self, pick: int) -> str:
        return self.agents[pick % len(self.agents)]

    # --- the bot (HTTP, signed) ---------------------------------------------------------

    @rule(priority=PRIORITIES, language=st.sampled_from(["en", "en-GB", ""]))
    @settles
    def escalate(self, priority: str, language: str) -> None:
        self.external += 1
        body = {"external_id": f"ext-{self.external}", "priority": priority, "topic": "billing", "summary": "help"}
        if language:
            body["language"] = language
        response = self.answered(self.bot.post("/api/v1/escalations", body))
        assert response.status_code == 201
        data = response.json()
        assert data["estimated_wait_seconds"] is None or data["estimated_wait_seconds"] >= 0
        self.conversations.append(data["id"])
        self.bodies[data["id"]] = body

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK)
    @settles
    def escalate_again(self, pick: int) -> None:
        conversation_id = self.conversation(pick)
        response = self.answered(self.bot.post("/api/v1/escalations", self.bodies[conversation_id]))
        assert (response.status_code, response.json()["id"]) == (200, conversation_id)

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK)
    @settles
    def escalate_again_with_another_body(self, pick: int) -> None:
        body = {**self.bodies[self.conversation(pick)], "summary": "something else"}
        response = self.answered(self.bot.post("/api/v1/escalations", body))
        assert (response.status_code, response.json()["error"]["code"]) == (409, "idempotency_mismatch")

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK, keyed=st.booleans())
    @settles
    def customer_message(self, pick: int, keyed: bool) -> None:
        body: dict[str, Any] = {"text": "still there?"}
        if keyed:
            body["external_message_id"] = f"m-{pick}"
        response = self.answered(self.bot.post(f"/api/v1/escalations/{self.conversation(pick)}/messages", body))
        assert response.status_code in (200, 201, 409)

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK, abandoned=st.booleans())
    @settles
    def cancel(self, pick: int, abandoned: bool) -> None:
        body = {"reason": "abandoned"} if abandoned else {}
        response = self.answered(self.bot.post(f"/api/v1/escalations/{self.conversation(pick)}/cancel", body))
        assert response.status_code == 200

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK)
    @settles
    def reopen(self, pick: int) -> None:
        path = f"/api/v1/escalations/{self.conversation(pick)}/reopen"
        response = self.answered(self.bot.post(path, {"reason": "not fixed"}))
        assert response.status_code in (200, 409)

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK, score=st.integers(min_value=1, max_value=5))
    @settles
    def rate(self, pick: int, score: int) -> None:
        path = f"/api/v1/escalations/{self.conversation(pick)}/rating"
        response = self.answered(self.bot.post(path, {"score": score, "comment": ""}))
        assert response.status_code in (201, 409)

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK)
    @settles
    def look(self, pick: int) -> None:
        response = self.answered(self.bot.get(f"/api/v1/escalations/{self.conversation(pick)}"))
        assert response.status_code == 200
        wait = response.json()["estimated_wait_seconds"]
        assert wait is None or wait >= 0

    # --- agents (the services the socket calls) ----------------------------------------

    @rule(pick=PICK)
    @settles
    def connect_and_go_online(self, pick: int) -> None:
        agent_id = self.agent(pick)
        self.channels += 1
        channel = f"ws-{self.channels}"
        try:
            presence.connection_open(agent_id=agent_id, channel_name=channel, server_id="web-1")
        except dispatch_errors.TooManySockets:  # the socket is closed with 4409; nothing else changes
            assert len(self.sockets[agent_id]) >= django_settings.AGENT_MAX_SOCKETS
            return
        self.sockets[agent_id].append(channel)
        self.agent_does(presence.agent_set_status, agent_id=agent_id, status="online", actor=f"agent:{agent_id}")

    @rule(pick=PICK, status=st.sampled_from(["online", "away", "offline"]))
    @settles
    def presence(self, pick: int, status: str) -> None:
        agent_id = self.agent(pick)
        self.agent_does(presence.agent_set_status, agent_id=agent_id, status=status, actor=f"agent:{agent_id}")

    @rule(pick=PICK)
    @settles
    def disconnect(self, pick: int) -> None:
        """The phone loses its connection: every socket of the agent closes; the grace period starts."""
        agent_id = self.agent(pick)
        for channel in self.sockets[agent_id]:
            presence.connection_close(channel_name=channel)
        self.sockets[agent_id] = []

    @rule(pick=PICK)
    @settles
    def accept(self, pick: int) -> None:
        """An agent with an open offer takes it (usually it can; not when it is full or away meanwhile)."""
        offers = list(Offer.objects.filter(state="pending").select_related("agent").order_by("created_at", "pk"))
        if not offers:
            return
        offer = offers[pick % len(offers)]
        self.agent_does(dispatch_offers.offer_accept, offer_id=offer.pk, agent=offer.agent)

    @rule(pick=PICK, offer_pick=PICK)
    @settles
    def accept_any_offer(self, pick: int, offer_pick: int) -> None:
        """A stale or someone else's offer id: refused with a 4xx, never taken."""
        offers = list(Offer.objects.order_by("created_at", "pk").values_list("pk", flat=True))
        if not offers:
            return
        agent = Agent.objects.get(pk=self.agent(pick))
        self.agent_does(dispatch_offers.offer_accept, offer_id=offers[offer_pick % len(offers)], agent=agent)

    @rule(pick=PICK)
    @settles
    def decline(self, pick: int) -> None:
        offers = list(Offer.objects.filter(state="pending").select_related("agent").order_by("created_at", "pk"))
        if not offers:
            return
        offer = offers[pick % len(offers)]
        self.agent_does(dispatch_offers.offer_decline, offer_id=offer.pk, agent=offer.agent, reason="busy")

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK, conversation_pick=PICK, outcome=st.sampled_from(["resolved", "unresolved"]), own=st.booleans())
    @settles
    def resolve(self, pick: int, conversation_pick: int, outcome: str, own: bool) -> None:
        """The agent on a conversation resolves it (`own`), or some agent tries any conversation (refused
        unless it is that agent's)."""
        assigned = list(Conversation.objects.filter(status="assigned").order_by("pk"))
        if own and assigned:
            target = assigned[conversation_pick % len(assigned)]
            agent = Agent.objects.get(pk=target.assigned_agent_id)
            conversation_id = target.pk
        else:
            agent, conversation_id = Agent.objects.get(pk=self.agent(pick)), self.conversation(conversation_pick)
        self.agent_does(
            conversations.conversation_resolve, conversation_id=conversation_id, agent=agent, outcome=outcome
        )

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK, conversation_pick=PICK)
    @settles
    def agent_message(self, pick: int, conversation_pick: int) -> None:
        agent = Agent.objects.get(pk=self.agent(pick))
        self.agent_does(
            conversations.conversation_add_agent_message,
            conversation_id=self.conversation(conversation_pick),
            agent=agent,
            text="On it.",
            client_id=f"c-{conversation_pick}",
        )

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK, agent_pick=PICK, to_queue=st.booleans(), own=st.booleans())
    @settles
    def transfer(self, pick: int, agent_pick: int, to_queue: bool, own: bool) -> None:
        """The agent on a conversation transfers it to another agent or to a queue (`own`), or some agent
        tries any conversation (refused unless it holds it); refusals are 4xx domain errors."""
        assigned = list(Conversation.objects.filter(status="assigned").order_by("pk"))
        if own and assigned:
            target = assigned[pick % len(assigned)]
            agent = Agent.objects.get(pk=target.assigned_agent_id)
            conversation_id = target.pk
        else:
            agent, conversation_id = Agent.objects.get(pk=self.agent(pick)), self.conversation(pick)
        to: dict[str, Any] = (
            {"language": "en"} if to_queue else {"to_agent": Agent.objects.get(pk=self.agent(agent_pick)).user.username}
        )
        self.agent_does(transfers.conversation_transfer, conversation_id=conversation_id, agent=agent, note="n", **to)

    # --- admins -----------------------------------------------------------------------

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK, front=st.booleans())
    @settles
    def admin_requeue(self, pick: int, front: bool) -> None:
        self.agent_does(
            conversations.conversation_requeue,
            conversation_id=self.conversation(pick),
            actor="admin:root",
            reason="requeued",
            front=front,
        )

    @precondition(lambda self: self.conversations)
    @rule(pick=PICK, agent_pick=PICK)
    @settles
    def admin_reassign(self, pick: int, agent_pick: int) -> None:
        self.agent_does(
            conversations.conversation_reassign,
            conversation_id=self.conversation(pick),
            agent_id=self.agent(agent_pick),
            actor="admin:root",
        )

    @rule(pick=PICK)
    @settles
    def admin_suspend(self, pick: int) -> None:
        self.agent_does(presence.agent_suspend, agent_id=self.agent(pick), actor="admin:root")

    @rule(pick=PICK)
    @settles
    def admin_approve(self, pick: int) -> None:
        self.agent_does(services.agent_set_approval, agent_id=self.agent(pick), approval="approved", actor="admin:root")

    @rule(pick=PICK)
    @settles
    def admin_force_offline(self, pick: int) -> None:
        self.agent_does(presence.agent_force_offline, agent_id=self.agent(pick), actor="admin:root")

    # --- time, sweepers and background jobs --------------------------------------------

    @rule(seconds=st.sampled_from([5, 21, 45, 90]))
    @settles
    def time_passes(self, seconds: int) -> None:
        """Offers lapse after OFFER_TIMEOUT_SECONDS (20), grace periods end after PRESENCE_GRACE_SECONDS (30);
        the sweepers run meanwhile, as beat runs them."""
        self.clock.advance(seconds)
        self.sweepers()

    @rule()
    @settles
    def sweepers(self) -> None:
        """The periodic jobs, as beat runs them; none may fail. An agent past its grace is released whole."""
        grace = django_settings.PRESENCE_GRACE_SECONDS
        gone = [
            agent_id
            for agent_id, disconnected_at in Agent.objects.filter(disconnected_at__isnull=False).values_list(
                "pk", "disconnected_at"
            )
            if (timezone.now() - disconnected_at).total_seconds() > grace
            and not AgentConnection.objects.filter(agent_id=agent_id).exists()
        ]
        presence.presence_sweep()
        dispatch_offers.offers_sweep()
        matching.dispatch_sweep()
        escalations.queue_updates_push()
        for agent in Agent.objects.filter(pk__in=gone):  # released whole: offline, with nothing left on it
            assert (agent.status, agent.disconnected_at, agent.active_count) == ("offline", None, 0)
            assert not Offer.objects.filter(agent=agent, state="pending").exists()

    # --- what must always hold ---------------------------------------------------------

    @invariant()
    def estimates_are_never_negative(self) -> None:
        assert not Conversation.objects.filter(notified_wait_seconds__lt=0).exists()
        for payload in CallbackEvent.objects.filter(type="conversation.queued").values_list("payload", flat=True):
            wait = payload["data"].get("estimated_wait_seconds")
            assert wait is None or wait >= 0, payload
        cache.clear()  # the means as they are now, not as cached up to 10 s ago
        assert selectors.answer_seconds() >= 0 and selectors.handle_seconds() >= 0
        for estimate in selectors.wait_estimates_for_waiting().values():
            assert estimate.seconds is None or estimate.seconds >= 0

    @invariant()
    def each_conversation_is_in_one_consistent_state(self) -> None:
        pending = Counter(Offer.objects.filter(state="pending").values_list("conversation_id", flat=True))
        # A transfer's offer to a named agent: the conversation stays with its first agent until accepted.
        transfer_offers = dict(
            Offer.objects.filter(state="pending", transfer__state="offered").values_list("conversation_id", "agent_id")
        )
        open_assignments = dict(
            Assignment.objects.filter(ended_at=None).values_list("conversation_id", "agent_id").order_by()
        )
        assert Assignment.objects.filter(ended_at=None).count() == len(open_assignments)  # one per conversation
        rows = Conversation.objects.values_list("pk", "status", "assigned_agent_id")
        for pk, status, agent_id in rows:
            state = (status, pending[pk], pk in open_assignments)
            if status == "assigned" and pk in transfer_offers:
                assert state == ("assigned", 1, True) and open_assignments[pk] == agent_id is not None, state
                assert transfer_offers[pk] != agent_id
            elif status == "assigned":
                assert state == ("assigned", 0, True) and open_assignments[pk] == agent_id is not None, state
            elif status == "offered":
                assert state == ("offered", 1, False), state
            else:  # queued, or closed: nobody has it, nobody is offered it
                assert state[1:] == (0, False), state

    @invariant()
    def open_transfers_agree_with_their_conversations(self) -> None:
        for transfer in ConversationTransfer.objects.filter(state__in=["offered", "queued"]).select_related(
            "conversation"
        ):
            conversation = transfer.conversation
            if transfer.state == "offered":  # still with the first agent, offered to the named one
                assert (conversation.status, conversation.assigned_agent_id) == ("assigned", transfer.from_agent_id)
                assert Offer.objects.filter(transfer=transfer, state="pending").count() == 1
            else:  # in line for its queue
                assert conversation.status in ("queued", "offered"), (transfer.pk, conversation.status)
        shares = Counter(
            Earning.objects.filter(kind="handling_share").values_list("assignment_id", flat=True).order_by()
        )
        assert all(count == 1 for count in shares.values())

    @invariant()
    def each_agent_holds_what_it_is_counted_for(self) -> None:
        assigned = Counter(
            Conversation.objects.filter(status="assigned").values_list("assigned_agent_id", flat=True).order_by()
        )
        offers = Counter(Offer.objects.filter(state="pending").values_list("agent_id", flat=True).order_by())
        for agent in Agent.objects.all():
            assert agent.active_count == assigned[agent.pk] <= agent.capacity, (agent.pk, agent.active_count)
            assert offers[agent.pk] <= 1
            if agent.status != "online" or agent.approval != "approved":
                assert offers[agent.pk] == 0, (agent.status, agent.approval)


settings_for_ci = hypothesis_settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    database=None,  # nothing written beside the checkout; a failure prints the steps to replay it
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_random_sequences_of_bot_agent_admin_and_time_keep_every_conversation_consistent(
    make_integration, make_agent, recorded_jobs, clock, settings: Any
) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # agents are made every run
    settings.PRESENCE_GRACE_SECONDS = 30
    settings.OFFER_TIMEOUT_SECONDS = 20
    settings.PAYOUT_HOLD_SECONDS = 0
    run_state_machine_as_test(
        lambda: Marketplace(make_integration, make_agent, recorded_jobs, clock),
        settings=settings_for_ci,
    )
