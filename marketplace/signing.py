"""HMAC-SHA256 signatures in the form `t=<unix seconds>,v1=<hex>` over "<t>.<body>".

The same scheme signs the bot's requests (X-Bot-Signature) and our callbacks
(X-Platform-Signature), as Stripe signs its webhooks.
"""

from __future__ import annotations

import hashlib
import hmac
import time


def compute(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def header(secret: str | list[str], body: bytes, timestamp: int | None = None) -> str:
    """One v1 per secret: during a rotation the receiver may still know only the old one."""
    t = int(time.time()) if timestamp is None else timestamp
    secrets = [secret] if isinstance(secret, str) else secret
    return f"t={t}," + ",".join(f"v1={compute(s, t, body)}" for s in secrets)


def verify(secret: str, body: bytes, signature_header: str, tolerance: int, now: float | None = None) -> bool:
    """True when a v1 signature matches and t is within `tolerance` seconds of now."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in signature_header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and timestamp is None:
            if not value.isdigit() or len(value) > 12:  # unix seconds; refuses absurd values early
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = compute(secret, timestamp, body)
    # compare_digest on every candidate, so timing does not tell which one matched.
    matches = [hmac.compare_digest(expected.encode(), c.encode("ascii", "replace")) for c in candidates]
    return any(matches)
