"""Revoked access closes an agent's sockets on every web process: two real Daphne processes on
one Redis, sockets of one agent open on both, then a suspension (the admin's service), a
password change, a logout with the token. Every socket must be closed (4401, after an `error`
with code `token_revoked`) within 5 s."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from websockets.exceptions import ConnectionClosed, InvalidStatus

from dispatch.services import presence
from marketplace.models import Agent

from ..processes import AgentClient, daphne, service_env

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

CLOSE_WITHIN = 5.0


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[list[str]]:
    env = service_env(SERVER_HEARTBEAT_SECONDS="1", RUN_PERIODIC_IN_PROCESS="0")
    with ExitStack() as stack:
        yield [stack.enter_context(daphne(env, tmp_path / f"daphne-{n}.log")) for n in (1, 2)]


def wait_closed(
    clients: list[AgentClient], since: float, within: float = 15
) -> list[tuple[int | None, list[dict[str, Any]], float]]:
    """For each client: the close code, what the server said before, and seconds from `since` until it closed."""
    start = since
    results = []
    for client in clients:
        said: list[dict[str, Any]] = []
        try:
            while True:
                remaining = start + within - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"still open after {within}s; said {[m.get('type') for m in said]}")
                try:
                    said.append(json.loads(client.ws.recv(timeout=remaining)))
                except TimeoutError:
                    continue
        except ConnectionClosed:
            results.append((client.ws.close_code, said, time.monotonic() - start))
    return results


def assert_all_revoked(results: list[tuple[int | None, list[dict[str, Any]], float]]) -> None:
    print("closed after", ", ".join(f"{seconds:.3f}s" for _, _, seconds in results))  # shown with -s
    for code, said, seconds in results:
        assert code == 4401, (code, said)
        assert any(m.get("type") == "error" and m.get("code") == "token_revoked" for m in said), said
        assert seconds < CLOSE_WITHIN, f"closed after {seconds:.2f}s"


def sockets_on_both(bases: list[str], token: str, per_process: int = 2) -> list[AgentClient]:
    return [AgentClient(base, token) for base in bases for _ in range(per_process)]


def refused(base: str, token: str) -> int | None:
    from websockets.sync.client import connect

    url = base.replace("http", "ws", 1) + f"/ws/agent/?token={token}"
    try:
        with connect(url, open_timeout=10) as ws:
            ws.recv(timeout=10)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    except InvalidStatus as exc:  # refused at the handshake
        return exc.response.status_code
    return None


def test_a_suspension_closes_the_agents_sockets_on_every_process(two_processes, make_agent):
    agent = make_agent(username="anna", online=False)
    token = Token.objects.create(user=agent.user).key
    clients = sockets_on_both(two_processes, token)
    # when: an admin suspends the agent (the admin action's service)
    since = time.monotonic()
    presence.agent_suspend(agent_id=agent.pk, actor="admin:test")
    # then: every socket, on both processes, closes within 5 s
    assert_all_revoked(wait_closed(clients, since))
    assert Agent.objects.get(pk=agent.pk).approval == Agent.Approval.SUSPENDED
    for base in two_processes:
        response = requests.get(f"{base}/api/v1/agent/me", headers={"Authorization": f"Token {token}"}, timeout=10)
        assert response.status_code == 401
        assert refused(base, token) in (403, 4401)  # Daphne refuses a socket closed before accept with 403


def test_a_password_change_closes_the_agents_sockets_on_every_process(two_processes, make_agent):
    agent = make_agent(username="anna", online=False)
    token = Token.objects.create(user=agent.user).key
    clients = sockets_on_both(two_processes, token)
    user = get_user_model().objects.get(pk=agent.user_id)
    since = time.monotonic()
    user.set_password("another-pass-456")
    user.save()
    assert_all_revoked(wait_closed(clients, since))


def test_logout_with_the_token_closes_its_sockets_on_every_process(two_processes, make_agent):
    make_agent(username="anna", online=False)
    base = two_processes[0]
    login = requests.post(
        f"{base}/api/v1/auth/token", json={"username": "anna", "password": "test-pass-123"}, timeout=10
    )
    token = login.json()["token"]
    clients = sockets_on_both(two_processes, token)
    since = time.monotonic()
    response = requests.post(f"{base}/api/v1/auth/logout", headers={"Authorization": f"Token {token}"}, timeout=10)
    assert response.status_code == 204
    assert_all_revoked(wait_closed(clients, since))
    assert (
        requests.get(
            f"{two_processes[1]}/api/v1/agent/me", headers={"Authorization": f"Token {token}"}, timeout=10
        ).status_code
        == 401
    )


def test_an_expired_token_is_refused_at_rest_and_socket(tmp_path, make_agent):
    env = service_env(AGENT_TOKEN_TTL_SECONDS="2", RUN_PERIODIC_IN_PROCESS="0")
    make_agent(username="anna", online=False)
    with daphne(env, tmp_path / "daphne.log") as base:
        token = requests.post(
            f"{base}/api/v1/auth/token", json={"username": "anna", "password": "test-pass-123"}, timeout=10
        ).json()["token"]
        assert requests.get(f"{base}/api/v1/agent/me", headers={"Authorization": f"Token {token}"}, timeout=10).ok
        time.sleep(2.5)
        response = requests.get(f"{base}/api/v1/agent/me", headers={"Authorization": f"Token {token}"}, timeout=10)
        assert (response.status_code, response.json()["error"]["code"]) == (401, "token_expired")
        assert refused(base, token) in (403, 4401)  # Daphne refuses a socket closed before accept with 403
