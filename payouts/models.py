"""Pay rules, earnings, transfers to connected accounts, and a double-entry ledger.

Money is integer minor units with a lowercase ISO currency. The ledger is
append-only (a database trigger refuses UPDATE and DELETE on PostgreSQL); every
business event posts one journal whose lines sum to zero, keyed so that it can
be posted only once. Balances are sums over lines, never a stored number.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from marketplace.models import prefixed_id
from marketplace.services import primary_language


def new_earning_id() -> str:
    return prefixed_id("ern")


def new_transfer_id() -> str:
    return prefixed_id("ptr")


def new_reversal_id() -> str:
    return prefixed_id("prv")


def _default_amount() -> int:
    return int(settings.DEFAULT_PAY_AMOUNT)


class PayRule(models.Model):
    """A base amount for conversations that match; the most specific active rule wins.

    Blank fields match anything. Specificity: topic, then priority, then language.
    """

    topic = models.CharField(max_length=64, blank=True, help_text="Blank: any topic")
    priority = models.CharField(
        max_length=8,
        blank=True,
        choices=[("low", "low"), ("normal", "normal"), ("high", "high"), ("urgent", "urgent")],
        help_text="Blank: any priority",
    )
    language = models.CharField(max_length=16, blank=True, help_text="Blank: any language")
    amount = models.PositiveIntegerField(help_text="Minor units of the platform currency")
    active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["topic", "priority", "language"], name="pay_rule_unique_match"),
        ]
        ordering = ["topic", "priority", "language"]

    def __str__(self) -> str:
        return f"{self.topic or '*'}/{self.priority or '*'}/{self.language or '*'}: {self.amount}"

    def clean(self) -> None:
        # Conversations carry lowercase topics and primary language codes ("sv-SE" -> "sv");
        # a rule written otherwise would silently never match.
        self.topic = self.topic.strip().lower()
        self.language = primary_language(self.language) if self.language else ""


class PayPolicy(models.Model):
    """Platform-wide pay settings (one row, edited in admin)."""

    default_amount = models.PositiveIntegerField(
        default=_default_amount, help_text="Base pay when no pay rule matches (minor units)"
    )
    surge_enabled = models.BooleanField(default=True)
    surge_threshold = models.FloatField(
        default=1.0, help_text="Queue pressure (waiting conversations per free slot) above which surge starts"
    )
    surge_per_unit = models.FloatField(default=0.25, help_text="Multiplier added per unit of pressure above it")
    surge_max = models.FloatField(default=2.0, help_text="Highest multiplier")
    quality_bonus_amount = models.PositiveIntegerField(default=100, help_text="Bonus for a rating of 4 or 5")
    quality_bonus_min_score = models.PositiveSmallIntegerField(default=4)
    floor_hourly_amount = models.PositiveIntegerField(
        default=1200, help_text="Earnings floor per engaged hour, per week (minor units; 0 turns it off)"
    )
    transfer_share_percent = models.PositiveSmallIntegerField(
        default=20,
        validators=[MaxValueValidator(100)],
        help_text=(
            "Handling share: what an agent who transfers a conversation earns, as a percentage of its own quote, "
            "once another agent accepts it, if it had written to the customer (0 turns it off). "
            "The agent who resolves it earns its full quote besides."
        ),
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "pay policy"

    def __str__(self) -> str:
        return f"default {self.default_amount}, surge up to x{self.surge_max}, floor {self.floor_hourly_amount}/h"

    @classmethod
    def current(cls) -> PayPolicy:
        return cls.objects.order_by("pk").first() or cls()


class ConnectedAccount(models.Model):
    """The agent's Stripe Connect (Express) account, as Stripe last told us."""

    agent = models.OneToOneField("marketplace.Agent", on_delete=models.PROTECT, related_name="payout_account")
    stripe_account_id = models.CharField(max_length=64, unique=True)
    transfers_status = models.CharField(
        max_length=16, default="inactive", help_text="Stripe's transfers capability: active, inactive or pending"
    )
    details_submitted = models.BooleanField(default=False)
    payouts_enabled = models.BooleanField(default=False)
    requirements_due = models.JSONField(default=list, blank=True)
    requirements_past_due = models.JSONField(default=list, blank=True)
    disabled_reason = models.CharField(max_length=100, blank=True)
    deauthorized_at = models.DateTimeField(null=True, blank=True)
    # The newest Stripe event applied (events may arrive in any order).
    state_as_of = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.stripe_account_id} ({self.agent_id})"

    @property
    def can_receive_transfers(self) -> bool:
        return self.transfers_status == "active" and self.deauthorized_at is None


class Earning(models.Model):
    """Money an agent has earned, one row per business event that earns it."""

    class Kind(models.TextChoices):
        RESOLUTION = "resolution"
        QUALITY_BONUS = "quality_bonus"
        FLOOR_TOPUP = "floor_topup"
        HANDLING_SHARE = "handling_share"  # a transferred conversation's first agent, for the work done

    class State(models.TextChoices):
        HELD = "held"  # inside the dispute window
        RELEASED = "released"  # payable: a transfer carries it (less any offset)
        DISPUTED = "disputed"  # not owed: voided, or clawed back after transfer

    id = models.CharField(primary_key=True, max_length=32, default=new_earning_id, editable=False)
    agent = models.ForeignKey("marketplace.Agent", on_delete=models.PROTECT, related_name="earnings")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    conversation = models.ForeignKey(
        "marketplace.Conversation", null=True, blank=True, on_delete=models.PROTECT, related_name="earnings"
    )
    # Dispatch's Assignment that earned it, as a plain id: payouts sits below dispatch (docs/ARCHITECTURE.md).
    assignment_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    week_start = models.DateField(null=True, blank=True, help_text="Floor top-ups: the Monday of the week")
    amount = models.PositiveIntegerField(help_text="Minor units")
    currency = models.CharField(max_length=3)
    state = models.CharField(max_length=16, choices=State.choices, default=State.HELD)
    payable_at = models.DateTimeField(help_text="End of the dispute window")
    offset_amount = models.PositiveIntegerField(default=0, help_text="Kept back against money the agent owes")
    released_at = models.DateTimeField(null=True, blank=True)
    disputed_at = models.DateTimeField(null=True, blank=True)
    dispute_reason = models.CharField(max_length=200, blank=True)
    detail = models.JSONField(default=dict, blank=True, help_text="How the amount was reached")
    # When a job for it was last started (or is due to start): the sweeper leaves alone what is on its way.
    kicked_at = models.DateTimeField(default=timezone.now, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["assignment_id", "kind"],
                condition=Q(assignment_id__isnull=False),
                name="earning_once_per_assignment",
            ),
            models.UniqueConstraint(
                fields=["agent", "week_start"], condition=Q(kind="floor_topup"), name="earning_floor_once_per_week"
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="earning_amount_positive"),
        ]
        indexes = [models.Index(fields=["state", "payable_at"]), models.Index(fields=["agent", "created_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.kind} {self.amount} {self.currency} ({self.state})"


class Transfer(models.Model):
    """One Stripe transfer to the agent's connected account, for one released earning."""

    class State(models.TextChoices):
        PENDING = "pending"  # not sent yet (or held: see hold_reason)
        SUBMITTED = "submitted"  # sent; the outcome may be unknown until it is looked up
        PAID = "paid"
        FAILED = "failed"  # Stripe refused it; an admin may retry

    class Hold(models.TextChoices):
        NONE = "", "—"
        STRIPE_NOT_CONFIGURED = "stripe_not_configured"
        NO_ACCOUNT = "no_account"
        ACCOUNT_NOT_READY = "account_not_ready"
        BALANCE_INSUFFICIENT = "balance_insufficient"
        RETRYING = "retrying"

    id = models.CharField(primary_key=True, max_length=32, default=new_transfer_id, editable=False)
    agent = models.ForeignKey("marketplace.Agent", on_delete=models.PROTECT, related_name="transfers")
    earning = models.OneToOneField(Earning, on_delete=models.PROTECT, related_name="transfer")
    amount = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    hold_reason = models.CharField(max_length=32, choices=Hold.choices, blank=True)
    destination = models.CharField(max_length=64, blank=True, help_text="The connected account it was sent to")
    stripe_transfer_id = models.CharField(max_length=64, null=True, blank=True, unique=True)  # noqa: DJ001
    amount_reversed = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Bumped only after Stripe refused a request outright (nothing was created), so
    # that the next try is not answered from Stripe's idempotency cache.
    key_generation = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # When a job for it was last started (or is due to start): the sweeper leaves alone what is on its way.
    kicked_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="transfer_amount_positive")]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.amount} {self.currency} -> {self.destination or self.agent_id} ({self.state})"

    @property
    def idempotency_key(self) -> str:
        return f"transfer-{self.id}" + (f"-{self.key_generation}" if self.key_generation else "")


class Reversal(models.Model):
    """Claw back a disputed earning's transfer (a Stripe transfer reversal)."""

    class State(models.TextChoices):
        PENDING = "pending"
        SUBMITTED = "submitted"
        SUCCEEDED = "succeeded"
        FAILED = "failed"  # could not be reversed: the debt is offset against later earnings

    id = models.CharField(primary_key=True, max_length=32, default=new_reversal_id, editable=False)
    transfer = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="reversals")
    earning = models.OneToOneField(Earning, on_delete=models.PROTECT, related_name="reversal")
    amount = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    stripe_reversal_id = models.CharField(max_length=64, null=True, blank=True, unique=True)  # noqa: DJ001
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # When a job for it was last started (or is due to start): the sweeper leaves alone what is on its way.
    kicked_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.id} {self.amount} of {self.transfer_id} ({self.state})"

    @property
    def idempotency_key(self) -> str:
        return f"reversal-{self.id}"


class Journal(models.Model):
    """One business event in the ledger; `key` makes posting it idempotent."""

    key = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=32)
    agent = models.ForeignKey("marketplace.Agent", null=True, blank=True, on_delete=models.PROTECT)
    earning = models.ForeignKey(Earning, null=True, blank=True, on_delete=models.PROTECT, related_name="journals")
    transfer = models.ForeignKey(Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="journals")
    memo = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.key


class LedgerLine(models.Model):
    """A debit (positive) or credit (negative) to one ledger account. Never edited."""

    journal = models.ForeignKey(Journal, on_delete=models.PROTECT, related_name="lines")
    account = models.CharField(max_length=80, db_index=True)
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.account} {self.amount:+d} {self.currency}"


class StripeEvent(models.Model):
    """A webhook event from Stripe, stored once by its id; processed by a job."""

    id = models.CharField(primary_key=True, max_length=64)
    type = models.CharField(max_length=64, db_index=True)
    account = models.CharField(max_length=64, blank=True)
    created = models.DateTimeField(help_text="When Stripe created it")
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=200, blank=True)
    deliveries = models.PositiveIntegerField(default=1, help_text="How many times Stripe sent it")
    # When a job for it was last started (or is due to start): the sweeper leaves alone what is on its way.
    kicked_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["processed_at", "received_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.type}"


class Payout(models.Model):
    """A payout from an agent's connected account to their bank, as Stripe reports it."""

    stripe_payout_id = models.CharField(max_length=64, unique=True)
    account = models.ForeignKey(ConnectedAccount, on_delete=models.PROTECT, related_name="payouts")
    amount = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16)
    arrival_date = models.DateTimeField(null=True, blank=True)
    state_as_of = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.stripe_payout_id} {self.amount} {self.currency} ({self.status})"
