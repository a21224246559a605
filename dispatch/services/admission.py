"""Admission control for new escalations: refuse what the online agents cannot take within the SLA.

A new conversation is refused (503 `overloaded`, with Retry-After and its estimated wait) when the
wait estimate it would get on joining the queue (marketplace.selectors.wait_estimate_for_new, the
same rule the bot is told for a waiting conversation) is over ADMISSION_SLA_SECONDS. Nothing is
stored for it, so nothing stored is ever dropped: a conversation once accepted is served.

- Priority enters through the queue position: an urgent conversation is placed as if it had
  arrived QUEUE_HEAD_START_URGENT seconds earlier, ahead of most of the queue, so it is refused
  only when the urgent and old conversations already ahead of it would take the SLA.
- With nobody online who speaks the language there is no estimate to be honest about and no
  dispatch work to protect: the conversation is taken (it waits for the next agent, as before).
- Only new conversations are checked: the caller checks an existing external_id first (a replay
  answers 200 whatever the queue), and calls about existing conversations never come here.

The check runs on every escalation, so its figure is kept per process for at most
ADMISSION_ESTIMATE_MAX_AGE_SECONDS per (language, priority): at 40 escalations a second that is
one pool aggregate and one count a second, not eighty.
"""

from __future__ import annotations

import math
import threading
import time

from django.conf import settings
from django.utils import timezone

from core.errors import Overloaded
from marketplace import selectors
from marketplace import services as marketplace_services

_MEMO_MAX = 256  # (language, priority) pairs kept; languages are validated tags, but bound it anyway
_memo: dict[tuple[str, str], tuple[float, selectors.WaitEstimate]] = {}
_memo_lock = threading.Lock()


def estimate_for_new(*, language: str, priority: str) -> selectors.WaitEstimate:
    """The wait a conversation joining now would be told, at most ADMISSION_ESTIMATE_MAX_AGE_SECONDS old."""
    max_age = float(settings.ADMISSION_ESTIMATE_MAX_AGE_SECONDS)
    key = (language, priority)
    now = time.monotonic()
    if max_age > 0:
        kept = _memo.get(key)
        if kept is not None and now - kept[0] < max_age:
            return kept[1]
    queue_key = marketplace_services.queue_key_for(priority, timezone.now())
    estimate = selectors.wait_estimate_for_new(language=language, queue_key=queue_key)
    if max_age > 0:
        with _memo_lock:
            if len(_memo) >= _MEMO_MAX:
                _memo.clear()
            _memo[key] = (now, estimate)
    return estimate


def forget() -> None:
    """Drop the kept figures (tests; the next check reads the queue again)."""
    with _memo_lock:
        _memo.clear()


def check_admission(*, language: str, priority: str) -> None:
    """Raise Overloaded when a new conversation of this language and priority would wait past the SLA."""
    if not settings.ADMISSION_CONTROL:
        return
    estimate = estimate_for_new(language=language, priority=priority)
    sla = float(settings.ADMISSION_SLA_SECONDS)
    if estimate.seconds is None or estimate.seconds <= sla:
        return
    # With no new arrivals the wait at the back of the queue falls by a second each second (the
    # conversations ahead are served at the pool's pace), so it is back under the SLA in
    # (wait - SLA) seconds; agents coming online make it sooner, hence the cap.
    retry_after = min(math.ceil(estimate.seconds - sla), int(settings.ADMISSION_RETRY_AFTER_MAX_SECONDS))
    raise Overloaded(
        f"More conversations are waiting than the agents online can answer within {sla:g} s: this one "
        f"would wait about {estimate.seconds} s. Nothing was stored; escalate again after Retry-After seconds.",
        retry_after=retry_after,
        extra={"estimated_wait_seconds": estimate.seconds},
    )
