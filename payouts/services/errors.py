"""The errors payouts raises to its callers (API views turn them into responses)."""

from __future__ import annotations

from core.errors import ApiError, Conflict


class StripeUnavailable(ApiError):
    status_code = 502
    default_code = "stripe_unavailable"
    default_detail = "Stripe could not be reached; try again shortly."


class StripeNotConfigured(ApiError):
    status_code = 503
    default_code = "stripe_not_configured"
    default_detail = "Payouts are not configured on this platform yet (no STRIPE_SECRET_KEY)."


class NotDisputable(Conflict):
    default_code = "not_disputable"
    default_detail = "This earning cannot be disputed."
