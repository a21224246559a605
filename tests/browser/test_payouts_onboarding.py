"""Onboarding on a phone: an agent without a Stripe account cannot go online and sees why;
Stripe's hosted onboarding is one tap away; back from it, the agent goes online."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from payouts.models import ConnectedAccount

from ..conftest import wait_for
from ..processes import daphne, service_env
from ..stripe_standin import StripeStandIn, serve
from .conftest import PHONE, screenshot
from .test_agent_app import log_in

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def standin() -> Iterator[StripeStandIn]:
    yield from serve()


@pytest.fixture
def stripe_page(browser: Any, standin: StripeStandIn, tmp_path) -> Iterator[tuple[Any, str]]:
    env = service_env(
        TASK_RUNNER="thread",
        RUN_PERIODIC_IN_PROCESS="true",
        STRIPE_SECRET_KEY="sk_test_standin",
        STRIPE_API_BASE=standin.base,
        STRIPE_WEBHOOK_SECRET=standin.webhook_secret,
    )
    with daphne(env, tmp_path / "daphne.log") as base:
        context = browser.new_context(base_url=base, **PHONE)
        page = context.new_page()
        page.set_default_timeout(15_000)
        yield page, base
        context.close()


def test_an_agent_onboards_to_stripe_before_going_online(stripe_page, standin, make_agent):
    page, base = stripe_page
    agent = make_agent(username="noor", online=False)
    log_in(page, "noor")

    # Going online is refused, with the reason, and the way out.
    expect(page.locator("#payouts-warning")).to_be_visible()
    page.get_by_role("radio", name="Online").click()
    expect(page.locator("#presence-error")).to_contain_text("Set up payouts")
    expect(page.locator("#status-chip")).to_have_text("Offline")

    # The payouts screen: one tap to Stripe's hosted onboarding.
    page.get_by_role("link", name="Set up payouts", exact=False).first.click()
    expect(page.locator("#payouts-state")).to_contain_text("Set up payouts")
    screenshot(page, "09-payouts-onboarding")
    with page.expect_navigation(url=f"{standin.base}/onboarding/**"):
        page.get_by_role("button", name="Set up payouts with Stripe").click()
    account = ConnectedAccount.objects.get(agent=agent)
    assert page.url.startswith(f"{standin.base}/onboarding/{account.stripe_account_id}")

    # Back before finishing: what Stripe still needs is listed.
    page.goto("/app/payouts?onboarding=refresh")
    expect(page.locator("#payouts-due")).to_contain_text("external account")

    # The agent finishes at Stripe; Stripe says so by webhook; back in the app, online works.
    response = standin.emit(
        f"{base}/webhooks/stripe/",
        standin.event("account.updated", standin.account_activate(account.stripe_account_id)),
    )
    assert response.status_code == 200
    wait_for(lambda: ConnectedAccount.objects.get(pk=account.pk).can_receive_transfers)
    page.goto("/app/payouts?onboarding=return")
    expect(page.locator("#payouts-state")).to_contain_text("can receive transfers")
    page.get_by_role("link", name="Home").click()
    expect(page.locator("#payouts-warning")).to_be_hidden()
    page.get_by_role("radio", name="Online").click()
    expect(page.locator("#status-chip")).to_have_text("Online")
