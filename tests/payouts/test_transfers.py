"""Every resolved conversation yields exactly one transfer of the quoted amount, through whatever fails."""

from __future__ import annotations

import pytest

from core import jobs
from payouts.models import Earning, Reversal, Transfer
from payouts.services import earnings, ledger, sweeper, transfers

from ..conftest import wait_for
from .conftest import balance, ledger_sums_to_zero, onboard

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def stripe_transfers_for(standin, transfer_id):
    return [t for t in standin.transfers.values() if t["metadata"].get("transfer_id") == transfer_id]


def test_a_resolution_pays_its_quote_once_to_the_agents_account(stripe_on, make_agent, resolve):
    agent = make_agent()
    account = onboard(agent, stripe_on)

    conversation = resolve(agent)

    transfer = wait_for(lambda: Transfer.objects.filter(agent=agent, state="paid").first())
    offer = conversation.offers.get()
    assert transfer.amount == offer.pay_amount and transfer.currency == "usd"
    (at_stripe,) = stripe_transfers_for(stripe_on, transfer.id)
    assert at_stripe["destination"] == account.stripe_account_id
    assert at_stripe["amount"] == offer.pay_amount
    assert transfer.stripe_transfer_id == at_stripe["id"]
    assert balance(f"agent:{agent.pk}:payable") == 0
    assert balance("platform:stripe_balance") == -offer.pay_amount
    ledger_sums_to_zero()


def transfer_posts(standin) -> list[dict]:
    return [
        headers for method, path, _, headers in standin.requests_seen if (method, path) == ("POST", "/v1/transfers")
    ]


def test_5xx_is_retried_by_the_library_with_the_same_key(stripe_on, make_agent, resolve):
    agent = make_agent()
    onboard(agent, stripe_on)
    stripe_on.faults["POST /v1/transfers"] = [500]

    resolve(agent)

    transfer = wait_for(lambda: Transfer.objects.filter(agent=agent, state="paid").first())
    posts = transfer_posts(stripe_on)
    assert len(posts) == 2 and len({p["idempotency-key"] for p in posts}) == 1
    assert len(stripe_transfers_for(stripe_on, transfer.id)) == 1
    ledger_sums_to_zero()


def test_failures_beyond_the_librarys_retries_are_retried_later_and_pay_once(stripe_on, make_agent, resolve):
    agent = make_agent()
    onboard(agent, stripe_on)
    stripe_on.faults["POST /v1/transfers"] = [500, 503, 502, 500]  # the library tries 3 times, we try again

    resolve(agent)

    transfer = wait_for(lambda: Transfer.objects.filter(agent=agent, state="paid").first())
    assert transfer.attempts >= 2
    assert len(stripe_transfers_for(stripe_on, transfer.id)) == 1
    assert len({p["idempotency-key"] for p in transfer_posts(stripe_on)}) == 1
    ledger_sums_to_zero()


def test_an_ambiguous_timeout_is_settled_by_looking_the_transfer_up(stripe_on, settings, make_agent, resolve):
    """Stripe made the transfer but the answer never came: we find it, and never send a second one."""
    agent = make_agent()
    onboard(agent, stripe_on)
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    settings.STRIPE_TIMEOUT_SECONDS = 0.5
    stripe_on.faults["POST /v1/transfers"] = [("hang", 1.5)]

    resolve(agent)

    transfer = wait_for(lambda: Transfer.objects.filter(agent=agent, state="paid").first())
    assert len(transfer_posts(stripe_on)) == 1, "the outcome was looked up, not sent again"
    assert any(path == "/v1/transfers" and method == "GET" for method, path, _, _ in stripe_on.requests_seen)
    assert len(stripe_transfers_for(stripe_on, transfer.id)) == 1
    ledger_sums_to_zero()


def test_a_submitted_transfer_that_never_reached_stripe_is_sent_with_the_same_key(
    stripe_on, make_agent, resolve, recorded_jobs
):
    """A worker died after marking it submitted and before the request left: the lookup finds nothing."""
    agent = make_agent()
    account = onboard(agent, stripe_on)
    resolve(agent)
    recorded_jobs.run("release_earning")
    transfer = Transfer.objects.get(agent=agent)
    Transfer.objects.filter(pk=transfer.pk).update(state="submitted", destination=account.stripe_account_id, attempts=1)
    recorded_jobs.clear()

    assert transfers.transfer_submit(transfer_id=transfer.pk) == "paid"

    assert len(stripe_transfers_for(stripe_on, transfer.pk)) == 1
    assert transfer_posts(stripe_on)[0]["idempotency-key"] == f"transfer-{transfer.pk}"
    ledger_sums_to_zero()


def test_two_workers_running_the_same_job_make_one_transfer(stripe_on, make_agent, resolve, recorded_jobs):
    from ..marketplace.test_races import together

    agent = make_agent()
    onboard(agent, stripe_on)
    resolve(agent)
    recorded_jobs.run("release_earning")
    transfer = Transfer.objects.get(agent=agent)
    stripe_on.faults["POST /v1/transfers"] = [("hang", 0.3)]  # keep the first one busy while the others arrive

    outcomes = together(*[lambda: transfers.transfer_submit(transfer_id=transfer.pk) for _ in range(6)])

    assert sorted(outcomes).count("paid") == 1 and outcomes.count("busy_or_done") == 5, outcomes
    assert len(transfer_posts(stripe_on)) == 1
    assert len(stripe_transfers_for(stripe_on, transfer.pk)) == 1
    assert transfer.journals.count() == 1
    # And the sweeper, later, finds nothing left to do.
    assert transfers.transfer_submit(transfer_id=transfer.pk) == "busy_or_done"
    ledger_sums_to_zero()


def test_an_unresolved_outcome_earns_nothing(stripe_on, make_agent, resolve):
    agent = make_agent()
    onboard(agent, stripe_on)

    resolve(agent, outcome="unresolved")

    jobs.runner.wait_idle()
    assert not Earning.objects.filter(agent=agent).exists()
    assert transfer_posts(stripe_on) == []


def test_reopened_inside_the_hold_is_never_paid(stripe_on, settings, make_agent, resolve, bot):
    settings.PAYOUT_HOLD_SECONDS = 3600
    agent = make_agent()
    onboard(agent, stripe_on)
    conversation = resolve(agent)
    earning = Earning.objects.get(conversation=conversation)
    assert earning.state == "held"

    response = bot.post(f"/api/v1/escalations/{conversation.pk}/reopen", {"reason": "still charged twice"})

    assert response.status_code == 200, response.content
    assert response.json()["status"] in ("queued", "offered")
    earning.refresh_from_db()
    assert earning.state == "disputed" and "still charged twice" in earning.dispute_reason
    assert earnings.earning_release(earning_id=earning.pk) is None
    assert not Transfer.objects.filter(agent=agent).exists()
    assert balance(f"agent:{agent.pk}:payable") == 0
    ledger_sums_to_zero()
    # A conversation that is not resolved cannot be reopened.
    again = bot.post(f"/api/v1/escalations/{conversation.pk}/reopen", {})
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_reopenable"


def test_disputed_after_transfer_is_clawed_back_by_a_reversal(stripe_on, make_agent, resolve):
    agent = make_agent()
    onboard(agent, stripe_on)
    conversation = resolve(agent)
    transfer = wait_for(lambda: Transfer.objects.filter(agent=agent, state="paid").first())

    earnings.earning_dispute(earning_id=transfer.earning_id, reason="chargeback", actor="admin:ops")

    reversal = wait_for(lambda: Reversal.objects.filter(earning_id=transfer.earning_id, state="succeeded").first())
    at_stripe = stripe_on.transfers[transfer.stripe_transfer_id]
    assert at_stripe["amount_reversed"] == transfer.amount and at_stripe["reversed"] is True
    transfer.refresh_from_db()
    assert transfer.amount_reversed == transfer.amount
    assert reversal.stripe_reversal_id and balance(f"agent:{agent.pk}:receivable") == 0
    assert conversation.earnings.get().state == "disputed"
    ledger_sums_to_zero()


def test_a_clawback_that_cannot_be_reversed_is_kept_from_the_next_earnings(stripe_on, make_agent, resolve):
    from payouts.models import PayRule

    agent = make_agent()
    onboard(agent, stripe_on)
    resolve(agent)
    first = wait_for(lambda: Transfer.objects.filter(agent=agent, state="paid").first())
    stripe_on.faults[f"POST /v1/transfers/{first.stripe_transfer_id}/reversals"] = [400]

    earnings.earning_dispute(earning_id=first.earning_id, reason="refund", actor="admin:ops")

    wait_for(lambda: Reversal.objects.filter(earning_id=first.earning_id, state="failed").exists())
    assert balance(f"agent:{agent.pk}:receivable") == first.amount  # the agent owes it back

    PayRule.objects.create(topic="refunds", amount=first.amount + 600)
    resolve(agent, topic="refunds")

    second = wait_for(lambda: Transfer.objects.filter(agent=agent, state="paid").exclude(pk=first.pk).first())
    assert second.amount == 600  # the rest was kept back
    assert second.earning.offset_amount == first.amount
    assert balance(f"agent:{agent.pk}:receivable") == 0
    assert balance(f"agent:{agent.pk}:payable") == 0
    ledger_sums_to_zero()


def test_the_quality_bonus_is_its_own_transfer(stripe_on, make_agent, resolve, bot):
    agent = make_agent()
    onboard(agent, stripe_on)
    conversation = resolve(agent)
    wait_for(lambda: Transfer.objects.filter(agent=agent, state="paid").exists())

    assert bot.post(f"/api/v1/escalations/{conversation.pk}/rating", {"score": 5}).status_code == 201

    wait_for(lambda: Transfer.objects.filter(agent=agent, state="paid").count() == 2)
    bonus = Earning.objects.get(agent=agent, kind="quality_bonus")
    assert bonus.amount == conversation.offers.get().pay_bonus > 0
    assert bonus.transfer.state == "paid"
    ledger_sums_to_zero()


def test_the_ledger_refuses_edits_and_deletes():
    from django.db import DatabaseError, connection, transaction

    from payouts.models import Journal, LedgerLine

    ledger.ledger_post(key="test:1", kind="test", currency="usd", lines=[("a", 5), ("b", -5)])
    line = LedgerLine.objects.first()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        LedgerLine.objects.filter(pk=line.pk).update(amount=6)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM payouts_ledgerline")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        Journal.objects.filter(key="test:1").update(memo="edited")
    with pytest.raises(ValueError, match="does not balance"):
        ledger.ledger_post(key="test:2", kind="test", currency="usd", lines=[("a", 5), ("b", -4)])
    # Posting the same business event twice posts it once.
    ledger.ledger_post(key="test:1", kind="test", currency="usd", lines=[("a", 5), ("b", -5)])
    assert LedgerLine.objects.count() == 2


def test_disputed_while_in_flight_then_refused_is_never_sent(stripe_on, make_agent, resolve, recorded_jobs):
    """Disputed while the request was out; Stripe then refused it: it is cancelled, and nothing is owed."""
    agent = make_agent()
    account = onboard(agent, stripe_on)
    resolve(agent)
    recorded_jobs.run("release_earning")
    transfer = Transfer.objects.get(agent=agent)
    Transfer.objects.filter(pk=transfer.pk).update(state="submitted", destination=account.stripe_account_id)
    earnings.earning_dispute(earning_id=transfer.earning_id, reason="refund", actor="admin:ops")
    stripe_on.faults["POST /v1/transfers"] = ["balance_insufficient"]

    assert transfers.transfer_submit(transfer_id=transfer.pk) == "held"
    assert transfers.transfer_submit(transfer_id=transfer.pk) == "cancelled"  # balance.available, later
    for _ in range(3):
        recorded_jobs.run()

    transfer.refresh_from_db()
    assert transfer.state == "failed" and stripe_on.transfers == {}
    assert Reversal.objects.get(earning_id=transfer.earning_id).state == "succeeded"
    assert balance(f"agent:{agent.pk}:payable") == 0 and balance(f"agent:{agent.pk}:receivable") == 0
    ledger_sums_to_zero()


def test_a_dispute_wins_over_a_worker_about_to_send(stripe_on, make_agent, resolve, recorded_jobs):
    agent = make_agent()
    onboard(agent, stripe_on)
    resolve(agent)
    recorded_jobs.run("release_earning")
    transfer = Transfer.objects.select_related("earning").get(agent=agent)
    earnings.earning_dispute(earning_id=transfer.earning_id, reason="refund", actor="admin:ops")

    # A worker that loaded the row before the dispute committed still cannot send it.
    assert transfers._transfer_submit(transfer) == "cancelled"

    assert stripe_on.transfers == {}
    assert Transfer.objects.get(pk=transfer.pk).state == "failed"
    ledger_sums_to_zero()


def test_a_clawback_under_way_is_not_also_kept_from_the_next_earning(stripe_on, make_agent, resolve, recorded_jobs):
    """The reversal brings the money back; offsetting it as well would take it from the agent twice."""
    agent = make_agent()
    onboard(agent, stripe_on)
    first_earning = resolve(agent).earnings.get()
    recorded_jobs.run("release_earning")
    recorded_jobs.run("submit_transfer")
    earnings.earning_dispute(earning_id=first_earning.pk, reason="refund", actor="admin:ops")
    recorded_jobs.clear()  # the reversal job has not run yet: the clawback is under way

    second_earning = resolve(agent).earnings.get()
    second = earnings.earning_release(earning_id=second_earning.pk)

    assert second is not None and second.amount == second_earning.amount
    assert Earning.objects.get(pk=second_earning.pk).offset_amount == 0
    assert transfers.transfer_submit(transfer_id=second.pk) == "paid"
    assert transfers.reversal_submit(reversal_id=Reversal.objects.get(earning=first_earning).pk) == "succeeded"
    assert balance(f"agent:{agent.pk}:receivable") == 0
    assert balance(f"agent:{agent.pk}:payable") == 0
    ledger_sums_to_zero()


def test_the_sweeper_restarts_lost_and_dead_jobs_once_and_leaves_the_rest(
    stripe_on, settings, make_agent, resolve, recorded_jobs
):
    from datetime import timedelta

    from django.utils import timezone

    agent = make_agent()
    account = onboard(agent, stripe_on)
    resolve(agent)
    recorded_jobs.run("release_earning")
    transfer = Transfer.objects.get(agent=agent)
    recorded_jobs.clear()
    long_ago = timezone.now() - timedelta(seconds=settings.PAYOUT_REKICK_SECONDS + 1)

    # A job on its way (queued a moment ago, behind a backlog): left alone.
    assert sweeper.payouts_sweep() == 0
    # Its job was lost: started again, once.
    Transfer.objects.filter(pk=transfer.pk).update(kicked_at=long_ago)
    assert sweeper.payouts_sweep() == 1 and recorded_jobs.names() == ["submit_transfer"]
    assert sweeper.payouts_sweep() == 0
    # The worker running it died: its lease ran out after the job started.
    recorded_jobs.clear()
    now = timezone.now()
    Transfer.objects.filter(pk=transfer.pk).update(
        state="submitted",
        destination=account.stripe_account_id,
        kicked_at=now - timedelta(seconds=5),
        lease_until=now - timedelta(seconds=1),
    )
    assert sweeper.payouts_sweep() == 1 and recorded_jobs.names() == ["submit_transfer"]
    recorded_jobs.run()
    assert Transfer.objects.get(pk=transfer.pk).state == "paid"
    assert sweeper.payouts_sweep() == 0


def test_before_a_new_key_is_used_the_transfer_is_looked_up(stripe_on, make_agent, resolve, recorded_jobs):
    """An earlier attempt made the transfer but its answer was lost; a later refusal spent that key.
    Sending under a fresh key without looking first would pay twice."""
    from payouts.stripe_api import client

    agent = make_agent()
    account = onboard(agent, stripe_on)
    resolve(agent)
    recorded_jobs.run("release_earning")
    transfer = Transfer.objects.select_related("earning").get(agent=agent)
    transfer.destination = account.stripe_account_id
    client().v1.transfers.create(params=transfers._transfer_params(transfer))  # the earlier attempt, at Stripe
    Transfer.objects.filter(pk=transfer.pk).update(key_generation=1, hold_reason="balance_insufficient")
    posts_before = len(transfer_posts(stripe_on))

    assert transfers.transfer_submit(transfer_id=transfer.pk) == "paid"

    assert len(transfer_posts(stripe_on)) == posts_before
    assert len(stripe_transfers_for(stripe_on, transfer.pk)) == 1
    ledger_sums_to_zero()
