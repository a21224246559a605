"""A token bucket (sustained rate plus a burst) kept in the Django cache, atomic across processes on Redis.

Why our own: the well-kept libraries do not offer this shape. `limits` (5.x) has fixed window,
moving window and sliding-window counter strategies, none with a burst above the sustained rate;
`pyrate-limiter` keeps a log of every request (a sorted set of up to `limit` members per key) and
expresses a burst only as a second, shorter window. A token bucket needs one number per key.

It is kept as GCRA (the generic cell rate algorithm), the token bucket's usual form for a shared
store: the key holds the "theoretical arrival time" `tat`, the moment the bucket would be full
again. A request is allowed when `tat + interval - burst * interval <= now` (a token is left), and
then moves `tat` one interval on. So `burst` requests pass at once from a full bucket, then one
every `interval` seconds. On Redis this is one short Lua script, run atomically by the server with
the server's clock (web processes' clocks may differ). With any other cache (the embedded
default's local-memory cache) the same arithmetic runs under a lock: atomic within the process,
which is all there is in that mode.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache

# KEYS[1] the bucket; ARGV[1] seconds per token; ARGV[2] the burst. Returns "0" when allowed,
# otherwise the seconds until a token is there (a string: Redis would truncate a Lua number).
_GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat + interval - burst * interval
if allow_at > now then
  return string.format('%.6f', allow_at - now)
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return '0'
"""

_script: Any = None
_lock = threading.Lock()


def take(name: str, *, rate_per_second: float, burst: int) -> float:
    """Take one token from the bucket `name`: 0.0 when there was one, else the seconds until there is."""
    if rate_per_second <= 0 or burst < 1:
        raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
    interval = 1.0 / rate_per_second
    backend = caches["default"]  # not the `cache` proxy, which is never an instance of the backend's class
    if isinstance(backend, RedisCache):
        global _script
        key = backend.make_and_validate_key(name)
        # Django's Redis cache hands out its redis-py client (the same pool as every cache call).
        client = backend._cache.get_client(key, write=True)
        if _script is None:
            _script = client.register_script(_GCRA)  # EVALSHA, loading the script again after a flush
        return float(_script(keys=[key], args=[repr(interval), burst], client=client))
    with _lock:
        now = time.time()
        tat = max(float(backend.get(name) or 0.0), now)
        allow_at = tat + interval - burst * interval
        if allow_at > now:
            return allow_at - now
        tat += interval
        backend.set(name, tat, timeout=tat - now + 1)
        return 0.0
