"""The Stripe stand-in: driven by the real `stripe` library over HTTP, and checked
against Stripe's own OpenAPI spec and fixtures so that it cannot drift."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import stripe

from ..stripe_standin import StripeStandIn, serve, spec


@pytest.fixture
def standin() -> Iterator[StripeStandIn]:
    yield from serve()


def client_for(standin: StripeStandIn, timeout: float = 5, retries: int = 2) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_standin",
        base_addresses={"api": standin.base},
        max_network_retries=retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def active_account(client: stripe.StripeClient, standin: StripeStandIn) -> str:
    account = client.v1.accounts.create(params={"type": "express", "capabilities": {"transfers": {"requested": True}}})
    standin.account_activate(account.id)
    return account.id


def test_onboarding_objects(standin):
    client = client_for(standin)
    account = client.v1.accounts.create(
        params={"type": "express", "capabilities": {"transfers": {"requested": True}}, "metadata": {"agent": "agt_1"}}
    )
    assert account.id.startswith("acct_") and account.metadata["agent"] == "agt_1"
    assert account.capabilities["transfers"] == "inactive"
    assert "external_account" in account.requirements.currently_due
    link = client.v1.account_links.create(
        params={
            "account": account.id,
            "type": "account_onboarding",
            "refresh_url": "http://x/r",
            "return_url": "http://x/done",
        }
    )
    assert link.url.startswith(standin.base) and link.expires_at > link.created
    standin.account_activate(account.id)
    assert client.v1.accounts.retrieve(account.id).capabilities["transfers"] == "active"


def test_same_idempotency_key_same_transfer_once(standin):
    client = client_for(standin)
    destination = active_account(client, standin)
    params = {"amount": 450, "currency": "usd", "destination": destination, "metadata": {"earning": "ern_1"}}
    before = standin.available["usd"]

    first = client.v1.transfers.create(params=params, options={"idempotency_key": "ern_1"})
    again = client.v1.transfers.create(params=params, options={"idempotency_key": "ern_1"})

    assert first.id == again.id
    assert len(standin.transfers) == 1 and standin.available["usd"] == before - 450
    with pytest.raises(stripe.IdempotencyError):
        client.v1.transfers.create(params={**params, "amount": 999}, options={"idempotency_key": "ern_1"})


def test_a_500_is_retried_by_the_library_with_the_same_key(standin):
    client = client_for(standin)
    destination = active_account(client, standin)
    standin.faults["POST /v1/transfers"] = [500]

    transfer = client.v1.transfers.create(
        params={"amount": 100, "currency": "usd", "destination": destination}, options={"idempotency_key": "k-500"}
    )

    assert transfer.amount == 100 and len(standin.transfers) == 1
    keys = [h.get("idempotency-key") for m, p, _, h in standin.requests_seen if p == "/v1/transfers"]
    assert keys == ["k-500", "k-500"]


def test_a_hang_is_an_ambiguous_outcome_settled_by_the_key(standin):
    """The first attempt is done at Stripe but its answer never arrives; the retry gets the same transfer."""
    client = client_for(standin, timeout=0.5)
    destination = active_account(client, standin)
    standin.faults["POST /v1/transfers"] = [("hang", 1.5)]

    transfer = client.v1.transfers.create(
        params={"amount": 100, "currency": "usd", "destination": destination}, options={"idempotency_key": "k-hang"}
    )

    assert len(standin.transfers) == 1
    assert transfer.id in standin.transfers


def test_balance_insufficient_and_accounts_that_cannot_receive(standin):
    client = client_for(standin, retries=0)
    destination = active_account(client, standin)
    standin.available["usd"] = 50
    with pytest.raises(stripe.InvalidRequestError) as error:
        client.v1.transfers.create(params={"amount": 100, "currency": "usd", "destination": destination})
    assert error.value.code == "balance_insufficient"

    inactive = client.v1.accounts.create(params={"type": "express", "capabilities": {"transfers": {"requested": True}}})
    with pytest.raises(stripe.InvalidRequestError) as error:
        client.v1.transfers.create(params={"amount": 10, "currency": "usd", "destination": inactive.id})
    assert error.value.code == "insufficient_capabilities_for_transfer"
    assert client.v1.balance.retrieve().available[0].amount == 50


def test_transfers_are_found_by_transfer_group_and_reversed(standin):
    client = client_for(standin)
    destination = active_account(client, standin)
    made = client.v1.transfers.create(
        params={"amount": 300, "currency": "usd", "destination": destination, "transfer_group": "ern_9"}
    )
    client.v1.transfers.create(params={"amount": 5, "currency": "usd", "destination": destination})

    found = client.v1.transfers.list(params={"transfer_group": "ern_9"})
    assert [t.id for t in found.data] == [made.id]

    reversal = client.v1.transfers.reversals.create(made.id, params={"amount": 100})
    assert reversal.amount == 100
    assert client.v1.transfers.retrieve(made.id).amount_reversed == 100


def test_webhook_events_are_signed_as_stripe_signs_them(standin):
    event = standin.event("account.updated", {"id": "acct_1", "object": "account"})
    payload = json.dumps(event)
    verified = stripe.Webhook.construct_event(payload, standin.sign(payload.encode()), standin.webhook_secret)
    assert verified.type == "account.updated"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, standin.sign(payload.encode()), "whsec_other")


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("account", lambda c, s: c.v1.accounts.create(params={"type": "express"})),
        (
            "account_link",
            lambda c, s: c.v1.account_links.create(
                params={"account": active_account(c, s), "type": "account_onboarding"}
            ),
        ),
        (
            "transfer",
            lambda c, s: c.v1.transfers.create(
                params={"amount": 1, "currency": "usd", "destination": active_account(c, s)}
            ),
        ),
        ("balance", lambda c, s: c.v1.balance.retrieve()),
    ],
)
def test_answers_have_every_field_the_spec_requires(standin, kind, make):
    obj = make(client_for(standin), standin).to_dict()
    required = set(spec()["components"]["schemas"][kind].get("required", []))
    assert required - set(obj) == set(), f"{kind} misses {sorted(required - set(obj))}"
    assert obj["object"] == kind


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/accounts", {"type", "capabilities", "metadata", "email", "country"}),
        ("/v1/account_links", {"account", "type", "refresh_url", "return_url"}),
        ("/v1/transfers", {"amount", "currency", "destination", "metadata", "transfer_group", "description"}),
        ("/v1/transfers/{id}/reversals", {"amount", "metadata"}),
    ],
)
def test_the_parameters_we_accept_exist_in_the_spec(path, params):
    body = spec()["paths"][path]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert params <= set(body["properties"]), sorted(params - set(body["properties"]))
