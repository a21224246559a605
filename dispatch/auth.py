"""Who is on the WebSocket: `?token=<DRF token>`, or the session cookie from the web app.

A token is not sent by browsers on their own, so it needs no origin check. The
session cookie is, so a cookie-authenticated socket must come from one of our
own hosts (cross-site WebSocket hijacking).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser
from rest_framework.authtoken.models import Token

from config import edge


@database_sync_to_async
def _user_for_token(key: str) -> Any:
    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return AnonymousUser()
    return token.user


def _same_site(scope: dict[str, Any]) -> bool:
    return edge.same_origin(scope)  # scheme, host and port


class AgentAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.with_session = AuthMiddlewareStack(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        token = parse_qs(scope.get("query_string", b"").decode("latin1")).get("token", [""])[0]
        if token:
            return await self.inner({**scope, "user": await _user_for_token(token)}, receive, send)
        if _same_site(scope):
            return await self.with_session(scope, receive, send)
        return await self.inner({**scope, "user": AnonymousUser()}, receive, send)
