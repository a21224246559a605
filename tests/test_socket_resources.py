"""What an open agent socket costs the shared services, on a real Daphne with PostgreSQL and Redis.

Issue 13 (target 4): 5,000 idle sockets per process. Each socket's context used to build its own
Django cache object (django.core.cache.caches is context-local under ASGI, and a consumer's
context lives as long as its socket) with its own redis-py pool, so every socket that read the
cache while connecting (`hello`'s status reason) held one Redis connection for its whole life:
5,546 Redis clients for 5,000 sockets.
"""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import redis
from rest_framework.authtoken.models import Token

from .processes import AgentClient, daphne, redis_server, service_env

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

SOCKETS = 50


def redis_clients(url: str) -> int:
    return len(redis.Redis.from_url(url).client_list()) - 1  # not this one


def test_open_sockets_do_not_each_hold_a_redis_connection(make_agent, settings, tmp_path):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # 50 agents made here
    # Offline agents: their `hello` reads the status reason from the cache (Redis).
    tokens = [Token.objects.create(user=make_agent(online=False).user).key for _ in range(SOCKETS + 1)]
    with ExitStack() as stack:
        redis_url, _ = stack.enter_context(redis_server(tmp_path))  # counts only this test's clients
        base = stack.enter_context(
            daphne(service_env(REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url), tmp_path / "d.log")
        )
        first = AgentClient(base, tokens[0])  # the process's own pools (channel layer, cache) are open
        first.send(type="ping")
        first.expect("pong")
        stack.callback(first.close)
        before = redis_clients(redis_url)

        clients = []
        for token in tokens[1:]:
            clients.append(AgentClient(base, token))
            stack.callback(clients[-1].close)
        for client in clients:  # each connected and got its hello (status reason read)
            assert client.hello["status"] == "offline"
            client.send(type="ping")
            client.expect("pong")
        after = redis_clients(redis_url)

    assert after - before < 10, f"{SOCKETS} sockets opened {after - before} Redis connections ({before} -> {after})"
