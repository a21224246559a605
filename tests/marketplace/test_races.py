"""Two parties at once, on PostgreSQL: exactly one outcome every time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection, connections, transaction

from dispatch.services import errors as dispatch_errors
from dispatch.services import escalations, offers
from marketplace import callbacks, services
from marketplace.models import CallbackEvent, Conversation, Message

from ..conftest import BotClient

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def together(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released at the same instant; return results or exceptions."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        try:
            barrier.wait()
            return call()
        except Exception as exc:
            return exc
        finally:
            connections.close_all()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_duplicate_escalation_blocked_on_the_unique_index_returns_the_winner(integration):
    """Deterministic: B misses A's uncommitted row, blocks on the index, then gets A's conversation."""
    a_inserted = threading.Event()
    result: dict[str, Any] = {}

    def a() -> None:
        with transaction.atomic():
            result["a"] = escalations.conversation_escalate(
                integration=integration, data=services.EscalationInput(external_id="same")
            )
            a_inserted.set()
            time.sleep(0.5)  # B is now waiting on the unique index
        connection.close()

    def b() -> None:
        a_inserted.wait()
        result["b"] = escalations.conversation_escalate(
            integration=integration, data=services.EscalationInput(external_id="same")
        )
        connection.close()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    (a_conv, a_created), (b_conv, b_created) = result["a"], result["b"]
    assert (a_created, b_created) == (True, False)
    assert a_conv.pk == b_conv.pk
    assert Conversation.objects.count() == 1
    assert CallbackEvent.objects.count() == 1


def test_the_same_external_id_with_another_body_blocked_on_the_unique_index_is_a_mismatch(integration):
    """Deterministic: B (another summary) misses A's uncommitted row, blocks on the index, then is refused."""
    a_inserted = threading.Event()
    result: dict[str, Any] = {}

    def a() -> None:
        with transaction.atomic():
            result["a"] = escalations.conversation_escalate(
                integration=integration, data=services.EscalationInput(external_id="same", summary="first")
            )
            a_inserted.set()
            time.sleep(0.5)  # B is now waiting on the unique index
        connection.close()

    def b() -> None:
        a_inserted.wait()
        try:
            escalations.conversation_escalate(
                integration=integration, data=services.EscalationInput(external_id="same", summary="second")
            )
        except services.IdempotencyMismatch as exc:
            result["b"] = exc
        connection.close()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert result["a"][1] is True
    assert isinstance(result.get("b"), services.IdempotencyMismatch)
    assert list(Conversation.objects.values_list("summary", flat=True)) == ["first"]
    assert CallbackEvent.objects.count() == 1


def test_the_same_escalation_posted_twice_at_once_makes_one_conversation(integration):
    for round_ in range(15):
        responses = together(*[lambda r=round_: BotClient(integration).escalate(f"race-{r}")] * 2)
        assert sorted(r.status_code for r in responses) == [200, 201]
        assert len({r.json()["id"] for r in responses}) == 1
    assert Conversation.objects.count() == 15
    assert CallbackEvent.objects.count() == 15


def test_the_same_customer_message_posted_twice_at_once_is_kept_once(integration):
    conversation_id = BotClient(integration).escalate("m").json()["id"]
    path = f"/api/v1/escalations/{conversation_id}/messages"
    for n in range(10):
        body = {"text": f"hello {n}", "external_message_id": f"m-{n}"}
        responses = together(*[lambda b=body: BotClient(integration).post(path, b)] * 2)
        assert sorted(r.status_code for r in responses) == [200, 201]
    assert Message.objects.filter(conversation_id=conversation_id).count() == 10


def test_accept_racing_a_cancel_has_exactly_one_outcome(integration, make_agent):
    for n in range(10):
        agent = make_agent()
        conversation, _ = escalations.conversation_escalate(
            integration=integration, data=services.EscalationInput(external_id=f"ac-{n}")
        )
        offer = offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)

        accept, cancel = together(
            lambda o=offer, a=agent: offers.offer_accept(offer_id=o.pk, agent=a),
            lambda c=conversation: escalations.conversation_cancel(conversation_id=c.pk, actor="bot"),
        )

        assert not isinstance(cancel, Exception)
        conversation.refresh_from_db()
        agent.refresh_from_db()
        offer.refresh_from_db()
        assert conversation.status == "cancelled"
        assert agent.active_count == 0  # freed if the accept won, never taken otherwise
        if isinstance(accept, Exception):
            assert isinstance(accept, dispatch_errors.OfferNotOpen)
            assert offer.state == "revoked"
        else:
            assert offer.state == "accepted"


def test_two_workers_delivering_one_conversation_send_each_event_once_in_order(
    integration, callback_receiver, settings
):
    settings.CALLBACK_BACKOFF_BASE_SECONDS = 0.05
    integration.callback_url = callback_receiver.url
    integration.save()
    bot = BotClient(integration)
    conversation_id = bot.escalate("w").json()["id"]
    for n in range(5):
        bot.post(f"/api/v1/escalations/{conversation_id}/messages", {"text": f"m{n}"})
    bot.post(f"/api/v1/escalations/{conversation_id}/cancel")
    from core import jobs

    jobs.runner.clear()  # only the two workers below deliver
    CallbackEvent.objects.update(state="pending", attempts=0, delivered_at=None)
    callback_receiver.received.clear()

    together(*[lambda: callbacks.callbacks_deliver(conversation_id=conversation_id)] * 2)

    ids = [r.json["id"] for r in callback_receiver.received]
    expected = list(
        CallbackEvent.objects.filter(conversation_id=conversation_id).order_by("seq").values_list("id", flat=True)
    )
    assert ids == expected
    assert CallbackEvent.objects.filter(state="delivered").count() == len(expected)
