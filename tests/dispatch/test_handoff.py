"""Issue 11.3: an agent freed by a resolve is offered the waiting conversation at once.

On PostgreSQL with real concurrency: the agent's socket (the real consumer and
channel layer), background jobs on the in-process thread runner as in the
embedded default (the earning release and the dispatch job run in parallel on
its pool, as on Celery's threads in production), and the dispatch sweeper
running on its production period, as it does in production, to recover
whatever the hand-off misses.

The hand-off is timed from the resolve's commit, as the agent sees it (the
`conversation.closed` that is sent on that commit) to the next `offer` on the
same socket: both travel the same path, so what is left is the hand-off itself.
The time from the agent's own `conversation.resolve` is printed beside it; it
adds the resolve's work (the earning, the ledger, callbacks), which a loaded
shared machine can stretch.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.db import connection, connections, transaction

from core import jobs
from dispatch.services import matching, offers
from payouts.models import Earning

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


@pytest.fixture
def dispatch_sweeper() -> Iterator[None]:
    """The dispatch sweeper on its production period, in a thread of its own, stopped after the test."""
    stop = threading.Event()

    def sweep() -> None:
        try:
            while not stop.wait(float(str(django_settings.PERIODIC_JOBS["dispatch-sweep"]["seconds"]))):
                matching.dispatch_sweep()
        finally:
            connections.close_all()

    thread = threading.Thread(target=sweep, name="dispatch-sweeper", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=30)


@pytest.fixture
def integration(make_integration, callback_receiver):
    """The bot answers its callbacks (a real HTTP server), as a bot does: no retries piling up beside the test."""
    return make_integration(callback_url=callback_receiver.url)


TRIES = 50
WITHIN = 0.3  # seconds from the resolve's commit to the next offer on the agent's socket


async def test_the_next_offer_reaches_the_freed_agent_within_300_ms_every_time(
    make_agent, escalate, online_socket, dispatch_sweeper, settings
):
    settings.PAYOUT_HOLD_SECONDS = 0  # the earning is released (the agent's row locked) right after the resolve
    agent = await sync_to_async(make_agent)(online=False, capacity=1)
    socket = await online_socket(agent)
    current = await sync_to_async(escalate)(summary="first")
    offer = await socket.expect("offer", conversation_id=current.pk)
    await socket.send(type="offer.accept", offer_id=offer["offer_id"])
    await socket.expect("conversation.assigned")

    latencies: list[float] = []  # the resolve committed (`conversation.closed` on the socket) -> the next offer
    end_to_end: list[float] = []  # the agent sent `conversation.resolve` -> the next offer
    for n in range(TRIES):
        waiting = await sync_to_async(escalate)(summary=f"waiting {n}")  # the agent is full: it waits
        assert await sync_to_async(jobs.runner.wait_idle)(10)  # its own dispatch job found nobody
        loop = asyncio.get_running_loop()
        started = loop.time()
        await socket.send(type="conversation.resolve", conversation_id=current.pk, outcome="resolved", note="")
        await socket.expect("conversation.closed", conversation_id=current.pk)  # sent once the resolve committed
        freed = loop.time()
        offer = await socket.expect("offer", within=10, conversation_id=waiting.pk)
        latencies.append(loop.time() - freed)
        end_to_end.append(loop.time() - started)
        await socket.send(type="offer.accept", offer_id=offer["offer_id"])
        await socket.expect("conversation.assigned")
        current = waiting
    await socket.close()

    released = await Earning.objects.filter(agent=agent, state="released").acount()
    await sync_to_async(connections.close_all)()
    assert released >= TRIES - 5  # the earning release did run beside each hand-off
    figures = (
        f"p50 {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms, "
        f"over {WITHIN * 1000:.0f} ms: {sum(t > WITHIN for t in latencies)} of {TRIES}; from the agent's send: "
        f"p50 {statistics.median(end_to_end) * 1000:.0f} ms, max {max(end_to_end) * 1000:.0f} ms"
    )
    print(f"resolve committed -> next offer on the socket: {figures}")  # noqa: T201 - the figure the docs quote
    assert all(t <= WITHIN for t in latencies), figures


def test_an_insert_referencing_the_agent_does_not_make_an_offer_skip_it(escalate, make_agent, recorded_jobs):
    """Every insert that references the agent (an earning, a transfer, a message) takes a KEY SHARE lock on
    its row while its foreign key is checked; an offer's lock must not conflict with it (FOR NO KEY UPDATE)."""
    from dispatch.models import AgentConnection

    agent = make_agent()
    conversation = escalate()
    recorded_jobs.clear()
    inserted, finish = threading.Event(), threading.Event()

    def insert_and_hold() -> None:
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # check the key now: KEY SHARE on the agent
                AgentConnection.objects.create(channel_name="phone", agent=agent, server_id="web-1")
                inserted.set()
                finish.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=insert_and_hold)
    holder.start()
    try:
        assert inserted.wait(10)
        offer = offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)
    finally:
        finish.set()
        holder.join(10)
    assert offer.agent_id == agent.pk
