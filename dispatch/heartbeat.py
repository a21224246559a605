"""Each web process's heartbeat, for its agent sockets.

Every SERVER_HEARTBEAT_SECONDS: say this process is alive (the presence sweeper closes the
connection rows of a process that stopped beating), close the sockets that went silent past
CONNECTION_IDLE_TIMEOUT_SECONDS (4408), and every AGENT_ACCESS_RECHECK_SECONDS close those whose
token or session no longer holds (expired; a revocation message that never arrived).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
import weakref
from typing import Protocol

from channels.db import database_sync_to_async
from django.conf import settings

from core import gc_policy
from marketplace import access

from .services import presence

logger = logging.getLogger(__name__)

SERVER_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Socket(Protocol):
    """What the heartbeat needs of a socket (dispatch.consumers.AgentConsumer)."""

    last_heard: float
    credential: access.SocketCredential | None

    async def close(self, code: int | None = None, reason: str | None = None) -> None: ...

    async def revoked(self, reason: str) -> None: ...


_open: weakref.WeakSet[Socket] = weakref.WeakSet()
_beat: asyncio.Task[None] | None = None


def watch(sock: Socket) -> None:
    """Watch this open socket, and make sure this process beats (on the loop that serves it)."""
    global _beat
    _open.add(sock)
    loop = asyncio.get_running_loop()
    if _beat is None or _beat.done() or _beat.get_loop() is not loop:
        _beat = loop.create_task(_heartbeat())


def forget(sock: Socket) -> None:
    _open.discard(sock)


async def _heartbeat() -> None:
    rechecked = time.monotonic()
    while True:
        try:
            await database_sync_to_async(presence.server_heartbeat)(server_id=SERVER_ID)
        except Exception:
            logger.exception("server heartbeat failed")
        cutoff = time.monotonic() - settings.CONNECTION_IDLE_TIMEOUT_SECONDS
        for sock in list(_open):
            if sock.last_heard < cutoff:
                await sock.close(code=4408)
        if time.monotonic() - rechecked >= settings.AGENT_ACCESS_RECHECK_SECONDS:
            rechecked = time.monotonic()
            await _recheck_credentials()
        # The sockets opened since the last beat out of the collector's way; a full pass when due.
        gc_policy.tick(len(_open))
        await asyncio.sleep(settings.SERVER_HEARTBEAT_SECONDS)


async def _recheck_credentials() -> None:
    socks = [s for s in list(_open) if getattr(s, "credential", None) is not None]
    if not socks:
        return
    try:
        valid = await database_sync_to_async(access.valid_credentials)([s.credential for s in socks])
    except Exception:
        logger.exception("could not re-check the sockets' credentials")
        return
    for sock in socks:
        if sock.credential not in valid:
            await sock.revoked("expired")
