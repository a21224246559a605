"""Messages to agents over the channel layer, on per-agent groups.

Every sender is called after commit (send_on_commit), never while a row lock is
held: a slow or full channel layer must not stall the database.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

from marketplace.models import Message

logger = logging.getLogger(__name__)


def agent_group(agent_id: str) -> str:
    return f"agent.{agent_id}"


# The in-memory layer (embedded default) keeps asyncio queues that belong to the
# event loop serving the sockets; senders on other threads must hand their send
# to that loop. Redis-backed layers can be used from any loop.
_socket_loop: asyncio.AbstractEventLoop | None = None


def bind_socket_loop(loop: asyncio.AbstractEventLoop) -> None:
    global _socket_loop
    _socket_loop = loop


def send(agent_id: str, payload: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    group, message = agent_group(agent_id), {"type": "agent.event", "payload": payload}
    try:
        if isinstance(layer, InMemoryChannelLayer):
            if _socket_loop is None or _socket_loop.is_closed():
                return  # no socket was ever opened in this process: nobody to tell
            asyncio.run_coroutine_threadsafe(layer.group_send(group, message), _socket_loop).result(timeout=5)
        else:
            async_to_sync(layer.group_send)(group, message)
    except Exception:  # the database is the truth; the app resyncs from `hello`
        logger.exception("could not send %s to agent %s", payload.get("type"), agent_id)


def send_on_commit(agent_id: str, payload: dict[str, Any]) -> None:
    transaction.on_commit(lambda: send(agent_id, payload), robust=True)


def message_payload(message: Message) -> dict[str, Any]:
    return {
        "type": "message",
        "conversation_id": message.conversation_id,
        "message": {
            "id": message.id,
            "role": message.role,
            "text": message.text,
            "created_at": message.created_at.isoformat().replace("+00:00", "Z"),
            "client_id": message.client_id,
        },
    }
