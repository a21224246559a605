"""Thin Celery tasks; each calls one service (imported late: services enqueue these tasks)."""

from celery import shared_task


@shared_task(name="payouts.tasks.release_earning")
def release_earning(earning_id: str) -> str | None:
    from .services.earnings import earning_release

    transfer = earning_release(earning_id=earning_id)
    return transfer.pk if transfer else None


@shared_task(name="payouts.tasks.submit_transfer")
def submit_transfer(transfer_id: str) -> str:
    from .services.transfers import transfer_submit

    return transfer_submit(transfer_id=transfer_id)


@shared_task(name="payouts.tasks.submit_reversal")
def submit_reversal(reversal_id: str) -> str:
    from .services.transfers import reversal_submit

    return reversal_submit(reversal_id=reversal_id)


@shared_task(name="payouts.tasks.process_stripe_event")
def process_stripe_event(event_id: str) -> str:
    from .services.stripe_events import stripe_event_process

    return stripe_event_process(event_id=event_id)


@shared_task(name="payouts.tasks.sweep_payouts")
def sweep_payouts() -> int:
    from .services.sweeper import payouts_sweep

    return payouts_sweep()


@shared_task(name="payouts.tasks.refresh_account")
def refresh_account(agent_id: str) -> str | None:
    from marketplace.models import Agent

    from .services.accounts import account_refresh

    agent = Agent.objects.filter(pk=agent_id).first()
    account = account_refresh(agent=agent) if agent else None
    return account.transfers_status if account else None
