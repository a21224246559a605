"""Offers: a conversation proposed to one agent, with a deadline and a pay quote."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


def new_offer_id() -> str:
    return f"ofr_{secrets.token_hex(12)}"


class Offer(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        ACCEPTED = "accepted"
        DECLINED = "declined"
        EXPIRED = "expired"
        REVOKED = "revoked"

    id = models.CharField(primary_key=True, max_length=32, default=new_offer_id, editable=False)
    conversation = models.ForeignKey("marketplace.Conversation", on_delete=models.CASCADE, related_name="offers")
    agent = models.ForeignKey("marketplace.Agent", on_delete=models.CASCADE, related_name="offers")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    responded_at = models.DateTimeField(null=True, blank=True)
    pay_amount = models.PositiveIntegerField(help_text="Minor units: what a resolution pays, surge included")
    pay_currency = models.CharField(max_length=3)
    pay_base = models.PositiveIntegerField(default=0, help_text="The pay rule's amount before surge")
    pay_surge = models.DecimalField(max_digits=4, decimal_places=2, default=1, help_text="Surge multiplier applied")
    pay_bonus = models.PositiveIntegerField(default=0, help_text="Quality bonus if the customer rates 4 or 5")
    reason = models.CharField(max_length=200, blank=True, help_text="Why it was declined or revoked")
    # A transfer's offer (to the named agent, or from the queue after a transfer): it carries the note
    # and whom the conversation comes from (ConversationTransfer).
    transfer = models.ForeignKey(
        "ConversationTransfer", null=True, blank=True, on_delete=models.SET_NULL, related_name="offers"
    )

    class Meta:
        constraints = [
            # The database itself guarantees one open offer per agent and per conversation.
            models.UniqueConstraint(fields=["agent"], condition=Q(state="pending"), name="offer_one_open_per_agent"),
            models.UniqueConstraint(
                fields=["conversation"], condition=Q(state="pending"), name="offer_one_open_per_conversation"
            ),
        ]
        indexes = [
            models.Index(fields=["state", "expires_at"]),
            # The answer time: the latest accepted offers (marketplace.selectors.answer_seconds).
            models.Index(fields=["state", "responded_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.conversation_id} -> {self.agent_id} ({self.state})"

    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()


class AgentConnection(models.Model):
    """One open WebSocket of an agent (a phone, a tab). Several may exist at once."""

    channel_name = models.CharField(primary_key=True, max_length=200)
    agent = models.ForeignKey("marketplace.Agent", on_delete=models.CASCADE, related_name="connections")
    server_id = models.CharField(max_length=100, db_index=True, help_text="The web process holding the socket")
    opened_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.agent_id} via {self.server_id}"


class ServerHeartbeat(models.Model):
    """Each web process says it is alive every few seconds.

    Connections of a process that stopped beating (killed, crashed) are dead,
    and the sweeper closes them as if the agents had disconnected.
    """

    server_id = models.CharField(primary_key=True, max_length=100)
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.server_id


class DispatchWeights(models.Model):
    """How the dispatcher ranks eligible agents (one row, edited in admin).

    score = fairness * idle + quality * quality_score + reliability * acceptance
            + skill_bonus (when the agent has the topic's skill)
    where each term is in [0, 1]; see docs/DISPATCH.md.
    """

    fairness = models.FloatField(default=0.4, help_text="Weight of idle time (longest idle first)")
    quality = models.FloatField(default=0.4, help_text="Weight of customer ratings and resolution rate")
    reliability = models.FloatField(default=0.2, help_text="Weight of the offer acceptance rate")
    skill_bonus = models.FloatField(default=1.0, help_text="Added when the agent has the topic's skill")
    idle_half_seconds = models.PositiveIntegerField(default=300, help_text="Idle time that scores 0.5")
    prior_weight = models.PositiveIntegerField(
        default=5, help_text="Pseudo-observations that pull a new agent's figures towards the platform's priors"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "dispatch weights"

    def __str__(self) -> str:
        return f"fairness {self.fairness}, quality {self.quality}, reliability {self.reliability}"

    @classmethod
    def current(cls) -> DispatchWeights:
        return cls.objects.order_by("pk").first() or cls()


class Assignment(models.Model):
    """One spell of a conversation with one agent, from assignment to its end.

    It holds the pay quote locked when the agent accepted (what a resolution in
    this spell pays), and its times count as engaged time for the earnings floor.
    A conversation re-queued or reopened gets a new assignment later.
    """

    class End(models.TextChoices):
        RESOLVED = "resolved"
        UNRESOLVED = "unresolved"
        REQUEUED = "requeued"
        REASSIGNED = "reassigned"
        CANCELLED = "cancelled"
        TRANSFERRED = "transferred"

    conversation = models.ForeignKey("marketplace.Conversation", on_delete=models.CASCADE, related_name="assignments")
    agent = models.ForeignKey("marketplace.Agent", on_delete=models.PROTECT, related_name="assignments")
    offer = models.OneToOneField(Offer, null=True, blank=True, on_delete=models.SET_NULL, related_name="assignment")
    pay_amount = models.PositiveIntegerField(help_text="Minor units, locked at acceptance")
    pay_currency = models.CharField(max_length=3)
    quality_bonus = models.PositiveIntegerField(default=0, help_text="Paid on top when the customer rates 4 or 5")
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=16, choices=End.choices, blank=True)

    class Meta:
        constraints = [
            # A conversation is with one agent at a time.
            models.UniqueConstraint(
                fields=["conversation"], condition=Q(ended_at__isnull=True), name="assignment_one_open_per_conversation"
            ),
        ]
        indexes = [
            models.Index(fields=["agent", "started_at"]),
            # The handle time: the latest resolutions (marketplace.selectors.handle_seconds).
            models.Index(fields=["end_reason", "ended_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.conversation_id} with {self.agent_id} from {self.started_at:%Y-%m-%d %H:%M}"


def new_note_id() -> str:
    return f"note_{secrets.token_hex(12)}"


class ConversationNote(models.Model):
    """Internal text on a conversation, for the people working it: never sent to the bot or the customer.

    A table of its own, not a kind of Message: everything that reaches the bot (callbacks, the
    escalation's answer, messages) reads Message, so a note cannot leak through any of them.
    Seen by the assigned agent live (`note`), by every later assignee (`conversation.assigned`
    `notes`) and by supervisors in admin.
    """

    class Kind(models.TextChoices):
        NOTE = "note", "note"  # an agent's note
        HELP = "help", "help request"  # an agent asked a supervisor for help (see HelpRequest)
        WHISPER = "whisper", "whisper"  # a supervisor's note to the agent
        TRANSFER = "transfer", "transfer note"  # the note a transfer carries

    id = models.CharField(primary_key=True, max_length=32, default=new_note_id, editable=False)
    conversation = models.ForeignKey("marketplace.Conversation", on_delete=models.CASCADE, related_name="notes")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.NOTE)
    text = models.TextField()
    # The author: an agent, or a supervisor (a staff user, who need not be an agent).
    agent = models.ForeignKey(
        "marketplace.Agent", null=True, blank=True, on_delete=models.PROTECT, related_name="notes"
    )
    supervisor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    author_name = models.CharField(max_length=150, help_text="The author's name as shown, kept as it was")
    # The app's dedupe key, as for message.send.
    client_id = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - NULL: no key
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=Q(client_id__isnull=False),
                name="note_client_id_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} by {self.author_name}: {self.text[:40]}"

    @property
    def author_role(self) -> str:
        return "agent" if self.agent_id else "supervisor"


class HelpRequest(models.Model):
    """An agent's call for a supervisor: a flag on the admin live page until a supervisor acts.

    Its text is the conversation's `help` note (agents see it among the notes); the flag is
    lowered by a whisper, a join or a take-over (`answer`), or when the conversation closes.
    """

    class Answer(models.TextChoices):
        WHISPER = "whisper"
        JOIN = "join"
        TAKE_OVER = "take_over"

    conversation = models.ForeignKey("marketplace.Conversation", on_delete=models.CASCADE, related_name="help_requests")
    agent = models.ForeignKey("marketplace.Agent", on_delete=models.PROTECT, related_name="help_requests")
    note = models.OneToOneField(ConversationNote, on_delete=models.CASCADE, related_name="help_request")
    created_at = models.DateTimeField(default=timezone.now)
    answered_at = models.DateTimeField(null=True, blank=True)
    answered_by = models.CharField(max_length=80, blank=True, help_text="admin:<username>")
    answer = models.CharField(max_length=16, choices=Answer.choices, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["created_at"], condition=Q(answered_at__isnull=True), name="help_request_open"),
        ]

    def __str__(self) -> str:
        return f"help on {self.conversation_id} from {self.agent_id}"


def new_transfer_id() -> str:
    return f"xfr_{secrets.token_hex(12)}"


class ConversationTransfer(models.Model):
    """An agent hands its conversation on: to a named agent or to a queue (a language, skills), with a note.

    To a named agent: that agent alone is offered it, and the first agent keeps the conversation
    (and its slot) until the offer is accepted; a decline, a miss or the agent leaving falls back to
    the queue. To a queue: the first agent is released at once. Either way the conversation keeps
    its queue_key (its age). The first agent earns the handling share quoted here once another agent
    accepts, if it had written to the customer (docs/PAYOUTS.md).
    """

    class State(models.TextChoices):
        OFFERED = "offered"  # offered to the named agent; the first agent still holds the conversation
        QUEUED = "queued"  # in line for the queue it was sent to (or the normal queue after a fallback)
        COMPLETED = "completed"  # another agent accepted
        CANCELLED = "cancelled"  # overtaken: resolved, cancelled, re-queued or reassigned before anyone took it

    OPEN = (State.OFFERED, State.QUEUED)

    id = models.CharField(primary_key=True, max_length=32, default=new_transfer_id, editable=False)
    conversation = models.ForeignKey("marketplace.Conversation", on_delete=models.CASCADE, related_name="transfers")
    from_agent = models.ForeignKey("marketplace.Agent", on_delete=models.PROTECT, related_name="transfers_out")
    # The spell it ends: at most one transfer per assignment, so its handling share is earned at most once.
    from_assignment = models.OneToOneField(Assignment, on_delete=models.PROTECT, related_name="transfer")
    to_agent = models.ForeignKey(
        "marketplace.Agent", null=True, blank=True, on_delete=models.PROTECT, related_name="transfers_in"
    )
    language = models.CharField(max_length=16, blank=True, help_text="The queue's language")
    skills = models.JSONField(default=list, blank=True, help_text="Skills the next agent needs (all of them)")
    note = models.TextField(blank=True, help_text="For the next agent: shown on the offer and in the conversation")
    state = models.CharField(max_length=16, choices=State.choices)
    fallback_reason = models.CharField(
        max_length=32, blank=True, help_text="Why a transfer to a named agent went to the queue instead"
    )
    accepted_by = models.ForeignKey(
        "marketplace.Agent", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    handling_amount = models.PositiveIntegerField(default=0, help_text="The first agent's handling share, quoted")
    handling_currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(default=timezone.now)
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When it joined the queue (skills widen from)")
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(state__in=["offered", "queued"]),
                name="transfer_one_open_per_conversation",
            ),
        ]
        indexes = [models.Index(fields=["state", "conversation"])]

    def __str__(self) -> str:
        return f"{self.id} {self.conversation_id} from {self.from_agent_id} ({self.state})"

    def to_payload(self, username: str | None = None) -> dict[str, object]:
        """`to` as the agents' socket says it: {"agent": USERNAME} or {"queue": {"language", "skills"}}."""
        if self.to_agent is not None and not self.fallback_reason:
            return {"agent": username if username is not None else self.to_agent.user.username}
        return {"queue": {"language": self.language, "skills": list(self.skills)}}
