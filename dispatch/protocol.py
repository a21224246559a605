"""The agent socket's protocol, apart from what each message does: frames parsed and checked,
size and rate limits, and exceptions mapped to `error` frames (docs/API.md, the agents' socket).

The consumer (dispatch/consumers.py) calls `parse` on every frame and `error_frame` on whatever
its handler raised; nothing here touches the database or the channel layer.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from rest_framework.exceptions import APIException

from marketplace.models import Agent, Conversation

logger = logging.getLogger(__name__)


class BadMessage(Exception):
    """A frame the protocol refuses; answered with an `error` frame of this code, the socket stays open."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class RateLimiter:
    """A token bucket per socket: WS_RATE_PER_SECOND, bursts of WS_RATE_BURST. Past a second burst
    of refusals the socket is flooding (`flooding()`: the consumer closes it with 4429)."""

    def __init__(self) -> None:
        self.tokens = float(settings.WS_RATE_BURST)
        self.refilled = time.monotonic()
        self.overflows = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(settings.WS_RATE_BURST, self.tokens + (now - self.refilled) * settings.WS_RATE_PER_SECOND)
        self.refilled = now
        if self.tokens < 1:
            self.overflows += 1
            return False
        self.tokens -= 1
        return True

    def flooding(self) -> bool:
        return self.overflows > settings.WS_RATE_BURST


def parse(text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
    """The frame as a JSON object with a string `type`, or BadMessage (too large, not JSON, not an object)."""
    # Bytes, not characters: 64 Ki characters of emoji would be 256 KiB.
    size = len(text_data.encode("utf-8", "surrogatepass")) if text_data is not None else len(bytes_data or b"")
    if size > settings.WS_MAX_MESSAGE_BYTES:
        raise BadMessage("too_large", f"Messages are limited to {settings.WS_MAX_MESSAGE_BYTES} bytes.")
    raw = text_data if text_data is not None else (bytes_data or b"").decode("utf-8", "replace")
    try:
        content = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        raise BadMessage("invalid_json", "The message is not valid JSON.") from None
    if not isinstance(content, dict):
        raise BadMessage("invalid_json", "A message is a JSON object with a `type`.")
    return content


def rate_limited() -> BadMessage:
    return BadMessage("rate_limited", f"At most {settings.WS_RATE_PER_SECOND:g} messages a second.")


def unknown_type(kind: object) -> BadMessage:
    return BadMessage("unknown_type", f"Unknown message type: {str(kind)[:50]!r}.")


def field(content: dict[str, Any], name: str, *, max_length: int = 200, required: bool = True) -> str:
    """A string field of the frame: present (unless optional), at most `max_length`, storable text."""
    value = content.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadMessage("invalid_request", f"{name}: a non-empty string is required.")
    if len(value) > max_length:
        raise BadMessage("invalid_request", f"{name}: at most {max_length} characters.")
    if "\x00" in value or (not value.isascii() and not _is_utf8(value)):
        # Valid in JSON, but not text PostgreSQL can store or compare: refused here, not a DataError later.
        raise BadMessage("invalid_request", f"{name}: NUL characters and unpaired surrogates are not allowed.")
    return value


def choice(content: dict[str, Any], name: str, values: list[str], detail: str) -> str:
    value = content.get(name)
    if value not in values:
        raise BadMessage("invalid_request", detail)
    return str(value)


TRANSFER_MAX_SKILLS = 10


def transfer_to(content: dict[str, Any]) -> dict[str, Any]:
    """`to` of `conversation.transfer`: {"agent": USERNAME} or {"queue": {"language", "skills": [...]}},
    as the transfer service's keyword arguments (`to_agent`, or `language` and `skills`)."""
    to = content.get("to")
    usage = 'to: {"agent": USERNAME} or {"queue": {"language": "de", "skills": ["billing"]}}.'
    if not isinstance(to, dict) or len(to) != 1 or not ({"agent", "queue"} & set(to)):
        raise BadMessage("invalid_request", usage)
    if "agent" in to:
        return {"to_agent": field(to, "agent", max_length=150)}
    queue = to["queue"]
    if not isinstance(queue, dict) or set(queue) - {"language", "skills"}:
        raise BadMessage("invalid_request", usage)
    language = field(queue, "language", max_length=16, required=False).strip()
    if language and not re.fullmatch(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*", language):
        raise BadMessage("invalid_request", "to.queue.language: an ISO 639 code such as en, sv, pt-BR.")
    skills = queue.get("skills", [])
    if not isinstance(skills, list) or len(skills) > TRANSFER_MAX_SKILLS:
        raise BadMessage("invalid_request", f"to.queue.skills: a list of at most {TRANSFER_MAX_SKILLS} skills.")
    checked = [field({"skill": skill}, "skill", max_length=64) for skill in skills]
    return {"language": language, "skills": checked}


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def error_frame(exc: Exception, kind: object, agent_id: str) -> dict[str, Any]:
    """The `error` frame answering a message whose handling raised `exc` (`ref`: the message's type)."""
    if isinstance(exc, BadMessage):
        return {"type": "error", "code": exc.code, "detail": exc.detail, "ref": kind}
    if isinstance(exc, APIException):  # the services' conflicts (offer_not_open, not_assigned...)
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "conflict"
        return {"type": "error", "code": code, "detail": str(exc.detail), "ref": kind}
    if isinstance(exc, (Conversation.DoesNotExist, Agent.DoesNotExist)):
        return {"type": "error", "code": "not_found", "detail": "No such conversation.", "ref": kind}
    if isinstance(exc, DatabaseError):
        # A lost database connection (a restart, a failover): nothing was done (the
        # transaction rolled back); the socket stays open and the app may try again.
        logger.warning("database unavailable for %s from agent %s", kind, agent_id, exc_info=exc)
        detail = "The service is briefly unavailable; nothing was done. Try again."
        return {"type": "error", "code": "unavailable", "detail": detail, "ref": kind}
    # A bug must not take the agent's socket (and its offers) down with it: logged, answered, still open.
    logger.error("agent socket: a %r message failed", kind, exc_info=exc)
    return {"type": "error", "code": "server_error", "detail": "Internal error.", "ref": kind}
