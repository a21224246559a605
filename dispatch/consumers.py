"""The agents' WebSocket (docs/API.md, Agents). Thin: parse, call a service, forward.

Close codes: 4401 not authenticated, or the token or session the socket was opened with was
revoked or expired (after an `error` with code `token_revoked`: log in again), 4403 not an agent
or suspended, 4408 idle too long (no `ping`), 4409 too many sockets for this agent
(AGENT_MAX_SOCKETS), 4429 flooding, 1013 database unavailable while connecting (try again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from channels.consumer import get_handler_name
from channels.db import DatabaseSyncToAsync
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from core import gc_policy
from marketplace import access
from marketplace.models import Agent, Conversation

from . import events, heartbeat, payloads, protocol, selectors, socket_db
from .services import conversations, notes, offers, presence, supervision, transfers
from .services import errors as dispatch_errors

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The agents' own actions (accept, decline, a message, resolve, a status) run on threads of their
# own, not on the process's one thread for sync code, where every HTTP request of the process waits
# its turn: a surge of bot requests queued there held each accept up for seconds (intake starved
# dispatch: docs/BENCHMARKS.md, issue 13). Each action is one trip, its agent row read on the way.
_actions = ThreadPoolExecutor(settings.AGENT_ACTION_THREADS, thread_name_prefix="agent-action")


def close_action_connections() -> None:
    """Close the database connection of every socket-action thread (tests: each test starts afresh)."""
    from threading import Barrier

    from django.db import connections

    threads = _actions._max_workers
    barrier = Barrier(threads)

    def close() -> None:
        barrier.wait(timeout=30)  # every thread holds one of these, so each closes its own connection
        connections.close_all()

    for future in [_actions.submit(close) for _ in range(threads)]:
        future.result(timeout=30)


def _agent_action(service: Callable[..., T], agent_id: str, **kwargs: Any) -> Callable[[], Any]:
    def run() -> T:
        return service(agent=Agent.objects.get(pk=agent_id), **kwargs)

    return DatabaseSyncToAsync(run, thread_sensitive=False, executor=_actions)


class AgentConsumer(AsyncWebsocketConsumer):
    agent_id: str
    last_heard: float

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        agent = await socket_db.off_thread(selectors.agent_for_user)(user)
        if agent is None or agent.approval == Agent.Approval.SUSPENDED:
            await self.close(code=4403)
            return
        self.agent_id = agent.pk
        self.credential: access.SocketCredential | None = self.scope.get("credential")
        if self.credential is None and "session" in self.scope:
            self.credential = await socket_db.off_thread(access.session_credential)(self.scope["session"], user)
        self.last_heard = time.monotonic()
        self.rate = protocol.RateLimiter()
        await self.accept()
        # Join before taking the snapshot: nothing that happens in between is missed.
        await self.channel_layer.group_add(events.agent_group(self.agent_id), self.channel_name)
        try:
            await socket_db.off_thread(presence.connection_open)(
                agent_id=self.agent_id, channel_name=self.channel_name, server_id=heartbeat.SERVER_ID
            )
        except dispatch_errors.TooManySockets as exc:
            await self.send_json({"type": "error", "code": "too_many_sockets", "detail": str(exc.detail)})
            await self.close(code=4409)
            return
        except DatabaseError:
            logger.warning("database unavailable while agent %s connected", self.agent_id, exc_info=True)
            await self.close(code=1013)
            return
        try:
            # Revoked between the check at the handshake and joining the group: that message was missed.
            if self.credential is not None and not await socket_db.off_thread(access.valid_credentials)(
                [self.credential]
            ):
                await self.revoked("revoked")
                return
            hello = await socket_db.off_thread(payloads.hello_payload)(self.agent_id)
        except DatabaseError:
            # The database connection was lost: close (disconnect() cleans up) and let the app
            # reconnect, rather than crash and leave the connection row behind.
            logger.warning("database unavailable while agent %s connected", self.agent_id, exc_info=True)
            await self.close(code=1013)  # try again later
            return
        events.bind_socket_loop(asyncio.get_running_loop())
        heartbeat.watch(self)
        await self.send_json(hello)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the socket ended. A channel layer failure (Redis restarted) kills the
            # consumer without `disconnect`; its connection row would stay forever and the
            # agent would never be released (no grace period, no work passed on).
            await self._forget()
            gc_policy.socket_closed()  # its garbage counts towards the next full collection

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, without its hop to the sync thread before every message.

        Channels (4.2+) awaits `aclose_old_connections()` before each handler: a
        trip to the one thread that runs every consumer's database work in this
        process, for every heartbeat of every idle socket (5,000 sockets pinging
        every 25 s: 200 trips a second, queued behind the connects' queries).
        Every database call here goes through `database_sync_to_async`, which
        closes stale connections itself, before and after, on that thread.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def disconnect(self, code: int) -> None:
        await self._forget()

    async def _forget(self) -> None:
        """Close the connection row first (the database is the truth), then leave the group."""
        if not hasattr(self, "agent_id") or getattr(self, "forgotten", False):
            return
        self.forgotten = True
        heartbeat.forget(self)
        # A connection row left behind would keep the agent "connected" forever (this
        # process still beats): a lost database connection gets a few more tries.
        for delay in (0.2, 0.5, 1, 2, 4, 0):
            try:
                await socket_db.off_thread(presence.connection_close)(channel_name=self.channel_name)
                break
            except DatabaseError:
                if not delay:
                    logger.exception("could not record that %s closed", self.channel_name)
                    break
                await asyncio.sleep(delay)
        try:
            await self.channel_layer.group_discard(events.agent_group(self.agent_id), self.channel_name)
        except Exception:  # the layer is down; its group entries expire with it
            logger.warning("could not leave the group of agent %s", self.agent_id, exc_info=True)

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, separators=(",", ":")))

    async def agent_event(self, event: dict[str, Any]) -> None:
        """Forward what the services sent to this agent's group."""
        await self.send_json(event["payload"])

    async def agent_revoke(self, event: dict[str, Any]) -> None:
        """A token or session of this agent was revoked: close if this socket was opened with it."""
        mine = self.credential.digest if self.credential is not None else None
        if event.get("credential") is None or event["credential"] == mine:
            await self.revoked(str(event.get("reason", "revoked")))

    async def revoked(self, reason: str) -> None:
        if getattr(self, "closing", False):
            return
        self.closing = True
        heartbeat.forget(self)
        detail = f"Your login ended ({reason.replace('_', ' ')}): log in again."
        try:
            await self.send_json({"type": "error", "code": "token_revoked", "reason": reason, "detail": detail})
        finally:
            await self.close(code=4401)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """One frame: parsed and limited by the protocol, handled by the service its type names."""
        self.last_heard = time.monotonic()
        kind = None
        try:
            if not self.rate.allow():
                if self.rate.flooding():
                    await self.close(code=4429)
                    return
                raise protocol.rate_limited()
            content = protocol.parse(text_data, bytes_data)
            kind = content.get("type")
            handler = self.HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise protocol.unknown_type(kind)
            await handler(self, content)
        except Exception as exc:  # every failure is answered on the socket, which stays open
            await self.send_json(protocol.error_frame(exc, kind, self.agent_id))

    async def on_ping(self, content: dict[str, Any]) -> None:
        # Renew the group membership: channels_redis forgets it after `group_expiry` (a day),
        # and a socket open that long would then hear nothing.
        await self.channel_layer.group_add(events.agent_group(self.agent_id), self.channel_name)
        await self.send_json({"type": "pong"})

    async def on_presence(self, content: dict[str, Any]) -> None:
        status = protocol.choice(content, "status", Agent.Status.values, "status: one of online, away, offline.")
        await DatabaseSyncToAsync(presence.agent_set_status, thread_sensitive=False, executor=_actions)(
            agent_id=self.agent_id, status=status, actor=f"agent:{self.agent_id}"
        )

    async def on_offer_accept(self, content: dict[str, Any]) -> None:
        offer_id = protocol.field(content, "offer_id")
        await _agent_action(offers.offer_accept, self.agent_id, offer_id=offer_id)()

    async def on_offer_decline(self, content: dict[str, Any]) -> None:
        offer_id = protocol.field(content, "offer_id")
        reason = protocol.field(content, "reason", required=False)
        await _agent_action(offers.offer_decline, self.agent_id, offer_id=offer_id, reason=reason)()
        await self.send_json({"type": "offer.declined", "offer_id": offer_id})

    async def on_message_send(self, content: dict[str, Any]) -> None:
        conversation_id = protocol.field(content, "conversation_id")
        text = protocol.field(content, "text", max_length=20_000)
        client_id = protocol.field(content, "client_id")
        await _agent_action(
            conversations.conversation_add_agent_message,
            self.agent_id,
            conversation_id=conversation_id,
            text=text,
            client_id=client_id,
        )()

    async def on_conversation_resolve(self, content: dict[str, Any]) -> None:
        conversation_id = protocol.field(content, "conversation_id")
        outcome = protocol.choice(
            content, "outcome", Conversation.Outcome.values, "outcome: one of resolved, unresolved."
        )
        note = protocol.field(content, "note", max_length=5_000, required=False)
        await _agent_action(
            conversations.conversation_resolve,
            self.agent_id,
            conversation_id=conversation_id,
            outcome=outcome,
            note=note,
        )()

    async def on_note_send(self, content: dict[str, Any]) -> None:
        conversation_id = protocol.field(content, "conversation_id")
        text = protocol.field(content, "text", max_length=notes.NOTE_MAX_LENGTH)
        client_id = protocol.field(content, "client_id")
        await _agent_action(
            notes.conversation_note_add,
            self.agent_id,
            conversation_id=conversation_id,
            text=text,
            client_id=client_id,
        )()

    async def on_help_request(self, content: dict[str, Any]) -> None:
        conversation_id = protocol.field(content, "conversation_id")
        text = protocol.field(content, "text", max_length=notes.NOTE_MAX_LENGTH)
        await _agent_action(supervision.help_request_raise, self.agent_id, conversation_id=conversation_id, text=text)()

    async def on_conversation_transfer(self, content: dict[str, Any]) -> None:
        conversation_id = protocol.field(content, "conversation_id")
        to = protocol.transfer_to(content)
        note = protocol.field(content, "note", max_length=5_000, required=False)
        await _agent_action(
            transfers.conversation_transfer, self.agent_id, conversation_id=conversation_id, note=note, **to
        )()

    HANDLERS = {
        "ping": on_ping,
        "presence": on_presence,
        "offer.accept": on_offer_accept,
        "offer.decline": on_offer_decline,
        "message.send": on_message_send,
        "conversation.resolve": on_conversation_resolve,
        "note.send": on_note_send,
        "help.request": on_help_request,
        "conversation.transfer": on_conversation_transfer,
    }
