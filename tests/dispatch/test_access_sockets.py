"""Sockets die with the token or session they were opened with (docs/API.md, agents):
logout, a password change, a suspension, expiry; and an agent holds at most AGENT_MAX_SOCKETS.
In-process (real consumer, real channel layer: Redis when REDIS_URL is set); across real
processes in tests/faults/test_access_processes.py."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from dispatch.models import AgentConnection
from dispatch.services import presence

from .conftest import Socket, connect

pytestmark = pytest.mark.django_db(transaction=True)


async def closed_with(socket: Socket, within: float = 5) -> tuple[int, list[dict[str, Any]]]:
    """Wait for the server to close the socket: its close code and what it said before."""
    said: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"not closed within {within}s; said {[m.get('type') for m in said]}")
        try:
            output = await socket.communicator.receive_output(timeout=remaining)
        except TimeoutError:
            continue
        if output["type"] == "websocket.close":
            return output.get("code", 1000), said
        if output["type"] == "websocket.send" and output.get("text"):
            said.append(json.loads(output["text"]))


async def token_socket(token: str) -> Socket:
    connected, code, socket = await connect(f"/ws/agent/?token={token}")
    assert connected, code
    await socket.expect("hello")
    return socket


async def session_socket(client: Client) -> Socket:
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    connected, code, socket = await connect(
        "/ws/agent/", [(b"cookie", cookie), (b"origin", b"http://localhost"), (b"host", b"localhost")]
    )
    assert connected, code
    await socket.expect("hello")
    return socket


def revoked(code: int, said: list[dict[str, Any]]) -> bool:
    return code == 4401 and any(m.get("type") == "error" and m.get("code") == "token_revoked" for m in said)


async def logged_in(make_agent: Any) -> tuple[Any, str, Client]:
    agent = await sync_to_async(make_agent)(online=False)
    token = (await Token.objects.acreate(user_id=agent.user_id)).key
    client = Client()
    await sync_to_async(client.login)(
        username=await sync_to_async(lambda: agent.user.username)(), password="test-pass-123"
    )
    return agent, token, client


async def test_logout_with_the_token_closes_its_sockets_and_not_the_sessions(make_agent):
    agent, token, client = await logged_in(make_agent)
    by_token, by_session = await token_socket(token), await session_socket(client)
    # when: the app logs out with its token
    response = await sync_to_async(Client(HTTP_AUTHORIZATION=f"Token {token}").post)("/api/v1/auth/logout")
    assert response.status_code == 204
    # then: the socket opened with that token closes, the session's stays open
    assert revoked(*await closed_with(by_token))
    await by_session.send(type="ping")
    await by_session.expect("pong")
    await by_session.close()


async def test_app_logout_closes_the_sockets_of_that_session(make_agent):
    agent, token, client = await logged_in(make_agent)
    by_token, by_session = await token_socket(token), await session_socket(client)
    await sync_to_async(client.post)("/app/logout")
    assert revoked(*await closed_with(by_session))
    await by_token.send(type="ping")
    await by_token.expect("pong")
    await by_token.close()


@pytest.mark.parametrize("change", ["password", "deactivate", "suspend"])
async def test_a_password_change_deactivation_or_suspension_closes_every_socket(make_agent, change):
    agent, token, client = await logged_in(make_agent)
    sockets = [await token_socket(token), await token_socket(token), await session_socket(client)]

    def act() -> None:
        user = agent.user
        if change == "password":
            user.set_password("another-pass-456")
            user.save()
        elif change == "deactivate":
            user.is_active = False
            user.save()
        else:
            presence.agent_suspend(agent_id=agent.pk, actor="admin:test")

    await sync_to_async(act)()
    for socket in sockets:
        code, said = await closed_with(socket)
        assert revoked(code, said), (code, said)
    # and the token cannot open a new one
    connected, code, _ = await connect(f"/ws/agent/?token={token}")
    assert not connected and code in (4401, 4403)


async def test_an_expired_token_cannot_open_a_socket(make_agent, settings):
    settings.AGENT_TOKEN_TTL_SECONDS = 3600
    agent, token, _ = await logged_in(make_agent)
    await Token.objects.filter(key=token).aupdate(created=timezone.now() - timedelta(seconds=3601))
    connected, code, _ = await connect(f"/ws/agent/?token={token}")
    assert (connected, code) == (False, 4401)


async def test_a_socket_closes_when_its_token_expires(make_agent, settings):
    # The backstop: each process re-checks its sockets' credentials (here every 0.5 s).
    settings.AGENT_TOKEN_TTL_SECONDS = 3600
    settings.SERVER_HEARTBEAT_SECONDS = 0.2
    settings.AGENT_ACCESS_RECHECK_SECONDS = 0.5
    agent, token, _ = await logged_in(make_agent)
    socket = await token_socket(token)
    await Token.objects.filter(key=token).aupdate(created=timezone.now() - timedelta(seconds=3601))
    code, said = await closed_with(socket, within=10)
    assert revoked(code, said)
    assert [m.get("reason") for m in said if m.get("type") == "error"] == ["expired"]


async def test_a_revocation_message_that_never_arrived_is_caught_by_the_recheck(make_agent, settings):
    settings.SERVER_HEARTBEAT_SECONDS = 0.2
    settings.AGENT_ACCESS_RECHECK_SECONDS = 0.5
    agent, token, _ = await logged_in(make_agent)
    socket = await token_socket(token)
    await Token.objects.filter(key=token).adelete()  # deleted behind the services' back: no message
    assert revoked(*await closed_with(socket, within=10))


async def test_at_most_a_few_sockets_per_agent(make_agent, settings):
    settings.AGENT_MAX_SOCKETS = 2
    agent, token, _ = await logged_in(make_agent)
    first, second = await token_socket(token), await token_socket(token)
    connected, code, third = await connect(f"/ws/agent/?token={token}")
    assert connected  # accepted, told why, then closed
    code, said = await closed_with(third)
    assert code == 4409
    assert [m.get("code") for m in said] == ["too_many_sockets"]
    assert await AgentConnection.objects.filter(agent_id=agent.pk).acount() == 2
    # closing one makes room again
    await first.close()
    for _ in range(100):
        if await AgentConnection.objects.filter(agent_id=agent.pk).acount() == 1:
            break
        await asyncio.sleep(0.05)
    fourth = await token_socket(token)
    await fourth.close()
    await second.close()


@pytest.mark.postgres
async def test_sockets_opened_at_once_never_pass_the_limit(make_agent, settings):
    settings.AGENT_MAX_SOCKETS = 3
    agent, token, _ = await logged_in(make_agent)

    async def attempt() -> Socket | None:
        connected, code, socket = await connect(f"/ws/agent/?token={token}")
        assert connected, code
        first = await socket.communicator.receive_output(timeout=10)
        if first["type"] == "websocket.close":
            return None
        if json.loads(first["text"]).get("type") == "hello":
            return socket
        await closed_with(socket)
        return None

    opened = [s for s in await asyncio.gather(*(attempt() for _ in range(10))) if s is not None]
    assert len(opened) == 3
    assert await AgentConnection.objects.filter(agent_id=agent.pk).acount() == 3
    for socket in opened:
        await socket.close()
