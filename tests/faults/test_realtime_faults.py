"""Faults in the real-time half, with real processes: a Daphne process killed with -9 while its
agents hold offers and chats, and Redis (the channel layer and the Celery broker) restarted under
connected agents. After each, the database is checked: every conversation assigned once or still
waiting with its messages, every offer resolved, every callback delivered, and the agents' clients
reconnected and resumed from `hello`."""

from __future__ import annotations

import subprocess
import time
from contextlib import ExitStack
from typing import Any

import pytest
from django.db.models import Count, Q
from django.utils import timezone

from dispatch.models import AgentConnection, Assignment, Offer
from marketplace.models import Agent, CallbackEvent, Conversation, Message

from ..conftest import wait_for
from ..processes import (
    AgentClient,
    HttpBot,
    celery_beat,
    celery_worker,
    daphne,
    daphne_process,
    redis_server,
    service_env,
)
from ..test_e2e_dispatch import agent_with_token, go_online

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

# Timers shortened so that a dead process is noticed in about 2 s and a lost agent released 3 s later.
FAST = {
    "SERVER_HEARTBEAT_SECONDS": "0.5",
    "SERVER_DEAD_AFTER_SECONDS": "2",
    "PRESENCE_SWEEP_SECONDS": "0.5",
    "PRESENCE_GRACE_SECONDS": "3",
    "OFFER_SWEEP_SECONDS": "0.5",
    "DISPATCH_SWEEP_SECONDS": "0.5",
    "DISPATCH_SWEEP_MIN_WAIT_SECONDS": "0.5",
    "CALLBACK_SWEEP_SECONDS": "1",
    "CALLBACK_REKICK_SECONDS": "2",
    "CALLBACK_BACKOFF_BASE_SECONDS": "0.2",
    "CALLBACK_BACKOFF_MAX_SECONDS": "1",
    "MISSES_BEFORE_AWAY": "5",
}


def take_offer(client: AgentClient, conversation_id: str, within: float = 10) -> dict[str, Any]:
    offer = client.expect("offer", conversation_id=conversation_id, within=within)
    client.send(type="offer.accept", offer_id=offer["offer_id"])
    assigned = client.expect("conversation.assigned", within=within)
    assert assigned["conversation"]["id"] == conversation_id
    return assigned["conversation"]


def chat(client: AgentClient, conversation_id: str, text: str, client_id: str) -> None:
    client.send(type="message.send", conversation_id=conversation_id, text=text, client_id=client_id)
    client.expect("message", conversation_id=conversation_id)


def resolve(client: AgentClient, conversation_id: str) -> None:
    client.send(type="conversation.resolve", conversation_id=conversation_id, outcome="resolved")
    client.expect("conversation.closed", conversation_id=conversation_id)


def assert_invariants(conversation_ids: list[str]) -> None:
    """What every fault must leave behind, read from the database."""
    now = timezone.now()
    # Every offer resolved: none pending past its timer (and, the work settled, none pending at all).
    assert not Offer.objects.filter(state=Offer.State.PENDING).exists()
    assert not Offer.objects.filter(state=Offer.State.PENDING, expires_at__lt=now).exists()
    for conversation in Conversation.objects.filter(pk__in=conversation_ids):
        assignments = Assignment.objects.filter(conversation=conversation)
        open_ = assignments.filter(ended_at=None)
        accepted = Offer.objects.filter(conversation=conversation, state=Offer.State.ACCEPTED)
        # One accepted offer per assignment, and never two assignments open at once.
        assert accepted.count() == assignments.count()
        assert open_.count() <= 1
        if conversation.status == Conversation.Status.ASSIGNED:
            assert open_.get().agent_id == conversation.assigned_agent_id
        elif conversation.status == Conversation.Status.RESOLVED:
            assert not open_.exists()
            assert assignments.filter(end_reason="resolved").count() == 1
        else:
            assert conversation.status in (Conversation.Status.QUEUED, Conversation.Status.OFFERED)
            assert conversation.assigned_agent_id is None and not open_.exists()
        # The history says the same: never assigned while already assigned.
        statuses = list(conversation.events.values_list("to_status", flat=True).order_by("id"))
        assert all(not (a == b == "assigned") for a, b in zip(statuses, statuses[1:], strict=False))
    double = Assignment.objects.filter(ended_at=None).values("conversation").annotate(n=Count("id")).filter(n__gt=1)
    assert not double.exists()


def texts(conversation_id: str) -> list[str]:
    return list(
        Message.objects.filter(conversation_id=conversation_id).order_by("created_at").values_list("text", flat=True)
    )


def assert_callbacks_delivered(receiver: Any, timeout: float = 20) -> None:
    wait_for(lambda: not CallbackEvent.objects.filter(~Q(state="delivered")).exists(), timeout=timeout)
    assert CallbackEvent.objects.count() == len({r.json["id"] for r in receiver.ok()})


# --- a Daphne process killed with -9 ----------------------------------------------------------


def test_kill_9_of_a_daphne_process_loses_no_offer_chat_or_callback(
    make_agent, make_integration, callback_receiver, tmp_path
):
    with ExitStack() as stack:
        env = service_env(OFFER_TIMEOUT_SECONDS="10", **FAST)
        stack.enter_context(celery_worker(env, tmp_path / "worker.log", concurrency=4))
        stack.enter_context(celery_beat(env, tmp_path / "beat.log", tmp_path))
        a, doomed = stack.enter_context(daphne_process(env, tmp_path / "daphne-a.log"))
        b = stack.enter_context(daphne(env, tmp_path / "daphne-b.log"))
        bot = HttpBot(b, make_integration(callback_url=callback_receiver.url))
        tokens = {name: agent_with_token(make_agent, name) for name in ("alice", "bob", "carol", "dave")}
        Agent.objects.filter(user__username__in=("carol", "dave")).update(capacity=2)

        # Given, on process A (one agent online at a time, so each offer has one possible taker):
        # alice in a chat with messages both ways,
        alice = AgentClient(a, tokens["alice"])
        go_online(alice)
        c1 = bot.escalate("k-1", language="en", topic="billing")["id"]
        take_offer(alice, c1)
        bot.post(f"/api/v1/escalations/{c1}/messages", {"text": "Hello?"})
        alice.expect("message", conversation_id=c1)
        chat(alice, c1, "Hi, looking at it.", "a-1")
        # carol in a chat and holding an offer for a second one,
        carol = AgentClient(a, tokens["carol"])
        go_online(carol)
        c3 = bot.escalate("k-3", language="en", topic="billing")["id"]
        take_offer(carol, c3)
        bot.post(f"/api/v1/escalations/{c3}/messages", {"text": "Anyone?"})
        carol.expect("message", conversation_id=c3)
        c4 = bot.escalate("k-4", language="en", topic="billing")["id"]
        carol_offer = carol.expect("offer", conversation_id=c4)
        # and bob holding an offer.
        bob = AgentClient(a, tokens["bob"])
        go_online(bob)
        c2 = bot.escalate("k-2", language="en", topic="billing")["id"]
        bob_offer = bob.expect("offer", conversation_id=c2)
        # dave, on process B, has room for two and nothing to do.
        dave = AgentClient(b, tokens["dave"])
        go_online(dave)
        dead_server = AgentConnection.objects.get(agent__user__username="carol").server_id

        # Process A dies without a goodbye: no `disconnect` runs, its rows stay behind.
        started = time.monotonic()
        doomed.kill()
        doomed.wait()
        assert AgentConnection.objects.filter(server_id=dead_server).count() == 3
        # The customer writes while alice is cut off.
        bot.post(f"/api/v1/escalations/{c1}/messages", {"text": "Are you there?"})

        # bob's app reconnects (to B; A is gone) inside the offer's time: the offer is still his.
        bob = reconnect(b, tokens["bob"])
        assert bob.hello["status"] == "online"
        assert bob.hello["pending_offer"]["offer_id"] == bob_offer["offer_id"]
        bob.send(type="offer.accept", offer_id=bob_offer["offer_id"])
        assert bob.expect("conversation.assigned")["conversation"]["id"] == c2
        # alice's app reconnects: her chat with every message, including the one she missed.
        alice = reconnect(b, tokens["alice"])
        assert alice.hello["status"] == "online" and alice.hello["pending_offer"] is None
        (resumed,) = alice.hello["active_conversations"]
        assert resumed["id"] == c1
        assert [m["text"] for m in resumed["messages"]] == ["Hello?", "Hi, looking at it.", "Are you there?"]
        chat(alice, c1, "Yes, sorry, my connection dropped.", "a-2")
        reconnected = time.monotonic() - started

        # carol never comes back. Once A's heartbeat is stale (2 s) its connections are closed;
        # past her grace period (3 s) she goes offline, her offer is withdrawn (or lapses) and her
        # chat goes back to the front of the queue with its messages; dave, the only one with
        # room, takes both.
        taken = {}
        for _ in range(2):
            offer = dave.expect("offer", within=20)
            dave.send(type="offer.accept", offer_id=offer["offer_id"])
            conversation = dave.expect("conversation.assigned")["conversation"]
            taken[conversation["id"]] = conversation
        assert set(taken) == {c3, c4}
        assert [m["text"] for m in taken[c3]["messages"]] == ["Anyone?"]
        moved = time.monotonic() - started

        resolve(alice, c1)
        resolve(bob, c2)

        assert_invariants([c1, c2, c3, c4])
        assert Offer.objects.get(pk=bob_offer["offer_id"]).state == Offer.State.ACCEPTED
        assert Offer.objects.get(pk=carol_offer["offer_id"]).state in (Offer.State.REVOKED, Offer.State.EXPIRED)
        assert Conversation.objects.get(pk=c1).status == Conversation.Status.RESOLVED
        assert Conversation.objects.get(pk=c2).status == Conversation.Status.RESOLVED
        for conversation_id in (c3, c4):
            assert Conversation.objects.get(pk=conversation_id).assigned_agent.user.username == "dave"
        assert list(
            Assignment.objects.filter(conversation_id=c3)
            .order_by("started_at")
            .values_list("agent__user__username", "end_reason")
        ) == [("carol", "requeued"), ("dave", "")]
        assert texts(c1) == ["Hello?", "Hi, looking at it.", "Are you there?", "Yes, sorry, my connection dropped."]
        assert texts(c3) == ["Anyone?"]
        carol_row = Agent.objects.get(user__username="carol")
        assert carol_row.status == Agent.Status.OFFLINE and carol_row.active_count == 0
        # The dead process's connections are gone; the living have one device each.
        assert not AgentConnection.objects.filter(server_id=dead_server).exists()
        for name in ("alice", "bob", "dave"):
            assert AgentConnection.objects.filter(agent__user__username=name).count() == 1
        assert_callbacks_delivered(callback_receiver)
        queued = CallbackEvent.objects.filter(conversation_id=c3, type="conversation.queued").order_by("seq").last()
        assert queued.payload["data"]["reason"] == "agent_disconnected"
        for client in (alice, bob, dave):
            client.close()
    assert reconnected < 10 and moved < 30


# --- Redis restarted under connected agents ---------------------------------------------------


def closed_by_server(client: AgentClient, within: float = 10) -> int:
    """Wait for the server to close the socket; its close code."""
    from websockets.exceptions import ConnectionClosed

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            client.ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            break
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return exc.rcvd.code
    raise AssertionError(f"the socket was not closed within {within}s")


def exits_within(process: Any, seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def reconnect(base: str, token: str, within: float = 15) -> AgentClient:
    """What the app does after a close: connect again, with backoff, until the server says hello."""
    deadline, delay = time.monotonic() + within, 0.2
    while True:
        try:
            return AgentClient(base, token)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2)


def test_redis_restart_closes_sockets_and_the_agents_resume_with_nothing_lost(
    make_agent, make_integration, callback_receiver, tmp_path
):
    with ExitStack() as stack:
        redis_url, redis_proc = stack.enter_context(redis_server(tmp_path))
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        # A grace period of 6 s: longer than the apps take to reconnect here (30 s in production).
        fast = {**FAST, "PRESENCE_GRACE_SECONDS": "6", "OFFER_TIMEOUT_SECONDS": "10"}
        env = service_env(REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url, **fast)
        worker = stack.enter_context(celery_worker(env, tmp_path / "worker.log", concurrency=4))
        stack.enter_context(celery_beat(env, tmp_path / "beat.log", tmp_path))
        a = stack.enter_context(daphne(env, tmp_path / "daphne-a.log"))
        b = stack.enter_context(daphne(env, tmp_path / "daphne-b.log"))
        bot = HttpBot(a, make_integration(callback_url=callback_receiver.url))
        alice_token, bob_token = agent_with_token(make_agent, "alice"), agent_with_token(make_agent, "bob")
        alice, bob = AgentClient(a, alice_token), AgentClient(b, bob_token)

        # Given: alice and bob each in a chat (one online at a time, so each offer has one
        # possible taker), and a third customer waiting for either.
        go_online(alice)
        c1 = bot.escalate("r-1", language="en", topic="billing")["id"]
        take_offer(alice, c1)
        bot.post(f"/api/v1/escalations/{c1}/messages", {"text": "Hello?"})
        alice.expect("message", conversation_id=c1)
        go_online(bob)
        c2 = bot.escalate("r-2", language="en", topic="billing")["id"]
        take_offer(bob, c2)
        c3 = bot.escalate("r-3", language="en", topic="billing")["id"]
        bot.post(f"/api/v1/escalations/{c3}/messages", {"text": "Still there?"})

        # Redis dies and comes back empty on the same port (no persistence): the channel
        # layer's groups, the broker's queues and the countdown timers in it are gone.
        started = time.monotonic()
        redis_proc.kill()
        redis_proc.wait()
        # Every socket's channel-layer read fails: the server closes it (1011), nothing hangs silently.
        assert closed_by_server(alice) == 1011
        assert closed_by_server(bob) == 1011
        stack.enter_context(redis_server(tmp_path, port=port))
        # The apps reconnect and resume from `hello`: status, chats and messages as they were.
        alice, bob = reconnect(a, alice_token), reconnect(b, bob_token)
        assert alice.hello["status"] == bob.hello["status"] == "online"
        (resumed,) = alice.hello["active_conversations"]
        assert resumed["id"] == c1 and [m["text"] for m in resumed["messages"]] == ["Hello?"]
        assert [c["id"] for c in bob.hello["active_conversations"]] == [c2]
        # The dead sockets' connection rows are gone: one device each, as in fact.
        for name in ("alice", "bob"):
            assert AgentConnection.objects.filter(agent__user__username=name).count() == 1

        # Celery 5.7.0's worker may exit on the lost broker connection ("Unrecoverable error:
        # AttributeError ... 'hostname'" while restoring its unacked messages, which it always
        # holds here: the offer and grace timers). The platform restarts it, as the Procfile's
        # process manager does; the countdowns it held are repaired by the sweepers.
        if exits_within(worker, 1):
            stack.enter_context(celery_worker(env, tmp_path / "worker-restarted.log", concurrency=4))

        # Queued work is dispatched: alice resolves, and the waiting conversation is offered to her.
        resolve(alice, c1)
        assigned = take_offer(alice, c3)
        assert [m["text"] for m in assigned["messages"]] == ["Still there?"]
        chat(alice, c3, "Yes, here now.", "k-1")
        # A new escalation reaches the other connected agent once it has room.
        resolve(bob, c2)
        c4 = bot.escalate("r-4", language="en", topic="billing")["id"]
        take_offer(bob, c4)
        recovered = time.monotonic() - started

        # Presence still works after the outage: bob's phone drops, and past the grace
        # period he goes offline and his conversation goes back to the queue.
        bob.drop()
        wait_for(lambda: Conversation.objects.get(pk=c4).status == Conversation.Status.QUEUED, timeout=20)
        assert Agent.objects.get(user__username="bob").status == Agent.Status.OFFLINE

        assert_invariants([c1, c2, c3, c4])
        # Nothing was sent into the void: every offer made was accepted, none lapsed.
        assert set(Offer.objects.values_list("state", flat=True)) == {Offer.State.ACCEPTED}
        assert Conversation.objects.get(pk=c3).assigned_agent.user.username == "alice"
        assert texts(c3) == ["Still there?", "Yes, here now."]
        assert_callbacks_delivered(callback_receiver)
        queued = CallbackEvent.objects.filter(conversation_id=c4, type="conversation.queued").order_by("seq").last()
        assert queued.payload["data"]["reason"] == "agent_disconnected"
        alice.close()
    assert recovered < 30
