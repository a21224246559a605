"""A Celery worker killed (SIGKILL) in the middle of a transfer: Stripe got the request,
we never heard the answer. Another worker settles it by looking it up: one transfer."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from payouts.models import Transfer
from payouts.services import sweeper

from ..conftest import wait_for
from ..processes import celery_worker, service_env
from .conftest import ledger_sums_to_zero, onboard

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def test_a_worker_killed_mid_transfer_leaves_exactly_one_transfer(stripe_on, settings, make_agent, resolve, tmp_path):
    agent = make_agent()
    account = onboard(agent, stripe_on)
    env = service_env(
        STRIPE_SECRET_KEY="sk_test_standin",
        STRIPE_API_BASE=stripe_on.base,
        STRIPE_WEBHOOK_SECRET=stripe_on.webhook_secret,
        STRIPE_TIMEOUT_SECONDS="60",
        STRIPE_MAX_NETWORK_RETRIES="0",
        TRANSFER_LEASE_SECONDS="2",
    )
    # Stripe makes the transfer, then the answer hangs: the worker dies waiting for it.
    stripe_on.faults["POST /v1/transfers"] = [("hang", 60)]
    settings.TASK_RUNNER = "celery"  # from here on, jobs go to the real workers
    settings.TRANSFER_LEASE_SECONDS = 2

    with ExitStack() as stack:
        first = stack.enter_context(celery_worker(env, tmp_path / "worker-1.log", queues="celery,callbacks,payouts"))
        resolve(agent)
        transfer = wait_for(lambda: Transfer.objects.filter(agent=agent, state="submitted").first(), timeout=30)
        wait_for(lambda: len(stripe_on.transfers) == 1, timeout=30)
        first.kill()  # SIGKILL: no cleanup, no answer recorded
        first.wait(timeout=10)
        assert Transfer.objects.get(pk=transfer.pk).state == "submitted"

        stack.enter_context(celery_worker(env, tmp_path / "worker-2.log", queues="celery,callbacks,payouts"))

        # The sweeper (celery beat in production) finds it once the dead worker's lease is over.
        def swept_and_paid() -> bool:
            sweeper.payouts_sweep()
            return Transfer.objects.get(pk=transfer.pk).state == "paid"

        wait_for(swept_and_paid, timeout=30, interval=0.5)

    transfer.refresh_from_db()
    posts = [1 for method, path, _, _ in stripe_on.requests_seen if (method, path) == ("POST", "/v1/transfers")]
    assert len(posts) == 1, "the second worker looked the transfer up instead of sending it again"
    (at_stripe,) = stripe_on.transfers.values()
    assert at_stripe["id"] == transfer.stripe_transfer_id
    assert at_stripe["destination"] == account.stripe_account_id and at_stripe["amount"] == transfer.amount
    ledger_sums_to_zero()
