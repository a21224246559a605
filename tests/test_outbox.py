"""core/outbox.py: the backoff every leased outbox waits between attempts."""

from __future__ import annotations

from core import outbox


def test_backoff_is_equal_jitter_within_bounds_and_capped():
    for attempt, low, high in [(0, 1, 2), (1, 1, 2), (2, 2, 4), (3, 4, 8), (10, 30, 60), (40, 30, 60)]:
        delays = [outbox.backoff_seconds(attempt, base=2, cap=60) for _ in range(200)]
        assert all(low <= d <= high for d in delays), attempt
    assert len({round(outbox.backoff_seconds(3, base=2, cap=60), 6) for _ in range(200)}) > 100  # jittered
