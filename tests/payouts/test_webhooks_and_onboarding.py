"""Onboarding, the payouts status, the go-online gate and Stripe's webhooks, against the stand-in over HTTP."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from config.routing import websocket_urlpatterns
from dispatch.auth import AgentAuthMiddleware
from dispatch.services.errors import PayoutsNotReady
from dispatch.services.presence import agent_set_status
from marketplace.models import Agent
from payouts.models import ConnectedAccount, Payout, StripeEvent, Transfer

from ..conftest import wait_for
from .conftest import balance, emit, ledger_sums_to_zero, onboard

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ONBOARDING, STATUS, EARNINGS, WEBHOOK = (
    "/api/v1/agent/payouts/onboarding",
    "/api/v1/agent/payouts",
    "/api/v1/agent/earnings",
    "/webhooks/stripe/",
)


def client_for(user: Any) -> Client:
    token, _ = Token.objects.get_or_create(user=user)
    return Client(headers={"Authorization": f"Token {token.key}"})


def deliver(standin: Any, event: Any, *, secret: str | None = None, timestamp: int | None = None) -> Any:
    """Stripe posts this exact body (an event dict, or raw bytes), signed (with another secret if given)."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    signature = standin.sign(body, timestamp)
    if secret is not None:
        t = int(time.time()) if timestamp is None else timestamp
        signature = f"t={t},v1=" + hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return Client(raise_request_exception=False).post(
        WEBHOOK, body, content_type="application/json", headers={"Stripe-Signature": signature}
    )


def processed(event_id: str) -> StripeEvent:
    return wait_for(lambda: StripeEvent.objects.filter(pk=event_id, processed_at__isnull=False).first())


def together(*calls: Any) -> list[Any]:
    barrier = threading.Barrier(len(calls))

    def run(call: Any) -> Any:
        try:
            barrier.wait()
            return call()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def stripe_requests(standin: Any, method: str, path: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
    return [(params, headers) for m, p, params, headers in standin.requests_seen if (m, p) == (method, path)]


# --- 1. onboarding ----------------------------------------------------------------------------------


def test_onboarding_creates_one_express_account_and_a_fresh_link_each_time(stripe_on, make_agent):
    agent = make_agent(online=False)
    token = Client().post(
        "/api/v1/auth/token", {"username": agent.user.username, "password": "test-pass-123"}, "application/json"
    )
    assert token.status_code == 200, token.content
    api = Client(headers={"Authorization": f"Token {token.json()['token']}"})

    first = api.post(ONBOARDING)

    assert first.status_code == 200, first.content
    body = first.json()
    assert set(body) == {"url", "expires_at", "account_id"}
    (account_id,) = stripe_on.accounts
    assert body["account_id"] == account_id == ConnectedAccount.objects.get(agent=agent).stripe_account_id
    (params, _), *_ = stripe_requests(stripe_on, "POST", "/v1/accounts")
    assert params["type"] == "express" and params["capabilities"] == {"transfers": {"requested": "true"}}
    assert stripe_on.accounts[account_id]["metadata"] == {"agent_id": agent.pk}
    return_url = parse_qs(urlsplit(body["url"]).query)["return_url"][0]
    assert urlsplit(return_url).path == "/app/payouts"
    assert datetime.fromisoformat(body["expires_at"]) > timezone.now()

    second = api.post(ONBOARDING)

    assert second.status_code == 200 and second.json()["account_id"] == account_id
    assert list(stripe_on.accounts) == [account_id]
    assert len(stripe_requests(stripe_on, "POST", "/v1/account_links")) == 2
    assert ConnectedAccount.objects.count() == 1


def test_two_onboarding_requests_at_once_create_one_account(stripe_on, make_agent):
    agent = make_agent(online=False)
    one, two = client_for(agent.user), client_for(agent.user)

    responses = together(lambda: one.post(ONBOARDING), lambda: two.post(ONBOARDING))

    assert [r.status_code for r in responses] == [200, 200], [r.content for r in responses]
    assert len({r.json()["account_id"] for r in responses}) == 1
    assert len(stripe_on.accounts) == 1 and ConnectedAccount.objects.count() == 1


def test_onboarding_refuses_anonymous_users_and_non_agents(stripe_on, make_agent):
    anonymous = Client().post(ONBOARDING)
    assert anonymous.status_code == 401
    assert set(anonymous.json()["error"]) >= {"code", "detail"} and anonymous.json()["error"]["code"] == "unauthorized"

    staff = get_user_model().objects.create_user(username="ops", password="x-pass-123")
    forbidden = client_for(staff).post(ONBOARDING)

    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    assert stripe_on.accounts == {} and stripe_on.requests_seen == []


def test_onboarding_without_stripe_configured_is_503(settings, make_agent):
    settings.STRIPE_SECRET_KEY = ""
    agent = make_agent(online=False)

    response = client_for(agent.user).post(ONBOARDING)

    assert response.status_code == 503 and response.json()["error"]["code"] == "stripe_not_configured"
    assert not ConnectedAccount.objects.exists()


def test_stripe_failing_past_the_retries_is_502_and_stores_nothing_then_a_retry_works(stripe_on, make_agent):
    agent = make_agent(online=False)
    api = client_for(agent.user)
    stripe_on.faults["POST /v1/accounts"] = [500, 500, 500]  # the first try and max_network_retries=2

    response = api.post(ONBOARDING)

    assert response.status_code == 502 and response.json()["error"]["code"] == "stripe_unavailable"
    assert not ConnectedAccount.objects.exists() and stripe_on.accounts == {}
    attempts = stripe_requests(stripe_on, "POST", "/v1/accounts")
    assert len(attempts) == 3 and len({headers["idempotency-key"] for _, headers in attempts}) == 1

    retried = api.post(ONBOARDING)

    assert retried.status_code == 200 and list(stripe_on.accounts) == [retried.json()["account_id"]]


def test_a_failed_link_keeps_the_account_and_the_next_request_reuses_it(stripe_on, make_agent):
    agent = make_agent(online=False)
    api = client_for(agent.user)
    stripe_on.faults["POST /v1/account_links"] = [500, 500, 500]

    assert api.post(ONBOARDING).status_code == 502
    (account_id,) = stripe_on.accounts
    assert ConnectedAccount.objects.get(agent=agent).stripe_account_id == account_id

    assert api.post(ONBOARDING).json()["account_id"] == account_id
    assert list(stripe_on.accounts) == [account_id]


# --- 2. the payouts status ---------------------------------------------------------------------------


def test_status_follows_onboarding_from_nothing_to_active(stripe_on, make_agent):
    agent = make_agent(online=False)
    api = client_for(agent.user)

    before = api.get(STATUS).json()
    assert before["stripe_configured"] is True and before["account_id"] is None
    assert before["reason"] == "onboarding_required" and before["can_go_online"] is False
    assert before["can_receive_transfers"] is False

    account = onboard(agent, stripe_on, activate=False)
    pending = api.get(STATUS).json()
    assert pending["account_id"] == account.stripe_account_id and pending["transfers"] == "inactive"
    assert pending["requirements_due"] == ["external_account", "tos_acceptance.date"]
    assert pending["reason"] == "requirements_due" and "external_account" in pending["detail"]
    assert pending["can_go_online"] is False

    response = emit(stripe_on, "account.updated", stripe_on.account_activate(account.stripe_account_id))
    processed(response.json()["id"])
    ready = api.get(STATUS).json()
    assert ready["transfers"] == "active" and ready["requirements_due"] == []
    assert (ready["can_receive_transfers"], ready["can_go_online"], ready["reason"]) == (True, True, None)


def test_status_refresh_asks_stripe(stripe_on, make_agent):
    agent = make_agent(online=False)
    api = client_for(agent.user)
    account = onboard(agent, stripe_on, activate=False)
    stripe_on.account_activate(account.stripe_account_id)  # finished at Stripe; no webhook yet

    assert api.get(STATUS).json()["can_receive_transfers"] is False
    refreshed = api.get(STATUS, {"refresh": "1"}).json()

    assert refreshed["can_receive_transfers"] is True and refreshed["requirements_due"] == []
    assert stripe_requests(stripe_on, "GET", f"/v1/accounts/{account.stripe_account_id}")


# --- 3. the go-online gate ----------------------------------------------------------------------------


def test_going_online_needs_an_account_that_can_receive_transfers(stripe_on, make_agent):
    agent = make_agent(online=False)

    with pytest.raises(PayoutsNotReady) as no_account:
        agent_set_status(agent_id=agent.pk, status="online", actor="test")
    assert no_account.value.get_codes() == "payouts_not_ready" and "Set up payouts" in str(no_account.value.detail)

    onboard(agent, stripe_on, activate=False)
    with pytest.raises(PayoutsNotReady) as due:
        agent_set_status(agent_id=agent.pk, status="online", actor="test")
    assert "external_account" in str(due.value.detail) and "tos_acceptance.date" in str(due.value.detail)
    assert Agent.objects.get(pk=agent.pk).status == Agent.Status.OFFLINE

    onboard(agent, stripe_on)

    assert agent_set_status(agent_id=agent.pk, status="online", actor="test").status == Agent.Status.ONLINE


@pytest.mark.parametrize("setup", ["stripe_not_configured", "gate_turned_off"])
def test_going_online_is_not_gated_without_stripe_or_when_turned_off(request, settings, make_agent, setup):
    if setup == "stripe_not_configured":
        settings.STRIPE_SECRET_KEY = ""
    else:
        request.getfixturevalue("stripe_on")
        settings.PAYOUTS_REQUIRED_TO_GO_ONLINE = False
    agent = make_agent(online=False)
    status = client_for(agent.user).get(STATUS).json()
    assert status["can_go_online"] is True and status["can_receive_transfers"] is False
    assert status["reason"] == {"stripe_not_configured": "stripe_not_configured"}.get(setup, "onboarding_required")

    agent_set_status(agent_id=agent.pk, status="online", actor="test")

    assert Agent.objects.get(pk=agent.pk).status == Agent.Status.ONLINE


async def test_presence_online_over_the_websocket_gets_payouts_not_ready(stripe_on, make_agent):
    agent = await sync_to_async(make_agent)(online=False)
    token = await Token.objects.acreate(user_id=agent.user_id)
    socket = WebsocketCommunicator(
        AgentAuthMiddleware(URLRouter(websocket_urlpatterns)), f"/ws/agent/?token={token.key}"
    )
    assert (await socket.connect(timeout=5))[0]

    async def expect(type_: str) -> dict[str, Any]:
        async with asyncio.timeout(5):
            while (message := await socket.receive_json_from(timeout=5))["type"] != type_:
                pass
        return message

    await expect("hello")
    await socket.send_json_to({"type": "presence", "status": "online"})
    error = await expect("error")
    assert error["code"] == "payouts_not_ready" and "Set up payouts" in error["detail"]
    assert (await Agent.objects.aget(pk=agent.pk)).status == Agent.Status.OFFLINE

    await sync_to_async(onboard)(agent, stripe_on)
    await socket.send_json_to({"type": "presence", "status": "online"})
    assert (await expect("presence"))["status"] == "online"
    await socket.disconnect()


# --- 4. webhooks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signing",
    [{"secret": "whsec_someone_else"}, {"timestamp": int(time.time()) - 600}, {"header": ""}, {"header": "garbage"}],
    ids=["wrong_secret", "stale_timestamp", "missing", "malformed"],
)
def test_an_event_that_does_not_verify_is_refused_and_not_stored(stripe_on, signing):
    event = stripe_on.event("customer.created", {"id": "cus_1", "object": "customer"})
    if "header" in signing:
        response = Client().post(
            WEBHOOK, json.dumps(event), content_type="application/json", headers={"Stripe-Signature": signing["header"]}
        )
    else:
        response = deliver(stripe_on, event, **signing)

    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_signature"
    assert not StripeEvent.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b'{"object": "event", "type": "account.updated"}',
        b"[]",
    ],
    ids=["not_json", "not_utf8", "no_id", "json_array"],
)
def test_a_signed_body_that_is_not_an_event_is_400(stripe_on, body):
    response = deliver(stripe_on, body)

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] in {"invalid_json", "invalid_event"}
    assert not StripeEvent.objects.exists()


def test_webhooks_without_a_secret_are_503(stripe_on, settings):
    event = stripe_on.event("customer.created", {"id": "cus_1", "object": "customer"})
    settings.STRIPE_WEBHOOK_SECRET = ""

    response = deliver(stripe_on, event)

    assert response.status_code == 503 and response.json()["error"]["code"] == "stripe_not_configured"
    assert not StripeEvent.objects.exists()


def test_an_event_delivered_twice_is_stored_and_processed_once(stripe_on, make_agent, recorded_jobs):
    account = onboard(make_agent(online=False), stripe_on, activate=False)
    payout = {"id": "po_twice", "object": "payout", "amount": 900, "currency": "usd", "status": "paid"}
    event = stripe_on.event("payout.paid", payout, account=account.stripe_account_id)

    first, second = deliver(stripe_on, event), deliver(stripe_on, event)

    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    assert sorted(recorded_jobs.run("process_stripe_event")) == ["payout paid", "skipped"]
    stored = StripeEvent.objects.get()
    assert stored.deliveries == 2 and stored.processed_at is not None and stored.outcome == "payout paid"
    assert Payout.objects.count() == 1

    assert deliver(stripe_on, event).status_code == 200
    assert recorded_jobs.names() == []  # already processed: nothing to do again
    assert StripeEvent.objects.get().deliveries == 3


def test_the_same_event_delivered_twice_at_once_is_stored_once(stripe_on):
    event = stripe_on.event("customer.created", {"id": "cus_1", "object": "customer"})

    responses = together(lambda: deliver(stripe_on, event), lambda: deliver(stripe_on, event))

    assert [r.status_code for r in responses] == [200, 200]
    assert sorted(r.json()["duplicate"] for r in responses) == [False, True]
    assert processed(event["id"]).deliveries == 2 and StripeEvent.objects.count() == 1


def test_an_older_account_update_arriving_late_does_not_undo_a_newer_one(stripe_on, make_agent, recorded_jobs):
    account = onboard(make_agent(online=False), stripe_on, activate=False)
    inactive = copy.deepcopy(stripe_on.accounts[account.stripe_account_id])
    active = stripe_on.account_activate(account.stripe_account_id)
    now = int(time.time())

    emit(stripe_on, "account.updated", active, created=now)
    recorded_jobs.run("process_stripe_event")
    emit(stripe_on, "account.updated", inactive, created=now - 60)
    (outcome,) = recorded_jobs.run("process_stripe_event")

    account.refresh_from_db()
    assert outcome == f"account {account.stripe_account_id}: transfers active"
    assert account.can_receive_transfers and account.requirements_due == [] and account.details_submitted


def test_capability_updated_for_transfers_is_applied(stripe_on, make_agent):
    account = onboard(make_agent(online=False), stripe_on, activate=False)
    acct = account.stripe_account_id
    capability = {"id": "transfers", "object": "capability", "account": acct, "requested": True, "status": "active"}

    card = emit(stripe_on, "capability.updated", {**capability, "id": "card_payments"}, account=acct)
    transfers = emit(stripe_on, "capability.updated", capability, account=acct)

    assert processed(card.json()["id"]).outcome == "ignored"
    assert processed(transfers.json()["id"]).outcome == "transfers capability active"
    assert ConnectedAccount.objects.get(pk=account.pk).can_receive_transfers


def test_deauthorization_stops_transfers_and_the_gate(stripe_on, make_agent):
    agent = make_agent(online=False)
    account = onboard(agent, stripe_on)
    application = {"id": "ca_platform", "object": "application", "name": "Marketplace"}

    response = emit(stripe_on, "account.application.deauthorized", application, account=account.stripe_account_id)

    assert processed(response.json()["id"]).outcome == "deauthorized"
    account.refresh_from_db()
    assert account.deauthorized_at is not None and not account.can_receive_transfers
    status = client_for(agent.user).get(STATUS).json()
    assert (status["reason"], status["can_receive_transfers"]) == ("account_disconnected", False)
    with pytest.raises(PayoutsNotReady):
        agent_set_status(agent_id=agent.pk, status="online", actor="test")


def test_an_unknown_event_type_is_stored_and_ignored(stripe_on):
    response = emit(stripe_on, "customer.created", {"id": "cus_1", "object": "customer"})

    assert response.status_code == 200
    event = processed(response.json()["id"])
    assert (event.type, event.outcome) == ("customer.created", "ignored")


def test_payout_paid_shows_in_the_earnings_paid_out(stripe_on, make_agent):
    agent = make_agent(online=False)
    account = onboard(agent, stripe_on)
    api = client_for(agent.user)
    assert api.get(EARNINGS).json()["paid_out"] == 0
    arrival = int(time.time()) + 86400
    payout = {"object": "payout", "amount": 2500, "currency": "usd", "arrival_date": arrival}

    paid = emit(stripe_on, "payout.paid", {**payout, "id": "po_1", "status": "paid"}, account=account.stripe_account_id)
    on_way = emit(
        stripe_on, "payout.created", {**payout, "id": "po_2", "status": "pending"}, account=account.stripe_account_id
    )

    processed(paid.json()["id"])
    processed(on_way.json()["id"])
    stored = Payout.objects.get(stripe_payout_id="po_1")
    assert (stored.account_id, stored.amount, stored.status) == (account.pk, 2500, "paid")
    assert stored.arrival_date is not None and int(stored.arrival_date.timestamp()) == arrival
    assert api.get(EARNINGS).json()["paid_out"] == 2500


def test_a_paid_payout_stays_paid_when_an_update_from_the_same_second_arrives_after(stripe_on, make_agent):
    agent = make_agent(online=False)
    acct = onboard(agent, stripe_on, activate=False).stripe_account_id
    now = int(time.time())
    payout = {"id": "po_1", "object": "payout", "amount": 2500, "currency": "usd"}

    processed(emit(stripe_on, "payout.paid", {**payout, "status": "paid"}, account=acct, created=now).json()["id"])
    late = emit(stripe_on, "payout.updated", {**payout, "status": "in_transit"}, account=acct, created=now)
    processed(late.json()["id"])

    assert Payout.objects.get().status == "paid"
    assert client_for(agent.user).get(EARNINGS).json()["paid_out"] == 2500


# --- 5. held transfers released by webhooks --------------------------------------------------------------


def stripe_transfers_for(standin: Any, transfer: Transfer) -> list[dict[str, Any]]:
    return [t for t in standin.transfers.values() if t["metadata"].get("transfer_id") == transfer.id]


def test_balance_available_sends_transfers_held_for_insufficient_balance(stripe_on, make_agent, resolve):
    agent = make_agent(online=False)
    onboard(agent, stripe_on)
    stripe_on.faults["POST /v1/transfers"] = ["balance_insufficient"]

    resolve(agent)

    held = wait_for(
        lambda: Transfer.objects.filter(agent=agent, state="pending", hold_reason="balance_insufficient").first()
    )
    assert stripe_transfers_for(stripe_on, held) == []

    emit(stripe_on, "balance.available", stripe_on.balance())

    paid = wait_for(lambda: Transfer.objects.filter(pk=held.pk, state="paid").first())
    (at_stripe,) = stripe_transfers_for(stripe_on, paid)
    assert paid.stripe_transfer_id == at_stripe["id"] and at_stripe["amount"] == paid.amount
    assert balance(f"agent:{agent.pk}:payable") == 0
    ledger_sums_to_zero()


def test_a_transfer_held_for_no_account_is_sent_once_the_account_is_activated(stripe_on, make_agent, resolve):
    agent = make_agent(online=False)
    resolve(agent)
    held = wait_for(lambda: Transfer.objects.filter(agent=agent, hold_reason="no_account").first())

    onboard(agent, stripe_on)

    paid = wait_for(lambda: Transfer.objects.filter(pk=held.pk, state="paid").first())
    assert len(stripe_transfers_for(stripe_on, paid)) == 1 and paid.amount == held.amount
    ledger_sums_to_zero()


def test_a_transfer_held_for_no_account_is_sent_when_capability_updated_activates(stripe_on, make_agent, resolve):
    agent = make_agent(online=False)
    resolve(agent)
    held = wait_for(lambda: Transfer.objects.filter(agent=agent, hold_reason="no_account").first())
    acct = onboard(agent, stripe_on, activate=False).stripe_account_id
    stripe_on.account_activate(acct)
    capability = {"id": "transfers", "object": "capability", "account": acct, "requested": True, "status": "active"}

    processed(emit(stripe_on, "capability.updated", capability, account=acct).json()["id"])

    wait_for(lambda: Transfer.objects.filter(pk=held.pk, state="paid").exists(), timeout=5)
