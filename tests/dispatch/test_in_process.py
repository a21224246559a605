"""Issue 13: dispatch runs in the process that made the change, after its commit; the broker is the backstop.

With TASK_RUNNER=celery and a broker that nobody consumes (`lost_tasks`: every task
sent through it is lost), an escalation is still offered at once, because the dispatch
job never went through the broker. With DISPATCH_IN_PROCESS off, the same escalation
waits for the dispatch sweep (the backstop), as every job did before.
"""

from __future__ import annotations

import time

import pytest

from core import jobs
from dispatch import tasks
from dispatch.models import Offer
from dispatch.services import matching
from marketplace.models import Conversation

pytestmark = [pytest.mark.django_db(transaction=True)]


def settled(seconds: float = 2.0) -> None:
    """Let the runner's timer thread pick up what was submitted, then wait for the jobs to finish."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        assert jobs.runner.wait_idle(10)
        if not jobs.runner._heap:
            return


def test_an_escalation_is_offered_without_the_broker(escalate, make_agent, lost_tasks):
    agent = make_agent()
    conversation = escalate()
    settled()
    offer = Offer.objects.get(conversation=conversation)
    assert (offer.agent_id, offer.state) == (agent.pk, Offer.State.PENDING)
    assert Conversation.objects.get(pk=conversation.pk).status == Conversation.Status.OFFERED


def test_with_dispatch_in_process_off_the_job_goes_to_the_broker_and_the_sweep_is_the_backstop(
    escalate, make_agent, lost_tasks, settings
):
    settings.IN_PROCESS_TASKS = frozenset()
    agent = make_agent()
    conversation = escalate()
    settled()
    assert not Offer.objects.filter(conversation=conversation).exists()  # its job was lost with the broker

    settings.DISPATCH_SWEEP_MIN_WAIT_SECONDS = 0
    assert matching.dispatch_sweep() == 1
    assert Offer.objects.get(conversation=conversation).agent_id == agent.pk


def test_only_dispatchs_jobs_skip_the_broker(settings):
    settings.TASK_RUNNER = "celery"
    assert {task.name for task in (tasks.dispatch_conversation, tasks.dispatch_agent, tasks.expire_offer)} <= (
        settings.IN_PROCESS_TASKS
    )
    assert jobs.runs_in_process(tasks.dispatch_conversation)
    assert not jobs.runs_in_process(tasks.sweep_dispatch)  # beat's sweepers run on the workers

    from marketplace import tasks as marketplace_tasks
    from payouts import tasks as payouts_tasks

    assert not jobs.runs_in_process(marketplace_tasks.deliver_callbacks)  # a slow bot stays off the web process
    assert not jobs.runs_in_process(payouts_tasks.submit_transfer)
