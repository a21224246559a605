"""Agent access over REST (docs/API.md, agents): tokens expire and are revoked, a suspended
agent keeps no access, failed logins are locked out per username and per address (429 with
Retry-After), and every password meets the validators."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from dispatch.services import presence
from marketplace.models import Agent

from ..processes import ROOT, service_env

pytestmark = pytest.mark.django_db

PASSWORD = "test-pass-123"  # make_agent's


def login(username: str, password: str = PASSWORD, *, address: str = "127.0.0.1") -> tuple[int, dict, dict]:
    response = Client(REMOTE_ADDR=address).post(
        "/api/v1/auth/token", {"username": username, "password": password}, content_type="application/json"
    )
    return response.status_code, response.json(), response.headers


def me(token: str) -> tuple[int, dict]:
    response = Client(HTTP_AUTHORIZATION=f"Token {token}").get("/api/v1/agent/me")
    return response.status_code, response.json()


# --- tokens ---------------------------------------------------------------------------------------


def test_a_token_dies_after_its_ttl_and_a_new_login_gets_a_new_one(make_agent, settings):
    settings.AGENT_TOKEN_TTL_SECONDS = 3600
    agent = make_agent(username="anna")
    status, body, _ = login("anna")
    assert status == 200
    token = body["token"]
    assert me(token)[0] == 200
    # when: the token is older than its TTL
    Token.objects.filter(key=token).update(created=timezone.now() - timedelta(seconds=3601))
    status, body = me(token)
    assert (status, body["error"]["code"]) == (401, "token_expired")
    # then: logging in again issues a new token, which works
    status, body, _ = login("anna")
    assert status == 200 and body["token"] != token
    assert me(body["token"])[0] == 200
    assert Token.objects.filter(user=agent.user).count() == 1


def test_logout_revokes_the_token(make_agent):
    make_agent(username="anna")
    token = login("anna")[1]["token"]
    response = Client(HTTP_AUTHORIZATION=f"Token {token}").post("/api/v1/auth/logout")
    assert response.status_code == 204
    assert me(token)[0] == 401
    again = Client(HTTP_AUTHORIZATION=f"Token {token}").post("/api/v1/auth/logout")
    assert (again.status_code, again.json()["error"]["code"]) == (401, "unauthorized")
    assert login("anna")[1]["token"] != token


def test_logout_without_a_token_is_a_clear_401(make_agent, client):
    agent = make_agent()
    client.force_login(agent.user)
    response = client.post("/api/v1/auth/logout")
    assert response.status_code in (401, 403)
    assert "error" in response.json()


def test_a_password_change_revokes_the_token(make_agent):
    agent = make_agent(username="anna")
    token = login("anna")[1]["token"]
    agent.user.set_password("another-pass-456")
    agent.user.save()
    assert me(token)[0] == 401
    assert login("anna", "another-pass-456")[0] == 200


def test_a_password_change_in_admin_revokes_the_token(make_agent):
    agent = make_agent(username="anna")
    token = login("anna")[1]["token"]
    admin = Client()
    admin.force_login(get_user_model().objects.create_superuser("boss", "boss@example.com", "boss-pass-123"))
    response = admin.post(
        f"/admin/auth/user/{agent.user_id}/password/",
        {"password1": "another-pass-456", "password2": "another-pass-456", "usable_password": "true"},
    )
    assert response.status_code == 302, response.content[:500]
    assert me(token)[0] == 401


def test_the_admin_refuses_a_weak_password(make_agent):
    agent = make_agent(username="anna")
    admin = Client()
    admin.force_login(get_user_model().objects.create_superuser("boss", "boss@example.com", "boss-pass-123"))
    response = admin.post(
        f"/admin/auth/user/{agent.user_id}/password/",
        {"password1": "password1", "password2": "password1", "usable_password": "true"},
    )
    assert response.status_code == 200  # the form again, with its errors
    assert b"too common" in response.content or b"too short" in response.content


def test_deactivating_the_user_revokes_the_token(make_agent):
    agent = make_agent(username="anna")
    token = login("anna")[1]["token"]
    agent.user.is_active = False
    agent.user.save()
    assert me(token)[0] == 401
    assert not Token.objects.filter(user=agent.user).exists()


def test_a_suspended_agent_keeps_no_rest_access(make_agent, client):
    agent = make_agent(username="anna")
    token = login("anna")[1]["token"]
    client.force_login(agent.user)
    assert client.get("/api/v1/agent/me").status_code == 200
    # when: an admin suspends the agent
    presence.agent_suspend(agent_id=agent.pk, actor="admin:test")
    # then: neither its token nor its session works, and it cannot get a new token
    assert me(token)[0] == 401
    response = client.get("/api/v1/agent/me")
    assert (response.status_code, response.json()["error"]["code"]) == (401, "account_suspended")
    status, body, _ = login("anna")
    assert (status, body["error"]["code"]) == (401, "account_suspended")


def test_a_token_of_a_suspended_agent_is_refused_even_if_it_survived(make_agent):
    agent = make_agent(username="anna")
    token = login("anna")[1]["token"]
    Agent.objects.filter(pk=agent.pk).update(approval=Agent.Approval.SUSPENDED)  # behind the services' back
    status, body = me(token)
    assert (status, body["error"]["code"]) == (401, "account_suspended")


# --- failed logins ---------------------------------------------------------------------------------


def test_failed_logins_for_one_username_are_answered_429_with_retry_after(make_agent, settings):
    settings.AXES_FAILURE_LIMIT = 5
    make_agent(username="anna")
    for i in range(4):
        status, body, _ = login("anna", "wrong-password", address=f"10.0.0.{i + 1}")
        assert status == 400, body
    # the fifth failure reaches the limit
    status, body, headers = login("anna", "wrong-password", address="10.0.0.9")
    assert status == 429
    assert body["error"]["code"] == "too_many_attempts"
    assert int(headers["Retry-After"]) == 300
    # then: even the right password, from any address, waits
    status, body, headers = login("anna", address="10.0.1.1")
    assert status == 429 and int(headers["Retry-After"]) > 0
    # and other usernames are not affected
    make_agent(username="bert")
    assert login("bert", address="10.0.1.1")[0] == 200


def test_failed_logins_from_one_address_are_answered_429(make_agent, settings):
    settings.AXES_FAILURE_LIMIT = 5
    make_agent(username="anna")
    for i in range(5):
        login(f"nobody{i}", "wrong-password", address="10.0.0.66")
    status, body, headers = login("anna", address="10.0.0.66")
    assert (status, body["error"]["code"]) == (429, "too_many_attempts")
    assert "Retry-After" in headers
    assert login("anna", address="10.0.0.67")[0] == 200


def test_the_lockout_ends_after_the_cool_off(make_agent, settings):
    settings.AXES_FAILURE_LIMIT = 3
    settings.AXES_COOLOFF_TIME = timedelta(seconds=60)
    make_agent(username="anna")
    for _ in range(3):
        login("anna", "wrong-password")
    assert login("anna")[0] == 429
    from axes.models import AccessAttempt

    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(seconds=61))
    assert login("anna")[0] == 200


def test_successful_logins_are_never_throttled(make_agent, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for i in range(20):
        make_agent(username=f"load{i}")
    # many load-test agents, one address, each logging in several times
    for _ in range(2):
        for i in range(20):
            assert login(f"load{i}")[0] == 200


def test_the_app_login_page_says_why_it_waits(make_agent, settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_agent(username="anna")
    client = Client(REMOTE_ADDR="10.0.0.5")
    for _ in range(2):
        assert client.post("/app/login", {"username": "anna", "password": "wrong-password"}).status_code == 200
    locked = client.post("/app/login", {"username": "anna", "password": "wrong-password"})
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 0
    assert b"Too many failed logins" in locked.content
    right = client.post("/app/login", {"username": "anna", "password": PASSWORD})
    assert right.status_code == 429


def test_the_lockout_page_has_nothing_inline_that_the_apps_csp_refuses(make_agent, settings):
    settings.AXES_FAILURE_LIMIT = 1
    make_agent(username="anna")
    locked = Client(REMOTE_ADDR="10.0.0.6").post("/app/login", {"username": "anna", "password": "wrong-password"})
    assert locked.status_code == 429
    policy = locked.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy
    assert b"<style" not in locked.content and b"<script" not in locked.content and b" style=" not in locked.content
    assert b"/static/app/locked.css" in locked.content


def test_the_admin_login_page_is_locked_out_too(settings):
    settings.AXES_FAILURE_LIMIT = 3
    get_user_model().objects.create_superuser("boss", "boss@example.com", "boss-pass-123")
    client = Client(REMOTE_ADDR="10.0.0.7")
    for _ in range(3):
        response = client.post("/admin/login/", {"username": "boss", "password": "wrong-password"})
    assert response.status_code == 429
    assert "Retry-After" in response.headers
    assert b"Too many failed logins" in response.content


# --- passwords ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "password", "says"),
    [
        ("anna", "short-pw", "too short"),
        ("anna", "password123", "too common"),
        ("annabelle-smith", "annabelle-smith1", "too similar"),
    ],
)
def test_create_agent_refuses_a_weak_password(username, password, says):
    with pytest.raises(CommandError, match=says):
        call_command("create_agent", username, "--password", password, stdout=io.StringIO())
    assert not Agent.objects.exists()


def test_create_agents_refuses_a_weak_password():
    with pytest.raises(CommandError, match="password"):
        call_command(
            "create_agents", "--prefix", "load", "--count", "3", "--password", "12345678", stdout=io.StringIO()
        )
    assert not Agent.objects.exists()


def command_env() -> dict[str, str]:
    """The test database, whichever it is (the command refuses before writing anything)."""
    db = settings.DATABASES["default"]
    if settings.IS_POSTGRES:
        return service_env(TASK_RUNNER="thread")
    return {"PATH": "/usr/bin:/bin", "DEBUG": "1", "DATABASE_URL": f"sqlite:///{db['NAME']}"}


@pytest.mark.django_db(transaction=True)  # no transaction of ours open: SQLite would keep the process waiting
def test_a_weak_password_makes_the_command_exit_non_zero():
    # A real process: what an operator's script sees.
    result = subprocess.run(  # noqa: S603 - our own interpreter and manage.py
        [sys.executable, "manage.py", "create_agent", "anna", "--password", "short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=command_env(),
    )
    assert result.returncode != 0
    assert "password" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "body",
    [
        {"username": "a\x00b", "password": "whatever-123"},  # form bodies carry NUL where JSON is refused
        {"username": "u" * 300, "password": "whatever-123"},  # longer than the lockout's column
    ],
)
def test_a_username_no_column_can_keep_is_a_400_naming_it_not_a_500(body):
    """The review after the merge: the lockout recorded the raw username first (DataError on PostgreSQL)."""
    response = Client(raise_request_exception=False).post("/api/v1/auth/token", body)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "username"


@pytest.mark.parametrize("key", ["\x00", "z" * 40, "a" * 100_000])
def test_a_token_no_key_can_be_is_refused_without_asking_the_database(key):
    from marketplace import access

    assert access.user_for_token(key) is None
    response = Client().get("/api/v1/agent/me", HTTP_AUTHORIZATION=f"Token {key[:1000]}")
    assert response.status_code == 401
