"""Who is on the WebSocket: `?token=<DRF token>`, or the session cookie from the web app.

An expired token or an inactive user is anonymous here (the
consumer closes with 4401). The consumer keeps what the socket was opened with
(`scope["credential"]`) so that revoking that token or session closes it.

A token is not sent by browsers on their own, so it needs no origin check. The
session cookie is, so a cookie-authenticated socket must come from one of our
own hosts (cross-site WebSocket hijacking).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from django.contrib.auth.models import AnonymousUser

from core import edge
from marketplace import access

from . import socket_db


def _user_for_token_sync(key: str) -> Any:
    return access.user_for_token(key) or AnonymousUser()


# On a socket thread, not the process's one thread for sync code (dispatch/socket_db.py).
_user_for_token = socket_db.off_thread(_user_for_token_sync)


def _same_site(scope: dict[str, Any]) -> bool:
    return edge.same_origin(scope)  # scheme, host and port


class AgentAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.with_session = AuthMiddlewareStack(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        token = parse_qs(scope.get("query_string", b"").decode("latin1")).get("token", [""])[0]
        if token:
            user = await _user_for_token(token)
            credential = access.SocketCredential("token", token, user.pk) if user.is_authenticated else None
            return await self.inner({**scope, "user": user, "credential": credential}, receive, send)
        if _same_site(scope):
            return await self.with_session(scope, receive, send)
        return await self.inner({**scope, "user": AnonymousUser()}, receive, send)
