"""The bot API's rate limit: a token bucket per integration, a sustained rate with a burst (issue 13.3).

BotRateThrottle (marketplace/bot_auth.py) over core/ratelimit.py: on Redis one atomic script with
the server's clock, so the limit holds across web processes; with the local-memory cache of the
embedded default, the same arithmetic under a lock.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client

from core import ratelimit

from ..conftest import BotClient

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

NOWHERE = "/api/v1/escalations/conv_nope"  # a signed GET that reaches the view: 404 while the bucket has tokens


def test_a_burst_passes_then_429_with_retry_after_in_the_error_shape(make_integration):
    # given: one token a second, bursts of 5
    integration = make_integration(rate_limit_per_minute=60, rate_burst=5)
    bot = BotClient(integration)

    # when: 7 requests at once, across endpoints (the bucket is the integration's, not the endpoint's)
    answers = [bot.escalate("b-1"), *[bot.get(NOWHERE) for _ in range(4)], bot.get(NOWHERE), bot.escalate("b-2")]

    # then: the first 5 are served, the rest refused until the next token
    assert [a.status_code for a in answers] == [201, 404, 404, 404, 404, 429, 429]
    limited = answers[-1]
    assert limited["Retry-After"] == "1"  # whole seconds, at least 1: the next token is under a second away
    assert limited.json() == {
        "error": {
            "code": "rate_limited",
            "detail": "Request was throttled. Expected available in 1 second.",
            "retry_after_seconds": 1,
        }
    }


def test_the_bucket_refills_at_the_sustained_rate(make_integration):
    integration = make_integration(rate_limit_per_minute=60, rate_burst=2)
    bot = BotClient(integration)
    assert [bot.get(NOWHERE).status_code for _ in range(3)] == [404, 404, 429]

    time.sleep(1.05)  # one token a second: one more request, not a whole new burst

    assert [bot.get(NOWHERE).status_code for _ in range(2)] == [404, 429]


def test_the_platform_burst_applies_but_never_beyond_a_minutes_worth(make_integration, settings):
    settings.BOT_RATE_LIMIT_PER_MINUTE = 60
    settings.BOT_RATE_BURST = 4
    bot = BotClient(make_integration())
    assert [bot.get(NOWHERE).status_code for _ in range(5)] == [404, 404, 404, 404, 429]

    # an integration limited to 2 a minute gets no burst of 4 above it
    slow = BotClient(make_integration(rate_limit_per_minute=2))
    assert [slow.get(NOWHERE).status_code for _ in range(3)] == [404, 404, 429]


def test_integrations_do_not_share_a_bucket(make_integration):
    first = BotClient(make_integration(rate_limit_per_minute=1, rate_burst=2))
    second = BotClient(make_integration(rate_limit_per_minute=1, rate_burst=2))
    assert [first.get(NOWHERE).status_code for _ in range(3)] == [404, 404, 429]

    assert [second.get(NOWHERE).status_code for _ in range(3)] == [404, 404, 429]
    assert first.get(NOWHERE).status_code == 429


@pytest.mark.django_db(transaction=True)
def test_the_limit_holds_for_clients_racing_and_the_bucket_is_in_redis(make_integration):
    # given: a burst of 5 and next to no refill; two clients, each on its own thread and connection
    integration = make_integration(rate_limit_per_minute=1, rate_burst=5)
    start = threading.Barrier(2)
    statuses: list[int] = []

    def hammer() -> None:
        bot = BotClient(integration, Client())
        start.wait()
        try:
            statuses.extend(bot.get(NOWHERE).status_code for _ in range(12))
        finally:
            connection.close()

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # then: 5 served between them, never more
    assert sorted(statuses) == [404] * 5 + [429] * 19
    # and the bucket is Redis's (what every web process sees), not this process's memory
    assert django_settings.REDIS_URL
    raw = redis.Redis.from_url(django_settings.REDIS_URL)
    assert raw.exists(f":1:bot-rate.{integration.pk}") == 1


def test_the_bucket_on_the_local_memory_cache_of_the_embedded_default(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    waits = [ratelimit.take("probe.locmem", rate_per_second=20, burst=3) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0 < waits[3] <= 0.05

    time.sleep(waits[3] + 0.01)

    assert ratelimit.take("probe.locmem", rate_per_second=20, burst=3) == 0.0
    assert ratelimit.take("probe.locmem", rate_per_second=20, burst=3) > 0
