"""Django's Redis cache with ONE client, and so one bounded connection pool, per process.

`django.core.cache.caches` keeps its backend objects in an asgiref `Local`, which under ASGI is
local to the async context: every WebSocket consumer (whose context lives as long as its socket)
and every HTTP request builds its own `RedisCache`, and Django's `RedisCache` builds its own
redis-py pool. An agent socket that read the cache once while connecting (`hello`'s status
reason) then held a Redis connection for as long as it stayed open: 5,546 Redis clients for
5,000 sockets (docs/BENCHMARKS.md, issue 13). Here the backend objects stay per context, as
Django wants, but they share one client per (servers, options): a pool of at most
`max_connections`, where a caller waits (`timeout` seconds) for a free connection rather than
open one more.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property

_clients: dict[tuple[tuple[str, ...], str], RedisCacheClient] = {}
_lock = threading.Lock()


class SharedRedisCache(RedisCache):
    @cached_property
    def _cache(self) -> RedisCacheClient:
        options: dict[str, Any] = self._options
        key = (tuple(self._servers), repr(sorted(options.items())))
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = self._class(self._servers, **options)
            return client
