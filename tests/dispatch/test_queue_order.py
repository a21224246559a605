"""Queue order when an agent frees up and a newcomer arrives before the agent's own dispatch job runs.

Found by bench/queueing.py: under load, conversations that arrived while an
agent's `dispatch_agent` job was still pending took that agent, and the oldest
waiting conversations were overtaken again and again (waits of 10 s at a mean
of 0.4 s). Erlang C, and customers, expect first come, first served.
"""

from __future__ import annotations

import pytest

from dispatch import services as dispatch
from dispatch.models import Offer

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_freed_agent_gets_the_oldest_waiting_conversation_even_if_a_newcomer_dispatches_first(
    escalate, make_agent, recorded_jobs
):
    agent = make_agent()
    first = escalate()
    recorded_jobs.run("dispatch_conversation")
    dispatch.offer_accept(offer_id=Offer.objects.get(conversation=first).pk, agent=agent)
    waiting = escalate()  # nobody is free: it waits
    recorded_jobs.run("dispatch_conversation")
    dispatch.conversation_resolve(conversation_id=first.pk, agent=agent, outcome="resolved")
    newcomer = escalate()  # its dispatch job runs before the agent's (the race the benchmark hits)
    recorded_jobs.run("dispatch_conversation")
    recorded_jobs.run("dispatch_agent")

    offer = Offer.objects.get(agent=agent, state=Offer.State.PENDING)
    assert offer.conversation_id == waiting.pk, "the newcomer overtook a conversation waiting before it"
    assert not Offer.objects.filter(conversation=newcomer).exists()
