"""The base app's writes, one function per verb: agents, bot integrations, and the parts of a
conversation's life that need nothing above this app (its event log, status transitions, what the
bot is told about the queue).

This app imports neither payouts nor dispatch. The verbs that drive a conversation (escalate,
customer messages, cancel, rate, offers...) live in dispatch, which orchestrates this app and
payouts; the lock order they follow is stated once, in core.locks. Side effects (callbacks to the
bot) are sent only after the transaction commits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from core.errors import Conflict

from . import access, callbacks, selectors
from .models import Agent, BotIntegration, Conversation, ConversationEvent, new_integration_secret


class ConversationClosed(Conflict):
    default_code = "conversation_closed"
    default_detail = "The conversation is closed."


class NotResolved(Conflict):
    default_code = "not_resolved"
    default_detail = "The conversation has not been resolved yet."


class IdempotencyMismatch(Conflict):
    default_code = "idempotency_mismatch"
    default_detail = (
        "This external_id was already used with another body; send the same body to get the conversation, "
        "or a new external_id for a new one."
    )


class AlreadyRated(Conflict):
    default_code = "already_rated"
    default_detail = "The conversation has already been rated."


_TIMESTAMP_FIELD = {
    Conversation.Status.QUEUED: "queued_at",
    Conversation.Status.OFFERED: "offered_at",
    Conversation.Status.ASSIGNED: "assigned_at",
    Conversation.Status.RESOLVED: "resolved_at",
    Conversation.Status.CANCELLED: "cancelled_at",
    Conversation.Status.ABANDONED: "abandoned_at",
}


def queue_key_for(priority: str, entered_at: Any) -> Any:
    return entered_at - timedelta(seconds=settings.QUEUE_PRIORITY_HEAD_START_SECONDS[priority])


def conversation_log(
    *, conversation: Conversation, kind: str, actor: str, data: dict[str, Any] | None = None, from_status: str = ""
) -> ConversationEvent:
    """Append to the conversation's event log (never edited afterwards)."""
    return ConversationEvent.objects.create(
        conversation=conversation,
        kind=kind,
        from_status=from_status,
        to_status=conversation.status if from_status else "",
        actor=actor,
        data=data or {},
    )


def conversation_transition(
    *,
    conversation: Conversation,
    to: str,
    actor: str,
    data: dict[str, Any] | None = None,
    extra_fields: tuple[str, ...] = (),
) -> None:
    """Set a new status on a row the caller has locked, stamp it and log it."""
    previous = conversation.status
    now = timezone.now()
    conversation.status = to
    setattr(conversation, _TIMESTAMP_FIELD[Conversation.Status(to)], now)
    conversation.save(update_fields=["status", _TIMESTAMP_FIELD[Conversation.Status(to)], "updated_at", *extra_fields])
    conversation_log(conversation=conversation, kind=f"status.{to}", actor=actor, data=data, from_status=previous)


def conversation_notify_queued(
    conversation: Conversation, *, reason: str | None = None, estimate: selectors.WaitEstimate | None = None
) -> None:
    """Tell the bot where the (locked) conversation stands in the queue, and remember what was said."""
    estimate = estimate or selectors.wait_estimate(conversation)
    data: dict[str, Any] = {
        "status": conversation.status,
        "queue_position": estimate.queue_position,
        "estimated_wait_seconds": estimate.seconds,
        "wait_estimate_basis": estimate.basis,
    }
    if reason:
        data["reason"] = reason
    callbacks.callback_enqueue(conversation=conversation, type="conversation.queued", data=data)
    conversation.told_estimate = estimate
    conversation.notified_position = estimate.queue_position
    conversation.notified_wait_seconds = estimate.seconds
    conversation.notified_at = timezone.now()
    conversation.save(update_fields=["notified_position", "notified_wait_seconds", "notified_at"])


@dataclass(frozen=True)
class EscalationInput:
    external_id: str
    language: str = ""
    topic: str = ""
    priority: str = Conversation.Priority.NORMAL
    reason: str = ""
    customer: dict[str, Any] | None = None
    summary: str = ""
    transcript: list[dict[str, Any]] | None = None


def escalation_fingerprint(source: Conversation | EscalationInput) -> str:
    """SHA-256 of an escalation's fields as stored (language's primary subtag, topic in lower case, the
    transcript's times in UTC): the same request written differently (key order, "Z" or "+00:00",
    a default spelt out) has the same fingerprint, and a stored row gives back its request's."""
    canonical = {
        "language": primary_language(source.language),
        "topic": source.topic.lower(),
        "priority": source.priority,
        "reason": source.reason,
        "customer": source.customer or {},
        "summary": source.summary,
        "transcript": source.transcript or [],
    }
    text = json.dumps(canonical, cls=DjangoJSONEncoder, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def same_request(conversation: Conversation, fingerprint: str) -> Conversation:
    """The existing conversation when it was made by this same request; else IdempotencyMismatch (409)."""
    stored = conversation.request_hash or escalation_fingerprint(conversation)  # a row from before the hash
    if not hmac.compare_digest(stored, fingerprint):
        raise IdempotencyMismatch()
    return conversation


def agent_release_slot(agent_id: str) -> None:
    """Free one slot of the agent's capacity (the caller holds the conversation lock)."""
    now = timezone.now()
    Agent.objects.filter(pk=agent_id, active_count__gt=0).update(active_count=F("active_count") - 1)
    Agent.objects.filter(pk=agent_id, active_count=0).update(idle_since=now)


@transaction.atomic
def agent_update_profile(*, agent_id: str, languages: list[str], skills: list[str]) -> Agent:
    """The agent edits what it speaks and handles (it matters from the next offer on)."""
    agent = Agent.objects.select_for_update().get(pk=agent_id)
    check_agent_input(AgentInput(agent.user.username, "", languages, skills, agent.capacity, agent.display_name))
    if not [v for v in languages if v.strip()]:
        raise ValidationError({"languages": ["At least one language."]})
    agent.languages = _languages(languages)
    agent.skills = _codes(skills)
    agent.save(update_fields=["languages", "skills"])
    return agent


@transaction.atomic
def agent_set_approval(*, agent_id: str, approval: str, actor: str) -> Agent:
    """Approve or suspend an agent. A suspended agent is taken offline (dispatch's agent_suspend tells its
    sockets and passes its work on)."""
    agent = Agent.objects.select_for_update().get(pk=agent_id)
    agent.approval = approval
    fields = ["approval"]
    if approval != Agent.Approval.APPROVED and agent.status != Agent.Status.OFFLINE:
        agent.status = Agent.Status.OFFLINE
        agent.status_changed_at = timezone.now()
        fields += ["status", "status_changed_at"]
    agent.save(update_fields=fields)
    if approval == Agent.Approval.SUSPENDED:
        # No REST access and no socket left: its token dies and every socket closes (within seconds).
        access.credentials_revoke_all(user_id=agent.user_id, reason="suspended")
    return agent


@transaction.atomic
def integration_rotate_secret(*, integration_id: str) -> BotIntegration:
    """A new secret; the old one keeps working for SECRET_ROTATION_OVERLAP_SECONDS."""
    integration = BotIntegration.objects.select_for_update().get(pk=integration_id)
    integration.previous_secret = integration.secret
    integration.previous_secret_expires_at = timezone.now() + timedelta(
        seconds=settings.SECRET_ROTATION_OVERLAP_SECONDS
    )
    integration.secret = new_integration_secret()
    integration.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
    return integration


@dataclass(frozen=True)
class IntegrationInput:
    name: str
    callback_url: str
    rate_limit_per_minute: int | None = None
    rate_burst: int | None = None


@transaction.atomic
def integration_set_callback_url(*, integration_id: str, url: str) -> BotIntegration:
    integration = BotIntegration.objects.select_for_update().get(pk=integration_id)
    integration.callback_url = url
    integration.full_clean()
    integration.save(update_fields=["callback_url"])
    return integration


def integration_create(*, data: IntegrationInput) -> BotIntegration:
    integration = BotIntegration(
        name=data.name,
        callback_url=data.callback_url,
        rate_limit_per_minute=data.rate_limit_per_minute,
        rate_burst=data.rate_burst,
    )
    integration.full_clean()
    integration.save(force_insert=True)
    return integration


def primary_language(tag: str) -> str:
    """ "sv-SE" -> "sv": agents speak languages, and the region does not decide who can help."""
    return tag.strip().replace("_", "-").split("-")[0].lower()


def _codes(values: list[str]) -> list[str]:
    return sorted({v.strip().lower() for v in values if v.strip()})


def _languages(values: list[str]) -> list[str]:
    return _codes([primary_language(v) for v in values])


@dataclass(frozen=True)
class AgentInput:
    username: str
    password: str
    languages: list[str]
    skills: list[str]
    capacity: int = 1
    display_name: str = ""


def check_agent_input(data: AgentInput) -> None:
    """Raise ValidationError naming what is wrong (username, display name, capacity, languages)."""
    from django.contrib.auth import get_user_model

    errors: dict[str, list[str]] = {}
    username_field = get_user_model()._meta.get_field("username")
    try:
        username_field.clean(data.username, None)
    except ValidationError as exc:
        errors["username"] = exc.messages
    if len(data.display_name) > 80:
        errors["display_name"] = ["At most 80 characters."]
    if not 1 <= data.capacity <= 20:
        errors["capacity"] = ["Between 1 and 20."]
    if any(not re.fullmatch(r"[a-z]{2,3}", primary_language(v)) for v in data.languages if v.strip()):
        errors["languages"] = ["ISO 639 codes such as en, sv, pt-BR."]
    if any(len(v) > 64 for v in data.skills):
        errors["skills"] = ["At most 64 characters each."]
    if errors:
        raise ValidationError(errors)


def check_agent_password(password: str, user: Any) -> None:
    """AUTH_PASSWORD_VALIDATORS (length, common passwords, likeness to the username), as a field error."""
    from django.contrib.auth.password_validation import validate_password

    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from exc


@transaction.atomic
def agent_upsert(*, data: AgentInput) -> Agent:
    """Create an approved agent able to log in, or update the one with this username.

    Updating leaves its approval alone: resetting a suspended agent's password
    does not re-approve it.
    """
    from django.contrib.auth import get_user_model

    check_agent_input(data)
    user_model = get_user_model()
    user = user_model.objects.filter(username=data.username).first()
    check_agent_password(data.password, user or user_model(username=data.username))
    if user is None:
        user = user_model.objects.create(username=data.username)
    user.set_password(data.password)
    user.save()
    profile = {
        "display_name": data.display_name or data.username,
        "languages": _languages(data.languages),
        "skills": _codes(data.skills),
        "capacity": data.capacity,
    }
    agent, _ = Agent.objects.update_or_create(
        user=user, defaults=profile, create_defaults={**profile, "approval": Agent.Approval.APPROVED}
    )
    return agent


@transaction.atomic
def agents_create_bulk(*, prefix: str, count: int, template: AgentInput) -> list[tuple[Agent, str]]:
    """Create prefix1..prefixN (approved) with API tokens, for demos and load tests.

    The password is hashed once and the hash shared: hashing it N times would
    take minutes, and these accounts exist to be driven by scripts.
    """
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from rest_framework.authtoken.models import Token

    user_model = get_user_model()
    usernames = [f"{prefix}{n}" for n in range(1, count + 1)]
    check_agent_input(replace(template, username=usernames[-1]))
    for username in (usernames[0], usernames[-1]):  # the similarity check looks at the username
        check_agent_password(template.password, user_model(username=username))
    taken = set(user_model.objects.filter(username__in=usernames).values_list("username", flat=True))
    if taken:
        raise ValueError(f"usernames exist already: {', '.join(sorted(taken)[:5])}")
    password_hash = make_password(template.password)
    user_model.objects.bulk_create([user_model(username=u, password=password_hash) for u in usernames])
    users = list(user_model.objects.filter(username__in=usernames).order_by("id"))
    agents = Agent.objects.bulk_create(
        [
            Agent(
                user=user,
                display_name=user.username,
                languages=_languages(template.languages),
                skills=_codes(template.skills),
                capacity=template.capacity,
                approval=Agent.Approval.APPROVED,
            )
            for user in users
        ]
    )
    tokens = Token.objects.bulk_create([Token(user=user, key=Token.generate_key()) for user in users])
    return [(agent, token.key) for agent, token in zip(agents, tokens, strict=True)]
