"""Queue order when an agent frees up and a newcomer arrives before the agent's own dispatch job runs.

Found by bench/queueing.py: under load, conversations that arrived while an
agent's `dispatch_agent` job was still pending took that agent, and the oldest
waiting conversations were overtaken again and again (waits of 10 s at a mean
of 0.4 s). Erlang C, and customers, expect first come, first served.
"""

from __future__ import annotations

import pytest

from dispatch.models import Offer
from dispatch.services import conversations, matching, offers

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_freed_agent_gets_the_oldest_waiting_conversation_even_if_a_newcomer_dispatches_first(
    escalate, make_agent, recorded_jobs
):
    agent = make_agent()
    first = escalate()
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=Offer.objects.get(conversation=first).pk, agent=agent)
    waiting = escalate()  # nobody is free: it waits
    recorded_jobs.run("dispatch_conversation")
    conversations.conversation_resolve(conversation_id=first.pk, agent=agent, outcome="resolved")
    newcomer = escalate()  # its dispatch job runs before the agent's (the race the benchmark hits)
    recorded_jobs.run("dispatch_conversation")
    recorded_jobs.run("dispatch_agent")

    offer = Offer.objects.get(agent=agent, state=Offer.State.PENDING)
    assert offer.conversation_id == waiting.pk, "the newcomer overtook a conversation waiting before it"
    assert not Offer.objects.filter(conversation=newcomer).exists()


def test_a_newcomer_behind_an_older_conversation_still_gets_a_second_free_agent(escalate, make_agent, recorded_jobs):
    """Work conservation with first come, first served: two agents are free and an older conversation
    waits (its own job not run yet); the newcomer's job gives the older one to the best agent and
    itself to the other, rather than leaving an agent idle beside a waiting customer."""
    first_agent, second_agent = make_agent(), make_agent()
    older = escalate()
    newcomer = escalate()
    recorded_jobs.clear()  # only the newcomer's job runs, as when it is first out of the broker

    matching.conversation_dispatch(conversation_id=newcomer.pk)

    offered = dict(Offer.objects.filter(state=Offer.State.PENDING).values_list("conversation_id", "agent_id"))
    assert set(offered) == {older.pk, newcomer.pk}
    assert set(offered.values()) == {first_agent.pk, second_agent.pk}
