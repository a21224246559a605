"""The platform's Stripe client, built from settings (STRIPE_SECRET_KEY, STRIPE_API_BASE).

The stripe library retries network errors, 409s and 5xx itself, with the same
Idempotency-Key each time (max_network_retries); what is left after that is
ours to retry later, again with the same key.
"""

from __future__ import annotations

import threading
from typing import Any

import stripe
from django.conf import settings

_lock = threading.Lock()
_client: tuple[tuple[str, str, int, float], stripe.StripeClient] | None = None


class StripeNotConfigured(Exception):
    pass


def configured() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def client() -> stripe.StripeClient:
    """One client per process (it pools connections), rebuilt when the settings change."""
    global _client
    if not settings.STRIPE_SECRET_KEY:
        raise StripeNotConfigured("STRIPE_SECRET_KEY is not set")
    config = (
        settings.STRIPE_SECRET_KEY,
        settings.STRIPE_API_BASE or "",
        settings.STRIPE_MAX_NETWORK_RETRIES,
        settings.STRIPE_TIMEOUT_SECONDS,
    )
    with _lock:
        if _client is None or _client[0] != config:
            options: dict = {
                "max_network_retries": config[2],
                "http_client": stripe.RequestsClient(timeout=config[3]),
            }
            if config[1]:
                options["base_addresses"] = {"api": config[1], "connect": config[1], "files": config[1]}
            _client = (config, stripe.StripeClient(config[0], **options))
        return _client[1]


def is_retryable(error: stripe.StripeError) -> bool:
    """Worth trying again later with the same key: the network, Stripe's side, rate limits, conflicts."""
    if isinstance(error, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    status = error.http_status or 0
    return status >= 500 or status == 409 or status == 0


def as_dict(obj: Any) -> dict[str, Any]:
    """Stripe's objects are not dicts (stripe-python 15+); events and our code use plain dicts."""
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
