"""Agent access: tokens that expire and can be revoked, sessions, and failed-login lockouts.

A token (DRF's `Token`, sent as `Authorization: Token <key>`) dies after
AGENT_TOKEN_TTL_SECONDS, on logout, and with every other credential of the
agent on a password change, a suspension or a deactivation. Sockets opened with
a dead credential are closed by the web process holding them: this module sends
`credentials_revoked` after commit, and dispatch (which owns the sockets and
builds on this app) listens to it. Each web process also re-checks its sockets'
credentials now and then (`valid_credentials`), for expiry and in case a
revocation message was lost.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import timedelta
from importlib import import_module
from typing import Any

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, get_user_model
from django.db import transaction
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from drf_spectacular.authentication import SessionScheme
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.request import Request

from .models import Agent

# Sent after commit: `agent_id`, `credential` (a `credential_digest`, or None for every credential of
# the agent) and `reason` (logout, expired, password_changed, suspended, deactivated).
credentials_revoked = Signal()


# AuthenticationFailed (401 with WWW-Authenticate), with a code of their own in the error body.
# (Not core.errors.ApiError: DRF imports this module while core.errors is being imported.)
class TokenExpired(exceptions.AuthenticationFailed):
    own_code = True
    default_code = "token_expired"
    default_detail = "The token has expired: log in again."


class AccountSuspended(exceptions.AuthenticationFailed):
    own_code = True
    default_code = "account_suspended"
    default_detail = "This agent is suspended."


def credential_digest(secret: str) -> str:
    """What stands for a token or session key outside the database (channel-layer messages)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


def token_cutoff() -> Any:
    return timezone.now() - timedelta(seconds=settings.AGENT_TOKEN_TTL_SECONDS)


def is_suspended(user: Any) -> bool:
    return Agent.objects.filter(user_id=user.pk, approval=Agent.Approval.SUSPENDED).exists()


class ExpiringTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, refusing expired tokens and suspended agents."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        if not looks_like_token(key):
            raise exceptions.AuthenticationFailed("Invalid token.")
        user, token = super().authenticate_credentials(key)
        if token.created < token_cutoff():
            raise TokenExpired()
        if is_suspended(user):
            raise AccountSuspended()
        return user, token


class AgentSessionAuthentication(SessionAuthentication):
    """The web app's session, refused for a suspended agent."""

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        result = super().authenticate(request)
        if result is not None and is_suspended(result[0]):
            raise AccountSuspended()
        return result


class AgentSessionScheme(SessionScheme):  # type: ignore[no-untyped-call]
    """The OpenAPI schema describes the app's session as Django's session cookie."""

    target_class = "marketplace.access.AgentSessionAuthentication"


@transaction.atomic
def token_issue(*, user: Any) -> Token:
    """The user's token, or a new one when it has expired (one token per user, shared by its devices)."""
    Token.objects.filter(user=user, created__lt=token_cutoff()).delete()
    token, _ = Token.objects.get_or_create(user=user)
    return token


def _announce(agent_id: str | None, credential: str | None, reason: str) -> None:
    if agent_id is not None:
        transaction.on_commit(
            lambda: credentials_revoked.send(sender=Agent, agent_id=agent_id, credential=credential, reason=reason),
            robust=True,
        )


@transaction.atomic
def token_revoke(*, key: str, reason: str = "logout") -> None:
    """Logout with a token: that token dies, and so does every socket opened with it."""
    token = Token.objects.select_for_update().filter(key=key).first()
    if token is None:
        return
    token.delete()
    agent_id = Agent.objects.filter(user_id=token.user_id).values_list("pk", flat=True).first()
    _announce(agent_id, credential_digest(key), reason)


def session_revoke(*, user_id: Any, session_key: str | None, reason: str = "logout") -> None:
    """The web app logged out (its session is gone): close the sockets opened with that session."""
    if session_key:
        agent_id = Agent.objects.filter(user_id=user_id).values_list("pk", flat=True).first()
        _announce(agent_id, credential_digest(session_key), reason)


@transaction.atomic
def credentials_revoke_all(*, user_id: Any, reason: str) -> None:
    """Password change, suspension, deactivation: the token dies and every socket of the agent closes.

    The web app's sessions need nothing more: Django refuses a session whose password
    hash no longer matches, and suspended or inactive users are refused everywhere.
    """
    Token.objects.filter(user_id=user_id).delete()
    _announce(Agent.objects.filter(user_id=user_id).values_list("pk", flat=True).first(), None, reason)


# --- what a socket was opened with, and whether it still holds -----------------------


@dataclass(frozen=True)
class SocketCredential:
    """A socket's credential: a token key, or a session key with the password hash it was made under."""

    kind: str  # "token" or "session"
    secret: str
    user_id: Any
    session_hash: str = ""

    @property
    def digest(self) -> str:
        return credential_digest(self.secret)


def looks_like_token(key: str) -> bool:
    """A key DRF could have issued (40 hex digits); anything else (NUL, a megabyte) never reaches the database."""
    return re.fullmatch(r"[0-9a-fA-F]{40}", key) is not None


def user_for_token(key: str) -> Any | None:
    """The user of a live token (not expired, user active), else None. (The socket refuses a
    suspended agent itself, with its own close code.)"""
    if not looks_like_token(key):
        return None
    token = Token.objects.select_related("user").filter(key=key, created__gte=token_cutoff()).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


def valid_credentials(credentials: list[SocketCredential]) -> set[SocketCredential]:
    """Which of these still hold: a few queries for all the sockets of a process."""
    user_model = get_user_model()
    user_ids = {c.user_id for c in credentials}
    users = {
        u.pk: u
        for u in user_model.objects.filter(pk__in=user_ids, is_active=True).exclude(
            agent__approval=Agent.Approval.SUSPENDED
        )
    }
    token_keys = [c.secret for c in credentials if c.kind == "token"]
    live_tokens = set(
        Token.objects.filter(key__in=token_keys, created__gte=token_cutoff()).values_list("key", flat=True)
    )
    live_sessions = _live_sessions([c.secret for c in credentials if c.kind == "session"])
    valid = set()
    for credential in credentials:
        user = users.get(credential.user_id)
        if user is None:
            continue
        if credential.kind == "token" and credential.secret in live_tokens:
            valid.add(credential)
        elif (
            credential.kind == "session"
            and credential.secret in live_sessions
            and credential.session_hash == user.get_session_auth_hash()
        ):
            valid.add(credential)
    return valid


def _live_sessions(keys: list[str]) -> set[str]:
    if not keys:
        return set()
    if settings.SESSION_ENGINE == "django.contrib.sessions.backends.db":
        from django.contrib.sessions.models import Session

        return set(
            Session.objects.filter(session_key__in=keys, expire_date__gt=timezone.now()).values_list(
                "session_key", flat=True
            )
        )
    store = import_module(settings.SESSION_ENGINE).SessionStore
    return {key for key in keys if store().exists(key)}


def session_credential(session: Any, user: Any) -> SocketCredential | None:
    key = getattr(session, "session_key", None)
    if not key:
        return None
    return SocketCredential("session", key, user.pk, session.get(HASH_SESSION_KEY, ""))


# --- failed logins (django-axes) -------------------------------------------------------


class LoginAttemptsBackend(AxesStandaloneBackend):
    """django-axes' check before the password is tried, for logins that come with a request.

    Axes refuses to run without one; a login without a request (a script, the test
    client's `login`) comes from no address and is not counted, so it is not refused either.
    """

    def authenticate(
        self, request: Any, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any:
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)


def client_address(request: HttpRequest) -> str | None:
    """The address as the ASGI server set it; forwarded headers are not trusted here."""
    return request.META.get("REMOTE_ADDR")


def retry_after_seconds() -> int:
    return math.ceil(settings.AXES_COOLOFF_TIME.total_seconds())


def lockout_response(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """429 with Retry-After: the API's error shape on /api/, a readable page on the login pages."""
    wait = retry_after_seconds()
    detail = f"Too many failed logins for this username or address. Try again in {math.ceil(wait / 60)} min."
    response: HttpResponse
    if request.path.startswith("/api/"):
        response = JsonResponse(
            {"error": {"code": "too_many_attempts", "detail": detail, "retry_after_seconds": wait}}, status=429
        )
    else:
        response = render(request, "login_locked.html", {"detail": detail, "wait": wait}, status=429)
    response["Retry-After"] = str(wait)
    return response


# --- password changes and deactivations, by whatever path (admin, changepassword, create_agent) ---


def _watch_user_before_save(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    """Note whether this save changes the password or deactivates the user.

    A signal, because Django's own paths (the admin's password form and active box,
    `changepassword`) have no service of ours to call.
    """
    instance._access_change = None
    if instance.pk is None or (update_fields is not None and not {"password", "is_active"} & set(update_fields)):
        return
    before = sender.objects.filter(pk=instance.pk).values("password", "is_active").first()
    if before is None:
        return
    if before["is_active"] and not instance.is_active:
        instance._access_change = "deactivated"
    elif before["password"] != instance.password:
        instance._access_change = "password_changed"


def _revoke_after_user_save(sender: Any, instance: Any, **kwargs: Any) -> None:
    reason = getattr(instance, "_access_change", None)
    if reason:
        instance._access_change = None
        credentials_revoke_all(user_id=instance.pk, reason=reason)
