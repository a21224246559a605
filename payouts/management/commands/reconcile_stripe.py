"""Compare the ledger and our transfers with Stripe's transfers, and report every difference.

Exit status 0 when everything matches, 1 when a difference was found (so that a
cron job or CI can alert on it). Prints one JSON object on stdout; the progress
bar goes to stderr.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q
from django.utils import timezone
from tqdm import tqdm

from marketplace.management.commands._output import print_json
from payouts import selectors, stripe_api
from payouts.models import Transfer
from payouts.stripe_api import as_dict


class Command(BaseCommand):
    help = "Compare the payouts ledger and transfers with Stripe's transfers; report differences (exit 1 if any)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=90, help="Look at transfers created in the last N days")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        if not stripe_api.configured():
            raise CommandError("STRIPE_SECRET_KEY is not set: there is no Stripe account to reconcile with.")
        since = timezone.now() - timedelta(days=options["days"])
        progress = not options["no_progress"]
        differences: list[dict[str, Any]] = []

        # Stripe's side: every transfer since then, grouped by the transfer id we put in its metadata.
        at_stripe: dict[str, list[Any]] = defaultdict(list)
        foreign = listed = 0
        client = stripe_api.client()
        listing = client.v1.transfers.list(params={"limit": 100, "created": {"gte": int(since.timestamp())}})
        for item in tqdm(listing.auto_paging_iter(), desc="Stripe transfers", unit="tr", disable=not progress):
            listed += 1
            ours = (as_dict(item).get("metadata") or {}).get("transfer_id")
            if ours:
                at_stripe[ours].append(item)
            else:
                foreign += 1

        # Our side.
        # Ours: made, sent or paid in the window (a transfer held for months is sent late).
        window = Q(created_at__gte=since) | Q(submitted_at__gte=since) | Q(paid_at__gte=since)
        ours_qs = Transfer.objects.filter(window).order_by("created_at")
        checked = 0
        for transfer in tqdm(
            ours_qs.iterator(), total=ours_qs.count(), desc="Our transfers", unit="tr", disable=not progress
        ):
            checked += 1
            found = at_stripe.pop(transfer.id, [])
            if len(found) > 1:
                differences.append(_diff("duplicate_at_stripe", transfer, stripe_ids=[t.id for t in found]))
            stripe_transfer = found[0] if found else None
            if transfer.state == Transfer.State.PAID:
                if stripe_transfer is None:
                    differences.append(_diff("missing_at_stripe", transfer))
                    continue
                for field, ours, theirs in (
                    ("amount", transfer.amount, stripe_transfer.amount),
                    ("currency", transfer.currency, stripe_transfer.currency),
                    ("destination", transfer.destination, stripe_transfer.destination),
                    ("id", transfer.stripe_transfer_id, stripe_transfer.id),
                    ("amount_reversed", transfer.amount_reversed, stripe_transfer.amount_reversed),
                ):
                    if ours != theirs:
                        differences.append(_diff(f"{field}_differs", transfer, ours=ours, stripe=theirs))
            elif stripe_transfer is not None:
                differences.append(
                    _diff("not_recorded_as_paid", transfer, state=transfer.state, stripe_id=stripe_transfer.id)
                )
        # Stripe's transfers naming one of ours outside the window: compare them too.
        for transfer in Transfer.objects.filter(pk__in=list(at_stripe)):
            found = at_stripe.pop(transfer.pk)
            checked += 1
            if len(found) > 1:
                differences.append(_diff("duplicate_at_stripe", transfer, stripe_ids=[t.id for t in found]))
            if transfer.state != Transfer.State.PAID or transfer.stripe_transfer_id != found[0].id:
                differences.append(_diff("not_recorded_as_paid", transfer, state=transfer.state, stripe_id=found[0].id))
        for transfer_id, items in at_stripe.items():
            differences.append(
                {"kind": "unknown_to_us", "transfer_id": transfer_id, "stripe_ids": [t.id for t in items]}
            )

        # The ledger: every journal sums to zero, and so does everything.
        for row in selectors.ledger_imbalances():
            differences.append({"kind": "journal_unbalanced", **row})
        for currency, total in selectors.ledger_totals().items():
            if total:
                differences.append({"kind": "ledger_unbalanced", "currency": currency, "total": total})

        report = {
            "ok": not differences,
            "since": since.astimezone(UTC).isoformat(),
            "checked": {"ours": checked, "stripe": listed},
            "stripe_transfers_not_from_us": foreign,
            "transfers_by_state": selectors.transfers_by_state(),
            "held": selectors.held_transfers().count(),
            "differences": differences,
            "at": datetime.now(UTC).isoformat(),
        }
        print_json(self, report)
        if differences:
            sys.exit(1)


def _diff(kind: str, transfer: Transfer, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "transfer_id": transfer.id, "agent_id": transfer.agent_id, **extra}
