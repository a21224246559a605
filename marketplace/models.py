"""Agents, bot integrations, conversations, messages and the callbacks to bots.

States change only through marketplace.services (and dispatch.services); no
view or admin assigns a state field directly.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q


def validate_callback_url(value: str) -> None:
    """http(s) with a host that resolves, now, only to allowed addresses (see marketplace.callback_http).

    Single-label hosts (a Docker or Kubernetes service name) are fine when their
    network is in CALLBACK_ALLOWED_NETWORKS. Delivery checks again, every time.
    """
    from .callback_http import CallbackRefused, CallbackUnresolved, resolve

    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or any(c.isspace() for c in value):
        raise ValidationError("Enter an http:// or https:// URL with a host.", code="invalid")
    try:
        resolve(value, timeout=min(settings.CALLBACK_TIMEOUT_SECONDS, 10))
    except CallbackRefused as exc:
        reason = str(exc).removeprefix("refused: ")
        raise ValidationError(f"Not an allowed callback URL: {reason}.", code="forbidden_address") from None
    except CallbackUnresolved as exc:
        raise ValidationError(f"Not an allowed callback URL: {exc}.", code="unresolved") from None


def prefixed_id(prefix: str) -> str:
    """A stable string id: the kind of object, then 24 random hex digits (conv_..., ern_...)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def new_agent_id() -> str:
    return prefixed_id("agt")


def new_integration_id() -> str:
    return prefixed_id("bot")


def new_integration_secret() -> str:
    return "bsec_" + secrets.token_urlsafe(32)


def new_conversation_id() -> str:
    return prefixed_id("conv")


def new_message_id() -> str:
    return prefixed_id("msg")


def new_event_id() -> str:
    return prefixed_id("evt")


class Agent(models.Model):
    class Approval(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        SUSPENDED = "suspended"

    class Status(models.TextChoices):
        OFFLINE = "offline"
        ONLINE = "online"
        AWAY = "away"

    id = models.CharField(primary_key=True, max_length=32, default=new_agent_id, editable=False)
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent")
    display_name = models.CharField(max_length=80)
    languages = models.JSONField(default=list, help_text='ISO 639-1 codes, lowercase, e.g. ["en", "sv"]')
    skills = models.JSONField(default=list, help_text='Topics the agent handles, e.g. ["billing", "refunds"]')
    capacity = models.PositiveSmallIntegerField(default=1, help_text="Conversations at once")
    approval = models.CharField(max_length=16, choices=Approval.choices, default=Approval.PENDING)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OFFLINE)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    # Conversations assigned and not yet closed; kept with conditional updates so
    # that capacity holds under concurrency.
    active_count = models.PositiveSmallIntegerField(default=0)
    # Fairness: when the agent last had nothing to do.
    idle_since = models.DateTimeField(null=True, blank=True)
    # Set when the agent's last connection dropped; cleared on reconnect. After
    # PRESENCE_GRACE_SECONDS the agent is taken offline and its work re-queued.
    disconnected_at = models.DateTimeField(null=True, blank=True)
    # Quality and reliability figures (counters, updated with F() expressions).
    offers_received = models.PositiveIntegerField(default=0)
    offers_accepted = models.PositiveIntegerField(default=0)
    offers_declined = models.PositiveIntegerField(default=0)
    offers_missed = models.PositiveIntegerField(default=0)
    consecutive_misses = models.PositiveSmallIntegerField(default=0)
    resolved_count = models.PositiveIntegerField(default=0)
    unresolved_count = models.PositiveIntegerField(default=0)
    rating_count = models.PositiveIntegerField(default=0)
    rating_sum = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(capacity__gte=1) & Q(capacity__lte=20), name="agent_capacity_1_20"),
        ]
        indexes = [models.Index(fields=["status", "approval"])]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.id})"

    @property
    def average_rating(self) -> float | None:
        return round(self.rating_sum / self.rating_count, 2) if self.rating_count else None

    @property
    def acceptance_rate(self) -> float | None:
        return round(self.offers_accepted / self.offers_received, 3) if self.offers_received else None

    @property
    def resolution_rate(self) -> float | None:
        closed = self.resolved_count + self.unresolved_count
        return round(self.resolved_count / closed, 3) if closed else None


class BotIntegration(models.Model):
    id = models.CharField(primary_key=True, max_length=32, default=new_integration_id, editable=False)
    name = models.CharField(max_length=120)
    secret = models.CharField(max_length=80, default=new_integration_secret)
    # During a rotation the previous secret stays valid until it expires, both
    # for the bot's requests and (as a second v1 signature) for our callbacks.
    previous_secret = models.CharField(max_length=80, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    callback_url = models.CharField(max_length=500, validators=[validate_callback_url])
    active = models.BooleanField(default=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute; empty means the platform default."
    )
    rate_burst = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Requests at once above that rate; empty means the platform default (at most a minute's worth).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def valid_secrets(self) -> list[str]:
        from django.utils import timezone

        expires = self.previous_secret_expires_at
        if self.previous_secret and expires and expires > timezone.now():
            return [self.secret, self.previous_secret]
        return [self.secret]


class Conversation(models.Model):
    # The wait estimate last told to the bot through this instance (conversation_notify_queued), so that
    # the answer to the same request does not compute it a second time. Not a field: never stored.
    told_estimate: Any = None

    class Status(models.TextChoices):
        QUEUED = "queued"
        OFFERED = "offered"
        ASSIGNED = "assigned"
        RESOLVED = "resolved"
        CANCELLED = "cancelled"
        ABANDONED = "abandoned"

    class Priority(models.TextChoices):
        LOW = "low"
        NORMAL = "normal"
        HIGH = "high"
        URGENT = "urgent"

    class Outcome(models.TextChoices):
        RESOLVED = "resolved"
        UNRESOLVED = "unresolved"

    WAITING = (Status.QUEUED, Status.OFFERED)
    CLOSED = (Status.RESOLVED, Status.CANCELLED, Status.ABANDONED)

    id = models.CharField(primary_key=True, max_length=32, default=new_conversation_id, editable=False)
    integration = models.ForeignKey(BotIntegration, on_delete=models.PROTECT, related_name="conversations")
    external_id = models.CharField(max_length=200)
    language = models.CharField(max_length=16, blank=True)
    topic = models.CharField(max_length=64, blank=True)
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.NORMAL)
    reason = models.CharField(max_length=64, blank=True)
    customer = models.JSONField(default=dict, blank=True)
    summary = models.TextField(blank=True)
    transcript = models.JSONField(default=list, blank=True, encoder=DjangoJSONEncoder)
    # SHA-256 of the escalation request as created (services.escalation_fingerprint): the same external_id
    # with another body is refused, not answered with this conversation. Blank on rows made before it.
    request_hash = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # Dispatch order: arrival time minus the priority's head start (see settings).
    queue_key = models.DateTimeField(db_index=True)
    assigned_agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.PROTECT, related_name="conversations"
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices, blank=True)
    resolution_note = models.TextField(blank=True)
    rating_score = models.PositiveSmallIntegerField(null=True, blank=True)
    rating_comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    offered_at = models.DateTimeField(null=True, blank=True)
    assigned_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    abandoned_at = models.DateTimeField(null=True, blank=True)
    rated_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # What the bot was last told of its place in the queue (throttled pushes).
    notified_position = models.PositiveIntegerField(null=True, blank=True)
    notified_wait_seconds = models.PositiveIntegerField(null=True, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["integration", "external_id"], name="conversation_external_id_unique"),
            models.CheckConstraint(
                condition=Q(rating_score__isnull=True) | (Q(rating_score__gte=1) & Q(rating_score__lte=5)),
                name="conversation_rating_1_5",
            ),
            models.CheckConstraint(
                condition=~Q(status="assigned") | Q(assigned_agent__isnull=False),
                name="conversation_assigned_has_agent",
            ),
        ]
        indexes = [models.Index(fields=["status", "queue_key"]), models.Index(fields=["status", "resolved_at"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_waiting(self) -> bool:
        return self.status in self.WAITING

    @property
    def is_closed(self) -> bool:
        return self.status in self.CLOSED


class Message(models.Model):
    class Role(models.TextChoices):
        CUSTOMER = "customer"
        BOT = "bot"
        AGENT = "agent"
        SYSTEM = "system"
        # A supervisor who joined the chat from admin: the customer sees a second human.
        SUPERVISOR = "supervisor"

    id = models.CharField(primary_key=True, max_length=32, default=new_message_id, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    text = models.TextField()
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.PROTECT, related_name="messages")
    # The name shown for a supervisor's message (a staff user, who need not be an agent).
    author_name = models.CharField(max_length=150, blank=True, default="")
    # Dedupe keys: the bot's id for a customer message, the app's for an agent's.
    external_id = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - NULL: no key
    client_id = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - NULL: no key
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "external_id"],
                condition=Q(external_id__isnull=False),
                name="message_external_id_unique",
            ),
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=Q(client_id__isnull=False),
                name="message_client_id_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:40]}"


class ConversationEvent(models.Model):
    """Append-only log of what happened to a conversation. Never edited."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=40)
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16, blank=True)
    actor = models.CharField(max_length=80, help_text="bot:<id>, agent:<id>, admin:<username> or system")
    data = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.conversation_id} {self.kind}"


class CallbackEvent(models.Model):
    """An event for a bot's callback URL: a transactional outbox row.

    Written in the same transaction as the change it reports, delivered after
    commit in `seq` order per conversation, retried with backoff, and parked in
    DEAD after settings.CALLBACK_MAX_ATTEMPTS tries.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        DEAD = "dead"

    id = models.CharField(primary_key=True, max_length=32, default=new_event_id, editable=False)
    integration = models.ForeignKey(BotIntegration, on_delete=models.CASCADE, related_name="callback_events")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="callback_events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=40)
    payload = models.JSONField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(help_text="Dead-lettered after this many attempts")
    next_attempt_at = models.DateTimeField()
    # When a delivery job was last started for it: the sweeper leaves alone what is already on its way.
    kicked_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["conversation", "seq"], name="callback_event_seq_unique")]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"]),
            models.Index(fields=["conversation", "state", "seq"]),
            # the bulkhead counts an integration's deliveries in flight (leases) on every claim
            models.Index(
                fields=["integration", "lease_until"], condition=Q(state="pending"), name="callback_event_in_flight"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.type} ({self.state})"


class CallbackAttempt(models.Model):
    event = models.ForeignKey(CallbackEvent, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    ok = models.BooleanField()
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["event", "number"]

    def __str__(self) -> str:
        return f"{self.event_id} #{self.number} {'ok' if self.ok else 'failed'}"
