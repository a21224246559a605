"""The agents' WebSocket in-process: a connected device (Socket), and fixtures to open one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from config.routing import websocket_urlpatterns
from dispatch.auth import AgentAuthMiddleware
from marketplace.models import Agent

application = AgentAuthMiddleware(URLRouter(websocket_urlpatterns))


class Socket:
    """A connected agent device, with a helper to wait for a given message type."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.seen: list[dict[str, Any]] = []

    async def send(self, **content: Any) -> None:
        await self.communicator.send_to(text_data=json.dumps(content))

    async def expect(self, type_: str, within: float = 5, **match: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {type_!r} {match} within {within}s; saw {[m['type'] for m in self.seen]}")
            try:
                message = await self.communicator.receive_json_from(timeout=remaining)
            except TimeoutError:
                continue
            self.seen.append(message)
            if message["type"] == type_ and all(message.get(k) == v for k, v in match.items()):
                return message

    async def close(self) -> None:
        await self.communicator.disconnect()


async def connect(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[bool, Any, Socket]:
    communicator = WebsocketCommunicator(application, path, headers=headers or [])
    connected, code = await communicator.connect(timeout=5)
    return connected, code, Socket(communicator)


@pytest.fixture
def token_for():
    async def make(agent: Agent) -> str:
        token, _ = await Token.objects.aget_or_create(user_id=agent.user_id)
        return token.key

    return make


@pytest.fixture
def online_socket(token_for):
    async def open_(agent: Agent, go_online: bool = True) -> Socket:
        connected, code, socket = await connect(f"/ws/agent/?token={await token_for(agent)}")
        assert connected, code
        hello = await socket.expect("hello")
        assert hello["agent"]["id"] == agent.pk
        if go_online:
            await socket.send(type="presence", status="online")
            await socket.expect("presence", status="online")
        return socket

    return open_
