"""The edge of the web process: what is checked before Django or Channels see a request.

- Proxy headers: the client's address and scheme come from X-Forwarded-For and
  X-Forwarded-Proto only when the peer is one of settings.TRUSTED_PROXIES
  (uvicorn's ProxyHeadersMiddleware; Daphne's own --proxy-headers believes anyone).
- Body limits: a body over its path's limit (`body_limit`) is refused with a 413 in
  the API's error shape before it is read. Daphne (through Twisted) takes the whole
  body before it calls the application and then queues all of it in memory at once,
  so an ASGI middleware alone cannot keep a large body out of memory:
  `install_daphne_body_limit` counts the body inside Daphne as it arrives, and
  `BodyLimitMiddleware` does the same for any ASGI server.
- Intake: at most INTAKE_MAX_IN_FLIGHT new escalations in Django at once per process, a few
  more waiting briefly; the others get a 503 with Retry-After before any work
  (`IntakeLimitMiddleware`).
- Origin: a browser's WebSocket is the same site only if its Origin has the
  request's own scheme, host and port (or is in CSRF_TRUSTED_ORIGINS).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# After refusing a body, the server reads and drops what the client still sends for
# at most this long, so that the client reads the 413 instead of a reset connection.
LINGER_SECONDS = 10.0


# Room for a multipart body's boundaries and part headers around a file of the largest size.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def body_limit(path: str) -> int:
    """The largest body, in bytes, that `path` accepts."""
    if path.rstrip("/").endswith("/attachments"):  # file uploads (API.md 7.2), wherever they are
        return int(getattr(settings, "ATTACHMENT_MAX_BYTES", 10 * 1024 * 1024)) + MULTIPART_OVERHEAD_BYTES
    if path.startswith("/api/v1/escalations"):
        return int(settings.BOT_MAX_BODY_BYTES)
    if path.startswith("/webhooks/stripe"):
        return int(settings.STRIPE_WEBHOOK_MAX_BYTES)
    return int(settings.REQUEST_MAX_BODY_BYTES)


def too_large_body(limit: int) -> bytes:
    detail = f"The request body is larger than {limit} bytes."
    return json.dumps({"error": {"code": "payload_too_large", "detail": detail}}).encode()


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


class BodyLimitMiddleware:
    """HTTP bodies over their path's limit get a 413: a declared Content-Length before
    anything is read, a chunked body as soon as the count passes the limit."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["path"])
        declared = _declared_length(scope.get("headers", []))
        if declared is not None and declared > limit:
            await self._refuse(send, limit)
            return
        received = 0
        over = started = False

        async def counted_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # The application sees a client that went away (Django drops the request
                    # without an answer); the 413 is sent below.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, watched_send)
        if over and not started:
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = too_large_body(limit)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


INTAKE_PATH = "/api/v1/escalations"


def overloaded_body(retry_after: int) -> bytes:
    detail = "The service is taking in as many new conversations as it can hand out now; try again shortly."
    return json.dumps({"error": {"code": "overloaded", "detail": detail, "retry_after_seconds": retry_after}}).encode()


class IntakeLimitMiddleware:
    """At most INTAKE_MAX_IN_FLIGHT new escalations in Django at once per process; a few more wait
    their turn here, and beyond that they are answered 503 at once.

    Every request of a web process that reaches Django's sync code waits for that process's
    one thread for sync code (asgiref's thread-sensitive mode). A surge of escalations queued
    there took the CPU and the thread that dispatch and the agents' accepts need: offers
    collapsed (docs/BENCHMARKS.md). So only a few new escalations are let into Django at a
    time; up to INTAKE_MAX_WAITING more wait here, on the event loop, first come first served,
    for at most INTAKE_MAX_WAIT_SECONDS (a burst is smoothed, not refused); the rest, and those
    that waited too long, get a `503` with `Retry-After` without a database call or a
    signature check, and nothing is stored for them. A bot's retry of the same `external_id`
    later is an ordinary first request. Calls about existing conversations (messages, cancel,
    rating, reopen, GET) are never held or refused here.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.in_flight = 0  # one event loop per process: no lock needed
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = int(settings.INTAKE_MAX_IN_FLIGHT)
        if not (limit and scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == INTAKE_PATH):
            await self.app(scope, receive, send)
            return
        if not await self._enter(limit):
            await self._refuse(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._leave()

    async def _enter(self, limit: int) -> bool:
        """Take a slot, waiting in line for one if need be; False when the line is full or too slow."""
        if self.in_flight < limit and not self.waiters:
            self.in_flight += 1
            return True
        if len(self.waiters) >= int(settings.INTAKE_MAX_WAITING):
            return False
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), float(settings.INTAKE_MAX_WAIT_SECONDS))
            return True
        except (TimeoutError, asyncio.CancelledError) as exc:
            if turn.done():  # the slot was handed over as the wait ended: it is this request's
                if isinstance(exc, asyncio.CancelledError):  # the client left: pass the slot on
                    self._leave()
                    raise
                return True
            self.waiters.remove(turn)
            turn.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return False

    def _leave(self) -> None:
        """Hand the slot to the first request waiting, or give it back."""
        while self.waiters:
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.in_flight -= 1

    @staticmethod
    async def _refuse(send: Send) -> None:
        retry_after = max(1, round(float(settings.INTAKE_RETRY_AFTER_SECONDS)))
        body = overloaded_body(retry_after)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry_after).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def with_edge(app: App) -> App:
    """`app` (the whole ProtocolTypeRouter) behind the proxy-header check."""
    return cast(App, ProxyHeadersMiddleware(app, trusted_hosts=list(settings.TRUSTED_PROXIES)))  # type: ignore[arg-type]


# --- Daphne ----------------------------------------------------------------------------------------------


def _request_path(channel: Any) -> str:
    """The path of the request whose headers Twisted just read (its request line is kept on the channel)."""
    target = getattr(channel, "_path", b"") or b""
    try:
        return unquote(urlsplit(target.decode("latin1")).path)
    except ValueError:
        return ""


def install_daphne_body_limit() -> None:
    """Make Daphne count each request body as it arrives and refuse it at its path's limit.

    Twisted calls `gotLength` once the headers are in (the declared length, or None
    for a chunked body) and `handleContentChunk` with each piece of the body; Daphne
    calls the application only after the last piece. A refused request answers 413
    at once, drops the rest of its body as it comes, and never reaches the application.
    """
    from daphne import http_protocol
    from twisted.internet import reactor

    if getattr(http_protocol.WebRequest, "body_limited", False):
        return

    base = http_protocol.WebRequest

    class BodyLimitedWebRequest(base):  # type: ignore[misc,valid-type]
        body_limited = True
        _limit = 0
        _seen = 0
        _refused = False

        def gotLength(self, length: int | None) -> None:  # noqa: N802 - Twisted's name
            self._limit = body_limit(_request_path(self.channel))
            if length is not None and length > self._limit:
                # An `Expect: 100-continue` client gets the 413 instead of a 100 and sends nothing.
                expects = self.requestHeaders.getRawHeaders(b"expect") or []
                self.requestHeaders.removeHeader(b"expect")
                self._refuse(linger=not any(v.lower() == b"100-continue" for v in expects))
                return
            super().gotLength(length)

        def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
            if self._refused:
                return
            self._seen += len(data)
            if self._seen > self._limit:
                self._refuse(linger=True)
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
            if self._refused:  # the whole body came and was dropped
                self._close()
                return
            super().requestReceived(command, path, version)

        def _refuse(self, *, linger: bool) -> None:
            self._refused = True
            old = getattr(self, "content", None)
            if old is not None:  # what was kept of the body so far
                old.close()
            self.content = io.BytesIO()
            body = too_large_body(self._limit)
            head = (
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            )
            transport = self.channel.transport
            transport.write(head + body)
            # Daphne's access log never sees this request: one line here instead.
            peer = transport.getPeer()
            logger.info(
                "%s: 413 %s, body over %d bytes", getattr(peer, "host", "?"), _request_path(self.channel), self._limit
            )
            if linger:
                # (zope interfaces have no `self`: mypy misreads the reactor's callLater)
                self._linger = reactor.callLater(LINGER_SECONDS, self._close)  # type: ignore[arg-type]
            else:
                self._close()

        def _close(self) -> None:
            linger = getattr(self, "_linger", None)
            if linger is not None and linger.active():
                linger.cancel()
            if self.channel is not None and self.channel.transport is not None:
                self.channel.transport.loseConnection()

    http_protocol.WebRequest = BodyLimitedWebRequest


# --- WebSocket origin ----------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port or _DEFAULT_PORTS[scheme]


def same_origin(scope: Scope) -> bool:
    """The browser that opened this socket is on our own site: its Origin is the request's
    own scheme, host and port (the host one of ALLOWED_HOSTS), or one of CSRF_TRUSTED_ORIGINS."""
    headers = {name.lower(): value for name, value in scope.get("headers", [])}
    origin = _origin_tuple(headers.get(b"origin", b"").decode("latin1"))
    if origin is None:
        return False
    trusted = {_origin_tuple(o) for o in settings.CSRF_TRUSTED_ORIGINS}
    if origin in trusted:
        return True
    host = headers.get(b"host", b"").decode("latin1")
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    return origin == _origin_tuple(f"{scheme}://{host}")
