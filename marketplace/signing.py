"""HMAC-SHA256 signatures in the form `t=<unix seconds>,v2=<hex>[,v1=<hex>]` (docs/API.md: bot requests and callbacks).

Two directions, two signed strings, so that a signature made for one can never pass for the other:

- the bot's requests (X-Bot-Signature): v2 over "<t>.<METHOD>.<path>.<raw body>", bound to one method
  on one path (with its query string as sent); a GET signs the empty body;
- our callbacks (X-Platform-Signature): v2 over "<t>.callback.<body>", beside v1 over "<t>.<body>"
  (the first version, kept for bots that still verify it).

The bot's METHOD is upper-case and the callback label lower-case, so no request can sign the same
string as a callback. The first version, v1 over "<t>.<body>", bound neither: a captured GET's
headers could sign any other request with an empty body, and a callback was a valid bot request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field

CALLBACK_LABEL = "callback"
# Unix seconds in ASCII digits, at most 12 (str.isdigit() also takes "²", which int() refuses).
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class SignatureFormatError(ValueError):
    """The header cannot be read; `code` and the message say why, without touching any secret."""

    def __init__(self, detail: str, code: str = "unauthorized") -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class ParsedSignature:
    timestamp: int
    v1: list[str] = field(default_factory=list)
    v2: list[str] = field(default_factory=list)


def _hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def request_message(timestamp: int, method: str, path: str, body: bytes) -> bytes:
    return f"{timestamp}.{method.upper()}.{path}.".encode() + body


def callback_message(timestamp: int, body: bytes) -> bytes:
    return f"{timestamp}.{CALLBACK_LABEL}.".encode() + body


def v1_message(timestamp: int, body: bytes) -> bytes:
    return f"{timestamp}.".encode() + body


def request_header(
    secret: str, method: str, path: str, body: bytes, timestamp: int | None = None, *, with_v1: bool = False
) -> str:
    """X-Bot-Signature for one request: what a bot sends (`with_v1` adds the first version beside it)."""
    t = int(time.time()) if timestamp is None else timestamp
    header = f"t={t},v2={_hmac(secret, request_message(t, method, path, body))}"
    return header + (f",v1={_hmac(secret, v1_message(t, body))}" if with_v1 else "")


def callback_header(secrets: str | list[str], body: bytes, timestamp: int | None = None) -> str:
    """X-Platform-Signature: one v1 and one v2 per valid secret (during a rotation the bot may know only one)."""
    t = int(time.time()) if timestamp is None else timestamp
    keys = [secrets] if isinstance(secrets, str) else secrets
    v1 = [f"v1={_hmac(s, v1_message(t, body))}" for s in keys]
    v2 = [f"v2={_hmac(s, callback_message(t, body))}" for s in keys]
    return ",".join([f"t={t}", *v1, *v2])


def parse(header: str) -> ParsedSignature:
    """Read `t=...,v1=...,v2=...`; raises SignatureFormatError for a header that cannot be a signature."""
    timestamp: int | None = None
    v1: list[str] = []
    v2: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and timestamp is None:
            if not _TIMESTAMP.fullmatch(value):
                raise SignatureFormatError("t must be unix seconds (ASCII digits).")
            timestamp = int(value)
        elif key == "v1":
            v1.append(value)
        elif key == "v2":
            v2.append(value)
    if timestamp is None:
        raise SignatureFormatError("t is missing.")
    if not v2 and v1:
        raise SignatureFormatError(
            "only v1 was sent; sign with v2 over <t>.<METHOD>.<path>.<body>.", "signature_version"
        )
    if not v2:
        raise SignatureFormatError("v2 is missing.")
    return ParsedSignature(timestamp, v1, v2)


def _fresh(timestamp: int, tolerance: int, now: float | None) -> bool:
    return abs((time.time() if now is None else now) - timestamp) <= tolerance


def _matches(expected: str, candidates: list[str]) -> bool:
    # compare_digest on every candidate, so timing does not tell which one matched.
    results = [hmac.compare_digest(expected.encode(), c.encode("ascii", "replace")) for c in candidates]
    return any(results)


def verify_request(
    secret: str,
    method: str,
    path: str,
    body: bytes,
    signature: ParsedSignature,
    tolerance: int,
    now: float | None = None,
) -> bool:
    """True when a v2 matches this method, path and body, and t is within `tolerance` seconds of now."""
    expected = _hmac(secret, request_message(signature.timestamp, method, path, body))
    return _matches(expected, signature.v2) and _fresh(signature.timestamp, tolerance, now)


def verify_callback(secret: str, body: bytes, header: str, tolerance: int, now: float | None = None) -> bool:
    """What a bot does with X-Platform-Signature: check a v2 over "<t>.callback.<body>" and the clock."""
    try:
        signature = parse(header)
    except SignatureFormatError:
        return False
    expected = _hmac(secret, callback_message(signature.timestamp, body))
    return _matches(expected, signature.v2) and _fresh(signature.timestamp, tolerance, now)
