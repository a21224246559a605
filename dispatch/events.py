"""Messages to agents over the channel layer, on per-agent groups.

Every sender is called after commit (send_on_commit), never while a row lock is
held: a slow or full channel layer must not stall the database.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.core.cache import cache
from django.db import transaction
from redis.exceptions import ConnectionError as RedisConnectionError

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


# Services are sync code; async_to_sync from a thread with no loop (a Celery
# worker, a job thread) would make a new loop, and channels_redis a new
# connection, for every send. One long-lived loop per process, on a daemon
# thread, keeps its connections.
_sender_loop: asyncio.AbstractEventLoop | None = None
_sender_lock = threading.Lock()


def _loop_for_sending() -> asyncio.AbstractEventLoop:
    global _sender_loop
    with _sender_lock:
        if _sender_loop is None or _sender_loop.is_closed():
            _sender_loop = asyncio.new_event_loop()
            threading.Thread(target=_sender_loop.run_forever, name="channel-sender", daemon=True).start()
        return _sender_loop


# A restarted Redis leaves dead connections in the layer's pool; a command on one fails
# once and drops it, and the next try gets a fresh connection.
SEND_ATTEMPTS = 3


def send(agent_id: str, payload: dict[str, Any]) -> None:
    _group_send(agent_id, {"type": "agent.event", "payload": payload})


def send_revoke(agent_id: str, *, credential: str | None, reason: str) -> None:
    """Close the agent's sockets opened with this credential (a digest), or all of them (None).

    Every web process holding one of them closes it (4401, after an `error` with code
    `token_revoked`). Called after the credential was revoked in the database.
    """
    _group_send(agent_id, {"type": "agent.revoke", "credential": credential, "reason": reason})


def on_credentials_revoked(sender: Any, *, agent_id: str, credential: str | None, reason: str, **kwargs: Any) -> None:
    send_revoke(agent_id, credential=credential, reason=reason)


def _group_send(agent_id: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    group, payload = agent_group(agent_id), message.get("payload", message)
    for attempt in range(1, SEND_ATTEMPTS + 1):
        try:
            if isinstance(layer, InMemoryChannelLayer):
                if _socket_loop is None or _socket_loop.is_closed():
                    return  # no socket was ever opened in this process: nobody to tell
                loop = _socket_loop
            else:
                loop = _loop_for_sending()
            asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop).result(timeout=5)
            return
        except RedisConnectionError:
            if attempt == SEND_ATTEMPTS:
                logger.exception("could not send %s to agent %s", payload.get("type"), agent_id)
        except Exception:  # the database is the truth; the app resyncs from `hello`
            logger.exception("could not send %s to agent %s", payload.get("type"), agent_id)
            return


def send_on_commit(agent_id: str, payload: dict[str, Any]) -> None:
    transaction.on_commit(lambda: send(agent_id, payload), robust=True)


# Why the server (not the agent) last set the status, kept for `hello`: the app that reconnects after
# `disconnected` (the agent had no socket then) still learns why it is offline. Informational only:
# the status itself lives on the agent row.
STATUS_REASON_TTL_SECONDS = 24 * 3600


def status_reason_key(agent_id: str) -> str:
    return f"dispatch.status_reason.{agent_id}"


def presence_on_commit(agent_id: str, status: str, reason: str = "") -> None:
    """Tell the agent's devices the status now in force, with the reason when the agent did not choose it."""

    def remember() -> None:
        try:
            if reason:
                cache.set(status_reason_key(agent_id), reason, STATUS_REASON_TTL_SECONDS)
            else:
                cache.delete(status_reason_key(agent_id))
        except Exception:  # the cache is a convenience; the status was saved and is sent regardless
            logger.warning("could not remember the status reason of %s", agent_id, exc_info=True)

    transaction.on_commit(remember, robust=True)
    send_on_commit(agent_id, {"type": "presence", "status": status, **({"reason": reason} if reason else {})})


def status_reason(agent_id: str) -> str | None:
    try:
        reason = cache.get(status_reason_key(agent_id))
    except Exception:
        logger.warning("could not read the status reason of %s", agent_id, exc_info=True)
        return None
    return reason if isinstance(reason, str) else None
