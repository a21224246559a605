"""The ledger: balanced journals posted once per business event, and account balances.

Ledger accounts (debits positive, credits negative; every journal sums to zero):
  platform:pay_expense      what agents' work costs the platform
  platform:stripe_balance   the platform's Stripe balance
  agent:<id>:payable        owed to the agent (a credit balance)
  agent:<id>:receivable     owed by the agent after a clawback that could not be reversed
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.db.models import Sum

from ..models import (
    Earning,
    Journal,
    LedgerLine,
    Transfer,
)

PAY_EXPENSE = "platform:pay_expense"
STRIPE_BALANCE = "platform:stripe_balance"


def payable_account(agent_id: str) -> str:
    return f"agent:{agent_id}:payable"


def receivable_account(agent_id: str) -> str:
    return f"agent:{agent_id}:receivable"


def ledger_post(
    *,
    key: str,
    kind: str,
    currency: str,
    lines: Iterable[tuple[str, int]],
    agent_id: str | None = None,
    earning: Earning | None = None,
    transfer: Transfer | None = None,
    memo: str = "",
) -> Journal:
    """Post one business event once: a second post with the same key returns the first."""
    lines = [(account, amount) for account, amount in lines if amount]
    if sum(amount for _, amount in lines) != 0:
        raise ValueError(f"journal {key} does not balance: {lines}")
    existing = Journal.objects.filter(key=key).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            journal = Journal.objects.create(
                key=key, kind=kind, agent_id=agent_id, earning=earning, transfer=transfer, memo=memo[:200]
            )
            LedgerLine.objects.bulk_create(
                LedgerLine(journal=journal, account=account, amount=amount, currency=currency)
                for account, amount in lines
            )
    except IntegrityError:
        return Journal.objects.get(key=key)
    return journal


def account_balance(account: str, currency: str | None = None) -> int:
    lines = LedgerLine.objects.filter(account=account)
    if currency:
        lines = lines.filter(currency=currency)
    return int(lines.aggregate(total=Sum("amount"))["total"] or 0)
