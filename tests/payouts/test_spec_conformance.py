"""What our payouts code actually sends to Stripe (not a list in a test) exists in Stripe's OpenAPI spec."""

from __future__ import annotations

import re

import pytest
from django.core.management import call_command

from payouts.models import Reversal, Transfer
from payouts.services import accounts, earnings, transfers

from ..conftest import wait_for
from ..stripe_standin import spec
from .conftest import onboard

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def spec_operation(method: str, path: str) -> dict:
    for template, operations in spec()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) and method.lower() in operations:
            return operations[method.lower()]
    raise AssertionError(
        f"{method} {path} is not in Stripe's API, or not in the subset the tests keep"
        " (tests/data/stripe/README.md says how to add an operation)"
    )


def accepted_params(operation: dict) -> set[str]:
    names = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"}
    body = operation.get("requestBody", {}).get("content", {}).get("application/x-www-form-urlencoded", {})
    return names | set(body.get("schema", {}).get("properties", {}))


def test_every_request_of_a_whole_payouts_flow_is_in_stripes_spec(stripe_on, make_agent, resolve, capsys):
    # Given a whole flow: onboarding, a paid resolution, an ambiguous retry, a clawback, a reconciliation.
    agent = make_agent()
    onboard(agent, stripe_on)
    accounts.account_refresh(agent=agent)
    resolve(agent)
    transfer = wait_for(lambda: Transfer.objects.filter(agent=agent, state="paid").first())
    Transfer.objects.filter(pk=transfer.pk).update(state="submitted", stripe_transfer_id=None)
    assert transfers.transfer_submit(transfer_id=transfer.pk) == "paid"  # found by lookup
    earnings.earning_dispute(earning_id=transfer.earning_id, reason="test", actor="test")
    wait_for(lambda: Reversal.objects.filter(state="succeeded").exists())
    call_command("reconcile_stripe", "--no-progress")

    # Then every request our code sent is an operation of Stripe's API with parameters it knows.
    seen = {(method, path) for method, path, _, _ in stripe_on.requests_seen}
    assert {("POST", "/v1/accounts"), ("POST", "/v1/account_links"), ("POST", "/v1/transfers")} <= {
        (m, p) for m, p in seen if p.count("/") == 2
    }
    assert any(m == "GET" and p == "/v1/transfers" for m, p in seen)
    assert any(m == "POST" and p.endswith("/reversals") for m, p in seen)
    for method, path, params, headers in stripe_on.requests_seen:
        operation = spec_operation(method, path)
        unknown = set(params) - accepted_params(operation)
        assert not unknown, f"{method} {path} sends {sorted(unknown)}, which Stripe does not accept"
        if method == "POST":
            assert headers.get("idempotency-key"), f"{method} {path} without an Idempotency-Key"
