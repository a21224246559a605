"""Connected accounts (Stripe Express) and onboarding."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import jobs
from marketplace.models import Agent

from .. import stripe_api, tasks
from ..models import (
    ConnectedAccount,
    Transfer,
)
from ..stripe_api import as_dict
from .errors import StripeNotConfigured, StripeUnavailable
from .transfers import transfers_kick

logger = logging.getLogger(__name__)


def _stripe_call(call: Any) -> Any:
    if not stripe_api.configured():
        raise StripeNotConfigured()
    try:
        return call(stripe_api.client())
    except stripe.StripeError as exc:
        logger.warning("Stripe call failed: %s", exc)
        raise StripeUnavailable() from exc


def account_apply(account: ConnectedAccount, obj: Any, as_of: datetime | None) -> ConnectedAccount:
    """Stripe's account object, applied unless we already hold a newer state."""
    obj = as_dict(obj)
    if as_of is not None and account.state_as_of is not None:
        if as_of < account.state_as_of:
            return account  # an older event arriving late
        if as_of == account.state_as_of and stripe_api.configured():
            # Two states within one second (Stripe's timestamps are whole seconds):
            # which one is newer is unknown, so ask Stripe once this is applied.
            jobs.enqueue_on_commit(tasks.refresh_account, account.agent_id)
    requirements = obj.get("requirements") or {}
    capabilities = obj.get("capabilities") or {}
    account.transfers_status = capabilities.get("transfers") or "inactive"
    account.details_submitted = bool(obj.get("details_submitted"))
    account.payouts_enabled = bool(obj.get("payouts_enabled"))
    account.requirements_due = list(requirements.get("currently_due") or [])
    account.requirements_past_due = list(requirements.get("past_due") or [])
    account.disabled_reason = requirements.get("disabled_reason") or ""
    account.state_as_of = as_of or _whole_second(timezone.now())
    account.save()
    if account.can_receive_transfers:
        agent_id = account.agent_id
        transaction.on_commit(lambda: kick_account_holds(agent_id))
    return account


def kick_account_holds(agent_id: str) -> int:
    """The agent's account can take transfers now: send what waited for it."""
    return transfers_kick(hold_reasons=[Transfer.Hold.ACCOUNT_NOT_READY, Transfer.Hold.NO_ACCOUNT], agent_id=agent_id)


def _whole_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def account_ensure(*, agent: Agent) -> ConnectedAccount:
    """The agent's connected account, created at Stripe on first use (once, even if asked twice at once)."""
    existing = ConnectedAccount.objects.filter(agent=agent).first()
    if existing is not None:
        return existing
    created = _stripe_call(
        lambda client: client.v1.accounts.create(
            params={
                "type": "express",
                "country": settings.STRIPE_ACCOUNT_COUNTRY,
                "email": agent.user.email or None,
                "business_type": "individual",
                "capabilities": {"transfers": {"requested": True}},
                "metadata": {"agent_id": agent.id},
            },
            options={"idempotency_key": f"account-{agent.id}"},
        )
    )
    with transaction.atomic():
        account, _ = ConnectedAccount.objects.get_or_create(agent=agent, defaults={"stripe_account_id": created.id})
        return account_apply(ConnectedAccount.objects.select_for_update().get(pk=account.pk), created, None)


def onboarding_link(*, agent: Agent) -> dict[str, Any]:
    """A fresh Stripe-hosted onboarding link; refresh and return lead back into the agent app."""
    account = account_ensure(agent=agent)
    base = settings.APP_BASE_URL
    link = _stripe_call(
        lambda client: client.v1.account_links.create(
            params={
                "account": account.stripe_account_id,
                "type": "account_onboarding",
                "refresh_url": f"{base}/app/payouts?onboarding=refresh",
                "return_url": f"{base}/app/payouts?onboarding=return",
            }
        )
    )
    return {
        "url": link.url,
        "expires_at": datetime.fromtimestamp(link.expires_at, tz=UTC),
        "account_id": account.stripe_account_id,
    }


def account_refresh(*, agent: Agent) -> ConnectedAccount | None:
    """Ask Stripe for the account's state now (the agent is back from onboarding)."""
    account = ConnectedAccount.objects.filter(agent=agent).first()
    if account is None or not stripe_api.configured():
        return account
    obj = _stripe_call(lambda client: client.v1.accounts.retrieve(account.stripe_account_id))
    with transaction.atomic():
        locked = ConnectedAccount.objects.select_for_update().get(pk=account.pk)
        locked.state_as_of = None  # what Stripe says now wins over any event
        return account_apply(locked, obj, None)
