"""Transfers raced by the other parties, on PostgreSQL: one outcome each, never assigned twice, every
slot counted once, the handling share earned at most once."""

from __future__ import annotations

import pytest

from dispatch.models import Assignment, ConversationTransfer, Offer
from dispatch.services import conversations, escalations, offers, transfers
from dispatch.services import errors as dispatch_errors
from marketplace.models import Agent, Conversation
from payouts.models import Earning

from ..marketplace.test_races import together

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def transferring(escalate, make_agent, recorded_jobs, n: int) -> tuple[Conversation, Agent, Agent, Offer]:
    """Given: ann holds a conversation, has written to the customer and transfers it to bob, who is offered it."""
    first = make_agent(username=f"ann{n}")
    conversation = escalate()
    offer = offers.offer_create(conversation_id=conversation.pk, agent_id=first.pk)
    offers.offer_accept(offer_id=offer.pk, agent=first)
    conversations.conversation_add_agent_message(
        conversation_id=conversation.pk, agent=first, text="hello", client_id="c1"
    )
    second = make_agent(username=f"bob{n}")
    transfers.conversation_transfer(conversation_id=conversation.pk, agent=first, to_agent=second.user.username)
    recorded_jobs.clear()
    return conversation, first, second, Offer.objects.get(conversation=conversation, state="pending")


def consistent(conversation: Conversation, *agents: Agent) -> None:
    conversation.refresh_from_db()
    open_spells = list(Assignment.objects.filter(conversation=conversation, ended_at=None).values_list("agent_id"))
    if conversation.status == "assigned":
        assert open_spells == [(conversation.assigned_agent_id,)]
    else:
        assert open_spells == []
    assert not Offer.objects.filter(conversation=conversation, state="pending").exists()
    for agent in agents:
        agent.refresh_from_db()
        held = Conversation.objects.filter(assigned_agent=agent, status="assigned").count()
        assert agent.active_count == held, (agent.pk, agent.active_count, held)
    assert Earning.objects.filter(kind="handling_share", conversation=conversation).count() <= 1


def test_the_first_agent_resolving_while_the_transfer_is_accepted(escalate, make_agent, recorded_jobs):
    outcomes = set()
    for n in range(8):
        conversation, first, second, offer = transferring(escalate, make_agent, recorded_jobs, n)

        resolve, accept = together(
            lambda c=conversation, a=first: conversations.conversation_resolve(
                conversation_id=c.pk, agent=a, outcome="resolved"
            ),
            lambda o=offer, b=second: offers.offer_accept(offer_id=o.pk, agent=b),
        )

        consistent(conversation, first, second)
        if isinstance(accept, Exception):
            assert isinstance(accept, dispatch_errors.OfferNotOpen)
            assert conversation.status == "resolved"
            assert ConversationTransfer.objects.get(conversation=conversation).state == "cancelled"
            assert Earning.objects.filter(agent=first, kind="resolution").count() == 1
            assert not Earning.objects.filter(agent=first, kind="handling_share").exists()
        else:
            assert isinstance(resolve, dispatch_errors.NotAssignedToAgent)
            assert (conversation.status, conversation.assigned_agent_id) == ("assigned", second.pk)
            assert ConversationTransfer.objects.get(conversation=conversation).state == "completed"
            assert Earning.objects.filter(agent=first, kind="handling_share").count() == 1
            assert not Earning.objects.filter(agent=first, kind="resolution").exists()
        outcomes.add("accepted" if not isinstance(accept, Exception) else "resolved")
    assert outcomes <= {"accepted", "resolved"}


def test_the_bot_cancelling_while_the_transfer_is_accepted(escalate, make_agent, recorded_jobs):
    for n in range(8):
        conversation, first, second, offer = transferring(escalate, make_agent, recorded_jobs, n)

        cancel, accept = together(
            lambda c=conversation: escalations.conversation_cancel(conversation_id=c.pk, actor="bot:x"),
            lambda o=offer, b=second: offers.offer_accept(offer_id=o.pk, agent=b),
        )

        assert not isinstance(cancel, Exception), cancel
        consistent(conversation, first, second)
        assert conversation.status == "cancelled"
        assert (first.active_count, second.active_count) == (0, 0)
        state = ConversationTransfer.objects.get(conversation=conversation).state
        assert state == ("cancelled" if isinstance(accept, Exception) else "completed")


def test_the_named_agent_declining_while_accepting_on_another_device(escalate, make_agent, recorded_jobs):
    for n in range(8):
        conversation, first, second, offer = transferring(escalate, make_agent, recorded_jobs, n)

        decline, accept = together(
            lambda o=offer, b=second: offers.offer_decline(offer_id=o.pk, agent=b),
            lambda o=offer, b=second: offers.offer_accept(offer_id=o.pk, agent=b),
        )

        consistent(conversation, first, second)
        assert isinstance(decline, Exception) != isinstance(accept, Exception)
        if isinstance(accept, Exception):
            assert conversation.status == "queued" and first.active_count == 0
            assert ConversationTransfer.objects.get(conversation=conversation).state == "queued"
        else:
            assert conversation.assigned_agent_id == second.pk


def test_two_transfers_of_one_conversation_at_once_make_one(escalate, make_agent, recorded_jobs):
    for n in range(8):
        first = make_agent(username=f"ann{n}")
        conversation = escalate()
        offer = offers.offer_create(conversation_id=conversation.pk, agent_id=first.pk)
        offers.offer_accept(offer_id=offer.pk, agent=first)
        second, third = make_agent(username=f"bob{n}"), make_agent(username=f"cat{n}")

        results = together(
            lambda c=conversation, a=first, b=second: transfers.conversation_transfer(
                conversation_id=c.pk, agent=a, to_agent=b.user.username
            ),
            lambda c=conversation, a=first: transfers.conversation_transfer(
                conversation_id=c.pk, agent=a, language="en"
            ),
            lambda c=conversation, a=first, t=third: transfers.conversation_transfer(
                conversation_id=c.pk, agent=a, to_agent=t.user.username
            ),
        )

        made = [r for r in results if isinstance(r, ConversationTransfer)]
        assert len(made) == 1, results
        assert all(
            isinstance(r, (dispatch_errors.TransferPending, dispatch_errors.NotAssignedToAgent))
            for r in results
            if r not in made
        )
        assert ConversationTransfer.objects.filter(conversation=conversation).count() == 1
        recorded_jobs.clear()
