"""The agent's earnings API (GET /api/v1/agent/earnings) and the reconcile_stripe command.

Without Stripe, the flows use `recorded_jobs` (each background job runs when the
test says so) and run on SQLite too. With Stripe (the stand-in), jobs run in
the background on PostgreSQL; conversations are in French, which the English
agent does not speak, so that the dispatcher leaves them to the test (which
offers them to the agent itself).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from marketplace.models import Agent
from payouts import stripe_api
from payouts.models import Earning, Journal, LedgerLine, Payout, Transfer

from ..conftest import wait_for
from .conftest import emit, ledger_sums_to_zero, onboard

pytestmark = pytest.mark.django_db(transaction=True)

EARNINGS = "/api/v1/agent/earnings"
SUMMARY_KEYS = {"currency", "pending", "transferred", "paid_out", "today", "owed_back", "has_more", "next", "items"}
ITEM_KEYS = {"id", "kind", "conversation_id", "amount", "currency", "status", "transfer"}


def api(agent: Agent) -> Client:
    token = Token.objects.create(user=agent.user)
    return Client(headers={"Authorization": f"Token {token.key}"})


def earnings(client: Client, **params: Any) -> dict[str, Any]:
    response = client.get(EARNINGS, params)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == SUMMARY_KEYS
    for item in body["items"]:
        assert ITEM_KEYS <= set(item)
    return body


# --- the earnings API, without Stripe ---------------------------------------------------------


def test_without_stripe_a_resolution_is_pending_and_visibly_waiting(recorded_jobs, make_agent, resolve):
    # given: no STRIPE_SECRET_KEY; the agent resolved a conversation
    agent = make_agent()
    client = api(agent)
    conversation = resolve(agent, language="en")
    earning = Earning.objects.get(conversation=conversation)

    # when: the earning is released and its transfer tried
    recorded_jobs.run("release_earning")
    assert recorded_jobs.run("submit_transfer") == ["held"]

    # then: pending, with the reason it waits
    body = earnings(client)
    assert body["currency"] == "usd"
    assert (body["pending"], body["transferred"], body["paid_out"]) == (earning.amount, 0, 0)
    assert (body["today"], body["owed_back"], body["has_more"]) == (earning.amount, 0, False)
    (item,) = body["items"]
    assert item["id"] == earning.pk and item["kind"] == "resolution"
    assert item["conversation_id"] == conversation.pk
    assert (item["amount"], item["currency"], item["status"]) == (earning.amount, "usd", "pending")
    assert item["transfer"]["status"] == "pending"
    assert item["transfer"]["hold_reason"] == "stripe_not_configured"
    assert item["transfer"]["amount"] == earning.amount and item["transfer"]["stripe_transfer_id"] is None


def test_a_held_earning_shows_as_held_and_counts_in_pending(recorded_jobs, settings, make_agent, resolve):
    # given: earnings are held an hour (the dispute window)
    settings.PAYOUT_HOLD_SECONDS = 3600
    agent = make_agent()
    conversation = resolve(agent, language="en")
    earning = Earning.objects.get(conversation=conversation)

    # when: the release job fires early (a timer, the sweeper)
    ((_, args, countdown),) = [c for c in recorded_jobs.calls if c[0].name.endswith(".release_earning")]
    assert args == (earning.pk,) and countdown == pytest.approx(3600, abs=60)
    assert recorded_jobs.run("release_earning") == [None]

    # then: still held, no transfer, counted as pending
    body = earnings(api(agent))
    (item,) = body["items"]
    assert (item["status"], item["transfer"]) == ("held", None)
    assert (body["pending"], body["transferred"]) == (earning.amount, 0)
    payable_at = datetime.fromisoformat(item["payable_at"])
    assert timedelta(minutes=59) < payable_at - timezone.now() <= timedelta(hours=1)


def test_an_agent_sees_only_their_own_earnings(recorded_jobs, make_agent, resolve):
    # given: one agent earned; another did not
    earner, other = make_agent(), make_agent()
    resolve(earner, language="en")

    # when: the other agent logs in with their password and asks
    response = Client().post(
        "/api/v1/auth/token",
        {"username": other.user.username, "password": "test-pass-123"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    body = earnings(Client(headers={"Authorization": f"Token {response.json()['token']}"}))

    # then: nothing of the first agent's
    assert body["items"] == []
    assert (body["pending"], body["transferred"], body["today"], body["has_more"]) == (0, 0, 0, False)
    assert len(earnings(api(earner))["items"]) == 1


def test_anonymous_and_non_agents_are_refused(make_agent):
    anonymous = Client().get(EARNINGS)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"

    user = get_user_model().objects.create_user(username="ops", password="test-pass-123")
    token = Token.objects.create(user=user)
    not_an_agent = Client(headers={"Authorization": f"Token {token.key}"}).get(EARNINGS)
    assert not_an_agent.status_code == 403
    assert not_an_agent.json()["error"]["code"] == "forbidden"


def test_items_come_newest_first_and_page_with_limit_and_before(recorded_jobs, make_agent, resolve):
    # given: three resolutions, oldest first
    agent = make_agent()
    conversations = [resolve(agent, language="en") for _ in range(3)]
    client = api(agent)

    # when: the first page of two
    first = earnings(client, limit=2)

    # then: the newest two, and more to come
    assert [i["conversation_id"] for i in first["items"]] == [conversations[2].pk, conversations[1].pk]
    assert first["has_more"] is True
    stamps = [datetime.fromisoformat(i["created_at"]) for i in first["items"]]
    assert stamps == sorted(stamps, reverse=True)

    # when: the next page, before the last item seen
    second = earnings(client, limit=2, before=first["items"][-1]["created_at"])

    # then: the oldest, and nothing more
    assert [i["conversation_id"] for i in second["items"]] == [conversations[0].pk]
    assert second["has_more"] is False
    # the totals are the agent's, whatever the page
    assert second["pending"] == first["pending"] == sum(e.amount for e in Earning.objects.filter(agent=agent))
    assert earnings(client, limit=3)["has_more"] is False


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 201}, {"limit": "ten"}, {"before": "yesterday"}],
    ids=["zero", "over-200", "not-a-number", "before-not-a-time"],
)
def test_invalid_paging_is_a_400(make_agent, params):
    response = api(make_agent()).get(EARNINGS, params)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["field"] == next(iter(params))


def test_paging_does_not_skip_items_created_at_the_same_instant(recorded_jobs, make_agent, resolve):
    # given: three earnings with the same created_at (bulk-created, imported, or a coarse clock)
    agent = make_agent()
    for _ in range(3):
        resolve(agent, language="en")
    Earning.objects.filter(agent=agent).update(created_at=timezone.now() - timedelta(minutes=1))
    client = api(agent)

    # when: the agent pages through one by one
    body = earnings(client, limit=1)
    seen = [i["id"] for i in body["items"]]
    while body["has_more"]:
        body = earnings(client, limit=1, **body["next"])
        seen += [i["id"] for i in body["items"]]

    # then: every earning, once
    assert sorted(seen) == sorted(Earning.objects.filter(agent=agent).values_list("pk", flat=True))


# --- the earnings API, with Stripe ------------------------------------------------------------


@pytest.mark.postgres
def test_pending_moves_to_transferred_when_the_transfer_is_paid(stripe_on, make_agent, resolve):
    # given: an agent who resolved a conversation before setting up payouts
    agent = make_agent()
    client = api(agent)
    resolve(agent, language="fr")
    transfer = wait_for(lambda: Transfer.objects.filter(agent=agent, hold_reason="no_account").first())
    amount = transfer.amount

    # then: pending, waiting for an account
    body = earnings(client)
    assert (body["pending"], body["transferred"], body["paid_out"]) == (amount, 0, 0)
    (item,) = body["items"]
    assert item["status"] == "pending" and item["transfer"]["hold_reason"] == "no_account"

    # when: the agent finishes onboarding, and Stripe makes the transfer
    account = onboard(agent, stripe_on)
    paid = wait_for(lambda: Transfer.objects.filter(pk=transfer.pk, state=Transfer.State.PAID).first())

    # then: transferred, no longer pending
    body = earnings(client)
    assert (body["pending"], body["transferred"], body["paid_out"]) == (0, amount, 0)
    (item,) = body["items"]
    assert item["status"] == "paid"
    assert item["transfer"]["status"] == "paid" and item["transfer"]["hold_reason"] is None
    assert item["transfer"]["stripe_transfer_id"] == paid.stripe_transfer_id
    assert paid.stripe_transfer_id in stripe_on.transfers
    assert item["transfer"]["paid_at"] is not None

    # when: Stripe pays it out to the agent's bank
    payout = {
        "id": "po_test_1",
        "object": "payout",
        "amount": amount,
        "currency": "usd",
        "status": "paid",
        "arrival_date": int(timezone.now().timestamp()),
    }
    assert emit(stripe_on, "payout.paid", payout, account=account.stripe_account_id).status_code == 200
    wait_for(lambda: Payout.objects.filter(stripe_payout_id="po_test_1", status="paid").exists())

    # then
    assert earnings(client)["paid_out"] == amount
    ledger_sums_to_zero()


# --- reconcile_stripe -------------------------------------------------------------------------


def reconcile(*args: str) -> tuple[int, dict[str, Any]]:
    """Run the command; (exit status, its JSON report)."""
    out, err = StringIO(), StringIO()
    try:
        call_command("reconcile_stripe", "--no-progress", *args, stdout=out, stderr=err)
    except SystemExit as exc:
        return int(exc.code or 0), json.loads(out.getvalue())
    return 0, json.loads(out.getvalue())


def kinds(report: dict[str, Any]) -> list[str]:
    return sorted(d["kind"] for d in report["differences"])


@pytest.fixture
def paid(stripe_on, make_agent, resolve) -> list[Transfer]:
    """Three resolutions of an onboarded agent, each paid by a transfer at the stand-in."""
    agent = make_agent()
    onboard(agent, stripe_on)
    for _ in range(3):
        resolve(agent, language="fr")
    wait_for(lambda: Transfer.objects.filter(agent=agent, state=Transfer.State.PAID).count() == 3)
    return list(Transfer.objects.filter(agent=agent).order_by("created_at"))


def stripe_create(**params: Any) -> Any:
    """A transfer made at Stripe through the real library (not by the platform's services)."""
    return stripe_api.client().v1.transfers.create(params=params)


@pytest.mark.postgres
def test_reconcile_after_paid_transfers_is_ok(paid):
    # when
    code, report = reconcile()

    # then
    assert code == 0
    assert report["ok"] is True and report["differences"] == []
    assert report["checked"] == {"ours": 3, "stripe": 3}
    assert report["transfers_by_state"] == {"paid": 3}
    assert (report["held"], report["stripe_transfers_not_from_us"]) == (0, 0)
    assert datetime.fromisoformat(report["since"]) < datetime.now(UTC) - timedelta(days=89)


@pytest.mark.postgres
def test_a_transfer_made_at_stripe_outside_the_platform_is_not_a_difference(paid):
    # given: someone made a transfer in Stripe's dashboard (no metadata of ours)
    stripe_create(amount=123, currency="usd", destination=paid[0].destination)

    # when
    code, report = reconcile()

    # then
    assert code == 0 and report["ok"] is True
    assert report["stripe_transfers_not_from_us"] == 1
    assert report["checked"] == {"ours": 3, "stripe": 4}


def tamper_duplicate(standin, transfer: Transfer) -> None:
    """A second transfer at Stripe carrying our transfer's id (a double send)."""
    stripe_create(
        amount=transfer.amount,
        currency=transfer.currency,
        destination=transfer.destination,
        transfer_group=transfer.pk,
        metadata={"transfer_id": transfer.pk},
    )


def tamper_missing(standin, transfer: Transfer) -> None:
    del standin.transfers[transfer.stripe_transfer_id]


def tamper_amount(standin, transfer: Transfer) -> None:
    standin.transfers[transfer.stripe_transfer_id]["amount"] = transfer.amount + 1


def tamper_unknown(standin, transfer: Transfer) -> None:
    stripe_create(
        amount=50, currency="usd", destination=transfer.destination, metadata={"transfer_id": "ptr_" + "0" * 24}
    )


def tamper_not_recorded(standin, transfer: Transfer) -> None:
    Transfer.objects.filter(pk=transfer.pk).update(state=Transfer.State.SUBMITTED)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (tamper_duplicate, "duplicate_at_stripe"),
        (tamper_missing, "missing_at_stripe"),
        (tamper_amount, "amount_differs"),
        (tamper_unknown, "unknown_to_us"),
        (tamper_not_recorded, "not_recorded_as_paid"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_reconcile_reports_each_difference_and_exits_1(paid, stripe_on, tamper, expected):
    # given: three paid transfers, then one thing goes wrong
    victim = paid[1]
    tamper(stripe_on, victim)

    # when
    code, report = reconcile()

    # then
    assert code == 1
    assert report["ok"] is False
    assert expected in kinds(report)
    (difference,) = [d for d in report["differences"] if d["kind"] == expected]
    if expected == "unknown_to_us":
        assert difference["transfer_id"] == "ptr_" + "0" * 24
        assert kinds(report) == ["unknown_to_us"]
        return
    assert (difference["transfer_id"], difference["agent_id"]) == (victim.pk, victim.agent_id)
    if expected == "duplicate_at_stripe":
        assert victim.stripe_transfer_id in difference["stripe_ids"] and len(difference["stripe_ids"]) == 2
    else:
        assert kinds(report) == [expected]  # nothing else is reported
    if expected == "amount_differs":
        assert (difference["ours"], difference["stripe"]) == (victim.amount, victim.amount + 1)


@pytest.mark.postgres
def test_reconcile_reports_an_unbalanced_ledger(paid):
    # given: a line slipped into a journal (an insert; the ledger refuses updates and deletes)
    journal = Journal.objects.order_by("id").first()
    LedgerLine.objects.create(journal=journal, account="platform:pay_expense", amount=7, currency="usd")

    # when
    code, report = reconcile()

    # then
    assert code == 1
    assert kinds(report) == ["journal_unbalanced", "ledger_unbalanced"]
    unbalanced = {d["kind"]: d for d in report["differences"]}
    assert unbalanced["journal_unbalanced"]["journal_id"] == journal.pk
    assert unbalanced["journal_unbalanced"]["total"] == 7
    assert unbalanced["ledger_unbalanced"] == {"kind": "ledger_unbalanced", "currency": "usd", "total": 7}


@pytest.mark.postgres
def test_a_transfer_held_for_months_before_it_was_sent_reconciles(stripe_on, make_agent, resolve):
    # given: a transfer created 120 days ago that waited (no account) until the agent onboarded today
    agent = make_agent()
    resolve(agent, language="fr")
    transfer = wait_for(lambda: Transfer.objects.filter(agent=agent, hold_reason="no_account").first())
    Transfer.objects.filter(pk=transfer.pk).update(created_at=timezone.now() - timedelta(days=120))
    onboard(agent, stripe_on)
    wait_for(lambda: Transfer.objects.filter(pk=transfer.pk, state=Transfer.State.PAID).exists())

    # when
    code, report = reconcile()

    # then: it matches Stripe, so nothing differs
    assert report["differences"] == [] and code == 0


def test_reconcile_without_stripe_is_a_command_error(settings):
    settings.STRIPE_SECRET_KEY = ""

    with pytest.raises(CommandError, match="STRIPE_SECRET_KEY"):
        call_command("reconcile_stripe", "--no-progress", stdout=StringIO())


# --- each item names its conversation and why its money waits (issue 11.11) -------------------------


def test_an_item_names_its_conversation_and_why_it_waits(recorded_jobs, settings, make_agent, resolve):
    # given: a resolution inside an hour's dispute window
    settings.PAYOUT_HOLD_SECONDS = 3600
    agent = make_agent()
    client = api(agent)
    conversation = resolve(agent, language="en", summary="Refund the duplicate charge", customer={"name": "Anna"})
    earning = Earning.objects.get(conversation=conversation)

    # then: the item says which conversation, and that it is on hold until the window ends
    (item,) = earnings(client)["items"]
    assert item["conversation"] == {
        "id": conversation.pk,
        "customer_name": "Anna",
        "topic": conversation.topic or None,
        "summary": "Refund the duplicate charge",
    }
    assert item["waiting"]["reason"] == "on_hold"
    assert datetime.fromisoformat(item["waiting"]["until"]) == earning.payable_at

    # when: released without Stripe, its transfer waits for payouts to be set up
    Earning.objects.filter(pk=earning.pk).update(payable_at=timezone.now())
    recorded_jobs.run("release_earning")
    assert recorded_jobs.run("submit_transfer") == ["held"]
    (item,) = earnings(client)["items"]
    assert item["waiting"]["reason"] == "payouts_not_set_up"
    assert "not set up" in item["waiting"]["detail"] and item["waiting"]["until"] is None


@pytest.mark.parametrize(
    ("transfer_state", "hold", "reason"),
    [
        ("pending", "no_account", "onboarding"),
        ("pending", "account_not_ready", "onboarding"),
        ("pending", "balance_insufficient", "platform_balance"),
        ("pending", "", "queued"),
        ("submitted", "", "in_flight"),
        ("failed", "", "failed"),
        ("paid", "", None),
    ],
)
def test_each_transfer_state_has_a_waiting_reason(make_agent, transfer_state, hold, reason):
    from payouts.selectors import earning_waiting

    agent = make_agent()
    earning = Earning.objects.create(
        agent=agent, kind="resolution", amount=500, currency="usd", state="released", payable_at=timezone.now()
    )
    Transfer.objects.create(
        agent=agent, earning=earning, amount=500, currency="usd", state=transfer_state, hold_reason=hold
    )
    waiting = earning_waiting(Earning.objects.select_related("transfer").get(pk=earning.pk))
    assert (waiting and waiting["reason"]) == reason
    if waiting:
        assert waiting["detail"]


def test_a_disputed_item_says_so_with_the_reason(make_agent):
    from payouts.selectors import earning_waiting
    from payouts.services import earnings

    agent = make_agent()
    earning = Earning.objects.create(
        agent=agent, kind="resolution", amount=500, currency="usd", state="held", payable_at=timezone.now()
    )
    earnings.earning_dispute(earning_id=earning.pk, reason="the customer came back", actor="test")
    waiting = earning_waiting(Earning.objects.get(pk=earning.pk))
    assert waiting is not None and waiting["reason"] == "disputed"
    assert "the customer came back" in waiting["detail"]
