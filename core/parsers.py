"""JSON parsing that fails with a 400, never a 500."""

from __future__ import annotations

import json
import math
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import JSONParser

_NOT_STORABLE = "NUL characters and unpaired surrogates are not allowed."
_NOT_FINITE = "NaN and infinite numbers are not allowed."


def _bad_text(value: str) -> bool:
    # Python's json reads "\u0000" and an unpaired "\ud800" into the str; neither can be stored
    # (PostgreSQL text and jsonb refuse NUL, UTF-8 has no surrogates). isascii() is the fast path.
    return "\x00" in value or (not value.isascii() and any("\ud800" <= c <= "\udfff" for c in value))


def _key_path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def unstorable_value(data: Any) -> tuple[str, str] | None:
    """The path (`customer.name`, `transcript[2].text`) and problem of the first value that no
    database column or JSON document can hold, or None. Iterative: a body nested as deep as the
    parser allows must not overflow the stack here."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _bad_text(value):
                return path or "body", _NOT_STORABLE
        elif isinstance(value, float):
            if not math.isfinite(value):
                return path or "body", _NOT_FINITE
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if _bad_text(key):
                    printable = key.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")
                    return _key_path(path, printable), f"this key: {_NOT_STORABLE}"
                stack.append((_key_path(path, key), item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in reversed(list(enumerate(value))))
    return None


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, plus a clean 400 for input nested too deep to parse, and a 400 naming the
    field for what JSON can carry but no store can keep: NUL, unpaired surrogates, NaN, Infinity
    and numbers too large for a float (1e400)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding) if stream is not None else ""
            # NaN and Infinity are read as floats here, so the check below can name where they were.
            data = json.loads(text)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ParseError(f"JSON parse error - {exc}") from None
        problem = unstorable_value(data)
        if problem is not None:
            path, detail = problem
            raise ValidationError({path: [detail]})
        return data


class AnyContentTypeJSONParser(SafeJSONParser):
    """Bots send JSON; a missing or wrong Content-Type should not turn a good body into a 415."""

    media_type = "*/*"
